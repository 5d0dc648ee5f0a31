"""Batch quality models: split by start time, chance level with shuffled labels, metrics
recomputed from the stored held-out predictions, intervals from the training period."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from pharma_assets.ml import features, quality, registry
from pharma_assets_tests.conftest import TEST_MODEL_KINDS

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


def test_kind_chosen_on_training_folds_and_interval_from_its_residuals(
    ml_inputs: features.MlInputs, results: list[quality.QualityResult]
) -> None:
    """Every target x horizon chooses among all of ``MODEL_KINDS`` (the anchored kinds only
    where the target has a mass-balance anchor) the kind with the best R² on the training
    period's time-ordered folds; its interval is the 10/90 % quantiles of THAT kind's
    out-of-fold residuals, recomputed here from the same training rows."""
    chosen = set()
    for r in results:
        params, metrics = r.trained.params, r.trained.metrics
        anchored = r.model.target in quality.ANCHORS
        offered = [
            k
            for k in quality.MODEL_KINDS
            if anchored or k not in ("xgb_anchor_ratio", "anchor_linear")
        ]
        assert params["model_kinds"] == offered, r.trained.name
        cv = {k: metrics[f"cv_r2_{k}"] for k in offered}
        assert params["model_kind"] == max(cv, key=lambda k: cv[k]), (r.trained.name, cv)
        chosen.add(params["model_kind"])
    assert len(chosen) >= 2, chosen  # the choice differs between targets on this plant

    for name in ("final_titer_g_l_day7", "aggregates_pct_harvest"):
        r = next(r for r in results if r.trained.name.endswith(name))
        train_ids, hold_ids, _ = quality.split_batches(ml_inputs, 0.25)
        feats = features.batch_features(ml_inputs, r.model.horizon, batch_ids=train_ids + hold_ids)
        data = feats.join(quality.targets_frame(ml_inputs.batch_summary), on="batch_id")
        tr = data.filter(
            pl.col("batch_id").is_in(train_ids) & pl.col(r.model.target).is_not_null()
        ).sort("start_ts", "batch_id")
        assert r.model.features == features.batch_feature_columns(feats)
        x = tr.select(
            [pl.col(f).cast(pl.Float64).fill_nan(None) for f in r.model.features]
        ).to_numpy()
        y = tr[r.model.target].to_numpy().astype(float)
        col = quality.ANCHORS.get(r.model.target)
        anchor = r.model.features.index(col) if col in r.model.features else None
        kind = r.trained.params["model_kind"]
        i, p = quality.time_folds_oof(
            x, y, lambda k=kind, a=anchor: quality.YieldRegressor(k, 42, N_TREES, a)
        )
        assert quality.regression_metrics(y[i], p)["r2"] == pytest.approx(
            r.trained.metrics[f"cv_r2_{kind}"]
        )
        resid = y[i] - p
        assert r.model.resid_lo == pytest.approx(float(np.quantile(resid, 0.10)))
        assert r.model.resid_hi == pytest.approx(float(np.quantile(resid, 0.90)))
        assert r.model.regressor.kind == kind


def test_model_kinds_setting_narrows_the_choice(ml_inputs: features.MlInputs) -> None:
    """``PHARMA_QUALITY_MODEL_KINDS`` (via ``parse_model_kinds``) narrows the candidates;
    unset means all five; an unknown name is refused with the valid ones."""
    assert quality.parse_model_kinds(None) == quality.parse_model_kinds("") == quality.MODEL_KINDS
    assert quality.parse_model_kinds(" ridge, xgb ") == ("xgb", "ridge")
    with pytest.raises(ValueError, match=r"'forest' unknown; use a comma-separated subset"):
        quality.parse_model_kinds("xgb,forest")
    (r,) = quality.train_quality(
        ml_inputs,
        n_estimators=N_TREES,
        targets=("final_titer_g_l",),
        horizons=("harvest",),
        model_kinds=quality.parse_model_kinds("ridge,anchor_linear"),
    )
    assert r.trained.params["model_kinds"] == ["ridge", "anchor_linear"]
    assert r.trained.params["model_kind"] in ("ridge", "anchor_linear")
    assert set(k for k in r.trained.metrics if k.startswith("cv_r2_")) == {
        "cv_r2_ridge",
        "cv_r2_anchor_linear",
    }


def test_without_interval_the_held_out_figures_are_the_same(
    ml_inputs: features.MlInputs,
) -> None:
    """``interval=False`` (a single kind: the folds choose nothing) leaves out only the
    out-of-fold fits: same model, same held-out predictions and R², NaN interval."""
    kw = dict(targets=("final_titer_g_l",), horizons=("day7",), model_kinds=("ridge",))
    a = quality.train_quality(ml_inputs, **kw)[0]  # type: ignore[arg-type]
    b = quality.train_quality(ml_inputs, interval=False, **kw)[0]  # type: ignore[arg-type]
    # the same fit on the same rows (equal up to floating-point summation order)
    assert a.predictions["batch_id"].to_list() == b.predictions["batch_id"].to_list()
    np.testing.assert_allclose(b.predictions["predicted"], a.predictions["predicted"], rtol=1e-9)
    assert b.trained.metrics["r2"] == pytest.approx(a.trained.metrics["r2"], rel=1e-9)
    assert np.isfinite(a.model.resid_lo) and np.isnan(b.model.resid_lo)
    with pytest.raises(ValueError, match="single candidate model kind"):
        quality.train_quality(ml_inputs, interval=False, model_kinds=("xgb", "ridge"))


def test_interval_comes_from_training_residuals_only(ml_inputs: features.MlInputs) -> None:
    """Changing the held-out outcomes changes the metrics but not the interval widths."""
    kw = dict(
        n_estimators=N_TREES,
        targets=("final_titer_g_l",),
        horizons=("day7",),
        model_kinds=TEST_MODEL_KINDS,
    )
    a = quality.train_quality(ml_inputs, **kw)[0]  # type: ignore[arg-type]
    _, hold, _ = quality.split_batches(ml_inputs, 0.25)
    summary = ml_inputs.batch_summary.with_columns(
        final_titer_g_l=pl.when(pl.col("batch_id").is_in(hold))
        .then(pl.col("final_titer_g_l") * 3)
        .otherwise(pl.col("final_titer_g_l"))
    )
    # only the outcomes differ: every other input (the CoA results too) is the same
    altered = dataclasses.replace(ml_inputs, batch_summary=summary)
    b = quality.train_quality(altered, **kw)[0]  # type: ignore[arg-type]
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
            model_kinds=TEST_MODEL_KINDS,
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


def test_elastic_net_search_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PHARMA_QUALITY_ENET_SEARCH`` (via ``parse_enet_search``) sets the elastic net's
    folds and mixing ratios; unset, the product's 5 folds x 4 ratios. The fitted model
    searched exactly those, on the rows it was given."""
    from pharma_assets.defs.ml.resources import MlResource

    default = quality.ElasticNetSearch(quality.CV_FOLDS, quality.L1_RATIOS)
    assert quality.parse_enet_search(None) == quality.parse_enet_search(" ") == default
    assert quality.parse_enet_search("3:0.5, 1") == quality.ElasticNetSearch(3, (0.5, 1.0))
    for bad, why in (("1:0.5", "folds must be at least 2"), ("3:0,1", r"in \(0, 1\]")):
        with pytest.raises(ValueError, match=why):
            quality.parse_enet_search(bad)
    with pytest.raises(ValueError, match="use <folds>:<l1 ratio>"):
        quality.parse_enet_search("five")
    monkeypatch.delenv(quality.ENET_SEARCH_ENV, raising=False)
    assert MlResource.from_env().enet_search() == default
    monkeypatch.setenv(quality.ENET_SEARCH_ENV, "2:1.0")
    assert MlResource.from_env().enet_search() == quality.ElasticNetSearch(2, (1.0,))

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6))
    y = 2 * x[:, 0] + rng.normal(scale=0.1, size=40)
    for search in (None, quality.ElasticNetSearch(3, (0.5, 1.0))):
        m = quality.RegularisedLinear(seed=1, search=search).fit(x, y)
        net = m.pipe[-1]
        want = search or default
        assert net.cv.get_n_splits() == want.folds
        assert list(net.l1_ratio) == list(want.l1_ratios) and net.l1_ratio_ in want.l1_ratios
        assert net.mse_path_.shape[0] == len(want.l1_ratios)
        assert net.mse_path_.shape[-1] == want.folds
        assert m.n_selected >= 1 and abs(net.coef_[0]) > 1  # the signal is found
