"""Contamination detection: isolation forest on 5-minute windows of running batches.

A bacterial contamination is barely visible for about 6 h after seeding, then within hours the
oxygen uptake (OUR) and CO2 evolution (CER) multiply, DO falls while the DO cascade drives
agitation and O2 flow up, acid production pushes the base pump to its maximum and pH down,
and the viable biovolume (capacitance) collapses. The detector learns what normal windows
of clean batches look like (no labels needed) and flags windows that do not fit.

How to wire me (Dagster assets in ``pharma_assets/defs/ml/``):

1. Read ``silver/batch_timeline`` (any subset of batches; rows of one minute may be split
   across files, this module aggregates them) and ``silver/batches``.
2. Training: ``ids = clean_training_batches(batches, before=cutoff)``, then
   ``feats = window_features(timeline.filter(pl.col("batch_id").is_in(ids)))`` and
   ``model = train(feats, seed)``. ``model`` is a picklable dataclass (log it to MLflow with
   ``mlflow.sklearn``/pickle; ``model.params()`` and ``model.train_summary()`` are flat dicts
   for MLflow params/metrics; ``model.features`` is the feature list).
3. Scoring running batches every 5 min: ``feats = window_features(recent_timeline,
   last_only=True)`` where the recent timeline holds, per batch, the minutes from a
   multiple of ``window_min`` at least ``model.baseline_min + window_min`` minutes back
   (then the newest window equals the full-history computation), then ``score(model, feats, model_version=...)`` gives the rows of
   ``gold/contamination_risk`` (columns in docs/data_model.md). For history, score
   every window (``last_only=False``).
4. Evaluation (held-out batches, later start times, see ``split_by_start``):
   ``evaluate(scores, fault_labels, batches)`` returns a flat dict of metrics for
   ``gold/model_performance`` and MLflow. Ground truth is used here only.

Nothing here imports Dagster, MLflow or storage code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

from pharma_assets.process.gas import our_cer_columns

MODEL_NAME = "pharma_contamination_iforest"

#: Timeline tags the features are computed from.
INPUT_TAGS: tuple[str, ...] = (
    "air_flow_slpm",
    "o2_flow_slpm",
    "co2_flow_slpm",
    "offgas_o2_pct",
    "offgas_co2_pct",
    "volume_l",
    "dissolved_oxygen_pct",
    "agitation_rpm",
    "ph",
    "base_addition_ml",
    "capacitance_pf_cm",
    "dissolved_co2_mmhg",
)

#: Per-window levels (window means of minute signals).
LEVEL_SIGNALS: tuple[str, ...] = (
    "our_mmol_l_h",
    "cer_mmol_l_h",
    "dissolved_oxygen_pct",
    "o2_flow_slpm",
    "agitation_rpm",
    "ph",
    "base_rate_ml_h",
    "dissolved_co2_mmhg",
)

#: Features, in model order. ``*_dev`` = window level minus the batch's own trailing mean.
FEATURES: tuple[str, ...] = (
    "elapsed_h",
    *LEVEL_SIGNALS,
    *(f"{s}_dev" for s in LEVEL_SIGNALS),
    "capacitance_rel_1h",
)

KEY_COLUMNS: tuple[str, ...] = ("batch_id", "unit_id", "window", "window_end_ts", "elapsed_h")


class ContaminationInputError(ValueError):
    """Input that the contamination detector cannot use (message says what and what to do)."""


# ----------------------------------------------------------------------------- features


def _check_timeline(timeline: pl.DataFrame) -> None:
    need = {"batch_id", "unit_id", "elapsed_min", "minute_ts", *INPUT_TAGS}
    missing = sorted(need - set(timeline.columns))
    if missing:
        raise ContaminationInputError(
            f"batch timeline lacks columns {missing}; pass silver/batch_timeline "
            f"(one column per tag, see docs/data_model.md §3 and §9)"
        )


def minute_signals(timeline: pl.DataFrame) -> pl.DataFrame:
    """One row per (batch, elapsed minute) with the derived signals the features use.

    Rows of the same minute from different landing files are averaged first. OUR and CER
    come from an inert-gas balance over the sparge flows and the dry off-gas composition,
    per litre of culture; the base rate is the slope of the base totaliser.
    """
    _check_timeline(timeline)
    m = (
        timeline.group_by("batch_id", "elapsed_min")
        .agg(
            pl.col("unit_id").first(),
            pl.col("minute_ts").min(),
            *[pl.col(t).cast(pl.Float64).mean() for t in INPUT_TAGS],
        )
        .sort("batch_id", "elapsed_min")
    )
    return _derived_signals(m)


def _derived_signals(m: pl.DataFrame) -> pl.DataFrame:
    """OUR, CER (:func:`pharma_assets.process.gas.our_cer`) and base rate from per-minute
    tag means sorted by batch and minute."""
    d_min = pl.col("elapsed_min") - pl.col("elapsed_min").shift(1).over("batch_id")
    d_base = pl.col("base_addition_ml") - pl.col("base_addition_ml").shift(1).over("batch_id")
    return m.with_columns(
        **our_cer_columns(),
        base_rate_ml_h=(d_base / d_min * 60.0).clip(lower_bound=0.0),
    )


def window_features(
    timeline: pl.DataFrame,
    window_min: int = 5,
    baseline_min: int = 120,
    last_only: bool = False,
) -> pl.DataFrame:
    """One row per batch per complete ``window_min`` window of batch time, with ``FEATURES``.

    Window ``w`` covers elapsed minutes ``[w*window_min, (w+1)*window_min)``; it is emitted
    only when the timeline reaches its last minute, and uses nothing later, so a batch
    truncated at any time gives the same rows for the windows it completed (no peeking).
    ``window_end_ts`` = batch start + ``(w+1)*window_min`` minutes; ``elapsed_h`` likewise.
    Deviations compare the window with the mean of the preceding ``baseline_min`` minutes
    of the same batch (0 while no baseline exists). ``last_only`` keeps the newest complete
    window of each batch (the 5-minute scoring path).
    """
    if window_min < 1 or baseline_min < window_min:
        raise ContaminationInputError(
            f"window_min={window_min} must be >= 1 and baseline_min={baseline_min} >= it"
        )
    return window_features_from_signals(
        minute_signals(timeline), window_min, baseline_min, last_only
    )


def window_features_from_minutes(
    minutes: pl.DataFrame,
    window_min: int = 5,
    baseline_min: int = 120,
    last_only: bool = False,
) -> pl.DataFrame:
    """:func:`window_features` from a timeline already reduced to one row per (batch, elapsed
    minute) with the per-minute mean of each ``INPUT_TAGS`` tag (what ``minute_signals``
    computes first), sorted by batch and minute. Lets one pass over ``silver/batch_timeline``
    feed the hourly rollup, these windows and the MSPC hourly means
    (``features.timeline_products``); the rows are identical to ``window_features``."""
    _check_timeline(minutes)
    m = minutes.select(
        "batch_id",
        "elapsed_min",
        "unit_id",
        "minute_ts",
        *[pl.col(t).cast(pl.Float64) for t in INPUT_TAGS],
    )
    return window_features_from_signals(_derived_signals(m), window_min, baseline_min, last_only)


def window_features_from_signals(
    m: pl.DataFrame, window_min: int = 5, baseline_min: int = 120, last_only: bool = False
) -> pl.DataFrame:
    """The windowing step of :func:`window_features` on :func:`minute_signals` output."""
    if window_min < 1 or baseline_min < window_min:
        raise ContaminationInputError(
            f"window_min={window_min} must be >= 1 and baseline_min={baseline_min} >= it"
        )
    nb = baseline_min // window_min
    if m.is_empty():
        return _empty_features()
    m = m.with_columns(
        window=(pl.col("elapsed_min") // window_min).cast(pl.Int64),
        start=pl.col("minute_ts") - pl.duration(minutes=pl.col("elapsed_min")),
    )
    per_batch = m.group_by("batch_id").agg(
        pl.col("unit_id").first(),
        pl.col("start").min(),
        w_first=(pl.col("elapsed_min").min() // window_min).cast(pl.Int64),
        n_win=((pl.col("elapsed_min").max() + 1) // window_min).cast(pl.Int64),
    )
    grid = (
        per_batch.filter(pl.col("n_win") > pl.col("w_first"))
        .with_columns(window=pl.int_ranges(pl.col("w_first"), pl.col("n_win")))
        .explode("window")
        .drop("n_win", "w_first")
    )
    sig = [*LEVEL_SIGNALS, "capacitance_pf_cm"]
    agg = m.group_by("batch_id", "window").agg(*[pl.col(s).mean() for s in sig])
    w = grid.join(agg, on=["batch_id", "window"], how="left").sort("batch_id", "window")
    base = {
        s: pl.col(s).rolling_mean(nb, min_samples=max(1, nb // 4)).shift(1).over("batch_id")
        for s in LEVEL_SIGNALS
    }
    cap_base = (
        pl.col("capacitance_pf_cm")
        .rolling_mean(max(1, 60 // window_min), min_samples=1)
        .shift(1)
        .over("batch_id")
    )
    w = w.with_columns(
        window_end_ts=pl.col("start") + pl.duration(minutes=(pl.col("window") + 1) * window_min),
        elapsed_h=((pl.col("window") + 1) * window_min / 60.0).cast(pl.Float64),
        **{f"{s}_dev": (pl.col(s) - b).fill_null(0.0) for s, b in base.items()},
        capacitance_rel_1h=(pl.col("capacitance_pf_cm") / cap_base.clip(lower_bound=1e-3) - 1.0)
        .fill_null(0.0)
        .fill_nan(0.0),
    )
    if last_only:
        w = w.filter(pl.col("window") == pl.col("window").max().over("batch_id"))
    return w.select(*KEY_COLUMNS, *[f for f in FEATURES if f not in KEY_COLUMNS])


def _empty_features() -> pl.DataFrame:
    schema: dict[str, Any] = {
        "batch_id": pl.String,
        "unit_id": pl.String,
        "window": pl.Int64,
        "window_end_ts": pl.Datetime("us", "UTC"),
        "elapsed_h": pl.Float64,
    }
    schema.update({f: pl.Float64 for f in FEATURES if f != "elapsed_h"})
    return pl.DataFrame(schema=schema)


# ----------------------------------------------------------------------------- batches


def clean_training_batches(batches: pl.DataFrame, before: datetime | None = None) -> list[str]:
    """Batches a plant would call clean history: completed and harvested (MES), optionally
    started before ``before``. Uses only what the MES records, never ground truth."""
    for c in ("batch_id", "status", "end_reason", "start_ts"):
        if c not in batches.columns:
            raise ContaminationInputError(f"silver/batches frame lacks column {c!r}")
    f = (pl.col("status") == "complete") & (pl.col("end_reason") == "harvested")
    if before is not None:
        f = f & (pl.col("start_ts") < before)
    return sorted(batches.filter(f)["batch_id"].to_list())


def split_by_start(batches: pl.DataFrame, holdout_frac: float = 0.25) -> tuple[datetime, int]:
    """Cut-off start time so that the last ``holdout_frac`` of finished batches (by start
    time) are held out; returns (cutoff, number held out). Train on ``start_ts < cutoff``."""
    if not 0.0 < holdout_frac < 1.0:
        raise ContaminationInputError(f"holdout_frac must be in (0, 1), got {holdout_frac}")
    done = batches.filter(pl.col("status") != "running").sort("start_ts")
    if done.height < 2:
        raise ContaminationInputError(f"need >= 2 finished batches to split, got {done.height}")
    n_hold = max(1, round(done.height * holdout_frac))
    cutoff = done["start_ts"][done.height - n_hold]
    return cutoff, n_hold


# ----------------------------------------------------------------------------- model


@dataclass
class ContaminationModel:
    """A fitted detector: the forest, its calibrated threshold and what scoring needs."""

    forest: IsolationForest
    features: list[str]
    threshold: float
    threshold_quantile: float
    fill_values: dict[str, float]
    center: np.ndarray
    spread: np.ndarray
    score_median: float
    risk_scale: float
    window_min: int
    baseline_min: int
    seed: int
    n_train_windows: int
    n_train_batches: int
    train_fpr: float
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """Flat parameters for MLflow."""
        return {
            "n_estimators": self.forest.n_estimators,
            "max_samples": self.forest.max_samples,
            "threshold_quantile": self.threshold_quantile,
            "window_min": self.window_min,
            "baseline_min": self.baseline_min,
            "seed": self.seed,
            "n_features": len(self.features),
        }

    def train_summary(self) -> dict[str, float]:
        """Flat training metrics for MLflow."""
        return {
            "threshold": self.threshold,
            "train_window_fpr": self.train_fpr,
            "n_train_windows": float(self.n_train_windows),
            "n_train_batches": float(self.n_train_batches),
        }


def _matrix(features: pl.DataFrame, cols: list[str], fill: dict[str, float]) -> np.ndarray:
    missing = [c for c in cols if c not in features.columns]
    if missing:
        raise ContaminationInputError(
            f"feature frame lacks {missing}; build it with window_features()"
        )
    x = features.select(
        [pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(fill[c]) for c in cols]
    ).to_numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def train(
    features: pl.DataFrame,
    seed: int,
    threshold_quantile: float = 0.995,
    n_estimators: int = 200,
    max_samples: int = 512,
    window_min: int = 5,
    baseline_min: int = 120,
    max_train_windows: int = 500_000,
) -> ContaminationModel:
    """Fit the isolation forest on windows of clean batches and calibrate its threshold.

    ``features`` must hold only clean training windows (``clean_training_batches``). The
    threshold is the ``threshold_quantile`` of the training anomaly scores, so the training
    window false-positive rate is at most ``1 - threshold_quantile`` (0.5 % by default,
    leaving margin under the 1 % target for held-out batches). Above ``max_train_windows``
    windows a seeded random subset is used (bounds training time on a long history; the
    forest itself only ever sees ``max_samples`` windows per tree).
    """
    if features.height < 50:
        raise ContaminationInputError(
            f"only {features.height} training windows; need >= 50 windows of clean batches"
        )
    if not 0.9 <= threshold_quantile < 1.0:
        raise ContaminationInputError(
            f"threshold_quantile must be in [0.9, 1), got {threshold_quantile}"
        )
    n_batches = features["batch_id"].n_unique()
    if features.height > max_train_windows:
        features = features.sample(n=max_train_windows, seed=seed)
    cols = list(FEATURES)
    med = features.select([pl.col(c).cast(pl.Float64).fill_nan(None).median() for c in cols])
    fill = {c: float(med[c][0]) if med[c][0] is not None else 0.0 for c in cols}
    x = _matrix(features, cols, fill)
    from sklearn.ensemble import IsolationForest  # lazy: the code location loads fast

    forest = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, x.shape[0]),
        random_state=seed,
        n_jobs=1,
    ).fit(x)
    s = -forest.score_samples(x)
    thr = float(np.quantile(s, threshold_quantile))
    s_med = float(np.median(s))
    center = np.median(x, axis=0)
    mad = np.median(np.abs(x - center), axis=0) * 1.4826
    spread = np.maximum(mad, 1e-6 * (np.abs(center) + 1.0))
    return ContaminationModel(
        forest=forest,
        features=cols,
        threshold=thr,
        threshold_quantile=threshold_quantile,
        fill_values=fill,
        center=center,
        spread=spread,
        score_median=s_med,
        risk_scale=max((thr - s_med) / math.log(99.0), 1e-9),
        window_min=window_min,
        baseline_min=baseline_min,
        seed=seed,
        n_train_windows=x.shape[0],
        n_train_batches=n_batches,
        train_fpr=float(np.mean(s > thr)),
    )


def anomaly_scores(model: ContaminationModel, features: pl.DataFrame) -> np.ndarray:
    """Raw anomaly scores (higher = more anomalous) of the feature rows."""
    return -model.forest.score_samples(_matrix(features, model.features, model.fill_values))


def score(
    model: ContaminationModel,
    features: pl.DataFrame,
    model_version: str = "untrained",
    model_name: str = MODEL_NAME,
    scored_at: datetime | None = None,
    n_top: int = 3,
) -> pl.DataFrame:
    """Rows of ``gold/contamination_risk`` for the given windows.

    ``risk`` is a logistic function of the anomaly score: 0.5 at the threshold, 0.01 at the
    median training score. ``top_features`` names the ``n_top`` process features furthest
    from the clean-training median in robust (MAD) units (batch age is never named).
    """
    x = _matrix(features, model.features, model.fill_values)
    s = -model.forest.score_samples(x) if x.shape[0] else np.zeros(0)
    z = np.abs(x - model.center) / model.spread
    z[:, [i for i, f in enumerate(model.features) if f == "elapsed_h"]] = -1.0  # not a cause
    k = min(n_top, len(model.features))
    top = np.argsort(-z, axis=1)[:, :k] if x.shape[0] else np.zeros((0, k), dtype=int)
    names = np.asarray(model.features, dtype=object)
    top_str = [",".join(r) for r in names[top].tolist()]
    risk = 1.0 / (1.0 + np.exp(-np.clip((s - model.threshold) / model.risk_scale, -50, 50)))
    now = scored_at or datetime.now(UTC)
    return features.select("batch_id", "unit_id", "window_end_ts", "elapsed_h").with_columns(
        anomaly_score=pl.Series(s, dtype=pl.Float64),
        threshold=pl.lit(model.threshold, pl.Float64),
        alarm=pl.Series(s > model.threshold, dtype=pl.Boolean),
        risk=pl.Series(risk, dtype=pl.Float64),
        top_features=pl.Series(top_str, dtype=pl.String),
        model_name=pl.lit(model_name),
        model_version=pl.lit(str(model_version)),
        scored_at=pl.lit(now, pl.Datetime("us", "UTC")),
    )


# ----------------------------------------------------------------------------- evaluation


def _run_starts(alarm: pl.Expr, consecutive: int) -> pl.Expr:
    """True at windows that complete a run of ``consecutive`` alarms (per batch)."""
    if consecutive <= 1:
        return alarm
    return (
        alarm.cast(pl.Int32).rolling_sum(consecutive, min_samples=consecutive).over("batch_id")
        == consecutive
    ).fill_null(False)


def detection_table(
    scores: pl.DataFrame,
    fault_labels: pl.DataFrame,
    batches: pl.DataFrame,
    consecutive: int = 1,
) -> pl.DataFrame:
    """One row per scored batch: contaminated?, onset, first (confirmed) alarm after onset
    and before batch end, delay, and confirmed alarms before onset (false alarms).

    An alarm is confirmed at the window completing ``consecutive`` alarmed windows in a row.
    """
    for c in ("batch_id", "window_end_ts", "alarm"):
        if c not in scores.columns:
            raise ContaminationInputError(f"scores lack column {c!r}; pass score() output")
    onsets = (
        fault_labels.filter(pl.col("fault_type") == "contamination")
        .group_by("batch_id")
        .agg(onset_ts=pl.col("onset_ts").min())
    )
    ends = batches.select("batch_id", batch_end_ts=pl.col("end_ts"))
    s = (
        scores.select("batch_id", "window_end_ts", "alarm")
        .sort("batch_id", "window_end_ts")
        .with_columns(confirmed=_run_starts(pl.col("alarm"), consecutive))
        .join(onsets, on="batch_id", how="left")
        .join(ends, on="batch_id", how="left")
    )
    after = (
        pl.col("confirmed")
        & pl.col("onset_ts").is_not_null()
        & (pl.col("window_end_ts") > pl.col("onset_ts"))
        & (pl.col("batch_end_ts").is_null() | (pl.col("window_end_ts") <= pl.col("batch_end_ts")))
    )
    before = pl.col("onset_ts").is_null() | (pl.col("window_end_ts") <= pl.col("onset_ts"))
    return (
        s.group_by("batch_id")
        .agg(
            contaminated=pl.col("onset_ts").is_not_null().any(),
            onset_ts=pl.col("onset_ts").first(),
            n_windows=pl.len(),
            n_windows_negative=before.sum(),
            n_alarms_negative=(pl.col("alarm") & before).sum(),
            n_confirmed_before_onset=(
                pl.col("confirmed") & pl.col("onset_ts").is_not_null() & before
            ).sum(),
            first_alarm_ts=pl.col("window_end_ts").filter(after).min(),
        )
        .with_columns(
            detected=pl.col("first_alarm_ts").is_not_null(),
            delay_h=(pl.col("first_alarm_ts") - pl.col("onset_ts")).dt.total_microseconds() / 3.6e9,
        )
        .sort("batch_id")
    )


def evaluate(
    scores: pl.DataFrame,
    fault_labels: pl.DataFrame,
    batches: pl.DataFrame,
    consecutive: int = 1,
) -> dict[str, float]:
    """Honest figures from stored scores (held-out batches) and the ground-truth labels.

    - ``window_fpr_clean``: share of alarmed windows on batches without contamination
      (target < 1 %); ``window_fpr_fault_free``: the same on batches with no fault at all;
      ``window_fpr_negatives``: also counting windows before onset in contaminated batches.
    - ``batch_false_alarm_share``: share of non-contaminated batches with any confirmed alarm.
    - ``detection_share``: contaminated batches with a confirmed alarm after onset and before
      the batch end; ``median_delay_h`` / ``p90_delay_h`` from onset.
    - ``false_alarms_before_onset``: confirmed alarms before onset in contaminated batches.
    """
    t = detection_table(scores, fault_labels, batches, consecutive)
    faulted = set(fault_labels.filter(pl.col("batch_id").is_not_null())["batch_id"].to_list())
    sc = scores.select("batch_id", "alarm")
    cont_ids = t.filter(pl.col("contaminated"))["batch_id"].to_list()
    clean = sc.filter(~pl.col("batch_id").is_in(cont_ids))
    ff = clean.filter(~pl.col("batch_id").is_in(sorted(faulted)))
    conf = (
        scores.sort("batch_id", "window_end_ts")
        .with_columns(confirmed=_run_starts(pl.col("alarm"), consecutive))
        .group_by("batch_id")
        .agg(pl.col("confirmed").any())
    )
    clean_batches = conf.filter(~pl.col("batch_id").is_in(cont_ids))
    det = t.filter(pl.col("contaminated"))
    delays = det.filter(pl.col("detected"))["delay_h"].to_numpy()
    n_neg = int(t["n_windows_negative"].sum())

    def _mean(s: pl.Series) -> float:
        return float(s.cast(pl.Float64).to_numpy().mean()) if s.len() else float("nan")

    return {
        "consecutive": float(consecutive),
        "n_batches": float(t.height),
        "n_windows": float(scores.height),
        "n_clean_batches": float(clean_batches.height),
        "n_clean_windows": float(clean.height),
        "window_fpr_clean": _mean(clean["alarm"]),
        "n_fault_free_windows": float(ff.height),
        "window_fpr_fault_free": _mean(ff["alarm"]),
        "window_fpr_negatives": (
            float(t["n_alarms_negative"].sum()) / n_neg if n_neg else float("nan")
        ),
        "batch_false_alarm_share": _mean(clean_batches["confirmed"]),
        "n_contaminated": float(det.height),
        "n_detected": float(det["detected"].sum()),
        "detection_share": _mean(det["detected"]),
        "median_delay_h": float(np.median(delays)) if delays.size else float("nan"),
        "p90_delay_h": float(np.quantile(delays, 0.9)) if delays.size else float("nan"),
        "false_alarms_before_onset": float(det["n_confirmed_before_onset"].sum()),
    }
