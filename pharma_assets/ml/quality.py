"""Batch quality: XGBoost forecasts of titer, product mass and key CQAs for running batches.

One regressor per target x horizon (``day3``, ``day7``, ``harvest``), each on the batch
feature table at that horizon (:func:`features.batch_features`): recipe, lot history,
process summaries and in-process LIMS results known by then. Targets come from
``gold/batch_summary`` (release LIMS), i.e. what a real plant measures; the simulator's
hidden raw-material attributes are never used.

Honest evaluation: completed batches are split by start time (the last ``holdout_fraction``
are held out). The 80 % prediction interval is ``prediction + [q10, q90]`` of out-of-fold
residuals computed inside the training period (time-ordered folds), never from the
held-out batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from .features import HORIZONS_H, MlInputs, batch_feature_columns, batch_features
from .registry import Minimum, TrainedModel

if TYPE_CHECKING:
    from xgboost import XGBRegressor

log = logging.getLogger(__name__)

# target -> (expression on gold/batch_summary, unit)
TARGETS: dict[str, tuple[pl.Expr, str]] = {
    "final_titer_g_l": (pl.col("final_titer_g_l"), "g/L"),
    "product_mass_kg": (pl.col("product_mass_kg"), "kg"),
    "aggregates_pct": (pl.col("cqa_aggregates_hmw_pct"), "%"),
    # galactosylated share of the N-glycans: G1F + G2F (release assays)
    "galactosylation_pct": (pl.col("cqa_g1f_pct") + pl.col("cqa_g2f_pct"), "%"),
}
YIELD_TARGETS = ("final_titer_g_l", "product_mass_kg")
R2_TARGET = 0.90
INTERVAL = (0.10, 0.90)
#: per yield target, the product mass balance estimate of it (``features/product_balance``):
#: the physics anchor of the anchored model kinds
ANCHORS = {
    "final_titer_g_l": "titer_bal_late_harvest",
    "product_mass_kg": "mass_bal_late_harvest_kg",
}
#: the model kinds a target x horizon chooses from, on its training period's time-ordered
#: folds (``choose_kind``): boosted trees on the target; boosted trees on the target's ratio
#: to its mass-balance anchor; ridge regression on every feature; the anchor linearly
#: calibrated alone; the mean of trees and ridge
MODEL_KINDS = ("xgb", "xgb_anchor_ratio", "ridge", "anchor_linear", "mean_xgb_ridge")
#: the setting that narrows the candidate kinds (comma-separated names of ``MODEL_KINDS``;
#: unset or empty: all of them, the product default). Read by ``MlResource.from_env``.
MODEL_KINDS_ENV = "PHARMA_QUALITY_MODEL_KINDS"


def parse_model_kinds(text: str | None) -> tuple[str, ...]:
    """The candidate model kinds named in ``text`` (comma-separated, in ``MODEL_KINDS``
    order); empty or None: every kind. An unknown name is a one-line error."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        return MODEL_KINDS
    unknown = [n for n in names if n not in MODEL_KINDS]
    if unknown:
        raise ValueError(
            f"{MODEL_KINDS_ENV}: model kind(s) {', '.join(map(repr, unknown))} unknown; "
            f"use a comma-separated subset of {', '.join(MODEL_KINDS)}"
        )
    return tuple(k for k in MODEL_KINDS if k in names)


def model_name(target: str, horizon: str) -> str:
    return f"pharma_quality_{target}_{horizon}"


