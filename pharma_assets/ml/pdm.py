"""Predictive maintenance: "will this critical equipment item fail within the next 72 h?".

One random forest per equipment type, trained on the equipment x hour feature table
(:func:`features.equipment_hour_features`). The types are the unit class's equipment items
(``equipment_types``: id suffix -> type); the bioreactor's agitator motor AGT and feed pump
FP are the default configuration, and any other declared item (a dryer's vacuum pump) goes
through the same labels, split, threshold rule and metrics. The target comes
from the CMMS (``failure`` work orders in ``silver/maintenance_events``), which a real plant
has; the simulator's fault labels are used only for a second, independent evaluation.

Honest evaluation:

* Time split: rows with ``hour_ts`` before the cutoff train, later rows evaluate. Training
  rows whose 72 h label window reaches past the cutoff are dropped (their label was not
  known at training time).
* The decision threshold is chosen on the training period only, from out-of-fold
  probabilities (folds grouped by batch): the highest threshold that still catches
  ``target_recall`` of the training failures, unless that alarms on more than 2 % of the
  equipment-days (the false-alarm target); then the lowest threshold within that budget.
* Event metrics: a failure is caught if an alarm fired in the 72 h before it; recall is
  over all failures in the evaluation period (also those with no run time before them).
  The false-alarm rate is the share of equipment-days (days with run time) that carry an
  alarm not followed by a failure within 72 h. Lead time = failure time - first alarm of
  the 72 h window.
* Rows while the item is down (a failure newer than the last repair) are excluded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ..twin import plant as twin_plant
from .features import EQUIPMENT_FEATURES, EQUIPMENT_TYPES, HEALTH_FEATURES
from .registry import Minimum, TrainedModel

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier

log = logging.getLogger(__name__)

MODEL_NAME = "pharma_pdm_failure_72h"
HORIZON_H = 72.0
TARGET_RECALL = 0.95
# cap on alarmed equipment-days (training period) when choosing the threshold: the
# false-alarm target of issue 14 (<= 2 % of equipment-days), applied to the training period
MAX_FALSE_ALARM_RATE = 0.02
#: model inputs: condition statistics and trends, maintenance history, health residuals
PDM_FEATURES = [*EQUIPMENT_FEATURES, *HEALTH_FEATURES]
GT_FAULT_TYPES = {"agitator_motor": "agitator_failure", "feed_pump": "feed_pump_failure"}
#: ground-truth failure ``detail`` -> failure mode (the twin's modes, docs/process_model.md
#: "Motor failure modes and P-F intervals"). The CMMS does not record the mode reliably
#: (a trip and a motor failure both stop the item), so the modes are used for evaluation
#: only, never as a feature or label.
FAILURE_MODES = {
    twin_plant.AGT_BEARING: "agitator_bearing_defect",
    twin_plant.AGT_WINDING: "agitator_winding_insulation",
    twin_plant.AGT_WINDING_FAST: "agitator_winding_turn_short",
    twin_plant.AGT_TRIP: "agitator_sudden_trip",
    twin_plant.FP_HEAD: "feed_pump_head_wear_out",
    twin_plant.FP_BEARING: "feed_pump_motor_bearing_defect",
    twin_plant.FP_WINDING: "feed_pump_motor_winding_insulation",
    twin_plant.FP_WINDING_FAST: "feed_pump_motor_turn_short",
    twin_plant.FP_TRIP: "feed_pump_sudden_trip",
}
#: modes whose P-F interval is at least the 72 h horizon (1st percentile of the twin's
#: lognormal P-F, or a wear-out visible over the part's whole life): the ones a 72 h
#: prediction can be asked to catch; the recall target applies to these
PREDICTABLE_MODES = (
    "agitator_bearing_defect",
    "agitator_winding_insulation",
    "feed_pump_head_wear_out",
    "feed_pump_motor_bearing_defect",
    "feed_pump_motor_winding_insulation",
)
#: P-F shorter than the horizon (a turn-to-turn short burns through in hours) or none
#: (sudden trips: supply interruption, interlock): reported, not targeted
SHORT_PF_MODES = ("agitator_winding_turn_short", "feed_pump_motor_turn_short")
SUDDEN_MODES = ("agitator_sudden_trip", "feed_pump_sudden_trip")


@dataclass
class PdmModel:
    """Per equipment type: a fitted forest and its decision threshold."""

    forests: dict[str, RandomForestClassifier]
    thresholds: dict[str, float]
    features: list[str]
    base_rates: dict[str, float] = field(default_factory=dict)

    def predict_proba(self, eq: pl.DataFrame) -> np.ndarray:
        """Failure-within-72-h probability per row of an equipment-hour feature frame."""
        out = np.full(eq.height, np.nan)
        types = eq["equipment_type"].to_numpy()
        for etype, rf in self.forests.items():
            mask = types == etype
            if mask.any():
                x = _matrix(eq.filter(pl.Series(mask)), self.features)
                out[mask] = _proba(rf, x)
        for etype, rate in self.base_rates.items():  # a type seen without any failure
            if etype not in self.forests:
                out[types == etype] = rate
        return out

    def threshold_for(self, eq: pl.DataFrame) -> np.ndarray:
        types = eq["equipment_type"].to_numpy()
        return np.array([self.thresholds.get(t, 1.0) for t in types], dtype=float)


def _proba(rf: RandomForestClassifier, x: np.ndarray) -> np.ndarray:
    p = rf.predict_proba(x)
    classes = list(rf.classes_)
    return p[:, classes.index(1)] if 1 in classes else np.zeros(len(x))


def _matrix(df: pl.DataFrame, features: list[str]) -> np.ndarray:
    missing = [f for f in features if f not in df.columns]
    if missing:
        df = df.with_columns([pl.lit(None, pl.Float64).alias(m) for m in missing])
    return df.select([pl.col(f).cast(pl.Float64).fill_nan(None) for f in features]).to_numpy()


def failure_events(
    maintenance: pl.DataFrame, equipment_types: dict[str, str] | None = None
) -> pl.DataFrame:
    """CMMS failures of the items PdM scores: equipment_id, equipment_type, failure_ts.
    ``equipment_types``: id suffix -> type (the unit class's items; default the
    bioreactor's AGT and FP)."""
    types = EQUIPMENT_TYPES if equipment_types is None else equipment_types
    m = (
        maintenance.filter(pl.col("valid").fill_null(True))
        if "valid" in maintenance
        else maintenance
    )
    suffix = pl.col("equipment_id").str.split("-").list.last()
    return (
        m.filter((pl.col("event_type") == "failure") & suffix.is_in(list(types)))
        .select(
            "equipment_id",
            suffix.replace_strict(types, return_dtype=pl.String).alias("equipment_type"),
            pl.col("event_ts").alias("failure_ts"),
        )
        .unique()
        .sort("equipment_id", "failure_ts")
    )


def ground_truth_failures(ground_truth_dir: Path) -> pl.DataFrame | None:
    """Agitator and feed-pump failures from the simulator's fault labels, or None; with
    their ``failure_mode`` (``FAILURE_MODES``; an unknown detail is kept as it is)."""
    path = Path(ground_truth_dir) / "fault_labels.parquet"
    if not path.exists():
        return None
    fl = pl.read_parquet(path)
    inv = {v: k for k, v in GT_FAULT_TYPES.items()}
    return (
        fl.filter(pl.col("fault_type").is_in(list(inv)))
        .select(
            "equipment_id",
            pl.col("fault_type").replace_strict(inv).alias("equipment_type"),
            pl.col("onset_ts").cast(pl.Datetime("us", "UTC")).alias("failure_ts"),
            pl.col("detail").replace(FAILURE_MODES).alias("failure_mode"),
        )
        .sort("equipment_id", "failure_ts")
    )


def label_rows(eq: pl.DataFrame, failures: pl.DataFrame) -> pl.DataFrame:
    """Add ``next_failure_ts``, ``hours_to_failure`` and ``label`` (failure within 72 h)."""
    nxt = failures.select("equipment_id", pl.col("failure_ts").alias("next_failure_ts")).sort(
        "equipment_id", "next_failure_ts"
    )
    out = eq.sort("equipment_id", "hour_ts").join_asof(
        nxt,
        left_on="hour_ts",
        right_on="next_failure_ts",
        by="equipment_id",
        strategy="forward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    hours = (pl.col("next_failure_ts") - pl.col("hour_ts")).dt.total_microseconds() / 3.6e9
    return out.with_columns(hours_to_failure=hours).with_columns(
        label=(pl.col("hours_to_failure") <= HORIZON_H).fill_null(False).cast(pl.Int8)
    )


# --------------------------------------------------------------------------- metrics


def failure_outcomes(
    scored: pl.DataFrame, failures: pl.DataFrame, start: datetime, end: datetime
) -> pl.DataFrame:
    """One row per failure in (start, end] (all columns of ``failures``) with ``caught``
    (an alarm in the 72 h before it) and ``lead_h`` (failure time - first such alarm)."""
    f = failures.filter((pl.col("failure_ts") > start) & (pl.col("failure_ts") <= end))
    alarms = scored.filter(pl.col("alarm")).select("equipment_id", "hour_ts")
    win = f.join(alarms, on="equipment_id", how="left").filter(
        (pl.col("hour_ts") < pl.col("failure_ts"))
        & (pl.col("hour_ts") >= pl.col("failure_ts") - timedelta(hours=HORIZON_H))
    )
    first = win.group_by("equipment_id", "failure_ts").agg(pl.col("hour_ts").min().alias("first"))
    return (
        f.join(first, on=["equipment_id", "failure_ts"], how="left")
        .with_columns(
            caught=pl.col("first").is_not_null(),
            lead_h=(pl.col("failure_ts") - pl.col("first")).dt.total_microseconds() / 3.6e9,
        )
        .drop("first")
    )


def mode_metrics(
    scored: pl.DataFrame, gt: pl.DataFrame, start: datetime, end: datetime
) -> dict[str, float]:
    """Recall per ground-truth failure mode (``gt_recall_<mode>``, ``gt_n_failures_<mode>``,
    ``gt_median_lead_time_h_<mode>``) and over the predictable (wear-out) modes together
    (``gt_recall_predictable``). Evaluation only: the modes are not in the CMMS."""
    ev = failure_outcomes(scored, gt, start, end)
    out: dict[str, float] = {}
    modes = sorted(set(FAILURE_MODES.values()) | set(ev["failure_mode"].to_list()))
    for mode in modes:
        sub = ev.filter(pl.col("failure_mode") == mode)
        leads = sub.filter(pl.col("caught"))["lead_h"].to_numpy()
        out[f"gt_n_failures_{mode}"] = float(sub.height)
        caught = sub["caught"].cast(pl.Float64).to_numpy()
        out[f"gt_n_caught_{mode}"] = float(caught.sum())
        out[f"gt_recall_{mode}"] = float(caught.mean()) if sub.height else float("nan")
        out[f"gt_median_lead_time_h_{mode}"] = (
            float(np.median(leads)) if len(leads) else float("nan")
        )
    groups = {
        "predictable": PREDICTABLE_MODES,
        "short_pf": SHORT_PF_MODES,
        "sudden": SUDDEN_MODES,
        "all": tuple(ev["failure_mode"].unique().to_list()),
    }
    for name, group in groups.items():
        sub = ev.filter(pl.col("failure_mode").is_in(list(group)))
        caught = sub["caught"].cast(pl.Float64).to_numpy()
        leads = sub.filter(pl.col("caught"))["lead_h"].to_numpy()
        out[f"gt_n_failures_{name}"] = float(sub.height)
        out[f"gt_n_caught_{name}"] = float(caught.sum())
        out[f"gt_recall_{name}"] = float(caught.mean()) if sub.height else float("nan")
        out[f"gt_median_lead_time_h_{name}"] = (
            float(np.median(leads)) if len(leads) else float("nan")
        )
    return out


def event_metrics(
    scored: pl.DataFrame,
    failures: pl.DataFrame,
    start: datetime,
    end: datetime,
) -> dict[str, float]:
    """Failure-level recall, false alarms per equipment-day and lead time.

    ``scored``: rows with ``equipment_id, equipment_type, hour_ts, alarm`` in [start, end).
    ``failures``: ``equipment_id, equipment_type, failure_ts``; those in (start, end] count.
    """
    ev = failure_outcomes(scored, failures, start, end)
    # false alarms: alarm rows with no failure in the next 72 h
    nxt = failures.select("equipment_id", pl.col("failure_ts").alias("nf")).sort(
        "equipment_id", "nf"
    )
    sa = (
        scored.sort("equipment_id", "hour_ts")
        .join_asof(
            nxt,
            left_on="hour_ts",
            right_on="nf",
            by="equipment_id",
            strategy="forward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .with_columns(
            false_alarm=pl.col("alarm")
            & (
                pl.col("nf").is_null()
                | (pl.col("nf") - pl.col("hour_ts") > timedelta(hours=HORIZON_H))
            ),
            day=pl.col("hour_ts").dt.truncate("1d"),
        )
    )
    days = sa.group_by("equipment_id", "day").agg(pl.col("false_alarm").any())
    caught = ev["caught"].cast(pl.Float64).to_numpy()
    false_days = days["false_alarm"].cast(pl.Float64).to_numpy()
    leads = ev.filter(pl.col("caught"))["lead_h"].to_numpy()
    out: dict[str, float] = {
        "n_failures": float(ev.height),
        "n_caught": float(caught.sum()),
        "recall": float(caught.mean()) if ev.height else float("nan"),
        "equipment_days": float(days.height),
        "false_alarm_days": float(false_days.sum()),
        "false_alarm_rate_per_equipment_day": (
            float(false_days.mean()) if days.height else float("nan")
        ),
        "median_lead_time_h": (float(np.median(leads)) if len(leads) else float("nan")),
    }
    return out


def _false_alarm_rate(
    prob: np.ndarray, rows: pl.DataFrame, failures: pl.DataFrame, thr: float
) -> float:
    scored = rows.select("equipment_id", "equipment_type", "hour_ts").with_columns(
        alarm=pl.Series(prob >= thr)
    )
    start, end = rows["hour_ts"].min(), rows["hour_ts"].max()
    return event_metrics(scored, failures, start, end)[  # type: ignore[arg-type]
        "false_alarm_rate_per_equipment_day"
    ]


def _choose_threshold(
    prob: np.ndarray,
    rows: pl.DataFrame,
    failures: pl.DataFrame,
    target: float,
    max_false_alarm_rate: float,
) -> float:
    """Threshold from out-of-fold probabilities of the training period.

    The highest threshold whose failure recall reaches ``target``; if that threshold
    raises alarms on more than ``max_false_alarm_rate`` of the equipment-days, the lowest
    threshold that stays within that rate instead (a failure that gives no warning, such
    as a random pump-motor trip, cannot be caught without alarming most days).
    """
    start = rows["hour_ts"].min()
    end = rows["hour_ts"].max()
    f = failures.filter((pl.col("failure_ts") > start) & (pl.col("failure_ts") <= end))
    if f.height == 0:
        return 0.5
    # per failure: the best probability in its 72 h window
    scored = rows.select("equipment_id", "hour_ts").with_columns(p=pl.Series(prob))
    win = f.join(scored, on="equipment_id").filter(
        (pl.col("hour_ts") < pl.col("failure_ts"))
        & (pl.col("hour_ts") >= pl.col("failure_ts") - timedelta(hours=HORIZON_H))
    )
    best = (
        f.join(
            win.group_by("equipment_id", "failure_ts").agg(pl.col("p").max()),
            on=["equipment_id", "failure_ts"],
            how="left",
        )
        .with_columns(pl.col("p").fill_null(0.0))["p"]
        .to_numpy()
    )
    best = np.sort(best)[::-1]
    k = max(int(np.ceil(target * len(best))) - 1, 0)
    thr = max(float(best[k]), 1e-6)
    if _false_alarm_rate(prob, rows, failures, thr) <= max_false_alarm_rate:
        return thr
    candidates = sorted(
        {float(q) for q in np.quantile(prob, np.linspace(0.5, 1.0, 101))} | set(best.tolist())
    )
    for c in candidates:
        if c > thr and _false_alarm_rate(prob, rows, failures, c) <= max_false_alarm_rate:
            return max(c, 1e-6)
    return 1.0


# --------------------------------------------------------------------------- training


@dataclass
class PdmResult:
    trained: TrainedModel
    model: PdmModel
    predictions: pl.DataFrame  # evaluation rows: ids, label, probability, alarm
    score_fn: Any  # model -> gate metric on the same evaluation rows
    cutoff: datetime
    notes: list[str] = field(default_factory=list)


def time_cutoff(eq: pl.DataFrame, train_fraction: float) -> datetime:
    """The hour before which ``train_fraction`` of the equipment-hours lie."""
    ts = eq["hour_ts"].sort().to_list()
    out: datetime = ts[int(train_fraction * (len(ts) - 1))]
    return out


def train_pdm(
    eq: pl.DataFrame,
    maintenance: pl.DataFrame,
    data_versions: dict[str, int | None],
    ground_truth_dir: Path | None = None,
    train_fraction: float = 0.7,
    seed: int = 42,
    n_estimators: int = 150,
    shuffle_labels: bool = False,
    max_samples: int = 20_000,
    n_folds: int = 3,
    max_false_alarm_rate: float = MAX_FALSE_ALARM_RATE,
    features: list[str] | None = None,
    equipment_types: dict[str, str] | None = None,
    choose_thresholds: bool = True,
) -> PdmResult:
    """Fit, choose the thresholds on the training period, evaluate on the later period
    (``features``: the model inputs, default ``PDM_FEATURES``; ``equipment_types``: id
    suffix -> type of the items to learn, default the bioreactor's AGT and FP: one forest
    per type, the same labels, split and threshold rule for every type).
    ``choose_thresholds=False``: no out-of-fold forests, every threshold 0.5 (for studies
    that read only the ranking, e.g. the ROC AUC: the forests, their probabilities and the
    AUC are the same as with the thresholds chosen; the alarms and event metrics are not)."""
    etypes = EQUIPMENT_TYPES if equipment_types is None else equipment_types
    feats = list(PDM_FEATURES if features is None else features)
    if not 0.1 <= train_fraction <= 0.95:
        raise ValueError(f"train_fraction must be in [0.1, 0.95], got {train_fraction}")
    eq = eq.filter(pl.col("equipment_type").is_in(list(etypes.values())))
    if eq.height == 0:
        raise ValueError(
            f"no equipment-hour rows for the items {sorted(etypes)}: the lake holds no "
            "telemetry of their condition tags yet"
        )
    failures = failure_events(maintenance, etypes)
    # a fixed row order: the forest's bootstrap draws rows by position, so the same data in
    # another order (polars group_by does not keep one) would give another model
    rows = label_rows(eq.filter(~pl.col("failed_state")), failures).sort("equipment_id", "hour_ts")
    cutoff = time_cutoff(rows, train_fraction)
    train = rows.filter(pl.col("hour_ts") <= cutoff - timedelta(hours=HORIZON_H))
    test = rows.filter(pl.col("hour_ts") > cutoff)
    rng = np.random.default_rng(seed)
    if shuffle_labels:  # chance-level control: labels permuted within each equipment type
        parts = [
            g.with_columns(label=pl.Series(rng.permutation(g["label"].to_numpy())))
            for _, g in train.group_by("equipment_type", maintain_order=True)
        ]
        train = pl.concat(parts) if parts else train
    params = {
        "n_estimators": n_estimators,
        "max_samples_per_tree": max_samples,
        "threshold_folds": n_folds if choose_thresholds else 0,
        "min_samples_leaf": 10,
        "max_features": "sqrt",
        "class_weight": "balanced_subsample",
        "train_fraction": train_fraction,
        "horizon_h": HORIZON_H,
        "target_recall_for_threshold": TARGET_RECALL,
        "max_false_alarm_rate_for_threshold": max_false_alarm_rate,
        "seed": seed,
        "shuffle_labels": shuffle_labels,
    }
    from sklearn.ensemble import RandomForestClassifier  # lazy: the code location loads fast
    from sklearn.model_selection import GroupKFold

    forests: dict[str, RandomForestClassifier] = {}
    thresholds: dict[str, float] = {}
    base_rates: dict[str, float] = {}
    notes: list[str] = []
    for etype in dict.fromkeys(etypes.values()):
        tr = train.filter(pl.col("equipment_type") == etype)
        y = tr["label"].to_numpy()
        base_rates[etype] = float(y.mean()) if len(y) else 0.0
        if len(y) == 0 or y.sum() == 0 or y.sum() == len(y):
            n_fail = failures.filter(pl.col("equipment_type") == etype).height
            notes.append(
                f"{etype}: no failures in the training period ({n_fail} CMMS "
                f"failure{'' if n_fail == 1 else 's'} in all, {len(y)} training rows); "
                "base rate used"
            )
            thresholds[etype] = 1.0
            continue
        x = _matrix(tr, feats)
        n_rows = len(y)

        def make(n_rows: int = n_rows) -> RandomForestClassifier:
            # rows per tree capped: neighbouring hours are near-duplicates, so a bootstrap of
            # 20k rows loses little and keeps training linear in the plant's size
            return RandomForestClassifier(
                n_estimators=n_estimators,
                max_samples=min(max_samples, n_rows),
                min_samples_leaf=10,
                max_features="sqrt",
                class_weight="balanced_subsample",
                n_jobs=2,
                random_state=seed,
            )

        groups = tr["batch_id"].to_numpy()
        oof = np.zeros(len(y))
        n_groups = len(np.unique(groups))
        if not choose_thresholds:
            thresholds[etype] = 0.5
        elif n_groups >= 3:
            for a, b in GroupKFold(n_splits=min(n_folds, n_groups)).split(x, y, groups):
                m = make().fit(x[a], y[a])
                oof[b] = _proba(m, x[b])
            fail_type = failures.filter(pl.col("equipment_type") == etype)
            if shuffle_labels:  # failures consistent with the shuffled labels: none usable
                fail_type = fail_type.clear()
            thresholds[etype] = _choose_threshold(
                oof, tr, fail_type, TARGET_RECALL, max_false_alarm_rate
            )
        else:
            thresholds[etype] = 0.5
        forests[etype] = make().fit(x, y)
    model = PdmModel(forests, thresholds, feats, base_rates)

    prob = model.predict_proba(test) if test.height else np.array([])
    pred = (
        test.select("equipment_id", "unit_id", "equipment_type", "hour_ts", "batch_id", "label")
        .with_columns(
            probability=pl.Series(prob, dtype=pl.Float64),
            threshold=pl.Series(model.threshold_for(test), dtype=pl.Float64),
        )
        .with_columns(alarm=pl.col("probability") >= pl.col("threshold"))
    )
    end: datetime = max(rows["hour_ts"].to_list()) if rows.height else cutoff
    metrics = pdm_metrics(pred, failures, cutoff, end, list(dict.fromkeys(etypes.values())))
    params["eval_start"] = cutoff.isoformat()
    params["eval_end"] = end.isoformat()
    artifacts_extra: dict[str, pl.DataFrame] = {}
    if ground_truth_dir is None:
        notes.append("ground truth not evaluated: no ground-truth folder configured")
    else:
        gt = ground_truth_failures(ground_truth_dir)
        if gt is None:
            notes.append(
                f"ground truth not evaluated: {ground_truth_dir}/fault_labels.parquet absent"
            )
        else:
            g = event_metrics(pred, gt, cutoff, end)
            metrics["gt_recall_critical"] = g["recall"]
            metrics["gt_n_failures"] = g["n_failures"]
            metrics.update(mode_metrics(pred, gt, cutoff, end))
            artifacts_extra["ground_truth_failures"] = gt
    labels = pred["label"].to_numpy()

    types = pred["equipment_type"].to_numpy()

    def score(m: Any) -> float:
        return macro_auc(labels, m.predict_proba(test), types)

    n_eval = pred.height
    trained = TrainedModel(
        name=MODEL_NAME,
        model=model,
        params=params,
        features=feats,
        data_versions=dict(data_versions),
        metrics=metrics,
        gate_metric="roc_auc",
        higher_is_better=True,
        evaluation_set=(
            f"holdout: equipment-hours after {cutoff:%Y-%m-%d %H:%M} UTC "
            f"(last {1 - train_fraction:.0%} of run time; {int(metrics['n_failures'])} failures)"
        ),
        n_eval=n_eval,
        targets={"recall_critical": TARGET_RECALL},
        artifacts={"holdout_predictions": pred, "failures": failures, **artifacts_extra},
        # failures in the held-out run time (CMMS), and better than chance at ranking them
        minimum=Minimum("detector", positives_metric="n_failures", floors={"roc_auc": 0.5}),
    )
    return PdmResult(trained, model, pred, score, cutoff, notes)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = ~np.isnan(p)
    if len(np.unique(y[ok])) < 2:
        return float("nan")
    return float(roc_auc_score(y[ok], p[ok]))


def macro_auc(y: np.ndarray, p: np.ndarray, types: np.ndarray) -> float:
    """Mean over equipment types of the row-level ROC AUC (types without both classes in
    the evaluation rows are skipped): a pooled AUC would reward the type prior alone."""
    aucs = [_auc(y[types == t], p[types == t]) for t in np.unique(types)]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def pdm_metrics(
    pred: pl.DataFrame,
    failures: pl.DataFrame,
    start: datetime,
    end: datetime,
    equipment_types: list[str] | None = None,
) -> dict[str, float]:
    """Every reported PdM metric from the stored evaluation predictions (also used by tests
    to recompute them independently of training); per type of ``equipment_types``
    (default the bioreactor's) its recall, failures and false-alarm rate."""
    ev = event_metrics(pred, failures, start, end)
    y = pred["label"].to_numpy()
    p = pred["probability"].to_numpy()
    a = pred["alarm"].to_numpy()
    tp = float(((a == 1) & (y == 1)).sum())
    metrics = {
        "recall_critical": ev["recall"],
        "n_failures": ev["n_failures"],
        "n_caught": ev["n_caught"],
        "false_alarm_rate_per_equipment_day": ev["false_alarm_rate_per_equipment_day"],
        "false_alarm_days": ev["false_alarm_days"],
        "equipment_days": ev["equipment_days"],
        "median_lead_time_h": ev["median_lead_time_h"],
        "roc_auc": macro_auc(y, p, pred["equipment_type"].to_numpy()),
        "row_precision": float(tp / a.sum()) if a.sum() else float("nan"),
        "row_recall": float(tp / y.sum()) if y.sum() else float("nan"),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
    }
    for etype in EQUIPMENT_TYPES.values() if equipment_types is None else equipment_types:
        sub = pred.filter(pl.col("equipment_type") == etype)
        e = event_metrics(sub, failures.filter(pl.col("equipment_type") == etype), start, end)
        metrics[f"recall_{etype}"] = e["recall"]
        metrics[f"n_failures_{etype}"] = e["n_failures"]
        metrics[f"false_alarm_rate_{etype}"] = e["false_alarm_rate_per_equipment_day"]
    return metrics


def score_equipment(model: PdmModel, eq: pl.DataFrame) -> pl.DataFrame:
    """Health rows for gold/equipment_health (without the model/version/scored_at columns)."""
    p = model.predict_proba(eq)
    thr = model.threshold_for(eq)
    return (
        eq.select(
            "equipment_id",
            "unit_id",
            "equipment_type",
            "hour_ts",
            "batch_id",
            pl.col("hours_since_maintenance"),
        )
        .with_columns(
            failure_probability=pl.Series(p, dtype=pl.Float64),
            threshold=pl.Series(thr, dtype=pl.Float64),
        )
        .with_columns(
            health_score=100.0 * (1.0 - pl.col("failure_probability")),
            alarm=pl.col("failure_probability") >= pl.col("threshold"),
        )
    )
