"""Real-time CPP alarms, checked on every reading the gateway accepts (ISA-18.2 life cycle).

Why here and not in a batch job: an operator must see a CPP leave its range within a
second, not after the next silver run. The limits are the same change-controlled CPP spec
(``lake/specs/cpp_spec.yaml``: NOR/PAR per phase, settle time after a phase change) that
the silver contract and ``gold/cpp_excursions`` use, so the live alarm and the later
excursion agree on what is out of range:

- level 1 (severity ``minor``, priority ``low``): outside the NOR;
- level 2 (``major``, ``high``): outside the PAR;
- level 3 (``critical``, ``urgent``): outside the PAR for ``critical_after_s`` of source
  time in total during the alarm (gold's rule: ``CRITICAL_PAR_MINUTES``).

Life cycle of one alarm (one excursion of one tag of one unit)::

    (normal) --on-delay--> unack_active --ack--> ack_active --return--> (normal, closed)
                               |  \\--return--> rtn_unack --ack--> (normal, closed)
                               \\--shelve(reason, expiry)--> shelved --expiry/unshelve-->
                                                           unack_active (still out) or closed

- **on-delay**: a level is reached only when the readings stayed at or beyond it for
  ``on_delay_s`` of source time (a single spike raises nothing);
- **deadband**: an active alarm returns to normal only when the value is back inside the
  NOR narrowed by ``deadband_frac`` of its width on both sides (a value wobbling on the
  limit does not chatter);
- escalation to a higher level re-annunciates (unacknowledged again, notified again);
- acknowledging and shelving need a named user with the ``alarm.respond`` permission and
  are written to the GxP audit trail by the caller (``AlarmService``); shelving needs a
  reason and an expiry no longer than ``max_shelve_s``.

Every transition is an ``AlarmEvent``; the engine hands them to its sinks (persistence,
notifiers, deviation link) and keeps no I/O itself. Plain Python: no Dagster or Streamlit.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..lake.gold import CRITICAL_PAR_MINUTES
from ..lake.specs import CppSpec
from .records import BAD, Reading, now_us
from .unit_phases import UnitSpecs

log = logging.getLogger(__name__)

SEVERITY = {1: "minor", 2: "major", 3: "critical"}
PRIORITY = {"minor": "low", "major": "high", "critical": "urgent"}
PRIORITY_RANK = {"low": 1, "medium": 2, "high": 3, "urgent": 4}
STATES = ("unack_active", "ack_active", "rtn_unack", "shelved", "normal")
OPEN_STATES = STATES[:4]


class AlarmError(ValueError):
    """An operator action that the alarm's state does not allow (message says why)."""


@dataclass(frozen=True)
class AlarmSettings:
    on_delay_s: float = 5.0
    deadband_frac: float = 0.02  # of the NOR width, on each side, to return to normal
    critical_after_s: float = CRITICAL_PAR_MINUTES * 60.0
    max_shelve_s: float = 8 * 3600.0
    settle_s: float | None = None  # None: the spec's settle_minutes

    def __post_init__(self) -> None:
        if self.on_delay_s < 0 or not 0 <= self.deadband_frac < 0.5:
            raise ValueError(
                f"alarm settings: on_delay_s {self.on_delay_s} must be >= 0 and deadband_frac "
                f"{self.deadband_frac} in [0, 0.5)"
            )


@dataclass
class Alarm:
    """The current state of one alarm (one excursion of one CPP of one unit)."""

    alarm_id: str
    unit_id: str
    batch_id: str
    tag: str
    phase: str
    level: int
    state: str
    active: bool
    acked: bool
    activated_ts_us: int  # source time the on-delay was satisfied
    value: float
    peak_value: float
    direction: str
    target: float | None
    nor_lo: float
    nor_hi: float
    par_lo: float
    par_hi: float
    par_s: float = 0.0  # source seconds outside the PAR during this alarm
    cleared_ts_us: int | None = None
    acked_by: str | None = None
    shelved_by: str | None = None
    shelve_reason: str | None = None
    shelved_until_us: int | None = None
    deviation_id: str | None = None
    last_ts_us: int = 0
    raised_us: int = 0  # gateway wall time the alarm became active (for latency)

    @property
    def severity(self) -> str:
        return SEVERITY[self.level]

    @property
    def priority(self) -> str:
        return PRIORITY[self.severity]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity, "priority": self.priority}