class YieldRegressor:
    """One model kind of :data:`MODEL_KINDS` on a feature matrix (columns = the model's
    feature list; ``anchor``: the column index of the physics anchor, or None)."""

    def __init__(self, kind: str, seed: int, n_estimators: int, anchor: int | None) -> None:
        if kind not in MODEL_KINDS:
            raise ValueError(f"model kind {kind!r} unknown; use one of {MODEL_KINDS}")
        if kind in ("xgb_anchor_ratio", "anchor_linear") and anchor is None:
            raise ValueError(f"model kind {kind!r} needs an anchor feature")
        self.kind, self.seed, self.n_estimators, self.anchor = kind, seed, n_estimators, anchor
        self.parts: list[Any] = []
        self.fill = float("nan")

    def _anchor(self, x: np.ndarray) -> np.ndarray:
        a = x[:, self.anchor] if self.anchor is not None else np.full(len(x), np.nan)
        return np.where(np.isfinite(a) & (a > 0), a, self.fill)

    def fit(self, x: np.ndarray, y: np.ndarray) -> YieldRegressor:
        if self.anchor is not None:
            a = x[:, self.anchor]
            ok = np.isfinite(a) & (a > 0)
            self.fill = float(np.median(a[ok])) if ok.any() else float(np.mean(y))
        k = self.kind
        if k == "xgb":
            self.parts = [_make(self.seed, self.n_estimators).fit(x, y)]
        elif k == "xgb_anchor_ratio":
            self.parts = [_make(self.seed, self.n_estimators).fit(x, y / self._anchor(x))]
        elif k == "ridge":
            self.parts = [_ridge().fit(x, y)]
        elif k == "anchor_linear":
            from sklearn.linear_model import LinearRegression

            self.parts = [LinearRegression().fit(self._anchor(x)[:, None], y)]
        else:  # mean_xgb_ridge
            self.parts = [_make(self.seed, self.n_estimators).fit(x, y), _ridge().fit(x, y)]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        k = self.kind
        if k == "xgb_anchor_ratio":
            return self.parts[0].predict(x) * self._anchor(x)
        if k == "anchor_linear":
            return self.parts[0].predict(self._anchor(x)[:, None])
        return np.mean([m.predict(x) for m in self.parts], axis=0)


def _ridge() -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # an all-null column (a site without the assay) is kept as zeros, not dropped, so the
    # matrix keeps the model's feature list
    return make_pipeline(
        SimpleImputer(keep_empty_features=True),
        StandardScaler(),
        RidgeCV(alphas=np.logspace(-3, 3, 13)),
    )


