"""The gateway's alarm service: the engine (``alarms``) wired to the GxP records.

- every alarm event is appended to ``<lake>/gxp/alarm_events`` (append-only Delta table,
  one row per transition with the alarm's full state) by a background writer every
  ``flush_interval_s`` (Delta commits are too slow for the ingest thread); on restart the
  open alarms are restored from it;
- an alarm that reaches a severity the batch job opens deviations for (major, critical)
  opens one deviation through ``compliance.deviations.open_for_alarm`` (once, keyed by the
  alarm id) and records its id on the alarm, so ``auto_open`` does not open a second one
  when gold later shows the same excursion;
- acknowledge / shelve / unshelve need a named, active user with ``alarm.respond`` and
  are written to the audit trail with the old and new state and the reason;
- notifications go through ``notify.Dispatcher``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from ..compliance import GXP_LAYER
from ..compliance.audit import GXP_TABLE_CONFIGURATION, AuditEvent, AuditTrail
from ..compliance.deviations import ALARM_EVENTS, AUTO_SEVERITIES, open_for_alarm
from ..compliance.users import get_user, require
from ..lake.specs import CppSpec
from ..lake.storage import UTC_US, Lake
from .alarms import (
    Alarm,
    AlarmEngine,
    AlarmError,
    AlarmEvent,
    AlarmSettings,
    PhaseProvider,
    alarm_from_dict,
)
from .notify import Dispatcher, Notifier
from .unit_phases import UnitSpecs

log = logging.getLogger(__name__)

TABLE = ALARM_EVENTS
PERMISSION = "alarm.respond"
_TS = {
    "activated_ts_us": "activated_ts",
    "cleared_ts_us": "cleared_ts",
    "shelved_until_us": "shelved_until",
    "last_ts_us": "last_ts",
}
SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "event": pl.String(),
    "at": UTC_US,
    "source_ts": UTC_US,
    "actor": pl.String(),
    "reason": pl.String(),
    "alarm_id": pl.String(),
    "unit_id": pl.String(),
    "batch_id": pl.String(),
    "tag": pl.String(),
    "phase": pl.String(),
    "level": pl.Int8(),
    "severity": pl.String(),
    "priority": pl.String(),
    "state": pl.String(),
    "active": pl.Boolean(),
    "acked": pl.Boolean(),
    "activated_ts": UTC_US,
    "value": pl.Float64(),
    "peak_value": pl.Float64(),
    "direction": pl.String(),
    "target": pl.Float64(),
    "nor_lo": pl.Float64(),
    "nor_hi": pl.Float64(),
    "par_lo": pl.Float64(),
    "par_hi": pl.Float64(),
    "par_s": pl.Float64(),
    "cleared_ts": UTC_US,
    "acked_by": pl.String(),
    "shelved_by": pl.String(),
    "shelve_reason": pl.String(),
    "shelved_until": UTC_US,
    "deviation_id": pl.String(),
    "last_ts": UTC_US,
    "raised_us": pl.Int64(),
}


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC)


def _us(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1e6)


def event_row(ev: AlarmEvent, n: int) -> dict[str, Any]:
    a = dict(ev.alarm)
    for k, col in _TS.items():
        a[col] = _dt(a.pop(k))
    row = {
        "event_id": f"{a['alarm_id']}:{ev.at_us}:{n}",
        "event": ev.event,
        "at": _dt(ev.at_us),
        "source_ts": _dt(ev.source_ts_us),
        "actor": ev.actor,
        "reason": ev.reason,
        **a,
    }
    return {k: row.get(k) for k in SCHEMA}


def read_events(lake: Lake) -> pl.DataFrame:
    df = lake.read(GXP_LAYER, TABLE)
    return df if df is not None else pl.DataFrame(schema=SCHEMA)


def open_alarms_in(lake: Lake) -> list[Alarm]:
    """The alarms whose last recorded event leaves them open (for a restart)."""
    ev = read_events(lake)
    if ev.height == 0:
        return []
    last = ev.sort("at").group_by("alarm_id", maintain_order=True).last()
    out = []
    for r in last.filter(pl.col("state") != "normal").iter_rows(named=True):
        for k, col in _TS.items():
            r[k] = _us(r.pop(col))
        out.append(alarm_from_dict(r))
    return out


class AlarmService:
    """Engine + persistence + deviations + audit + notifiers (see module docstring)."""

    def __init__(
        self,
        lake: Lake,
        spec: CppSpec,
        phases: PhaseProvider,
        settings: AlarmSettings | None = None,
        notifiers: Sequence[Notifier] = (),
        notify_min_priority: str = "low",
        flush_interval_s: float = 2.0,
        open_deviations: bool = True,
        unit_specs: UnitSpecs | None = None,
    ) -> None:
        self.lake = lake
        self.dispatcher = Dispatcher(notifiers, notify_min_priority) if notifiers else None
        self._pending: list[AlarmEvent] = []
        self._dev_requests: list[dict[str, Any]] = []
        self._requested: set[str] = set()
        self._lock = threading.Lock()
        self.open_deviations = open_deviations
        self.written = 0
        self.write_errors = 0
        sinks = [self._record] + ([self.dispatcher] if self.dispatcher else [])
        self.engine = AlarmEngine(spec, phases, settings, sinks, unit_specs)
        restored = open_alarms_in(lake)
        self.engine.restore(restored)
        self._requested = {a.alarm_id for a in restored if a.deviation_id}
        self._stop = threading.Event()
        self._interval = flush_interval_s
        self._t = threading.Thread(target=self._loop, name="alarm-writer", daemon=True)
        self._t.start()

    # ------------------------------------------------------------ sinks + writer

    def _record(self, ev: AlarmEvent) -> None:
        a = ev.alarm
        with self._lock:
            self._pending.append(ev)
            if (
                self.open_deviations
                and a["severity"] in AUTO_SEVERITIES
                and a["active"]
                and a["alarm_id"] not in self._requested
                and a["deviation_id"] is None
            ):
                self._requested.add(a["alarm_id"])
                self._dev_requests.append(a)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> int:
        """Open the requested deviations and write the pending events; returns rows written."""
        with self._lock:
            reqs, self._dev_requests = self._dev_requests, []
        for a in reqs:
            try:
                d = open_for_alarm(self.lake, a, context_id=f"alarm:{a['alarm_id']}")
                self.engine.link_deviation(a["alarm_id"], d.deviation_id)
            except Exception as e:
                log.error(
                    "could not open the deviation of alarm %s (retried next flush): %s",
                    a["alarm_id"],
                    e,
                )
                with self._lock:
                    self._dev_requests.append(a)
        with self._lock:
            evs, self._pending = self._pending, []
        if not evs:
            return 0
        rows = [event_row(e, i) for i, e in enumerate(evs)]
        try:
            self.lake.append(
                GXP_LAYER,
                TABLE,
                pl.DataFrame(rows, schema=SCHEMA),
                configuration=GXP_TABLE_CONFIGURATION,
            )
        except Exception as e:
            self.write_errors += 1
            log.error(
                "could not write %d alarm events to %s/%s (kept, retried): %s",
                len(evs),
                GXP_LAYER,
                TABLE,
                e,
            )
            with self._lock:
                self._pending[:0] = evs
            return 0
        self.written += len(rows)
        return len(rows)

    def close(self) -> None:
        self._stop.set()
        self._t.join(30)
        self.flush()
        self.flush()  # the deviation links made by the first flush
        if self.dispatcher is not None:
            self.dispatcher.drain()
            self.dispatcher.close()

    # ------------------------------------------------------------ operator actions

    def _user(self, user_id: str) -> None:
        u = get_user(self.lake, user_id)
        if u is None or not u.active:
            raise AlarmError(f"user {user_id!r} does not exist or is disabled")
        require(u, PERMISSION)

    def _audit(self, ev: AlarmEvent, old_state: str, context_id: str | None) -> None:
        AuditTrail(self.lake).append(
            [
                AuditEvent(
                    f"alarm_{ev.event}",
                    ev.actor,
                    f"{GXP_LAYER}/{TABLE}",
                    ev.alarm["alarm_id"],
                    "state",
                    old_state,
                    ev.alarm["state"],
                    ev.reason,
                    context_id,
                )
            ]
        )

    def _state(self, alarm_id: str) -> str:
        a = self.engine.alarms.get(alarm_id)
        if a is None:
            raise AlarmError(f"alarm {alarm_id!r} is not open (see the active alarm list)")
        return a.state

    def acknowledge(
        self, alarm_id: str, user_id: str, comment: str | None = None, context_id: str | None = None
    ) -> dict[str, Any]:
        self._user(user_id)
        old = self._state(alarm_id)
        ev = self.engine.acknowledge(alarm_id, user_id, comment)
        self._audit(ev, old, context_id)
        return ev.alarm

    def shelve(
        self,
        alarm_id: str,
        user_id: str,
        reason: str,
        duration_s: float,
        context_id: str | None = None,
    ) -> dict[str, Any]:
        self._user(user_id)
        old = self._state(alarm_id)
        ev = self.engine.shelve(alarm_id, user_id, reason, duration_s)
        self._audit(ev, old, context_id)
        return ev.alarm

    def unshelve(
        self, alarm_id: str, user_id: str, reason: str | None = None, context_id: str | None = None
    ) -> dict[str, Any]:
        self._user(user_id)
        old = self._state(alarm_id)
        ev = self.engine.unshelve(alarm_id, user_id, reason)
        self._audit(ev, old, context_id)
        return ev.alarm

    def health(self) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for a in self.engine.alarms.values():
            by_state[a.state] = by_state.get(a.state, 0) + 1
        return {
            "open": len(self.engine.alarms),
            "by_state": by_state,
            "events_written": self.written,
            "write_errors": self.write_errors,
            "pending": len(self._pending),
            **self.engine.counts,
            "notified": dict(self.dispatcher.sent) if self.dispatcher else {},
            "notify_failed": dict(self.dispatcher.failed) if self.dispatcher else {},
        }


__all__ = ["PERMISSION", "SCHEMA", "TABLE", "AlarmService", "open_alarms_in", "read_events"]
