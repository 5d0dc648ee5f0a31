"""(b) Batch-hour features: one row per batch per elapsed hour."""

from __future__ import annotations

import polars as pl

from .tags import CPP_TAGS, LAST_TAGS, PROCESS_TAGS


def batch_hour_features(hourly: pl.DataFrame) -> pl.DataFrame:
    """One row per batch per elapsed hour: CPP means/std, OUR, CER, RQ, ``q_o2``,
    cumulative feed, volume, base and capacitance (last), stamped at the end of the hour."""
    keep = [
        "batch_id",
        "unit_id",
        "elapsed_h",
        "hour_ts",
        "phase",
        "n_readings",
        *[f"{t}_mean" for t in PROCESS_TAGS],
        *[f"{t}_std" for t in CPP_TAGS],
        "our_mmol_l_h_mean",
        "cer_mmol_l_h_mean",
        "rq_mean",
        "q_o2",
        "feed_l_hour",
        "cum_feed_l",
        *[f"{t}_last" for t in LAST_TAGS],
    ]
    return hourly.select(keep)
