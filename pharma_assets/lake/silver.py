"""Silver: typed, unit-normalised, contract-checked data, built incrementally.

Telemetry (per batch partition) is processed once per bronze source file: the files the
bronze ledger accepted and ``silver/telemetry_log`` has not recorded yet. One pass over
those rows only writes five tables. Files are taken in groups of about a million readings
(across batches in a backfill), one commit per table and group; every row carries its
``source_file``, so a rerun after a crash finds, per table, the files whose rows are
already there (``Lake.sources_in``) and completes exactly what was missing (an empty
output is not committed at all once its table exists: the rerun derives the same
nothing). The files are recorded in ``telemetry_log`` last:

- ``telemetry``: valid readings, canonical units, with phase and spec version;
- ``telemetry_quarantine``: rows that failed the contract, with the failed check(s) and
  the offending value;
- ``excursion_segments``: runs of valid CPP readings outside the normal operating range
  within one file (gold joins adjacent segments into excursions);
- ``telemetry_stats``: per file, tag and phase: count, sum, sum of squares, min, max,
  first/last reading (gold derives Cpk and last values without rereading history);
- ``batch_timeline``: one row per batch per elapsed minute, a column per tag, with phase.

MES events, LIMS results and CMMS records are small and rebuilt whole from bronze on each
run (``batches``, ``batch_phases``, ``event_quarantine``, ``lab_results``,
``lab_quarantine``, ``maintenance_events``).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pharma_assets.process.vocabulary import PHASES

from . import bronze
from .contracts import accepted_contract, route, telemetry_contract
from .input_rules import raw_reason, raw_reason_expr
from .landing_scan import files_for_batch
from .specs import ALL_PHASES, ONE_PHASE, CppSpec, PhaseRule
from .storage import UTC_US, Lake, Spool, scratch_dir

LAYER = "silver"
TELEMETRY_TABLES = (
    "telemetry",
    "telemetry_quarantine",
    "excursion_segments",
    "telemetry_stats",
    "batch_timeline",
)
SILVER_TELEMETRY_COLUMNS = (
    "ts", "site_id", "unit_id", "batch_id", "tag", "value", "uom", "quality", "phase",
    "spec_version", "source_file", "row_hash", "processed_at",
)  # fmt: skip
MES_EVENT_TYPES = ("batch_start", "phase_start", "batch_end")


# ------------------------------------------------------------------------------ batches
BATCH_SCHEMA = {
    "batch_id": pl.String(), "site_id": pl.String(), "unit_id": pl.String(), "product": pl.String(),
    "recipe_id": pl.String(), "recipe_version": pl.Int64(), "start_ts": UTC_US,
    "planned_end_ts": UTC_US, "end_ts": UTC_US, "status": pl.String(), "end_reason": pl.String(),
    "media_lot": pl.String(), "feed_lot": pl.String(), "inoculum_lot": pl.String(),
    "base_lot": pl.String(), "material_lots": pl.String(), "operator": pl.String(),
    "current_phase": pl.String(), "current_phase_start": UTC_US,
}  # fmt: skip
PHASE_SCHEMA = {"batch_id": pl.String(), "unit_id": pl.String(), "phase": pl.String(),
                "start_ts": UTC_US, "end_ts": UTC_US, "phase_source": pl.String()}  # fmt: skip
EVENT_Q_SCHEMA = {"event_id": pl.String(), "batch_id": pl.String(), "event_type": pl.String(),
                  "source_file": pl.String(), "reason": pl.String(), "detail": pl.String()}  # fmt: skip


def derive_batches(
    mes: pl.DataFrame, phase_rule: PhaseRule | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(batches, batch_phases, event_quarantine) from bronze MES rows.

    Phases come from the MES ``phase_start`` events (``phase_source`` = ``mes``); a batch
    with none gets the phases of the spec's ``phase_rule`` (``phase_source`` = the rule,
    e.g. ``rule:one_phase``), so its CPPs are judged and its Cpk computed."""
    rule = phase_rule or PhaseRule()
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    per_batch: dict[str, list[dict[str, Any]]] = {}
    for r in mes.sort("event_ts", "ingested_at", nulls_last=True).iter_rows(named=True):

        def bad(reason: str, detail: str, r: dict[str, Any] = r) -> None:
            quarantine.append({"event_id": r["event_id"], "batch_id": r["batch_id"], "event_type": r["event_type"],
                               "source_file": r["source_file"], "reason": reason, "detail": detail})  # fmt: skip

        if r.get("raw"):
            bad(raw_reason(r["raw"]) or "type_error", r["raw"])
        elif r["event_type"] not in MES_EVENT_TYPES:
            bad("unknown_event_type", f"{r['event_type']!r} is not one of {MES_EVENT_TYPES}")
        elif r["event_id"] in seen:
            bad("duplicate_event", f"event {r['event_id']} already recorded")
        elif r["event_ts"] is None or r["batch_id"] is None:
            bad("missing_field", "event_ts and batch_id are required")
        else:
            payload = json.loads(r["payload"]) if r.get("payload") else {}
            if r["event_type"] == "phase_start" and payload.get("phase") not in PHASES:
                bad("unknown_phase", f"phase {payload.get('phase')!r} is not one of {PHASES}")
                continue
            seen.add(r["event_id"])
            per_batch.setdefault(r["batch_id"], []).append({**r, "payload": payload})
    batches, phases = [], []
    for bid, evs in per_batch.items():
        start = next((e for e in evs if e["event_type"] == "batch_start"), None)
        if start is None:
            for e in evs:
                quarantine.append({"event_id": e["event_id"], "batch_id": bid, "event_type": e["event_type"],
                                   "source_file": e["source_file"], "reason": "no_batch_start",
                                   "detail": "no batch_start event has landed for this batch"})  # fmt: skip
            continue
        for e in evs:  # a second batch_start of the batch is quarantined, never ignored
            if e["event_type"] == "batch_start" and e is not start:
                quarantine.append({"event_id": e["event_id"], "batch_id": bid, "event_type": e["event_type"],
                                   "source_file": e["source_file"], "reason": "duplicate_batch_start",
                                   "detail": f"batch already started by {start['event_id']} at "
                                             f"{start['event_ts']:%Y-%m-%dT%H:%M:%S}Z"})  # fmt: skip
        end = next((e for e in evs if e["event_type"] == "batch_end"), None)
        p = start["payload"]
        lots = p.get("material_lots") or {}
        ph = sorted(
            (e for e in evs if e["event_type"] == "phase_start"), key=lambda e: e["event_ts"]
        )
        for i, e in enumerate(ph):
            nxt = ph[i + 1]["event_ts"] if i + 1 < len(ph) else (end["event_ts"] if end else None)
            phases.append({"batch_id": bid, "unit_id": start["unit_id"], "phase": e["payload"]["phase"],
                           "start_ts": e["event_ts"], "end_ts": nxt, "phase_source": "mes"})  # fmt: skip
        ruled = (
            [] if ph else _rule_phases(rule, start["event_ts"], end["event_ts"] if end else None)
        )
        for name, t0, t1 in ruled:
            phases.append({"batch_id": bid, "unit_id": start["unit_id"], "phase": name,
                           "start_ts": t0, "end_ts": t1, "phase_source": rule.name})  # fmt: skip
        batches.append({
            "batch_id": bid, "site_id": start["site_id"], "unit_id": start["unit_id"],
            "product": p.get("product"), "recipe_id": p.get("recipe_id"),
            "recipe_version": p.get("recipe_version"), "start_ts": start["event_ts"],
            "planned_end_ts": _parse_ts(p.get("planned_end_ts")),
            "end_ts": end["event_ts"] if end else None,
            "status": (end["payload"].get("status") or "complete") if end else "running",
            "end_reason": end["payload"].get("reason") if end else None,
            "media_lot": lots.get("media_lot"), "feed_lot": lots.get("feed_lot"),
            "inoculum_lot": lots.get("inoculum_lot"), "base_lot": lots.get("base_lot"),
            "material_lots": json.dumps(lots, sort_keys=True), "operator": p.get("operator"),
            "current_phase": ph[-1]["payload"]["phase"] if ph else (ruled[-1][0] if ruled else None),
            "current_phase_start": ph[-1]["event_ts"] if ph else (ruled[-1][1] if ruled else None),
        })  # fmt: skip
    return (
        pl.DataFrame(batches, schema=BATCH_SCHEMA).sort("start_ts"),
        pl.DataFrame(phases, schema=PHASE_SCHEMA).sort("batch_id", "start_ts"),
        pl.DataFrame(quarantine, schema=EVENT_Q_SCHEMA),
    )


