"""Gold receives QA's release decisions as an input (no import of compliance), and the lake
root is read from the environment in one place."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from pharma_assets.definitions import defs
from pharma_assets.defs.lakehouse.assets import GXP_BATCH_RELEASE, gold_tables
from pharma_assets.defs.lakehouse.automation import GOLD_INPUTS
from pharma_assets.lake import gold
from pharma_assets.lake.storage import DEFAULT_LAKE_URI, LAKE_URI_ENV, Lake, lake_uri_from_env


def _summary() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "batch_id": ["B1", "B2", "B3"],
            "status": ["complete"] * 3,
            "release_status": [gold.PENDING_RELEASE] * 3,
        }
    )


def test_decisions_are_applied_and_the_rest_stay_pending() -> None:
    at = datetime(2026, 11, 1, 8, tzinfo=UTC)
    dec = pl.DataFrame(
        {
            "batch_id": ["B1", "B3"],
            "release_status": ["released", "rejected"],
            "released_by": ["Q. Lead", "Q. Lead"],
            "released_at": [at, at],
        },
        schema=gold.RELEASE_SCHEMA,
    )
    out = gold.apply_release_decisions(_summary(), dec).sort("batch_id")
    assert out["release_status"].to_list() == ["released", gold.PENDING_RELEASE, "rejected"]
    assert out["released_by"].to_list() == ["Q. Lead", None, "Q. Lead"]
    assert out.schema["released_at"] == gold.RELEASE_SCHEMA["released_at"]
    none = gold.apply_release_decisions(_summary(), None)
    assert none["release_status"].to_list() == [gold.PENDING_RELEASE] * 3
    assert none.columns == out.columns


def test_gold_declares_the_release_table_and_refreshes_on_it() -> None:
    for spec in gold_tables.specs:
        assert GXP_BATCH_RELEASE in {d.asset_key for d in spec.deps}, spec.key
    assert ("gxp", "batch_release") in GOLD_INPUTS
    graph = defs().resolve_asset_graph()
    assert graph.has(GXP_BATCH_RELEASE)  # declared (by defs/compliance), not a dangling key
    assert dg.AssetKey(["gold", "batch_summary"]) in graph.get(GXP_BATCH_RELEASE).child_keys


def test_lake_root_from_the_environment(tmp_path: Path) -> None:
    assert lake_uri_from_env({}) == DEFAULT_LAKE_URI
    assert lake_uri_from_env({LAKE_URI_ENV: ""}) == DEFAULT_LAKE_URI
    env = {LAKE_URI_ENV: str(tmp_path / "lk"), "AWS_REGION": "eu-west-1", "HOME": "/x"}
    lk = Lake.from_env(env=env)
    assert lk.root == str((tmp_path / "lk").resolve())
    remote = Lake.from_env("s3://bucket/lake/", env=env)
    assert remote.root == "s3://bucket/lake"
    assert remote.storage_options == {"AWS_REGION": "eu-west-1"}
