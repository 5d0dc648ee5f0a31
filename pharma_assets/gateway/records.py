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


@dataclass(slots=True)
class Reading:
    """One canonical reading (see module docstring); ``quality`` indexes QUALITY_CODES.

    Not frozen (a frozen dataclass costs a third more to build on the hot path); treat as
    read-only."""

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
    "BAD",
    "GOOD",
    "REJECT_REASONS",
    "UNCERTAIN",
    "Reading",
    "as_number",
    "now_us",
]