def _rule_phases(
    rule: PhaseRule, start: datetime, end: datetime | None
) -> list[tuple[str, datetime, datetime | None]]:
    """(phase, start, end) of a batch without MES phase events, by the spec's phase rule."""
    if rule.kind == "none":
        return []
    if rule.kind == "one_phase":
        return [(ONE_PHASE, start, end)]
    out: list[tuple[str, datetime, datetime | None]] = []
    for name, h in sorted(rule.starts_h.items(), key=lambda kv: kv[1]):
        t0 = start + timedelta(hours=h)
        if end is not None and t0 >= end:
            break
        out.append((name, t0, None))
    return [(n, t0, out[i + 1][1] if i + 1 < len(out) else end) for i, (n, t0, _) in enumerate(out)]


def _parse_ts(v: Any) -> datetime | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _in(col: str, values: Sequence[str]) -> str:
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{col} IN ({quoted})"


def _replace_batches(
    lake: Lake,
    name: str,
    df: pl.DataFrame,
    batch_ids: Sequence[str] | None,
    sources: Sequence[str] = (),
) -> None:
    """Overwrite the rows of these batches (all rows when batch_ids is None)."""
    pred = None if batch_ids is None else _in("batch_id", batch_ids)
    lake.overwrite(LAYER, name, df, predicate=pred, source_files=sources)


def build_batches(
    lake: Lake, batch_ids: Sequence[str] | None = None, phase_rule: PhaseRule | None = None
) -> dict[str, int]:
    """Rebuild the batches (all, or only ``batch_ids``) from their bronze MES events."""
    where = None if batch_ids is None else pl.col("batch_id").is_in(list(batch_ids))
    mes = lake.read(bronze.LAYER, "mes", filter_expr=where)
    if mes is None:
        return {"batches": 0, "events_quarantined": 0}
    batches, phases, q = derive_batches(mes, phase_rule)
    with lake.lock("silver-batches"):
        # the batches table carries the markers of the MES files it reflects
        files = sorted(set(mes["source_file"].to_list()))
        _replace_batches(lake, "batches", batches, batch_ids, files)
        _replace_batches(lake, "batch_phases", phases, batch_ids)
        _replace_batches(lake, "event_quarantine", q, batch_ids)
    counts = Counter(batches["status"].to_list())
    return {"batches": batches.height, "events_in": mes.height, "events_quarantined": q.height,
            **{f"status_{k}": v for k, v in counts.items()}}  # fmt: skip