def time_folds_oof(
    x: np.ndarray, y: np.ndarray, make: Any, n_folds: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions on time-ordered folds (rows sorted by start): fold k is
    predicted by a model of folds 0..k-1. Returns (row indices predicted, predictions)."""
    folds = np.array_split(np.arange(len(y)), n_folds)
    idx: list[np.ndarray] = []
    pred: list[np.ndarray] = []
    for k in range(1, len(folds)):
        a, b = np.concatenate(folds[:k]), folds[k]
        if len(a) < 4 or len(b) == 0:
            continue
        idx.append(b)
        pred.append(make().fit(x[a], y[a]).predict(x[b]))
    if not idx:
        return np.array([], dtype=int), np.array([])
    return np.concatenate(idx), np.concatenate(pred)


@dataclass
class QualityModel:
    """A fitted regressor, its feature list and its 80 % residual interval."""

    target: str
    horizon: str
    unit: str
    regressor: Any  # YieldRegressor (an XGBRegressor in models registered before issue 14)
    features: list[str]
    resid_lo: float
    resid_hi: float

    def predict(self, df: pl.DataFrame) -> np.ndarray:
        return self.regressor.predict(_matrix(df, self.features))

    def predict_interval(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.predict(df)
        return p, p + self.resid_lo, p + self.resid_hi


def _matrix(df: pl.DataFrame, features: list[str]) -> np.ndarray:
    missing = [f for f in features if f not in df.columns]
    if missing:
        df = df.with_columns([pl.lit(None, pl.Float64).alias(m) for m in missing])
    return df.select([pl.col(f).cast(pl.Float64).fill_nan(None) for f in features]).to_numpy()


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """R2, MAE, RMSE (also used by tests to recompute the reported figures)."""
    if len(y) == 0:
        return {"r2": float("nan"), "mae": float("nan"), "rmse": float("nan")}
    err = p - y
    ss_res = float((err**2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
    }


#: batch_summary columns of the site's release assays (``cqa_<analyte>``)
CQA_PREFIX = "cqa_"
#: ``cqa_`` columns that are counts, not assays
CQA_COUNTS = ("cqa_results", "cqa_out_of_spec")


def targets_of(
    summary: pl.DataFrame | None, declared: Sequence[str] | None = None
) -> dict[str, tuple[pl.Expr, str]]:
    """The quality targets of a lake: those its unit class declares (``quality_targets``:
    the bioreactor's are ``TARGETS``), or, for a class that declares none, the built-in
    ``TARGETS`` and every other release assay the site reports (a ``cqa_<analyte>`` column
    of ``gold/batch_summary`` no built-in target reads: loss on drying, residual solvent,
    ...), named by the analyte. Whether each has enough results is ``capabilities``' call."""
    out = dict(TARGETS)
    if summary is None:
        return {t: v for t, v in out.items() if declared is None or t in declared}
    used = {c for expr, _ in TARGETS.values() for c in expr.meta.root_names()}
    for c, dtype in summary.schema.items():
        if c.startswith(CQA_PREFIX) and c not in (*used, *CQA_COUNTS) and dtype.is_numeric():
            name = c.removeprefix(CQA_PREFIX)
            if name not in out:
                out[name] = (pl.col(c), "")
    return {t: v for t, v in out.items() if declared is None or t in declared}


def horizons_within(batches: pl.DataFrame) -> tuple[str, ...]:
    """The forecast horizons a plant's batches reach: ``harvest`` always, a day-N horizon
    only when the median completed batch lasts longer (a 3-hour dryer batch has no day 3)."""
    done = batches.filter(pl.col("end_ts").is_not_null())
    med = (
        done.select(
            ((pl.col("end_ts") - pl.col("start_ts")).dt.total_seconds() / 3600).median()
        ).item()
        if done.height
        else None
    )
    return tuple(
        h for h, hours in HORIZONS_H.items() if hours is None or med is None or hours < med
    )


def targets_frame(summary: pl.DataFrame) -> pl.DataFrame:
    """Completed batches with their observed targets (nulls where not measured)."""
    targets = targets_of(summary)
    if summary.height == 0:
        return pl.DataFrame(schema={"batch_id": pl.String, **{t: pl.Float64 for t in targets}})
    done = summary.filter(pl.col("status") == "complete")
    cols = []
    for t, (expr, _) in targets.items():
        # a site without the assay has no column for it: the target is absent (null), never 0
        if set(expr.meta.root_names()) <= set(done.columns):
            cols.append(expr.cast(pl.Float64).alias(t))
        else:
            cols.append(pl.lit(None, pl.Float64).alias(t))
    return done.select("batch_id", *cols)


def target_counts(summary: pl.DataFrame, declared: Sequence[str] | None = None) -> dict[str, int]:
    """Per target (``targets_of``): completed batches with an observed value (0 when the
    site lacks it)."""
    tg = targets_frame(summary)
    return {t: int(tg[t].is_not_null().sum()) for t in targets_of(summary, declared)}


@dataclass
class QualityResult:
    trained: TrainedModel
    model: QualityModel
    predictions: pl.DataFrame  # holdout batches: batch_id, y_true, predicted, lower, upper
    score_fn: Any
    notes: list[str] = field(default_factory=list)


def _make(seed: int, n_estimators: int) -> XGBRegressor:
    from xgboost import XGBRegressor  # lazy: the code location loads fast

    return XGBRegressor(
        n_estimators=n_estimators,
        max_depth=3,
        learning_rate=0.05,
        subsample=0.8,
        colsample_bytree=0.8,
        min_child_weight=2,
        tree_method="hist",
        n_jobs=1,  # ~200 rows: threads only add contention (2 threads measured 40x slower
        # than 1 on a loaded 2-core machine)
        random_state=seed,
    )


#: the learners of :func:`train_quality`: XGBoost (the bioreactor's, on its batch features)
#: or a regularised linear model (``RegularisedLinear``, on the generic per-tag features)
Learner = Literal["xgboost", "elastic_net"]
#: elastic-net mixing ratios and folds tried inside the training batches (the product's search)
L1_RATIOS = (0.1, 0.5, 0.9, 1.0)
CV_FOLDS = 5
#: the setting that narrows the elastic net's search: ``<folds>:<l1 ratio>,<l1 ratio>...``
#: (e.g. ``3:0.5,1.0``); unset or empty: ``CV_FOLDS`` folds x ``L1_RATIOS``, the product
#: default. Read by ``MlResource.from_env``; the test suite narrows it where its assertions
#: do not read the elastic net's figures (``pharma_assets_tests/conftest.py``).
ENET_SEARCH_ENV = "PHARMA_QUALITY_ENET_SEARCH"


@dataclass(frozen=True)
class ElasticNetSearch:
    """The cross-validated search of :class:`RegularisedLinear`: ``folds``-fold CV over
    every mixing ratio of ``l1_ratios`` (and the penalty path of each). The time of one fit
    grows with ``folds x len(l1_ratios)``."""

    folds: int = CV_FOLDS
    l1_ratios: tuple[float, ...] = L1_RATIOS

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"elastic-net search: folds must be at least 2, got {self.folds}")
        if not self.l1_ratios or not all(0 < r <= 1 for r in self.l1_ratios):
            raise ValueError(
                f"elastic-net search: l1 ratios must be in (0, 1], got {list(self.l1_ratios)}"
            )


def parse_enet_search(text: str | None) -> ElasticNetSearch:
    """The search named in ``text`` (``<folds>:<l1 ratio>,...``, e.g. ``3:0.5,1.0``); empty
    or None: the product default. A malformed value is a one-line error."""
    text = (text or "").strip()
    if not text:
        return ElasticNetSearch()
    try:
        folds, _, ratios = text.partition(":")
        return ElasticNetSearch(int(folds), tuple(float(r) for r in ratios.split(",") if r.strip()))
    except ValueError as e:
        raise ValueError(
            f"{ENET_SEARCH_ENV}={text!r}: {e}; use <folds>:<l1 ratio>,<l1 ratio>... "
            f"(the product default is {CV_FOLDS}:{','.join(map(str, L1_RATIOS))})"
        ) from None


class RegularisedLinear:
    """Median imputation, standardisation and an elastic net whose penalty and L1 ratio are
    chosen by cross-validation (``search``: ``CV_FOLDS`` folds x ``L1_RATIOS`` by default) on
    the rows it is fitted on (the training batches only), so the feature selection
    (coefficients shrunk to 0) never sees a held-out batch. Made for many correlated per-tag
    features and few batches: with shuffled labels the cross-validation picks a penalty that
    zeroes every coefficient (the training mean)."""

    def __init__(self, seed: int = 42, search: ElasticNetSearch | None = None) -> None:
        self.seed = seed
        self.search = search or ElasticNetSearch()
        self.pipe: Any = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> RegularisedLinear:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import ElasticNetCV
        from sklearn.model_selection import KFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        search = self.search
        n_splits = max(2, min(search.folds, len(y)))
        folds = KFold(n_splits=n_splits, shuffle=True, random_state=self.seed)
        self.pipe = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            ElasticNetCV(l1_ratio=list(search.l1_ratios), cv=folds, max_iter=50_000, n_jobs=1),
        )
        self.pipe.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.pipe.predict(x), dtype=float)

    @property
    def n_selected(self) -> int:
        """Features with a non-zero coefficient."""
        return int((np.abs(self.pipe[-1].coef_) > 0).sum())


