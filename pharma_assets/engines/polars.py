"""The polars engine's bulk path in one call: every landed file -> bronze -> silver.

What ``pharma-twin pipeline`` does through its Dagster runs, without Dagster: the
reference the Spark engine is compared with (parity test, ``benchmarks/bench_spark.py``).
"""

from __future__ import annotations

from pathlib import Path

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import SOURCES, files_for_source, scan_landing
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake


def backfill(
    lake: Lake, landing_dir: str | Path, run_id: str, spec_path: str | None = None
) -> silver.SilverReport:
    """Ingest every landed file (each source, then batches, lab results, maintenance and
    silver telemetry of every batch); the silver telemetry report."""
    spec = load_spec(spec_path, landing=landing_dir)
    files = scan_landing(landing_dir)
    for src in (*SOURCES, "unroutable"):
        fs = (
            files_for_source(landing_dir, src)
            if src in ("cmms", "unroutable")
            else [f for f in files if f.source == src]
        )
        bronze.ingest_files(lake, landing_dir, src, fs, run_id)
    silver.build_batches(lake, spec=spec)
    silver.build_lab_results(lake, spec)
    silver.build_maintenance(lake)
    ids = sorted({f.batch_id for f in files if f.batch_id})
    return silver.process_telemetry(lake, ids, spec, run_id)