# ------------------------------------------------------------------------------ lab results
def derive_lab_results(lims: pl.DataFrame, spec: CppSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows = [
        {"sample_type": st, "analyte": a, "spec_uom": s.uom, "phys_lo": s.physical[0], "phys_hi": s.physical[1],
         "spec_lo": s.spec[0] if s.spec else None, "spec_hi": s.spec[1] if s.spec else None}
        for st, table in (("in_process", spec.lab.in_process), ("release", spec.lab.release))
        for a, s in table.items()
    ]  # fmt: skip
    lim = pl.DataFrame(rows, schema={"sample_type": pl.String, "analyte": pl.String, "spec_uom": pl.String,
                                     "phys_lo": pl.Float64, "phys_hi": pl.Float64, "spec_lo": pl.Float64,
                                     "spec_hi": pl.Float64})  # fmt: skip
    df = lims.join(lim, on=["sample_type", "analyte"], how="left")
    reason = (
        pl.when(pl.col("raw").is_not_null()).then(raw_reason_expr())
        .when(pl.col("spec_uom").is_null()).then(pl.lit("unknown_analyte"))
        .when(pl.col("uom") != pl.col("spec_uom")).then(pl.lit("unknown_uom"))
        .when(~pl.col("value").is_finite().fill_null(False)).then(pl.lit("value_not_finite"))
        .when(~pl.col("value").is_between(pl.col("phys_lo"), pl.col("phys_hi"))).then(pl.lit("physical_limits"))
        .when(pl.struct("sample_id", "analyte").is_first_distinct().not_()).then(pl.lit("duplicate_result"))
    )  # fmt: skip
    offending = (
        pl.when(pl.col("raw").is_not_null()).then(pl.col("raw"))
        .when(pl.col("failed_check") == "unknown_analyte").then(pl.col("analyte"))
        .when(pl.col("failed_check") == "unknown_uom").then(pl.col("uom"))
        .otherwise(pl.col("value").cast(pl.String))
    )  # fmt: skip
    df = df.sort("sample_ts", "ingested_at", nulls_last=True).with_columns(failed_check=reason)
    bad = df.filter(pl.col("failed_check").is_not_null()).with_columns(offending_value=offending)
    good = df.filter(pl.col("failed_check").is_null()).with_columns(
        within_spec=pl.when(pl.col("sample_type") == "release").then(
            pl.col("value").ge(pl.col("spec_lo").fill_null(float("-inf")))
            & pl.col("value").le(pl.col("spec_hi").fill_null(float("inf")))
        ),
        spec_version=pl.lit(spec.version),
    )
    keep = [
        "sample_id",
        "site_id",
        "unit_id",
        "batch_id",
        "sample_ts",
        "sample_type",
        "analyte",
        "value",
        "uom",
    ]
    return (
        good.select(*keep, "spec_lo", "spec_hi", "within_spec", "spec_version", "source_file"),
        bad.select(*keep, "failed_check", "offending_value", "source_file"),
    )


def build_lab_results(
    lake: Lake, spec: CppSpec, batch_ids: Sequence[str] | None = None
) -> dict[str, int]:
    where = None if batch_ids is None else pl.col("batch_id").is_in(list(batch_ids))
    lims = lake.read(bronze.LAYER, "lims", filter_expr=where)
    if lims is None:
        return {"results": 0, "quarantined": 0}
    good, bad = derive_lab_results(lims, spec)
    with lake.lock("silver-lab"):
        files = sorted(set(lims["source_file"].to_list()))
        _replace_batches(lake, "lab_results", good, batch_ids, files)
        _replace_batches(lake, "lab_quarantine", bad, batch_ids)
    out_of_spec = good.filter(pl.col("within_spec").not_().fill_null(False)).height
    return {"rows_in": lims.height, "results": good.height, "quarantined": bad.height,
            "release_out_of_spec": out_of_spec}  # fmt: skip


def build_maintenance(lake: Lake) -> dict[str, int]:
    cmms = lake.read(bronze.LAYER, "cmms")
    if cmms is None:
        return {"events": 0}
    rows = []
    for r in cmms.iter_rows(named=True):
        p = json.loads(r["payload"]) if r.get("payload") else {}
        rows.append({
            "work_order_id": r["work_order_id"], "event_ts": r["event_ts"], "site_id": r["site_id"],
            "unit_id": r["unit_id"], "equipment_id": r["equipment_id"], "event_type": r["event_type"],
            "part": p.get("part"), "description": p.get("description"),
            "downtime_h": _float(p.get("downtime_h")), "run_hours_at_event": _float(p.get("run_hours_at_event")),
            "source_file": r["source_file"], "valid": r.get("raw") is None,
        })  # fmt: skip
    schema: dict[str, Any] = {"work_order_id": pl.String, "event_ts": UTC_US, "site_id": pl.String, "unit_id": pl.String,
              "equipment_id": pl.String, "event_type": pl.String, "part": pl.String, "description": pl.String,
              "downtime_h": pl.Float64, "run_hours_at_event": pl.Float64, "source_file": pl.String,
              "valid": pl.Boolean}  # fmt: skip
    df = pl.DataFrame(rows, schema=schema).unique(
        "work_order_id", keep="first", maintain_order=True
    )
    files = sorted(set(cmms["source_file"].to_list()))
    lake.overwrite(LAYER, "maintenance_events", df.sort("event_ts"), source_files=files)
    return {"events": df.height, "invalid": int((~df["valid"]).sum())}


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------ telemetry
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
    return _not_processed(lake, log, batch_ids).sort("batch_id", "source_file")


def _not_processed(lake: Lake, files: pl.DataFrame, batch_ids: Sequence[str]) -> pl.DataFrame:
    """The rows of ``files`` (column ``source_file``) that silver/telemetry_log has not recorded."""
    done = lake.read(LAYER, "telemetry_log", ["source_file"], partition=("batch_id", batch_ids))
    if done is not None and done.height:
        files = files.join(done, on="source_file", how="anti")
    return files


def _tag_index(spec: CppSpec) -> dict[str, int]:
    return {t: i for i, t in enumerate(spec.tags)}


def _gather(values: list[Any], idx: pl.Series, dtype: pl.DataType) -> pl.Series:
    """values[idx] per row; null where idx is null (unknown tag)."""
    table = pl.Series(values, dtype=dtype)
    return table.gather(idx)


def prepare(rows: pl.DataFrame, spec: CppSpec, batches: pl.DataFrame, phases: pl.DataFrame,
            existing_keys: pl.DataFrame | None, now: datetime) -> pl.DataFrame:  # fmt: skip
    """Normalise units and attach phase, batch window and duplicate flag for the contract.

    Works batch by batch so that the batch window and the phase boundaries are scalars, and
    keys on integers (tag index, microseconds) rather than strings: this is the hot path of
    ingestion. Adds ``tag_idx``, ``phase_idx`` and ``_key`` (ts_us * 1024 + tag_idx) for the
    aggregations that follow.
    """
    if rows.height == 0 or rows["batch_id"].n_unique() <= 1:
        return _prepare_batch(rows, spec, batches, phases, existing_keys, now)
    parts = rows.partition_by("batch_id", maintain_order=True)
    return pl.concat(
        [_prepare_batch(p, spec, batches, phases, existing_keys, now) for p in parts],
        how="vertical",
    )


def _prepare_batch(rows: pl.DataFrame, spec: CppSpec, batches: pl.DataFrame, phases: pl.DataFrame,
                   existing_keys: pl.DataFrame | None, now: datetime) -> pl.DataFrame:  # fmt: skip
    tags = list(spec.tags)
    tix = _tag_index(spec)
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
                scale=pl.coalesce("scale", key.replace_strict(scales, default=None, return_dtype=pl.Float64)),
                offset=pl.coalesce("offset", key.replace_strict(offsets, default=None, return_dtype=pl.Float64)),
            )  # fmt: skip
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
    dup = pl.col("_key").is_not_null() & ~pl.col("_key").is_first_distinct()
    if existing_keys is not None and existing_keys.height:
        ek = existing_keys.select(
            _key=pl.col("ts").dt.epoch("us") * 1024
            + pl.col("tag").replace_strict(tix, default=None, return_dtype=pl.Int64)
        )["_key"].drop_nulls()
        dup = dup | pl.col("_key").is_in(ek.implode())
    df = df.with_columns(is_dup=dup.fill_null(False))
    # phase: the last phase that started at or before the reading
    ph = phases.filter(pl.col("batch_id") == bid).sort("start_ts")
    phase = pl.lit(None, pl.String)
    phase_start = pl.lit(None, UTC_US)
    phase_idx = pl.lit(None, pl.Int8)
    for name, ts0 in ph.select("phase", "start_ts").iter_rows():
        after = pl.col("ts") >= pl.lit(ts0, UTC_US)
        phase = pl.when(after).then(pl.lit(name)).otherwise(phase)
        phase_start = pl.when(after).then(pl.lit(ts0, UTC_US)).otherwise(phase_start)
        phase_idx = (
            pl.when(after).then(pl.lit(ALL_PHASES.index(name), pl.Int8)).otherwise(phase_idx)
        )
    return df.with_columns(phase=phase, phase_start=phase_start, phase_idx=phase_idx)


