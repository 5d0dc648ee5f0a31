"""Silver telemetry of one large bronze file, slice by slice (bounded memory)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl

from .. import bronze
from ..contracts import accepted_contract, route, telemetry_contract
from ..specs import CppSpec
from ..storage import UTC_US, Lake, Spool, scratch_dir
from .common import LAYER, SILVER_TELEMETRY_COLUMNS
from .derived import (
    SEGMENT_SCHEMA,
    excursion_segments_of,
    stats_agg,
    stats_finish,
    stats_merge,
    timeline_merge,
    timeline_partial,
)
from .phase_rules import crossing_phases, write_crossings
from .prepare import (
    SilverReport,
    derivation_columns,
    not_processed,
    prepare_batch,
    quarantine_frame,
    tag_index,
)

ATTEMPT_SCHEMA = {
    "source_file": pl.String(),
    "batch_id": pl.String(),
    "run_id": pl.String(),
    "started_at": UTC_US,
}


def process_large_file(
    lake: Lake,
    bid: str,
    f: str,
    spec: CppSpec,
    batches: pl.DataFrame,
    phases: pl.DataFrame,
    run_id: str,
    now: datetime,
    rep: SilverReport,
    limits: bronze.IngestLimits,
) -> None:
    """One bronze file of more than ``limits.slice_rows`` rows, slice by slice.

    Each slice is normalised, checked and routed on its own (duplicates are looked up in
    silver and in the keys of the file's earlier slices); valid and quarantined rows are
    spooled to scratch Parquet files, and stats and timeline kept as partial aggregates
    (merged at the end), excursion segments computed per tag from a spool of the CPP
    readings. Then each table gets ONE commit of the file's rows, as for small files, and
    the file is logged last: a crash anywhere leaves whole files only. A file whose
    processing was started ``limits.max_attempts`` times without finishing (killed runs)
    has its rows quarantined (``processing_failed``) instead of being retried for ever.
    """
    with lake.lock(f"silver-telemetry-{bid}"):
        todo = pl.DataFrame({"batch_id": [bid], "source_file": [f]})
        if not_processed(lake, todo, [bid]).height == 0:
            return
        where = (pl.col("batch_id") == bid) & (pl.col("source_file") == f)
        tries = lake.read(LAYER, "telemetry_attempts", ["source_file"], filter_expr=where)
        n_prev = 0 if tries is None else tries.height
        row = {"source_file": f, "batch_id": bid, "run_id": run_id, "started_at": now}
        if n_prev < limits.max_attempts:
            lake.append(LAYER, "telemetry_attempts", pl.DataFrame([row], schema=ATTEMPT_SCHEMA))
        with scratch_dir(lake) as d:
            if n_prev >= limits.max_attempts:
                detail = (
                    f"{n_prev} earlier attempts to process this file did not finish "
                    f"(killed or crashed runs; PHARMA_MAX_FILE_ATTEMPTS={limits.max_attempts})"
                )
                _quarantine_file(lake, bid, f, spec, run_id, now, limits, d, detail, rep)
            else:
                _process_sliced(lake, bid, f, spec, batches, phases, run_id, now, limits, d, rep)


def _process_sliced(
    lake: Lake,
    bid: str,
    f: str,
    spec: CppSpec,
    batches: pl.DataFrame,
    phases: pl.DataFrame,
    run_id: str,
    now: datetime,
    limits: bronze.IngestLimits,
    d: Any,
    rep: SilverReport,
) -> None:
    files = [f]
    tix = tag_index(spec)
    cpp_idx = sorted(tix[t] for t in spec.cpp_tags)
    valid_sp, bad_sp, cpp_sp = (
        Spool(d / "valid.arrow"),
        Spool(d / "bad.arrow"),
        Spool(d / "cpp.arrow"),
    )
    keys: list[tuple[datetime, datetime, Any]] = []  # (min ts, max ts, key file) of earlier slices
    stats_parts: list[pl.DataFrame] = []
    timeline_parts: list[tuple[pl.DataFrame, pl.DataFrame]] = []
    rows_in = 0
    unit: str | None = None
    failed: Counter[str] = Counter()
    crossed = False  # phases by tag crossing moved on in this file
    for k, raw in enumerate(lake.file_slices(bronze.LAYER, "telemetry", bid, f, limits.slice_rows)):
        raw = raw.with_columns(_file=pl.lit(0, pl.UInt32))
        rows_in += raw.height
        lo, hi = raw["ts"].min(), raw["ts"].max()
        seen: list[pl.DataFrame] = []
        if isinstance(lo, datetime) and isinstance(hi, datetime):
            existing = lake.read(
                LAYER,
                "telemetry",
                ["tag", "ts"],
                filter_expr=(pl.col("batch_id") == bid)
                & pl.col("ts").is_between(lo, hi)
                & (pl.col("source_file") != f),
            )
            if existing is not None and existing.height:
                seen.append(existing)
            # a reading repeated from an earlier slice of this file is a duplicate too
            seen += [
                pl.read_parquet(p).filter(pl.col("ts").is_between(lo, hi))
                for a, b, p in keys
                if not (b < lo or a > hi)
            ]
            key_file = d / f"keys{k}.parquet"
            raw.select("ts", "tag").drop_nulls().write_parquet(key_file)
            keys.append((lo, hi, key_file))
        ex = pl.concat(seen, how="vertical_relaxed") if seen else None
        phases, moved = crossing_phases(raw, spec, batches, phases)  # (tag_crossing rule)
        crossed = crossed or moved
        df = prepare_batch(raw, spec, batches, phases, ex, now)
        good, bad = route(df, telemetry_contract(spec))
        accepted_contract(spec).validate(
            good.select("ts", "unit_id", "batch_id", "tag", "value", "uom", "_key")
        )
        valid_sp.write(
            good.with_columns(
                spec_version=pl.lit(spec.version), processed_at=pl.lit(now, UTC_US)
            ).select(SILVER_TELEMETRY_COLUMNS)
        )
        bad_sp.write(quarantine_frame(bad, spec, now))
        failed.update(bad["failed_check"].to_list())
        slim = derivation_columns(good)
        stats_parts.append(stats_agg(slim))
        timeline_parts.append(timeline_partial(slim))
        if unit is None and good.height:
            unit = good["unit_id"][0]
        cpp_sp.write(
            slim.filter(
                pl.col("tag_idx").is_in(cpp_idx) & pl.col("phase_idx").is_not_null()
            ).select("_file", "tag_idx", "phase_idx", "ts", "value", "phase_start")
        )
    outputs: dict[str, pl.DataFrame | Spool] = {
        "telemetry": valid_sp,
        "telemetry_quarantine": bad_sp,
        "excursion_segments": _segments_by_tag(
            cpp_sp, cpp_idx, spec, {"source_file": f, "batch_id": bid, "unit_id": unit or ""}
        ),
        "telemetry_stats": stats_finish(stats_merge(stats_parts), files, spec),
        "batch_timeline": timeline_merge(timeline_parts, files, spec),
    }
    _commit_outputs(lake, bid, f, outputs, run_id)
    if crossed:
        write_crossings(lake, phases, [bid])
    _log_file(lake, bid, f, rows_in, valid_sp.rows, bad_sp.rows, spec, run_id, now)
    rep.files_processed += 1
    rep.files.append(f)
    rep.rows_in += rows_in
    rep.rows_valid += valid_sp.rows
    rep.rows_quarantined += bad_sp.rows
    rep.segments += _height(outputs["excursion_segments"])
    rep.failed_checks.update(failed)
    rep.batches.add(bid)


def _height(out: pl.DataFrame | Spool) -> int:
    return out.rows if isinstance(out, Spool) else out.height


def _commit_outputs(
    lake: Lake, bid: str, f: str, outputs: dict[str, pl.DataFrame | Spool], run_id: str
) -> None:
    """One commit per table of one file's rows, skipping tables that already hold them."""
    for name, out in outputs.items():
        if _height(out) == 0 and lake.exists(LAYER, name):
            continue
        if lake.sources_in(LAYER, name, [f], [bid]):  # committed before a crash
            continue
        if isinstance(out, Spool):
            if out.schema is None:
                continue
            lake.append(LAYER, name, out.reader, metadata={"run_id": run_id})
        else:
            lake.append(LAYER, name, out, metadata={"run_id": run_id})


def _log_file(
    lake: Lake,
    bid: str,
    f: str,
    rows_in: int,
    rows_valid: int,
    rows_bad: int,
    spec: CppSpec,
    run_id: str,
    now: datetime,
) -> None:
    """The file's ``telemetry_log`` row (same columns and types as ``_process_files``')."""
    lake.append(
        LAYER,
        "telemetry_log",
        pl.DataFrame(
            {
                "source_file": [f],
                "batch_id": [bid],
                "rows_in": pl.Series([rows_in], dtype=pl.UInt32),
                "rows_valid": pl.Series([rows_valid], dtype=pl.UInt32),
                "rows_quarantined": pl.Series([rows_bad], dtype=pl.UInt32),
            }
        ).with_columns(
            processed_at=pl.lit(now, UTC_US),
            spec_version=pl.lit(spec.version),
            run_id=pl.lit(run_id),
        ),
    )


def _quarantine_file(
    lake: Lake,
    bid: str,
    f: str,
    spec: CppSpec,
    run_id: str,
    now: datetime,
    limits: bronze.IngestLimits,
    d: Any,
    detail: str,
    rep: SilverReport,
) -> None:
    """Every row of a file that cannot be processed goes to ``telemetry_quarantine``."""
    sp = Spool(d / "quarantine.arrow")
    for raw in lake.file_slices(bronze.LAYER, "telemetry", bid, f, limits.slice_rows):
        sp.write(
            raw.select(
                "ts",
                "site_id",
                "unit_id",
                "batch_id",
                "tag",
                "value",
                "uom",
                "quality",
                failed_check=pl.lit("processing_failed"),
                failed_checks=pl.lit("processing_failed"),
                offending_value=pl.lit(detail),
                raw="raw",
                extra="extra",
                source_file="source_file",
                row_hash="row_hash",
                spec_version=pl.lit(spec.version),
                processed_at=pl.lit(now, UTC_US),
            )
        )
    _commit_outputs(lake, bid, f, {"telemetry_quarantine": sp}, run_id)
    _log_file(lake, bid, f, sp.rows, 0, sp.rows, spec, run_id, now)
    rep.files_processed += 1
    rep.files.append(f)
    rep.rows_in += sp.rows
    rep.rows_quarantined += sp.rows
    rep.failed_checks["processing_failed"] += sp.rows
    rep.batches.add(bid)


def _segments_by_tag(
    cpp: Spool, cpp_idx: Sequence[int], spec: CppSpec, consts: dict[str, str]
) -> pl.DataFrame:
    """``excursion_segments_of`` of one file, one CPP tag at a time (it groups by file and tag)."""
    parts = []
    for t in cpp_idx if cpp.rows else []:
        got = list(cpp.frames(pl.col("tag_idx") == t))
        rows = pl.concat(got, how="vertical") if got else pl.DataFrame()
        if rows.height:
            parts.append(excursion_segments_of(rows, spec, consts))
    if not parts:
        return pl.DataFrame(schema=SEGMENT_SCHEMA)
    return pl.concat(parts, how="vertical").sort("start_ts")
