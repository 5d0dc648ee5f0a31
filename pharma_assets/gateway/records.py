"""The canonical reading record every protocol is turned into, and its checks.

A reading is one value of one canonical tag of one unit, in the tag's canonical unit,
stamped with three things a protocol alone does not give: the source's own time, the
gateway's receive time, and a per-source sequence number the gateway assigns (monotonic
across restarts, so a reading has one identity from the hot store to the landing zone).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ..twin.landing import QUALITY_CODES

GOOD = QUALITY_CODES.index("good")
UNCERTAIN = QUALITY_CODES.index("uncertain")
BAD = QUALITY_CODES.index("bad")

# Why a reading was refused (counted per source, written to the rejects log).
REJECT_REASONS = (
    "unknown_tag",  # name not in the source's tag map (and not a canonical tag name)
    "unknown_unit",  # device/node not mapped to a unit
    "unit_mismatch",  # the source declares a unit the tag map does not
    "future_ts",  # source time ahead of the gateway clock by more than max_future_s
    "too_old",  # source time older than max_age_s
    "duplicate",  # same unit, tag and source time as a reading already accepted
    "out_of_order",  # older than a reading of the same unit and tag already accepted
    "buffer_full",  # the store-and-forward buffer reached max_buffer_bytes
)


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


@dataclass(slots=True, frozen=True)
class Reading:
    """One canonical reading (see module docstring); ``quality`` indexes QUALITY_CODES."""

    source: str
    seq: int
    site_id: str
    unit_id: str
    batch_id: str | None  # None while no batch runs on the unit (hot store only)
    tag: str
    value: float
    uom: str
    source_ts_us: int
    recv_ts_us: int
    quality: int = GOOD

    def as_row(self) -> list[Any]:
        """Compact list form used by the disk buffer (same order as ROW_FIELDS)."""
        return [self.source, self.seq, self.site_id, self.unit_id, self.batch_id, self.tag,
                None if math.isnan(self.value) else self.value, self.uom, self.source_ts_us,
                self.recv_ts_us, self.quality]  # fmt: skip

    @classmethod
    def from_row(cls, row: list[Any]) -> Reading:
        v = row[6]
        return cls(row[0], int(row[1]), row[2], row[3], row[4], row[5],
                   float("nan") if v is None else float(v), row[7], int(row[8]), int(row[9]),
                   int(row[10]))  # fmt: skip


ROW_FIELDS = ("source", "seq", "site_id", "unit_id", "batch_id", "tag", "value", "uom",
              "source_ts_us", "recv_ts_us", "quality")  # fmt: skip


def as_number(raw: Any) -> float | None:
    """``raw`` as a finite float, or None when it is empty, non-numeric, NaN or infinite."""
    if isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, int | float):
        f = float(raw)
    elif isinstance(raw, str | bytes):
        try:
            f = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


__all__ = [
    "BAD", "GOOD", "REJECT_REASONS", "ROW_FIELDS", "UNCERTAIN", "Reading", "as_number", "now_us",
]  # fmt: skip
