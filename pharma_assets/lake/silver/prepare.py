"""Silver telemetry: the run report, the pending files and the per-batch preparation for the contract."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from .. import bronze
from ..contracts import key_is_first_distinct
from ..specs import CppSpec
from ..storage import UTC_US, Lake
from .common import LAYER


@dataclass
class SilverReport:
    files_processed: int = 0
    files_deferred: int = 0
    rows_in: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    segments: int = 0
    failed_checks: Counter[str] = field(default_factory=Counter)
    batches: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)  # the files processed by this call

    def as_metadata(self) -> dict[str, Any]:
        return {
            "files_processed": self.files_processed,
            "files_deferred_no_batch_start": self.files_deferred,
            "rows_in": self.rows_in,
            "rows_valid": self.rows_valid,
            "rows_quarantined": self.rows_quarantined,
            "contract_pass_rate": round(self.rows_valid / self.rows_in, 6) if self.rows_in else 1.0,
            "excursion_segments": self.segments,
            "failed_checks": dict(self.failed_checks),
        }


def pending_telemetry_files(lake: Lake, batch_ids: Sequence[str]) -> pl.DataFrame:
    """Bronze-accepted telemetry files of these batches that silver has not processed.

    In landing-name order (the file name starts with its first timestamp), so reruns after a
    crash see the same order and split repeated readings the same way.
    """
    log = bronze.read_log(lake, batch_ids, "telemetry").filter(pl.col("status") == "accepted")
    log = log.select("source_file", "batch_id", "unit_id", "rows")
    return not_processed(lake, log, batch_ids).sort("batch_id", "source_file")


def not_processed(lake: Lake, files: pl.DataFrame, batch_ids: Sequence[str]) -> pl.DataFrame:
    """The rows of ``files`` (column ``source_file``) that silver/telemetry_log has not recorded."""
    done = lake.read(LAYER, "telemetry_log", ["source_file"], partition=("batch_id", batch_ids))
    if done is not None and done.height:
        files = files.join(done, on="source_file", how="anti")
    return files


def tag_index(spec: CppSpec) -> dict[str, int]:
    return {t: i for i, t in enumerate(spec.tags)}


def _gather(values: list[Any], idx: pl.Series, dtype: pl.DataType) -> pl.Series:
    """values[idx] per row; null where idx is null (unknown tag)."""
    table = pl.Series(values, dtype=dtype)
    return table.gather(idx)


def prepare(
    rows: pl.DataFrame,
    spec: CppSpec,
    batches: pl.DataFrame,
    phases: pl.DataFrame,
    existing_keys: pl.DataFrame | None,
    now: datetime,
) -> pl.DataFrame:
    """Normalise units and attach phase, batch window and duplicate flag for the contract.

    Works batch by batch so that the batch window and the phase boundaries are scalars, and
    keys on integers (tag index, microseconds) rather than strings: this is the hot path of
    ingestion. Adds ``tag_idx``, ``phase_idx`` and ``_key`` (ts_us * 1024 + tag_idx) for the
    aggregations that follow.
    """
    if rows.height == 0 or rows["batch_id"].n_unique() <= 1:
        return prepare_batch(rows, spec, batches, phases, existing_keys, now)
    parts = rows.partition_by("batch_id", maintain_order=True)
    return pl.concat(
        [prepare_batch(p, spec, batches, phases, existing_keys, now) for p in parts],
        how="vertical",
    )


def prepare_batch(
    rows: pl.DataFrame,
    spec: CppSpec,
    batches: pl.DataFrame,
    phases: pl.DataFrame,
    existing_keys: pl.DataFrame | None,
    now: datetime,
) -> pl.DataFrame:
    tags = list(spec.tags)
    tix = tag_index(spec)
    bid = rows["batch_id"][0] if rows.height else None
    grace = timedelta(minutes=spec.batch_window_grace_minutes)
    future_limit = now + timedelta(minutes=spec.future_tolerance_minutes)
    b = batches.filter(pl.col("batch_id") == bid)
    start = b["start_ts"][0] if b.height else None
    end = b["end_ts"][0] if b.height else None
    win_lo = start - grace if start is not None else None
    # a running batch has no upper bound yet: readings beyond now are ts_in_future
    win_hi = (
        (end + grace if end is not None else datetime(9999, 12, 31, tzinfo=UTC)) if start else None
    )

    idx = rows["tag"].replace_strict(tix, default=None, return_dtype=pl.UInt32)
    canon = _gather([spec.tags[t].uom for t in tags], idx, pl.String())
    lo = _gather([spec.tags[t].physical[0] for t in tags], idx, pl.Float64())
    hi = _gather([spec.tags[t].physical[1] for t in tags], idx, pl.Float64())
    df = rows.rename({"uom": "uom_raw"}).with_columns(
        tag_idx=idx, canon_uom=canon, phys_lo=lo, phys_hi=hi, value_raw=pl.col("value")
    )
    is_canon = (pl.col("uom_raw") == pl.col("canon_uom")).fill_null(False)
    df = df.with_columns(
        scale=pl.when(is_canon).then(pl.lit(1.0)), offset=pl.when(is_canon).then(pl.lit(0.0))
    )
    odd = df.filter(~is_canon & pl.col("tag_idx").is_not_null()).select("tag", "uom_raw").unique()
    if odd.height:  # other units: look up their conversions (a small table)
        conv = {(t, u): spec.conversion(t, u) for t, u in odd.iter_rows()}
        known = {k: v for k, v in conv.items() if v is not None and k[1] is not None}
        if known:
            key = pl.concat_str([pl.col("tag"), pl.col("uom_raw")], separator="\x1f")
            scales = {f"{t}\x1f{u}": v[0] for (t, u), v in known.items()}
            offsets = {f"{t}\x1f{u}": v[1] for (t, u), v in known.items()}
            df = df.with_columns(
                scale=pl.coalesce(
                    "scale", key.replace_strict(scales, default=None, return_dtype=pl.Float64)
                ),
                offset=pl.coalesce(
                    "offset", key.replace_strict(offsets, default=None, return_dtype=pl.Float64)
                ),
            )
    df = df.with_columns(
        value=pl.col("value") * pl.col("scale") + pl.col("offset"),
        uom=pl.when(pl.col("scale").is_not_null()).then(pl.col("canon_uom")),
        batch_start=pl.lit(start, UTC_US),
        win_lo=pl.lit(win_lo, UTC_US),
        win_hi=pl.lit(win_hi, UTC_US),
        future_limit=pl.lit(future_limit, UTC_US),
        _key=pl.col("ts").dt.epoch("us") * 1024 + pl.col("tag_idx").cast(pl.Int64),
    )
    # duplicates: an earlier row of this delivery, or a reading already in silver
    dup = pl.col("_key").is_not_null() & ~pl.col("_key").map_batches(
        key_is_first_distinct, return_dtype=pl.Boolean
    )
    if existing_keys is not None and existing_keys.height:
        ek = existing_keys.select(
            _key=pl.col("ts").dt.epoch("us") * 1024
            + pl.col("tag").replace_strict(tix, default=None, return_dtype=pl.Int64)
        )["_key"].drop_nulls()
        dup = dup | pl.col("_key").is_in(ek.implode())
    df = df.with_columns(is_dup=dup.fill_null(False))
    # phase: the last phase of the unit class's own (and one-phase "batch") that started at
    # or before the reading (MES phases are checked against the class in silver/batches): a
    # sorted search, then gathers from the batch's few phases, no per-row string building
    names = spec.phase_names
    ph = phases.filter((pl.col("batch_id") == bid) & pl.col("phase").is_in(list(names)))
    ph = ph.sort("start_ts", maintain_order=True)
    if ph.height == 0:
        return df.with_columns(
            phase=pl.lit(None, pl.String),
            phase_start=pl.lit(None, UTC_US),
            phase_idx=pl.lit(None, pl.Int8),
        )
    starts = ph["start_ts"].cast(UTC_US)
    pos = starts.search_sorted(df["ts"], side="right").cast(pl.Int64) - 1
    pos = pl.Series("pos", pos).set(df["ts"].is_null() | (pos < 0), None)  # type: ignore[arg-type]
    ph_names = ph["phase"]
    ph_idx = ph_names.replace_strict({p: i for i, p in enumerate(names)}, return_dtype=pl.Int8)
    return df.with_columns(
        phase=ph_names.gather(pos),
        phase_start=starts.gather(pos),
        phase_idx=ph_idx.gather(pos),
    )


def quarantine_frame(bad: pl.DataFrame, spec: CppSpec, now: datetime) -> pl.DataFrame:
    """The ``telemetry_quarantine`` rows of routed-out readings."""
    return bad.select(
        "ts",
        "site_id",
        "unit_id",
        "batch_id",
        "tag",
        pl.col("value_raw").alias("value"),
        pl.col("uom_raw").alias("uom"),
        "quality",
        "failed_check",
        "failed_checks",
        "offending_value",
        "raw",
        "extra",
        "source_file",
        "row_hash",
        spec_version=pl.lit(spec.version),
        processed_at=pl.lit(now, UTC_US),
    )


# the columns of the valid rows that silver writes or derives from (route keeps only these)
VALID_COLUMNS = (
    "ts",
    "site_id",
    "unit_id",
    "batch_id",
    "tag",
    "value",
    "uom",
    "quality",
    "phase",
    "source_file",
    "row_hash",
    "_file",
    "tag_idx",
    "phase_idx",
    "phase_start",
    "batch_start",
    "_key",
)
# the columns the accepted-rows contract checks
ACCEPTED_COLUMNS = ("ts", "unit_id", "batch_id", "tag", "value", "uom", "_key")


def derivation_columns(good: pl.DataFrame) -> pl.DataFrame:
    """The columns the derivations (segments, stats, timeline) use: they group and sort."""
    return good.select(
        "_file",
        "tag_idx",
        "phase_idx",
        "ts",
        "value",
        "batch_id",
        "unit_id",
        "tag",
        "phase",
        "phase_start",
        "batch_start",
        "source_file",
    )
