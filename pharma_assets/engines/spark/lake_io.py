"""Spark reads the lake's Delta snapshots and hands results back to the lake's writer.

Reads: the files of one Delta snapshot, as delta-rs lists them from the table's log
(``DeltaTable.file_uris``), never a listing of the folder, which would also see files of
uncommitted or removed versions. Partition columns (not stored in the files) come from the
snapshot's add actions. This needs no Delta jars: Spark reads plain Parquet.

Writes: ``PHARMA_SPARK_DELTA_WRITER=delta-rs`` (the default) collects the result as Arrow
and commits it through ``Lake.append``/``Lake.overwrite``: the same commit, retries, table
settings and exactly-once rules as the polars engine. ``spark`` uses Spark's own Delta
writer (``df.write.format("delta")``) for clusters that have the Delta jars
(``io.delta:delta-spark`` on the classpath); without them it fails with a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import pyarrow as pa

from pharma_assets.lake.storage import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

Writer = Literal["delta-rs", "spark"]


def writer_from_env(env: Mapping[str, str] | None = None) -> Writer:
    """``PHARMA_SPARK_DELTA_WRITER``: ``delta-rs`` (default) or ``spark``."""
    env = os.environ if env is None else env
    raw = (env.get("PHARMA_SPARK_DELTA_WRITER") or "delta-rs").strip().lower()
    if raw in ("delta-rs", "spark"):
        return raw  # type: ignore[return-value]
    raise ValueError(f"PHARMA_SPARK_DELTA_WRITER={raw!r} is not a writer; use delta-rs or spark")


def snapshot_files(
    lake: Lake, layer: str, name: str, version: int | None = None
) -> tuple[list[str], list[str], pa.Schema] | None:
    """(file URIs, partition columns, Arrow schema) of one snapshot; None if no table."""
    dt = lake.table(layer, name, version)
    if dt is None:
        return None
    uris = list(dt.file_uris())
    adds = dt.get_add_actions(flatten=False)
    paths = [str(p) for p in pa.table(adds).column("path").to_pylist()]
    for u, p in zip(uris, paths, strict=True):  # the same files, in the same order
        if not unquote(u).endswith(unquote(p)):
            raise RuntimeError(f"delta-rs listed {u} for add action {p} of {lake.uri(layer, name)}")
    schema = pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]
    return uris, list(dt.metadata().partition_columns), schema


def read_table(
    spark: SparkSession,
    lake: Lake,
    layer: str,
    name: str,
    version: int | None = None,
    columns: Sequence[str] | None = None,
) -> DataFrame:
    """A Spark DataFrame of the table's current snapshot (or ``version``).

    Hive-style partition folders (delta-rs writes ``col=value/``) give the partition
    columns, as strings; the lake partitions by string columns only (``batch_id``).
    """
    snap = snapshot_files(lake, layer, name, version)
    if snap is None:
        raise FileNotFoundError(f"table {layer}/{name} does not exist in lake {lake.root}")
    uris, parts, schema = snap
    for c in parts:
        if not pa.types.is_string(schema.field(c).type) and not pa.types.is_large_string(
            schema.field(c).type
        ):
            raise TypeError(
                f"{layer}/{name}: partition column {c} is {schema.field(c).type}; "
                "the Spark engine reads string partition columns only"
            )
    if not uris:
        df = spark.createDataFrame(_plain(schema).empty_table())
    else:
        opts: dict[str, Any] = {"basePath": lake.uri(layer, name)} if parts else {}
        df = spark.read.options(**opts).parquet(*uris)
    return df.select(*(columns or schema.names))


def _plain(schema: pa.Schema) -> pa.Schema:
    """Arrow types Spark accepts (views and large strings as plain strings)."""
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_string_view(t) or pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC")
        fields.append(pa.field(f.name, t, f.nullable))
    return pa.schema(fields)


def to_arrow(df: DataFrame) -> pa.Table:
    """The rows as Arrow, timestamps as microseconds UTC (the lake's one timestamp type)."""
    t = df.toArrow()
    cols = []
    for f in t.schema:
        if pa.types.is_timestamp(f.type):
            cols.append(t[f.name].cast(pa.timestamp("us", tz="UTC")))
        else:
            cols.append(t[f.name])
    return pa.Table.from_arrays(cols, names=t.schema.names)


def write_table(
    lake: Lake,
    layer: str,
    name: str,
    df: DataFrame,
    mode: str = "append",
    metadata: Mapping[str, Any] | None = None,
    writer: Writer | None = None,
) -> int | None:
    """Commit a Spark result to ``<layer>/<name>``; the new version (None for Spark's writer)."""
    writer = writer or writer_from_env()
    if writer == "spark":
        try:
            df.write.format("delta").mode(mode).save(lake.uri(layer, name))
        except Exception as e:
            msg = str(e).lower()
            if "delta" in msg and ("data_source_not_found" in msg or "find the data source" in msg):
                raise RuntimeError(
                    "PHARMA_SPARK_DELTA_WRITER=spark needs Delta's Spark jars "
                    "(io.delta:delta-spark) on the cluster's classpath; they are not here. "
                    "Use PHARMA_SPARK_DELTA_WRITER=delta-rs (the default)."
                ) from e
            raise
        return None
    table = to_arrow(df)
    if mode == "overwrite":
        return lake.overwrite(layer, name, table, metadata=metadata)
    if mode != "append":
        raise ValueError(f"mode must be append or overwrite, got {mode!r}")
    return lake.append(layer, name, table, metadata=metadata)
