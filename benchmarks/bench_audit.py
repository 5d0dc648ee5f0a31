"""Audit-trail benchmarks (issue 6): batched append throughput and verification of a chain of
1,000,000 entries, against a raw baseline.

- append: entries per second through ``AuditTrail.append`` (lock, head lookup, HMAC chain,
  one Delta commit, anchor update), in batches of 1,000 and 100 entries, and one entry per
  commit for reference; each a fresh lake; median of 3.
- verify: a 1,000,000-entry chain (10 commits of 100,000), ``AuditTrail.verify`` (read the
  Delta table, canonical form, HMAC of every entry, links, sequence, anchor); median of 3.
- baseline: plain ``hmac.digest`` over the same canonical bytes in the same process (what the
  verification cannot avoid), and the ratio verify / baseline.

Run: ``python -m benchmarks.bench_audit`` (prints a JSON line and a Markdown table). Targets:
>= 1,000 appends/s batched, <= 30 s to verify 1 M entries.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pharma_assets.compliance.audit import AuditEvent, AuditTrail, _canonical_bodies
from pharma_assets.lake.storage import Lake


def _events(n: int, offset: int = 0) -> list[AuditEvent]:
    return [
        AuditEvent(
            "materialization",
            f"user{i % 7}",
            "silver/telemetry",
            f"BR01-B{i:07d}",
            "delta_version",
            '{"version":41,"rows":1200}',
            '{"version":42,"rows":1260}',
            "pipeline materialization",
            f"run-{i // 1000}",
        )
        for i in range(offset, offset + n)
    ]


def bench_append(tmp: Path, batch: int, commits: int, repeats: int = 3) -> dict[str, Any]:
    rates = []
    for r in range(repeats):
        trail = AuditTrail(Lake.at(tmp / f"append_{batch}_{r}"))
        trail.append(_events(1))  # table creation is not part of the rate
        evs = [_events(batch, k * batch) for k in range(commits)]
        t0 = time.perf_counter()
        for e in evs:
            trail.append(e)
        dt = time.perf_counter() - t0
        rates.append(batch * commits / dt)
    return {
        "batch": batch,
        "entries": batch * commits,
        "median_per_s": statistics.median(rates),
        "runs_per_s": [round(x) for x in rates],
    }


def bench_verify(tmp: Path, n: int, repeats: int = 3) -> dict[str, Any]:
    trail = AuditTrail(Lake.at(tmp / "verify"))
    step = 100_000
    t0 = time.perf_counter()
    for k in range(0, n, step):
        trail.append(_events(min(step, n - k), k))
    build_s = time.perf_counter() - t0
    times, ok = [], True
    for _ in range(repeats):
        res = trail.verify()
        ok = ok and res.ok and res.entries == n
        times.append(res.seconds)
    # raw baseline: HMAC of the same canonical bytes, nothing else
    df = trail.read()
    msgs = [
        f"{b}|64:{p}".encode()
        for b, p in zip(_canonical_bodies(df).to_list(), df["prev_hash"].to_list(), strict=True)
    ]
    base = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        for m in msgs:
            hmac.digest(trail.key, m, "sha256")
        base.append(time.perf_counter() - t1)
    v, b = statistics.median(times), statistics.median(base)
    return {
        "entries": n,
        "build_s": build_s,
        "verify_median_s": v,
        "verify_runs_s": [round(x, 2) for x in times],
        "baseline_hmac_median_s": b,
        "ratio_verify_to_baseline": v / b,
        "all_ok": ok,
    }


def main(entries: int = 1_000_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_audit_") as d:
        tmp = Path(d)
        os.environ["PHARMA_GXP_HOME"] = str(tmp / "gxp_home")
        os.environ.pop("PHARMA_AUDIT_KEY", None)
        out = {
            "append_1000": bench_append(tmp, 1000, 20),
            "append_100": bench_append(tmp, 100, 50),
            "append_1": bench_append(tmp, 1, 50),
            "verify": bench_verify(tmp, entries),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        }
    return out


def markdown(r: dict[str, Any]) -> str:
    v = r["verify"]
    rows = [
        "| measure | median | target |",
        "|---|---|---|",
        *(
            f"| appends/s, batches of {r[k]['batch']} ({r[k]['entries']} entries) | "
            f"{r[k]['median_per_s']:,.0f} | {'>= 1,000' if r[k]['batch'] > 1 else '-'} |"
            for k in ("append_1000", "append_100", "append_1")
        ),
        f"| verify {v['entries']:,} entries (s) | {v['verify_median_s']:.1f} | <= 30 |",
        f"| raw HMAC of the same bytes (s) | {v['baseline_hmac_median_s']:.1f} | - |",
        f"| verify / raw HMAC | {v['ratio_verify_to_baseline']:.1f}x | - |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    a = ap.parse_args()
    res = main(a.entries)
    print(markdown(res))
    print(json.dumps(res))
