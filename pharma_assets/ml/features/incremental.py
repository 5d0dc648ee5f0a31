"""The timeline products, recomputed only for the batches whose timeline changed.

The pass over the minute-level ``silver/batch_timeline`` is the expensive part of the
feature tables, and each of its products (hourly rollup, contamination windows, MSPC hourly
means) is computed per batch. So the products are stored (``features/hourly``,
``features/contamination_windows``, ``features/mspc_hourly``) with a fingerprint of each
batch's timeline (``features/timeline_batches``: the batch's Delta files, path and size,
hashed, attributed to batches by the log's batch_id statistics); the next build reads only the batches whose fingerprint is new or changed, keeps
the stored rows of the others and drops the rows of batches no longer in the timeline. The
result is row for row the full recomputation (a test checks it). A change of the products'
code (``PRODUCTS_VERSION``) or of their columns makes the next build a full one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from pharma_assets.lake.storage import Lake

from .timeline import TimelineProducts, timeline_batch_ids
from .timeline import timeline_products as _timeline_products

#: bump when the code of the timeline products changes (forces one full rebuild)
PRODUCTS_VERSION = 2  # 2: site tags and the MSPC grid step (issue 15)
LAYER = "features"
STATE_TABLE = "timeline_batches"
#: the stored products: attribute of TimelineProducts -> (feature table, sort keys)
PRODUCT_TABLES: dict[str, tuple[str, tuple[str, str]]] = {
    "hourly": ("hourly", ("batch_id", "elapsed_h")),
    "windows": ("contamination_windows", ("batch_id", "window")),
    "mspc_hourly": ("mspc_hourly", ("batch_id", "hour")),
}
STATE_SCHEMA = {"batch_id": pl.String, "fingerprint": pl.String, "products_version": pl.Int64}


@dataclass
class IncrementalProducts:
    """The products of every batch, and what this build did."""

    products: TimelineProducts
    fingerprints: dict[str, str]
    recomputed: list[str] = field(default_factory=list)
    reused: int = 0
    removed: list[str] = field(default_factory=list)
    full: bool = True

    def state(self) -> pl.DataFrame:
        """The ``features/timeline_batches`` rows to store with the products."""
        ids = sorted(self.fingerprints)
        return pl.DataFrame(
            {
                "batch_id": ids,
                "fingerprint": [self.fingerprints[b] for b in ids],
                "products_version": [PRODUCTS_VERSION] * len(ids),
            },
            schema=STATE_SCHEMA,
        )


def timeline_fingerprints(lake: Lake) -> dict[str, str]:
    """Per batch of ``silver/batch_timeline``, a hash of the Delta files (path and size) that
    may hold its rows: any write touching a batch changes it. Files are attributed to batches
    by the ``batch_id`` statistics of the Delta log (a file whose min and max differ counts
    for every batch in between; a file without statistics for every batch), so only the log
    and the batch_id column are read."""
    dt = lake.table("silver", "batch_timeline")
    if dt is None:
        raise FileNotFoundError(
            f"table silver/batch_timeline does not exist in lake {lake.root}; run the "
            "lakehouse pipeline first (pharma-twin pipeline)"
        )
    adds = pl.DataFrame(pa.table(dt.get_add_actions(flatten=True)))
    if "partition.batch_id" in adds.columns:
        lo = hi = pl.col("partition.batch_id")
    elif "min.batch_id" in adds.columns and "max.batch_id" in adds.columns:
        lo, hi = pl.col("min.batch_id"), pl.col("max.batch_id")
    else:
        lo = hi = pl.lit(None, pl.String)
    files = adds.select(
        lo.cast(pl.String).alias("lo"),
        hi.cast(pl.String).alias("hi"),
        pl.format("{}:{}", "path", "size_bytes").alias("file"),
    )
    ids = pl.DataFrame({"batch_id": timeline_batch_ids(lake)}, schema={"batch_id": pl.String})
    one = files.filter(pl.col("lo").is_not_null() & (pl.col("lo") == pl.col("hi")))
    many = files.filter(
        pl.col("lo").is_null() | pl.col("hi").is_null() | (pl.col("lo") != pl.col("hi"))
    )
    per_file = pl.concat(
        [
            one.select(pl.col("lo").alias("batch_id"), "file"),
            ids.join(many, how="cross")
            .filter(
                (pl.col("lo").is_null() | (pl.col("batch_id") >= pl.col("lo")))
                & (pl.col("hi").is_null() | (pl.col("batch_id") <= pl.col("hi")))
            )
            .select("batch_id", "file"),
        ]
    ).join(ids, on="batch_id", how="semi")
    per_batch = (
        per_file.sort("batch_id", "file")
        .group_by("batch_id", maintain_order=True)
        .agg(pl.col("file").str.join("\n"))
    )
    return {b: hashlib.sha256(f.encode()).hexdigest()[:32] for b, f in per_batch.iter_rows()}


def stored_products(lake: Lake) -> tuple[TimelineProducts, dict[str, str]] | None:
    """The stored products and fingerprints, or None when any is missing or was written by
    another ``PRODUCTS_VERSION``."""
    state = lake.read(LAYER, STATE_TABLE)
    if state is None or state.is_empty():
        return None
    if state["products_version"].unique().to_list() != [PRODUCTS_VERSION]:
        return None
    frames: dict[str, pl.DataFrame] = {}
    for attr, (table, _) in PRODUCT_TABLES.items():
        df = lake.read(LAYER, table)
        if df is None:
            return None
        frames[attr] = df
    prods = TimelineProducts(**frames, n_batches=frames["hourly"]["batch_id"].n_unique())
    return prods, dict(
        zip(state["batch_id"].to_list(), state["fingerprint"].to_list(), strict=True)
    )


def _same_columns(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    return a.columns == b.columns


def incremental_timeline_products(
    lake: Lake,
    previous: tuple[TimelineProducts, Mapping[str, str]] | None,
    chunk_batches: int = 40,
    compute: Callable[[Lake, Sequence[str], int], TimelineProducts] | None = None,
) -> IncrementalProducts:
    """The timeline products of every batch, reading the timeline only for the batches
    whose fingerprint differs from ``previous`` (what :func:`stored_products` returns;
    None: a full build). ``compute`` computes the products of some batches (default
    :func:`timeline_products`; the Spark engine passes its own)."""
    timeline_products = compute or _timeline_products
    fps = timeline_fingerprints(lake)
    if previous is None:
        prods = timeline_products(lake, sorted(fps), chunk_batches)
        return IncrementalProducts(prods, fps, recomputed=sorted(fps))
    old, old_fps = previous
    changed = sorted(b for b, f in fps.items() if old_fps.get(b) != f)
    removed = sorted(set(old_fps) - set(fps))
    drop = set(changed) | set(removed)
    fresh = timeline_products(lake, changed, chunk_batches) if changed else None
    parts: dict[str, pl.DataFrame] = {}
    for attr, (_, keys) in PRODUCT_TABLES.items():
        kept = getattr(old, attr).filter(~pl.col("batch_id").is_in(sorted(drop)))
        if fresh is None:
            parts[attr] = kept.sort(*keys)
            continue
        new = getattr(fresh, attr)
        if not _same_columns(kept, new):  # the products' columns changed: rebuild all
            prods = timeline_products(lake, sorted(fps), chunk_batches)
            return IncrementalProducts(prods, fps, recomputed=sorted(fps))
        parts[attr] = pl.concat([kept, new.cast(kept.schema)]).sort(*keys)  # type: ignore[arg-type]
    reused = len(set(fps) - set(changed))
    prods = TimelineProducts(**parts, n_batches=parts["hourly"]["batch_id"].n_unique())
    return IncrementalProducts(prods, fps, changed, reused, removed, full=False)
