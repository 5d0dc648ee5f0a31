"""One pass over the minute-level ``silver/batch_timeline``: the hourly rollup, the
contamination windows and the MSPC hourly means together (:func:`timeline_products`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from pharma_assets.lake.storage import Lake

from .rollup import rollup_minutes
from .tags import ROLLUP_TAGS


@dataclass
class TimelineProducts:
    """Everything the ml group derives from the minute-level ``silver/batch_timeline``,
    computed in one pass: the hourly rollup (:func:`hourly_rollup`), the contamination
    detector's 5-minute windows (``contamination.window_features``) and the MSPC hourly
    means of complete hours (``mspc.hourly_means``). Each is row-for-row what its own
    function returns on the same timeline."""

    hourly: pl.DataFrame
    windows: pl.DataFrame
    mspc_hourly: pl.DataFrame
    n_batches: int = 0


def timeline_batch_ids(lake: Lake) -> list[str]:
    """Batch ids present in ``silver/batch_timeline`` (its partition column; no data read)."""
    tl = lake.scan("silver", "batch_timeline")
    if tl is None:
        raise FileNotFoundError(
            f"table silver/batch_timeline does not exist in lake {lake.root}; run the "
            "lakehouse pipeline first (pharma-twin pipeline)"
        )
    return sorted(tl.select(pl.col("batch_id").unique()).collect()["batch_id"].to_list())


def products_from_timeline(timeline: pl.DataFrame, step_min: int = 60) -> TimelineProducts:
    """The three timeline products of some batches' timeline rows (see ``TimelineProducts``).

    A minute may be split across landing files (several rows): the contamination and MSPC
    consumers average such rows, the hourly rollup keeps the first row of the minute (as
    ``hourly_rollup`` does). When every minute has one row, sorted (the usual case), the
    rows are used as they are, with no group-by. NaN never reaches silver (the telemetry
    contract quarantines non-finite values), so averaging with NaN ignored equals the
    contamination module's plain mean.
    """
    tl = timeline
    missing = [t for t in ROLLUP_TAGS if t not in tl.columns]
    tl = tl.with_columns([pl.lit(None, pl.Float64).alias(t) for t in missing])
    site = site_tags(tl)
    cols = ["batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", *ROLLUP_TAGS, *site]
    if not sorted_unique(tl):
        tl = tl.sort("batch_id", "elapsed_min", maintain_order=True)
    if sorted_unique(tl):
        # one row per minute already (the usual case: silver writes a batch's minutes in
        # order, one file per minute range): the minute mean is the row itself, and a
        # group-by over millions of rows would cost most of the pass
        first = tl.select(cols)
        m = first.with_columns(
            [pl.col(t).cast(pl.Float64).fill_nan(None) for t in (*ROLLUP_TAGS, *site)]
        )
        return _products_from_minutes(first, m, site, step_min)
    m = (
        tl.group_by("batch_id", "elapsed_min")
        .agg(
            pl.col("unit_id").first(),
            pl.col("minute_ts").min(),
            pl.col("phase").first(),
            pl.len().alias("_rows"),
            *[pl.col(t).cast(pl.Float64).fill_nan(None).mean() for t in (*ROLLUP_TAGS, *site)],
        )
        .sort("batch_id", "elapsed_min")
    )
    first = (
        tl.select(cols)
        .unique(subset=["batch_id", "elapsed_min"], keep="first", maintain_order=True)
        .sort("batch_id", "elapsed_min")
    )
    return _products_from_minutes(first, m.drop("_rows"), site, step_min)


def sorted_unique(tl: pl.DataFrame) -> bool:
    """Rows strictly ordered by (batch_id, elapsed_min): sorted, one row per minute."""
    if tl.height < 2:
        return True
    b, e = pl.col("batch_id"), pl.col("elapsed_min")
    ok = (b > b.shift(1)) | ((b == b.shift(1)) & (e > e.shift(1)))
    return bool(tl.select(ok.fill_null(True).all()).item())


#: timeline columns that are not tags
TIMELINE_KEYS = ("batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", "source_file")


def site_tags(timeline: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """Numeric timeline columns that are tags the bioreactor class does not know (a site's
    own tags, another unit class's tags): MSPC and the golden batch monitor them too."""
    schema = timeline.collect_schema()
    return sorted(
        c
        for c, t in schema.items()
        if c not in TIMELINE_KEYS and c not in ROLLUP_TAGS and t.is_numeric()
    )


def _products_from_minutes(
    first: pl.DataFrame, m: pl.DataFrame, site: Sequence[str] = (), step_min: int = 60
) -> TimelineProducts:
    """``first``: the first row of each minute (hourly rollup input); ``m``: per-minute tag
    means; both one row per (batch, minute), sorted."""
    from .. import contamination, mspc  # local: those modules stay free of feature code

    return TimelineProducts(
        hourly=rollup_minutes(first.lazy()),
        windows=contamination.window_features_from_minutes(m),
        mspc_hourly=mspc.hourly_means_from_minutes(m, (*mspc.PROCESS_TAGS, *site), step_min),
        n_batches=m["batch_id"].n_unique(),
    )


def timeline_products(
    lake: Lake, batch_ids: Sequence[str] | None = None, chunk_batches: int = 40
) -> TimelineProducts:
    """One pass over ``silver/batch_timeline`` (all batches, or ``batch_ids``), read by
    partition ``chunk_batches`` batches at a time (memory stays bounded on a long history;
    every product is computed per batch, so chunking changes no row)."""
    if chunk_batches < 1:
        raise ValueError(f"chunk_batches must be >= 1, got {chunk_batches}")
    ids = sorted(set(batch_ids)) if batch_ids is not None else timeline_batch_ids(lake)
    schema = lake.scan("silver", "batch_timeline")
    if schema is None:
        raise FileNotFoundError(
            f"table silver/batch_timeline does not exist in lake {lake.root}; run the "
            "lakehouse pipeline first (pharma-twin pipeline)"
        )
    present = set(schema.collect_schema().names())
    need = ["batch_id", "unit_id", "elapsed_min", "minute_ts", "phase"]
    cols = need + [t for t in ROLLUP_TAGS if t in present] + site_tags(schema)
    from pharma_assets.ml import mspc

    # MSPC's maturity grid: an hour for long (cell-culture) batches, minutes for short ones
    b = lake.read("silver", "batches", ["start_ts", "end_ts"])
    durations = (
        []
        if b is None
        else (
            b.filter(pl.col("end_ts").is_not_null())
            .select((pl.col("end_ts") - pl.col("start_ts")).dt.total_minutes())
            .to_series()
            .to_list()
        )
    )
    step = mspc.choose_step_min(durations)
    parts: list[TimelineProducts] = []
    for i in range(0, len(ids), chunk_batches):
        chunk = ids[i : i + chunk_batches]
        tl = lake.read("silver", "batch_timeline", columns=cols, partition=("batch_id", chunk))
        if tl is not None and tl.height:
            parts.append(products_from_timeline(tl, step))
    if not parts:
        empty = lake.read("silver", "batch_timeline", columns=cols, filter_expr=pl.lit(False))
        assert empty is not None
        return products_from_timeline(empty, step)
    return TimelineProducts(
        hourly=pl.concat([p.hourly for p in parts]).sort("batch_id", "elapsed_h"),
        windows=pl.concat([p.windows for p in parts]).sort("batch_id", "window"),
        mspc_hourly=pl.concat([p.mspc_hourly for p in parts], how="diagonal_relaxed").sort(
            "batch_id", "hour"
        ),
        n_batches=sum(p.n_batches for p in parts),
    )
