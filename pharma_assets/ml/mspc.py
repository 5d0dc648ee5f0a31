"""Multivariate statistical process control (MSPC) of batches: multiway PCA on good batches.

Trajectories of good batches are aligned on an hourly grid of batch time (hour ``k`` covers
elapsed minutes ``[60k, 60k+60)``; ``elapsed_h = k + 1`` is when it is complete), unfolded
batch-wise (batch x (tag x hour)) and autoscaled per tag x hour (the scale of a tag at hour
``k`` is its largest between-batch sd within ``k ± scale_window_h``, so that a good batch
reaching a step an hour or two before the others is not an outlier). One model per recipe (the
two recipes have different shift days and durations, so mixing them would hide faults).

Online (evolving) monitoring: at maturity ``k`` a running batch is projected with a PCA of
the good batches' data up to hour ``k`` (one model per maturity, computed cheaply through
the batches' Gram matrix, so no future data is needed or imputed). Per maturity:

- Hotelling T² of the scores, limit = max(F approximation for a new batch at
  ``alpha``, g·chi²_h moment fit to the out-of-fold T² of the good batches);
- SPE of the newest hour (instantaneous residual), limit = g·chi²_h moment fit to the
  out-of-fold SPE of the good batches (leave-one-out or k-fold, pooled over ±2 h), after
  setting aside clear outliers found by a robust (quartile) fit.

Hours without data have null statistics, hours no good batch covers null limits; a
non-finite statistic or limit is never an alarm.

Both limits therefore vary with batch maturity. Contributions: per tag, the share of the
newest hour's squared residual (SPE) or of the T² (|x·loading·score/λ| summed over hours).

How to wire me (Dagster assets in ``pharma_assets/defs/ml/``):

1. Read ``silver/batch_timeline``, ``silver/batches`` (recipe_id, start_ts, status) and
   ``gold/batch_summary`` (right_first_time).
2. Training: ``ids = good_batches(batch_summary, before=cutoff)``;
   ``model = train(timeline_of(ids), batches, ids)``. ``model`` is a picklable dataclass;
   ``model.params()`` / ``model.train_summary()`` are flat dicts for MLflow. On a long
   history, pass ``pl.concat([hourly_means(chunk) for chunk in ...])`` instead of the raw
   timeline (both functions accept it) to bound memory. 204 good batches: about 10 s.
3. ``envelope(model, model_version)`` -> ``gold/golden_batch`` (with a ``recipe_id``
   column: one envelope per recipe);
   ``monitor(model, timeline, batches, model_version)`` -> ``gold/mspc_scores`` (any number
   of batches; running batches get rows for their complete hours);
   ``alarms(scores_detail)`` -> ``gold/mspc_alarms`` (pass the ``monitor`` output: it keeps
   the full contribution JSON in the hidden columns ``_t2_contrib``/``_spe_contrib``;
   drop columns starting with ``_`` before writing ``gold/mspc_scores``, or use
   ``scores_table``).
4. ``evaluate(scores, fault_labels, batches)`` -> flat dict of metrics (ground truth only
   here).

Nothing here imports Dagster, MLflow or storage code.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from pharma_assets.process.vocabulary import BIOREACTOR

from .alarm_rules import choose_rule

MODEL_NAME = "pharma_mspc_pca"

#: Process tags monitored: the unit class's process group (equipment-condition tags are left
#: to predictive maintenance); the same list the feature tables use.
PROCESS_TAGS: tuple[str, ...] = BIOREACTOR.process_tags

#: Smallest scaling sd per tag, in engineering units (about the sensor's noise/resolution):
#: a tag x hour that is constant in the good batches (e.g. O2 flow 0 before the cascade
#: needs it) must not turn a tiny, harmless deviation into an enormous statistic.
SD_FLOOR: dict[str, float] = {
    "temperature_c": 0.05,
    "ph": 0.01,
    "dissolved_oxygen_pct": 1.0,
    "agitation_rpm": 1.0,
    "headspace_pressure_bar": 0.002,
    "air_flow_slpm": 0.05,
    "o2_flow_slpm": 0.05,
    "co2_flow_slpm": 0.05,
    "feed_rate_ml_h": 5.0,
    "base_addition_ml": 10.0,
    "volume_l": 2.0,
    "offgas_o2_pct": 0.05,
    "offgas_co2_pct": 0.05,
    "capacitance_pf_cm": 0.5,
    "jacket_temperature_c": 0.1,
    "dissolved_co2_mmhg": 1.0,
}


#: Out-of-fold statistics above this multiple of the robust (quartile) chi² limit are set
#: aside before the limit's moment fit: clear outliers (unknown faults of "good" batches),
#: not the ordinary heavy tail. Chosen on training data only (out-of-fold alarm rate of the
#: good batches stays where it was, the limit spikes go): docs/models.md (MSPC).
OUTLIER_FACTOR = 3.0
#: The quartile fit needs enough values (10 batches x 5 pooled hours); with fewer, the
#: out-of-fold statistics of small leave-one-out models are too irregular for it.
ROBUST_MIN_VALUES = 50


class MSPCInputError(ValueError):
    """Input the MSPC model cannot use (the message says what and what to do)."""


# ----------------------------------------------------------------------------- data


def hourly_means(timeline: pl.DataFrame, tags: Sequence[str] = PROCESS_TAGS) -> pl.DataFrame:
    """One row per batch per COMPLETE elapsed hour: ``batch_id, unit_id, hour, start`` and the
    tag means. Minute rows split across files are averaged first; the last, incomplete
    hour of a running batch is left out (it would change as minutes arrive)."""
    need = {"batch_id", "unit_id", "elapsed_min", "minute_ts", *tags}
    missing = sorted(need - set(timeline.columns))
    if missing:
        raise MSPCInputError(
            f"batch timeline lacks columns {missing}; pass silver/batch_timeline "
            "(docs/data_model.md §9)"
        )
    m = timeline.group_by("batch_id", "elapsed_min").agg(
        pl.col("unit_id").first(),
        pl.col("minute_ts").min(),
        *[pl.col(t).cast(pl.Float64).fill_nan(None).mean() for t in tags],
    )
    return hourly_means_from_minutes(m, tags)


#: grid steps (minutes) MSPC may align batches on; the longest giving at least
#: ``MIN_STEPS_PER_BATCH`` steps over the median batch is used (an hour for cell culture,
#: minutes for a 2-hour dryer batch)
STEP_CHOICES_MIN = (1, 2, 5, 10, 15, 30, 60)
MIN_STEPS_PER_BATCH = 24


def choose_step_min(durations_min: Sequence[float]) -> int:
    """The maturity grid step (minutes) for batches of these durations (see STEP_CHOICES_MIN)."""
    d = [x for x in durations_min if x is not None and x > 0]
    if not d:
        return 60
    med = float(np.median(d))
    fits = [s for s in STEP_CHOICES_MIN if med / s >= MIN_STEPS_PER_BATCH]
    return max(fits) if fits else STEP_CHOICES_MIN[0]


def hourly_means_from_minutes(
    minutes: pl.DataFrame, tags: Sequence[str] = PROCESS_TAGS, step_min: int = 60
) -> pl.DataFrame:
    """:func:`hourly_means` from a timeline already reduced to one row per (batch, elapsed
    minute) holding the per-minute mean of each tag (NaN ignored), so one pass over
    ``silver/batch_timeline`` can feed every consumer (``features.timeline_products``)."""
    need = {"batch_id", "unit_id", "elapsed_min", "minute_ts", *tags}
    missing = sorted(need - set(minutes.columns))
    if missing:
        raise MSPCInputError(f"per-minute frame lacks columns {missing}")
    m = minutes.select(
        "batch_id",
        "elapsed_min",
        "unit_id",
        "minute_ts",
        *[pl.col(t).cast(pl.Float64) for t in tags],
    )
    last = m.group_by("batch_id").agg(n_complete=(pl.col("elapsed_min").max() + 1) // step_min)
    hourly = (
        m.with_columns(
            hour=(pl.col("elapsed_min") // step_min).cast(pl.Int64),
            start=pl.col("minute_ts") - pl.duration(minutes=pl.col("elapsed_min")),
        )
        .join(last, on="batch_id")
        .filter(pl.col("hour") < pl.col("n_complete"))
        .group_by("batch_id", "hour")
        .agg(
            pl.col("unit_id").first(),
            pl.col("start").min(),
            *[pl.col(t).mean() for t in tags],
        )
        .sort("batch_id", "hour")
    )
    out = fill_gaps(hourly, tags, last, max(1, MAX_INTERP_GAP_H * 60 // step_min))
    return out if step_min == 60 else out.with_columns(step_min=pl.lit(step_min, pl.Int64))


def step_hours(hourly: pl.DataFrame) -> float:
    """Length of one grid step in hours (``step_min`` column; absent: one hour)."""
    if "step_min" in hourly.columns and hourly.height:
        step = hourly["step_min"].drop_nulls().max()
        return (float(step) if isinstance(step, int | float) else 60.0) / 60.0
    return 1.0


#: Hours without data between two hours with data are linearly interpolated when the two are
#: at most this many hours apart (sparse sampling: a site sampling every 12 h has a value per
#: tag every 12 h); longer gaps stay missing (null), never 0.
MAX_INTERP_GAP_H = 12


def fill_gaps(
    hourly: pl.DataFrame,
    tags: Sequence[str],
    last: pl.DataFrame | None = None,
    max_gap_h: int = MAX_INTERP_GAP_H,
) -> pl.DataFrame:
    """Complete hourly grid per batch (hours 0 .. n_complete-1) with each tag interpolated
    linearly between hours that have data at most ``max_gap_h`` apart; other hours null.
    Minute-sampled batches have every hour already and are returned unchanged."""
    if hourly.height == 0:
        return hourly
    span = hourly.group_by("batch_id").agg(
        pl.col("hour").max().alias("_last_h"), pl.col("unit_id").first(), pl.col("start").min()
    )
    if last is not None:
        span = (
            span.join(last, on="batch_id", how="left")
            .with_columns(_last_h=pl.min_horizontal(pl.col("n_complete") - 1, pl.col("_last_h")))
            .drop("n_complete")
        )
    if (
        hourly.group_by("batch_id")
        .len()
        .join(span, on="batch_id")
        .filter(pl.col("len") != pl.col("_last_h") + 1)
        .height
        == 0
    ):
        return hourly
    grid = (
        span.select("batch_id", "unit_id", "start", hour=pl.int_ranges(0, pl.col("_last_h") + 1))
        .explode("hour")
        .with_columns(pl.col("hour").cast(pl.Int64))
    )
    g = grid.join(hourly.drop("unit_id", "start"), on=["batch_id", "hour"], how="left").sort(
        "batch_id", "hour"
    )
    out = []
    for t in tags:
        has = pl.col(t).is_not_null()
        prev_h = pl.when(has).then(pl.col("hour")).forward_fill().over("batch_id")
        next_h = pl.when(has).then(pl.col("hour")).backward_fill().over("batch_id")
        interp = pl.col(t).interpolate().over("batch_id")
        out.append(
            pl.when(has)
            .then(pl.col(t))
            .when((next_h - prev_h) <= max_gap_h)
            .then(interp)
            .otherwise(None)
            .alias(t)
        )
    return g.with_columns(out).select(hourly.columns)


def _is_hourly(frame: pl.DataFrame) -> bool:
    """True for ``hourly_means`` output (lets callers aggregate big timelines in chunks)."""
    return "hour" in frame.columns and "elapsed_min" not in frame.columns


def _cube(
    hourly: pl.DataFrame, batch_ids: Sequence[str], tags: Sequence[str], n_hours: int
) -> np.ndarray:
    """(batches, hours, tags) array, NaN where no data."""
    idx = {b: i for i, b in enumerate(batch_ids)}
    out = np.full((len(batch_ids), n_hours, len(tags)), np.nan)
    h = hourly.filter(pl.col("batch_id").is_in(list(batch_ids)) & (pl.col("hour") < n_hours))
    if h.height:
        bi = np.array([idx[b] for b in h["batch_id"].to_list()])
        hi = h["hour"].to_numpy()
        out[bi, hi, :] = h.select(list(tags)).to_numpy().astype(np.float64)
    return out


def good_batches(
    batch_summary: pl.DataFrame, before: datetime | None = None, require_rft: bool = True
) -> list[str]:
    """Batches a plant calls good: complete and right first time (gold/batch_summary),
    optionally started before ``before``. No ground truth involved."""
    for c in ("batch_id", "status", "right_first_time", "start_ts"):
        if c not in batch_summary.columns:
            raise MSPCInputError(f"gold/batch_summary frame lacks column {c!r}")
    f = pl.col("status") == "complete"
    if require_rft:
        f = f & pl.col("right_first_time").fill_null(False)
    if before is not None:
        f = f & (pl.col("start_ts") < before)
    return sorted(batch_summary.filter(f)["batch_id"].to_list())


# ----------------------------------------------------------------------------- model


@dataclass
class RecipeModel:
    """Evolving multiway PCA of the good batches of one recipe."""

    recipe_id: str
    tags: list[str]
    n_hours: int
    batch_ids: list[str]
    mean: np.ndarray  # (K, J) raw units
    sd: np.ndarray  # (K, J) scaling sd (floored)
    raw_sd: np.ndarray  # (K, J) raw sd, for the envelope
    n_obs: np.ndarray  # (K, J) good batches with data
    x: np.ndarray  # (n, K, J) scaled training data, NaN -> 0
    w: list[np.ndarray]  # per maturity k: U_k S_k^-1, (n, A_k)
    lam: list[np.ndarray]  # per maturity: score variances (A_k,)
    n_comp: np.ndarray  # (K,)
    cev: np.ndarray  # (K,) cumulative explained variance of the retained components
    t2_limit: np.ndarray  # (K,)
    spe_limit: np.ndarray  # (K,)
    cv_t2: np.ndarray  # (n, K) out-of-fold T² of the good batches
    cv_spe: np.ndarray  # (n, K) out-of-fold SPE
    # change statistic (``statistic="change"``; None in models pickled before it existed):
    # per (hour, tag) the good batches' median and robust sd of the change of a tag from the
    # batch's own recent baseline, the maturity limit and the out-of-fold values
    chg_mu: np.ndarray | None = None  # (K, J) raw units
    chg_sd: np.ndarray | None = None  # (K, J) raw units, floored
    chg_limit: np.ndarray | None = None  # (K,)
    cv_chg: np.ndarray | None = None  # (n, K)
    # drift term of the change statistic (``change_drift_h > 0``; None otherwise): per
    # (hour, tag) the good batches' median and robust sd of the tag's mean standardised
    # change over the last ``change_drift_h`` hours (``drift_means``), the maturity limit
    # of the drift statistic (unweighted) and its out-of-fold values
    drf_mu: np.ndarray | None = None  # (K, J) z units
    drf_sd: np.ndarray | None = None  # (K, J) z units, floored
    drf_limit: np.ndarray | None = None  # (K,)
    cv_drf: np.ndarray | None = None  # (n, K)


@dataclass
class MSPCModel:
    """One evolving MPCA per recipe, plus the settings used to build them."""

    recipes: dict[str, RecipeModel]
    alpha: float
    cev_target: float
    max_components: int
    n_folds: int
    skipped_recipes: dict[str, int] = field(default_factory=dict)
    max_batches: int = 150
    scale_window_h: int = 0  # models pickled before the window existed scaled per hour
    # persistence rule chosen on the good training batches' out-of-fold alarms (alarm_rules)
    alarm_rule: dict[str, Any] | None = None
    alarm_rule_train: dict[str, float] = field(default_factory=dict)
    step_h: float = 1.0  # maturity grid step (hours); below 1 for short batches
    time_blocked_folds: bool = False  # limits from time-blocked out-of-fold statistics
    # which statistic raises ``alarm``: "level" (T² or SPE over its limit, the default) or
    # "change" (the batch's change from its own recent baseline; see ``change_residuals``)
    statistic: str = "level"
    change_lag_h: int = 6
    change_window_h: int = 6
    change_detrend: bool = False  # baseline = the batch's own recent line, extrapolated
    change_scale_window_h: int = 3  # the change scale's window (steps spread over hours)
    # a raw alarm is the statistic over ``alarm_factor`` x its limit; 1 unless chosen with the
    # rule (``train(max_confirm_samples=...)``: a short rule and a higher threshold)
    alarm_factor: float = 1.0
    # how the change statistic combines the tags: "sum" of squared robust z-scores (the
    # original) or "max" (the largest single tag's squared z-score: a step in one tag is
    # not diluted by the noise of the other tags)
    change_combine: str = "sum"
    # how ``alarm_factor`` was chosen with ``max_confirm_samples``: "share" (the smallest
    # factor keeping <= 5 % of the plant-known good training batches confirmed) or "robust"
    # (a quantile of their per-batch peaks once clear outliers are set aside;
    # ``robust_factor``)
    threshold: str = "share"
    clean_share: float = 0.025  # "robust": the share of the other good batches above it
    outlier_z: float = 5.0  # "robust": robust sds above the median peak set aside
    # drift term of the change statistic: hours over which each tag's standardised change is
    # averaged (0: none, the change statistic alone; ``drift_means``). A slow ramp (a drifting
    # probe) moves a tag by little per hour, but in the same direction hour after hour.
    change_drift_h: int = 0
    # the drift ratio's weight against the change ratio (``change_ratio``): 1, or with the
    # robust threshold the change's robust factor over the drift's, so that each term alarms
    # on the same tail share of the good training batches' peaks
    drift_weight: float = 1.0
    # "change" statistic OR'd with the level statistic (T² or SPE over its limit, times
    # ``level_weight``): a tag that stays where the good batches are not (a feed that never
    # started) is a level fault the change from the batch's own baseline cannot see
    change_level: bool = False
    level_weight: float = 1.0

    def params(self) -> dict[str, Any]:
        """Flat parameters for MLflow."""
        return {
            "alpha": self.alpha,
            "cev_target": self.cev_target,
            "max_components": self.max_components,
            "n_folds": self.n_folds,
            "max_batches": self.max_batches,
            "scale_window_h": getattr(self, "scale_window_h", 0),
            "step_h": getattr(self, "step_h", 1.0),
            "time_blocked_folds": getattr(self, "time_blocked_folds", False),
            "statistic": self.stat(),
            "change_lag_h": getattr(self, "change_lag_h", 6),
            "change_window_h": getattr(self, "change_window_h", 6),
            "change_detrend": getattr(self, "change_detrend", False),
            "change_scale_window_h": getattr(self, "change_scale_window_h", 3),
            "alarm_factor": self.factor(),
            "change_combine": self.combine(),
            "threshold": str(getattr(self, "threshold", "share")),
            "clean_share": float(getattr(self, "clean_share", 0.025)),
            "outlier_z": float(getattr(self, "outlier_z", 5.0)),
            "change_drift_h": self.drift_h(),
            "drift_weight": self.weight(),
            "change_level": self.with_level(),
            "level_weight": float(getattr(self, "level_weight", 1.0)),
            "recipes": ",".join(sorted(self.recipes)),
        }

    def train_summary(self) -> dict[str, float]:
        """Flat training figures for MLflow (per recipe)."""
        out: dict[str, float] = {}
        for r, m in self.recipes.items():
            out[f"{r}.n_batches"] = float(len(m.batch_ids))
            out[f"{r}.n_hours"] = float(m.n_hours)
            out[f"{r}.mean_components"] = float(np.mean(m.n_comp))
            cv_alarm = (m.cv_t2 > m.t2_limit) | (m.cv_spe > m.spe_limit)
            out[f"{r}.cv_hour_alarm_rate"] = float(np.nanmean(cv_alarm))
            if m.cv_chg is not None and m.chg_limit is not None:
                with _quiet():
                    ok = np.isfinite(m.cv_chg)
                    c = (m.cv_chg > m.chg_limit)[ok]
                out[f"{r}.cv_change_alarm_rate"] = float(np.mean(c)) if c.size else float("nan")
        out.update(getattr(self, "alarm_rule_train", None) or {})
        return out

    def change_window(self) -> tuple[int, int, bool]:
        """(lag, window hours, detrend) of the change statistic's baseline."""
        return (
            int(getattr(self, "change_lag_h", 6)),
            int(getattr(self, "change_window_h", 6)),
            bool(getattr(self, "change_detrend", False)),
        )

    def stat(self) -> str:
        """The statistic that raises ``alarm`` ("level" for models pickled before the option)."""
        return str(getattr(self, "statistic", "level"))

    def combine(self) -> str:
        """How the change statistic combines tags ("sum" for models before the option)."""
        return str(getattr(self, "change_combine", "sum"))

    def factor(self) -> float:
        """The multiple of the limits a raw alarm needs (1 for models before the option)."""
        return float(getattr(self, "alarm_factor", 1.0))

    def drift_h(self) -> int:
        """Hours of the change statistic's drift term (0: none; models before the option)."""
        return int(getattr(self, "change_drift_h", 0))

    def weight(self) -> float:
        """The drift ratio's weight (1 for models before the option)."""
        return float(getattr(self, "drift_weight", 1.0))

    def with_level(self) -> bool:
        """Whether the change statistic's alarm includes the level statistic."""
        return self.stat() == "change" and bool(getattr(self, "change_level", False))

    def drift_factor(self) -> float:
        """The multiple of the drift limit a drift raw alarm needs (``factor / drift_weight``)."""
        return self.factor() / self.weight()

    def level_factor(self) -> float | None:
        """The multiple of the T² / SPE limits a level raw alarm needs when the change
        alarm includes the level statistic (``factor / level_weight``), else None."""
        if not self.with_level():
            return None
        return self.factor() / float(getattr(self, "level_weight", 1.0))

    def train_alarm_samples(
        self, statistic: str | None = None, factor: float | None = None
    ) -> pl.DataFrame:
        """Out-of-fold alarms of the good training batches: ``batch_id``, ``hour``, ``alarm``
        (the model's statistic, or ``statistic``, over its limit at that maturity), what the
        persistence rule is chosen on."""
        frames = []
        stat = statistic or self.stat()
        f = self.factor() if factor is None else factor
        for m in self.recipes.values():
            with _quiet():
                if stat == "change":
                    if m.cv_chg is None or m.chg_limit is None:
                        raise MSPCInputError("this model has no change statistic")
                    a = m.cv_chg > f * m.chg_limit  # NaN (no baseline yet): never an alarm
                    if m.cv_drf is not None and m.drf_limit is not None:
                        a = a | (self.weight() * m.cv_drf > f * m.drf_limit)
                    if self.with_level():
                        fl = f / float(getattr(self, "level_weight", 1.0))
                        a = a | (m.cv_t2 > fl * m.t2_limit) | (m.cv_spe > fl * m.spe_limit)
                else:
                    a = (m.cv_t2 > f * m.t2_limit) | (m.cv_spe > f * m.spe_limit)
            n, k = a.shape
            frames.append(
                pl.DataFrame(
                    {
                        "batch_id": np.repeat(np.asarray(m.batch_ids, dtype=object), k).tolist(),
                        "hour": np.tile(np.arange(k), n),
                        "alarm": a.ravel(),
                    }
                )
            )
        return pl.concat(frames) if frames else pl.DataFrame()


