"""The hourly rollup of ``silver/batch_timeline`` (one row per batch per elapsed hour),
with OUR/CER/RQ from the off-gas balance."""

from __future__ import annotations

import polars as pl

from pharma_assets.process.gas import our_cer_columns

from .tags import (
    CONDITION_TAGS,
    CPP_TAGS,
    FEED_PUMP_MOTOR_TAGS,
    LAST_TAGS,
    PROCESS_TAGS,
    ROLLUP_TAGS,
)


def gas_rates(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add OUR, CER (mmol/L/h, :func:`pharma_assets.process.gas.our_cer`) and RQ per reading."""
    return lf.with_columns(**our_cer_columns(missing_flow_is_zero=True)).with_columns(
        rq=pl.when(pl.col("our_mmol_l_h").abs() > 1e-6).then(
            pl.col("cer_mmol_l_h") / pl.col("our_mmol_l_h")
        )
    )


def hourly_rollup(timeline: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Roll ``silver/batch_timeline`` up to one row per batch per elapsed hour.

    Row ``elapsed_h = k`` covers minutes ``[60(k-1), 60k)`` and is stamped ``hour_ts`` = the
    end of that hour, so it is known at ``hour_ts``. Per tag: mean; condition tags also max
    and std; volume, base and capacitance also the last value; feed volume delivered in the
    hour (L, from the sample spacing).
    """
    lf = timeline.lazy() if isinstance(timeline, pl.DataFrame) else timeline
    names = lf.collect_schema().names()
    tags = list(ROLLUP_TAGS)
    missing = [t for t in tags if t not in names]
    lf = lf.with_columns([pl.lit(None, pl.Float64).alias(t) for t in missing])
    lf = (
        lf.select("batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", *tags)
        .unique(subset=["batch_id", "elapsed_min"], keep="first")
        .sort("batch_id", "elapsed_min")
    )
    return rollup_minutes(lf)


#: timeline columns that are not tags
_KEYS = ("batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", "source_file")


def extra_tags(lf: pl.LazyFrame) -> list[str]:
    """Numeric columns of a minute frame that are neither keys nor ``ROLLUP_TAGS``."""
    schema = lf.collect_schema()
    return [
        c for c, t in schema.items() if c not in _KEYS and c not in ROLLUP_TAGS and t.is_numeric()
    ]


def rollup_minutes(lf: pl.LazyFrame) -> pl.DataFrame:
    """The hourly rollup of a timeline holding one row per (batch, elapsed minute), sorted
    by batch and minute, with every ``ROLLUP_TAGS`` column (the body of ``hourly_rollup``);
    any other numeric tag column (``extra_tags``) gets its hourly mean, max and std too."""
    extra = extra_tags(lf)
    lf = gas_rates(lf)
    dt_h = (
        (pl.col("elapsed_min").diff().over("batch_id") / 60.0)
        .fill_null(pl.col("elapsed_min").diff().over("batch_id").median() / 60.0)
        .fill_null(1.0 / 60.0)
        .clip(0.0, 1.0)
    )
    lf = lf.with_columns(
        hour_idx=(pl.col("elapsed_min") // 60).cast(pl.Int32),
        feed_l=pl.col("feed_rate_ml_h").fill_null(0.0) * dt_h / 1000.0,
    )
    feeding = pl.col("feed_rate_ml_h") > 0.0
    aggs: list[pl.Expr] = [
        pl.col("unit_id").first(),
        (
            pl.col("minute_ts").first()
            - pl.duration(minutes=pl.col("elapsed_min").first() % 60)
            + pl.duration(hours=1)
        ).alias("hour_ts"),
        pl.col("phase").last(),
        pl.len().alias("n_readings"),
        pl.col("feed_l").sum().alias("feed_l_hour"),
        # the feed pump's condition is only visible while it delivers: its current and
        # flow over the minutes it pumped (null in hours without feeding)
        feeding.sum().alias("feeding_readings"),
        pl.col("feed_pump_current_a").filter(feeding).mean().alias("feed_pump_current_feeding"),
        pl.col("feed_rate_ml_h").filter(feeding).mean().alias("feed_rate_feeding"),
        *[pl.col(t).filter(feeding).mean().alias(f"{t}_feeding") for t in FEED_PUMP_MOTOR_TAGS],
        *[pl.col(t).filter(feeding).std().alias(f"{t}_feeding_std") for t in FEED_PUMP_MOTOR_TAGS],
    ]
    for t in (*PROCESS_TAGS, "our_mmol_l_h", "cer_mmol_l_h", "rq"):
        aggs.append(pl.col(t).mean().alias(f"{t}_mean"))
    for t in CPP_TAGS:
        aggs.append(pl.col(t).std().alias(f"{t}_std"))
    for t in CONDITION_TAGS:
        aggs += [
            pl.col(t).mean().alias(f"{t}_mean"),
            pl.col(t).max().alias(f"{t}_max"),
            pl.col(t).std().alias(f"{t}_std"),
        ]
    # tags the bioreactor class does not know (another class's tags, a site's own): mean,
    # max and std, as the condition tags (what generic PdM reads for a declared item)
    for t in extra:
        aggs += [
            pl.col(t).mean().alias(f"{t}_mean"),
            pl.col(t).max().alias(f"{t}_max"),
            pl.col(t).std().alias(f"{t}_std"),
        ]
    for t in LAST_TAGS:
        aggs.append(pl.col(t).drop_nulls().last().alias(f"{t}_last"))
    out = (
        lf.group_by("batch_id", "hour_idx")
        .agg(aggs)
        .with_columns(elapsed_h=(pl.col("hour_idx") + 1).cast(pl.Float64))
        .drop("hour_idx")
        .sort("batch_id", "elapsed_h")
        .collect()
    )
    return out.with_columns(
        cum_feed_l=pl.col("feed_l_hour").cum_sum().over("batch_id"),
        q_o2=pl.when(pl.col("capacitance_pf_cm_mean") > 0.05).then(
            pl.col("our_mmol_l_h_mean") / pl.col("capacitance_pf_cm_mean")
        ),
        hour_ts=pl.col("hour_ts").dt.cast_time_unit("us"),
    )
