"""The ml group with a real Dagster instance: retrain sensor, and the whole retrain_job on a
small simulated plant (features, models in a SQLite MLflow store, gold scoring tables)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from mlflow import MlflowClient
from rich.text import Text

from pharma_assets.cli import training_lines
from pharma_assets.compliance import promotions
from pharma_assets.compliance.changecontrol import apply_change
from pharma_assets.compliance.users import create_user
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.defs.ml import assets as ml_assets
from pharma_assets.defs.ml.automation import (
    COMPLETED_TAG,
    contamination_live_job,
    contamination_live_schedule,
    retrain_sensor,
)
from pharma_assets.defs.ml.definitions import defs as ml_defs
from pharma_assets.defs.ml.resources import MlResource
from pharma_assets.lake.storage import Lake
from pharma_assets.ml import registry
from pharma_assets_tests.conftest import TEST_MODEL_KINDS
from pharma_assets_tests.ml.conftest import MlPlant, ml_plant  # noqa: F401

CONTRACT = {
    "equipment_health": [
        "equipment_id",
        "unit_id",
        "equipment_type",
        "hour_ts",
        "batch_id",
        "health_score",
        "failure_probability",
        "alarm",
        "threshold",
        "hours_since_maintenance",
        "model_name",
        "model_version",
        "scored_at",
    ],
    "batch_forecasts": [
        "batch_id",
        "unit_id",
        "as_of_ts",
        "elapsed_h",
        "horizon",
        "target",
        "predicted",
        "lower",
        "upper",
        "unit",
        "model_name",
        "model_version",
        "scored_at",
    ],
    "model_performance": [
        "model_name",
        "model_version",
        "metric",
        "value",
        "target",
        "target_met",
        "evaluation_set",
        "n",
        "is_champion",
        "mlflow_run_id",
        "computed_at",
    ],
}
CONTRACT.update(
    {
        "contamination_risk": [
            "batch_id",
            "unit_id",
            "window_end_ts",
            "elapsed_h",
            "anomaly_score",
            "threshold",
            "alarm",
            "risk",
            "top_features",
            "model_name",
            "model_version",
            "scored_at",
        ],
        "mspc_scores": [
            "batch_id",
            "unit_id",
            "elapsed_h",
            "t2",
            "t2_limit",
            "spe",
            "spe_limit",
            "alarm",
            "top_contributors",
            "model_name",
            "model_version",
            "scored_at",
        ],
        "golden_batch": ["tag", "elapsed_h", "mean", "lo", "hi", "n_batches", "model_version"],
    }
)
N_MODELS = 15


def _write_batches(lake: Lake, n_complete: int, n_running: int = 3) -> None:
    """A real silver/batches Delta table with ``n_complete`` completed batches."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "batch_id": f"BR01-B{i:04d}",
            "status": "complete" if i < n_complete else "running",
            "start_ts": t0 + timedelta(days=i),
        }
        for i in range(n_complete + n_running)
    ]
    lake.overwrite("silver", "batches", pl.DataFrame(rows))


def _tick(instance: dg.DagsterInstance, lake_dir: Path, cursor: str | None):
    lakehouse = LakehouseResource(lake_uri=str(lake_dir), landing_dir=str(lake_dir))
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"lakehouse": lakehouse}
    )
    return retrain_sensor.evaluate_tick(ctx)


def test_retrain_sensor_one_run_per_multiple_of_50(tmp_path: Path) -> None:
    lake = Lake.at(tmp_path / "lake")
    with dg.instance_for_test() as instance:
        tick = _tick(instance, tmp_path / "lake", None)  # no table yet
        assert not tick.run_requests
        cursor = None
        keys: list[str] = []
        for n in (10, 49, 50, 50, 51, 99, 100, 100, 149):
            _write_batches(lake, n)
            tick = _tick(instance, tmp_path / "lake", cursor)
            keys += [r.run_key for r in tick.run_requests or []]  # type: ignore[misc]
            cursor = tick.cursor if tick.cursor is not None else cursor
            if n < 50:
                assert not tick.run_requests, f"no retraining below 50 (n={n})"
        assert keys == ["retrain-50", "retrain-100"]
        assert cursor == "100"
        # a backfill crossing two multiples at once requests one run, for the highest
        _write_batches(lake, 260)
        tick = _tick(instance, tmp_path / "lake", cursor)
        assert [r.run_key for r in tick.run_requests] == ["retrain-250"]  # type: ignore[union-attr]
        assert tick.cursor == "250"


