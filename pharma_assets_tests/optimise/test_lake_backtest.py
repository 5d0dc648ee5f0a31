"""The twin back-test on a real lake's held-out batches, next to the XGBoost quality models.

The lake is the ML tests' plant (2 units x 40 batches, pushed landing -> bronze -> silver ->
gold); the quality models are trained on it here and registered in a real MLflow SQLite
store, whose stored hold-out predictions define the held-out batches.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import features, quality, registry
from pharma_assets.optimise import lake_backtest as lb
from pharma_assets_tests.conftest import TEST_MODEL_KINDS
from pharma_assets_tests.ml.conftest import MlPlant, ml_inputs, ml_plant  # noqa: F401

N_TREES = 60
N_MEMBERS = 12


@pytest.fixture(scope="module")
def results(ml_inputs: features.MlInputs) -> list[quality.QualityResult]:  # noqa: F811
    return quality.train_quality(
        ml_inputs,
        n_estimators=N_TREES,
        targets=tuple(lb.TARGETS.values()),
        horizons=("day3", "day7", "harvest"),
        model_kinds=TEST_MODEL_KINDS,
    )


@pytest.fixture(scope="module")
def backtest(
    ml_plant: MlPlant,  # noqa: F811
    results: list[quality.QualityResult],
) -> pl.DataFrame:
    return lb.lake_backtest(
        ml_plant.lake(), lb.xgb_holdout_from_results(results), days=(3.0, 7.0), n_members=N_MEMBERS
    )


def test_held_out_batches_are_the_quality_models(
    ml_inputs: features.MlInputs,  # noqa: F811
    results: list[quality.QualityResult],
    backtest: pl.DataFrame,
) -> None:
    _, hold, _ = quality.split_batches(ml_inputs, 0.25, tuple(lb.TARGETS.values()))
    assert len(hold) >= 5
    for method in ("twin", "xgboost", "hybrid feature", "hybrid residual"):
        got = backtest.filter(pl.col("method") == method)
        assert set(got["batch_id"]) == set(hold), method
    # scored against the same release results as XGBoost
    tw = backtest.filter(pl.col("method") == "twin").select("batch_id", "target", "true")
    xg = backtest.filter(pl.col("method") == "xgboost").select("batch_id", "target", "true")
    xg = xg.unique()
    both = tw.join(xg, on=["batch_id", "target"], suffix="_xgb")
    assert both.height == tw.height and (both["true"] == both["true_xgb"]).all()


def test_metrics_recomputed_from_stored_predictions(backtest: pl.DataFrame) -> None:
    table = lb.metrics(backtest)
    assert set(table["method"]) == {"twin", "xgboost", "hybrid feature", "hybrid residual"}
    for r in table.iter_rows(named=True):
        g = backtest.filter(
            (pl.col("method") == r["method"])
            & (pl.col("horizon") == r["horizon"])
            & (pl.col("target") == r["target"])
        )
        y, p = g["true"].to_numpy(), g["predicted"].to_numpy()
        assert r["n"] == len(y)
        assert r["mae"] == pytest.approx(np.abs(y - p).mean())
        assert r["r2"] == pytest.approx(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        lo, hi = g["lower_80"].to_numpy(), g["upper_80"].to_numpy()
        assert r["coverage_80"] == pytest.approx(((lo <= y) & (y <= hi)).mean())
    twin = backtest.filter(pl.col("method") == "twin")
    assert (twin["lower_90"] <= twin["lower_80"]).all()
    assert (twin["lower_80"] <= twin["predicted"]).all()
    assert (twin["predicted"] <= twin["upper_80"]).all()
    # the twin's forecast improves with data: day 7 beats day 3 on titer MAE
    tw = table.filter((pl.col("method") == "twin") & (pl.col("target") == "final_titer_g_l"))
    mae = dict(zip(tw["horizon"], tw["mae"], strict=True))
    assert mae["day7"] < mae["day3"]


def test_xgboost_side_is_read_from_the_registry_run_in_model_performance(
    ml_plant: MlPlant,  # noqa: F811
    results: list[quality.QualityResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    lake = Lake.at(tmp_path / "lake")
    r = next(r for r in results if r.trained.name.endswith("final_titer_g_l_day7"))
    reg = registry.register(r.trained, r.score_fn, uri=uri)
    lake.append("gold", "model_performance", registry.performance_rows(r.trained, reg))
    got = lb.xgb_holdout_from_registry(lake, uri=uri)
    assert list(got) == [("final_titer_g_l", "day7")]
    stored = got[("final_titer_g_l", "day7")].sort("batch_id")
    assert stored["predicted"].to_list() == pytest.approx(
        r.predictions.sort("batch_id")["predicted"].to_list()
    )


def _copy_lake(src: Lake, dst: Path) -> Lake:
    shutil.copytree(src.root, dst)
    return Lake.at(dst)


def test_only_data_known_at_the_as_of_time_is_used(
    ml_plant: MlPlant,  # noqa: F811
    results: list[quality.QualityResult],
    tmp_path: Path,
) -> None:
    lake = ml_plant.lake()
    bid = lb.held_out_ids(lb.xgb_holdout_from_results(results))[0]
    batches = lake.read("silver", "batches", filter_expr=pl.col("batch_id") == bid)
    assert batches is not None
    start = batches["start_ts"][0]
    as_of = start + timedelta(days=7)
    base = lb.twin_forecasts(lake, [bid], days=(7.0,), n_members=N_MEMBERS)

    labs = lake.read("silver", "lab_results")
    assert labs is not None
    titer = (pl.col("batch_id") == bid) & (pl.col("analyte") == "titer_g_l")
    titer &= pl.col("sample_type") == "in_process"
    late = labs.filter(titer & (pl.col("sample_ts") > as_of)).sort("sample_ts")
    assert late.height >= 2
    moved_row = titer & (pl.col("sample_ts") == late["sample_ts"][0])

    def forecast_with(changed: pl.DataFrame, name: str) -> pl.DataFrame:
        copy = _copy_lake(lake, tmp_path / name)
        copy.overwrite("silver", "lab_results", changed)
        return lb.twin_forecasts(copy, [bid], days=(7.0,), n_members=N_MEMBERS)

    # a post-as-of result with a wild value, still after the as-of time: nothing changes
    wild = labs.with_columns(
        value=pl.when(moved_row).then(pl.col("value") * 3).otherwise(pl.col("value"))
    )
    same = forecast_with(wild, "wild")
    assert same["predicted"].to_list() == base["predicted"].to_list()
    # the same result moved before the as-of time: the day-7 forecast moves
    early = wild.with_columns(
        sample_ts=pl.when(moved_row)
        .then(pl.lit(as_of - timedelta(hours=2)))
        .otherwise(pl.col("sample_ts"))
    )
    moved = forecast_with(early, "moved")
    t = moved.filter(pl.col("target") == "final_titer_g_l")["predicted"][0]
    t0 = base.filter(pl.col("target") == "final_titer_g_l")["predicted"][0]
    assert abs(t - t0) > 0.02 * t0


def test_models_with_different_hold_outs_are_refused(
    results: list[quality.QualityResult],
) -> None:
    xgb = lb.xgb_holdout_from_results(results)
    key = next(iter(xgb))
    xgb[key] = xgb[key].head(xgb[key].height - 1)
    with pytest.raises(ValueError, match="differ from the other horizons"):
        lb.held_out_ids(xgb)
