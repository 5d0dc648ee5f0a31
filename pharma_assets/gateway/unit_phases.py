"""Which spec and which phase judge a live reading, per unit (issue 15).

A plant runs units of several classes (bioreactors, dryers, ...), each with its own product
spec (CPP limits) and unit class (phases, phase rule). The live alarm check asks
:class:`UnitSpecs` for the spec of the reading's unit (the unit's own, else the default
spec: a dryer is never judged by a bioreactor spec when it has its own) and asks
:class:`ClassPhases` for the phase, the same way silver assigns it:

* MES ``phase_start`` events in the landing zone win (``MesPhases``): a batch that has
  them is phased by them only (before the first one: not judged);
* otherwise the spec's phase rule (``CppSpec.rule``: the spec's, else the class's):
  ``one_phase`` (the whole batch is phase ``batch``, judged on the base limits), ``none``
  (not judged), ``time_since_start`` (phase by hours after the batch start) or
  ``tag_crossing`` (the first phase from the start, then each phase at the first good
  reading of its tag above/below its value after the previous phase began; the engine
  shows the provider every reading it receives, ``observe``, so a crossing on a tag that
  is not a CPP still moves the phase).

The batch start is MES ``batch_start`` when the landing zone has it, else the first reading
of the batch this process saw. Plain Python, no I/O beyond ``MesPhases``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..lake.specs import ONE_PHASE, CppSpec
from .records import BAD, Reading


class UnitSpecs:
    """unit id -> its CPP spec (``by_unit``), else ``default``."""

    def __init__(self, default: CppSpec, by_unit: Mapping[str, CppSpec] | None = None) -> None:
        self.default = default
        self.by_unit = {u.upper(): s for u, s in (by_unit or {}).items()}
        self._cpp = {id(s): set(s.cpp_tags) for s in (default, *self.by_unit.values())}

    def spec(self, unit_id: str) -> CppSpec:
        return self.by_unit.get(unit_id.upper(), self.default)

    def cpp_tags(self, unit_id: str) -> set[str]:
        return self._cpp[id(self.spec(unit_id))]


@dataclass
class _Batch:
    start_us: int  # first reading seen (MES batch_start overrides)
    crossed: list[tuple[str, int]] = field(default_factory=list)  # tag-crossing phase starts


class ClassPhases:
    """Phase of a unit's batch by MES events, else by its spec's phase rule (see module
    docstring). ``mes``: anything with ``phase_at`` (and optionally ``batch_start_us``)."""

    def __init__(self, specs: UnitSpecs, mes: object | None = None) -> None:
        self.specs = specs
        self.mes = mes
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._lock = threading.Lock()

    def observe(self, r: Reading) -> None:
        """Track a batch's first reading and the tag crossings its phase rule declares."""
        if not r.batch_id:
            return
        key = (r.unit_id, r.batch_id)
        with self._lock:
            b = self._batches.get(key)
            if b is None:
                b = self._batches[key] = _Batch(r.source_ts_us)
            elif r.source_ts_us < b.start_us and not b.crossed:
                b.start_us = r.source_ts_us
            rule = self.specs.spec(r.unit_id).rule
            if rule.kind != "tag_crossing" or r.quality == BAD:
                return
            i = len(b.crossed)
            if i >= len(rule.crossings):
                return
            c = rule.crossings[i]
            after = b.crossed[-1][1] if b.crossed else b.start_us
            if r.tag != c.tag or r.source_ts_us <= after:
                return
            hit = r.value > c.above if c.above is not None else r.value < (c.below or 0.0)
            if hit:
                b.crossed.append((c.phase, r.source_ts_us))

    def _start_us(self, unit_id: str, batch_id: str) -> int | None:
        get = getattr(self.mes, "batch_start_us", None)
        mes_start = get(unit_id, batch_id) if get is not None else None
        if mes_start is not None:
            return int(mes_start)
        b = self._batches.get((unit_id, batch_id))
        return b.start_us if b is not None else None

    def phase_at(self, unit_id: str, batch_id: str, ts_us: int) -> tuple[str, int] | None:
        if self.mes is not None:
            ph = self.mes.phase_at(unit_id, batch_id, ts_us)  # type: ignore[attr-defined]
            has = getattr(self.mes, "has_phases", None)
            if ph is not None or (has is not None and has(unit_id, batch_id)):
                return ph  # a batch with MES phase events is phased by them only, as in silver
        rule = self.specs.spec(unit_id).rule
        if rule.kind == "none":
            return None
        start = self._start_us(unit_id, batch_id)
        if start is None or ts_us < start:
            return None
        if rule.kind == "one_phase":
            return (ONE_PHASE, start)
        if rule.kind == "time_since_start":
            cur = None
            for name, h in sorted(rule.starts_h.items(), key=lambda kv: kv[1]):
                t0 = start + int(h * 3600e6)
                if t0 <= ts_us:
                    cur = (name, t0)
            return cur
        assert rule.first_phase is not None
        cur = (rule.first_phase, start)
        with self._lock:
            b = self._batches.get((unit_id, batch_id))
            crossed = list(b.crossed) if b is not None else []
        for name, t0 in crossed:
            if t0 <= ts_us:
                cur = (name, t0)
        return cur