def test_retrain_sensor_counts_from_the_last_training_run(tmp_path: Path) -> None:
    """`pharma-twin train` at 97 completed batches (a retrain_job run tagged with the count):
    a sensor without a cursor retrains next at 100, not again at 50."""

    @dg.op
    def noop() -> None:
        pass

    @dg.job(name="retrain_job")
    def stand_in() -> None:  # a real, successful run under the job's name and tags
        noop()

    lake = Lake.at(tmp_path / "lake")
    with dg.instance_for_test() as instance:
        assert stand_in.execute_in_process(instance=instance, tags={COMPLETED_TAG: "97"}).success
        _write_batches(lake, 99)
        tick = _tick(instance, tmp_path / "lake", None)
        assert not tick.run_requests, "97 -> 99 completed: nothing to retrain yet"
        _write_batches(lake, 100)
        tick = _tick(instance, tmp_path / "lake", None)
        assert [r.run_key for r in tick.run_requests] == ["retrain-100"]  # type: ignore[union-attr]
        assert tick.cursor == "100"


@pytest.fixture
def ml_lake(ml_plant: MlPlant, tmp_path: Path) -> Path:  # noqa: F811
    dst = tmp_path / "lake"
    shutil.copytree(ml_plant.lake_dir, dst)
    return dst


