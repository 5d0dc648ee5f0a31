"""Site tag names and units -> canonical tags and units, with the importer's vocabulary.

One mapping vocabulary for files and protocols: a source's ``tags:`` entries are the
importer's ``TagMapping`` (``{tag: temperature_c, from_uom: K}``), validated by the same
model, and values are converted by the importer's ``convert_values`` (same conversion
table, same error messages). A source may also publish canonical tag names directly
(``canonical_names: true``); the unit it declares (Sparkplug ``engUnit`` property, OPC UA
``EngineeringUnits``) must then be the canonical unit or convertible to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..importer import TagMapping, convert_values
from ..process.vocabulary import CANONICAL_TAGS


class MappingError(ValueError):
    """A source name or unit that cannot be mapped; ``reason`` is a REJECT_REASONS code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Resolved:
    """How one source tag becomes a canonical reading: canonical = raw * scale + offset."""

    tag: str
    uom: str
    scale: float
    offset: float

    def convert(self, raw: float) -> float:
        return raw * self.scale + self.offset


def _linear(tag: str, from_uom: str, to_uom: str | None = None) -> tuple[float, float]:
    """Scale and offset of the importer's conversion (``convert_values`` is linear)."""
    y0, y1 = convert_values(np.array([0.0, 1.0]), tag, from_uom, to_uom)
    return float(y1 - y0), float(y0)


class SourceMap:
    """The tag map and unit map of one source, with resolved conversions cached."""

    def __init__(
        self,
        source: str,
        tags: dict[str, TagMapping] | None = None,
        units: dict[str, str] | None = None,
        canonical_names: bool = True,
    ) -> None:
        self.source = source
        self.tags = dict(tags or {})
        self.units = dict(units or {})
        self.canonical_names = canonical_names
        self._cache: dict[tuple[str, str | None], Resolved] = {}

    def unit(self, device: str) -> str:
        """Canonical unit id of a device/node name (identity unless ``units:`` maps it)."""
        if self.units:
            try:
                return self.units[device]
            except KeyError:
                raise MappingError(
                    "unknown_unit",
                    f"source {self.source!r}: device {device!r} is not in its units map "
                    f"{sorted(self.units)}",
                ) from None
        return device

    def resolve(self, name: str, declared_uom: str | None = None) -> Resolved:
        """Map a source tag ``name`` (and the unit the source declares for it, if any)."""
        key = (name, declared_uom)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        m = self.tags.get(name)
        to_uom: str | None = None  # a site tag (another unit class's) is in its declared unit
        if m is None and self.canonical_names and name in CANONICAL_TAGS:
            m_tag, from_uom = name, declared_uom or CANONICAL_TAGS[name]
        elif m is None:
            raise MappingError(
                "unknown_tag",
                f"source {self.source!r}: tag {name!r} is not in its tag map"
                + ("" if self.canonical_names else " (canonical_names is off)"),
            )
        else:
            m_tag, from_uom, to_uom = m.tag, m.from_uom, m.uom
            if declared_uom is not None and declared_uom != m.from_uom:
                raise MappingError(
                    "unit_mismatch",
                    f"source {self.source!r}: tag {name!r} is declared in {declared_uom!r} "
                    f"but the tag map says from_uom {m.from_uom!r}",
                )
        try:
            scale, offset = _linear(m_tag, from_uom, to_uom)
        except ValueError as e:
            raise MappingError("unit_mismatch", f"source {self.source!r}: {e}") from None
        r = Resolved(m_tag, to_uom or CANONICAL_TAGS[m_tag], scale, offset)
        self._cache[key] = r
        return r


__all__ = ["MappingError", "Resolved", "SourceMap", "TagMapping"]
