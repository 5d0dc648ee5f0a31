"""Historical-data importer: turn a plant's historical batch export into landing telemetry.

What for: sites that already have batch history (historian or LIMS exports, spreadsheets)
can feed it through the same pipeline as simulated data. The importer reads a CSV/TSV or
Parquet file, maps the source's tag names and units to the twin's canonical tags
(``pharma_assets.process.vocabulary.CANONICAL_TAGS``) and writes landing telemetry Parquet files
with ``pharma_assets.twin.landing.write_telemetry_chunk``, one file per batch per UTC day::

    <out>/telemetry/<unit_id>/<batch_id>/<YYYYmmddTHHMMSSZ>_<seq:05d>.parquet

Nothing is dropped silently: source columns (wide layout) or tag names (long layout) that
the tag map does not cover are listed in ``ImportReport.unmapped_columns`` and logged as
warnings, and cells that are empty or not numbers are written as NaN with quality
``"bad"`` and counted in ``ImportReport.bad_values``. Structural problems (a missing id or
time column, an unparseable timestamp, duplicate readings) stop the import with a
``ValueError`` before any file is written.

Layouts
-------
``wide``
    one row per time point per batch, one column per source tag::

        Time,Batch,Reactor,Temp_K,pH
        2024-03-01T00:00:00Z,B001,BR01,310.15,7.01

``long``
    one row per reading: timestamp, batch, (unit), tag name and value columns, named by
    ``columns.tag`` and ``columns.value``::

        Time,Batch,Reactor,Tag,Value
        2024-03-01T00:00:00Z,B001,BR01,Temp_K,310.15

    Tags need not share time stamps (e.g. pH every 10 min, an offline value hourly); no
    filler readings are invented for the gaps.

Tag map (YAML)
--------------
::

    site_id: SITE01            # site of every reading unless columns.site_id names a column
    columns:                   # which source columns hold ids and time
      timestamp: Time          # required; ISO 8601 timestamps, or numbers = hours since the
                               #   batch start when columns.batch_start is given
      batch_id: Batch          # required
      unit_id: Reactor         # optional; else default_unit_id (one of the two is required)
      site_id: Site            # optional; else site_id above
      batch_start: Start       # optional; ISO batch start time for numeric (hours) timestamps
      tag: Tag                 # long layout only (required there): tag-name column
      value: Value             # long layout only (required there): value column
    default_unit_id: BR01
    timezone: UTC              # IANA zone of naive timestamps (e.g. Europe/Berlin); default UTC
    tags:                      # source tag/column name -> canonical tag and source unit
      Temp_K: {tag: temperature_c, from_uom: K}
      pH: {tag: ph, from_uom: pH}
      DO_percent: {tag: dissolved_oxygen_pct, from_uom: "%"}
      Pressure_mbar: {tag: headspace_pressure_bar, from_uom: mbar}

Rules checked when the map is loaded: every ``tag`` must be canonical, ``from_uom`` must
equal the canonical unit or have a conversion in ``SUPPORTED_CONVERSIONS`` (else the error
names the tag and both units), no two source tags may map to the same canonical tag, and
``timezone`` must be a known IANA zone. Timestamps with an offset (``Z``, ``+02:00``) are
converted to UTC; naive ones are read in ``timezone`` (the earlier instant when a local
time is ambiguous at a DST change). Unit conversions are linear only: gauge versus
absolute pressure is not converted.

A documented example lives in ``docs/examples/tag_map_example.yaml``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .process.site_tags import declare_site_tags
from .process.timestamps import ParsedTimes, check_format, parse_timestamps
from .process.vocabulary import CANONICAL_TAGS
from .twin.landing import QUALITY_CODES, chunk_path, write_telemetry_chunk

__all__ = [
    "SUPPORTED_CONVERSIONS",
    "ColumnMap",
    "ImportReport",
    "TagMap",
    "TagMapping",
    "convert_values",
    "import_file",
    "load_tag_map",
]

log = logging.getLogger(__name__)

GOOD = QUALITY_CODES.index("good")
BAD = QUALITY_CODES.index("bad")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_MAX_EXAMPLES = 5
FUTURE_TOLERANCE = timedelta(minutes=60)  # the CPP spec's default future_tolerance_minutes
_SEQ_RE = re.compile(r"_(\d+)\.parquet$")

# (from_uom, canonical uom) -> (scale, offset): canonical = source * scale + offset.
SUPPORTED_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("K", "degC"): (1.0, -273.15),
    ("degF", "degC"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("mbar", "bar"): (1e-3, 0.0),
    ("hPa", "bar"): (1e-3, 0.0),
    ("kPa", "bar"): (1e-2, 0.0),
    ("Pa", "bar"): (1e-5, 0.0),
    ("psi", "bar"): (0.06894757293168361, 0.0),  # 1 psi = 6894.757293168361 Pa
    ("L/h", "mL/h"): (1e3, 0.0),
    ("mL/min", "mL/h"): (60.0, 0.0),
    ("m3", "L"): (1e3, 0.0),
    ("mL", "L"): (1e-3, 0.0),
    ("L", "mL"): (1e3, 0.0),
    ("kPa", "mmHg"): (7.500615758456563, 0.0),  # 1 mmHg = 133.322387415 Pa
    ("mA", "A"): (1e-3, 0.0),
    # lab and general units (LIMS, CMMS and site tags of other unit classes)
    ("mg/L", "g/L"): (1e-3, 0.0),
    ("mg/mL", "g/L"): (1.0, 0.0),
    ("ug/mL", "g/L"): (1e-3, 0.0),
    ("fraction", "%"): (100.0, 0.0),
    ("%", "fraction"): (0.01, 0.0),
    ("mM", "mmol/L"): (1.0, 0.0),
    ("cells/mL", "1e6 cells/mL"): (1e-6, 0.0),
    ("min", "h"): (1.0 / 60.0, 0.0),
    ("s", "h"): (1.0 / 3600.0, 0.0),
    ("d", "h"): (24.0, 0.0),
    ("ng/mg", "ppm"): (1.0, 0.0),
    ("kPa", "mbar"): (10.0, 0.0),
    ("bar", "mbar"): (1e3, 0.0),
    ("Pa", "mbar"): (1e-2, 0.0),
    ("kg/h", "g/min"): (1000.0 / 60.0, 0.0),
    ("rad/s", "rpm"): (60.0 / (2 * 3.141592653589793), 0.0),
    ("W", "kW"): (1e-3, 0.0),
}


def unit_conversion(from_uom: str, to_uom: str, what: str) -> tuple[float, float]:
    """Scale and offset taking ``from_uom`` to ``to_uom``; ValueError naming ``what``."""
    if from_uom == to_uom:
        return 1.0, 0.0
    try:
        return SUPPORTED_CONVERSIONS[(from_uom, to_uom)]
    except KeyError:
        known = sorted({to_uom} | {f for f, t in SUPPORTED_CONVERSIONS if t == to_uom})
        raise ValueError(
            f"no unit conversion from {from_uom!r} to {to_uom!r} for {what}; "
            f"supported source units for {to_uom!r}: {known}"
        ) from None


def _conversion(tag: str, from_uom: str, to_uom: str | None = None) -> tuple[float, float]:
    """Scale and offset taking ``from_uom`` to the unit of ``tag`` (canonical, or ``to_uom``
    for a site tag the platform does not know)."""
    return unit_conversion(from_uom, to_uom or CANONICAL_TAGS[tag], f"tag {tag!r}")


def convert_values(
    values: np.ndarray, tag: str, from_uom: str, to_uom: str | None = None
) -> np.ndarray:
    """Convert ``values`` measured in ``from_uom`` to the unit of ``tag``: its canonical unit,
    or ``to_uom`` for a site tag (a tag of another unit class, not in the canonical list).

    Raises ``ValueError`` naming the tag and both units when no conversion is known.
    """
    if tag not in CANONICAL_TAGS and to_uom is None:
        raise ValueError(
            f"unknown tag {tag!r}: give its engineering unit (uom) to import it as a site "
            f"tag; canonical tags are {sorted(CANONICAL_TAGS)}"
        )
    scale, offset = _conversion(tag, from_uom, to_uom)
    out = np.asarray(values, dtype=np.float64)
    if scale == 1.0 and offset == 0.0:
        return out.copy()
    return out * scale + offset


# ---------------------------------------------------------------- tag map


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TagMapping(_Model):
    """One source tag: the tag it feeds and the unit the source records it in.

    A canonical tag (the bioreactor class) is written in its canonical unit. Any other tag
    name is a site tag (a tag of another unit class, or one the class does not know): it
    needs ``uom``, the engineering unit it is written in (``from_uom`` is converted to it).
    """

    tag: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    from_uom: str = Field(min_length=1)
    uom_: str | None = Field(default=None, alias="uom", min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _convertible(self) -> TagMapping:
        if self.tag in CANONICAL_TAGS:
            if self.uom_ is not None and self.uom_ != CANONICAL_TAGS[self.tag]:
                raise ValueError(
                    f"tag {self.tag!r} is canonical with unit {CANONICAL_TAGS[self.tag]!r}, "
                    f"not {self.uom_!r}; drop uom or map to another tag name"
                )
        elif self.uom_ is None:
            raise ValueError(
                f"tag {self.tag!r} is not a canonical (bioreactor) tag: give its engineering "
                f"unit (uom) to import it as a site tag; canonical tags are "
                f"{sorted(CANONICAL_TAGS)}"
            )
        _conversion(self.tag, self.from_uom, self.uom_)
        return self

    @property
    def uom(self) -> str:
        """Unit the readings are written in."""
        return self.uom_ or CANONICAL_TAGS[self.tag]


class ColumnMap(_Model):
    """Names of the source columns that hold ids, time and (long layout) tag and value."""

    timestamp: str = Field(min_length=1)
    batch_id: str = Field(min_length=1)
    unit_id: str | None = Field(default=None, min_length=1)
    site_id: str | None = Field(default=None, min_length=1)
    batch_start: str | None = Field(default=None, min_length=1)
    tag: str | None = Field(default=None, min_length=1)
    value: str | None = Field(default=None, min_length=1)
    timezone: str | None = Field(default=None, min_length=1)  # IANA zone of each row

    @model_validator(mode="after")
    def _distinct(self) -> ColumnMap:
        names = [v for v in self.model_dump().values() if v is not None]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column(s) {dupes} are named for more than one role")
        return self

    def id_fields(self, layout: str) -> dict[str, str]:
        """Role -> source column for the non-tag columns used by ``layout``."""
        roles = ["timestamp", "batch_id", "unit_id", "site_id", "batch_start", "timezone"]
        if layout == "long":
            roles += ["tag", "value"]
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}


class TagMap(_Model):
    """Validated tag map: how one source's export maps onto canonical landing telemetry."""

    site_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+$")
    columns: ColumnMap
    default_unit_id: str | None = Field(default=None, min_length=1)
    timezone: str = "UTC"
    # how timestamps are written (``process/timestamps.py``): a strptime format, epoch_s,
    # epoch_ms, epoch_us or excel; None: ISO 8601 or a known historian format
    timestamp_format: str | None = None
    # a naive local time that happened twice at a DST change: reject the row (default),
    # or read it as the earliest / latest of the two (counted in the report)
    dst_ambiguous: Literal["reject", "earliest", "latest"] = "reject"
    tags: dict[str, TagMapping] = Field(min_length=1)

    @field_validator("timestamp_format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        return check_format(v)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'UTC'") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TagMap:
        if self.columns.site_id is None and self.site_id is None:
            raise ValueError("site_id is required when columns.site_id is not given")
        if self.columns.unit_id is None and self.default_unit_id is None:
            raise ValueError("default_unit_id is required when columns.unit_id is not given")
        targets = [m.tag for m in self.tags.values()]
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            sources = {t: [s for s, m in self.tags.items() if m.tag == t] for t in dupes}
            raise ValueError(f"several source tags map to the same canonical tag: {sources}")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