def _learner(
    learner: str, seed: int, n_estimators: int, search: ElasticNetSearch | None = None
) -> Any:
    if learner == "xgboost":
        return _make(seed, n_estimators)
    if learner == "elastic_net":
        return RegularisedLinear(seed, search)
    raise ValueError(f"learner {learner!r} unknown; use 'xgboost' or 'elastic_net'")


def split_batches(
    inputs: MlInputs, holdout_fraction: float, targets: tuple[str, ...] = ("final_titer_g_l",)
) -> tuple[list[str], list[str], datetime]:
    """Completed batches with outcomes, ordered by start: (train ids, holdout ids, cutoff)."""
    if not 0.05 <= holdout_fraction <= 0.5:
        raise ValueError(f"holdout_fraction must be in [0.05, 0.5], got {holdout_fraction}")
    tg = targets_frame(inputs.batch_summary).filter(
        pl.any_horizontal(*[pl.col(t).is_not_null() for t in targets])
    )
    b = inputs.batches.filter(pl.col("batch_id").is_in(tg["batch_id"].to_list())).sort(
        "start_ts", "batch_id"
    )
    n = b.height
    if n < 8:
        raise ValueError(
            f"only {n} completed batches with release results; batch quality models need "
            "at least 8 (simulate a longer history)"
        )
    n_hold = max(2, round(holdout_fraction * n))
    ids = b["batch_id"].to_list()
    cutoff = b["start_ts"][n - n_hold]
    return ids[: n - n_hold], ids[n - n_hold :], cutoff


