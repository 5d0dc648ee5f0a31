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
    """
    lf = lake.scan(LAYER, "telemetry")
    if lf is None:
        return 0
    lf = lf.filter(pl.col("batch_id").is_in(list(batch_ids)))
    if files is not None:
        if not files:
            return 0
        win = (
            lf.filter(pl.col("source_file").is_in(list(files)))
            .group_by("batch_id")
            .agg(lo=pl.col("ts").min(), hi=pl.col("ts").max())
            .collect()
        )
        if win.height == 0:
            return 0
        lf = lf.join(win.lazy(), on="batch_id").filter(pl.col("ts").is_between("lo", "hi"))
    return int(
        lf.group_by("unit_id", "tag", "ts")
        .len()
        .filter(pl.col("len") > 1)
        .select(pl.len())
        .collect()
        .item()
    )
