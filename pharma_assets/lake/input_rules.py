"""Input rules applied to landed files before their rows reach bronze (docs/data_model.md,
"Bad input"): time zones, rows of files that are never ingested, and the reason a row's
``raw`` text stands for.

- Times must say their zone (``Z`` or an offset; a Parquet timestamp with a time zone). A
  file with naive times is refused whole (``naive_timestamp``) unless the source's zone is
  declared in ``PHARMA_SOURCE_TZ`` (an IANA name such as ``Europe/Berlin``): naive times are
  then read in that zone and converted to UTC. Never silently taken as UTC.
- Unroutable files are quarantined unread as data, but their rows are still counted (a
  Parquet footer, the lines of a JSON Lines or CSV file) so the ledger accounts for every
  landed row.
"""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from .landing_scan import LandedFile

SOURCE_TZ_ENV = "PHARMA_SOURCE_TZ"
_HAS_ZONE = r"(?i)(z|[+-]\d{2}(:?\d{2})?)$"
_ROUTING = ("batch_id", "unit_id")


class NaiveTimestamps(ValueError):
    """A file's times carry no time zone and PHARMA_SOURCE_TZ is not set."""


def source_tz() -> str | None:
    """The declared zone of naive source times (``PHARMA_SOURCE_TZ``), validated."""
    tz = os.environ.get(SOURCE_TZ_ENV, "").strip()
    if not tz:
        return None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{SOURCE_TZ_ENV}={tz!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)"
        ) from None
    return tz


def resolve_naive_times(df: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``df`` with naive times of ``columns`` made explicit, or NaiveTimestamps.

    Parquet timestamps without a zone and ISO strings without ``Z``/offset are naive. With
    ``PHARMA_SOURCE_TZ`` they are read in that zone (an ambiguous DST hour as the earlier
    instant) and converted to UTC; without it the file is refused.
    """
    tz = source_tz()
    out = []
    for c in columns:
        if c not in df.columns:
            continue
        col = df[c]
        if isinstance(col.dtype, pl.Datetime) and col.dtype.time_zone is None:
            if col.null_count() == col.len():
                continue
            if tz is None:
                raise NaiveTimestamps(
                    f"{c} is a timestamp without time zone ({col.len() - col.null_count()} "
                    f"values, first {col.drop_nulls()[0]}); write UTC times, or set "
                    f"{SOURCE_TZ_ENV} to the source's IANA zone"
                )
            out.append(
                pl.col(c)
                .dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
                .dt.convert_time_zone("UTC")
            )
        elif col.dtype == pl.String:
            text = pl.col(c).str.strip_chars()
            naive = text.is_not_null() & ~text.str.contains(_HAS_ZONE)
            parsed = pl.when(naive).then(text).str.to_datetime(time_unit="us", strict=False)
            found = df.select(
                n=(naive & parsed.is_not_null()).sum(),
                first=pl.when(naive & parsed.is_not_null()).then(text).drop_nulls().first(),
            )
            if found["n"].item() == 0:
                continue
            if tz is None:
                raise NaiveTimestamps(
                    f"{c}: {found['n'].item()} times without a time zone (e.g. "
                    f"{found['first'].item()!r}); write UTC with 'Z' or an offset, or set "
                    f"{SOURCE_TZ_ENV} to the source's IANA zone"
                )
            utc = (
                parsed.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
                .dt.convert_time_zone("UTC")
                .dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            )
            out.append(
                pl.when(naive & parsed.is_not_null()).then(utc).otherwise(pl.col(c)).alias(c)
            )
    return df.with_columns(out) if out else df


def count_rows(rel: str, data: bytes) -> int | None:
    """Rows of a file that is not ingested (unroutable), by its kind; None if unknown."""
    name = rel.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return int(pq.ParquetFile(io.BytesIO(data)).metadata.num_rows)
        if name.endswith((".jsonl", ".json", ".ndjson")):
            return sum(1 for line in data.splitlines() if line.strip())
        if name.endswith((".csv", ".tsv", ".txt")):
            return max(sum(1 for line in data.splitlines() if line.strip()) - 1, 0)
    except Exception:
        return None
    return None


def refused_entry(
    f: LandedFile, landing_root: str | Path, now: datetime | None, run_id: str
) -> dict[str, Any]:
    """The quarantine/ledger row of an entry landing_scan's routing rules refuse (``f.issue``):
    a symbolic link is never read (no hash, rows unknown); other files are hashed and
    their rows counted."""
    from .bronze import _log_row

    data = b"" if f.is_link else (Path(landing_root) / f.rel).read_bytes()
    sha = "" if f.is_link else hashlib.sha256(data).hexdigest()
    rows = None if f.is_link else count_rows(f.rel, data)
    return _log_row(
        f,
        sha,
        "quarantined",
        f.issue,
        f.issue_detail or f.rel,
        rows,
        now or datetime.now(UTC),
        run_id,
    )


def raw_reason(raw: str | None) -> str | None:
    """The reason a bronze row's ``raw`` text stands for: a content id that contradicts the
    landing folder (``batch_id_mismatch``, ``unit_id_mismatch``) or a cell that did not
    parse (``type_error``)."""
    if not raw:
        return None
    names = [part.split("=", 1)[0] for part in raw.split(";") if part]
    if any(n not in _ROUTING for n in names):
        return "type_error"
    return "batch_id_mismatch" if "batch_id" in names else "unit_id_mismatch"


def raw_reason_expr(col: str = "raw") -> pl.Expr:
    """``raw_reason`` as a polars expression (null when ``raw`` is null)."""
    other = pl.col(col).str.replace_all(r"(?:^|;)(?:batch_id|unit_id)=[^;]*", "") != ""
    return (
        pl.when(pl.col(col).is_null())
        .then(pl.lit(None, pl.String))
        .when(other)
        .then(pl.lit("type_error"))
        .when(pl.col(col).str.contains(r"(?:^|;)batch_id="))
        .then(pl.lit("batch_id_mismatch"))
        .otherwise(pl.lit("unit_id_mismatch"))
    )


__all__ = [
    "NaiveTimestamps",
    "count_rows",
    "raw_reason",
    "raw_reason_expr",
    "refused_entry",
    "resolve_naive_times",
    "source_tz",
]