def train_quality(
    inputs: MlInputs,
    holdout_fraction: float = 0.25,
    seed: int = 42,
    n_estimators: int = 300,
    shuffle_labels: bool = False,
    targets: tuple[str, ...] = tuple(TARGETS),
    horizons: tuple[str, ...] = tuple(HORIZONS_H),
    features_by_horizon: dict[str, pl.DataFrame] | None = None,
    learner: Learner = "xgboost",
    feature_columns: Callable[[pl.DataFrame], list[str]] = batch_feature_columns,
    feature_set: str = "bioreactor",
    model_kinds: tuple[str, ...] | None = MODEL_KINDS,
    interval: bool = True,
    enet_search: ElasticNetSearch | None = None,
) -> list[QualityResult]:
    """Train every target x horizon model; evaluate on the later batches.

    ``features_by_horizon``: precomputed :func:`batch_features` tables (from the feature
    store); computed from ``inputs`` when absent. For the generic per-tag features of any
    unit class (``features.generic``): their tables, ``feature_columns`` =
    ``generic_feature_columns``, ``learner="elastic_net"`` and ``feature_set="generic"``
    (rows of a horizon not ``reached`` are left out).
    ``model_kinds`` (XGBoost learner only): the kinds each target x horizon chooses from on
    its training period (default every kind of :data:`MODEL_KINDS`; a subset from
    :func:`parse_model_kinds`, as the ``ml`` resource passes it; ``None``: boosted trees
    only, the model before issue 14's second round). The training time grows with the
    number of boosted-tree kinds (``xgb``, ``xgb_anchor_ratio``, ``mean_xgb_ridge``).
    ``interval=False`` (one candidate kind only, where the folds choose nothing): no
    out-of-fold fits, the 80 % interval and ``cv_r2_<kind>`` are NaN; the held-out
    metrics are the same (for comparisons that read only those).
    ``enet_search`` (elastic-net learner only): its cross-validated search (default
    ``CV_FOLDS`` folds x ``L1_RATIOS``; a smaller one from :func:`parse_enet_search`, as the
    ``ml`` resource passes it, trains faster).
    """
    search = enet_search or ElasticNetSearch()
    if not interval and learner == "xgboost" and len(model_kinds or ("xgb",)) > 1:
        raise ValueError("interval=False needs a single candidate model kind")
    train_ids, hold_ids, cutoff = split_batches(inputs, holdout_fraction, targets)
    tg = targets_frame(inputs.batch_summary)
    results = []
    rng = np.random.default_rng(seed)
    for horizon in horizons:
        if features_by_horizon is not None and horizon in features_by_horizon:
            feats = features_by_horizon[horizon].filter(
                pl.col("batch_id").is_in(train_ids + hold_ids)
            )
        else:
            feats = batch_features(inputs, horizon, batch_ids=train_ids + hold_ids)
        if "reached" in feats.columns:
            feats = feats.filter(pl.col("reached"))
        cols = feature_columns(feats)
        data = feats.join(tg, on="batch_id", how="inner")
        for target in targets:
            tr = data.filter(pl.col("batch_id").is_in(train_ids) & pl.col(target).is_not_null())
            te = data.filter(pl.col("batch_id").is_in(hold_ids) & pl.col(target).is_not_null())
            tr = tr.sort("start_ts", "batch_id")
            x, y = _matrix(tr, cols), tr[target].to_numpy().astype(float)
            if shuffle_labels:
                y = rng.permutation(y)
            anchor_col = ANCHORS.get(target)
            anchor = cols.index(anchor_col) if anchor_col in cols else None
            if learner == "xgboost":
                kinds = tuple(
                    k
                    for k in (model_kinds or ("xgb",))
                    if anchor is not None or k not in ("xgb_anchor_ratio", "anchor_linear")
                )
            else:
                kinds = (learner,)

            def build(kind: str, _a: int | None = anchor) -> Any:
                if learner != "xgboost":
                    return _learner(learner, seed, n_estimators, search)
                return YieldRegressor(kind, seed, n_estimators, _a)

            # each kind's out-of-fold predictions inside the training period (time-ordered
            # folds): the kind with the best R2 is chosen, and its residuals give the interval
            cv: dict[str, float] = {}
            oof: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for kind in kinds:
                if not interval:
                    oof[kind] = (np.array([], dtype=int), np.array([]))
                else:
                    oof[kind] = time_folds_oof(x, y, lambda _k=kind: build(_k))
                i, p_ = oof[kind]
                cv[kind] = regression_metrics(y[i], p_)["r2"] if len(i) >= 4 else float("nan")
            chosen = max(kinds, key=lambda k: -np.inf if np.isnan(cv[k]) else cv[k])
            i, p_ = oof[chosen]
            resid = (y[i] - p_).tolist()
            lo, hi = (
                (float(np.quantile(resid, INTERVAL[0])), float(np.quantile(resid, INTERVAL[1])))
                if len(resid) >= 4
                else (float("nan"), float("nan"))
            )
            reg = build(chosen).fit(x, y)
            unit = targets_of(inputs.batch_summary)[target][1]
            model = QualityModel(target, horizon, unit, reg, cols, lo, hi)
            xt, yt = _matrix(te, cols), te[target].to_numpy().astype(float)
            p = reg.predict(xt) if len(yt) else np.array([])
            pred = te.select("batch_id", "start_ts").with_columns(
                y_true=pl.Series(yt, dtype=pl.Float64),
                predicted=pl.Series(p, dtype=pl.Float64),
                lower=pl.Series(p + lo, dtype=pl.Float64),
                upper=pl.Series(p + hi, dtype=pl.Float64),
            )
            metrics = quality_metrics(pred)
            # the naive baseline of the promotion gate: the training mean, same held-out rows
            naive = regression_metrics(yt, np.full(len(yt), y.mean() if len(y) else np.nan))
            metrics.update({f"baseline_{k}": v for k, v in naive.items()})
            metrics["n_train"] = float(len(y))
            metrics["n_features"] = float(len(cols))
            if isinstance(reg, RegularisedLinear):
                metrics["n_features_selected"] = float(reg.n_selected)
            # the training period's time-ordered CV R2 of every kind considered
            metrics.update({f"cv_r2_{k}": v for k, v in cv.items()})
            targets_map = {"r2": R2_TARGET} if target in YIELD_TARGETS else {}

            def score(m: Any, _te: pl.DataFrame = te, _yt: np.ndarray = yt) -> float:
                return regression_metrics(_yt, m.predict(_te))["r2"]

            trained = TrainedModel(
                name=model_name(target, horizon),
                model=model,
                params={
                    "target": target,
                    "horizon": horizon,
                    "learner": learner,
                    "feature_set": feature_set,
                    "n_estimators": n_estimators,
                    "model_kind": chosen,
                    "model_kinds": list(kinds),
                    "anchor": anchor_col if anchor is not None else "",
                    "max_depth": 3,
                    "learning_rate": 0.05,
                    "holdout_fraction": holdout_fraction,
                    "interval": list(INTERVAL),
                    "seed": seed,
                    "shuffle_labels": shuffle_labels,
                    **(
                        {
                            "enet_cv_folds": search.folds,
                            "enet_l1_ratios": list(search.l1_ratios),
                        }
                        if learner == "elastic_net"
                        else {}
                    ),
                },
                features=cols,
                data_versions=dict(inputs.versions),
                metrics=metrics,
                gate_metric="r2",
                higher_is_better=True,
                evaluation_set=(
                    f"holdout: completed batches started on/after {cutoff:%Y-%m-%d %H:%M} UTC "
                    f"(last {holdout_fraction:.0%} by start, n={len(yt)})"
                ),
                n_eval=len(yt),
                targets=targets_map,
                artifacts={"holdout_predictions": pred},
                minimum=Minimum("regressor"),
            )
            results.append(QualityResult(trained, model, pred, score))
    return results


