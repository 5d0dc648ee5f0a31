"""Live contamination scoring: the newest 5-minute window of every running batch.

``gold/contamination_risk`` is rebuilt by the retraining job (every 50 batches) from the
feature tables; between retrainings a running batch needs its risk every few minutes.
``score_running`` reads only the tail of each running batch's minute timeline (the newest
complete window plus the baseline it is compared with), computes that window's features
with the same code as training (``contamination.window_features``, ``last_only``), scores
it with the champion model and appends the rows it has not scored yet to
``gold/contamination_live`` (one row per batch and window, a growing history). Its cost
depends on the number of running batches, not on the age of the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from pharma_assets.lake.storage import Lake

from . import contamination

LIVE_LAYER, LIVE_TABLE = "gold", "contamination_live"
WINDOW_MIN = 5
BASELINE_MIN = 120


@dataclass
class LiveScoringResult:
    running_batches: int
    windows_scored: int
    alarms: int
    skipped: str | None = None


def running_batch_ids(lake: Lake) -> list[str]:
    b = lake.read("silver", "batches", ["batch_id"], filter_expr=pl.col("status") == "running")
    return [] if b is None else sorted(b["batch_id"].to_list())


def timeline_tail(
    lake: Lake,
    batch_ids: list[str],
    window_min: int = WINDOW_MIN,
    baseline_min: int = BASELINE_MIN,
) -> pl.DataFrame:
    """The last ``baseline_min + 2 * window_min`` minutes of each batch's timeline: all the
    newest complete window's features depend on (its window and the trailing baseline)."""
    lf = lake.scan("silver", "batch_timeline")
    if lf is None or not batch_ids:
        return pl.DataFrame()
    cols = ["batch_id", "unit_id", "elapsed_min", "minute_ts", *contamination.INPUT_TAGS]
    mine = lf.filter(pl.col("batch_id").is_in(batch_ids))
    last = mine.group_by("batch_id").agg(last=pl.col("elapsed_min").max()).collect()
    if last.height == 0:
        return pl.DataFrame()
    tail = pl.col("elapsed_min") >= pl.col("last") - (baseline_min + 2 * window_min)
    return mine.join(last.lazy(), on="batch_id").filter(tail).select(cols).collect()


def score_running(
    lake: Lake,
    model: contamination.ContaminationModel,
    model_version: str,
    now: datetime | None = None,
) -> LiveScoringResult:
    """Score the newest complete window of every running batch (once per window)."""
    ids = running_batch_ids(lake)
    if not ids:
        return LiveScoringResult(0, 0, 0, "no running batch")
    tail = timeline_tail(lake, ids)
    if tail.height == 0:
        return LiveScoringResult(len(ids), 0, 0, "no timeline rows for the running batches")
    feats = contamination.window_features(tail, WINDOW_MIN, BASELINE_MIN, last_only=True)
    done = lake.read(
        LIVE_LAYER,
        LIVE_TABLE,
        ["batch_id", "window_end_ts"],
        filter_expr=pl.col("batch_id").is_in(ids),
    )
    if done is not None and done.height:
        feats = feats.join(done, on=["batch_id", "window_end_ts"], how="anti")
    if feats.height == 0:
        return LiveScoringResult(len(ids), 0, 0, "newest windows already scored")
    out = contamination.score(
        model, feats, model_version=model_version, scored_at=now or datetime.now(UTC)
    )
    lake.append(LIVE_LAYER, LIVE_TABLE, out)
    return LiveScoringResult(len(ids), out.height, int(out["alarm"].sum()))