M = TypeVar("M", bound=BaseModel)


def load_mapping(path: Path, model: type[M], what: str) -> M:
    """Load and validate a mapping YAML file (tag map, MES/LIMS/CMMS map) as ``model``.

    Raises ``ConfigError`` (a ``ValueError``) whose message names the file and the field.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        data: Any = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must be a YAML mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"{what} {p} is invalid: {problems}") from e


def load_tag_map(path: Path) -> TagMap:
    """Load and validate a tag-map YAML file (errors name the file and the field)."""
    return load_mapping(path, TagMap, "tag map")


# ---------------------------------------------------------------- report


@dataclass
class ImportReport:
    """What an import read and wrote; ``summary()`` is meant for people (CLI, logs)."""

    rows_read: int
    readings_written: int
    files_written: list[Path]
    batches: list[str]
    unmapped_columns: list[str]
    bad_values: int
    source: Path | None = None
    layout: str = ""
    missing_tags: list[str] = field(default_factory=list)  # mapped source tags absent from file
    skipped_rows: int = 0  # long layout: rows whose tag name is unmapped (not imported)
    future_readings: int = 0  # dated after now + FUTURE_TOLERANCE (quarantined by silver)
    latest_ts: datetime | None = None
    site_tags: list[str] = field(default_factory=list)  # declared: kept in their unit by silver
    # rows whose timestamp could not be read (reason -> rows), written to rejects_file
    rejected_rows: dict[str, int] = field(default_factory=dict)
    rejects_file: Path | None = None
    timestamp_format: str = ""  # what the timestamps were read as
    dst_resolved: int = 0  # ambiguous local times read by the mapping's dst_ambiguous
    rows_imported: int = 0  # rows whose readings were written (or are bad values)

    @property
    def reconciles(self) -> bool:
        """rows read = rows imported + rows rejected (timestamp) + rows skipped (unmapped
        tag names)."""
        return self.rows_read == (
            self.rows_imported + sum(self.rejected_rows.values()) + self.skipped_rows
        )

    def summary(self) -> str:
        """Multi-line human-readable summary naming unmapped columns and bad values."""
        src = f"{self.source} ({self.layout} layout)" if self.source else f"{self.layout} layout"
        lines = [
            f"Imported {src}",
            f"  rows read:        {self.rows_read}",
            f"  readings written: {self.readings_written} in {len(self.files_written)} file(s)",
            f"  batches ({len(self.batches)}):      {', '.join(self.batches) or '-'}",
            f"  bad values:       {self.bad_values} (empty or non-numeric; written as NaN, quality 'bad')",
        ]
        if self.unmapped_columns:
            lines.append(
                f"  NOT imported, not in tag map ({len(self.unmapped_columns)}): "
                + ", ".join(self.unmapped_columns)
            )
        else:
            lines.append("  unmapped columns: none")
        if self.skipped_rows:
            lines.append(f"  rows skipped (unmapped tag names): {self.skipped_rows}")
        if self.timestamp_format:
            lines.append(f"  timestamps read as: {self.timestamp_format}")
        if self.dst_resolved:
            lines.append(
                f"  ambiguous local times (DST fold) read by dst_ambiguous: {self.dst_resolved}"
            )
        if self.rejected_rows:
            lines.append(
                f"  rows NOT imported, timestamp rejected ({sum(self.rejected_rows.values())}, "
                f"listed in {self.rejects_file}):"
            )
            lines += [f"    {n} x {r}" for r, n in sorted(self.rejected_rows.items())]
        lines.append(
            f"  rows: {self.rows_read} read = {self.rows_imported} imported + "
            f"{sum(self.rejected_rows.values())} rejected + {self.skipped_rows} skipped"
            + ("" if self.reconciles else "  (DOES NOT RECONCILE)")
        )
        if self.missing_tags:
            lines.append("  mapped tags absent from the file: " + ", ".join(self.missing_tags))
        if self.site_tags:
            lines.append(
                f"  site tags ({len(self.site_tags)}, not bioreactor tags; declared in "
                "landing/site_tags/, kept in their unit): " + ", ".join(self.site_tags)
            )
        return "\n".join(lines)

    def warnings(self) -> list[str]:
        """One line per thing left out (unmapped columns or tag names, absent mapped tags)."""
        src = self.source or "input"
        out = []
        if self.unmapped_columns:
            what = "columns" if self.layout == "wide" else "columns/tag names"
            out.append(
                f"{src}: {len(self.unmapped_columns)} {what} not in the tag map were NOT "
                f"imported: {', '.join(self.unmapped_columns)}"
            )
        if self.missing_tags:
            out.append(f"{src}: mapped tags absent from the file: {', '.join(self.missing_tags)}")
        if self.rejected_rows:
            out.append(
                f"{src}: {sum(self.rejected_rows.values())} row(s) NOT imported, their timestamp "
                f"could not be read ({'; '.join(sorted(self.rejected_rows))}); see "
                f"{self.rejects_file}"
            )
        if self.future_readings and self.latest_ts is not None:
            out.append(
                f"{src}: {self.future_readings} reading(s) dated in the future (latest "
                f"{self.latest_ts:%Y-%m-%dT%H:%M:%SZ}): the pipeline quarantines them as "
                "ts_in_future; check the time zone of the export (tag map: timezone)"
            )
        return out


# ---------------------------------------------------------------- parsing helpers


def read_table(src: Path) -> pl.DataFrame:
    """Read a CSV/TSV (every column as text, so we do the parsing) or Parquet file."""
    if not src.is_file():
        raise FileNotFoundError(f"input file {src} does not exist")
    suffix = src.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab", ".txt"):
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        return pl.read_csv(src, separator=sep, infer_schema=False)
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(src)
    raise ValueError(f"{src}: unsupported file type {suffix!r}; use .csv, .tsv or .parquet")


def row_examples(rows: np.ndarray, values: pl.Series) -> str:
    """'row 3: 'x', row 9: None' for the first few offending (1-based data) rows."""
    shown = [f"row {int(r) + 1}: {values[int(r)]!r}" for r in rows[:_MAX_EXAMPLES]]
    more = f" and {len(rows) - _MAX_EXAMPLES} more" if len(rows) > _MAX_EXAMPLES else ""
    return ", ".join(shown) + more


def parse_numbers(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 and a mask of cells that are empty, non-numeric or not finite."""
    if s.dtype.is_numeric() or s.dtype == pl.Boolean:
        num = s.cast(pl.Float64)
    else:
        num = s.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    vals = num.fill_null(float("nan")).to_numpy().astype(np.float64, copy=True)
    bad = ~np.isfinite(vals)
    vals[bad] = np.nan
    return vals, bad