def quality_metrics(pred: pl.DataFrame) -> dict[str, float]:
    """R2, MAE, RMSE and the 80 % interval coverage from stored holdout predictions."""
    y = pred["y_true"].to_numpy().astype(float)
    p = pred["predicted"].to_numpy().astype(float)
    m = regression_metrics(y, p)
    lo = pred["lower"].to_numpy().astype(float)
    hi = pred["upper"].to_numpy().astype(float)
    inside = (lo <= y) & (y <= hi)
    m["interval_coverage_80"] = float(inside.mean()) if pred.height else float("nan")
    return m


def forecast_rows(
    models: dict[tuple[str, str], tuple[QualityModel, str]],
    features_by_horizon: dict[str, pl.DataFrame],
    ended_batch_ids: set[str],
) -> pl.DataFrame:
    """gold/batch_forecasts rows (without ``scored_at``).

    ``models``: (target, horizon) -> (champion model, its version). Every batch gets, for
    each horizon it has reached (day3 once 72 h have elapsed, day7 at 168 h, harvest once
    it ended), a forecast per target from that horizon's champion. Running batches younger
    than 72 h get none: the day-3 model needs three days of data.
    """
    frames = []
    for horizon, feats in features_by_horizon.items():
        cut = HORIZONS_H.get(horizon)
        if "reached" in feats.columns:  # generic features: the horizon's cut is in the past
            feats = feats.filter(pl.col("reached"))
        elif cut is not None:
            feats = feats.filter(pl.col("elapsed_h") >= cut - 1e-6)
        else:
            feats = feats.filter(pl.col("batch_id").is_in(sorted(ended_batch_ids)))
        if feats.height == 0:
            continue
        for (target, h), (model, version) in models.items():
            if h != horizon:
                continue
            p, lo, hi = model.predict_interval(feats)
            frames.append(
                feats.select("batch_id", "unit_id", "as_of_ts", "elapsed_h").with_columns(
                    horizon=pl.lit(horizon),
                    target=pl.lit(target),
                    predicted=pl.Series(p, dtype=pl.Float64),
                    lower=pl.Series(lo, dtype=pl.Float64),
                    upper=pl.Series(hi, dtype=pl.Float64),
                    unit=pl.lit(model.unit),
                    model_name=pl.lit(model_name(target, horizon)),
                    model_version=pl.lit(version),
                )
            )
    if not frames:
        return pl.DataFrame(schema=FORECAST_SCHEMA)
    return pl.concat(frames).with_columns(pl.col("elapsed_h").cast(pl.Float64))