def _limits_by_key(spec: CppSpec) -> pl.DataFrame:
    """NOR/PAR per (tag_idx, phase_idx) for the CPPs."""
    tix = _tag_index(spec)
    rows = spec.phase_limits_rows()
    return pl.DataFrame(rows).select(
        tag_idx=pl.col("tag").replace_strict(tix, return_dtype=pl.UInt32),
        phase_idx=pl.col("phase").replace_strict({p: i for i, p in enumerate(ALL_PHASES)}, return_dtype=pl.Int8),
        target=pl.col("target"), nor_lo=pl.col("nor_lo"), nor_hi=pl.col("nor_hi"),
        par_lo=pl.col("par_lo"), par_hi=pl.col("par_hi"),
    )  # fmt: skip


def _segments(
    valid: pl.DataFrame, spec: CppSpec, consts: dict[str, str] | None = None
) -> pl.DataFrame:
    """Runs of out-of-NOR CPP readings per (file, tag); expects prepare()'s columns and _file.

    Without the text columns (``source_file``, ``batch_id``, ``unit_id``, ``tag``,
    ``phase``: one file's CPP readings as spooled by ``_process_sliced``), the tag and phase
    names come from their indexes and the others from ``consts``.
    """
    texts = [
        c for c in ("source_file", "batch_id", "unit_id", "tag", "phase") if c in valid.columns
    ]
    tix = _tag_index(spec)
    cpp_idx = [tix[t] for t in spec.cpp_tags]
    settle = int(spec.settle_minutes * 60_000_000)
    cpp = valid.filter(pl.col("tag_idx").is_in(cpp_idx) & pl.col("phase_idx").is_not_null())
    if cpp.height == 0:
        return pl.DataFrame(schema=SEGMENT_SCHEMA)
    keys = ["_file", "tag_idx"]
    cpp = (
        cpp.select("_file", "tag_idx", "phase_idx", "ts", "value", "phase_start", *texts)
        .join(_limits_by_key(spec), on=["tag_idx", "phase_idx"], how="left")
        .sort("_file", "tag_idx", "ts")
        .with_columns(
            judged=(pl.col("ts") - pl.col("phase_start")).dt.total_microseconds() >= settle,
            level=pl.when(~pl.col("value").is_between(pl.col("par_lo"), pl.col("par_hi"))).then(2)
            .when(~pl.col("value").is_between(pl.col("nor_lo"), pl.col("nor_hi"))).then(1)
            .otherwise(0),
        )
        .with_columns(level=pl.when(pl.col("judged")).then(pl.col("level")).otherwise(0))
    )  # fmt: skip
    cpp = cpp.with_columns(
        out=pl.col("level") > 0,
        period_s=pl.col("ts").diff().over(keys).dt.total_seconds().median().over(keys),
    ).with_columns(
        run=(pl.col("out") != pl.col("out").shift(1).over(keys))
        .fill_null(True)
        .cum_sum()
        .over(keys)
    )
    seg = (
        cpp.filter(pl.col("out"))
        .with_columns(dev=(pl.col("value") - pl.col("target")).abs())
        .group_by(*keys, "run")
        .agg(
            *[pl.col(c).first() for c in texts], first_phase_idx=pl.col("phase_idx").first(),
            start_ts=pl.col("ts").min(), end_ts=pl.col("ts").max(), n_readings=pl.len(),
            n_outside_par=(pl.col("level") == 2).sum(), max_level=pl.col("level").max(),
            peak_value=pl.col("value").sort_by("dev").last(), target=pl.col("target").first(),
            nor_lo=pl.col("nor_lo").first(), nor_hi=pl.col("nor_hi").first(),
            par_lo=pl.col("par_lo").first(), par_hi=pl.col("par_hi").first(),
            sample_period_s=pl.col("period_s").first().fill_null(60.0),
        )
    )  # fmt: skip
    names = {
        "tag": pl.col("tag_idx").replace_strict(dict(enumerate(spec.tags)), return_dtype=pl.String),
        "phase": pl.col("first_phase_idx").replace_strict(
            dict(enumerate(ALL_PHASES)), default=None, return_dtype=pl.String
        ),
        **{
            c: pl.lit((consts or {}).get(c), pl.String)
            for c in ("source_file", "batch_id", "unit_id")
        },
    }
    seg = seg.with_columns(**{c: e for c, e in names.items() if c not in texts})
    return seg.select(list(SEGMENT_SCHEMA)).cast(SEGMENT_SCHEMA).sort("start_ts")  # type: ignore[arg-type]


SEGMENT_SCHEMA = {
    "source_file": pl.String(), "batch_id": pl.String(), "unit_id": pl.String(), "tag": pl.String(),
    "phase": pl.String(), "start_ts": UTC_US, "end_ts": UTC_US, "n_readings": pl.Int64(),
    "n_outside_par": pl.Int64(), "max_level": pl.Int32(), "peak_value": pl.Float64(),
    "target": pl.Float64(), "nor_lo": pl.Float64(), "nor_hi": pl.Float64(), "par_lo": pl.Float64(),
    "par_hi": pl.Float64(), "sample_period_s": pl.Float64(),
}  # fmt: skip


def _stats(valid: pl.DataFrame, files: list[str], spec: CppSpec) -> pl.DataFrame:
    """Per file, tag and phase aggregates (rows in any order: first/last go by ``ts``)."""
    return _stats_finish(_stats_agg(valid), files, spec)