def text_column(s: pl.Series, src: Path, role: str) -> pl.Series:
    """Column as stripped text; an empty cell is an error naming the role and rows."""
    out = s.cast(pl.String).str.strip_chars()
    empty = out.is_null() | (out == "")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        raise ValueError(
            f"{src}: {len(rows)} empty value(s) in {role} column {s.name!r} ({row_examples(rows, s)})"
        )
    return out


def id_column(s: pl.Series, src: Path, role: str) -> pl.Series:
    """Id column as stripped text; empty ids and ids unsafe as folder names are errors."""
    out = text_column(s, src, role)
    unsafe = out.str.contains(r"[/\\\x00]") | out.str.starts_with(".")
    if unsafe.any():
        rows = np.flatnonzero(unsafe.to_numpy())
        raise ValueError(
            f"{src}: {role} values must not contain '/' or '\\' or start with '.' "
            f"(they become folder names): {row_examples(rows, s)}"
        )
    return out


def _iso_to_us(text: str, zone: ZoneInfo) -> int | None:
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return (dt - _EPOCH) // _ONE_US


def instants_us(s: pl.Series, zone: ZoneInfo) -> pl.Series:
    """Absolute instants as Int64 microseconds since the epoch (null where unparseable)."""
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is None:
            s = s.dt.replace_time_zone(zone.key, ambiguous="earliest", non_existent="null")
        return s.dt.convert_time_zone("UTC").dt.cast_time_unit("us").dt.epoch("us")
    text = s.cast(pl.String)
    uniq = text.drop_nulls().unique()
    mapping = {u: _iso_to_us(u, zone) for u in uniq.to_list()}
    return text.replace_strict(mapping, default=None, return_dtype=pl.Int64)


