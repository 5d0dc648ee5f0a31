"""The optimise group on a real lake and a real Dagster instance: the running-batch assets
with their checks, saved what-if scenarios, and the hourly schedule that never queues a
second run."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pharma_assets.defs.lakehouse.automation import LANE_TAG
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.defs.ml.resources import MlResource
from pharma_assets.defs.optimise.assets import RUNNING_ASSETS
from pharma_assets.defs.optimise.automation import running_optimise_job, running_optimise_schedule
from pharma_assets.defs.optimise.definitions import defs as optimise_defs
from pharma_assets.lake.storage import Lake
from pharma_assets.optimise import calibration, observations, tables, whatif
from pharma_assets.twin.config import load_recipes
from pharma_assets_tests.defs.test_live_path import open_run
from pharma_assets_tests.optimise.test_lake import _plant


@pytest.fixture(scope="module")
def running_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """One simulated batch, ingested, and marked as still running (a live batch's row)."""
    lake = _plant(tmp_path_factory.mktemp("optassets"))
    b = lake.read("silver", "batches")
    assert b is not None
    lake.overwrite(
        "silver",
        "batches",
        b.with_columns(status=pl.lit("running"), end_ts=pl.lit(None, b.schema["end_ts"])),
    )
    return lake


def test_running_assets_write_one_row_per_running_batch_inside_par(
    running_lake: Lake, tmp_path: Path
) -> None:
    res = {
        "lakehouse": LakehouseResource(lake_uri=str(running_lake.root)),
        "ml": MlResource(mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    }
    with dg.instance_for_test() as inst:
        out = dg.materialize(RUNNING_ASSETS, resources=res, instance=inst)
    assert out.success
    checks = {c.check_name: c for c in out.get_asset_check_evaluations()}
    assert set(checks) == {
        "one_row_per_running_batch",
        "no_recommendation_outside_par",
        "harvest_within_schedule_window",
    }
    assert all(c.passed for c in checks.values())
    state = running_lake.read("gold", "twin_calibrated_state")
    recs = running_lake.read("gold", "batch_recommendations")
    harvest = running_lake.read("gold", "harvest_recommendations")
    assert state is not None and recs is not None and harvest is not None
    assert state["batch_id"].to_list() == ["BR01-B0001"] and state["status"][0] == "calibrated"
    assert state["harvest_product_kg_p05"][0] <= state["harvest_product_kg"][0]
    assert recs["engine"].to_list() == ["mpc"]  # no surrogate registered in this MLflow store
    assert tables.par_violations(recs) == 0
    assert harvest["window_lo_day"][0] <= harvest["harvest_day"][0] <= harvest["window_hi_day"][0]


def test_a_batch_without_the_needed_tags_is_a_row_with_the_reason(tmp_path: Path) -> None:
    lake = _plant(tmp_path, drop_tags=("feed_rate_ml_h",), days=4.0)
    b = lake.read("silver", "batches")
    assert b is not None
    lake.overwrite("silver", "batches", b.with_columns(status=pl.lit("running")))
    cals, errors = tables.calibrate_running(lake)
    df = tables.calibrated_state_table(cals, errors)
    assert not cals and df.height == 1 and df["status"][0] == "not_calibrated"
    assert "feed_rate_ml_h" in df["message"][0]


def test_scenarios_are_saved_with_who_inputs_outputs_and_twin_version(running_lake: Lake) -> None:
    obs = observations.from_lake(running_lake, "BR01-B0001", as_of_h=7 * 24)
    cal = calibration.calibrate(obs, load_recipes().get("MAB-A-FB14"), n_members=10)
    res = whatif.run_whatif(cal, whatif.Scenario(production_temp_c=32.5))
    sid = whatif.save_scenario(running_lake, res, "pe.smith", "try a deeper shift")
    rows = running_lake.read("gold", "whatif_scenarios")
    assert rows is not None
    row = rows.filter(pl.col("scenario_id") == sid).row(0, named=True)
    assert row["created_by"] == "pe.smith" and '"production_temp_c": 32.5' in row["inputs_json"]
    assert row["twin_version"].startswith("fast-twin-") and row["as_of_h"] == pytest.approx(168)
    assert row["delta_product_kg_median"] == pytest.approx(res.delta("product_mass_kg")["median"])


def test_hourly_schedule_skips_while_its_run_is_open() -> None:
    d = optimise_defs()
    assert running_optimise_schedule in (d.schedules or [])
    # the context closed with the instance (see conftest.sensor_tick)
    with dg.instance_for_test() as inst, dg.build_schedule_context(instance=inst) as ctx:
        req = running_optimise_schedule.evaluate_tick(ctx).run_requests
        assert req and req[0].tags[LANE_TAG] == running_optimise_job.name
        open_run(inst, running_optimise_job.name, dg.DagsterRunStatus.STARTED)
        skipped = running_optimise_schedule.evaluate_tick(ctx)
        assert not skipped.run_requests and skipped.skip_message
