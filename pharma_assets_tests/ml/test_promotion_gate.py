"""The promotion gate: no model becomes champion unless it meets its minimum (issue 17).

As a pure function (metrics, champion score -> decision + reason), and through the real
training path (quality models on the small simulated plant, MLflow SQLite store)."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from pharma_assets.ml import features, quality, registry
from pharma_assets.ml.registry import (
    KEPT_CHAMPION,
    NOT_PROMOTED,
    PROMOTED,
    Minimum,
    promotion_gate,
)
from pharma_assets_tests.conftest import TEST_MODEL_KINDS

REG = Minimum("regressor")
CONT = Minimum("detector", positives_metric="n_contaminated", floors={"detection_share": 0.0})
PDM = Minimum("detector", positives_metric="n_failures", floors={"roc_auc": 0.5})


def _reg(r2: float, mae: float = 1.0, base_mae: float = 2.0) -> dict[str, float]:
    return {"r2": r2, "mae": mae, "baseline_r2": -0.02, "baseline_mae": base_mae}


def test_negative_r2_is_not_promoted_even_as_first_version() -> None:
    d = promotion_gate(_reg(-0.57), "r2", True, REG)
    assert d.decision == NOT_PROMOTED and not d.promoted
    assert "R² -0.570 <= 0" in d.reason


def test_below_the_naive_baseline_is_not_promoted() -> None:
    d = promotion_gate(_reg(0.3, mae=2.5, base_mae=2.0), "r2", True, REG)
    assert d.decision == NOT_PROMOTED
    assert "mae 2.5 is no better than the naive baseline" in d.reason and "2" in d.reason


def test_regressor_without_a_baseline_cannot_be_evaluated() -> None:
    d = promotion_gate({"r2": 0.9, "mae": 0.1}, "r2", True, REG)
    assert d.decision == NOT_PROMOTED and "no naive baseline" in d.reason


def test_nan_r2_cannot_be_evaluated_and_champion_stays() -> None:
    d = promotion_gate(_reg(math.nan), "r2", True, REG, champion_version="3", champion_score=0.4)
    assert d.decision == NOT_PROMOTED
    assert d.reason.startswith("cannot be evaluated") and "champion v3 stays" in d.reason


def test_good_regressor_is_promoted_and_says_why() -> None:
    d = promotion_gate(_reg(0.8, mae=1.0, base_mae=3.0), "r2", True, REG)
    assert d.decision == PROMOTED and d.promoted
    assert "R² 0.800 > 0" in d.reason and "mae 1 vs naive 3" in d.reason


def test_champion_comparison_after_the_minimum() -> None:
    worse = promotion_gate(_reg(0.5), "r2", True, REG, "2", 0.6, "re-scored")
    assert worse.decision == KEPT_CHAMPION and "champion v2 stays" in worse.reason
    better = promotion_gate(_reg(0.7), "r2", True, REG, "2", 0.6, "re-scored")
    assert better.decision == PROMOTED and "r2 0.7 >= champion v2 0.6" in better.reason


def test_detector_without_a_positive_case_is_not_promoted() -> None:
    m = {"n_contaminated": 0.0, "detection_share": math.nan, "window_fpr_clean": 0.0}
    d = promotion_gate(m, "window_fpr_clean", False, CONT)
    assert d.decision == NOT_PROMOTED
    assert "no positive case in the held-out set (n_contaminated = 0)" in d.reason


def test_detector_without_labels_is_not_promoted() -> None:
    """No ground truth: the gate metric is a false-alarm rate, detection never evaluated."""
    d = promotion_gate(
        {"window_alarm_rate_mes_clean": 0.001}, "window_alarm_rate_mes_clean", False, CONT
    )
    assert d.decision == NOT_PROMOTED and "detection not evaluated: n_contaminated" in d.reason


def test_detector_that_detects_nothing_is_not_promoted() -> None:
    m = {"n_contaminated": 2.0, "detection_share": 0.0}
    d = promotion_gate(m, "detection_share", True, CONT)
    assert d.decision == NOT_PROMOTED and "detection_share 0 does not reach" in d.reason
    ok = promotion_gate(
        {"n_contaminated": 2.0, "detection_share": 0.5}, "detection_share", True, CONT
    )
    assert ok.promoted and "n_contaminated = 2" in ok.reason


def test_pdm_at_chance_is_not_promoted() -> None:
    d = promotion_gate({"n_failures": 3.0, "roc_auc": 0.5}, "roc_auc", True, PDM)
    assert d.decision == NOT_PROMOTED and "roc_auc 0.5 does not reach the minimum (> 0.5)" in (
        d.reason
    )


def test_no_minimum_declared_is_not_promoted() -> None:
    d = promotion_gate({"r2": 0.99}, "r2", True, None)
    assert d.decision == NOT_PROMOTED and "no minimum declared" in d.reason


@pytest.fixture(scope="module")
def shuffled(ml_inputs: features.MlInputs) -> quality.QualityResult:
    """A real quality model trained on shuffled labels: R² below zero on the held-out set."""
    res = quality.train_quality(
        ml_inputs,
        n_estimators=30,
        targets=("final_titer_g_l",),
        horizons=("day7",),
        shuffle_labels=True,
        model_kinds=TEST_MODEL_KINDS,
    )
    return res[0]


def test_real_model_with_negative_r2_is_registered_not_promoted(
    shuffled: quality.QualityResult, ml_inputs: features.MlInputs, mlflow_uri: str
) -> None:
    t = shuffled.trained
    assert t.metrics["r2"] <= 0, t.metrics
    assert t.metrics["baseline_r2"] <= 0 and "baseline_mae" in t.metrics
    reg = registry.register(t, shuffled.score_fn)
    assert not reg.proposed and reg.promotion_decision == NOT_PROMOTED
    assert registry.load_champion(t.name) is None
    mv = MlflowClient(tracking_uri=mlflow_uri).get_model_version(t.name, reg.version)
    assert mv.tags["promotion_decision"] == NOT_PROMOTED
    assert "<= 0" in mv.tags["promotion_reason"]
    models = registry.list_models()
    row = models.row(0, named=True)
    assert row["is_champion"] is False and row["promotion_decision"] == NOT_PROMOTED
    assert row["promotion_reason"] == mv.tags["promotion_reason"]

    # the real model on the same rows: meets its minimum, becomes the first champion
    good = quality.train_quality(
        ml_inputs,
        n_estimators=30,
        targets=("final_titer_g_l",),
        horizons=("day7",),
        model_kinds=TEST_MODEL_KINDS,
    )[0]
    assert good.trained.metrics["r2"] > 0
    reg2 = registry.register(good.trained, good.score_fn)
    assert reg2.proposed, reg2.decision
    assert "first version to meet its minimum" in reg2.promotion_reason
    # the gate only proposes: champion only after a signature (compliance.promotions)
    assert not reg2.promoted and registry.load_champion(t.name) is None
