"""`make bench`: run every benchmark and write the figures to docs/benchmarks.md."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import bench_simulator

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MARK = "<!-- simulator-results -->"


def main() -> None:
    rows = bench_simulator.main()
    lines = [
        MARK,
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"Python {platform.python_version()}, median of 3 fresh-process runs each.",
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
    lines.append(MARK)
    text = DOC.read_text() if DOC.exists() else ""
    block = "\n".join(lines)
    if MARK in text:
        head, _, rest = text.partition(MARK)
        _, _, tail = rest.partition(MARK)
        text = head + block + tail
    else:
        text += "\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