def _stats_agg(valid: pl.DataFrame) -> pl.DataFrame:
    return valid.group_by("_file", "tag_idx", "phase_idx").agg(
        n=pl.len(), sum=pl.col("value").sum(), sumsq=(pl.col("value") ** 2).sum(),
        min=pl.col("value").min(), max=pl.col("value").max(), first_ts=pl.col("ts").min(),
        last_ts=pl.col("ts").max(), last_value=pl.col("value").get(pl.col("ts").arg_max()),
        batch_id=pl.col("batch_id").first(), unit_id=pl.col("unit_id").first(),
    )  # fmt: skip


def _stats_merge(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Partial ``_stats_agg`` of consecutive slices -> the aggregate of all their rows (the
    last value is the first slice's reading at the latest time, as arg_max would pick)."""
    df = pl.concat(parts, how="vertical")
    return df.group_by("_file", "tag_idx", "phase_idx", maintain_order=True).agg(
        n=pl.col("n").sum().cast(df.schema["n"]), sum=pl.col("sum").sum(),
        sumsq=pl.col("sumsq").sum(), min=pl.col("min").min(), max=pl.col("max").max(),
        first_ts=pl.col("first_ts").min(), last_ts=pl.col("last_ts").max(),
        last_value=pl.col("last_value").get(pl.col("last_ts").arg_max()),
        batch_id=pl.col("batch_id").first(), unit_id=pl.col("unit_id").first(),
    )  # fmt: skip


def _stats_finish(agg: pl.DataFrame, files: list[str], spec: CppSpec) -> pl.DataFrame:
    tags = list(spec.tags)
    return agg.select(
        source_file=pl.col("_file").replace_strict(dict(enumerate(files)), return_dtype=pl.String),
        batch_id="batch_id", unit_id="unit_id",
        tag=pl.col("tag_idx").replace_strict(dict(enumerate(tags)), return_dtype=pl.String),
        phase=pl.col("phase_idx").replace_strict(dict(enumerate(ALL_PHASES)), default=None, return_dtype=pl.String),
        n="n", sum="sum", sumsq="sumsq", min="min", max="max", first_ts="first_ts", last_ts="last_ts",
        last_value="last_value",
    ).sort("source_file", "tag", "phase")  # fmt: skip


def _timeline(valid: pl.DataFrame, files: list[str], spec: CppSpec) -> pl.DataFrame:
    mins = valid.select(
        "_file", "tag_idx", "phase_idx", "value", "batch_start", "batch_id", "unit_id", "ts",
        elapsed_min=((pl.col("ts") - pl.col("batch_start")).dt.total_seconds() // 60).cast(pl.Int32),
    )  # fmt: skip
    wide = mins.pivot(
        on="tag_idx", index=["_file", "elapsed_min"], values="value", aggregate_function="mean"
    )
    ph = mins.group_by("_file", "elapsed_min").agg(
        phase_idx=pl.col("phase_idx").get(pl.col("ts").arg_min()), batch_start=pl.col("batch_start").first(),
        batch_id=pl.col("batch_id").first(), unit_id=pl.col("unit_id").first(),
    )  # fmt: skip
    return _timeline_finish(wide, ph, files, spec)


def _timeline_partial(valid: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One slice's minute sums and counts per tag, and each minute's first reading's phase."""
    mins = valid.select(
        "_file", "tag_idx", "phase_idx", "value", "batch_start", "batch_id", "unit_id", "ts",
        elapsed_min=((pl.col("ts") - pl.col("batch_start")).dt.total_seconds() // 60).cast(pl.Int32),
    )  # fmt: skip
    sums = mins.group_by("_file", "elapsed_min", "tag_idx").agg(
        s=pl.col("value").sum(), c=pl.col("value").count()
    )
    ph = mins.group_by("_file", "elapsed_min").agg(
        ts0=pl.col("ts").min(), phase_idx=pl.col("phase_idx").get(pl.col("ts").arg_min()),
        batch_start=pl.col("batch_start").first(), batch_id=pl.col("batch_id").first(),
        unit_id=pl.col("unit_id").first(),
    )  # fmt: skip
    return sums, ph


def _timeline_merge(parts: list[tuple[pl.DataFrame, pl.DataFrame]], files: list[str],
                    spec: CppSpec) -> pl.DataFrame:  # fmt: skip
    """``_timeline`` of consecutive slices from their ``_timeline_partial``s."""
    sums = pl.concat([p[0] for p in parts], how="vertical")
    means = sums.group_by("_file", "elapsed_min", "tag_idx").agg(
        value=pl.when(pl.col("c").sum() > 0).then(pl.col("s").sum() / pl.col("c").sum())
    )
    wide = means.pivot(
        on="tag_idx", index=["_file", "elapsed_min"], values="value", aggregate_function="first"
    )
    ph = (
        pl.concat([p[1] for p in parts], how="vertical")
        .group_by("_file", "elapsed_min", maintain_order=True)
        .agg(
            phase_idx=pl.col("phase_idx").get(pl.col("ts0").arg_min()),
            batch_start=pl.col("batch_start").first(), batch_id=pl.col("batch_id").first(),
            unit_id=pl.col("unit_id").first(),
        )
    )  # fmt: skip
    return _timeline_finish(wide, ph, files, spec)


def _timeline_finish(wide: pl.DataFrame, ph: pl.DataFrame, files: list[str],
                     spec: CppSpec) -> pl.DataFrame:  # fmt: skip
    tags = list(spec.tags)
    wide = wide.rename({c: tags[int(c)] for c in wide.columns if c not in ("_file", "elapsed_min")})
    wide = wide.join(ph, on=["_file", "elapsed_min"], how="left")
    for t in tags:
        if t not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(t))
    cols = [
        pl.col("batch_id"),
        pl.col("unit_id"),
        pl.col("elapsed_min"),
        (pl.col("batch_start") + pl.duration(minutes=pl.col("elapsed_min"))).alias("minute_ts"),
        pl.col("phase_idx")
        .replace_strict(dict(enumerate(ALL_PHASES)), default=None, return_dtype=pl.String)
        .alias("phase"),
        *[pl.col(t).cast(pl.Float64) for t in sorted(tags)],
        pl.col("_file")
        .replace_strict(dict(enumerate(files)), return_dtype=pl.String)
        .alias("source_file"),
    ]
    return wide.select(cols).sort("batch_id", "elapsed_min")  # fmt: skip


def process_telemetry(
    lake: Lake,
    batch_ids: Sequence[str],
    spec: CppSpec,
    run_id: str,
    now: datetime | None = None,
    max_rows: int = 1_000_000,  # rows per validation group: bounds peak memory (docs/benchmarks.md)
    limits: bronze.IngestLimits | None = None,
) -> SilverReport:
    """Validate the not-yet-processed bronze telemetry of these batches into silver.

    Files are taken in groups of about ``max_rows`` readings, across batches when a run
    covers many (a backfill): each group is one read of bronze, one validation per batch
    and one commit per silver table, so a bulk load does not pay six commits per batch. The
    group holds the locks of all its batches (taken in sorted order: no deadlock between
    runs whose groups overlap). A file of more than ``limits.slice_rows`` rows is processed
    alone, slice by slice (``_process_large``), so memory does not grow with a file's size.
    """
    limits = limits or bronze.IngestLimits.from_env()
    rep = SilverReport()
    now = now or datetime.now(UTC)
    # one read of both logs for all partitions; rechecked per group under its batches' locks
    todo = pending_telemetry_files(lake, list(batch_ids))
    if todo.height == 0:
        return rep
    # only the rows of the batches with work (the whole tables grow with the lake)
    todo_ids = todo["batch_id"].unique(maintain_order=True).to_list()
    in_todo = pl.col("batch_id").is_in(todo_ids)
    batches = lake.read(LAYER, "batches", filter_expr=in_todo)
    phases = lake.read(LAYER, "batch_phases", filter_expr=in_todo)
    if batches is None or phases is None:
        batches, phases = pl.DataFrame(schema=BATCH_SCHEMA), pl.DataFrame(schema=PHASE_SCHEMA)
    known = set(batches["batch_id"].to_list())
    deferred = todo.filter(~pl.col("batch_id").is_in(list(known)))
    rep.files_deferred += deferred.height  # they wait for their batch_start event
    group: list[tuple[str, str]] = []
    rows = 0
    for bid, f, n in (
        todo.filter(pl.col("batch_id").is_in(list(known)))
        .select("batch_id", "source_file", "rows")
        .iter_rows()
    ):
        if (n or 0) > limits.slice_rows:
            if group:
                _process_group(lake, group, spec, batches, phases, run_id, now, rep)
                group, rows = [], 0
            _process_large(lake, bid, f, spec, batches, phases, run_id, now, rep, limits)
            continue
        group.append((bid, f))
        rows += n or 0
        if rows >= max_rows:
            _process_group(lake, group, spec, batches, phases, run_id, now, rep)
            group, rows = [], 0
    if group:
        _process_group(lake, group, spec, batches, phases, run_id, now, rep)
    return rep


def _process_group(lake: Lake, group: list[tuple[str, str]], spec: CppSpec, batches: pl.DataFrame,
                   phases: pl.DataFrame, run_id: str, now: datetime, rep: SilverReport) -> None:  # fmt: skip
    ids = sorted({b for b, _ in group})
    with contextlib.ExitStack() as stack:
        for bid in ids:
            stack.enter_context(lake.lock(f"silver-telemetry-{bid}"))
        # recheck under the locks: another run may have processed some of them meanwhile
        # (files accepted by bronze since the first read wait for the next run)
        pending = _not_processed(
            lake, pl.DataFrame(group, schema=["batch_id", "source_file"], orient="row"), ids
        )
        if pending.height:
            _process_files(lake, pending.sort("batch_id", "source_file"), spec, batches, phases,
                           run_id, now, rep)  # fmt: skip


def _process_files(lake: Lake, pending: pl.DataFrame, spec: CppSpec, batches: pl.DataFrame,
                   phases: pl.DataFrame, run_id: str, now: datetime, rep: SilverReport) -> None:  # fmt: skip
    """One group of files (columns batch_id, source_file) -> one commit per silver table."""
    all_files = pending["source_file"].to_list()
    ids = pending["batch_id"].unique(maintain_order=True).to_list()
    raw_all = lake.read(bronze.LAYER, "telemetry", filter_expr=pl.col("batch_id").is_in(ids)
                        & pl.col("source_file").is_in(all_files))  # fmt: skip
    assert raw_all is not None
    # after a crash inside this group, files whose readings are already in silver/telemetry
    # go first: a reading repeated by another file then keeps the copy silver already holds
    written = lake.sources_in(LAYER, "telemetry", all_files, ids)
    per_batch: dict[str, list[str]] = {bid: [] for bid in ids}
    for b, f in pending.select("batch_id", "source_file").iter_rows():
        per_batch[b].append(f)
    files: list[str] = []
    for bid in ids:
        fs = per_batch[bid]
        files += [f for f in fs if f in written] + [f for f in fs if f not in written]
    order = {f: i for i, f in enumerate(files)}
    # a file's rows are contiguous in bronze (one file is one slice of one commit): number
    # the runs of equal names (adjacent comparisons) and map the few runs to file order,
    # instead of hashing the name of every row
    runs = raw_all["source_file"].rle_id()
    run_file = (
        pl.DataFrame({"run": runs, "source_file": raw_all["source_file"]})
        .unique("run", keep="first")
        .with_columns(pl.col("source_file").replace_strict(order, return_dtype=pl.UInt32))
        .sort("run")["source_file"]
    )
    raw_all = raw_all.with_columns(_file=run_file.gather(runs))
    # rows in file order (an earlier file's reading wins a duplicate); a stable sort keeps
    # each file's own row order, and is skipped when the scan already returned that order
    if not raw_all["_file"].is_sorted():
        raw_all = raw_all.sort("_file", maintain_order=True)
    goods, bads = [], []
    # files are in batch order, so each batch is a contiguous (zero-copy) slice
    counts = raw_all.select("_file").group_by("_file").len()
    file_rows = dict(zip(counts["_file"], counts["len"], strict=True))
    slices, offset = [], 0
    for bid in ids:
        n = sum(file_rows.get(order[f], 0) for f in per_batch[bid])
        slices.append(raw_all.slice(offset, n))
        offset += n
    for raw in (r for r in slices if r.height):
        bid = raw["batch_id"][0]
        existing = lake.read(
            LAYER, "telemetry", ["unit_id", "tag", "ts"],
            filter_expr=(pl.col("batch_id") == bid) & pl.col("ts").is_between(raw["ts"].min(), raw["ts"].max())
            & ~pl.col("source_file").is_in(per_batch[bid]),
        )  # fmt: skip
        df = _prepare_batch(raw, spec, batches, phases, existing, now)
        good, bad = route(df, telemetry_contract(spec))
        accepted_contract(spec).validate(
            good.select("ts", "unit_id", "batch_id", "tag", "value", "uom", "_key")
        )
        goods.append(good)
        bads.append(bad)
    good = pl.concat(goods, how="vertical_relaxed")
    bad = pl.concat(bads, how="vertical_relaxed")
    processed_at = pl.lit(now, UTC_US)
    valid = good.with_columns(spec_version=pl.lit(spec.version), processed_at=processed_at)
    quarantine = _quarantine_frame(bad, spec, now)
    slim = _slim(good)
    outputs = {
        "telemetry": valid.select(SILVER_TELEMETRY_COLUMNS),
        "telemetry_quarantine": quarantine,
        "excursion_segments": _segments(slim, spec),
        "telemetry_stats": _stats(slim, files, spec),
        "batch_timeline": _timeline(slim, files, spec),
    }
    for name, out in outputs.items():
        if out.height == 0 and lake.exists(LAYER, name):
            # nothing to add (no quarantined row, no excursion): no commit, and no snapshot
            # load of a table that grows with the lake. A rerun derives the same empty output
            # again; the table is created (empty) the first time.
            continue
        # after a crash, the files whose rows this table already holds (one commit per
        # table and group: a file's rows are all there or none is)
        already = written if name == "telemetry" else lake.sources_in(LAYER, name, files, ids)
        part = out.filter(~pl.col("source_file").is_in(list(already))) if already else out
        if part.height == 0 and lake.exists(LAYER, name):
            continue
        lake.append(LAYER, name, part, metadata={"run_id": run_id})
    per_file = (
        pl.DataFrame({"_file": pl.Series(range(len(files)), dtype=pl.UInt32), "source_file": files})
        .join(pending.select("source_file", "batch_id"), on="source_file", how="left")
        # (select the key first: an eager group_by of the wide frames costs 50x more)
        .join(raw_all.select("_file").group_by("_file").len("rows_in"), on="_file", how="left")
        .join(good.select("_file").group_by("_file").len("rows_valid"), on="_file", how="left")
        .join(bad.select("_file").group_by("_file").len("rows_quarantined"), on="_file", how="left")
        .fill_null(0)
        .drop("_file")
        .with_columns(
            processed_at=processed_at,
            spec_version=pl.lit(spec.version),
            run_id=pl.lit(run_id),
        )
    )
    # the log's rows are the record (pending_telemetry_files reads them, under the batches'
    # locks); it is written last, so a file is logged only once every table holds its rows
    lake.append(LAYER, "telemetry_log", per_file)
    rep.files_processed += len(files)
    rep.files += files
    rep.rows_in += raw_all.height
    rep.rows_valid += good.height
    rep.rows_quarantined += bad.height
    rep.segments += outputs["excursion_segments"].height
    rep.failed_checks.update(bad["failed_check"].to_list())
    rep.batches.update(ids)


def _quarantine_frame(bad: pl.DataFrame, spec: CppSpec, now: datetime) -> pl.DataFrame:
    """The ``telemetry_quarantine`` rows of routed-out readings."""
    return bad.select(
        "ts", "site_id", "unit_id", "batch_id", "tag", pl.col("value_raw").alias("value"),
        pl.col("uom_raw").alias("uom"), "quality", "failed_check", "failed_checks", "offending_value",
        "raw", "extra", "source_file", "row_hash", spec_version=pl.lit(spec.version),
        processed_at=pl.lit(now, UTC_US),
    )  # fmt: skip


def _slim(good: pl.DataFrame) -> pl.DataFrame:
    """The columns the derivations (segments, stats, timeline) use: they group and sort."""
    return good.select("_file", "tag_idx", "phase_idx", "ts", "value", "batch_id", "unit_id",
                       "tag", "phase", "phase_start", "batch_start", "source_file")  # fmt: skip


# ------------------------------------------------------------------------------ large files
ATTEMPT_SCHEMA = {"source_file": pl.String(), "batch_id": pl.String(), "run_id": pl.String(),
                  "started_at": UTC_US}  # fmt: skip


def _process_large(lake: Lake, bid: str, f: str, spec: CppSpec, batches: pl.DataFrame,
                   phases: pl.DataFrame, run_id: str, now: datetime, rep: SilverReport,
                   limits: bronze.IngestLimits) -> None:  # fmt: skip
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
        if _not_processed(lake, todo, [bid]).height == 0:
            return
        where = (pl.col("batch_id") == bid) & (pl.col("source_file") == f)
        tries = lake.read(LAYER, "telemetry_attempts", ["source_file"], filter_expr=where)
        n_prev = 0 if tries is None else tries.height
        row = {"source_file": f, "batch_id": bid, "run_id": run_id, "started_at": now}
        if n_prev < limits.max_attempts:
            lake.append(LAYER, "telemetry_attempts", pl.DataFrame([row], schema=ATTEMPT_SCHEMA))
        with scratch_dir(lake) as d:
            if n_prev >= limits.max_attempts:
                detail = (f"{n_prev} earlier attempts to process this file did not finish "
                          f"(killed or crashed runs; PHARMA_MAX_FILE_ATTEMPTS={limits.max_attempts})")  # fmt: skip
                _quarantine_file(lake, bid, f, spec, run_id, now, limits, d, detail, rep)
            else:
                _process_sliced(lake, bid, f, spec, batches, phases, run_id, now, limits, d, rep)


def _process_sliced(lake: Lake, bid: str, f: str, spec: CppSpec, batches: pl.DataFrame,
                    phases: pl.DataFrame, run_id: str, now: datetime,
                    limits: bronze.IngestLimits, d: Any, rep: SilverReport) -> None:  # fmt: skip
    files = [f]
    tix = _tag_index(spec)
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
    for k, raw in enumerate(lake.file_slices(bronze.LAYER, "telemetry", bid, f, limits.slice_rows)):
        raw = raw.with_columns(_file=pl.lit(0, pl.UInt32))
        rows_in += raw.height
        lo, hi = raw["ts"].min(), raw["ts"].max()
        seen: list[pl.DataFrame] = []
        if isinstance(lo, datetime) and isinstance(hi, datetime):
            existing = lake.read(
                LAYER, "telemetry", ["tag", "ts"],
                filter_expr=(pl.col("batch_id") == bid) & pl.col("ts").is_between(lo, hi)
                & (pl.col("source_file") != f),
            )  # fmt: skip
            if existing is not None and existing.height:
                seen.append(existing)
            # a reading repeated from an earlier slice of this file is a duplicate too
            seen += [pl.read_parquet(p).filter(pl.col("ts").is_between(lo, hi))
                     for a, b, p in keys if not (b < lo or a > hi)]  # fmt: skip
            key_file = d / f"keys{k}.parquet"
            raw.select("ts", "tag").drop_nulls().write_parquet(key_file)
            keys.append((lo, hi, key_file))
        ex = pl.concat(seen, how="vertical_relaxed") if seen else None
        df = _prepare_batch(raw, spec, batches, phases, ex, now)
        good, bad = route(df, telemetry_contract(spec))
        accepted_contract(spec).validate(
            good.select("ts", "unit_id", "batch_id", "tag", "value", "uom", "_key")
        )
        valid_sp.write(
            good.with_columns(spec_version=pl.lit(spec.version), processed_at=pl.lit(now, UTC_US))
            .select(SILVER_TELEMETRY_COLUMNS)
        )  # fmt: skip
        bad_sp.write(_quarantine_frame(bad, spec, now))
        failed.update(bad["failed_check"].to_list())
        slim = _slim(good)
        stats_parts.append(_stats_agg(slim))
        timeline_parts.append(_timeline_partial(slim))
        if unit is None and good.height:
            unit = good["unit_id"][0]
        cpp_sp.write(
            slim.filter(pl.col("tag_idx").is_in(cpp_idx) & pl.col("phase_idx").is_not_null())
            .select("_file", "tag_idx", "phase_idx", "ts", "value", "phase_start")
        )  # fmt: skip
    outputs: dict[str, pl.DataFrame | Spool] = {
        "telemetry": valid_sp,
        "telemetry_quarantine": bad_sp,
        "excursion_segments": _segments_by_tag(
            cpp_sp, cpp_idx, spec, {"source_file": f, "batch_id": bid, "unit_id": unit or ""}
        ),
        "telemetry_stats": _stats_finish(_stats_merge(stats_parts), files, spec),
        "batch_timeline": _timeline_merge(timeline_parts, files, spec),
    }
    _commit_outputs(lake, bid, f, outputs, run_id)
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


def _commit_outputs(lake: Lake, bid: str, f: str, outputs: dict[str, pl.DataFrame | Spool],
                    run_id: str) -> None:  # fmt: skip
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


def _log_file(lake: Lake, bid: str, f: str, rows_in: int, rows_valid: int, rows_bad: int,
              spec: CppSpec, run_id: str, now: datetime) -> None:  # fmt: skip
    """The file's ``telemetry_log`` row (same columns and types as ``_process_files``')."""
    lake.append(LAYER, "telemetry_log", pl.DataFrame({
        "source_file": [f], "batch_id": [bid],
        "rows_in": pl.Series([rows_in], dtype=pl.UInt32),
        "rows_valid": pl.Series([rows_valid], dtype=pl.UInt32),
        "rows_quarantined": pl.Series([rows_bad], dtype=pl.UInt32),
    }).with_columns(processed_at=pl.lit(now, UTC_US), spec_version=pl.lit(spec.version),
                    run_id=pl.lit(run_id)))  # fmt: skip


def _quarantine_file(lake: Lake, bid: str, f: str, spec: CppSpec, run_id: str, now: datetime,
                     limits: bronze.IngestLimits, d: Any, detail: str,
                     rep: SilverReport) -> None:  # fmt: skip
    """Every row of a file that cannot be processed goes to ``telemetry_quarantine``."""
    sp = Spool(d / "quarantine.arrow")
    for raw in lake.file_slices(bronze.LAYER, "telemetry", bid, f, limits.slice_rows):
        sp.write(raw.select(
            "ts", "site_id", "unit_id", "batch_id", "tag", "value", "uom", "quality",
            failed_check=pl.lit("processing_failed"), failed_checks=pl.lit("processing_failed"),
            offending_value=pl.lit(detail), raw="raw", extra="extra", source_file="source_file",
            row_hash="row_hash", spec_version=pl.lit(spec.version), processed_at=pl.lit(now, UTC_US),
        ))  # fmt: skip
    _commit_outputs(lake, bid, f, {"telemetry_quarantine": sp}, run_id)
    _log_file(lake, bid, f, sp.rows, 0, sp.rows, spec, run_id, now)
    rep.files_processed += 1
    rep.files.append(f)
    rep.rows_in += sp.rows
    rep.rows_quarantined += sp.rows
    rep.failed_checks["processing_failed"] += sp.rows
    rep.batches.add(bid)


def _segments_by_tag(cpp: Spool, cpp_idx: Sequence[int], spec: CppSpec,
                     consts: dict[str, str]) -> pl.DataFrame:  # fmt: skip
    """``_segments`` of one file, one CPP tag at a time (it groups by file and tag)."""
    parts = []
    for t in cpp_idx if cpp.rows else []:
        got = list(cpp.frames(pl.col("tag_idx") == t))
        rows = pl.concat(got, how="vertical") if got else pl.DataFrame()
        if rows.height:
            parts.append(_segments(rows, spec, consts))
    if not parts:
        return pl.DataFrame(schema=SEGMENT_SCHEMA)
    return pl.concat(parts, how="vertical").sort("start_ts")


# ------------------------------------------------------------------------------ checks
def _count(lake: Lake, layer: str, name: str, batch_ids: Sequence[str],
           files: Sequence[str] | None = None) -> int:  # fmt: skip
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
        "rows_landed": landed_rows, "unreadable_files": unreadable, "rows_in_quarantined_files": q_rows,
        "bronze_rows": bronze_rows, "silver_rows": silver_rows, "quarantined_rows": quarantined,
        "pending_rows": pending, "reconciled": ok, "files_awaiting_bronze": awaiting_files,
        "rows_awaiting_bronze": awaiting_rows,
        "silver_pass_rate": round(silver_rows / (silver_rows + quarantined), 6) if silver_rows + quarantined else 1.0,
    }  # fmt: skip
    # partition-wide totals from the silver ledger (one row per processed file)
    tl = lake.read(LAYER, "telemetry_log", ["rows_in", "rows_valid", "rows_quarantined"],
                   filter_expr=pl.col("batch_id").is_in(list(batch_ids)))  # fmt: skip
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