@dataclass(frozen=True)
class AlarmEvent:
    """One transition: what happened to which alarm, when, by whom and why."""

    event: str  # activated|escalated|returned_to_normal|acknowledged|shelved|unshelved|
    #             deviation_linked
    alarm: dict[str, Any]  # the alarm after the transition (Alarm.as_dict())
    at_us: int  # gateway wall time
    source_ts_us: int | None = None
    actor: str = "system"
    reason: str | None = None


class PhaseProvider(Protocol):
    def phase_at(self, unit_id: str, batch_id: str, ts_us: int) -> tuple[str, int] | None:
        """(phase, phase start µs) of ``batch_id`` at ``ts_us``, or None when unknown."""


class MesPhases:
    """Phases from the MES event files in the landing zone (``mes/<unit>/<batch>/*.jsonl``):
    the same batch_start/phase_start records silver assigns phases from. A batch's folder
    is rescanned at most every ``rescan_s`` while readings arrive for it."""

    def __init__(self, landing: Path, rescan_s: float = 2.0) -> None:
        self.landing = Path(landing)
        self.rescan_s = rescan_s
        self._cache: dict[tuple[str, str], tuple[float, set[str], list[tuple[int, str]]]] = {}
        # unit -> (scanned at, batch -> (start µs, end µs))
        self._spans: dict[str, tuple[float, dict[str, tuple[int | None, int | None]]]] = {}
        self._lock = threading.Lock()

    def _scan(self, unit_id: str, batch_id: str) -> list[tuple[int, str]]:
        key = (unit_id, batch_id)
        now = time.monotonic()
        with self._lock:
            at, seen, starts = self._cache.get(key, (-math.inf, set(), []))
            if now - at < self.rescan_s:
                return starts
            folder = self.landing / "mes" / unit_id / batch_id
            new = (
                sorted(p for p in folder.glob("*.jsonl") if p.name not in seen)
                if folder.is_dir()
                else []
            )
            starts = list(starts)
            for p in new:
                for line in p.read_text().splitlines():
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if e.get("event_type") == "phase_start" and e.get("phase"):
                        ts = datetime.fromisoformat(str(e["event_ts"]).replace("Z", "+00:00"))
                        if ts.tzinfo is None:
                            ts = ts.replace(tzinfo=UTC)
                        starts.append((int(ts.timestamp() * 1e6), str(e["phase"])))
                seen.add(p.name)
            starts.sort()
            self._cache[key] = (now, seen, starts)
            return starts

    def batch_at(self, unit_id: str, ts_us: int) -> str | None:
        """The batch running on ``unit_id`` at ``ts_us`` by the MES files (started, not
        ended): the batch of readings from sources that name none (Modbus devices)."""
        folder = self.landing / "mes" / unit_id
        now = time.monotonic()
        with self._lock:
            at, spans = self._spans.get(unit_id, (-math.inf, {}))
            if now - at >= self.rescan_s and folder.is_dir():
                spans = dict(spans)
                for d in folder.iterdir():
                    start, end = spans.get(d.name, (None, None))
                    if end is not None or not d.is_dir():
                        continue  # ended batches do not change
                    for p in sorted(d.glob("*.jsonl")):
                        for line in p.read_text().splitlines():
                            try:
                                e = json.loads(line)
                                ts = datetime.fromisoformat(
                                    str(e["event_ts"]).replace("Z", "+00:00")
                                )
                            except (json.JSONDecodeError, KeyError, ValueError):
                                continue
                            t = int(ts.replace(tzinfo=ts.tzinfo or UTC).timestamp() * 1e6)
                            if e.get("event_type") == "batch_start":
                                start = t
                            elif e.get("event_type") == "batch_end":
                                end = t
                    spans[d.name] = (start, end)
                self._spans[unit_id] = (now, spans)
        running = [
            (s, b) for b, (s, e) in spans.items() if s is not None and s <= ts_us < (e or 2**62)
        ]
        return max(running)[1] if running else None

    def has_phases(self, unit_id: str, batch_id: str) -> bool:
        """Whether the landing zone holds MES ``phase_start`` events of ``batch_id``."""
        return bool(self._scan(unit_id, batch_id))

    def batch_start_us(self, unit_id: str, batch_id: str) -> int | None:
        """The MES ``batch_start`` of ``batch_id`` (µs), or None when the landing zone has none."""
        self.batch_at(unit_id, 0)  # refreshes the unit's spans (at most every rescan_s)
        with self._lock:
            span = self._spans.get(unit_id, (0.0, {}))[1].get(batch_id)
        return span[0] if span is not None else None

    def phase_at(self, unit_id: str, batch_id: str, ts_us: int) -> tuple[str, int] | None:
        cur = None
        for t, ph in self._scan(unit_id, batch_id):
            if t <= ts_us:
                cur = (ph, t)
        return cur


