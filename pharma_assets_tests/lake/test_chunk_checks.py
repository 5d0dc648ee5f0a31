"""The silver checks of a chunk's run look at that run's files, not the batch's history.

``reconcile_telemetry(..., files)`` and ``duplicate_readings(..., files)`` are what the
``silver_telemetry`` asset's checks run after each ingestion: their cost must not grow with
the age of the batch, yet they must still catch a lost or a duplicated reading of the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import files_for_batch
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake

from .conftest import ingest_all


def _late_chunk(lake: Lake, landing: Path, tmp_path: Path) -> tuple[str, str, silver.SilverReport]:
    """Ingest everything but the last chunk of the first batch, then that chunk alone."""
    bid = sorted(p.name for p in (landing / "telemetry").glob("*/*"))[0]
    last = sorted((landing / "telemetry").glob(f"*/{bid}/*.parquet"))[-1]
    held = tmp_path / last.name
    shutil.move(last, held)
    ingest_all(lake, landing)
    shutil.move(held, last)
    fresh = Lake.at(lake.root)
    bronze.ingest_files(
        fresh, landing, "telemetry", files_for_batch(landing, "telemetry", bid), "late"
    )
    rep = silver.process_telemetry(fresh, [bid], load_spec(), "late")
    return bid, last.relative_to(landing).as_posix(), rep


def test_chunk_checks_cover_the_run_files(lake: Lake, landing: Path, tmp_path: Path) -> None:
    bid, rel, rep = _late_chunk(lake, landing, tmp_path)
    assert rep.files == [rel]
    rec = silver.reconcile_telemetry(lake, str(landing), [bid], rep.files)
    assert rec["reconciled"], rec
    assert rec["scope"] == "files of this run" and rec["files_checked"] == 1
    in_file = lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel)
    assert in_file is not None and rec["bronze_rows"] == in_file.height  # this file only
    assert rec["silver_rows"] + rec["quarantined_rows"] == in_file.height
    # the partition-wide pass rate comes from the silver ledger
    whole = silver.reconcile_telemetry(lake, str(landing), [bid])
    assert whole["reconciled"] and whole["bronze_rows"] > rec["bronze_rows"]
    assert rec["partition_rows_valid"] == whole["silver_rows"]
    assert rec["partition_rows_quarantined"] == whole["quarantined_rows"]
    assert silver.duplicate_readings(lake, [bid], rep.files) == 0
    assert silver.duplicate_readings(lake, [bid], []) == 0


def test_chunk_checks_catch_a_repeated_reading(lake: Lake, landing: Path, tmp_path: Path) -> None:
    bid, rel, rep = _late_chunk(lake, landing, tmp_path)
    rows = lake.read("silver", "telemetry", filter_expr=pl.col("source_file") == rel)
    assert rows is not None and rows.height > 1
    # a reading of this run's window written twice (say, by a faulty writer)
    lake.append("silver", "telemetry", rows.head(1))
    assert silver.duplicate_readings(lake, [bid], rep.files) == 1
    assert silver.duplicate_readings(lake, [bid]) == 1
    rec = silver.reconcile_telemetry(lake, str(landing), [bid], rep.files)
    assert (
        not rec["reconciled"]
        and rec["silver_rows"] + rec["quarantined_rows"] == rec["bronze_rows"] + 1
    )


def test_chunk_checks_catch_lost_readings(lake: Lake, landing: Path, tmp_path: Path) -> None:
    bid, rel, rep = _late_chunk(lake, landing, tmp_path)
    before = silver.reconcile_telemetry(lake, str(landing), [bid], rep.files)
    assert before["reconciled"]
    dt = lake.table("silver", "telemetry")
    assert dt is not None
    lost = dt.delete(f"source_file = '{rel}' AND tag = 'ph'")["num_deleted_rows"]
    assert lost > 0
    lake.forget()
    rec = silver.reconcile_telemetry(lake, str(landing), [bid], rep.files)
    assert not rec["reconciled"]
    assert rec["silver_rows"] == before["silver_rows"] - lost


def test_an_earlier_files_duplicate_outside_the_window_is_not_this_runs(
    lake: Lake, landing: Path, tmp_path: Path
) -> None:
    """A duplicate in the batch's older history is outside the run's window: the run's
    check does not re-read it (the whole-partition check still sees it)."""
    bid, rel, rep = _late_chunk(lake, landing, tmp_path)
    first = (
        lake.read(
            "silver",
            "telemetry",
            filter_expr=(pl.col("batch_id") == bid) & (pl.col("source_file") != rel),
        )
        .sort("ts")
        .head(1)
    )
    lake.append("silver", "telemetry", first)
    assert silver.duplicate_readings(lake, [bid], rep.files) == 0
    assert silver.duplicate_readings(lake, [bid]) == 1