def _looks_numeric(s: pl.Series) -> bool:
    if s.dtype.is_numeric():
        return True
    if s.dtype != pl.String:
        return False
    present = s.drop_nulls()
    if present.len() == 0:
        return False
    return present.str.strip_chars().cast(pl.Float64, strict=False).null_count() == 0


def _timestamps(df: pl.DataFrame, tm: TagMap, src: Path) -> ParsedTimes:
    """Reading times as int64 µs since the epoch, UTC, with a reason for each row that has
    none (``process.timestamps``); numbers are hours since ``columns.batch_start`` unless
    ``timestamp_format`` says they are epoch or Excel times."""
    col = tm.columns.timestamp
    s = df[col]
    zones: str | list[str] = tm.timezone
    if tm.columns.timezone is not None:
        zs = text_column(df[tm.columns.timezone], src, "timezone")
        bad = sorted({z for z in zs.unique().to_list() if not _known_zone(z)})
        if bad:
            raise ValueError(f"{src}: unknown time zone(s) {bad} in column {tm.columns.timezone!r}")
        zones = zs.to_list()
    if tm.timestamp_format is None and _looks_numeric(s):
        if tm.columns.batch_start is None:
            raise ValueError(
                f"{src}: timestamps in column {col!r} are numbers; to read them as hours since "
                "batch start set columns.batch_start in the tag map, or declare "
                "timestamp_format: epoch_s, epoch_ms or excel"
            )
        hours = s.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        start = parse_timestamps(df[tm.columns.batch_start], zones, None, tm.dst_ambiguous)
        if not start.ok.all():
            rows = np.flatnonzero(~start.ok)
            raise ValueError(
                f"{src}: unparseable batch start in column {tm.columns.batch_start!r} "
                f"({row_examples(rows, df[tm.columns.batch_start])}: "
                f"{start.reason[int(rows[0])]})"
            )
        us = start.us + (hours * _US_PER_HOUR).round(0).fill_null(0).cast(pl.Int64).to_numpy()
        reason = [
            None if h is not None else "empty or non-numeric hours since batch start" for h in hours
        ]
        return ParsedTimes(us, reason, "hours since batch start", start.dst_resolved)
    return parse_timestamps(s, zones, tm.timestamp_format, tm.dst_ambiguous)