@dataclass
class _Point:
    """On-delay timers of one (unit, tag): since when readings are at >= level 1 / 2."""

    since1: int | None = None
    since2: int | None = None
    last_ts: int | None = None


Sink = Callable[[AlarmEvent], None]


class AlarmEngine:
    """Checks readings against the CPP spec and runs the alarm life cycle (see module
    docstring). Thread-safe: ingest threads call ``check``, the API calls the actions."""

    def __init__(
        self,
        spec: CppSpec,
        phases: PhaseProvider,
        settings: AlarmSettings | None = None,
        sinks: Iterable[Sink] = (),
        unit_specs: UnitSpecs | None = None,
    ) -> None:
        self.spec = spec
        # per unit: its own spec (a dryer by its spec, never the bioreactor's), else ``spec``
        self.unit_specs = unit_specs or UnitSpecs(spec)
        self.phases = phases
        self._observe = getattr(phases, "observe", None)  # phase rules that watch readings
        self.settings = settings or AlarmSettings()
        self.settle_us = int(
            (
                self.settings.settle_s
                if self.settings.settle_s is not None
                else spec.settle_minutes * 60
            )
            * 1e6
        )
        self.cpp = set(spec.cpp_tags)
        self.sinks: list[Sink] = list(sinks)
        self.alarms: dict[str, Alarm] = {}  # open alarms by id
        self._by_point: dict[tuple[str, str], str] = {}  # (unit, tag) -> open alarm id
        self._points: dict[tuple[str, str], _Point] = {}
        self._lock = threading.RLock()
        self.counts = {"checked": 0, "not_judged": 0, "events": 0}

    # --------------------------------------------------------------- events

    def _emit(
        self,
        event: str,
        a: Alarm,
        source_ts: int | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> AlarmEvent:
        ev = AlarmEvent(event, a.as_dict(), now_us(), source_ts, actor, reason)
        self.counts["events"] += 1
        for s in self.sinks:
            try:
                s(ev)
            except Exception:  # a sink must not stop the ingest
                log.exception("alarm sink %r failed on %s of %s", s, event, a.alarm_id)
        return ev

    def restore(self, alarms: Iterable[Alarm]) -> None:
        """Take over the open alarms of a previous run (from the persisted events)."""
        with self._lock:
            for a in alarms:
                if a.state in OPEN_STATES:
                    self.alarms[a.alarm_id] = a
                    if a.active or a.state == "shelved":
                        self._by_point[(a.unit_id, a.tag)] = a.alarm_id

    # --------------------------------------------------------------- readings

    def check(self, readings: Iterable[Reading]) -> int:
        """Judge each CPP reading; returns how many were judged."""
        n = 0
        with self._lock:
            for r in readings:
                if self._observe is not None:
                    self._observe(r)
                if r.tag in self.unit_specs.cpp_tags(r.unit_id):
                    n += self._check_one(r)
            self.expire_shelves()
        return n

    def _check_one(self, r: Reading) -> int:
        key = (r.unit_id, r.tag)
        aid = self._by_point.get(key)
        a = self.alarms.get(aid) if aid else None
        if a is not None and r.batch_id != a.batch_id:
            self._return(a, r.source_ts_us, r.value, "batch changed or ended")
            a = None
        if r.quality == BAD or not math.isfinite(r.value) or not r.batch_id:
            self.counts["not_judged"] += 1
            return 0
        ph = self.phases.phase_at(r.unit_id, r.batch_id, r.source_ts_us)
        if ph is None:
            self.counts["not_judged"] += 1
            return 0
        phase, phase_start = ph
        lim = self.unit_specs.spec(r.unit_id).tags[r.tag].limits(phase)
        assert lim.nor is not None and lim.par is not None
        (nlo, nhi), (plo, phi) = lim.nor, lim.par
        v, ts = r.value, r.source_ts_us
        settle = (
            self.settle_us
            if self.settings.settle_s is not None or self.unit_specs.spec(r.unit_id) is self.spec
            else int(self.unit_specs.spec(r.unit_id).settle_minutes * 60e6)
        )
        settled = ts - phase_start >= settle
        if a is not None:  # returning needs the deadband
            db = self.settings.deadband_frac * (nhi - nlo)
            inside_nor = nlo + db <= v <= nhi - db
        else:
            inside_nor = nlo <= v <= nhi
        raw = 0 if not settled else 2 if not plo <= v <= phi else 0 if inside_nor else 1
        p = self._points.setdefault(key, _Point())
        prev_ts = p.last_ts
        p.last_ts = ts
        p.since1 = (p.since1 if p.since1 is not None else ts) if raw >= 1 else None
        p.since2 = (p.since2 if p.since2 is not None else ts) if raw >= 2 else None
        od = int(self.settings.on_delay_s * 1e6)
        level = (
            2
            if p.since2 is not None and ts - p.since2 >= od
            else (1 if p.since1 is not None and ts - p.since1 >= od else 0)
        )
        self.counts["checked"] += 1
        if a is None:
            if level == 0:
                return 1
            stamp = datetime.fromtimestamp(ts / 1e6, UTC).strftime("%Y%m%dT%H%M%S")
            a = Alarm(
                alarm_id=f"ALM-{r.unit_id}-{r.tag}-{stamp}",
                unit_id=r.unit_id,
                batch_id=r.batch_id,
                tag=r.tag,
                phase=phase,
                level=level,
                state="unack_active",
                active=True,
                acked=False,
                activated_ts_us=ts,
                value=v,
                peak_value=v,
                direction="high" if v > nhi else "low",
                target=lim.target,
                nor_lo=nlo,
                nor_hi=nhi,
                par_lo=plo,
                par_hi=phi,
                last_ts_us=ts,
                raised_us=now_us(),
            )
            self.alarms[a.alarm_id], self._by_point[key] = a, a.alarm_id
            self._emit("activated", a, ts)
            return 1
        # an alarm is open on this point
        a.value, a.last_ts_us = v, ts
        if abs(v - (a.target if a.target is not None else (nlo + nhi) / 2)) > abs(
            a.peak_value - (a.target if a.target is not None else (nlo + nhi) / 2)
        ):
            a.peak_value = v
        if raw >= 2 and prev_ts is not None and ts > prev_ts:
            a.par_s += min((ts - prev_ts) / 1e6, 60.0)  # gaps count at most a minute
        if raw == 0 and level == 0 and a.active:
            self._return(a, ts, v, None)
            return 1
        new_level = max(level, a.level)
        if new_level >= 2 and a.par_s >= self.settings.critical_after_s:
            new_level = 3
        if new_level > a.level and a.active:
            a.level = new_level
            if a.state != "shelved":
                a.state, a.acked, a.acked_by = "unack_active", False, None
            a.raised_us = now_us()
            self._emit("escalated", a, ts)
        return 1

    def _return(self, a: Alarm, ts: int, v: float, reason: str | None) -> None:
        a.active, a.cleared_ts_us, a.value = False, ts, v
        if a.acked or a.state == "shelved":
            a.state = "normal"
            self._emit("returned_to_normal", a, ts, reason=reason)
            self._forget(a)
        else:
            a.state = "rtn_unack"
            self._emit("returned_to_normal", a, ts, reason=reason)
            self._by_point.pop((a.unit_id, a.tag), None)
            self._points.pop((a.unit_id, a.tag), None)

    def _forget(self, a: Alarm) -> None:
        self.alarms.pop(a.alarm_id, None)
        if self._by_point.get((a.unit_id, a.tag)) == a.alarm_id:
            self._by_point.pop((a.unit_id, a.tag), None)
            self._points.pop((a.unit_id, a.tag), None)

    # --------------------------------------------------------------- operator actions

    def _get(self, alarm_id: str) -> Alarm:
        a = self.alarms.get(alarm_id)
        if a is None:
            raise AlarmError(f"alarm {alarm_id!r} is not open (see the active alarm list)")
        return a

    def acknowledge(self, alarm_id: str, user_id: str, comment: str | None = None) -> AlarmEvent:
        with self._lock:
            a = self._get(alarm_id)
            if a.acked or a.state not in ("unack_active", "rtn_unack"):
                raise AlarmError(
                    f"alarm {alarm_id} is {a.state}; only an unacknowledged alarm "
                    "can be acknowledged"
                )
            a.acked, a.acked_by = True, user_id
            if a.state == "rtn_unack":
                a.state = "normal"
                ev = self._emit("acknowledged", a, actor=user_id, reason=comment)
                self._forget(a)
                return ev
            a.state = "ack_active"
            return self._emit("acknowledged", a, actor=user_id, reason=comment)

    def shelve(self, alarm_id: str, user_id: str, reason: str, duration_s: float) -> AlarmEvent:
        if not reason or not reason.strip():
            raise AlarmError("shelving an alarm needs a reason")
        if not 0 < duration_s <= self.settings.max_shelve_s:
            raise AlarmError(
                f"shelve duration {duration_s:g} s must be > 0 and at most "
                f"{self.settings.max_shelve_s:g} s"
            )
        with self._lock:
            a = self._get(alarm_id)
            if a.state == "shelved":
                raise AlarmError(f"alarm {alarm_id} is already shelved")
            if not a.active:
                raise AlarmError(f"alarm {alarm_id} has returned to normal; acknowledge it")
            a.state, a.shelved_by, a.shelve_reason = "shelved", user_id, reason
            a.shelved_until_us = now_us() + int(duration_s * 1e6)
            return self._emit("shelved", a, actor=user_id, reason=reason)

    def unshelve(
        self, alarm_id: str, user_id: str = "system", reason: str | None = None
    ) -> AlarmEvent:
        with self._lock:
            a = self._get(alarm_id)
            if a.state != "shelved":
                raise AlarmError(f"alarm {alarm_id} is {a.state}, not shelved")
            a.shelved_until_us = None
            if a.active:
                a.state, a.acked, a.acked_by = "unack_active", False, None
                return self._emit("unshelved", a, actor=user_id, reason=reason)
            a.state = "normal"
            ev = self._emit("unshelved", a, actor=user_id, reason=reason)
            self._forget(a)
            return ev

    def expire_shelves(self, now: int | None = None) -> int:
        t = now_us() if now is None else now
        due = [
            a.alarm_id
            for a in self.alarms.values()
            if a.state == "shelved" and (a.shelved_until_us or 0) <= t
        ]
        for aid in due:
            self.unshelve(aid, "system", "shelve expired")
        return len(due)

    def link_deviation(self, alarm_id: str, deviation_id: str) -> None:
        """Record the deviation opened for an alarm (the alarm may be closed by then)."""
        with self._lock:
            a = self.alarms.get(alarm_id)
            if a is not None:
                a.deviation_id = deviation_id
                self._emit("deviation_linked", a, reason=deviation_id)

    def open_alarms(self) -> list[dict[str, Any]]:
        """Open alarms, most urgent and newest first."""
        with self._lock:
            out = [a.as_dict() for a in self.alarms.values()]
        out.sort(key=lambda d: (-PRIORITY_RANK[d["priority"]], -d["activated_ts_us"]))
        return out


def alarm_from_dict(d: dict[str, Any]) -> Alarm:
    fields = Alarm.__dataclass_fields__
    return Alarm(**{k: v for k, v in d.items() if k in fields})


__all__ = [
    "OPEN_STATES",
    "PRIORITY",
    "PRIORITY_RANK",
    "SEVERITY",
    "Alarm",
    "AlarmEngine",
    "AlarmError",
    "AlarmEvent",
    "AlarmSettings",
    "MesPhases",
    "PhaseProvider",
    "alarm_from_dict",
]
