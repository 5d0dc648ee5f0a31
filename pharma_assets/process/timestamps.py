"""Timestamps as plants export them: ISO 8601, historian date formats, epoch seconds or
milliseconds, Excel serial dates; naive local times in a zone (one per file or a column of
zones per row). Used by the importers (``importer.py``; the ground floor: no lake, no models).

Every row gets an instant (µs since the epoch, UTC) or a reason why not, so the importer can
quarantine the row and report it instead of stopping or guessing:

* ``empty timestamp``;
* ``not ISO 8601 nor a known historian format`` / ``does not match timestamp_format ...`` /
  ``not a number (timestamp_format epoch_s)``;
* ``non-existent local time in <zone> (DST gap)``: a wall time the clocks skipped; never
  shifted to a neighbouring instant;
* ``ambiguous local time in <zone> (DST fold)``: a wall time that happened twice; rejected
  unless the mapping says which one (``dst_ambiguous: earliest|latest``), and then counted.

Format (``timestamp_format`` in a mapping file): a ``strptime`` format (e.g.
``%d/%m/%Y %H:%M:%S``, ``%m/%d/%Y %I:%M:%S %p``), or ``epoch_s``, ``epoch_ms``, ``epoch_us``
(absolute instants; the zone does not apply), or ``excel`` (days since 1899-12-30, a wall
time in the zone). Without one: ISO 8601, else the one of ``HISTORIAN_FORMATS`` that reads
every non-ISO value; two that both read them all but disagree (03/04 as March or April)
stop the import with a request to declare the format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl

EPOCH_FORMATS = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}
EXCEL = "excel"
#: the day-and-time formats tried when a value is not ISO 8601 (declare yours to be sure)
HISTORIAN_FORMATS: tuple[str, ...] = (
    "%Y/%m/%d %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M:%S %p",
    "%d.%m.%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M %p",
    "%d.%m.%Y %H:%M",
    "%d-%b-%Y %H:%M:%S",
)
DstPolicy = Literal["reject", "earliest", "latest"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXCEL_EPOCH_US = int((datetime(1899, 12, 30, tzinfo=UTC) - _EPOCH) / timedelta(microseconds=1))
_US_PER_DAY = 86_400_000_000


def check_format(fmt: str | None) -> str | None:
    """ValueError unless ``fmt`` is None, an epoch/Excel keyword or a strptime format."""
    if fmt is None or fmt in EPOCH_FORMATS or fmt == EXCEL:
        return fmt
    if "%" not in fmt:
        raise ValueError(
            f"timestamp_format {fmt!r} is neither a strptime format (with % codes) nor one of "
            f"{[*EPOCH_FORMATS, EXCEL]}"
        )
    return fmt


@dataclass
class ParsedTimes:
    """Instants of a column of timestamps: ``us`` (valid where ``reason`` is None)."""

    us: np.ndarray  # int64 µs since the epoch, UTC (0 where rejected)
    reason: list[str | None]
    format: str  # what was read: iso8601, a strptime format, epoch_s, ...
    dst_resolved: int = 0  # ambiguous wall times resolved by the mapping's dst_ambiguous
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        return np.array([r is None for r in self.reason], dtype=bool)


def _iso(text: str) -> tuple[int, bool] | None:
    """(µs, aware) of an ISO 8601 value: µs since the epoch if it has an offset, else the
    wall time read as if UTC; None if not ISO."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    aware = dt.tzinfo is not None
    if not aware:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1), aware


def _strptime(text: pl.Series, fmt: str) -> pl.Series:
    """µs (Int64, null where no match) of ``text`` by ``fmt``: wall times read as if UTC,
    or instants when the format has an offset (%z)."""
    s = text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
    if isinstance(s.dtype, pl.Datetime) and s.dtype.time_zone is not None:
        s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return s.dt.epoch("us")