def _known_zone(z: str) -> bool:
    try:
        ZoneInfo(z)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def write_rejects(
    out: Path, src: Path, df: pl.DataFrame, parsed: ParsedTimes, what: str = "telemetry"
) -> Path | None:
    """The rows whose timestamp was rejected, as read (every column as text) with their
    1-based data row and the reason: ``<out>/import_rejects/<what>_<file>_<now>.csv``."""
    bad = np.flatnonzero(~parsed.ok)
    if not len(bad):
        return None
    rows = (
        df[bad.tolist()]
        .select(pl.all().cast(pl.String))
        .with_columns(
            pl.Series("source_row", (bad + 1).tolist(), dtype=pl.Int64),
            pl.Series("reject_reason", [parsed.reason[int(i)] for i in bad], dtype=pl.String),
        )
    )
    folder = out / "import_rejects"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{what}_{src.stem}_{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.csv"
    rows.select("source_row", "reject_reason", *df.columns).write_csv(path)
    return path


# ---------------------------------------------------------------- import


def _check_columns(df: pl.DataFrame, tm: TagMap, layout: str, src: Path) -> dict[str, str]:
    if layout == "long":
        for role in ("tag", "value"):
            if getattr(tm.columns, role) is None:
                raise ValueError(
                    f"long layout needs columns.{role} in the tag map (importing {src})"
                )
    roles = tm.columns.id_fields(layout)
    for role, name in roles.items():
        if name not in df.columns:
            raise ValueError(
                f"{src}: column {name!r} (tag map columns.{role}) not found; "
                f"the file has columns {df.columns}"
            )
    if layout == "wide":
        clash = sorted(set(roles.values()) & set(tm.tags))
        if clash:
            raise ValueError(f"tag map names {clash} both as id/time column and as a tag")
    return roles


def _frame(
    ids: pl.DataFrame, tag_idx: int | np.ndarray, vals: np.ndarray, bad: np.ndarray
) -> pl.DataFrame:
    n = len(vals)
    tags = np.full(n, tag_idx, dtype=np.int32) if isinstance(tag_idx, int) else tag_idx
    return ids.with_columns(
        pl.Series("tag_idx", tags, dtype=pl.Int32),
        pl.Series("value", vals, dtype=pl.Float64),
        pl.Series("quality", np.where(bad, BAD, GOOD).astype(np.int8), dtype=pl.Int8),
    )


def _id_frame(df: pl.DataFrame, tm: TagMap, src: Path, ts: np.ndarray) -> pl.DataFrame:
    c = tm.columns
    n = df.height
    site = id_column(df[c.site_id], src, "site_id") if c.site_id else pl.Series([tm.site_id] * n)
    unit = (
        id_column(df[c.unit_id], src, "unit_id")
        if c.unit_id
        else pl.Series([tm.default_unit_id] * n)
    )
    # unit and batch IDs are case-insensitive and stored upper case (BR01, BR01-B0001), as the
    # plant and the CLI write them: "br01" and "BR01" must not become two units
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64),
            "site_id": site.cast(pl.String),
            "unit_id": unit.cast(pl.String).str.to_uppercase(),
            "batch_id": id_column(df[c.batch_id], src, "batch_id").str.to_uppercase(),
        }
    )


