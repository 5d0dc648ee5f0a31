"""Back-test of the calibrated twin on a lake's historical batches, next to XGBoost.

The held-out batches are the batch-quality models' own (``ml.quality.split_batches``: the
latest completed batches by start), read from the XGBoost hold-out predictions the training
run stored (MLflow artifact ``holdout_predictions`` of the run named in
``gold/model_performance``), so both methods are scored on the same batches against the
same release results (``gold/batch_summary``: final titer, product mass).

For each held-out batch the twin is calibrated on what the lake held at day 3, 7 and 10
(`observations.from_lake`, cut with ``until``: in-process LIMS sampled by then, hourly
online signals, the production phase if it had started) and forecasts harvest titer and
product mass (baseline what-if to the planned end; ensemble median, 80 % and 90 % ranges
of the release measurement: each twin's value with the release assay's 3 % error, since the
targets are measured values).

The hybrids are XGBoost models on the quality model's feature table at the horizon plus
the twin's forecast (``hybrid feature``), or on the twin's residual (``hybrid residual``:
prediction = twin + XGBoost), trained on the training batches only, whose twin forecasts
come from their own as-of data. Their intervals are quantiles of out-of-fold residuals in
the training period (time-ordered folds), as the quality models'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import features, quality, registry
from pharma_assets.twin.config import RecipeBook, load_recipes

from .calibration import calibrate
from .observations import CalibrationDataError, from_lake
from .whatif import RELEASE_ASSAY_CV, Scenario, run_whatif

#: twin CQA -> quality-model target (gold/batch_summary)
TARGETS = {"titer_g_l": "final_titer_g_l", "product_mass_kg": "product_mass_kg"}
TWIN_DAYS = (3.0, 7.0, 10.0)
#: release-assay draws per twin: the targets are measured values (titer assay CV 3 %;
#: product mass is release titer x harvest volume, so it carries the same CV)
ASSAY_DRAWS = 20
#: the quality model's feature horizon whose data is all known at the twin's as-of day
FEATURE_HORIZON = {3.0: "day3", 7.0: "day7", 10.0: "day7"}
XGB_HORIZONS = ("day3", "day7", "harvest")
ROW_SCHEMA = {
    "batch_id": pl.String,
    "method": pl.String,
    "horizon": pl.String,
    "target": pl.String,
    "true": pl.Float64,
    "predicted": pl.Float64,
    "lower_80": pl.Float64,
    "upper_80": pl.Float64,
    "lower_90": pl.Float64,
    "upper_90": pl.Float64,
}


def xgb_holdout_from_registry(
    lake: Lake, uri: str | None = None
) -> dict[tuple[str, str], pl.DataFrame]:
    """(target, horizon) -> the hold-out predictions of the latest quality training run
    recorded in ``gold/model_performance`` (batch_id, y_true, predicted, lower, upper)."""
    perf = lake.read("gold", "model_performance")
    if perf is None or perf.is_empty():
        raise ValueError("gold/model_performance is empty: train the quality models first")
    out = {}
    for target in TARGETS.values():
        for horizon in XGB_HORIZONS:
            rows = perf.filter(pl.col("model_name") == quality.model_name(target, horizon))
            if rows.is_empty():
                continue
            run_id = str(rows.sort("computed_at")["mlflow_run_id"][-1])
            out[(target, horizon)] = registry.load_artifact_table(
                run_id, "holdout_predictions", uri=uri
            )
    if not out:
        raise ValueError("gold/model_performance has no titer or product-mass quality model")
    return out


def xgb_holdout_from_results(
    results: Sequence[quality.QualityResult],
) -> dict[tuple[str, str], pl.DataFrame]:
    """The same, from a training run in this process."""
    return {
        (r.model.target, r.model.horizon): r.predictions
        for r in results
        if r.model.target in TARGETS.values()
    }


def held_out_ids(xgb: dict[tuple[str, str], pl.DataFrame]) -> list[str]:
    """The quality models' held-out batches: one split per run, each target's models scored
    on the held-out batches with that release result (every horizon's must agree)."""
    per_target: dict[str, set[str]] = {}
    for (target, horizon), pred in xgb.items():
        s = set(pred["batch_id"].to_list())
        if per_target.setdefault(target, s) != s:
            raise ValueError(
                f"hold-out batches of ({target!r}, {horizon!r}) differ from the other "
                f"horizons' ({len(s)} vs {len(per_target[target])} batches)"
            )
    return sorted(set().union(*per_target.values()))


def twin_forecasts(
    lake: Lake,
    batch_ids: Sequence[str],
    days: Sequence[float] = TWIN_DAYS,
    n_members: int = 50,
    recipes: RecipeBook | None = None,
    progress: Callable[[int, int], None] | None = None,
    skipped: dict[str, str] | None = None,
) -> pl.DataFrame:
    """One row per batch x as-of day x twin target: the harvest forecast made from what the
    lake held at that day (median, 80 % and 90 % ranges). A batch that ended before the day
    has no forecast at it; a batch calibration refuses (`CalibrationDataError`, e.g. tags
    missing) has none, and its reason goes to ``skipped``. The intervals are those of the release measurement: each twin's
    harvest value with the release assay's error (``ASSAY_DRAWS`` draws per twin)."""
    recipes = recipes or load_recipes()
    rows = []
    for i, bid in enumerate(batch_ids):
        full = from_lake(lake, bid)
        recipe = recipes.get(full.recipe_id)
        for day in days:
            if day * 24 > full.as_of_h:
                continue
            seen = full.until(day * 24)
            seed = int.from_bytes(bid.encode()[-4:], "big") + int(day)
            try:
                cal = calibrate(seen, recipe, n_members=n_members, seed=seed)
            except CalibrationDataError as e:
                if skipped is None:
                    raise
                skipped[bid] = str(e)
                break
            res = run_whatif(cal, Scenario())
            rng = np.random.default_rng(seed)
            for twin_t, target in TARGETS.items():
                v = res.baseline.cqas[twin_t]
                z = rng.standard_normal((len(v), ASSAY_DRAWS))
                measured = (v[:, None] * (1 + RELEASE_ASSAY_CV["titer_g_l"] * z)).ravel()
                med = float(np.median(v))
                q05, q10, q90, q95 = np.quantile(measured, (0.05, 0.10, 0.90, 0.95))
                rows.append(
                    {
                        "batch_id": bid,
                        "horizon": f"day{day:g}",
                        "as_of_h": day * 24,
                        "target": target,
                        "predicted": float(med),
                        "lower_80": float(q10),
                        "upper_80": float(q90),
                        "lower_90": float(q05),
                        "upper_90": float(q95),
                        "prior_only": cal.prior_only,
                    }
                )
        if progress:
            progress(i + 1, len(batch_ids))
    return pl.DataFrame(rows)


def _truth(lake: Lake) -> pl.DataFrame:
    summary = lake.read("gold", "batch_summary")
    if summary is None:
        raise ValueError("gold/batch_summary is missing: run the pipeline first")
    tg = quality.targets_frame(summary)
    return tg.select("batch_id", *TARGETS.values()).unpivot(
        index="batch_id", variable_name="target", value_name="true"
    )


def _oof_interval(
    x: np.ndarray, y: np.ndarray, seed: int, n_estimators: int
) -> tuple[float, float, float, float]:
    """q05, q10, q90, q95 of out-of-fold residuals, time-ordered folds (rows sorted)."""
    folds = np.array_split(np.arange(len(y)), 5)
    resid: list[float] = []
    for k in range(1, len(folds)):
        a, b = np.concatenate(folds[:k]), folds[k]
        if len(a) < 4 or len(b) == 0:
            continue
        m = quality._make(seed, n_estimators).fit(x[a], y[a])
        resid.extend((y[b] - m.predict(x[b])).tolist())
    if len(resid) < 4:
        return (math.nan,) * 4
    q = np.quantile(resid, (0.05, 0.10, 0.90, 0.95))
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def hybrid_forecasts(
    twin: pl.DataFrame,
    truth: pl.DataFrame,
    feats_by_horizon: dict[str, pl.DataFrame],
    train_ids: Sequence[str],
    hold_ids: Sequence[str],
    seed: int = 42,
    n_estimators: int = 300,
) -> pl.DataFrame:
    """Rows (ROW_SCHEMA) of the two hybrids on the held-out batches, trained on
    ``train_ids`` only: the twin forecast as one more feature, and XGBoost on the twin's
    residual."""
    rows = []
    for (horizon, target), tw in twin.group_by(["horizon", "target"], maintain_order=True):
        day = float(str(horizon).removeprefix("day"))
        fh = FEATURE_HORIZON.get(day)
        if fh is None or fh not in feats_by_horizon:
            continue
        feats = feats_by_horizon[fh]
        cols = features.batch_feature_columns(feats)
        data = (
            feats.join(tw.select("batch_id", twin_pred="predicted"), on="batch_id")
            .join(truth.filter(pl.col("target") == target).drop("target"), on="batch_id")
            .filter(pl.col("true").is_not_null())
            .sort("start_ts", "batch_id")
        )
        tr = data.filter(pl.col("batch_id").is_in(list(train_ids)))
        te = data.filter(pl.col("batch_id").is_in(list(hold_ids)))
        if tr.height < 8 or te.is_empty():
            continue
        xcols = [*cols, "twin_pred"]
        x_tr, x_te = quality._matrix(tr, xcols), quality._matrix(te, xcols)
        y_tr, y_te = tr["true"].to_numpy(), te["true"].to_numpy()
        tw_tr, tw_te = tr["twin_pred"].to_numpy(), te["twin_pred"].to_numpy()
        for method, y_fit, base in (
            ("hybrid feature", y_tr, 0.0),
            ("hybrid residual", y_tr - tw_tr, None),
        ):
            reg = quality._make(seed, n_estimators).fit(x_tr, y_fit)
            p = reg.predict(x_te) + (tw_te if base is None else base)
            q05, q10, q90, q95 = _oof_interval(x_tr, y_fit, seed, n_estimators)
            for j, bid in enumerate(te["batch_id"].to_list()):
                rows.append(
                    {
                        "batch_id": bid,
                        "method": method,
                        "horizon": str(horizon),
                        "target": str(target),
                        "true": float(y_te[j]),
                        "predicted": float(p[j]),
                        "lower_80": float(p[j] + q10),
                        "upper_80": float(p[j] + q90),
                        "lower_90": float(p[j] + q05),
                        "upper_90": float(p[j] + q95),
                    }
                )
    return pl.DataFrame(rows, schema=ROW_SCHEMA)


def lake_backtest(
    lake: Lake,
    xgb: dict[tuple[str, str], pl.DataFrame],
    days: Sequence[float] = TWIN_DAYS,
    n_members: int = 50,
    hybrid: bool = True,
    feats_by_horizon: dict[str, pl.DataFrame] | None = None,
    holdout_fraction: float = 0.25,
    recipes: RecipeBook | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    skipped: dict[str, str] | None = None,
) -> pl.DataFrame:
    """Per-batch predictions (ROW_SCHEMA) of the twin, XGBoost and (``hybrid``) the two
    hybrids on the quality models' held-out batches. ``xgb``: the quality run's hold-out
    predictions (`xgb_holdout_from_registry` or `xgb_holdout_from_results`). Batches the twin
    cannot calibrate are left out of the twin's and hybrids' rows, their reasons in
    ``skipped`` (batch_id -> message); without ``skipped`` the first one raises."""
    hold = held_out_ids(xgb)
    truth = _truth(lake)
    rows = [
        pred.select(
            "batch_id",
            method=pl.lit("xgboost"),
            horizon=pl.lit(h),
            target=pl.lit(t),
            true=pl.col("y_true").cast(pl.Float64),
            predicted=pl.col("predicted").cast(pl.Float64),
            lower_80=pl.col("lower").cast(pl.Float64),
            upper_80=pl.col("upper").cast(pl.Float64),
            lower_90=pl.lit(None, pl.Float64),  # the quality models carry an 80 % interval
            upper_90=pl.lit(None, pl.Float64),
        )
        for (t, h), pred in xgb.items()
    ]

    def step(stage: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda i, n: progress(stage, i, n))

    twin = twin_forecasts(lake, hold, days, n_members, recipes, step("twin, held-out"), skipped)
    rows.append(
        # per target, the batches XGBoost is scored on: those with that release result
        twin.join(truth.filter(pl.col("true").is_not_null()), on=["batch_id", "target"]).select(
            "batch_id",
            pl.lit("twin").alias("method"),
            *[c for c in ROW_SCHEMA if c not in ("batch_id", "method")],
        )
    )
    if hybrid:
        if feats_by_horizon is None and lake.exists("features", "batch"):
            bf = lake.read("features", "batch")
            assert bf is not None
            feats_by_horizon = {
                h: bf.filter(pl.col("horizon") == h).drop("horizon") for h in XGB_HORIZONS
            }
        inputs = features.load_inputs(lake, with_hourly=feats_by_horizon is None)
        train_ids, split_hold, _ = quality.split_batches(
            inputs, holdout_fraction, tuple(TARGETS.values())
        )
        if sorted(split_hold) != hold:
            raise ValueError(
                "the quality models' stored hold-out differs from the lake's split now "
                f"({len(hold)} vs {len(split_hold)} batches): retrain, then back-test"
            )
        if feats_by_horizon is None:
            fhs = sorted({FEATURE_HORIZON[d] for d in days if d in FEATURE_HORIZON})
            feats_by_horizon = {
                h: features.batch_features(inputs, h, batch_ids=[*train_ids, *hold]) for h in fhs
            }
        twin_tr = twin_forecasts(
            lake, train_ids, days, n_members, recipes, step("twin, train"), skipped
        )
        rows.append(
            hybrid_forecasts(pl.concat([twin_tr, twin]), truth, feats_by_horizon, train_ids, hold)
        )
    return pl.concat([r.select(list(ROW_SCHEMA)).cast(ROW_SCHEMA) for r in rows])  # type: ignore[arg-type]


def metrics(rows: pl.DataFrame) -> pl.DataFrame:
    """R², MAE and 80 % / 90 % interval coverage per method, horizon and target."""
    out = []
    for (method, horizon, target), g in rows.group_by(
        ["method", "horizon", "target"], maintain_order=True
    ):
        y, p = g["true"].to_numpy(), g["predicted"].to_numpy()
        m = quality.regression_metrics(y, p)
        cov = {}
        for lvl in (80, 90):
            lo, hi = g[f"lower_{lvl}"], g[f"upper_{lvl}"]
            cov[lvl] = (
                float(((lo.to_numpy() <= y) & (y <= hi.to_numpy())).mean())
                if lo.null_count() == 0
                else math.nan
            )
        out.append(
            {
                "target": target,
                "horizon": horizon,
                "method": method,
                "n": g.height,
                "r2": m["r2"],
                "mae": m["mae"],
                "coverage_80": cov[80],
                "coverage_90": cov[90],
            }
        )
    order = {"day3": 0, "day7": 1, "day10": 2, "harvest": 3}
    return (
        pl.DataFrame(out)
        .with_columns(_h=pl.col("horizon").replace_strict(order, default=9))
        .sort("target", "_h", "method")
        .drop("_h")
    )


def common_batches(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows of the batches every method forecast, per target (when the twin could not
    calibrate a batch, XGBoost's row of it is dropped too, for a like-for-like table)."""
    n_methods = rows.group_by("target").agg(n=pl.col("method").n_unique())
    have = (
        rows.group_by("target", "batch_id")
        .agg(k=pl.col("method").n_unique())
        .join(n_methods, on="target")
        .filter(pl.col("k") == pl.col("n"))
        .select("target", "batch_id")
    )
    return rows.join(have, on=["target", "batch_id"])