def _localise(
    wall_us: np.ndarray,
    zones: Sequence[str],
    policy: DstPolicy,
    reason: list[str | None],
    todo: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Wall times (µs read as if UTC) at rows ``todo`` -> instants in each row's zone."""
    out = wall_us.copy()
    resolved = 0
    zarr = np.asarray(zones, dtype=object)
    for z in sorted(set(zarr[todo].tolist())):
        rows = np.flatnonzero(todo & (zarr == z))
        naive = pl.Series(wall_us[rows], dtype=pl.Int64).cast(pl.Datetime("us"))
        early = naive.dt.replace_time_zone(z, ambiguous="earliest", non_existent="null")
        late = naive.dt.replace_time_zone(z, ambiguous="latest", non_existent="null")
        e = early.dt.epoch("us").to_numpy()
        lt = late.dt.epoch("us").to_numpy()
        gap = early.is_null().to_numpy()
        amb = ~gap & (e != lt)
        for k, r in enumerate(rows):
            if gap[k]:
                reason[r] = f"non-existent local time in {z} (DST gap)"
            elif amb[k] and policy == "reject":
                reason[r] = (
                    f"ambiguous local time in {z} (DST fold; set dst_ambiguous: earliest or "
                    "latest in the mapping)"
                )
            else:
                out[r] = lt[k] if (amb[k] and policy == "latest") else e[k]
                resolved += int(amb[k])
    return out, resolved


def parse_timestamps(
    s: pl.Series,
    zones: str | Sequence[str],
    fmt: str | None = None,
    dst_ambiguous: DstPolicy = "reject",
) -> ParsedTimes:
    """Instants of ``s`` (see module docstring). ``zones``: the IANA zone of naive values, or
    one zone per row. Raises ValueError only when the format cannot be told (day/month
    order) or is not given for numbers."""
    n = s.len()
    zone_list = [zones] * n if isinstance(zones, str) else list(zones)
    if isinstance(s.dtype, pl.Datetime) or s.dtype == pl.Date:
        d = s.cast(pl.Datetime("us")) if s.dtype == pl.Date else s
        aware = isinstance(d.dtype, pl.Datetime) and d.dtype.time_zone is not None
        if aware:
            d = d.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        us = d.dt.cast_time_unit("us").dt.epoch("us").fill_null(0).to_numpy().astype(np.int64)
        reason: list[str | None] = ["empty timestamp" if v is None else None for v in d]
        todo = np.array([r is None for r in reason]) & (not aware)
        us, res = _localise(us, zone_list, dst_ambiguous, reason, todo)
        return _done(us, reason, "datetime", res)
    text = s.cast(pl.String).str.strip_chars()
    empty = (text.is_null() | (text == "")).to_numpy()
    reason = ["empty timestamp" if e else None for e in empty]
    us = np.zeros(n, dtype=np.int64)
    wall = np.zeros(n, dtype=bool)  # values that are wall times (need the zone)
    if fmt in EPOCH_FORMATS or fmt == EXCEL:
        num = text.cast(pl.Float64, strict=False).to_numpy()
        bad = ~empty & ~np.isfinite(num.astype(float))
        for i in np.flatnonzero(bad).tolist():
            reason[i] = f"not a number (timestamp_format {fmt})"
        good = ~empty & ~bad
        if fmt == EXCEL:
            us[good] = np.round(num[good] * _US_PER_DAY).astype(np.int64) + _EXCEL_EPOCH_US
            wall = good
        else:
            us[good] = np.round(num[good] * EPOCH_FORMATS[str(fmt)]).astype(np.int64)
        used = str(fmt)
    elif fmt is not None:
        got = _strptime(text, fmt).to_numpy()
        aware = "%z" in fmt
        for r in range(n):
            if empty[r]:
                continue
            v = got[r]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                reason[r] = f"does not match timestamp_format {fmt!r}"
            else:
                us[r] = int(v)
                wall[r] = not aware
        used = fmt
    else:
        uniq = text.filter(pl.Series(~empty)).unique().to_list()
        iso = {u: _iso(u) for u in uniq}
        rest = [u for u, v in iso.items() if v is None]
        chosen: dict[str, int] = {}
        used = "iso8601"
        if rest:
            rs = pl.Series(rest, dtype=pl.String)
            cands = {f: _strptime(rs, f) for f in HISTORIAN_FORMATS}
            counts = {f: int(c.is_not_null().sum()) for f, c in cands.items()}
            most = max(counts.values())
            if most > 0:
                top = [f for f in HISTORIAN_FORMATS if counts[f] == most]
                if len(top) > 1 and any(not cands[f].equals(cands[top[0]]) for f in top[1:]):
                    raise ValueError(
                        f"timestamps such as {rest[0]!r} read differently as {top[:3]} (day and "
                        "month order); declare timestamp_format in the mapping"
                    )
                pick = top[0]
                chosen = {
                    u: int(v) for u, v in zip(rest, cands[pick], strict=True) if v is not None
                }
                used = (
                    pick if not iso or all(v is None for v in iso.values()) else f"iso8601+{pick}"
                )
        for r in range(n):
            if empty[r]:
                continue
            t = text[r]
            v = iso.get(t)
            if v is not None:
                us[r], wall[r] = v[0], not v[1]
            elif t in chosen:
                us[r], wall[r] = chosen[t], True
            else:
                reason[r] = "not ISO 8601 nor a known historian format (declare timestamp_format)"
    todo = wall & np.array([r is None for r in reason])
    us, res = _localise(us, zone_list, dst_ambiguous, reason, todo)
    return _done(us, reason, used, res)


def _done(us: np.ndarray, reason: list[str | None], used: str, resolved: int) -> ParsedTimes:
    by: dict[str, int] = {}
    for r in reason:
        if r is not None:
            by[r] = by.get(r, 0) + 1
    us = np.where([r is None for r in reason], us, 0).astype(np.int64)
    return ParsedTimes(us, reason, used, resolved, by)
