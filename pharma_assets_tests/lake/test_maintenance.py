"""Compaction of the append-only tables: fewer files, the same rows, ingestion still exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from pharma_assets.lake import bronze, maintenance, silver
from pharma_assets.lake.landing_scan import files_for_batch
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake

from .conftest import ingest_all


def _ingest_chunk_by_chunk(lake: Lake, landing: Path, tmp_path: Path) -> list[str]:
    """The first batch's chunks delivered one by one (one small commit per chunk and table)."""
    bid = sorted(p.name for p in (landing / "telemetry").glob("*/*"))[0]
    chunks = sorted((landing / "telemetry").glob(f"*/{bid}/*.parquet"))
    held = tmp_path / "held"
    held.mkdir()
    for c in chunks[1:]:
        shutil.move(c, held / c.name)
    ingest_all(lake, landing)
    for c in chunks[1:]:
        shutil.move(held / c.name, c)
        run = Lake.at(lake.root)
        bronze.ingest_files(
            run, landing, "telemetry", files_for_batch(landing, "telemetry", bid), "c"
        )
        silver.process_telemetry(run, [bid], load_spec(), "c")
    return [c.relative_to(landing).as_posix() for c in chunks]


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns)


def test_compaction_keeps_every_row_and_reduces_files(
    lake: Lake, landing: Path, tmp_path: Path
) -> None:
    files = _ingest_chunk_by_chunk(lake, landing, tmp_path)
    tables = [
        ("bronze", "telemetry"),
        ("silver", "telemetry"),
        ("silver", "batch_timeline"),
        ("silver", "telemetry_stats"),
        ("silver", "telemetry_log"),
    ]
    before = {t: _sorted(lake.read(*t)) for t in tables}  # type: ignore[arg-type]
    n_before = {t: len(lake.table(*t).file_uris()) for t in tables}  # type: ignore[union-attr]
    assert n_before[("silver", "telemetry")] >= 8
    res = {r.table: r for r in maintenance.compact(lake, tables, min_files=4)}
    for t in tables:
        r = res[f"{t[0]}/{t[1]}"]
        assert r.skipped is None and r.files_before == n_before[t]
        assert r.files_after < r.files_before, r
        got = Lake.at(lake.root).read(*t)
        assert_frame_equal(_sorted(got), before[t])  # type: ignore[arg-type]
    # the earlier version is still there (time travel; nothing deleted)
    v = res["silver/telemetry"].version_before
    old = lake.table("silver", "telemetry", version=v)
    assert old is not None and len(old.file_uris()) == n_before[("silver", "telemetry")]
    # "already written" still answers from the compacted files; a rerun adds nothing
    fresh = Lake.at(lake.root)
    assert fresh.sources_in("silver", "telemetry", files) == set(files)
    bid = files[0].split("/")[2]
    again = silver.process_telemetry(fresh, [bid], load_spec(), "again")
    assert again.files_processed == 0
    assert silver.reconcile_telemetry(fresh, str(landing), [bid])["reconciled"]


def test_small_tables_are_left_alone(lake: Lake, landing: Path) -> None:
    ingest_all(lake, landing)
    res = maintenance.compact(lake, [("silver", "telemetry"), ("silver", "nope")], min_files=10_000)
    assert res[0].skipped and res[0].files_before == res[0].files_after
    assert res[1].skipped == "table does not exist"
