"""The minute timeline and the ML feature tables on Spark.

``minute_timeline``: silver's ``batch_timeline`` (one row per batch, landed file and
elapsed minute, a column per tag, with the phase) derived from ``silver/telemetry`` in
Spark SQL: for rebuilding the timeline of a long history (after a spec change, or for a
history loaded without it) on a cluster. Same rows as the polars engine's.

``timeline_products``: the three products the ML group derives from the timeline (hourly
rollup, contamination windows, MSPC hourly means). Every product is computed per batch,
so Spark groups the timeline by batch and each group runs the same polars functions on
its executor (``applyInArrow``): one implementation of the features, spread over the
cluster; the driver only receives the (much smaller) hourly and window tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from pharma_assets.lake.storage import Lake

from .lake_io import read_table, to_arrow

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pharma_assets.lake.specs import CppSpec
    from pharma_assets.ml.features import TimelineProducts


def minute_timeline(
    spark: SparkSession, lake: Lake, spec: CppSpec, batch_ids: Sequence[str] | None = None
) -> DataFrame:
    """The minute timeline of ``batch_ids`` (all batches if None) from silver telemetry."""
    from pyspark.sql import functions as F

    tel = read_table(
        spark,
        lake,
        "silver",
        "telemetry",
        columns=["ts", "unit_id", "batch_id", "tag", "value", "phase", "source_file"],
    )
    starts = read_table(spark, lake, "silver", "batches", columns=["batch_id", "start_ts"])
    if batch_ids is not None:
        ids = sorted(set(batch_ids))
        tel = tel.where(F.col("batch_id").isin(ids))
        starts = starts.where(F.col("batch_id").isin(ids))
    # whole seconds toward zero, then minutes toward minus infinity (as the polars engine)
    secs = ((F.unix_micros("ts") - F.unix_micros("start_ts")) / F.lit(1_000_000)).cast("long")
    mins = tel.join(starts, "batch_id", "inner").withColumn(
        "elapsed_min", F.floor(secs / F.lit(60)).cast("int")
    )
    tags = sorted(spec.tags)
    wide = mins.groupBy("batch_id", "source_file", "elapsed_min").agg(
        F.first("unit_id").alias("unit_id"),
        F.first("start_ts").alias("start_ts"),
        F.min_by("phase", "ts").alias("phase"),
        *[F.avg(F.when(F.col("tag") == t, F.col("value"))).alias(t) for t in tags],
    )
    return wide.select(
        "batch_id",
        "unit_id",
        "elapsed_min",
        (F.col("start_ts") + F.make_dt_interval(F.lit(0), F.lit(0), F.col("elapsed_min"))).alias(
            "minute_ts"
        ),
        "phase",
        *[F.col(t).cast("double") for t in tags],
        "source_file",
    ).orderBy("batch_id", "elapsed_min", "source_file")


def minute_timeline_frame(
    spark: SparkSession, lake: Lake, spec: CppSpec, batch_ids: Sequence[str] | None = None
) -> pl.DataFrame:
    """``minute_timeline`` collected as a polars frame with the lake's column types."""
    df = pl.from_arrow(to_arrow(minute_timeline(spark, lake, spec, batch_ids)))
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("elapsed_min").cast(pl.Int32))


PRODUCTS = ("hourly", "windows", "mspc_hourly")
_SORT = {
    "hourly": ("batch_id", "elapsed_h"),
    "windows": ("batch_id", "window"),
    "mspc_hourly": ("batch_id", "hour"),
}
# one row per batch and product: the product's rows for the batch as an Arrow IPC stream
_PAYLOAD = pa.schema([("product", pa.string()), ("ipc", pa.binary())])


def _ipc(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return bytes(sink.getvalue())


def _products_of_batch(t: pa.Table) -> pa.Table:
    """What one Spark group (one batch's timeline) runs: the three products, serialised."""
    from pharma_assets.ml import features as feat

    df = pl.from_arrow(t)
    assert isinstance(df, pl.DataFrame)
    prods = feat.products_from_timeline(df.with_columns(pl.col("elapsed_min").cast(pl.Int32)))
    blobs = [_ipc(getattr(prods, n).to_arrow()) for n in PRODUCTS]
    return pa.table({"product": list(PRODUCTS), "ipc": blobs}, schema=_PAYLOAD)


def timeline_products(
    spark: SparkSession, lake: Lake, batch_ids: Sequence[str] | None = None
) -> TimelineProducts:
    """``features.timeline_products`` with the per-batch work on Spark's executors.

    One pass: each batch's group returns its three products as Arrow IPC blobs (the
    products differ in columns, a Spark result has one schema); the driver concatenates
    them per product with the polars engine's column types and order.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from pharma_assets.ml import features

    present = set(read_table(spark, lake, "silver", "batch_timeline").columns)
    cols = ["batch_id", "unit_id", "elapsed_min", "minute_ts", "phase"]
    cols += [t for t in features.ROLLUP_TAGS if t in present]
    tl = read_table(spark, lake, "silver", "batch_timeline", columns=cols)
    if batch_ids is not None:
        tl = tl.where(F.col("batch_id").isin(sorted(set(batch_ids))))
    empty = lake.read("silver", "batch_timeline", columns=cols, filter_expr=pl.lit(False))
    assert empty is not None
    ref = features.products_from_timeline(empty)
    res = tl.groupBy("batch_id").applyInArrow(_products_of_batch, from_arrow_schema(_PAYLOAD))
    got = res.toArrow()
    parts: dict[str, list[pl.DataFrame]] = {n: [] for n in PRODUCTS}
    for name, blob in zip(got["product"].to_pylist(), got["ipc"].to_pylist(), strict=True):
        df = pl.from_arrow(pa.ipc.open_stream(blob).read_all())
        assert isinstance(df, pl.DataFrame)
        parts[name].append(df)
    out: dict[str, pl.DataFrame] = {}
    for name in PRODUCTS:
        target: pl.DataFrame = getattr(ref, name)
        frames = [target, *parts[name]]
        out[name] = pl.concat(frames, how="vertical_relaxed").select(target.columns)
        out[name] = out[name].cast(dict(target.schema)).sort(*_SORT[name])  # type: ignore[arg-type]
    n = out["hourly"]["batch_id"].n_unique() if out["hourly"].height else 0
    return features.TimelineProducts(
        hourly=out["hourly"], windows=out["windows"], mspc_hourly=out["mspc_hourly"], n_batches=n
    )
