"""`make bench`: run every benchmark and write the figures to docs/benchmarks.md.

``python -m benchmarks.run_all --only simulator`` (or ``lakehouse``, ``dashboards``, ``audit``,
``memory``, ``gateway``) runs one suite (``--only optimise``: the what-if benchmark, run under
``nice -n 10``); the blocks of the other suites in the document are left as they are.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    bench_audit,
    bench_dashboards,
    bench_gateway,
    bench_lakehouse,
    bench_live,
    bench_memory,
    bench_optimise,
    bench_simulator,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MARK = "<!-- simulator-results -->"
LAKE_MARK = "<!-- lakehouse-results -->"
DASH_MARK = "<!-- dashboards-results -->"
AUDIT_MARK = "<!-- audit-results -->"
MEMORY_MARK = "<!-- memory-results -->"
OPT_MARK = "<!-- optimise-results -->"
GATEWAY_MARK = "<!-- gateway-results -->"
LIVE_MARK = "<!-- live-view-results -->"


def replace_block(text: str, mark: str, lines: list[str]) -> str:
    """Replace the text between two ``mark`` lines (or append the block)."""
    block = "\n".join([mark, *lines, mark])
    if mark in text:
        head, _, rest = text.partition(mark)
        _, _, tail = rest.partition(mark)
        return head + block + tail
    return text + "\n" + block + "\n"


def _measured(extra: str = ".") -> str:
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"Python {platform.python_version()}{extra}"
    )


def simulator_lines() -> list[str]:
    rows = bench_simulator.main()
    lines = [
        _measured(", median of 3 fresh-process runs each."),
        "",
        "| batches | batch-minutes | readings | files | median s (runs) | engine-only s | batch-min/s | readings/s | peak RSS MB | cost/batch vs 10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batches']} | {r['batch_minutes']:,.0f} | {r['readings']:,} | {r['files']:,} | "
            f"{r['median_s']:.1f} ({', '.join(f'{x:.1f}' for x in r['runs_s'])}) | {r['engine_only_median_s']:.1f} | "
            f"{r['batch_minutes_per_s']:,.0f} | {r['readings_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['cost_per_batch_vs_10']:.2f} |"
        )
    return lines


def lakehouse_lines() -> list[str]:
    res = bench_lakehouse.main()
    return [
        _measured(
            f", {res['total_s'] / 60:.0f} min in all; every figure is a median over fresh "
            "processes (runs listed)."
        ),
        "",
        *bench_lakehouse.rows_for_doc(res),
    ]


def dashboards_lines() -> list[str]:
    r = bench_dashboards.main()
    return [
        _measured(),
        "",
        *bench_dashboards.rows_for_doc(r["pages"], r["meta"]),
    ]


def audit_lines() -> list[str]:
    r = bench_audit.main()
    return [
        _measured(),
        "",
        *bench_audit.markdown(r).splitlines(),
    ]


def memory_lines() -> list[str]:
    r = bench_memory.main()
    return [
        _measured(", one fresh process per file size (peak RSS from its own rusage)."),
        "",
        *bench_memory.rows_for_doc(r),
    ]


def optimise_lines() -> list[str]:
    out = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-m", "benchmarks.bench_optimise"],
        check=True, capture_output=True, text=True, cwd=DOC.parent.parent,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return [_measured(", under nice -n 10."), "", *bench_optimise.markdown(r)]


def gateway_lines() -> list[str]:
    rows = bench_gateway.main()
    return [_measured(", niced; load average at start / end of each run in the table."), "",
            *bench_gateway.markdown(rows).splitlines()]  # fmt: skip


def live_lines() -> list[str]:
    md = bench_live.main()
    return [_measured(", niced; load average at start / end of each run in the tables."), "",
            *md.splitlines()]  # fmt: skip


SUITES = {
    "simulator": (MARK, simulator_lines),
    "lakehouse": (LAKE_MARK, lakehouse_lines),
    "dashboards": (DASH_MARK, dashboards_lines),
    "audit": (AUDIT_MARK, audit_lines),
    "memory": (MEMORY_MARK, memory_lines),
    "optimise": (OPT_MARK, optimise_lines),
    "gateway": (GATEWAY_MARK, gateway_lines),
    "live": (LIVE_MARK, live_lines),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=tuple(SUITES))
    a = ap.parse_args()
    for name, (mark, lines_of) in SUITES.items():
        if a.only in (None, name):
            lines = lines_of()
            DOC.write_text(replace_block(DOC.read_text() if DOC.exists() else "", mark, lines))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