def _scale_stats(
    raw: np.ndarray, tags: Sequence[str], window_h: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scaling sd and raw sd per (hour, tag) over batches, NaN-aware.

    The scaling sd of a tag at hour ``k`` is the largest between-batch sd of that tag
    within ``k ± window_h`` hours (then floored). Good batches do not all reach a step (feed
    start, temperature shift, feed end) in the same clock hour; at the hours just before
    and after the step they all agree, so their own sd there is only noise, and a good batch
    whose step comes an hour or two earlier or later would get an enormous scaled residual.
    The sd at the neighbouring hours, where the good batches' steps are spread, is the real
    between-batch variability of the tag around that maturity. Away from steps it changes
    slowly, so the window barely changes the scale there."""
    with np.errstate(invalid="ignore"), _quiet():
        mean = np.nanmean(raw, axis=0)
        raw_sd = np.nanstd(raw, axis=0, ddof=1)
        tag_sd = np.nanstd(raw.reshape(-1, raw.shape[2]), axis=0)
        tag_mag = np.nanmean(np.abs(raw.reshape(-1, raw.shape[2])), axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    raw_sd = np.where(np.isfinite(raw_sd), raw_sd, 0.0)
    scale_sd = raw_sd
    if window_h > 0:
        k_hours = raw_sd.shape[0]
        pad = np.pad(raw_sd, ((window_h, window_h), (0, 0)), constant_values=0.0)
        scale_sd = np.max(np.stack([pad[i : i + k_hours] for i in range(2 * window_h + 1)]), axis=0)
    # floor: a tag x hour that barely varies in good batches must not explode the statistics
    floor = np.maximum(
        0.05 * np.where(np.isfinite(tag_sd), tag_sd, 0.0),
        1e-3 * np.where(np.isfinite(tag_mag), tag_mag, 0.0),
    )
    floor = np.maximum(floor, np.array([SD_FLOOR.get(t, 1e-6) for t in tags]))
    return mean, np.maximum(scale_sd, floor[None, :]), raw_sd


#: statistics an MSPC model can alarm on (``train(statistic=...)``)
STATISTICS = ("level", "change")
#: 1.4826 x MAD is the sd of a normal sample
MAD_TO_SD = 1.4826


def change_residuals(
    raw: np.ndarray, lag_h: int, window_h: int, detrend: bool = False
) -> np.ndarray:
    """Change of each tag from the batch's OWN recent baseline, in raw units.

    ``raw`` is (batches, hours, tags) with NaN where no data. At hour ``k`` the baseline is
    the batch's mean over hours ``[k - lag_h - window_h + 1, k - lag_h]`` (only hours it
    has; at least one), so the value is ``raw[k] - baseline``: a batch that differs from
    the good ones all along (a persistent offset: another media lot, a faster seed train)
    has a baseline that differs the same way, and the offset cancels; a fault that starts
    at hour ``k0`` shows as a change for about ``lag_h + window_h / 2`` hours after ``k0``,
    until the baseline has absorbed it. Causal: nothing after ``k`` is used. NaN before
    hour ``lag_h`` (no baseline yet) and where the batch has no value."""
    if lag_h < 1 or window_h < 1:
        raise MSPCInputError(f"change lag and window must be >= 1 hour, got {lag_h}, {window_h}")
    n, k_hours, j = raw.shape
    ok = np.isfinite(raw)
    cs = np.concatenate([np.zeros((n, 1, j)), np.cumsum(np.where(ok, raw, 0.0), axis=1)], axis=1)
    cc = np.concatenate([np.zeros((n, 1, j)), np.cumsum(ok, axis=1)], axis=1)
    ks = np.arange(k_hours)
    hi = np.clip(ks - lag_h + 1, 0, None)  # exclusive end of the baseline window
    lo = np.clip(hi - window_h, 0, None)
    cnt = cc[:, hi] - cc[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        base = np.where(cnt > 0, (cs[:, hi] - cs[:, lo]) / np.maximum(cnt, 1), np.nan)
        if detrend:
            # the batch's own recent line extrapolated to hour k (least squares over the
            # baseline hours; with fewer than 2 hours: the mean): a batch growing faster
            # than the others has steeper trajectories all along, which cancel too
            t = np.broadcast_to(np.arange(k_hours, dtype=float)[None, :, None], raw.shape)
            st = np.concatenate(
                [np.zeros((n, 1, j)), np.cumsum(np.where(ok, t, 0.0), axis=1)], axis=1
            )
            stt = np.concatenate(
                [np.zeros((n, 1, j)), np.cumsum(np.where(ok, t * t, 0.0), axis=1)], axis=1
            )
            sty = np.concatenate(
                [np.zeros((n, 1, j)), np.cumsum(np.where(ok, t * raw, 0.0), axis=1)], axis=1
            )
            c = np.maximum(cnt, 1)
            tm = (st[:, hi] - st[:, lo]) / c
            var_t = (stt[:, hi] - stt[:, lo]) / c - tm * tm
            cov = (sty[:, hi] - sty[:, lo]) / c - tm * base
            slope = np.where((cnt >= 2) & (var_t > 1e-9), cov / np.where(var_t > 1e-9, var_t, 1), 0)
            base = base + slope * (ks[None, :, None] - tm)
    return raw - base


def _change_scale(d: np.ndarray, floor: np.ndarray, window_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust sd (1.4826 x MAD) of the good batches' changes per (hour, tag); the
    sd is the largest within ``± window_h`` hours (steps do not come at the same clock hour
    in every good batch, as for the level scale), floored at the tag's sensor-sized floor.
    Robust, because "good" batches hold faults the plant does not know about (a feed pump
    stopped for hours in a right-first-time batch)."""
    with _quiet():
        mu = np.nanmedian(d, axis=0)
        mad = MAD_TO_SD * np.nanmedian(np.abs(d - mu[None]), axis=0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    mad = np.where(np.isfinite(mad), mad, 0.0)
    if window_h > 0:
        k_hours = mad.shape[0]
        pad = np.pad(mad, ((window_h, window_h), (0, 0)), constant_values=0.0)
        mad = np.max(np.stack([pad[i : i + k_hours] for i in range(2 * window_h + 1)]), axis=0)
    return mu, np.maximum(mad, floor[None, :])


#: how the change statistic may combine the tags' squared z-scores (``change_combine``)
COMBINES = ("sum", "max")


def _change_stat(
    d: np.ndarray, mu: np.ndarray, sd: np.ndarray, combine: str = "sum"
) -> tuple[np.ndarray, np.ndarray]:
    """(statistic (n, K), squared standardised changes (n, K, J)): the statistic is the sum
    (``combine="sum"``) or the largest (``"max"``) over tags of ((change - median) / robust
    sd)²; NaN where no tag has a change."""
    z2 = ((d - mu[None]) / sd[None]) ** 2
    with _quiet():
        q = np.nanmax(z2, axis=2) if combine == "max" else np.nansum(z2, axis=2)
    q[~np.any(np.isfinite(z2), axis=2)] = np.nan
    return q, np.nan_to_num(z2, nan=0.0)


#: smallest robust sd of a tag's drift mean (z units): a tag whose standardised change is
#: nearly constant in the good batches at some hour must not turn a small mean into an alarm
DRIFT_SD_FLOOR = 0.1


def drift_means(d: np.ndarray, mu: np.ndarray, sd: np.ndarray, drift_h: int) -> np.ndarray:
    """Drift term of the change statistic: per (batch, hour, tag) the mean over hours
    ``[k - drift_h + 1, k]`` of the tag's SIGNED standardised change ``(d - mu) / sd`` (the
    change statistic's robust z-score, before squaring; hours without one are skipped, NaN
    if the window has none). Causal. A step shows in the change statistic for a few hours and
    averages out here; a slow ramp (a drifting probe, and the controller's answer to it)
    changes a tag by a small amount per hour, always in the same direction, so its
    z-scores do not cancel in the mean: the mean of ``drift_h`` such hours stands out
    where a single one does not."""
    if drift_h < 1:
        raise MSPCInputError(f"change_drift_h must be >= 1 hour, got {drift_h}")
    z = (d - mu[None]) / sd[None]
    ok = np.isfinite(z)
    n, k_hours, j = z.shape
    cs = np.concatenate([np.zeros((n, 1, j)), np.cumsum(np.where(ok, z, 0.0), axis=1)], axis=1)
    cc = np.concatenate([np.zeros((n, 1, j)), np.cumsum(ok, axis=1)], axis=1)
    hi = np.arange(1, k_hours + 1)
    lo = np.clip(hi - drift_h, 0, None)
    cnt = cc[:, hi] - cc[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (cs[:, hi] - cs[:, lo]) / np.maximum(cnt, 1), np.nan)


def _drift_fit(
    d: np.ndarray,
    mu: np.ndarray,
    sd: np.ndarray,
    drift_h: int,
    scale_window_h: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(drift means of the batches ``d``, their per (hour, tag) median, robust sd)."""
    dm = drift_means(d, mu, sd, drift_h)
    j = d.shape[2]
    dmu, dsd = _change_scale(dm, np.full(j, DRIFT_SD_FLOOR), scale_window_h)
    return dm, dmu, dsd


def _sd_floor(raw: np.ndarray, tags: Sequence[str]) -> np.ndarray:
    """Smallest scaling sd per tag: 5 % of its overall sd, 0.1 % of its magnitude, or the
    sensor-sized ``SD_FLOOR``, whichever is largest."""
    with np.errstate(invalid="ignore"), _quiet():
        tag_sd = np.nanstd(raw.reshape(-1, raw.shape[2]), axis=0)
        tag_mag = np.nanmean(np.abs(raw.reshape(-1, raw.shape[2])), axis=0)
    floor = np.maximum(
        0.05 * np.where(np.isfinite(tag_sd), tag_sd, 0.0),
        1e-3 * np.where(np.isfinite(tag_mag), tag_mag, 0.0),
    )
    return np.maximum(floor, np.array([SD_FLOOR.get(t, 1e-6) for t in tags]))


def _quiet() -> warnings.catch_warnings:  # type: ignore[type-arg]
    """Silence NumPy's empty-slice warnings (all-NaN tag x hour cells are expected)."""
    return warnings.catch_warnings(action="ignore", category=RuntimeWarning)


def _fit_maturities(
    x: np.ndarray, cev_target: float, max_components: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Per maturity k: W_k = U S^-1 (n, A), score variances, A, retained CEV."""
    import scipy.linalg  # lazy (as every scipy import here): the code location loads fast

    n, k_hours, _ = x.shape
    g = np.zeros((n, n))
    ws, lams = [], []
    ncomp = np.zeros(k_hours, dtype=int)
    cevs = np.zeros(k_hours)
    a_max = max(1, min(max_components, n - 2))
    for k in range(k_hours):
        g += x[:, k, :] @ x[:, k, :].T
        # only the leading a_max eigenpairs are needed; the total variance is the trace
        ev, u = scipy.linalg.eigh(g, subset_by_index=[n - a_max, n - 1], driver="evr")
        ev, u = ev[::-1], u[:, ::-1]
        ev = np.clip(ev, 0.0, None)
        tot = max(float(np.trace(g)), 1e-12)
        cum = np.cumsum(ev) / tot if tot > 0 else np.ones_like(ev)
        a = int(min(a_max, np.searchsorted(cum, cev_target) + 1))
        a = max(1, min(a, int(np.sum(ev > 1e-9 * max(tot, 1e-12))) or 1))
        s = np.sqrt(np.maximum(ev[:a], 1e-12))
        ws.append(u[:, :a] / s)
        # a zero-variance score (no data yet at this maturity) must not give 0/0 = NaN
        lams.append(np.maximum(ev[:a], 1e-12) / max(n - 1, 1))
        ncomp[k] = a
        cevs[k] = cum[a - 1]
    return ws, lams, ncomp, cevs


def _project(
    xtr: np.ndarray, ws: list[np.ndarray], lams: list[np.ndarray], y: np.ndarray, k_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T², SPE and per-tag contributions (shares) of one scaled batch ``y`` (K, J) for
    maturities 0..k_max-1."""
    _n, _, n_tags = xtr.shape
    t2 = np.zeros(k_max)
    spe = np.zeros(k_max)
    c_t2 = np.zeros((k_max, n_tags))
    c_spe = np.zeros((k_max, n_tags))
    c = np.zeros(xtr.shape[0])
    d = np.zeros((xtr.shape[0], n_tags))
    for k in range(k_max):
        xk = xtr[:, k, :]
        c += xk @ y[k]
        d += xk * y[k][None, :]
        t = c @ ws[k]
        t2[k] = float(np.sum(t * t / lams[k]))
        e = y[k] - xk.T @ (ws[k] @ t)
        spe[k] = float(e @ e)
        c_spe[k] = e * e
        c_t2[k] = (ws[k] @ (t / lams[k])) @ d
    return t2, spe, c_t2, c_spe


def _chi2_limit(v: np.ndarray, alpha: float, trim_rounds: int = 2) -> float:
    """g·chi²_h limit from the mean and variance of ``v`` (Box's approximation).

    Good batches can still hold abnormal hours (a plant does not know every fault, e.g. a
    feed pump that stopped for a few hours of a right-first-time batch). Such values inflate
    the variance, and a moment fit that includes them is too wide to set them aside, so the
    first fit is robust (g and h from the quartiles, unaffected by up to a quarter of
    outliers); values above ``OUTLIER_FACTOR`` times it (clear outliers only; at most a
    fifth of the values) are set aside before the moment fit, which is then repeated
    ``trim_rounds`` times without the values above the limit."""
    v = v[np.isfinite(v)]
    lim = _chi2_fit(v, alpha)
    robust = _chi2_quartile_fit(v, alpha)
    if np.isfinite(robust) and OUTLIER_FACTOR * robust < lim:
        kept = v[v <= OUTLIER_FACTOR * robust]
        if kept.size >= max(5, int(0.8 * v.size)):
            lim = _chi2_fit(kept, alpha)
    for _ in range(trim_rounds):
        kept = v[v <= lim]
        if kept.size < max(5, int(0.9 * v.size)):
            break
        lim = _chi2_fit(kept, alpha)
    return lim


def _chi2_quartile_fit(v: np.ndarray, alpha: float) -> float:
    """g·chi²_h limit with h matched to the quartile ratio and g to the median."""
    import scipy.optimize
    from scipy import stats

    if v.size < ROBUST_MIN_VALUES:
        return float("inf")
    q1, q2, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    if not q1 > 0 or not q3 > q1:
        return float("inf")

    def gap(log_h: float) -> float:
        h = np.exp(log_h)
        return float(stats.chi2.ppf(0.75, h) / stats.chi2.ppf(0.25, h) - q3 / q1)

    lo, hi = np.log(0.05), np.log(1e4)
    if gap(lo) * gap(hi) > 0:  # ratio outside what chi² can give: no robust fit
        return float("inf")
    h = float(np.exp(scipy.optimize.brentq(gap, lo, hi, xtol=1e-6)))
    g = q2 / float(stats.chi2.ppf(0.5, h))
    return float(g * stats.chi2.ppf(alpha, h))


def _chi2_fit(v: np.ndarray, alpha: float) -> float:
    from scipy import stats

    if v.size < 2:
        return float("inf")
    m, var = float(np.mean(v)), float(np.var(v, ddof=1))
    if m <= 0 or var <= 0:
        return float(np.max(v)) if v.size else float("inf")
    g, h = var / (2 * m), 2 * m * m / var
    return float(g * stats.chi2.ppf(alpha, h))


def _fit_recipe(
    recipe_id: str,
    raw: np.ndarray,
    batch_ids: list[str],
    tags: list[str],
    alpha: float,
    cev_target: float,
    max_components: int,
    n_folds: int,
    pool_h: int,
    scale_window_h: int,
    time_blocked_folds: bool = False,
    change_lag_h: int = 6,
    change_window_h: int = 6,
    change_detrend: bool = False,
    change_scale_window_h: int = 3,
    change_combine: str = "sum",
    change_drift_h: int = 0,
) -> RecipeModel:
    from scipy import stats

    n, k_hours, _ = raw.shape
    mean, sd, raw_sd = _scale_stats(raw, tags, scale_window_h)
    x = np.nan_to_num((raw - mean) / sd, nan=0.0)
    ws, lams, ncomp, cevs = _fit_maturities(x, cev_target, max_components)
    # out-of-fold statistics for the limits (leave-one-out when n <= n_folds); with
    # ``time_blocked_folds`` the batches come in start order and each fold is one contiguous
    # block of time, so a batch is scored by a model without its neighbours in time
    n_f = min(n_folds, n)
    folds = (np.arange(n) * n_f) // n if time_blocked_folds else np.arange(n) % n_f
    cv_t2 = np.full((n, k_hours), np.nan)
    cv_spe = np.full((n, k_hours), np.nan)
    for f in np.unique(folds):
        tr, te = np.where(folds != f)[0], np.where(folds == f)[0]
        if tr.size < 3:
            continue
        m_f, sd_f, _ = _scale_stats(raw[tr], tags, scale_window_h)
        x_f = np.nan_to_num((raw[tr] - m_f) / sd_f, nan=0.0)
        ws_f, lams_f, _, _ = _fit_maturities(x_f, cev_target, max_components)
        for i in te:
            y = np.nan_to_num((raw[i] - m_f) / sd_f, nan=0.0)
            t2_i, spe_i, _, _ = _project(x_f, ws_f, lams_f, y, k_hours)
            cv_t2[i], cv_spe[i] = t2_i, spe_i
    t2_lim = np.zeros(k_hours)
    spe_lim = np.zeros(k_hours)
    for k in range(k_hours):
        lo, hi = max(0, k - pool_h), min(k_hours, k + pool_h + 1)
        a = int(ncomp[k])
        f_lim = (
            a * (n * n - 1) / (n * (n - a)) * stats.f.ppf(alpha, a, n - a)
            if n - a > 0
            else float("inf")
        )
        t2_lim[k] = max(f_lim, _chi2_limit(cv_t2[:, k].ravel(), alpha))
        spe_lim[k] = _chi2_limit(cv_spe[:, lo:hi].ravel(), alpha)
    with _quiet():
        n_obs = np.sum(np.isfinite(raw), axis=0)
    # change statistic: the same folds; no PCA, so each fold only needs the others' median
    # and robust sd of the changes
    d = change_residuals(raw, change_lag_h, change_window_h, change_detrend)
    floor = _sd_floor(raw, tags)
    chg_mu, chg_sd = _change_scale(d, floor, change_scale_window_h)
    cv_chg = np.full((n, k_hours), np.nan)
    drift = change_drift_h > 0
    cv_drf = np.full((n, k_hours), np.nan)
    for f in np.unique(folds):
        tr, te = np.where(folds != f)[0], np.where(folds == f)[0]
        if tr.size < 3:
            continue
        mu_f, sd_f = _change_scale(d[tr], floor, change_scale_window_h)
        cv_chg[te] = _change_stat(d[te], mu_f, sd_f, change_combine)[0]
        if drift:  # the drift term's scale from the same fold's batches, as the change's
            _, dmu_f, dsd_f = _drift_fit(d[tr], mu_f, sd_f, change_drift_h, change_scale_window_h)
            dm_te = drift_means(d[te], mu_f, sd_f, change_drift_h)
            cv_drf[te] = _change_stat(dm_te, dmu_f, dsd_f, change_combine)[0]

    def limits(cv: np.ndarray) -> np.ndarray:
        lim = np.full(k_hours, np.nan)
        for k in range(k_hours):
            lo, hi = max(0, k - pool_h), min(k_hours, k + pool_h + 1)
            v = cv[:, lo:hi].ravel()
            if np.isfinite(cv[:, k]).any() and np.isfinite(v).sum() >= 2:
                lim[k] = _chi2_limit(v, alpha)
        return lim

    chg_lim = limits(cv_chg)
    drf_mu = drf_sd = drf_lim = None
    if drift:
        _, drf_mu, drf_sd = _drift_fit(d, chg_mu, chg_sd, change_drift_h, change_scale_window_h)
        drf_lim = limits(cv_drf)
    # hours where no good batch has any reading have nothing to compare with: no limit
    empty = n_obs.sum(axis=1) == 0
    t2_lim[empty] = np.nan
    spe_lim[empty] = np.nan
    chg_lim[empty] = np.nan
    if drf_lim is not None:
        drf_lim[empty] = np.nan
    return RecipeModel(
        recipe_id=recipe_id,
        tags=tags,
        n_hours=k_hours,
        batch_ids=batch_ids,
        mean=mean,
        sd=sd,
        raw_sd=raw_sd,
        n_obs=n_obs,
        x=x,
        w=ws,
        lam=lams,
        n_comp=ncomp,
        cev=cevs,
        t2_limit=t2_lim,
        spe_limit=spe_lim,
        cv_t2=cv_t2,
        cv_spe=cv_spe,
        chg_mu=chg_mu,
        chg_sd=chg_sd,
        chg_limit=chg_lim,
        cv_chg=cv_chg,
        drf_mu=drf_mu,
        drf_sd=drf_sd,
        drf_limit=drf_lim,
        cv_drf=cv_drf if drift else None,
    )


def _recipe_map(batches: pl.DataFrame) -> dict[str, str]:
    for c in ("batch_id", "recipe_id"):
        if c not in batches.columns:
            raise MSPCInputError(f"batches frame lacks column {c!r}; pass silver/batches")
    # a site whose MES records no recipe (or has no MES) is one recipe
    recipes = batches["recipe_id"].cast(pl.String).fill_null(NO_RECIPE).to_list()
    return dict(zip(batches["batch_id"].to_list(), recipes, strict=True))


#: the recipe of batches whose MES records none
NO_RECIPE = "(no recipe)"


def train(
    timeline: pl.DataFrame,
    batches: pl.DataFrame,
    good_batch_ids: Sequence[str],
    tags: Sequence[str] = PROCESS_TAGS,
    alpha: float = 0.99,
    cev_target: float = 0.7,
    max_components: int = 8,
    n_folds: int = 5,
    min_batches: int = 5,
    pool_h: int = 2,
    max_batches: int = 150,
    scale_window_h: int = 3,
    time_blocked_folds: bool = False,
    statistic: str = "level",
    change_lag_h: int = 6,
    change_window_h: int = 6,
    change_detrend: bool = False,
    change_scale_window_h: int = 3,
    max_confirm_samples: int | None = None,
    change_combine: str = "sum",
    threshold: str = "share",
    clean_share: float = 0.025,
    outlier_z: float = 5.0,
    change_drift_h: int = 0,
    change_level: bool = False,
) -> MSPCModel:
    """Fit one evolving multiway PCA per recipe on the good batches' timelines.

    The model horizon of a recipe is the shortest good batch's number of complete hours;
    later hours of longer batches are not monitored. Recipes with fewer than
    ``min_batches`` good batches get no model (listed in ``skipped_recipes``).
    ``timeline`` may also be the ``hourly_means`` of it (e.g. aggregated batch by batch, to
    bound memory on a large history); ``monitor`` accepts either form too. Only the
    ``max_batches`` most recent good batches of a recipe are used (the current process;
    also bounds the training time). Limits come from ``n_folds``-fold out-of-fold
    statistics (leave-one-out when there are fewer batches than folds). Each tag is
    scaled at hour ``k`` by its largest between-batch sd within ``k ± scale_window_h`` hours
    (see ``_scale_stats``: good batches do not all reach a step in the same clock hour).
    ``time_blocked_folds``: the out-of-fold folds are contiguous blocks of start time
    instead of every ``n_folds``-th batch, so the limits see how batches score against a
    model of other periods (drift between periods widens them; docs/models.md, MSPC).
    ``statistic``: what raises ``alarm`` and what the persistence rule is chosen on:
    ``"level"`` (T² or SPE over its limit) or ``"change"`` (the sum over tags of the squared
    robust z-score of each tag's change from the batch's own baseline ``change_lag_h`` ..
    ``change_lag_h + change_window_h - 1`` hours earlier: a fault is an onset, a good batch
    that is merely different has a persistent offset, which cancels; ``change_residuals``).
    Both statistics are always fitted and both are in ``monitor``'s output.
    ``max_confirm_samples``: choose a threshold instead of a long persistence rule: the
    smallest factor of ``ALARM_FACTORS`` (a raw alarm = the statistic over factor x its
    limit) under which some rule of at most this many samples keeps the good training
    batches' out-of-fold share with a confirmed alarm <= 5 %, with the least persistent
    such rule (``choose_factor_and_rule``). Faults are large and sudden, good batches'
    excursions moderate and long: a short rule on a higher threshold separates them.
    ``change_combine``: ``"sum"`` of the tags' squared z-scores or their ``"max"`` (a step
    in one tag against that tag's own spread, not diluted by the others' noise).
    ``threshold`` (with ``max_confirm_samples``): ``"share"`` as above, or ``"robust"``:
    the rule confirming after ``max_confirm_samples`` samples, with the factor that at most ``clean_share`` of the good
    training batches' out-of-fold per-batch peaks exceed once peaks more than
    ``outlier_z`` robust sds above their median are set aside (``robust_factor``), so that
    the plant-known good batches that hold faults the plant does not know about (a
    minority far above the bulk) cannot drag the threshold up.
    ``change_drift_h``: add a drift term to the change statistic (0: none): each tag's
    signed standardised change averaged over the last ``change_drift_h`` hours
    (``drift_means``), squared against the good batches' robust spread of that mean and
    combined over tags as the change (``change_combine``), with its own maturity limits; a
    raw change alarm is either ratio (change / its limit, drift / its limit times
    ``drift_weight``) over the factor. A slow ramp (a drifting pH probe and the pH loop's
    answer to it) barely moves the change from the recent baseline but does so in the same
    direction for many hours. With ``threshold="robust"`` the drift's weight makes each term
    alarm on the same tail of the good training batches' peaks (``choose_factor_robust``).
    ``change_level`` (with ``statistic="change"``): the alarm is also raised by the level
    statistic (T² or SPE over ``factor / level_weight`` times its limit; the weight chosen
    as the drift's): a batch that stays where the good batches are not (a feed that never
    starts while theirs run) has no change from its own baseline to see.
    """
    if statistic not in STATISTICS:
        raise MSPCInputError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not 0.5 < alpha < 1.0:
        raise MSPCInputError(f"alpha must be in (0.5, 1), got {alpha}")
    if change_combine not in COMBINES:
        raise MSPCInputError(f"change_combine must be one of {COMBINES}, got {change_combine!r}")
    if threshold not in THRESHOLDS:
        raise MSPCInputError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    if not 0.0 < clean_share < 0.5:
        raise MSPCInputError(f"clean_share must be in (0, 0.5), got {clean_share}")
    if not outlier_z > 0:
        raise MSPCInputError(f"outlier_z must be > 0, got {outlier_z}")
    if scale_window_h < 0:
        raise MSPCInputError(f"scale_window_h must be >= 0 hours, got {scale_window_h}")
    if change_drift_h < 0:
        raise MSPCInputError(f"change_drift_h must be >= 0 hours, got {change_drift_h}")
    ids = sorted(set(good_batch_ids))
    if not ids:
        raise MSPCInputError("no good batches given; see good_batches()")
    rmap = _recipe_map(batches)
    starts: dict[str, Any] = (
        dict(zip(batches["batch_id"].to_list(), batches["start_ts"].to_list(), strict=True))
        if "start_ts" in batches.columns
        else {}
    )
    unknown = [b for b in ids if b not in rmap]
    if unknown:
        raise MSPCInputError(f"good batches {unknown[:5]} are not in the batches frame")
    hourly = (timeline if _is_hourly(timeline) else hourly_means(timeline, tags)).filter(
        pl.col("batch_id").is_in(ids)
    )
    n_h = dict(
        hourly.group_by("batch_id").agg(pl.col("hour").max() + 1).iter_rows()  # type: ignore[arg-type]
    )
    models: dict[str, RecipeModel] = {}
    skipped: dict[str, int] = {}
    for rid in sorted({rmap[b] for b in ids}):
        rb = [b for b in ids if rmap[b] == rid and n_h.get(b, 0) > 0]
        if len(rb) > max_batches:
            rb = sorted(sorted(rb, key=lambda b: starts.get(b, 0))[-max_batches:])
        if time_blocked_folds:
            rb = sorted(rb, key=lambda b: (starts.get(b, 0), b))
        if len(rb) < min_batches:
            skipped[rid] = len(rb)
            continue
        k_hours = int(min(n_h[b] for b in rb))
        raw = _cube(hourly, rb, list(tags), k_hours)
        # hundreds of small eigendecompositions: multithreaded BLAS only adds overhead
        with threadpool_limits(limits=1, user_api="blas"):
            models[rid] = _fit_recipe(
                rid,
                raw,
                rb,
                list(tags),
                alpha,
                cev_target,
                max_components,
                n_folds,
                pool_h,
                scale_window_h,
                time_blocked_folds,
                change_lag_h,
                change_window_h,
                change_detrend,
                change_scale_window_h,
                change_combine,
                change_drift_h,
            )
    if not models:
        raise MSPCInputError(
            f"no recipe has >= {min_batches} good batches with telemetry (counts: {skipped})"
        )
    model = MSPCModel(
        models,
        alpha,
        cev_target,
        max_components,
        n_folds,
        skipped,
        max_batches,
        scale_window_h,
        step_h=step_hours(hourly) if _is_hourly(hourly) else 1.0,
        time_blocked_folds=time_blocked_folds,
        statistic=statistic,
        change_lag_h=change_lag_h,
        change_window_h=change_window_h,
        change_detrend=change_detrend,
        change_scale_window_h=change_scale_window_h,
        change_combine=change_combine,
        change_drift_h=change_drift_h,
    )
    return with_threshold(
        model, max_confirm_samples, threshold, clean_share, outlier_z, change_level
    )


#: how ``train(max_confirm_samples=...)`` chooses the threshold factor
THRESHOLDS = ("share", "robust")

#: the monitoring model the product trains (``monitoring.train_mspc``), chosen on the
#: training period of the 1,000-batch plant by ``benchmarks/bench_mspc_limits.py --only
#: threshold`` (``change_max_3_3_d12_robust_lvl``; docs/models.md, "A drift term and the level
#: in the change alarm"): the change statistic (max over tags, 3 h lag / 3 h baseline) with
#: a 12-h drift term and the level statistic in its alarm, every good batch, time-blocked
#: folds, a 1-sample rule and the robust threshold
MONITORING_FIT: dict[str, Any] = {
    "statistic": "change",
    "change_lag_h": 3,
    "change_window_h": 3,
    "change_combine": "max",
    "change_drift_h": 12,
    "change_level": True,
    "time_blocked_folds": True,
    "max_batches": 100_000,
    "max_confirm_samples": 1,
    "threshold": "robust",
}


def with_threshold(
    model: MSPCModel,
    max_confirm_samples: int | None = None,
    threshold: str = "share",
    clean_share: float = 0.025,
    outlier_z: float = 5.0,
    change_level: bool | None = None,
) -> MSPCModel:
    """``model`` with its persistence rule (and, with ``max_confirm_samples``, its threshold
    factor) chosen on its good training batches' out-of-fold statistics, as ``train`` does;
    the limits and statistics are the model's own (a copy; nothing is refitted).
    ``change_level``: include the level statistic in the change alarm (None: as the model)."""
    import dataclasses

    if threshold not in THRESHOLDS:
        raise MSPCInputError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    lvl = bool(getattr(model, "change_level", False)) if change_level is None else change_level
    model = dataclasses.replace(
        model,
        alarm_factor=1.0,
        threshold=threshold,
        drift_weight=1.0,
        change_level=lvl,
        level_weight=1.0,
    )
    model.clean_share, model.outlier_z = clean_share, outlier_z
    extra: dict[str, float] = {}
    if max_confirm_samples is None:
        choice = choose_rule(model.train_alarm_samples(), "hour", sample="hour")
    else:
        robust = None
        if threshold == "robust":
            try:
                robust = choose_factor_robust(model, max_confirm_samples, clean_share, outlier_z)
            except MSPCInputError:  # too few good batches for it: the share (recorded)
                extra = {"robust_fallback_to_share": 1.0}
        if robust is not None:
            model.alarm_factor, choice, extra = robust
            model.drift_weight = extra.get("drift_weight", 1.0)
            model.level_weight = extra.get("level_weight", 1.0)
        else:
            model.alarm_factor, choice = choose_factor_and_rule(model, max_confirm_samples)
    model.alarm_rule, model.alarm_rule_train = choice.rule.as_dict(), choice.summary()
    if max_confirm_samples is not None:  # the threshold, and whether it met the target
        model.alarm_rule_train |= {
            "alarm_factor": model.alarm_factor,
            "alarm_rule_met": float(choice.met),
        } | extra
    return model


#: threshold factors tried by ``choose_factor_and_rule``, smallest first
ALARM_FACTORS = (
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    8.0,
    12.0,
    16.0,
    24.0,
    32.0,
    48.0,
    64.0,
    96.0,
    128.0,
    192.0,
    256.0,
    384.0,
    512.0,
    1024.0,
)


def choose_factor_and_rule(model: MSPCModel, max_confirm_samples: int) -> tuple[float, Any]:
    """(factor, RuleChoice): the smallest ``ALARM_FACTORS`` entry under which a persistence
    rule of at most ``max_confirm_samples`` samples keeps the good training batches'
    out-of-fold share with a confirmed alarm within the target; that rule. If no factor
    does, the largest factor with its best rule (``met`` False). Training data only."""
    if max_confirm_samples < 1:
        raise MSPCInputError(f"max_confirm_samples must be >= 1, got {max_confirm_samples}")
    from .alarm_rules import K_CANDIDATES

    ks = [k for k in K_CANDIDATES if k <= max_confirm_samples]
    choice = None
    for f in ALARM_FACTORS:
        choice = choose_rule(model.train_alarm_samples(factor=f), "hour", sample="hour", ks=ks)
        if choice.met:
            return f, choice
    assert choice is not None
    return ALARM_FACTORS[-1], choice


def train_ratios(
    model: MSPCModel,
    statistic: str | None = None,
    part: str = "both",
    weight: float | None = None,
    level_weight: float | None = None,
) -> tuple[list[str], np.ndarray]:
    """(batch ids, ratios (batches, hours)) of the good training batches' out-of-fold
    statistic over its limit (level: the larger of T²/limit and SPE/limit; change with a
    drift term: the larger of change/limit and ``weight`` x drift/limit, and with
    ``change_level`` of ``level_weight`` x the level ratio; or one of them with
    ``part="change"`` / ``"drift"`` / ``"level"``), hours beyond a recipe's horizon
    ``-inf``: a raw alarm at factor ``f`` is a ratio ``> f``, exactly as
    ``train_alarm_samples(factor=f)`` (a NaN statistic or limit never alarms: ``-inf``)."""
    stat = statistic or model.stat()
    w = model.weight() if weight is None else weight
    wl = float(getattr(model, "level_weight", 1.0)) if level_weight is None else level_weight
    if part == "level":
        stat, wl = "level", 1.0 if level_weight is None else level_weight
    ids: list[str] = []
    rows: list[np.ndarray] = []
    k_max = max(m.n_hours for m in model.recipes.values())
    for m in model.recipes.values():
        with _quiet(), np.errstate(divide="ignore", invalid="ignore"):
            if stat == "change":
                if m.cv_chg is None or m.chg_limit is None:
                    raise MSPCInputError("this model has no change statistic")
                r = m.cv_chg / m.chg_limit[None, :]
                if m.cv_drf is not None and m.drf_limit is not None and part != "change":
                    rd = w * m.cv_drf / m.drf_limit[None, :]
                    r = rd if part == "drift" else np.fmax(r, rd)
                elif part == "drift":
                    raise MSPCInputError("this model has no drift term")
                if part == "both" and model.with_level():
                    lvl = np.fmax(m.cv_t2 / m.t2_limit[None, :], m.cv_spe / m.spe_limit[None, :])
                    r = np.fmax(r, wl * lvl)
            else:
                r = np.fmax(m.cv_t2 / m.t2_limit[None, :], m.cv_spe / m.spe_limit[None, :])
                r = r * (wl if part == "level" else 1.0)
        r = np.where(np.isnan(r), -np.inf, r)
        rows.append(np.pad(r, ((0, 0), (0, k_max - r.shape[1])), constant_values=-np.inf))
        ids += list(m.batch_ids)
    return ids, np.concatenate(rows) if rows else np.zeros((0, k_max))


def rule_peaks(ratios: np.ndarray, k: int, n: int) -> np.ndarray:
    """Per batch (row), the largest factor ``f`` at which the persistence rule ``k`` of the
    last ``n`` samples confirms an alarm on raw alarms ``ratio > f``: the maximum over
    samples of the ``k``-th largest ratio among the last ``n`` (fewer than ``k`` samples
    so far: ``-inf``, as ``PersistenceRule`` counts what there is). A batch confirms at
    factor ``f`` exactly when its peak is ``> f``."""
    if ratios.size == 0:
        return np.zeros(ratios.shape[0])
    pad = np.pad(ratios, ((0, 0), (n - 1, 0)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(pad, n, axis=1)  # (b, K, n)
    kth = np.sort(win, axis=2)[:, :, n - k]
    return np.max(kth, axis=1)


#: the robust threshold needs at least this many good batches with a finite, positive peak
ROBUST_MIN_BATCHES = 10
#: a good training batch whose peak is more than this many robust sds (1.4826 x MAD, log
#: scale) above the median peak is set aside as a clear outlier before the quantile: the
#: twin's faults move a tag by tens of robust sds, good batches' own excursions by a few
ROBUST_OUTLIER_Z = 5.0


def robust_factor(
    peaks: np.ndarray, clean_share: float = 0.025, outlier_z: float = ROBUST_OUTLIER_Z
) -> tuple[float, dict[str, float]]:
    """Threshold factor from the good training batches' per-batch peaks (``rule_peaks``),
    robust to a minority of them that hold faults the plant does not know about.

    The bulk of the peaks is located robustly on the log scale (peaks of good batches span
    orders of magnitude): median and robust sd (1.4826 x MAD), which a minority far above
    the bulk barely moves. Peaks more than ``outlier_z`` robust sds above the median are
    set aside (clear outliers; at most half the batches), and the factor is the smallest
    value that at most ``clean_share`` of the remaining batches exceed (their empirical
    quantile: no assumption about the shape of the tail), at least 1 (never below the
    limit). With the plain share (``threshold="share"``) the same batches, up to 5 %
    of them, would have to stay below it, so a plant-known good population in which more
    than 5 % hold real faults pushes the threshold above those faults. Returns (factor,
    diagnostics)."""
    from .alarm_rules import TARGET_GOOD_BATCH_SHARE

    pk = np.where(np.isnan(peaks), -np.inf, peaks)
    pos = pk[np.isfinite(pk) & (pk > 0)]
    if pos.size < ROBUST_MIN_BATCHES:
        raise MSPCInputError(
            f"robust threshold needs >= {ROBUST_MIN_BATCHES} good batches with a peak, got "
            f"{pos.size}; use threshold='share'"
        )
    y = np.log(pos)
    med = float(np.median(y))
    sd = max(MAD_TO_SD * float(np.median(np.abs(y - med))), 1e-6)
    cut = float(np.exp(med + outlier_z * sd))
    kept = np.sort(pk[pk <= cut])  # batches without any peak never alarm: kept, lowest
    if kept.size < 0.5 * pk.size:
        raise MSPCInputError("robust threshold: more than half the good batches are outliers")
    allowed = int(np.floor(clean_share * kept.size))
    f = max(1.0, float(kept[kept.size - 1 - allowed]))
    above = float(np.mean(pk > f))
    return f, {
        "robust_log_median": med,
        "robust_log_sd": sd,
        "robust_outlier_cut": cut,
        "robust_set_aside_share": float(np.mean(pk > cut)),
        "robust_clean_share": clean_share,
        # plant-known good batches above it: those set aside (presumably faults the plant
        # does not know about) and up to ``clean_share`` of the others
        "robust_good_above_share": above,
        "robust_good_above_target": float(above > TARGET_GOOD_BATCH_SHARE),
    }


def choose_factor_robust(
    model: MSPCModel,
    max_confirm_samples: int,
    clean_share: float = 0.025,
    outlier_z: float = ROBUST_OUTLIER_Z,
) -> tuple[float, Any, dict[str, float]]:
    """(factor, RuleChoice, diagnostics) of ``threshold="robust"``: the rule that confirms
    after ``max_confirm_samples`` samples (the largest ``K_CANDIDATES`` entry not above it,
    with the most gap-tolerant window, as ``alarm_rules.candidates``: 1 -> any sample, 2 ->
    2 of 3, 3 -> 3 of 5), its factor from ``robust_factor`` on the good training batches'
    out-of-fold peaks under that rule.
    ``met``: whether the plant-known good training batches' share above it is within the
    5 % target (it need not be: they hold faults the plant does not know about)."""
    from .alarm_rules import K_CANDIDATES, TARGET_GOOD_BATCH_SHARE, RuleChoice, candidates

    if max_confirm_samples < 1:
        raise MSPCInputError(f"max_confirm_samples must be >= 1, got {max_confirm_samples}")
    rule = candidates([max(k for k in K_CANDIDATES if k <= max_confirm_samples)], "hour")[0]
    weight: dict[str, float] = {}
    if model.stat() == "change" and (model.drift_h() > 0 or model.with_level()):
        # each term's own robust factor first: the drift (level) ratio is weighted so that
        # each alarms on the same tail share of the good batches' peaks as the change, then
        # the factor of the union (at least 1, so never below the change's own factor)
        def own(part: str) -> float:
            _, r = train_ratios(model, part=part, weight=1.0, level_weight=1.0)
            return robust_factor(rule_peaks(r, rule.k, rule.n), clean_share, outlier_z)[0]

        f_c = own("change")
        weight = {"robust_change_factor": f_c}
        if model.drift_h() > 0:
            f_d = own("drift")
            weight |= {"drift_weight": f_c / f_d, "robust_drift_factor": f_d}
        if model.with_level():
            f_l = own("level")
            weight |= {"level_weight": f_c / f_l, "robust_level_factor": f_l}
    ids, ratios = train_ratios(
        model, weight=weight.get("drift_weight"), level_weight=weight.get("level_weight")
    )
    peaks = rule_peaks(ratios, rule.k, rule.n)
    f, diag = robust_factor(peaks, clean_share, outlier_z)
    diag |= weight
    share = diag["robust_good_above_share"]
    table = pl.DataFrame({"k": [rule.k], "n": [rule.n], "train_good_batch_share": [share]})
    choice = RuleChoice(rule, share, len(set(ids)), share <= TARGET_GOOD_BATCH_SHARE, table)
    return f, choice, diag


# ----------------------------------------------------------------------------- outputs


def envelope(model: MSPCModel, model_version: str = "untrained") -> pl.DataFrame:
    """Rows of ``gold/golden_batch``: mean ± 3 sd of the good batches per tag per hour
    (``elapsed_h`` = end of the hour), plus ``recipe_id``."""
    frames = []
    for rid, m in model.recipes.items():
        k, j = np.meshgrid(np.arange(m.n_hours), np.arange(len(m.tags)), indexing="ij")
        n_obs = m.n_obs
        frames.append(
            pl.DataFrame(
                {
                    "recipe_id": rid,
                    "tag": np.asarray(m.tags)[j.ravel()],
                    "elapsed_h": (k.ravel() + 1).astype(np.float64) * getattr(model, "step_h", 1.0),
                    # hours without data are null (not 0); lo/hi need two batches
                    "mean": np.where(n_obs >= 1, m.mean, np.nan).ravel(),
                    "lo": np.where(n_obs >= 2, m.mean - 3 * m.raw_sd, np.nan).ravel(),
                    "hi": np.where(n_obs >= 2, m.mean + 3 * m.raw_sd, np.nan).ravel(),
                    "n_batches": m.n_obs.ravel().astype(np.int64),
                }
            )
        )
    return (
        pl.concat(frames)
        .with_columns(pl.col("mean", "lo", "hi").fill_nan(None))
        .with_columns(model_version=pl.lit(str(model_version)))
    )


def _shares(c: np.ndarray) -> np.ndarray:
    a = np.abs(c)
    s = a.sum(axis=-1, keepdims=True)
    return np.divide(a, s, out=np.full_like(a, 1.0 / a.shape[-1]), where=s > 0)


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _contrib_json(tags: Sequence[str], shares: np.ndarray) -> str:
    return json.dumps({t: round(float(v), 4) for t, v in zip(tags, shares, strict=True)})


def monitor(
    model: MSPCModel,
    timeline: pl.DataFrame,
    batches: pl.DataFrame,
    model_version: str = "untrained",
    model_name: str = MODEL_NAME,
    scored_at: datetime | None = None,
    n_top: int = 3,
) -> pl.DataFrame:
    """One row per batch per complete elapsed hour (up to the recipe's horizon): the
    ``gold/mspc_scores`` columns, plus ``recipe_id`` and hidden ``_t2_contrib`` /
    ``_spe_contrib`` / ``_chg_contrib`` JSON for ``alarms``. Both statistics are scored:
    ``level_alarm`` (T² or SPE over its limit), ``change_alarm`` (``chg`` over
    ``chg_limit``; null for models trained before the change statistic); ``alarm`` is the
    one of the model's ``statistic``; ``alarm_ratio`` is the deciding statistic over its
    alarm threshold (factor x limit; the alarm is exactly ``alarm_ratio > 1``) and
    ``alarm_by`` names it (change, drift, T², SPE). ``top_contributors`` uses, for ``"change"``, the
    shares of the squared standardised changes; for ``"level"``, the SPE shares when
    SPE/limit >= T²/limit, else the T² shares. Batches whose recipe has no model are
    skipped."""
    rmap = _recipe_map(batches)
    tags = next(iter(model.recipes.values())).tags
    hourly = timeline if _is_hourly(timeline) else hourly_means(timeline, tags)
    now = scored_at or datetime.now(UTC)
    on_change = model.stat() == "change"
    fac = model.factor()
    lvl_fac = model.level_factor()
    rows: list[dict[str, Any]] = []
    for bid in sorted(set(hourly["batch_id"].to_list())):
        m = model.recipes.get(rmap.get(bid, ""))
        if m is None:
            continue
        hb = hourly.filter(pl.col("batch_id") == bid)
        n_complete = int(hb["hour"].to_numpy().max()) + 1
        k_max = min(n_complete, m.n_hours)
        if k_max <= 0:
            continue
        raw = _cube(hb, [bid], m.tags, m.n_hours)[0]
        y = np.nan_to_num((raw - m.mean) / m.sd, nan=0.0)
        with threadpool_limits(limits=1, user_api="blas"):
            t2, spe, c_t2, c_spe = _project(m.x, m.w, m.lam, y, k_max)
        s_t2, s_spe = _shares(c_t2), _shares(c_spe)
        has_chg = m.chg_mu is not None and m.chg_sd is not None and m.chg_limit is not None
        if has_chg:
            d = change_residuals(raw[None], *model.change_window())
            q, z2 = _change_stat(d, m.chg_mu, m.chg_sd, model.combine())  # type: ignore[arg-type]
            chg, s_chg = q[0], _shares(z2[0])
        has_drf = has_chg and m.drf_mu is not None and m.drf_limit is not None
        if has_drf:
            dm = drift_means(d, m.chg_mu, m.chg_sd, model.drift_h())  # type: ignore[arg-type]
            qd, zd2 = _change_stat(dm, m.drf_mu, m.drf_sd, model.combine())  # type: ignore[arg-type]
            drf, s_drf = qd[0], _shares(zd2[0])
        drf_fac = model.drift_factor()  # the drift's own factor: factor / drift weight
        unit = hb["unit_id"][0]
        has_data = np.any(np.isfinite(raw), axis=1) & (m.n_obs.sum(axis=1) > 0)
        for k in range(k_max):
            # an hour without any reading has no statistic (null, not 0); a non-finite
            # statistic or limit is stored as null and never alarms
            t2_k = _finite(t2[k]) if has_data[k] else None
            spe_k = _finite(spe[k]) if has_data[k] else None
            t2_l, spe_l = _finite(m.t2_limit[k]), _finite(m.spe_limit[k])
            r_t2 = t2_k / t2_l if t2_k is not None and t2_l else None
            r_spe = spe_k / spe_l if spe_k is not None and spe_l else None
            chg_k = _finite(chg[k]) if has_chg and has_data[k] else None
            chg_l = _finite(m.chg_limit[k]) if has_chg else None  # type: ignore[index]
            r_chg = chg_k / chg_l if chg_k is not None and chg_l else None
            drf_k = _finite(drf[k]) if has_drf and has_data[k] else None
            drf_l = _finite(m.drf_limit[k]) if has_drf else None  # type: ignore[index]
            # the drift ratio on the change's scale (weighted), as the factor sees it
            r_drf = drf_k / drf_l * fac / drf_fac if drf_k is not None and drf_l else None
            level_alarm = bool((r_t2 or 0.0) > fac or (r_spe or 0.0) > fac)
            chg_alarm = bool((r_chg or 0.0) > fac or (r_drf or 0.0) > fac)
            # the level statistic in the change alarm (``change_level``), at its own factor
            r_lvl = max(r_t2 or 0.0, r_spe or 0.0) * fac / lvl_fac if lvl_fac else 0.0
            lvl_union = bool(lvl_fac is not None and r_lvl > fac)
            # what an operator reads: the deciding statistic over its alarm threshold (the
            # alarm is exactly ``alarm_ratio > 1``) and which statistic it is
            if on_change:
                cands = {"change": r_chg, "drift": r_drf}
                if lvl_fac is not None:
                    cands["T²" if (r_t2 or 0.0) >= (r_spe or 0.0) else "SPE"] = (
                        r_lvl if (r_t2 is not None or r_spe is not None) else None
                    )
            else:
                cands = {"T²": r_t2, "SPE": r_spe}
            known = {k: v for k, v in cands.items() if v is not None}
            alarm_by = max(known, key=lambda k: known[k]) if known else None
            alarm_ratio = known[alarm_by] / fac if alarm_by is not None and fac else None
            top = None
            if on_change and lvl_union and r_lvl >= max(r_chg or 0.0, r_drf or 0.0):
                use = s_spe[k] if (r_spe or 0.0) >= (r_t2 or 0.0) else s_t2[k]
                top = ",".join(f"{m.tags[i]}:{use[i]:.3f}" for i in np.argsort(-use)[:n_top])
            elif on_change:
                if r_chg is not None or r_drf is not None:
                    use = s_drf[k] if (r_drf or 0.0) > (r_chg or 0.0) else s_chg[k]
                    top = ",".join(f"{m.tags[i]}:{use[i]:.3f}" for i in np.argsort(-use)[:n_top])
            elif r_t2 is not None or r_spe is not None:
                use = s_spe[k] if (r_spe or 0.0) >= (r_t2 or 0.0) else s_t2[k]
                top = ",".join(f"{m.tags[i]}:{use[i]:.3f}" for i in np.argsort(-use)[:n_top])
            rows.append(
                {
                    "batch_id": bid,
                    "unit_id": unit,
                    "recipe_id": m.recipe_id,
                    "elapsed_h": float(k + 1) * getattr(model, "step_h", 1.0),
                    "t2": t2_k,
                    "t2_limit": t2_l,
                    "spe": spe_k,
                    "spe_limit": spe_l,
                    "chg": chg_k,
                    "chg_limit": chg_l,
                    "drf": drf_k,
                    "drf_limit": drf_l,
                    "level_alarm": level_alarm,
                    "change_alarm": chg_alarm,
                    "alarm": (chg_alarm or lvl_union) if on_change else level_alarm,
                    "alarm_ratio": alarm_ratio,
                    "alarm_by": alarm_by,
                    "top_contributors": top,
                    "_t2_contrib": _contrib_json(m.tags, s_t2[k]) if t2_k is not None else None,
                    "_spe_contrib": _contrib_json(m.tags, s_spe[k]) if spe_k is not None else None,
                    "_chg_contrib": _contrib_json(m.tags, s_chg[k]) if chg_k is not None else None,
                    "_drf_contrib": _contrib_json(m.tags, s_drf[k]) if drf_k is not None else None,
                }
            )
    schema = {
        "batch_id": pl.String,
        "unit_id": pl.String,
        "recipe_id": pl.String,
        "elapsed_h": pl.Float64,
        "t2": pl.Float64,
        "t2_limit": pl.Float64,
        "spe": pl.Float64,
        "spe_limit": pl.Float64,
        "chg": pl.Float64,
        "chg_limit": pl.Float64,
        "drf": pl.Float64,
        "drf_limit": pl.Float64,
        "level_alarm": pl.Boolean,
        "change_alarm": pl.Boolean,
        "alarm": pl.Boolean,
        "alarm_ratio": pl.Float64,
        "alarm_by": pl.String,
        "top_contributors": pl.String,
        "_t2_contrib": pl.String,
        "_spe_contrib": pl.String,
        "_chg_contrib": pl.String,
        "_drf_contrib": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).with_columns(
        model_name=pl.lit(model_name),
        model_version=pl.lit(str(model_version)),
        scored_at=pl.lit(now, pl.Datetime("us", "UTC")),
    )


def rescore(monitored: pl.DataFrame, model: MSPCModel) -> pl.DataFrame:
    """``monitor`` rows of a model with the same fit re-alarmed under ``model``'s statistic
    and factor (e.g. after ``with_threshold``): ``level_alarm``, ``change_alarm`` and
    ``alarm`` recomputed from the stored statistics and limits, as ``monitor`` sets them."""
    f = model.factor()

    def over(stat: str, fac: float = f) -> pl.Expr:
        v, lim = pl.col(stat), pl.col(f"{stat}_limit")
        return (v.is_not_null() & lim.is_not_null() & (lim != 0) & (v / lim > fac)).fill_null(False)

    # ``drf_limit`` is the drift's fitted limit: its raw alarms need factor / drift weight
    drift = over("drf", model.drift_factor()) if "drf" in monitored.columns else pl.lit(False)
    out = monitored.with_columns(
        level_alarm=over("t2") | over("spe"),
        change_alarm=over("chg") | drift,
    )
    lf = model.level_factor()
    if lf is not None:  # the level statistic in the change alarm, at its own factor
        union = over("t2", lf) | over("spe", lf)
        return out.with_columns(alarm=pl.col("change_alarm") | union)
    return out.with_columns(
        alarm=pl.col("change_alarm") if model.stat() == "change" else pl.col("level_alarm")
    )


def scores_table(monitored: pl.DataFrame) -> pl.DataFrame:
    """``monitor`` output without the hidden columns: the ``gold/mspc_scores`` rows."""
    return monitored.select([c for c in monitored.columns if not c.startswith("_")])


def alarms(
    monitored: pl.DataFrame,
    statistic: str = "level",
    factor: float = 1.0,
    level_factor: float | None = None,
    drift_factor: float | None = None,
) -> pl.DataFrame:
    """Rows of ``gold/mspc_alarms``: one per statistic beyond its limit, with the full
    per-tag contribution shares of that statistic as JSON. ``statistic`` (the model's
    ``stat()``): ``"level"`` gives T² and SPE rows, ``"change"`` the change rows; beyond =
    over ``factor`` (the model's ``factor()``) times the limit, as ``alarm``."""
    for c in ("_t2_contrib", "_spe_contrib"):
        if c not in monitored.columns:
            raise MSPCInputError(f"alarms() needs the monitor() output (missing {c!r})")
    keys = ["batch_id", "unit_id", "elapsed_h", "model_version"]

    def beyond(stat: str, fac: float = factor) -> pl.Expr:
        # polars orders NaN above +inf, so NaN > inf is true there: require finite values
        v, lim = pl.col(stat), pl.col(f"{stat}_limit")
        return (v.is_finite() & lim.is_finite() & (v > fac * lim)).fill_null(False)

    t2 = monitored.filter(beyond("t2")).select(
        *keys,
        statistic=pl.lit("t2"),
        value=pl.col("t2"),
        limit=pl.col("t2_limit"),
        contributions=pl.col("_t2_contrib"),
    )
    spe = monitored.filter(beyond("spe")).select(
        *keys,
        statistic=pl.lit("spe"),
        value=pl.col("spe"),
        limit=pl.col("spe_limit"),
        contributions=pl.col("_spe_contrib"),
    )
    if statistic == "change":
        if "_chg_contrib" not in monitored.columns:
            raise MSPCInputError("alarms(statistic='change') needs the monitor() output")
        chg = monitored.filter(beyond("chg")).select(
            *keys,
            statistic=pl.lit("change"),
            value=pl.col("chg"),
            limit=pl.col("chg_limit"),
            contributions=pl.col("_chg_contrib"),
        )
        if "_drf_contrib" in monitored.columns:  # the drift term, at its own factor
            drf = monitored.filter(
                beyond("drf", factor if drift_factor is None else drift_factor)
            ).select(
                *keys,
                statistic=pl.lit("drift"),
                value=pl.col("drf"),
                limit=pl.col("drf_limit"),
                contributions=pl.col("_drf_contrib"),
            )
            chg = pl.concat([chg, drf])
        if level_factor is not None:  # the level statistic in the change alarm (its factor)
            chg = pl.concat(
                [
                    chg,
                    monitored.filter(beyond("t2", level_factor)).select(
                        *keys,
                        statistic=pl.lit("t2"),
                        value=pl.col("t2"),
                        limit=pl.col("t2_limit"),
                        contributions=pl.col("_t2_contrib"),
                    ),
                    monitored.filter(beyond("spe", level_factor)).select(
                        *keys,
                        statistic=pl.lit("spe"),
                        value=pl.col("spe"),
                        limit=pl.col("spe_limit"),
                        contributions=pl.col("_spe_contrib"),
                    ),
                ]
            )
        return chg.sort("batch_id", "elapsed_h", "statistic")
    return pl.concat([t2, spe]).sort("batch_id", "elapsed_h", "statistic")


# ----------------------------------------------------------------------------- evaluation


def _confirmed(alarm: pl.Expr, consecutive: int) -> pl.Expr:
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
    consecutive: int = 3,
    grace_h: float = 6.0,
) -> pl.DataFrame:
    """One row per fault label of a monitored batch: detected? (a confirmed alarm, i.e. the
    hour completing ``consecutive`` alarmed hours in a row, of an alarm run that STARTED
    after onset, no later than the fault end + ``grace_h``; faults that end the batch have
    no end), and the delay from onset. An alarm run already going on at onset (another
    fault) does not count as detecting the new one."""
    s = _with_ts(scores, batches, consecutive)
    fl = fault_labels.filter(pl.col("batch_id").is_in(s["batch_id"].unique().to_list())).select(
        "fault_id", "fault_type", "batch_id", "onset_ts", "end_ts"
    )
    j = fl.join(
        s.select("batch_id", "hour_end_ts", "run_start_ts", "confirmed"), on="batch_id", how="left"
    )
    limit = pl.col("end_ts") + pl.duration(hours=grace_h)
    inside = (
        pl.col("confirmed")
        & (pl.col("run_start_ts") > pl.col("onset_ts"))
        & (pl.col("end_ts").is_null() | (pl.col("hour_end_ts") <= limit))
    )
    return (
        j.group_by("fault_id")
        .agg(
            pl.col("fault_type").first(),
            pl.col("batch_id").first(),
            pl.col("onset_ts").first(),
            first_alarm_ts=pl.col("hour_end_ts").filter(inside).min(),
            n_hours_after_onset=(pl.col("hour_end_ts") > pl.col("onset_ts")).sum(),
        )
        .with_columns(
            detected=pl.col("first_alarm_ts").is_not_null(),
            delay_h=(pl.col("first_alarm_ts") - pl.col("onset_ts")).dt.total_microseconds() / 3.6e9,
        )
        .sort("fault_id")
    )


def _with_ts(scores: pl.DataFrame, batches: pl.DataFrame, consecutive: int) -> pl.DataFrame:
    for c in ("batch_id", "elapsed_h", "alarm"):
        if c not in scores.columns:
            raise MSPCInputError(f"scores lack column {c!r}; pass monitor() output")
    return (
        scores.select("batch_id", "elapsed_h", "alarm")
        .join(batches.select("batch_id", "start_ts"), on="batch_id", how="left")
        .sort("batch_id", "elapsed_h")
        .with_columns(
            hour_end_ts=pl.col("start_ts")
            + pl.duration(seconds=(pl.col("elapsed_h") * 3600).cast(pl.Int64)),
            confirmed=_confirmed(pl.col("alarm"), consecutive),
            _new=pl.col("alarm") & ~pl.col("alarm").shift(1).over("batch_id").fill_null(False),
        )
        .with_columns(_run=pl.col("_new").cast(pl.Int32).cum_sum().over("batch_id"))
        .with_columns(run_start_ts=pl.col("hour_end_ts").first().over("batch_id", "_run"))
        .drop("_new", "_run")
    )


def evaluate(
    scores: pl.DataFrame,
    fault_labels: pl.DataFrame,
    batches: pl.DataFrame,
    consecutive: int = 3,
    grace_h: float = 6.0,
) -> dict[str, float]:
    """Figures from stored scores of held-out batches against the ground-truth labels.

    - ``detection_rate`` (all faults) and ``detection_rate.<fault_type>``, with
      ``median_delay_h``; a fault counts only if its batch was monitored after onset.
    - ``hour_false_alarm_rate``: share of raw alarmed hours on fault-free batches;
      ``batch_false_alarm_share``: share of fault-free batches with any confirmed alarm;
      ``false_alarms_before_onset``: confirmed alarm hours before the first onset in
      faulted batches.
    """
    det = detection_table(scores, fault_labels, batches, consecutive, grace_h).filter(
        pl.col("n_hours_after_onset") > 0
    )
    s = _with_ts(scores, batches, consecutive)
    faulted = fault_labels.filter(pl.col("batch_id").is_not_null())
    clean = s.filter(~pl.col("batch_id").is_in(faulted["batch_id"].unique().to_list()))
    per_clean = clean.group_by("batch_id").agg(pl.col("confirmed").any())
    first_onset = faulted.group_by("batch_id").agg(first_onset=pl.col("onset_ts").min())
    pre = s.join(first_onset, on="batch_id").filter(pl.col("hour_end_ts") <= pl.col("first_onset"))
    out: dict[str, float] = {
        "consecutive": float(consecutive),
        "n_faults": float(det.height),
        "n_detected": float(det["detected"].sum()),
        "detection_rate": float(det["detected"].mean()) if det.height else float("nan"),  # type: ignore[arg-type]
        "median_delay_h": float(det.filter(pl.col("detected"))["delay_h"].median() or np.nan),  # type: ignore[arg-type]
        "n_clean_batches": float(per_clean.height),
        "n_clean_hours": float(clean.height),
        "hour_false_alarm_rate": float(clean["alarm"].mean()) if clean.height else float("nan"),  # type: ignore[arg-type]
        "batch_false_alarm_share": (
            float(per_clean["confirmed"].mean()) if per_clean.height else float("nan")  # type: ignore[arg-type]
        ),
        "false_alarms_before_onset": float(pre["confirmed"].sum()),
    }
    for ft in sorted(set(det["fault_type"].to_list())):
        d = det.filter(pl.col("fault_type") == ft)
        out[f"detection_rate.{ft}"] = float(d["detected"].mean())  # type: ignore[arg-type]
        out[f"n_faults.{ft}"] = float(d.height)
    return out