def test_retrain_job_materializes_models_and_gold_tables(
    ml_plant: MlPlant,  # noqa: F811
    ml_lake: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    d = ml_defs()
    resources = {
        "lakehouse": LakehouseResource(lake_uri=str(ml_lake), landing_dir=str(ml_plant.landing)),
        "ml": MlResource(
            mlflow_uri=uri,
            ground_truth_dir=str(ml_plant.truth),
            pdm_trees=40,
            quality_trees=40,
            # the job, not the choice among all kinds (ml/test_quality.py) is tested here
            quality_model_kinds=",".join(TEST_MODEL_KINDS),
        ),
    }
    defs = dg.Definitions(assets=d.assets, jobs=d.jobs, sensors=d.sensors, resources=resources)
    job = defs.resolve_job_def("retrain_job")
    lake = Lake.at(ml_lake)
    # the auto-promotion policy, approved under change control in this lake: first versions
    # that pass the gate become champion signed by the system (docs/models.md)
    policy = tmp_path / "promotion_policy.yaml"
    policy.write_text(promotions.DEFAULT_POLICY.read_text())
    monkeypatch.setenv(promotions.POLICY_ENV, str(policy))
    create_user(
        lake, "admin", "Ada Admin", "admin", "Root-pass-2026!", "system:test", "t", bootstrap=True
    )
    create_user(lake, "qa.lead", "Quinn Assurance", "qa", "Quality-pass-2026", "admin", "t")
    apply_change(
        lake,
        policy,
        policy.read_text(),
        "qa.lead",
        "Quality-pass-2026",
        "baseline",
        promotions.POLICY_TARGET,
    )
    with dg.instance_for_test() as instance:
        first = job.execute_in_process(instance=instance)
        assert first.success
        # every champion is a promotion signed by the system under the approved policy
        checks = promotions.verify_champions(lake, uri)
        assert checks and all(c.ok for c in checks), [c.line() for c in checks]
        assert all(promotions.SYSTEM_SIGNER in c.signed_by for c in checks)
        for name, cols in CONTRACT.items():
            df = lake.read("gold", name)
            assert df is not None, name
            assert set(cols) <= set(df.columns), (name, set(cols) - set(df.columns))
            assert df.height > 0, name
        for name in (
            "equipment_hour",
            "batch_hour",
            "batch",
            "contamination_windows",
            "mspc_hourly",
        ):
            assert lake.version("features", name) is not None
        # the monitoring models read the feature tables of the one timeline pass, and log
        # the timeline version those were computed from
        for key, table in (
            ("contamination_iforest", "contamination_windows"),
            ("mspc_pca", "mspc_hourly"),
        ):
            mev = instance.get_latest_materialization_event(dg.AssetKey(["ml", key]))
            assert mev is not None and mev.asset_materialization is not None
            run_id = mev.asset_materialization.metadata["mlflow_run_id"].value
            params = MlflowClient(tracking_uri=uri).get_run(str(run_id)).data.params
            assert params[f"data_version.features/{table}"] == str(lake.version("features", table))
            assert params["data_version.silver/batch_timeline"] == str(
                lake.version("silver", "batch_timeline")
            )
        windows = lake.read("features", "contamination_windows")
        risk = lake.read("gold", "contamination_risk")
        assert windows is not None and risk is not None
        assert set(risk["batch_id"].unique().to_list()) <= set(windows["batch_id"].to_list())

        health = lake.read("gold", "equipment_health")
        assert health is not None
        assert health["model_version"].unique().to_list() == ["1"]
        assert (
            (health["health_score"] - 100 * (1 - health["failure_probability"])).abs() < 1e-9
        ).all()

        perf = lake.read("gold", "model_performance")
        assert perf is not None
        assert perf["model_name"].n_unique() == N_MODELS
        assert perf.filter(pl.col("metric") == "recall_critical")["target"].item() == 0.95

        # metrics are asset metadata
        ev = instance.get_latest_materialization_event(dg.AssetKey(["ml", "pdm_failure_72h"]))
        assert ev is not None and ev.asset_materialization is not None
        meta = ev.asset_materialization.metadata
        for key in (
            "recall_critical",
            "false_alarm_rate_per_equipment_day",
            "median_lead_time_h",
            "model_version",
            "promoted",
            "gt_recall_critical",
        ):
            assert key in meta, key
        assert meta["model_version"].value == "1"

        # what `pharma-twin train` prints: every model, its gate decision and reason, every
        # metric (against its target where it has one)
        summary = registry.training_summary("dagster_run_id", first.run_id, uri)
        assert len(summary) == N_MODELS
        text = "\n".join(Text.from_markup(ln).plain for ln in training_lines(summary))
        for s in summary:
            verdict = s.promotion_decision.replace("_", " ").upper()
            assert f"{s.name} v{s.version}: {verdict} - {s.promotion_reason}" in text
            for k in s.metrics:
                assert (f"{k}=" in text) or (f"{k} = " in text), k
        assert "recall_critical = " in text and "(target 0.95, " in text
        assert "aggregates_pct_day3" in text and "baseline_mae=" in text

        # second run: new versions, gate applied, performance appended (not replaced)
        second = job.execute_in_process(instance=instance)
        assert second.success
        perf2 = lake.read("gold", "model_performance")
        assert perf2 is not None and perf2.height == 2 * perf.height

        # the 5-minute live path: with the champion registered, a batch replayed as running
        # gets its newest window scored into gold/contamination_live (and a materialization)
        assert contamination_live_schedule.cron_schedule == "*/5 * * * *"
        assert contamination_live_schedule in d.schedules  # type: ignore[operator]
        live_job = dg.Definitions(jobs=[contamination_live_job], resources=resources)
        live_job_def = live_job.resolve_job_def("contamination_live_job")
        assert live_job_def.execute_in_process(instance=instance).success  # no running batch
        assert lake.read("gold", "contamination_live") is None
        b = lake.read("silver", "batches")
        assert b is not None
        bid = b.filter(pl.col("status") == "complete")["batch_id"][-1]
        lake.overwrite(
            "silver",
            "batches",
            b.with_columns(
                status=pl.when(pl.col("batch_id") == bid)
                .then(pl.lit("running"))
                .otherwise("status")
            ),
        )
        assert live_job_def.execute_in_process(instance=instance).success
        live = Lake.at(ml_lake).read("gold", "contamination_live")
        assert live is not None and live["batch_id"].to_list() == [bid]
        assert live["model_name"][0] == "pharma_contamination_iforest"
        ev = instance.get_latest_materialization_event(dg.AssetKey(["gold", "contamination_live"]))
        assert ev is not None and ev.asset_materialization is not None
        assert ev.asset_materialization.metadata["windows_scored"].value == 1
        client = MlflowClient(tracking_uri=uri)
        mv = client.get_model_version("pharma_pdm_failure_72h", "2")
        assert mv.tags["champion_version"] == "1"
        assert mv.tags["promoted"] in ("True", "False")
        # same data, same held-out set: the re-scored champion and the challenger agree
        # (to within thread-order effects in the forest's probabilities)
        assert float(mv.tags["champion_score"]) == pytest.approx(
            float(mv.tags["challenger_score"]), abs=1e-3
        )
        # the promotion gate: every version says why; a champion met its minimum (a quality
        # model with R² <= 0 or below the naive baseline never becomes one)
        models = registry.list_models(uri)
        assert models["name"].n_unique() == N_MODELS
        assert models["promotion_reason"].is_not_null().all()
        champs = models.filter(pl.col("is_champion"))
        assert set(champs["promotion_decision"]) <= {registry.PROMOTED}
        # second versions that replace a champion wait for QA (except quality models that
        # improve by the policy's margin); nothing became champion without a signature
        assert set(champs["promotion_state"]) <= {"approved_by_policy"}
        assert all(c.ok for c in promotions.verify_champions(lake, uri))
        runs = {r: client.get_run(r).data.metrics for r in models["run_id"]}
        for row in models.iter_rows(named=True):
            m = runs[row["run_id"]]
            if "baseline_mae" in m and row["promotion_decision"] == registry.PROMOTED:
                assert m["r2"] > 0 and m["mae"] < m["baseline_mae"], row
            if "baseline_mae" in m and m["r2"] <= 0:
                assert row["promotion_decision"] != registry.PROMOTED, row
                assert "<= 0" in row["promotion_reason"], row
        for key in ("pdm_failure_72h", "contamination_iforest", "mspc_pca"):
            ev = instance.get_latest_materialization_event(dg.AssetKey(["ml", key]))
            assert ev is not None and ev.asset_materialization is not None
            md = ev.asset_materialization.metadata
            assert md["promotion_decision"].value in (
                registry.PROMOTED,
                registry.NOT_PROMOTED,
                registry.KEPT_CHAMPION,
            )
            assert md["promotion_reason"].value
        alarms = lake.read("gold", "mspc_alarms")
        assert alarms is not None  # the table exists (it may hold no alarm)


def test_ground_truth_absent_is_reported(
    ml_plant: MlPlant,  # noqa: F811
    ml_lake: Path,
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    wanted = [ml_assets.feature_tables, ml_assets.pdm_failure_72h]
    resources = {
        "lakehouse": LakehouseResource(lake_uri=str(ml_lake), landing_dir=str(ml_plant.landing)),
        "ml": MlResource(mlflow_uri=uri, ground_truth_dir=str(tmp_path / "none"), pdm_trees=20),
    }
    with dg.instance_for_test() as instance:
        res = dg.materialize(wanted, instance=instance, resources=resources)
        assert res.success
        ev = instance.get_latest_materialization_event(dg.AssetKey(["ml", "pdm_failure_72h"]))
        meta = ev.asset_materialization.metadata  # type: ignore[union-attr]
        assert "skipped" in meta["ground_truth"].value
        assert "gt_recall_critical" not in meta