def _next_seq(folder: Path) -> int:
    """First free sequence number in a landing folder (files already there are kept)."""
    seqs = [int(m.group(1)) for p in folder.glob("*.parquet") if (m := _SEQ_RE.search(p.name))]
    return max(seqs, default=0) + 1


def import_file(
    input: Path,
    layout: Literal["wide", "long"],
    tag_map: Path | TagMap,
    out: Path,
    allow_missing_tags: bool = False,
) -> ImportReport:
    """Import one historical file into landing telemetry under ``out``.

    ``tag_map`` is a ``TagMap`` or the path of a tag-map YAML file (see module docstring).
    Writes one telemetry Parquet file per batch per UTC day and returns what was read,
    written and left out. Raises ``ValueError`` for structural problems (missing columns,
    bad timestamps or ids, duplicate readings) before writing anything, and for a tag of the
    tag map absent from the file (a misspelled column would otherwise silently leave its tag
    out) unless ``allow_missing_tags``.
    """
    src = Path(input)
    root = Path(out)
    if layout not in ("wide", "long"):
        raise ValueError(f"layout must be 'wide' or 'long', got {layout!r}")
    tm = tag_map if isinstance(tag_map, TagMap) else load_tag_map(Path(tag_map))
    df = read_table(src)
    roles = _check_columns(df, tm, layout, src)
    id_cols = set(roles.values())
    order = {m.tag: i for i, m in enumerate(tm.tags.values())}
    canon = [m.tag for m in tm.tags.values()]
    uoms = {m.tag: m.uom for m in tm.tags.values()}
    parts: list[pl.DataFrame] = []
    rows_read = df.height
    skipped = 0
    # rows whose timestamp cannot be read are set aside with the reason (import_rejects/)
    parsed = _timestamps(df, tm, src)
    all_rows, ok = df, parsed.ok
    ts_all = parsed.us
    if not ok.all():
        df = df.filter(pl.Series(ok))
    ts_ok = ts_all[ok]

    if layout == "wide":
        unmapped = [c for c in df.columns if c not in id_cols and c not in tm.tags]
        missing = [s for s in tm.tags if s not in df.columns]
        present = [s for s in tm.tags if s in df.columns]
        if not present and df.height:
            raise ValueError(
                f"{src}: none of the tag map's source tags {list(tm.tags)} is a column"
            )
        ids = _id_frame(df, tm, src, ts_ok)
        for source in present:
            m = tm.tags[source]
            vals, bad = parse_numbers(df[source])
            parts.append(
                _frame(ids, order[m.tag], convert_values(vals, m.tag, m.from_uom, m.uom), bad)
            )
    else:
        assert tm.columns.tag is not None and tm.columns.value is not None
        names = text_column(df[tm.columns.tag], src, "tag")
        extra_cols = [c for c in df.columns if c not in id_cols]
        seen = names.unique(maintain_order=True).to_list()
        unmapped = extra_cols + [t for t in seen if t not in tm.tags]
        seen_set = set(seen)
        missing = [s for s in tm.tags if s not in seen_set]
        mapped = names.is_in(list(tm.tags)).to_numpy()
        skipped = int((~mapped).sum())
        df, names = df.filter(pl.Series(mapped)), names.filter(pl.Series(mapped))
        ids = _id_frame(df, tm, src, ts_ok[mapped])
        vals, bad = parse_numbers(df[tm.columns.value])
        tag_idx = np.zeros(df.height, dtype=np.int32)
        name_arr = names.to_numpy()
        for source, m in tm.tags.items():
            sel = name_arr == source
            if sel.any():
                vals[sel] = convert_values(vals[sel], m.tag, m.from_uom, m.uom)
                tag_idx[sel] = order[m.tag]
        parts.append(_frame(ids, tag_idx, vals, bad))

    left = [c for c in unmapped if c not in id_cols]
    # wide: a mapped tag's column is missing; long: a file need not carry every tag, but a
    # mapped tag absent while unmapped tag names are present is most likely a misspelling
    if missing and not allow_missing_tags and (layout == "wide" or left):
        what = "columns" if layout == "wide" else f"tag names in column {tm.columns.tag!r}"
        raise ValueError(
            f"{src}: tag map source tag(s) {', '.join(repr(m) for m in missing)} not found among "
            f"the file's {what}"
            + (
                f"; not in the tag map: {', '.join(repr(c) for c in left)} (misspelled?)"
                if left
                else ""
            )
            + "; fix the tag map or the file, or pass allow_missing_tags (--allow-missing-tags)"
        )
    if unmapped:
        what = "columns" if layout == "wide" else "columns/tag names"
        log.warning(
            "%s: %d source %s not in the tag map, NOT imported: %s",
            src,
            len(unmapped),
            what,
            ", ".join(unmapped),
        )
    if missing:
        log.warning("%s: mapped source tags absent from the file: %s", src, ", ".join(missing))

    readings = pl.concat(parts) if parts else pl.DataFrame()
    report = ImportReport(
        rows_read=rows_read,
        readings_written=0,
        files_written=[],
        batches=[],
        unmapped_columns=unmapped,
        bad_values=0,
        source=src,
        layout=layout,
        missing_tags=missing,
        skipped_rows=skipped,
        rejected_rows=dict(parsed.by_reason),
        timestamp_format=parsed.format,
        dst_resolved=parsed.dst_resolved,
        rows_imported=df.height,
    )
    if parsed.by_reason:
        log.warning(
            "%s: %d row(s) NOT imported, timestamp rejected: %s",
            src,
            sum(parsed.by_reason.values()),
            parsed.by_reason,
        )
    if readings.is_empty():
        report.rejects_file = write_rejects(root, src, all_rows, parsed)
        return report

    key = ["site_id", "unit_id", "batch_id", "ts", "tag_idx"]
    dup = readings.select(key).is_duplicated()
    if dup.any():
        ex = readings.filter(dup).select(key).head(_MAX_EXAMPLES).to_dicts()
        for e in ex:
            e["ts"] = (_EPOCH + e["ts"] * _ONE_US).isoformat()
            e["tag"] = canon[e.pop("tag_idx")]
        raise ValueError(
            f"{src}: {int(dup.sum())} readings share batch, unit, time and tag with another "
            f"(duplicate rows, or naive local times repeated at a DST change?); e.g. {ex}"
        )

    # the site's own tags (not bioreactor tags) are declared in the landing zone, so silver
    # keeps them as readings of their unit rather than quarantining them (unknown_tag)
    landed_idx = set(readings["tag_idx"].unique().to_list())
    site = {m.tag: m.uom for m in tm.tags.values() if m.tag not in CANONICAL_TAGS}
    site = {t: u for t, u in site.items() if order[t] in landed_idx}
    if site:
        sources = {m.tag: s for s, m in tm.tags.items() if m.tag in site}
        map_name = str(tag_map) if not isinstance(tag_map, TagMap) else None
        for site_id in sorted(readings["site_id"].unique().to_list()):
            declare_site_tags(root, site_id, site, sources, map_name)
        report.site_tags = sorted(site)

    report.bad_values = int((readings["quality"] == BAD).sum())
    limit = (datetime.now(UTC) + FUTURE_TOLERANCE - _EPOCH) // _ONE_US
    report.future_readings = int((readings["ts"] > limit).sum())
    last = readings["ts"].max()
    report.latest_ts = _EPOCH + (int(last) if isinstance(last, int) else 0) * _ONE_US
    if report.future_readings:
        log.warning("%s: %d reading(s) dated in the future", src, report.future_readings)
    if report.bad_values:
        log.warning(
            "%s: %d empty or non-numeric value(s) written as NaN with quality 'bad'",
            src,
            report.bad_values,
        )

    report.rejects_file = write_rejects(root, src, all_rows, parsed)
    readings = readings.with_columns((pl.col("ts") // _US_PER_DAY).alias("day")).sort(key)
    next_seq: dict[Path, int] = {}
    for chunk in readings.partition_by(
        ["site_id", "unit_id", "batch_id", "day"], maintain_order=True
    ):
        site, unit, batch = chunk["site_id"][0], chunk["unit_id"][0], chunk["batch_id"][0]
        folder = root / "telemetry" / unit / batch
        if folder not in next_seq:
            next_seq[folder] = _next_seq(folder)
            if next_seq[folder] > 1:
                log.warning(
                    "%s already holds telemetry files; new files are added after them "
                    "(importing the same data twice duplicates readings)",
                    folder,
                )
        ts = chunk["ts"].to_numpy()
        uniq_ts, t_row = np.unique(ts, return_inverse=True)
        tix = chunk["tag_idx"].to_numpy()
        used = np.unique(tix)  # tag-map order
        t_col = np.searchsorted(used, tix)
        shape = (len(uniq_ts), len(used))
        values = np.full(shape, np.nan)
        quality = np.full(shape, BAD, dtype=np.int8)
        mask = np.zeros(shape, dtype=bool)
        values[t_row, t_col] = chunk["value"].to_numpy()
        quality[t_row, t_col] = chunk["quality"].to_numpy()
        mask[t_row, t_col] = True
        first = _EPOCH + int(uniq_ts[0]) * _ONE_US
        path = chunk_path(root, "telemetry", unit, batch, first, next_seq[folder], "parquet")
        next_seq[folder] += 1
        tags = [canon[i] for i in used]
        write_telemetry_chunk(
            path,
            uniq_ts,
            site,
            unit,
            batch,
            tags,
            [uoms[t] for t in tags],
            values,
            quality,
            mask=None if mask.all() else mask,
        )
        report.files_written.append(path)
        report.readings_written += chunk.height
        if batch not in report.batches:
            report.batches.append(batch)
    report.batches.sort()
    log.info(
        "%s: %d readings of %d batches written to %d files under %s",
        src,
        report.readings_written,
        len(report.batches),
        len(report.files_written),
        root,
    )
    return report
