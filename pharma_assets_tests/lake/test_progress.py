"""A file counts as done only when silver has it, so interrupted runs get finished."""

from __future__ import annotations

from pharma_assets.lake import bronze, progress, silver
from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.lake.specs import load_spec

from .conftest import ingest_all


def test_bronze_only_files_are_unfinished_until_silver_has_them(lake, landing):
    files = scan_landing(landing)
    assert {f.rel for f in progress.unfinished(lake, files)} == {f.rel for f in files}
    for src in ("mes", "lims", "telemetry"):
        bronze.ingest_files(lake, landing, src, [f for f in files if f.source == src], "r1")
    # bronze has everything, silver nothing: all of it is still owed (cmms, coa not ingested)
    assert {f.rel for f in progress.unfinished(lake, files)} == {f.rel for f in files}
    silver.build_batches(lake)
    left = progress.unfinished(lake, files)
    assert not [f for f in left if f.source == "mes"]
    assert {f.source for f in left} == {"telemetry", "lims", "cmms", "coa"}
    bids = sorted({f.batch_id for f in files if f.batch_id})
    silver.process_telemetry(lake, bids[:1], load_spec(), "r1")
    left = progress.unfinished(lake, files)
    assert not [f for f in left if f.source == "telemetry" and f.batch_id == bids[0]]
    assert [f for f in left if f.source == "telemetry" and f.batch_id == bids[1]]


def test_everything_done_after_a_full_pass_and_quarantined_files_count_as_done(lake, landing):
    (landing / "telemetry" / "stray.parquet").write_bytes(b"not parquet")
    ingest_all(lake, landing)
    files = scan_landing(landing)
    assert progress.unfinished(lake, files) == []
    q = lake.read("bronze", "quarantine")
    assert q["source_file"].to_list() == ["telemetry/stray.parquet"]
