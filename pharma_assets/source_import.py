"""Importers for the plant systems other than the historian: MES batch events, LIMS results
and CMMS maintenance records, plus batch boundaries inferred from imported telemetry.

What for: a site brings its own exports (an MES batch list, a LIMS export, a CMMS work-order
list) in whatever columns, units and local times it has; each importer maps them through a
small YAML mapping file (like the telemetry tag map, ``importer.py``) onto the landing-zone
formats of ``docs/data_model.md`` §4-§6, which the pipeline then ingests like any delivery.

The rule is the telemetry importer's: nothing is dropped silently. A row that cannot be
mapped (unknown event type, analyte not in the mapping, empty value) is not written and is
counted in the report with examples; structural problems (a missing column, an
unparseable time, an unknown time zone) stop the import with a ``ValueError`` before any
file is written. Readings dated in the future are written (the pipeline quarantines them
as ``ts_in_future``) and the report warns about them at import time.

Formats and mapping files: ``docs/bring_your_own_data.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .importer import (
    FUTURE_TOLERANCE,
    M,
    id_column,
    load_mapping,
    parse_numbers,
    read_table,
    row_examples,
    text_column,
    unit_conversion,
)
from .process.timestamps import DstPolicy, check_format, parse_timestamps
from .process.vocabulary import PHASES
from .twin.landing import chunk_path, write_jsonl, write_lims_csv

__all__ = [
    "CmmsMap",
    "LabMap",
    "LandingGaps",
    "MesMap",
    "SourceReport",
    "import_cmms",
    "import_lims",
    "import_mes",
    "infer_batch_events",
    "landing_gaps",
    "load_map",
]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
DOCS = "docs/bring_your_own_data.md"


def conversion(from_uom: str, to_uom: str, what: str) -> tuple[float, float]:
    """(scale, offset) from ``from_uom`` to ``to_uom``; a ValueError naming ``what`` if unknown."""
    return unit_conversion(from_uom, to_uom, what)


# ---------------------------------------------------------------- mapping files


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _zone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'UTC'") from None
    return v


class _SourceMap(_Model):
    """What every mapping file has: site, default unit and the zone of naive times."""

    site_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+$")
    default_unit_id: str | None = Field(default=None, min_length=1)
    timezone: str = "UTC"
    # as in the telemetry tag map (``process/timestamps.py``): a strptime format, epoch_s,
    # epoch_ms, epoch_us or excel; and how a naive time in a DST fold is read
    timestamp_format: str | None = None
    dst_ambiguous: Literal["reject", "earliest", "latest"] = "reject"

    _zone = field_validator("timezone")(_zone)
    _format = field_validator("timestamp_format")(check_format)

    def _need(self, unit_col: str | None, site_col: str | None = None) -> None:
        if unit_col is None and self.default_unit_id is None:
            raise ValueError("default_unit_id is required when columns.unit_id is not given")
        if site_col is None and self.site_id is None:
            raise ValueError("site_id is required when columns.site_id is not given")


class MesColumns(_Model):
    batch_id: str
    start: str
    end: str | None = None
    unit_id: str | None = None
    site_id: str | None = None
    timezone: str | None = None  # a column of IANA zone names, one per row
    recipe_id: str | None = None
    recipe_version: str | None = None
    product: str | None = None
    status: str | None = None
    end_reason: str | None = None
    operator: str | None = None
    planned_end: str | None = None


class MesMap(_SourceMap):
    """An MES batch list: one row per batch with its start, end, recipe and lots."""

    columns: MesColumns
    lots: dict[str, str] = Field(default_factory=dict)  # source column -> lot name
    phases: dict[str, str] = Field(default_factory=dict)  # source column (phase start) -> phase
    status_values: dict[str, Literal["complete", "aborted", "running"]] = Field(
        default_factory=dict
    )
    default_product: str | None = None

    @model_validator(mode="after")
    def _check(self) -> MesMap:
        self._need(self.columns.unit_id, self.columns.site_id)
        names = _spec_phases()
        for col, ph in self.phases.items():
            if ph not in names:
                raise ValueError(
                    f"phases.{col}: unknown phase {ph!r}; the unit class's phases are {list(names)}"
                )
        return self


class LabColumns(_Model):
    batch_id: str
    sample_ts: str
    unit_id: str | None = None
    site_id: str | None = None
    timezone: str | None = None
    sample_id: str | None = None
    sample_type: str | None = None
    analyte: str | None = None  # long layout
    value: str | None = None  # long layout
    uom: str | None = None  # long layout, optional: the unit of each row


class AnalyteMapping(_Model):
    analyte: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    from_uom: str = Field(min_length=1)
    uom: str | None = None  # the lake's unit; default: the CPP spec's unit of the analyte


class LabMap(_SourceMap):
    """A LIMS export, long (a row per result) or wide (a column per analyte)."""

    layout: Literal["long", "wide"] = "long"
    columns: LabColumns
    analytes: dict[str, AnalyteMapping] = Field(min_length=1)  # source name/column -> ours
    sample_types: dict[str, Literal["in_process", "release"]] = Field(default_factory=dict)
    default_sample_type: Literal["in_process", "release"] | None = None

    @model_validator(mode="after")
    def _check(self) -> LabMap:
        self._need(self.columns.unit_id, self.columns.site_id)
        if self.layout == "long" and (self.columns.analyte is None or self.columns.value is None):
            raise ValueError("the long layout needs columns.analyte and columns.value")
        if self.columns.sample_type is None and self.default_sample_type is None:
            raise ValueError(
                "default_sample_type is required when columns.sample_type is not given"
            )
        return self


class CmmsColumns(_Model):
    event_ts: str
    equipment_id: str
    event_type: str
    unit_id: str | None = None
    site_id: str | None = None
    timezone: str | None = None
    work_order_id: str | None = None
    part: str | None = None
    description: str | None = None
    downtime_h: str | None = None
    run_hours_at_event: str | None = None


CMMS_EVENT_TYPES = ("preventive_maintenance", "corrective_maintenance", "failure", "calibration")


class CmmsMap(_SourceMap):
    """A CMMS work-order list."""

    columns: CmmsColumns
    event_types: dict[
        str, Literal["preventive_maintenance", "corrective_maintenance", "failure", "calibration"]
    ] = Field(default_factory=dict)
    downtime_uom: str = "h"

    @model_validator(mode="after")
    def _check(self) -> CmmsMap:
        self._need(self.columns.unit_id, self.columns.site_id)
        conversion(self.downtime_uom, "h", "downtime_h")
        return self


def load_map(path: Path, model: type[M], what: str) -> M:
    """Load and validate a mapping YAML; ConfigError naming the file and the field."""
    return load_mapping(path, model, what)


# ---------------------------------------------------------------- report


@dataclass
class SourceReport:
    """What an import read, wrote and left out; ``summary()`` and ``warnings()`` for people."""

    source: str  # mes, lims, cmms, inferred-mes
    input: Path | None
    rows_read: int = 0
    records_written: int = 0
    files_written: list[Path] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    not_imported: dict[str, list[str]] = field(default_factory=dict)  # reason -> examples
    not_imported_counts: dict[str, int] = field(default_factory=dict)
    unmapped_columns: list[str] = field(default_factory=list)
    future: int = 0
    latest: datetime | None = None
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, example: str, n: int = 1) -> None:
        self.not_imported_counts[reason] = self.not_imported_counts.get(reason, 0) + n
        ex = self.not_imported.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(example)

    def see_times(self, us: Iterable[int], now: datetime | None = None) -> None:
        arr = np.asarray(list(us), dtype=np.int64)
        if arr.size == 0:
            return
        limit = ((now or datetime.now(UTC)) + FUTURE_TOLERANCE - _EPOCH) // _ONE_US
        self.future += int((arr > limit).sum())
        last = _EPOCH + int(arr.max()) * _ONE_US
        self.latest = last if self.latest is None else max(self.latest, last)

    def summary(self) -> str:
        src = f"{self.input} " if self.input else ""
        lines = [
            f"Imported {src}as {self.source}",
            f"  rows read:        {self.rows_read}",
            f"  records written:  {self.records_written} in {len(self.files_written)} file(s)",
            f"  batches ({len(self.batches)}):      {_short(self.batches)}",
        ]
        if self.units:
            lines.append(f"  units ({len(self.units)}):        {_short(self.units)}")
        if self.unmapped_columns:
            lines.append(
                f"  columns not in the mapping, NOT imported ({len(self.unmapped_columns)}): "
                + ", ".join(self.unmapped_columns)
            )
        for reason, n in self.not_imported_counts.items():
            lines.append(
                f"  NOT imported, {reason}: {n} (e.g. {'; '.join(self.not_imported[reason])})"
            )
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def warnings(self) -> list[str]:
        out = []
        if self.future:
            out.append(
                f"{self.input or self.source}: {self.future} record(s) dated in the future "
                f"(latest {self.latest:%Y-%m-%dT%H:%M:%SZ}): the pipeline quarantines them as "
                "ts_in_future; check the time zone of the export (mapping: timezone)"
            )
        n = sum(self.not_imported_counts.values())
        if n:
            out.append(f"{self.input or self.source}: {n} row(s) NOT imported (see the summary)")
        if self.unmapped_columns:
            out.append(
                f"{self.input or self.source}: columns not in the mapping were NOT imported: "
                + ", ".join(self.unmapped_columns)
            )
        return out


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "") or "-"


# ---------------------------------------------------------------- shared helpers


def _require(df: pl.DataFrame, cols: Mapping[str, str | None], src: Path) -> None:
    for role, name in cols.items():
        if name is not None and name not in df.columns:
            raise ValueError(
                f"{src}: column {name!r} (mapping columns.{role}) not found; the file has "
                f"columns {df.columns}"
            )


def _instants(
    df: pl.DataFrame,
    col: str,
    zone: str,
    zone_col: str | None,
    src: Path,
    *,
    optional: bool = False,
    fmt: str | None = None,
    dst: DstPolicy = "reject",
) -> pl.Series:
    """Times of ``col`` as Int64 µs since the epoch (UTC), read by ``process.timestamps``
    (ISO 8601, a historian format, or ``fmt``). Naive times are read in the row's zone
    (``zone_col``) or ``zone``; a time that cannot be read (garbled, a DST gap, a DST fold
    unless ``dst`` says which) is an error naming the rows and the reason; an empty one is
    null when ``optional`` and an error otherwise."""
    s = df[col]
    zones: str | list[str] = zone
    if zone_col is not None:
        zs = text_column(df[zone_col], src, "timezone")
        bad = [z for z in zs.unique().to_list() if _try_zone(z) is None]
        if bad:
            raise ValueError(f"{src}: unknown time zone(s) {bad} in column {zone_col!r}")
        zones = zs.to_list()
    parsed = parse_timestamps(s, zones, fmt, dst)
    empty = np.array([r == "empty timestamp" for r in parsed.reason], dtype=bool)
    failed = ~parsed.ok & ~(empty & optional)
    if failed.any():
        rows = np.flatnonzero(failed)
        reasons = sorted({str(parsed.reason[int(r)]) for r in rows})
        raise ValueError(
            f"{src}: {len(rows)} time(s) in column {col!r} cannot be read "
            f"({row_examples(rows, s)}): {'; '.join(reasons)}"
        )
    return pl.Series(col, parsed.us, dtype=pl.Int64).scatter(np.flatnonzero(empty), None)


def _try_zone(z: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(z)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _dt(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + int(us) * _ONE_US


def _col_or(
    df: pl.DataFrame, col: str | None, default: str | None, src: Path, role: str
) -> pl.Series:
    if col is not None:
        return id_column(df[col], src, role)
    return pl.Series(role, [default] * df.height, dtype=pl.String)


def _opt_text(df: pl.DataFrame, col: str | None) -> list[str | None]:
    if col is None:
        return [None] * df.height
    s = df[col].cast(pl.String).str.strip_chars()
    return [None if (v is None or v == "") else v for v in s.to_list()]


def _next_seq(folder: Path) -> int:
    seqs = []
    for p in folder.glob("*_*.*"):
        try:
            seqs.append(int(p.stem.rsplit("_", 1)[1]))
        except (IndexError, ValueError):
            continue
    return max(seqs, default=0) + 1


def _unmapped(df: pl.DataFrame, used: Iterable[str | None]) -> list[str]:
    u = {c for c in used if c}
    return [c for c in df.columns if c not in u]


# ---------------------------------------------------------------- MES


def import_mes(
    input: Path, mapping: Path | MesMap, out: Path, now: datetime | None = None
) -> SourceReport:
    """Import an MES batch list (one row per batch) as landing MES events: ``batch_start``
    (recipe, product, lots, operator), ``phase_start`` for each mapped phase column that has
    a time, and ``batch_end`` when the row has an end (status from the status column, else
    ``complete``). A batch that already has MES files in the landing zone is not written
    again (reported): re-importing would deliver different event ids for the same batch."""
    src = Path(input)
    mm = mapping if isinstance(mapping, MesMap) else load_map(Path(mapping), MesMap, "MES mapping")
    df = read_table(src)
    c = mm.columns
    _require(df, c.model_dump(), src)
    _require(df, {f"lots.{k}": k for k in mm.lots} | {f"phases.{k}": k for k in mm.phases}, src)
    rep = SourceReport("mes", src, rows_read=df.height)
    rep.unmapped_columns = _unmapped(df, [*c.model_dump().values(), *mm.lots, *mm.phases])
    batch = id_column(df[c.batch_id], src, "batch_id").str.to_uppercase()
    dupes = batch.filter(batch.is_duplicated()).unique().to_list()
    if dupes:
        raise ValueError(f"{src}: batch id(s) listed more than once: {sorted(dupes)[:5]}")
    unit = _col_or(df, c.unit_id, mm.default_unit_id, src, "unit_id").str.to_uppercase()
    site = _col_or(df, c.site_id, mm.site_id, src, "site_id")

    def at(col: str, optional: bool = False) -> pl.Series:
        """The instants of one column, read with the map's zone, format and DST choice."""
        return _instants(
            df,
            col,
            mm.timezone,
            c.timezone,
            src,
            optional=optional,
            fmt=mm.timestamp_format,
            dst=mm.dst_ambiguous,
        )

    start = at(c.start)
    end = at(c.end, optional=True) if c.end else None
    planned = at(c.planned_end, optional=True) if c.planned_end else None
    phase_ts = {col: at(col, optional=True) for col in mm.phases}
    status = _opt_text(df, c.status)
    reasons, recipes, products = (
        _opt_text(df, c.end_reason),
        _opt_text(df, c.recipe_id),
        _opt_text(df, c.product),
    )
    operators, versions = _opt_text(df, c.operator), _opt_text(df, c.recipe_version)
    lots = {col: _opt_text(df, col) for col in mm.lots}
    rows: list[tuple[str, str, list[dict[str, Any]]]] = []
    for i in range(df.height):
        b, u = batch[i], unit[i]
        t0 = start[i]
        t1 = end[i] if end is not None else None
        st_raw = status[i]
        if st_raw is not None and mm.status_values and st_raw not in mm.status_values:
            rep.skip("status not in status_values", f"{b}: {st_raw!r}")
            continue
        st = mm.status_values.get(st_raw or "", None) if st_raw else None
        if st is None and st_raw in ("complete", "aborted", "running"):
            st = st_raw  # type: ignore[assignment]
        if t1 is not None and t1 < t0:
            rep.skip("end before start", f"{b}: end {_dt(t1):%Y-%m-%dT%H:%MZ} < start")
            continue
        version = None
        if versions[i] is not None:
            try:
                version = int(float(versions[i]))  # type: ignore[arg-type]
            except ValueError:
                rep.skip("recipe version not a number", f"{b}: {versions[i]!r}")
                continue
        common = {"site_id": site[i], "area_id": None, "unit_id": u, "batch_id": b}
        evs: list[dict[str, Any]] = [
            {
                **common,
                "event_type": "batch_start",
                "event_ts": _dt(t0),
                "recipe_id": recipes[i],
                "recipe_version": version,
                "product": products[i] or mm.default_product,
                "planned_end_ts": _dt(planned[i]) if planned is not None else _dt(t1),
                "material_lots": {
                    name: lots[col][i] for col, name in mm.lots.items() if lots[col][i]
                },
                "operator": operators[i],
            }
        ]
        for col, ph in mm.phases.items():
            if phase_ts[col][i] is not None:
                evs.append(
                    {
                        **common,
                        "event_type": "phase_start",
                        "event_ts": _dt(phase_ts[col][i]),
                        "phase": ph,
                    }
                )
        if t1 is not None and st != "running":
            evs.append(
                {
                    **common,
                    "event_type": "batch_end",
                    "event_ts": _dt(t1),
                    "status": st or "complete",
                    "reason": reasons[i],
                }
            )
        evs.sort(key=lambda e: (e["event_ts"], e["event_type"] != "batch_start"))
        for k, e in enumerate(evs, start=1):
            e["event_id"] = f"{b}-E{k:03d}"
        rep.see_times([(e["event_ts"] - _EPOCH) // _ONE_US for e in evs], now)
        rows.append((u, b, evs))
    for u, b, evs in rows:
        if not _write_mes(out, u, b, evs, rep):
            continue
    rep.units = sorted({u for u, _, _ in rows})
    return rep


def _write_mes(
    out: Path, unit: str, batch: str, evs: list[dict[str, Any]], rep: SourceReport
) -> bool:
    folder = Path(out) / "mes" / unit / batch
    if folder.exists() and any(p.suffix == ".jsonl" for p in folder.iterdir()):
        rep.skip("batch already has MES files in the landing zone", batch)
        return False
    path = chunk_path(Path(out), "mes", unit, batch, evs[0]["event_ts"], 1, "jsonl")
    write_jsonl(path, evs)
    rep.files_written.append(path)
    rep.records_written += len(evs)
    rep.batches.append(batch)
    return True


def _telemetry_span(folder: Path) -> tuple[int, int, str, int] | None:
    """(first µs, last µs, site, readings) of the telemetry files of one batch folder."""
    lo, hi, site, n = None, None, None, 0
    for p in sorted(folder.glob("*.parquet")):
        if p.name.startswith("."):
            continue
        t = pq.read_table(p, columns=["ts", "site_id"])
        if t.num_rows == 0:
            continue
        ts = t.column("ts").cast("int64").to_numpy()
        lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
        hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
        site = site or str(t.column("site_id")[0])
        n += t.num_rows
    return None if lo is None or hi is None or site is None else (lo, hi, site, n)


def infer_batch_events(
    landing: Path,
    batches: Iterable[str] | None = None,
    status: Literal["complete", "running"] = "complete",
    product: str | None = None,
    now: datetime | None = None,
) -> SourceReport:
    """Batch boundaries from the telemetry already in the landing zone: for every batch folder
    (or only ``batches``) without MES files, a ``batch_start`` at its first reading and a
    ``batch_end`` at its last (``status`` complete; ``running`` writes no end). The events
    say where they came from (``inferred_from``: telemetry), recipe and lots stay empty."""
    root = Path(landing)
    rep = SourceReport("mes (inferred from telemetry)", None)
    want = None if batches is None else {b.upper() for b in batches}
    tele = root / "telemetry"
    folders = sorted(p for p in tele.glob("*/*") if p.is_dir()) if tele.exists() else []
    for folder in folders:
        unit, batch = folder.parent.name, folder.name
        if want is not None and batch not in want:
            continue
        span = _telemetry_span(folder)
        if span is None:
            continue
        lo, hi, site, n = span
        rep.rows_read += n
        common = {"site_id": site, "area_id": None, "unit_id": unit, "batch_id": batch}
        evs: list[dict[str, Any]] = [
            {
                **common,
                "event_type": "batch_start",
                "event_ts": _dt(lo),
                "recipe_id": None,
                "recipe_version": None,
                "product": product,
                "planned_end_ts": None,
                "material_lots": {},
                "operator": None,
                "inferred_from": "telemetry",
                "event_id": f"{batch}-E001",
            }
        ]
        if status == "complete":
            evs.append(
                {
                    **common,
                    "event_type": "batch_end",
                    "event_ts": _dt(hi),
                    "status": "complete",
                    "reason": None,
                    "inferred_from": "telemetry",
                    "event_id": f"{batch}-E002",
                }
            )
        rep.see_times([lo, hi], now)
        if _write_mes(root, unit, batch, evs, rep):
            rep.units = sorted({*rep.units, unit})
    if want:
        found = {f.name for f in folders}
        for b in sorted(want - found):
            rep.skip("no telemetry in the landing zone", b)
    rep.notes.append(
        "batch boundaries inferred from the first and last reading of each batch "
        "(event field inferred_from = telemetry); import the MES batch list instead when you have it"
    )
    return rep


# ---------------------------------------------------------------- LIMS


def _spec_phases() -> tuple[str, ...]:
    """The phase names of the unit class of the CPP spec in force (``PHARMA_CPP_SPEC`` or
    the built-in: the bioreactor's)."""
    import os

    from .lake.specs import load_spec

    try:
        return load_spec(os.environ.get("PHARMA_CPP_SPEC") or None).phase_names
    except ConfigError:
        return PHASES


def _spec_lab_uoms() -> dict[str, str]:
    """Analyte -> unit from the CPP spec in force (``PHARMA_CPP_SPEC`` or the built-in)."""
    import os

    from .lake.specs import load_spec

    try:
        spec = load_spec(os.environ.get("PHARMA_CPP_SPEC") or None)
    except ConfigError:
        return {}
    return {a: s.uom for table in (spec.lab.in_process, spec.lab.release) for a, s in table.items()}


def import_lims(
    input: Path,
    mapping: Path | LabMap,
    out: Path,
    layout: Literal["long", "wide"] | None = None,
    now: datetime | None = None,
) -> SourceReport:
    """Import a LIMS export (long: a row per result; wide: a row per sample, a column per
    analyte) as landing LIMS CSV files, one per batch. Analyte names and units are mapped
    through ``analytes`` (unit converted to the lake's unit of the analyte); results of
    analytes not in the mapping, empty or non-numeric values are NOT imported and counted."""
    src = Path(input)
    lm = mapping if isinstance(mapping, LabMap) else load_map(Path(mapping), LabMap, "LIMS mapping")
    shape = layout or lm.layout
    if shape == "long" and (lm.columns.analyte is None or lm.columns.value is None):
        raise ValueError("the long layout needs columns.analyte and columns.value in the mapping")
    df = read_table(src)
    c = lm.columns
    ids = {
        k: v
        for k, v in c.model_dump().items()
        if shape == "long" or k not in ("analyte", "value", "uom")
    }
    _require(df, ids, src)
    rep = SourceReport("lims", src, rows_read=df.height)
    spec_uoms = _spec_lab_uoms()
    targets: dict[str, tuple[str, str, float, float]] = {}  # source -> analyte, uom, scale, offset
    for name, m in lm.analytes.items():
        to = m.uom or spec_uoms.get(m.analyte)
        if to is None:
            raise ValueError(
                f"analytes.{name}: {m.analyte!r} is not an analyte of the CPP spec in force; "
                "give its unit (uom:) and add it to your product's spec (lab:)"
            )
        s, o = conversion(m.from_uom, to, f"analyte {name!r}")
        targets[name] = (m.analyte, to, s, o)
    batch = id_column(df[c.batch_id], src, "batch_id").str.to_uppercase()
    unit = _col_or(df, c.unit_id, lm.default_unit_id, src, "unit_id").str.to_uppercase()
    site = _col_or(df, c.site_id, lm.site_id, src, "site_id")
    ts = _instants(
        df, c.sample_ts, lm.timezone, c.timezone, src, fmt=lm.timestamp_format, dst=lm.dst_ambiguous
    )
    stype_raw = _opt_text(df, c.sample_type)
    sample_ids = _opt_text(df, c.sample_id)
    base = pl.DataFrame(
        {
            "row": np.arange(df.height),
            "batch_id": batch,
            "unit_id": unit,
            "site_id": site,
            "ts": ts,
            "stype_raw": pl.Series(stype_raw, dtype=pl.String),
            "sample_id": pl.Series(sample_ids, dtype=pl.String),
        }
    )
    if shape == "wide":
        present = [a for a in lm.analytes if a in df.columns]
        missing = [a for a in lm.analytes if a not in df.columns]
        if not present:
            raise ValueError(
                f"{src}: none of the mapping's analyte columns {list(lm.analytes)} is a column"
            )
        if missing:
            rep.notes.append(f"mapped analyte columns absent from the file: {', '.join(missing)}")
        rep.unmapped_columns = _unmapped(df, [*ids.values(), *lm.analytes])
        parts = []
        for name in present:
            vals, bad = parse_numbers(df[name])
            raw = df[name].cast(pl.String).str.strip_chars()
            empty = (raw.is_null() | (raw == "")).to_numpy()
            parts.append(
                base.with_columns(
                    source_analyte=pl.lit(name),
                    value=pl.Series(vals),
                    bad=pl.Series(bad & ~empty),
                    empty=pl.Series(empty),
                    row_uom=pl.lit(None, pl.String),
                )
            )
        long = pl.concat(parts)
        n_empty = int(long["empty"].sum())
        if n_empty:  # a wide export leaves a cell empty when the test was not run on the sample
            rep.notes.append(f"empty cells (no result for that analyte on that sample): {n_empty}")
        long = long.filter(~pl.col("empty"))
    else:
        assert c.analyte is not None and c.value is not None
        rep.unmapped_columns = _unmapped(df, ids.values())
        vals, bad = parse_numbers(df[c.value])
        long = base.with_columns(
            source_analyte=text_column(df[c.analyte], src, "analyte"),
            value=pl.Series(vals),
            bad=pl.Series(bad),
            row_uom=pl.Series(_opt_text(df, c.uom), dtype=pl.String),
        )
    rows: dict[tuple[str, str], list[list[Any]]] = {}
    seq_by_batch: dict[str, dict[tuple[str, int], str]] = {}
    for r in long.sort("batch_id", "ts", "row").iter_rows(named=True):
        b, name = r["batch_id"], r["source_analyte"]
        if name not in targets:
            rep.skip("analyte not in the mapping", f"{b}: {name!r}")
            continue
        if r["bad"]:
            rep.skip("value empty or not a number", f"{b} {name}")
            continue
        analyte, to, s, o = targets[name]
        if r["row_uom"] is not None and r["row_uom"] != lm.analytes[name].from_uom:
            try:
                s, o = conversion(r["row_uom"], to, f"analyte {name!r}")
            except ValueError as e:
                rep.skip("unit without a conversion", f"{b} {name}: {e}")
                continue
        st = _sample_type(r["stype_raw"], lm)
        if st is None:
            rep.skip("sample type not in sample_types", f"{b}: {r['stype_raw']!r}")
            continue
        sid = r["sample_id"] or _sample_id(seq_by_batch.setdefault(b, {}), b, st, r["ts"])
        rows.setdefault((r["unit_id"], b), []).append(
            [
                sid,
                r["site_id"],
                r["unit_id"],
                b,
                _dt(r["ts"]),
                st,
                analyte,
                round(float(r["value"]) * s + o, 6),
                to,
            ]
        )
        rep.see_times([r["ts"]], now)
    for (u, b), recs in rows.items():
        folder = Path(out) / "lims" / u / b
        seq = _next_seq(folder) if folder.exists() else 1
        path = chunk_path(Path(out), "lims", u, b, min(x[4] for x in recs), seq, "csv")
        write_lims_csv(path, recs)
        rep.files_written.append(path)
        rep.records_written += len(recs)
        rep.batches.append(b)
    rep.batches.sort()
    rep.units = sorted({u for u, _ in rows})
    return rep


def _sample_type(raw: str | None, lm: LabMap) -> str | None:
    if raw is None:
        return lm.default_sample_type
    if raw in lm.sample_types:
        return lm.sample_types[raw]
    if raw in ("in_process", "release"):
        return raw
    return None


def _sample_id(seen: dict[tuple[str, int], str], batch: str, st: str, ts: int) -> str:
    """A sample id per (batch, type, time): <batch>-REL for the first release sample,
    <batch>-S<nn> for in-process samples in time order."""
    key = (st, ts)
    if key not in seen:
        n = sum(1 for k in seen if k[0] == st)
        if st == "release":
            seen[key] = f"{batch}-REL" if n == 0 else f"{batch}-REL{n + 1}"
        else:
            seen[key] = f"{batch}-S{n:02d}"
    return seen[key]


# ---------------------------------------------------------------- CMMS


def import_cmms(
    input: Path, mapping: Path | CmmsMap, out: Path, now: datetime | None = None
) -> SourceReport:
    """Import a CMMS work-order list as landing CMMS records, one file per unit. Event types
    are mapped through ``event_types``; rows of unmapped types are NOT imported and counted.
    A missing work-order id is made from the record's content (stable on re-import)."""
    src = Path(input)
    cm = (
        mapping
        if isinstance(mapping, CmmsMap)
        else load_map(Path(mapping), CmmsMap, "CMMS mapping")
    )
    df = read_table(src)
    c = cm.columns
    _require(df, c.model_dump(), src)
    rep = SourceReport("cmms", src, rows_read=df.height)
    rep.unmapped_columns = _unmapped(df, c.model_dump().values())
    unit = _col_or(df, c.unit_id, cm.default_unit_id, src, "unit_id").str.to_uppercase()
    site = _col_or(df, c.site_id, cm.site_id, src, "site_id")
    ts = _instants(
        df, c.event_ts, cm.timezone, c.timezone, src, fmt=cm.timestamp_format, dst=cm.dst_ambiguous
    )
    equip = text_column(df[c.equipment_id], src, "equipment_id").str.to_uppercase()
    etype = text_column(df[c.event_type], src, "event_type")
    wo, part, desc = (
        _opt_text(df, c.work_order_id),
        _opt_text(df, c.part),
        _opt_text(df, c.description),
    )
    s, o = conversion(cm.downtime_uom, "h", "downtime_h")
    down = parse_numbers(df[c.downtime_h])[0] * s + o if c.downtime_h else None
    runh = parse_numbers(df[c.run_hours_at_event])[0] if c.run_hours_at_event else None
    per_unit: dict[str, list[dict[str, Any]]] = {}
    for i in range(df.height):
        t = etype[i]
        mapped = cm.event_types.get(t) or (t if t in CMMS_EVENT_TYPES else None)
        if mapped is None:
            rep.skip("event type not in event_types", f"row {i + 1}: {t!r}")
            continue
        rec = {
            "work_order_id": wo[i],
            "event_ts": _dt(ts[i]),
            "site_id": site[i],
            "unit_id": unit[i],
            "equipment_id": equip[i],
            "event_type": mapped,
            "part": part[i],
            "description": desc[i],
            "downtime_h": None if down is None or not np.isfinite(down[i]) else float(down[i]),
            "run_hours_at_event": None
            if runh is None or not np.isfinite(runh[i])
            else float(runh[i]),
        }
        if rec["work_order_id"] is None:
            h = hashlib.sha256(json.dumps(rec, default=str, sort_keys=True).encode()).hexdigest()
            rec["work_order_id"] = f"WO-IMP-{h[:10].upper()}"
        per_unit.setdefault(unit[i], []).append(rec)
        rep.see_times([ts[i]], now)
    for u, recs in per_unit.items():
        recs.sort(key=lambda r: r["event_ts"])
        folder = Path(out) / "cmms" / u
        seq = _next_seq(folder) if folder.exists() else 1
        path = chunk_path(Path(out), "cmms", u, None, recs[0]["event_ts"], seq, "jsonl")
        write_jsonl(path, recs)
        rep.files_written.append(path)
        rep.records_written += len(recs)
    rep.units = sorted(per_unit)
    return rep


# ---------------------------------------------------------------- what is missing


@dataclass
class LandingGaps:
    """What the landing zone holds per source and what the missing parts mean."""

    telemetry_batches: set[str]
    mes_batches: set[str]
    lims_batches: set[str]
    release_batches: set[str]
    cmms_units: set[str]
    units: set[str]

    def lines(self) -> list[str]:
        out = []
        no_start = sorted(self.telemetry_batches - self.mes_batches)
        if no_start:
            out.append(
                f"{len(no_start)} batches have telemetry but no batch start ({_short(no_start, 5)}): "
                "they stay in bronze until batch events are imported (pharma-twin import --source "
                f"mes, or --source infer-batches); see {DOCS}"
            )
        no_tele = sorted(self.mes_batches - self.telemetry_batches)
        if no_tele:
            out.append(
                f"{len(no_tele)} batches have MES events but no telemetry ({_short(no_tele, 5)})"
            )
        if self.mes_batches and not self.lims_batches:
            out.append(
                "no LIMS results: no right-first-time judgement, no quality models and no "
                f"golden batch from release results (give MSPC reference batches instead); see {DOCS}"
            )
        elif self.mes_batches:
            no_rel = sorted(self.mes_batches - self.release_batches)
            if no_rel:
                out.append(
                    f"{len(no_rel)} batches have no release result ({_short(no_rel, 5)}): they "
                    "count neither as right first time nor as training data for quality models"
                )
        if self.units and not self.cmms_units:
            out.append(
                "no CMMS maintenance records: predictive maintenance is not trained "
                f"(pharma-twin import --source cmms); see {DOCS}"
            )
        return out


def landing_gaps(landing: Path) -> LandingGaps:
    """Scan the landing zone's folders (and LIMS sample types) for what each source covers."""
    root = Path(landing)

    def batches(src: str) -> set[str]:
        d = root / src
        if not d.exists():
            return set()
        return {p.name for p in d.glob("*/*") if p.is_dir() and any(p.iterdir())}

    release: set[str] = set()
    for p in (root / "lims").glob("*/*/*.csv") if (root / "lims").exists() else []:
        if p.name.startswith("."):
            continue
        try:
            t = pl.read_csv(p, columns=["sample_type"], infer_schema=False)
        except (pl.exceptions.PolarsError, OSError):
            continue
        if (t["sample_type"] == "release").any():
            release.add(p.parent.name)
    units = (
        {p.name for p in (root / "telemetry").glob("*") if p.is_dir()}
        if (root / "telemetry").exists()
        else set()
    )
    cmms = (
        {p.name for p in (root / "cmms").glob("*") if p.is_dir()}
        if (root / "cmms").exists()
        else set()
    )
    return LandingGaps(batches("telemetry"), batches("mes"), batches("lims"), release, cmms, units)


# ---------------------------------------------------------------- product spec draft


def draft_spec(
    landing: Path, unit_class: str = "bioreactor", product: str | None = None
) -> dict[str, Any]:
    """A first product spec for what the landing zone holds: every telemetry tag with its
    unit and physical limits (the observed range widened by half its width on each side), no
    CPP yet; every LIMS analyte with its unit (release assays without a specification yet);
    right first time on the reported assays; one phase per batch unless MES has phases. The
    process engineer marks the CPPs, sets NOR/PAR and release limits, then puts it under
    change control (``pharma-twin spec change``)."""
    root = Path(landing)
    tags: dict[str, dict[str, Any]] = {}
    rng: dict[str, tuple[float, float]] = {}
    for p in (
        sorted((root / "telemetry").glob("*/*/*.parquet")) if (root / "telemetry").exists() else []
    ):
        if p.name.startswith("."):
            continue
        t = pl.read_parquet(p, columns=["tag", "value", "uom"]).with_columns(
            pl.col("tag").cast(pl.String), pl.col("uom").cast(pl.String)
        )
        agg = (
            t.filter(pl.col("value").is_finite())
            .group_by("tag", "uom")
            .agg(lo=pl.col("value").min(), hi=pl.col("value").max())
        )
        for r in agg.iter_rows(named=True):
            tags.setdefault(r["tag"], {"uom": r["uom"]})
            lo0, hi0 = rng.get(r["tag"], (r["lo"], r["hi"]))
            rng[r["tag"]] = (min(lo0, r["lo"]), max(hi0, r["hi"]))
    for tag, (lo, hi) in rng.items():
        pad = max((hi - lo) * 0.5, abs(hi) * 0.1, 1e-3)
        tags[tag]["physical"] = [round(lo - pad, 6), round(hi + pad, 6)]
    lab: dict[str, dict[str, Any]] = {"in_process": {}, "release": {}}
    for p in sorted((root / "lims").glob("*/*/*.csv")) if (root / "lims").exists() else []:
        if p.name.startswith("."):
            continue
        t = pl.read_csv(
            p,
            columns=["sample_type", "analyte", "value", "uom"],
            schema_overrides={"value": pl.Float64},
        )
        for r in (
            t.group_by("sample_type", "analyte", "uom")
            .agg(hi=pl.col("value").max())
            .iter_rows(named=True)
        ):
            st = r["sample_type"] if r["sample_type"] in lab else "in_process"
            prev = lab[st].get(r["analyte"], {"uom": r["uom"], "physical": [0.0, 0.0]})
            prev["physical"] = [
                0.0,
                max(prev["physical"][1], round(float(r["hi"] or 0) * 3 + 1, 3)),
            ]
            lab[st][r["analyte"]] = prev
    has_phases = (
        any('"phase_start"' in p.read_text() for p in (root / "mes").glob("*/*/*.jsonl"))
        if (root / "mes").exists()
        else False
    )
    today = datetime.now(UTC).date().isoformat()
    return {
        "version": 1,
        "effective_from": today,
        "change_log": [
            {
                "version": 1,
                "date": today,
                "by": "draft",
                "reason": f"draft from the landing zone {root}: mark CPPs, set NOR/PAR and release limits",
            }
        ],
        "product": product,
        "unit_class": unit_class,
        "settle_minutes": 30,
        "future_tolerance_minutes": 60,
        "batch_window_grace_minutes": 30,
        "right_first_time": {"required_assays": "reported", "max_major_excursions": 0},
        "phase_rule": {"kind": "none" if has_phases else "one_phase"},
        "tags": tags,
        "unit_conversions": {},
        "lab": lab,
    }
