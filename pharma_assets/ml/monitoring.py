"""Training of the two monitoring models (contamination detector, MSPC) with their
hold-out evaluation: what the Dagster assets in ``pharma_assets/defs/ml/monitoring.py`` call.

Both models are unsupervised (trained on clean / good history as the MES and LIMS record
it); the held-out batches are the latest by start. The champion/challenger gate uses the
ground-truth detection figure when fault labels are given, otherwise the alarm rate on
held-out batches the plant itself calls clean/good (lower is better), and says so.

Plain Python: the feature rows come through callables (``rows_of(batch_ids)``), so the
caller decides where they are read from. Nothing here imports Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from . import alarm_rules, contamination, mspc, registry

RowsOf = Callable[[list[str]], pl.DataFrame]


@dataclass
class MonitoringTraining:
    """A trained monitoring model ready for registration: ``evaluate(model)`` re-computes
    the hold-out metrics for any model (the champion too, for the gate)."""

    trained: registry.TrainedModel
    evaluate: Callable[[Any], dict[str, float]]
    n_heldout_batches: int
    cutoff: datetime


def scored_batches(batches: pl.DataFrame, cutoff: datetime) -> list[str]:
    """Held-out batches (started at/after the cutoff) and every running batch."""
    f = (pl.col("start_ts") >= cutoff) | (pl.col("status") == "running")
    return sorted(batches.filter(f)["batch_id"].to_list())


def _heldout(batches: pl.DataFrame, cutoff: datetime) -> list[str]:
    return sorted(batches.filter(pl.col("start_ts") >= cutoff)["batch_id"].to_list())


def train_contamination(
    batches: pl.DataFrame,
    windows_of: RowsOf,
    labels: pl.DataFrame | None,
    data_versions: dict[str, int | None],
    seed: int = 42,
) -> MonitoringTraining:
    """Isolation forest on the 5-minute windows of clean batches (MES: completed and
    harvested) started before the hold-out cutoff; evaluated on the held-out windows."""
    cutoff, n_hold = contamination.split_by_start(batches)
    train_ids = contamination.clean_training_batches(batches, before=cutoff)
    model = contamination.train(windows_of(train_ids), seed=seed)
    hold = _heldout(batches, cutoff)
    hold_feats = windows_of(hold)
    clean_hold = set(
        contamination.clean_training_batches(batches.filter(pl.col("start_ts") >= cutoff))
    )

    def evaluate(m: Any) -> dict[str, float]:
        sc = contamination.score(m, hold_feats)
        out: dict[str, float] = {}
        if labels is not None:
            out.update(contamination.evaluate(sc, labels, batches))
            out.update(alarm_rules.contamination_figures(m, sc, labels, batches))
        mes_clean = sc.filter(pl.col("batch_id").is_in(sorted(clean_hold)))
        out["window_alarm_rate_mes_clean"] = (
            float(mes_clean["alarm"].mean()) if mes_clean.height else float("nan")  # type: ignore[arg-type]
        )
        return out

    metrics = {**model.train_summary(), **evaluate(model)}
    gate, higher = (
        ("detection_share", True) if labels is not None else ("window_alarm_rate_mes_clean", False)
    )
    trained = registry.TrainedModel(
        name=contamination.MODEL_NAME,
        model=model,
        params=model.params(),
        features=list(model.features),
        data_versions=data_versions,
        metrics=metrics,
        gate_metric=gate,
        higher_is_better=higher,
        evaluation_set=f"holdout: windows of batches started on/after {cutoff:%Y-%m-%d %H:%M} "
        f"UTC (n={len(hold)} batches, {hold_feats.height} windows)",
        n_eval=hold_feats.height,
        targets={"window_fpr_clean": 0.01},
        # contaminated held-out batches (ground truth), at least one of them detected
        minimum=registry.Minimum(
            "detector", positives_metric="n_contaminated", floors={"detection_share": 0.0}
        ),
    )
    return MonitoringTraining(trained, evaluate, n_hold, cutoff)


def train_mspc(
    batches: pl.DataFrame,
    summary: pl.DataFrame,
    hourly_of: RowsOf,
    labels: pl.DataFrame | None,
    data_versions: dict[str, int | None],
    reference: list[str] | None = None,
) -> MonitoringTraining:
    """Evolving multiway PCA per recipe on good batches started before the hold-out cutoff:
    the ``reference`` batches a process engineer gives, else complete and right first time;
    on every tag the site has data for (the class's and its own). Detection and false-alarm
    rates on held-out batches; without ground truth, the gate's minimum is the plant's own
    evidence (a held-out completed batch it does not call good raised an alarm)."""
    cutoff, n_hold = contamination.split_by_start(batches)
    if reference:  # the process engineer's reference batches
        ref = set(reference)
        good = sorted(
            summary.filter(pl.col("batch_id").is_in(sorted(ref)) & (pl.col("start_ts") < cutoff))[
                "batch_id"
            ].to_list()
        )
        if len(good) < 5:  # too few before the holdout: all the reference batches
            good = sorted(ref & set(summary["batch_id"].to_list()))
    else:
        good = mspc.good_batches(summary, before=cutoff)
    train_hourly = hourly_of(good)
    tags = [
        c
        for c in train_hourly.columns
        if c not in ("batch_id", "unit_id", "hour", "start", "step_min")
        and train_hourly[c].is_not_null().any()
    ]
    model = mspc.train(train_hourly, batches, good, tags=tags, **mspc.MONITORING_FIT)
    hold = _heldout(batches, cutoff)
    hold_hourly = hourly_of(hold)
    good_hold = set(
        summary.filter(
            (pl.col("start_ts") >= cutoff)
            & (pl.col("status") == "complete")
            & (
                pl.col("batch_id").is_in(sorted(reference))
                if reference
                else pl.col("right_first_time").fill_null(False)
            )
        )["batch_id"].to_list()
    )
    done_hold = set(
        batches.filter((pl.col("start_ts") >= cutoff) & (pl.col("status") == "complete"))[
            "batch_id"
        ].to_list()
    )
    not_good_hold = done_hold - good_hold

    def evaluate(m: Any) -> dict[str, float]:
        sc = mspc.monitor(m, hold_hourly, batches)
        out: dict[str, float] = {}
        if labels is not None:
            out.update(mspc.evaluate(sc, labels, batches))
            out.update(alarm_rules.mspc_figures(m, sc, labels, batches))
        g = sc.filter(pl.col("batch_id").is_in(sorted(good_hold)))
        out["hour_alarm_rate_good"] = float(g["alarm"].mean()) if g.height else float("nan")  # type: ignore[arg-type]
        # the plant's own evidence where no ground truth exists
        alarmed = set(sc.filter(pl.col("alarm").fill_null(False))["batch_id"].to_list())
        out["n_not_good"] = float(len(not_good_hold))
        out["batch_alarm_share_not_good"] = (
            len(alarmed & not_good_hold) / len(not_good_hold) if not_good_hold else float("nan")
        )
        out["batch_alarm_share_good"] = (
            len(alarmed & good_hold) / len(good_hold) if good_hold else float("nan")
        )
        return out

    metrics = {**model.train_summary(), **evaluate(model)}
    gate, higher = (
        ("detection_rate", True) if labels is not None else ("hour_alarm_rate_good", False)
    )
    trained = registry.TrainedModel(
        name=mspc.MODEL_NAME,
        model=model,
        params=model.params(),
        features=list(getattr(model, "tags", mspc.PROCESS_TAGS)),
        data_versions=data_versions,
        metrics=metrics,
        gate_metric=gate,
        higher_is_better=higher,
        evaluation_set=f"holdout: batches started on/after {cutoff:%Y-%m-%d %H:%M} UTC "
        f"(n={len(hold)})",
        n_eval=len(hold),
        # faulted held-out batches (ground truth), at least one of them detected; without
        # ground truth: held-out batches the plant does not call good, one of them alarmed
        minimum=registry.Minimum(
            "detector", positives_metric="n_faults", floors={"detection_rate": 0.0}
        )
        if labels is not None
        else registry.Minimum(
            "detector", positives_metric="n_not_good", floors={"batch_alarm_share_not_good": 0.0}
        ),
    )
    return MonitoringTraining(trained, evaluate, n_hold, cutoff)
