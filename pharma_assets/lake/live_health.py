"""Health of the live path: is silver keeping up with the running batches, and did the share
of quarantined readings jump?

Both answers come from silver's small per-file ledger (silver/telemetry_log: rows in, valid
and quarantined per landed file, with the wall-clock time silver processed it) and, for the
reasons, from silver/telemetry_quarantine restricted to the newest window. They are
incidents, not statistics: a live batch whose valid readings stopped arriving, or readings
quarantined as coming from the future, must stop someone (issue 17: 40,000 readings
quarantined as ts_in_future while every page still said "running").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from .silver import LAYER
from .storage import UTC_US, Lake

FUTURE_CHECK = "ts_in_future"


@dataclass(frozen=True)
class Freshness:
    passed: bool
    running_batches: int
    stale_batches: list[str]
    max_lag_s: float  # wall time since silver last accepted readings of a running batch
    max_reading_age_s: float  # wall time since the newest accepted reading's timestamp
    threshold_s: float
    without_telemetry: int  # running batches silver has no file of yet (not judged)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "running_batches": self.running_batches,
            "stale_batches": ", ".join(self.stale_batches) or "none",
            "max_lag_s": round(self.max_lag_s, 1),
            "max_reading_age_s": round(self.max_reading_age_s, 1),
            "threshold_s": self.threshold_s,
            "running_without_telemetry": self.without_telemetry,
        }


def telemetry_freshness(lake: Lake, max_lag_s: float, now: datetime | None = None) -> Freshness:
    """For every running batch: how long ago (wall clock) silver last accepted readings of it.

    Fails when that is longer than ``max_lag_s`` for any running batch that silver has
    files of: the pipeline stalled, or every new file is quarantined (the lag keeps
    growing either way). A batch without any processed file yet is counted, not judged.
    """
    now = now or datetime.now(UTC)
    batches = lake.read(LAYER, "batches", columns=["batch_id", "status"])
    running = (
        []
        if batches is None
        else batches.filter(pl.col("status") == "running")["batch_id"].to_list()
    )
    if not running:
        return Freshness(True, 0, [], 0.0, 0.0, max_lag_s, 0)
    log = lake.read(
        LAYER,
        "telemetry_log",
        columns=["batch_id", "rows_valid", "processed_at"],
        filter_expr=pl.col("batch_id").is_in(running),
    )
    stats = lake.read(
        LAYER,
        "telemetry_stats",
        columns=["batch_id", "last_ts"],
        filter_expr=pl.col("batch_id").is_in(running),
    )
    accepted = (
        pl.DataFrame(schema={"batch_id": pl.String(), "last_ok": UTC_US})
        if log is None
        else log.filter(pl.col("rows_valid") > 0)
        .group_by("batch_id")
        .agg(last_ok=pl.col("processed_at").max())
    )
    seen = set() if log is None else set(log["batch_id"].to_list())
    lags = {b: (now - t).total_seconds() for b, t in accepted.iter_rows()}
    # a batch with files but none accepted: lagging since its first file was processed
    for b in seen - set(lags):
        assert log is not None
        first = log.filter(pl.col("batch_id") == b)["processed_at"].min()
        assert isinstance(first, datetime)
        lags[b] = (now - first).total_seconds()
    newest = None if stats is None or stats.height == 0 else stats["last_ts"].max()
    age = (now - newest).total_seconds() if isinstance(newest, datetime) else 0.0
    stale = sorted(b for b, lag in lags.items() if lag > max_lag_s)
    return Freshness(
        passed=not stale,
        running_batches=len(running),
        stale_batches=stale,
        max_lag_s=max(lags.values(), default=0.0),
        max_reading_age_s=age,
        threshold_s=max_lag_s,
        without_telemetry=len(set(running) - seen),
    )


@dataclass(frozen=True)
class QuarantineAlarm:
    passed: bool
    window_min: float
    window_rows: int
    window_quarantined: int
    window_share: float
    baseline_share: float
    ts_in_future_rows: int
    limit_share: float
    reasons: dict[str, int]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "window_min": self.window_min,
            "window_rows": self.window_rows,
            "window_quarantined": self.window_quarantined,
            "window_share": round(self.window_share, 5),
            "baseline_share": round(self.baseline_share, 5),
            "limit_share": round(self.limit_share, 5),
            "ts_in_future_rows": self.ts_in_future_rows,
            "reasons": ", ".join(f"{k}: {v}" for k, v in self.reasons.items()) or "none",
        }


def quarantine_alarm(
    lake: Lake,
    window_min: float = 10.0,
    floor_share: float = 0.05,
    factor: float = 3.0,
    now: datetime | None = None,
) -> QuarantineAlarm:
    """The quarantined share of the readings silver processed in the last ``window_min``
    minutes against the share before (the baseline). Fails when any reading of the window
    was quarantined as coming from the future, or when the window's share exceeds
    max(``floor_share``, ``factor`` x baseline)."""
    now = now or datetime.now(UTC)
    since = now - timedelta(minutes=window_min)
    log = lake.read(LAYER, "telemetry_log", columns=["rows_in", "rows_quarantined", "processed_at"])
    if log is None:
        return QuarantineAlarm(True, window_min, 0, 0, 0.0, 0.0, 0, floor_share, {})
    recent = pl.col("processed_at") >= pl.lit(since, UTC_US)
    sums = log.group_by(recent.alias("recent")).agg(
        rows=pl.col("rows_in").sum(), q=pl.col("rows_quarantined").sum()
    )
    by = {r["recent"]: (int(r["rows"]), int(r["q"])) for r in sums.iter_rows(named=True)}
    w_rows, w_q = by.get(True, (0, 0))
    b_rows, b_q = by.get(False, (0, 0))
    base = b_q / b_rows if b_rows else 0.0
    share = w_q / w_rows if w_rows else 0.0
    reasons: dict[str, int] = {}
    if w_q:
        qt = lake.read(
            LAYER,
            "telemetry_quarantine",
            columns=["failed_check", "processed_at"],
            filter_expr=pl.col("processed_at") >= pl.lit(since, UTC_US),
        )
        if qt is not None:
            counts = qt.group_by("failed_check").len().sort("len", descending=True)
            reasons = {str(k): int(v) for k, v in counts.iter_rows()}
    future = reasons.get(FUTURE_CHECK, 0)
    limit = max(floor_share, factor * base)
    return QuarantineAlarm(
        passed=future == 0 and share <= limit,
        window_min=window_min,
        window_rows=w_rows,
        window_quarantined=w_q,
        window_share=share,
        baseline_share=base,
        ts_in_future_rows=future,
        limit_share=limit,
        reasons=reasons,
    )
