"""`make bench`: run every benchmark and write the figures to docs/benchmarks.md.

``python -m benchmarks.run_all --only simulator`` (or ``lakehouse``, ``dashboards``, ``audit``,
``memory``, ``gateway``, ``coldpath`` (gateway flush -> silver), ``spark``, ``pdm``, ``live``,
``demo``: time to the first dashboard of `make demo`, ``opcua``: 500 OPC UA units on 10 twin
shard processes, then 250 OPC UA + 250 MQTT, 5 minutes each) runs one suite (``--only optimise``: the what-if benchmark, run under
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
    bench_demo_start,
    bench_gateway,
    bench_lakehouse,
    bench_live,
    bench_memory,
    bench_opcua_shards,
    bench_optimise,
    bench_simulator,
    bench_spark,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MARK = "<!-- simulator-results -->"
LAKE_MARK = "<!-- lakehouse-results -->"
DASH_MARK = "<!-- dashboards-results -->"
AUDIT_MARK = "<!-- audit-results -->"
MEMORY_MARK = "<!-- memory-results -->"
OPT_MARK = "<!-- optimise-results -->"
GATEWAY_MARK = "<!-- gateway-results -->"
SPARK_MARK = "<!-- spark-results -->"
LIVE_MARK = "<!-- live-view-results -->"
DEMO_MARK = "<!-- demo-start-results -->"
COLDPATH_MARK = "<!-- coldpath-results -->"
OPCUA_MARK = "<!-- opcua-shards-results -->"


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


def _niced(module: str) -> dict:
    """Run ``python -m <module>`` under nice -n 10; the JSON on its last line of output."""
    out = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-m", module],
        check=True,
        capture_output=True,
        text=True,
        cwd=DOC.parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def optimise_lines() -> list[str]:
    r = _niced("benchmarks.bench_optimise")
    return [_measured(", under nice -n 10."), "", *bench_optimise.markdown(r)]


PDM_MARK = "<!-- pdm-results -->"


def pdm_lines() -> list[str]:
    """Issue 14's PdM figures on the 1,200-batch plant (simulated once into
    $PHARMA_BENCH_PDM_DIR, default bench_data/pdm1200), each against its target."""
    import os

    from benchmarks import bench_ml

    folder = Path(
        os.environ.get("PHARMA_BENCH_PDM_DIR", DOC.parent.parent / "bench_data" / "pdm1200")
    )
    r = bench_ml.run_pdm(folder, folder / "pdm_result.json")
    rows = ["| figure | value | target | verdict |", "|---|---|---|---|"]
    rows += [f"| {f} | {v} | {t} | {k} |" for f, v, t, k in r["figures"]]
    return [_measured(f", {r['n_batches']} batches; {r['evaluation']}."), "", *rows]


def gateway_lines() -> list[str]:
    rows = bench_gateway.main()
    return [
        _measured(", niced; load average at start / end of each run in the table."),
        "",
        *bench_gateway.markdown(rows).splitlines(),
    ]


def opcua_lines() -> list[str]:
    rows = bench_opcua_shards.main()
    return [
        _measured(
            ", shard servers, gateway and MQTT publisher under nice -n 10; load average at "
            "start / end of each run in the table (the benchmark's own processes included)."
        ),
        "",
        *bench_opcua_shards.markdown(rows).splitlines(),
    ]


def coldpath_lines() -> list[str]:
    from benchmarks import bench_coldpath

    r = _niced("benchmarks.bench_coldpath")
    return [
        _measured(", under nice -n 10, one run; load average in the table."),
        "",
        *bench_coldpath.HEADER.splitlines(),
        bench_coldpath.line(r),
    ]


def spark_lines() -> list[str]:
    r = _niced("benchmarks.bench_spark")
    return [_measured(", under nice -n 10, one run per engine."), "", *bench_spark.markdown(r)]


def live_lines() -> list[str]:
    md = bench_live.main()
    return [
        _measured(", niced; load average at start / end of each run in the tables."),
        "",
        *md.splitlines(),
    ]


def demo_start_lines() -> list[str]:
    r = bench_demo_start.measure(batches=100, first_slice=2, backfill=True)
    return [
        _measured(", one run, niced as the machine allows; load average in the table."),
        "",
        bench_demo_start.HEADER,
        bench_demo_start.line(r),
    ]


SUITES = {
    "simulator": (MARK, simulator_lines),
    "lakehouse": (LAKE_MARK, lakehouse_lines),
    "dashboards": (DASH_MARK, dashboards_lines),
    "audit": (AUDIT_MARK, audit_lines),
    "memory": (MEMORY_MARK, memory_lines),
    "optimise": (OPT_MARK, optimise_lines),
    "gateway": (GATEWAY_MARK, gateway_lines),
    "coldpath": (COLDPATH_MARK, coldpath_lines),
    "opcua": (OPCUA_MARK, opcua_lines),
    "spark": (SPARK_MARK, spark_lines),
    "pdm": (PDM_MARK, pdm_lines),
    "live": (LIVE_MARK, live_lines),
    "demo": (DEMO_MARK, demo_start_lines),
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