FORECAST_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(),
    "unit_id": pl.String(),
    "as_of_ts": pl.Datetime("us", "UTC"),
    "elapsed_h": pl.Float64(),
    "horizon": pl.String(),
    "target": pl.String(),
    "predicted": pl.Float64(),
    "lower": pl.Float64(),
    "upper": pl.Float64(),
    "unit": pl.String(),
    "model_name": pl.String(),
    "model_version": pl.String(),
}


def r2_bootstrap_ci(
    pred: pl.DataFrame, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the held-out R² (batches resampled with
    replacement) from stored predictions (``y_true``, ``predicted``)."""
    y = pred["y_true"].to_numpy().astype(float)
    p = pred["predicted"].to_numpy().astype(float)
    if len(y) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    yb, pb = y[idx], p[idx]
    ss_tot = ((yb - yb.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    ok = ss_tot > 0
    r2 = 1.0 - ((yb - pb) ** 2).sum(axis=1)[ok] / ss_tot[ok]
    a = (1.0 - level) / 2.0
    return float(np.quantile(r2, a)), float(np.quantile(r2, 1.0 - a))


def assay_noise_ceiling(pred: pl.DataFrame, truth: pl.DataFrame, target: str) -> dict[str, float]:
    """The best R² any model can reach on these held-out batches: the R² of the measured
    target (``pred.y_true``, the release assay) predicted by the simulator's TRUE value
    (``truth[target]``, ground truth, read for evaluation only). What is left is the assay's
    own noise. Also the analytic form ``1 - noise variance / variance of the measured
    values`` with the noise variance estimated from the same pairs."""
    if target not in truth.columns:
        return {"ceiling_r2": float("nan"), "ceiling_n": 0.0}
    j = pred.select("batch_id", "y_true").join(
        truth.select("batch_id", pl.col(target).alias("_true")), on="batch_id", how="inner"
    )
    y = j["y_true"].to_numpy().astype(float)
    t = j["_true"].to_numpy().astype(float)
    m = regression_metrics(y, t)
    return {
        "ceiling_r2": m["r2"],
        "ceiling_n": float(len(y)),
        "assay_cv": float(np.std((y - t) / t)) if len(y) else float("nan"),
    }
