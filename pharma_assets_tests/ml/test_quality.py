"""Batch quality models: split by start time, chance level with shuffled labels, metrics
recomputed from the stored held-out predictions, intervals from the training period."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from pharma_assets.ml import features, quality, registry

N_TREES = 60


@pytest.fixture(scope="module")
def results(ml_inputs: features.MlInputs) -> list[quality.QualityResult]:
    return quality.train_quality(ml_inputs, n_estimators=N_TREES)


def test_every_target_and_horizon_trained_on_earlier_batches(
    ml_inputs: features.MlInputs, results: list[quality.QualityResult]
) -> None:
    names = {r.trained.name for r in results}
    assert names == {quality.model_name(t, h) for t in quality.TARGETS for h in features.HORIZONS_H}
    train_ids, hold_ids, _cutoff = quality.split_batches(ml_inputs, 0.25)
    starts = dict(ml_inputs.batches.select("batch_id", "start_ts").iter_rows())
    assert max(starts[b] for b in train_ids) < min(starts[b] for b in hold_ids)
    for r in results:
        assert set(r.predictions["batch_id"]) <= set(hold_ids)
        assert r.trained.n_eval == r.predictions.height > 0
    titer = next(r for r in results if r.trained.name.endswith("final_titer_g_l_harvest"))
    assert titer.trained.metrics["r2"] > 0.5  # informative on the small plant


def test_metrics_recomputed_from_stored_predictions(
    results: list[quality.QualityResult], mlflow_uri: str
) -> None:
    r = next(r for r in results if r.trained.name.endswith("product_mass_kg_day7"))
    reg = registry.register(r.trained, r.score_fn)
    pred = registry.load_artifact_table(reg.run_id, "holdout_predictions")
    from mlflow import MlflowClient

    logged = MlflowClient(tracking_uri=mlflow_uri).get_run(reg.run_id).data.metrics
    y, p = pred["y_true"].to_numpy(), pred["predicted"].to_numpy()
    assert logged["r2"] == pytest.approx(r2_score(y, p))
    assert logged["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert logged["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)))
    inside = ((pred["lower"] <= pred["y_true"]) & (pred["y_true"] <= pred["upper"])).mean()
    assert logged["interval_coverage_80"] == pytest.approx(inside)


def test_interval_comes_from_training_residuals_only(ml_inputs: features.MlInputs) -> None:
    """Changing the held-out outcomes changes the metrics but not the interval widths."""
    a = quality.train_quality(
        ml_inputs, n_estimators=N_TREES, targets=("final_titer_g_l",), horizons=("day7",)
    )[0]
    _, hold, _ = quality.split_batches(ml_inputs, 0.25)
    summary = ml_inputs.batch_summary.with_columns(
        final_titer_g_l=pl.when(pl.col("batch_id").is_in(hold))
        .then(pl.col("final_titer_g_l") * 3)
        .otherwise(pl.col("final_titer_g_l"))
    )
    # only the outcomes differ: every other input (the CoA results too) is the same
    altered = dataclasses.replace(ml_inputs, batch_summary=summary)
    b = quality.train_quality(
        altered, n_estimators=N_TREES, targets=("final_titer_g_l",), horizons=("day7",)
    )[0]
    assert (a.model.resid_lo, a.model.resid_hi) == (b.model.resid_lo, b.model.resid_hi)
    assert a.trained.metrics["r2"] != b.trained.metrics["r2"]


def test_shuffled_labels_do_no_better_than_chance(ml_inputs: features.MlInputs) -> None:
    r2 = []
    for seed in (1, 2, 3):
        res = quality.train_quality(
            ml_inputs,
            n_estimators=N_TREES,
            shuffle_labels=True,
            seed=seed,
            targets=("final_titer_g_l", "product_mass_kg"),
        )
        r2 += [r.trained.metrics["r2"] for r in res]
    assert np.mean(r2) < 0.1, r2


def test_too_few_batches_is_explained(ml_inputs: features.MlInputs) -> None:
    few = dataclasses.replace(ml_inputs, batch_summary=ml_inputs.batch_summary.head(5))
    with pytest.raises(ValueError, match="completed batches with release results"):
        quality.train_quality(few)


def test_r2_bootstrap_interval_brackets_the_r2() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(3.0, 0.5, 200)
    pred = pl.DataFrame({"y_true": y, "predicted": y + rng.normal(0, 0.2, 200)})
    r2 = quality.regression_metrics(y, pred["predicted"].to_numpy())["r2"]
    lo, hi = quality.r2_bootstrap_ci(pred)
    assert lo < r2 < hi and hi - lo < 0.2
    exact = pl.DataFrame({"y_true": y, "predicted": y})
    assert quality.r2_bootstrap_ci(exact) == (1.0, 1.0)


def test_model_kinds_need_an_anchor_and_fit() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 0.1, (60, 3))
    y = 2.0 * x[:, 0] + rng.normal(0, 0.01, 60)
    for kind in quality.MODEL_KINDS:
        m = quality.YieldRegressor(kind, 0, 20, anchor=0).fit(x, y)
        assert m.predict(x).shape == (60,)
    # the anchor alone, calibrated, recovers the linear relation
    m = quality.YieldRegressor("anchor_linear", 0, 20, anchor=0).fit(x, y)
    assert quality.regression_metrics(y, m.predict(x))["r2"] > 0.99
    with pytest.raises(ValueError, match="needs an anchor"):
        quality.YieldRegressor("xgb_anchor_ratio", 0, 20, anchor=None)
    with pytest.raises(ValueError, match="unknown"):
        quality.YieldRegressor("forest", 0, 20, anchor=None)
