"""Landing -> gold on a small simulated plant, with counts that reconcile."""

from __future__ import annotations

import polars as pl

from pharma_assets.lake import silver

from .conftest import ingest_all


def test_landing_to_gold_reconciles(lake, landing):
    out = ingest_all(lake, landing)
    tel = out.bronze["telemetry"]
    assert tel.files_quarantined == 0 and tel.rows_landed == tel.rows_accepted > 0
    rec = silver.reconcile_telemetry(lake, str(landing), sorted(out.bronze["telemetry"].batches))
    assert rec["reconciled"], rec
    assert rec["silver_rows"] + rec["quarantined_rows"] == rec["bronze_rows"] == rec["rows_landed"]
    summary = lake.read("gold", "batch_summary")
    batches = lake.read("silver", "batches")
    assert summary.height == batches.height == 3
    assert summary["batch_id"].n_unique() == 3
    done = summary.filter(pl.col("status") == "complete")
    assert (done["final_titer_g_l"] > 1).all() and (done["harvest_volume_l"] > 1000).all()


def test_second_run_changes_nothing(lake, landing):
    ingest_all(lake, landing)
    before = {t: lake.version("silver", t) for t in silver.TELEMETRY_TABLES}
    n = lake.read("bronze", "telemetry").height
    again = ingest_all(lake, landing, run_id="again")
    assert again.bronze["telemetry"].files_already_ingested == again.bronze["telemetry"].files_seen
    assert again.silver.files_processed == 0
    assert lake.read("bronze", "telemetry").height == n
    assert {t: lake.version("silver", t) for t in silver.TELEMETRY_TABLES} == before


def test_a_file_landing_after_ingestion_is_awaiting_not_a_reconciliation_failure(lake, landing):
    out = ingest_all(lake, landing)
    bids = sorted(out.bronze["telemetry"].batches)
    first = sorted((landing / "telemetry").glob(f"*/{bids[0]}/*.parquet"))[0]
    late = first.with_name("20991231T000000Z_09999.parquet")
    late.write_bytes(first.read_bytes())
    rec = silver.reconcile_telemetry(lake, str(landing), bids)
    assert rec["reconciled"], rec
    assert rec["files_awaiting_bronze"] == 1
    assert rec["rows_awaiting_bronze"] == pl.read_parquet(late).height > 0
