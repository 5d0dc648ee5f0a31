"""MLflow registry: runs, versions, the champion/challenger gate and the gold rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from mlflow import MlflowClient

from pharma_assets.ml import registry


class Const:
    """A picklable stand-in model whose score on the held-out set is known."""

    def __init__(self, score: float) -> None:
        self.score = score


def _trained(score: float, name: str = "pharma_test_model") -> registry.TrainedModel:
    return registry.TrainedModel(
        name=name,
        model=Const(score),
        params={"alpha": 1, "nested": {"a": [1, 2]}},
        features=["f1", "f2"],
        data_versions={"silver/batch_timeline": 7, "gold/batch_summary": None},
        metrics={"r2": score, "mae": 1.0 - score, "baseline_mae": 5.0},
        gate_metric="r2",
        higher_is_better=True,
        evaluation_set="holdout: last 2 batches",
        n_eval=2,
        targets={"r2": 0.9},
        artifacts={"holdout_predictions": pl.DataFrame({"y": [1.0, 2.0]})},
        minimum=registry.Minimum("regressor"),
    )


def _score(m: Any) -> float:
    return float(m.score)


def test_worse_challenger_is_not_promoted_and_both_scores_are_recorded(
    mlflow_uri: str, tmp_path: Path
) -> None:
    first = registry.register(_trained(0.8), _score)
    assert first.proposed and first.version == "1" and first.champion_version is None
    # the registry never promotes by itself: the gate proposes, a signature promotes
    # (compliance.promotions calls set_champion after the signature)
    assert not first.promoted and registry.load_champion("pharma_test_model") is None
    registry.set_champion("pharma_test_model", "1")
    worse = registry.register(_trained(0.6), _score)
    assert not worse.proposed
    assert worse.champion_score == pytest.approx(0.8)
    assert worse.challenger_score == pytest.approx(0.6)
    model, version = registry.load_champion("pharma_test_model")  # type: ignore[misc]
    assert version == "1" and model.score == 0.8

    client = MlflowClient(tracking_uri=mlflow_uri)
    mv = client.get_model_version("pharma_test_model", worse.version)
    assert mv.tags["promoted"] == "False"
    assert float(mv.tags["champion_score"]) == pytest.approx(0.8)
    assert float(mv.tags["challenger_score"]) == pytest.approx(0.6)
    assert mv.tags["decision"].startswith("kept champion: ")
    assert mv.tags["promotion_decision"] == registry.KEPT_CHAMPION
    assert "champion v1 stays" in mv.tags["promotion_reason"]
    run = client.get_run(worse.run_id)
    assert run.data.metrics["gate_champion_score"] == pytest.approx(0.8)
    assert run.data.metrics["gate_challenger_score"] == pytest.approx(0.6)
    assert run.data.metrics["gate_proposed"] == 0.0
    assert run.data.params["features"] == "f1,f2"
    assert run.data.params["data_version.silver/batch_timeline"] == "7"
    assert run.data.tags["data_version.gold/batch_summary"] == "None"

    # an equally good challenger replaces the champion (ties go to the newer data)
    tie = registry.register(_trained(0.8), _score)
    assert tie.proposed and tie.champion_version == "1"
    assert registry.load_champion("pharma_test_model")[1] == "1"  # type: ignore[index]
    registry.set_champion("pharma_test_model", tie.version)
    assert registry.load_champion("pharma_test_model")[1] == tie.version  # type: ignore[index]
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_model_version("pharma_test_model", "1").tags["promoted"] == "False"
    assert client.get_model_version("pharma_test_model", tie.version).tags["promoted"] == "True"

    # artifacts live next to the SQLite store, not in the working directory
    art = Path(mlflow_uri.removeprefix("sqlite:///")).parent / "artifacts"
    assert list(art.rglob("model.pkl"))
    assert not (Path.cwd() / "mlruns").exists()

    models = registry.list_models()
    assert models.filter(pl.col("is_champion"))["version"].to_list() == [tie.version]
    assert models.height == 3
    assert models.filter(pl.col("version") == "2")["score"][0] == pytest.approx(0.6)


def test_champion_rescored_on_the_same_holdout(mlflow_uri: str) -> None:
    """The gate uses the champion's score on today's held-out set, not its old figure."""
    registry.register(_trained(0.9, "pharma_drift"), _score)
    registry.set_champion("pharma_drift", "1")
    # the same champion scores 0.5 on the new held-out set; a 0.7 challenger wins
    reg = registry.register(_trained(0.7, "pharma_drift"), lambda m: 0.5)
    assert reg.proposed and reg.champion_score == pytest.approx(0.5)


def test_performance_rows_and_lookup_by_tag(mlflow_uri: str) -> None:
    t = _trained(0.95, "pharma_perf")
    reg = registry.register(t, _score)
    rows = registry.performance_rows(t, reg)
    assert set(rows["metric"]) == {"r2", "mae", "baseline_mae"}
    r2 = rows.filter(pl.col("metric") == "r2").row(0, named=True)
    # not champion before a signature
    assert r2["target"] == 0.9 and r2["target_met"] is True and r2["is_champion"] is False
    assert rows.filter(pl.col("metric") == "mae")["target"].is_null().all()
    registry.tag_run(reg.run_id, {"dagster_run_id": "abc"})
    again = registry.performance_rows_for_tag("dagster_run_id", "abc")
    assert sorted(again["metric"]) == ["baseline_mae", "mae", "r2"]
    assert again.filter(pl.col("metric") == "r2")["target_met"].item() is True
    assert registry.performance_rows_for_tag("dagster_run_id", "nope").height == 0


def test_bad_gate_metric_and_store_are_explained(mlflow_uri: str) -> None:
    t = _trained(0.5)
    t.gate_metric = "auc"
    with pytest.raises(ValueError, match="gate_metric 'auc' is not among its metrics"):
        registry.register(t, _score)
    with pytest.raises(ValueError, match="no longer supports file stores"):
        registry.artifact_root("file:///tmp/mlruns")


def test_default_tracking_uri_is_under_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHARMA_MLFLOW_URI", raising=False)
    uri = registry.tracking_uri()
    assert uri.startswith("sqlite:///") and uri.endswith(".state/mlflow/mlflow.db")
