"""`pharma-twin pipeline --rebuild`: silver and gold are archived and derived again from bronze."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import archive_derived, run_pipeline

from .conftest import lakehouse_for


def _counts(lake: Lake) -> dict[str, int]:
    return {
        t: lake.read(layer, t).height  # type: ignore[union-attr]
        for layer, t in [
            ("bronze", "telemetry"),
            ("silver", "telemetry"),
            ("silver", "telemetry_quarantine"),
            ("silver", "batches"),
            ("gold", "batch_summary"),
            ("gold", "cpp_excursions"),
        ]
    }


def test_rebuild_archives_silver_and_gold_and_derives_the_same_tables(landing, tmp_path: Path):
    lakehouse = lakehouse_for(landing, tmp_path / "lake")
    lake = lakehouse.lake()
    with dg.instance_for_test() as instance:
        assert run_pipeline(lakehouse, instance).ok
        before = _counts(lake)
        bronze_version = lake.version("bronze", "telemetry")
        summary = lake.read("gold", "batch_summary").sort("batch_id")  # type: ignore[union-attr]
        moved = archive_derived(lake)
        assert [Path(m).name.split("-")[0] for m in moved] == ["silver", "gold"]
        assert all((Path(m) / "telemetry").exists() or "gold" in m for m in moved)
        assert lake.table("silver", "telemetry") is None
        again = run_pipeline(lakehouse, instance)
        assert again.ok and again.batches  # every batch was owed to silver again
        assert _counts(lake) == before
        assert lake.version("bronze", "telemetry") == bronze_version  # bronze untouched
        rebuilt = lake.read("gold", "batch_summary").sort("batch_id")  # type: ignore[union-attr]
        cols = ["batch_id", "status", "final_titer_g_l", "harvest_volume_l", "excursions_total"]
        assert rebuilt.select(cols).equals(summary.select(cols))
        assert pl.Series(rebuilt["batch_id"]).n_unique() == rebuilt.height


def test_rebuild_refuses_an_object_store_lake():
    with pytest.raises(ValueError, match="local lakes only"):
        archive_derived(Lake.at("s3://bucket/lake", storage_options={}))
