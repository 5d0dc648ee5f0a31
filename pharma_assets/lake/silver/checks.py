"""Silver telemetry checks: reconciliation against the landing zone and duplicate readings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from .. import bronze
from ..landing_scan import files_for_batch
from ..storage import Lake
from .common import LAYER
from .prepare import pending_telemetry_files


def _count(
    lake: Lake, layer: str, name: str, batch_ids: Sequence[str], files: Sequence[str] | None = None
) -> int:
    lf = lake.scan(layer, name)
    if lf is None:
        return 0
    where = pl.col("batch_id").is_in(list(batch_ids))
    if files is not None:
        where = where & pl.col("source_file").is_in(list(files))
    return int(lf.filter(where).select(pl.len()).collect().item())


def reconcile_telemetry(
    lake: Lake, landing_root: str, batch_ids: Sequence[str], files: Sequence[str] | None = None
) -> dict[str, Any]:
    """Rows landed (Parquet footers) = bronze + quarantined files' rows; bronze = silver + quarantine + pending.

    With ``files`` (the files a run just processed) the row counts cover those files only:
    a chunk's run reads the footers and rows of its own files, not the batch's history (the
    partition-wide figures come from the two ledgers, one row per file). Without it, the
    whole partitions are counted. Landed files bronze has not seen yet (they arrived after
    this run's bronze step) are reported apart (files/rows_awaiting_bronze) and are not a
    reconciliation failure.
    """
    log = bronze.read_log(lake, batch_ids, "telemetry")
    in_log = set(log["source_file"].to_list())
    scope = set(files) if files is not None else None
    # files that landed after this run's bronze step are not owed yet: counted apart
    landed_rows, unreadable, awaiting_files, awaiting_rows = 0, 0, 0, 0
    for bid in batch_ids:
        for f in files_for_batch(landing_root, "telemetry", bid):
            if scope is not None and f.rel not in scope:
                if f.rel not in in_log:
                    awaiting_files += 1
                continue
            try:
                n = pq.ParquetFile(f.path(landing_root)).metadata.num_rows
            except Exception:
                n = 0
                unreadable += f.rel in in_log
            if f.rel in in_log:
                landed_rows += n
            else:
                awaiting_files += 1
                awaiting_rows += n
    if scope is not None:
        log = log.filter(pl.col("source_file").is_in(list(scope)))
    q_rows = int(log.filter(pl.col("status") == "quarantined")["rows"].fill_null(0).sum())
    only = list(scope) if scope is not None else None
    bronze_rows = _count(lake, bronze.LAYER, "telemetry", batch_ids, only)
    silver_rows = _count(lake, LAYER, "telemetry", batch_ids, only)
    quarantined = _count(lake, LAYER, "telemetry_quarantine", batch_ids, only)
    pend = pending_telemetry_files(lake, batch_ids)
    if scope is not None:
        pend = pend.filter(pl.col("source_file").is_in(list(scope)))
    pending = int(pend["rows"].fill_null(0).sum())
    ok = landed_rows == bronze_rows + q_rows and bronze_rows == silver_rows + quarantined + pending
    out: dict[str, Any] = {
        "scope": "files of this run" if scope is not None else "whole partitions",
        "files_checked": len(scope) if scope is not None else len(in_log),
        "rows_landed": landed_rows,
        "unreadable_files": unreadable,
        "rows_in_quarantined_files": q_rows,
        "bronze_rows": bronze_rows,
        "silver_rows": silver_rows,
        "quarantined_rows": quarantined,
        "pending_rows": pending,
        "reconciled": ok,
        "files_awaiting_bronze": awaiting_files,
        "rows_awaiting_bronze": awaiting_rows,
        "silver_pass_rate": round(silver_rows / (silver_rows + quarantined), 6)
        if silver_rows + quarantined
        else 1.0,
    }
    # partition-wide totals from the silver ledger (one row per processed file)
    tl = lake.read(
        LAYER,
        "telemetry_log",
        ["rows_in", "rows_valid", "rows_quarantined"],
        filter_expr=pl.col("batch_id").is_in(list(batch_ids)),
    )
    if tl is not None:
        out["partition_rows_valid"] = int(tl["rows_valid"].sum())
        out["partition_rows_quarantined"] = int(tl["rows_quarantined"].sum())
        tot = out["partition_rows_valid"] + out["partition_rows_quarantined"]
        out["partition_pass_rate"] = round(out["partition_rows_valid"] / tot, 6) if tot else 1.0
    return out


def duplicate_readings(
    lake: Lake, batch_ids: Sequence[str], files: Sequence[str] | None = None
) -> int:
    """Keys (unit, tag, ts) held more than once in silver/telemetry for these batches.

    With ``files`` (the files a run just processed) only the time window those files
    cover is checked, per batch: a new file can only duplicate readings inside its own
    window, so a chunk's run does not re-read the batch's history.

    Cluster by cluster: two readings with one key are of one unit at one time, so only
    batches of one unit whose windows overlap are grouped together (normally each batch
    alone). Memory follows the largest cluster, not the run: grouping every reading of a
    50-batch backfill run at once held about 5 GB (25 M keys).
    """
    lf = lake.scan(LAYER, "telemetry")
    if lf is None or not batch_ids:
        return 0
    lf = lf.filter(pl.col("batch_id").is_in(list(batch_ids)))
    if files is not None and not files:
        return 0
    scope = lf if files is None else lf.filter(pl.col("source_file").is_in(list(files)))
    # each batch's window per unit: one streamed pass over three columns
    win = (
        scope.group_by("batch_id", "unit_id")
        .agg(lo=pl.col("ts").min(), hi=pl.col("ts").max())
        .collect(engine="streaming")
    )
    if win.height == 0:
        return 0
    windows = win.group_by("batch_id").agg(lo=pl.col("lo").min(), hi=pl.col("hi").max())
    total = 0
    for cluster in _overlapping(win):
        part = lf.filter(pl.col("batch_id").is_in(cluster)).join(
            windows.filter(pl.col("batch_id").is_in(cluster)).lazy(), on="batch_id"
        )
        total += int(
            part.filter(pl.col("ts").is_between("lo", "hi"))
            .group_by("unit_id", "tag", "ts")
            .len()
            .filter(pl.col("len") > 1)
            .select(pl.len())
            .collect()
            .item()
        )
    return total


def _overlapping(win: pl.DataFrame) -> list[list[str]]:
    """Batches (rows batch_id, unit_id, lo, hi) joined where one unit's windows overlap."""
    parent = {b: b for b in win["batch_id"].to_list()}

    def root(b: str) -> str:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    for _, rows in win.sort("lo").group_by("unit_id", maintain_order=True):
        end, last = None, ""  # the latest end so far, and a batch reaching it
        for bid, lo, hi in rows.select("batch_id", "lo", "hi").iter_rows():
            if end is not None and lo <= end:
                parent[root(bid)] = root(last)
            if end is None or hi > end:
                end, last = hi, bid
    clusters: dict[str, list[str]] = {}
    for b in parent:
        clusters.setdefault(root(b), []).append(b)
    return [sorted(c) for c in clusters.values()]
