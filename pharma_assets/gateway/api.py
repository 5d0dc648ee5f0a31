"""HTTP + WebSocket API over the hot store (FastAPI), for dashboards and third parties.

    GET  /health                                gateway health (sources, lag, buffer, alarms)
    GET  /units                                 units with values
    GET  /units/{unit}/latest                   latest value of every tag (+ stale flag)
    GET  /units/{unit}/tags/{tag}/window?seconds=300
    GET  /alarms                                open alarms, most urgent first
    POST /alarms/{id}/ack|shelve|unshelve       operator actions (gateway process only;
                                                Bearer token + the named user, audited)
    GET  /spec                                  NOR/PAR of every CPP by phase (for the bands)
    WS   /ws/units/{unit}?interval_s=0.25       pushes the unit's latest values when they change
    WS   /ws/live?unit=U&tags=a,b&delta=true    the Live view's feed: every unit's latest
                                                values (compact), open alarms, health and
                                                each unit's batch and phase; first the full
                                                state, then only what changed (``delta``);
                                                with ``unit`` / ``tags``, those only

The API reads only the hot store (values, and the ``alarms`` and ``health`` documents the
gateway publishes into it), so it runs inside the gateway process (default) or as
separate fan-out processes sharing Redis (``pharma-twin gateway-api --hot-store redis://``):
one snapshot per ``interval`` per process is built and serialised once, then sent to every
connected client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from ..compliance.users import PermissionDeniedError
from ..lake.specs import load_spec
from ..process import PHASES
from .alarms import AlarmError
from .hotstore import HotStore
from .records import now_us

_QUALITY = {"good": 0, "uncertain": 1, "bad": 2}


class AckBody(BaseModel):
    user_id: str
    comment: str | None = None
    context_id: str | None = None


class ShelveBody(BaseModel):
    user_id: str
    reason: str
    duration_s: float = Field(gt=0)
    context_id: str | None = None


class UnshelveBody(BaseModel):
    user_id: str
    reason: str | None = None
    context_id: str | None = None


View = tuple[str | None, tuple[str, ...] | None]  # (unit or all, tags or all)


class Broadcaster:
    """One snapshot of the hot store per ``interval_s``, shared by every WebSocket client of
    this process. Each snapshot is compared with the previous one: a client gets the full
    state when it connects (``"full": true``), then only what changed (``"full": false``:
    changed values of changed units; ``alarms``, ``health`` and ``meta`` only when they
    changed). Texts are serialised once per snapshot and view (unit, tags), so the cost
    per client is the send; a client that missed a snapshot gets the full state again."""

    def __init__(self, hot: HotStore, interval_s: float = 0.2) -> None:
        self.hot, self.interval_s = hot, interval_s
        self.seq = 0
        self.units: dict[str, dict[str, list[Any]]] = {}
        self.alarms: Any = []
        self.health: Any = None
        self.meta: Any = {}
        self.snap_us = 0
        self.changed_units: dict[str, dict[str, list[Any]]] = {}
        self.changed_docs: set[str] = set()
        self._texts: dict[tuple[View, bool], str] = {}
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.clients = 0
        self.sent = 0  # messages sent, all clients

    def _build(self) -> bool:
        now = now_us()
        units = {}
        for u, latest in self.hot.latest_many(self.hot.units(), now).items():
            units[u] = {
                d["tag"]: [
                    d["value"],
                    d["source_ts_us"],
                    d["recv_ts_us"],
                    _QUALITY.get(d["quality"], 2),
                    d["stale"],
                    d["uom"],
                ]
                for d in latest
            }
        docs = {
            "alarms": self.hot.get_doc("alarms") or [],
            "health": self.hot.get_doc("health"),
            "meta": self.hot.get_doc("units") or {},
        }
        changed_units: dict[str, dict[str, list[Any]]] = {}
        for u, tags in units.items():
            old = self.units.get(u, {})
            diff = {t: v for t, v in tags.items() if old.get(t) != v}
            if diff:
                changed_units[u] = diff
        changed_docs = {k for k, v in docs.items() if getattr(self, k) != v}
        gone = set(self.units) - set(units)
        if not (changed_units or changed_docs or gone):
            return False
        if gone:  # a unit left the hot store (Redis cleared): every client starts over
            self.seq += 1
        self.units, self.snap_us = units, now
        self.alarms, self.health, self.meta = docs["alarms"], docs["health"], docs["meta"]
        self.changed_units, self.changed_docs = changed_units, changed_docs
        return True

    async def _run(self) -> None:
        while True:
            changed = await asyncio.to_thread(self._build)
            if changed:
                async with self._cond:
                    self.seq += 1
                    self._texts = {}
                    self._cond.notify_all()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @staticmethod
    def _pick(
        units: dict[str, dict[str, list[Any]]], view: View
    ) -> dict[str, dict[str, list[Any]]]:
        unit, tags = view
        if unit is not None:
            units = {unit: units[unit]} if unit in units else {}
        if tags is not None:
            units = {u: {t: v[t] for t in tags if t in v} for u, v in units.items()}
            units = {u: v for u, v in units.items() if v}
        return units

    def text(self, unit: str | None, full: bool = True, tags: tuple[str, ...] | None = None) -> str:
        """The message of the current snapshot for one view, full or only what changed
        ("" when a delta carries nothing for this view)."""
        view: View = (unit, tags)
        t = self._texts.get((view, full))
        if t is not None:
            return t
        msg: dict[str, Any] = {
            "seq": self.seq,
            "full": full,
            "snap_us": self.snap_us,
            "sent_us": now_us(),
            "units": self._pick(self.units if full else self.changed_units, view),
        }
        if full or "alarms" in self.changed_docs:
            msg["alarms"] = (
                self.alarms
                if unit is None
                else [a for a in self.alarms if a.get("unit_id") == unit]
            )
        if full or "health" in self.changed_docs:
            msg["health"] = self.health
        if full or "meta" in self.changed_docs:
            msg["meta"] = self.meta if unit is None else {unit: self.meta.get(unit, {})}
        empty = not full and not msg["units"] and len(msg) == 5
        t = "" if empty else json.dumps(msg, separators=(",", ":"), default=str)
        self._texts[(view, full)] = t
        return t

    async def serve(
        self,
        ws: WebSocket,
        unit: str | None,
        tags: tuple[str, ...] | None = None,
        delta: bool = True,
    ) -> None:
        self.start()
        self.clients += 1
        seen = 0  # snapshot 0 is "none built yet"
        try:
            while True:
                async with self._cond:
                    if self.seq == seen:
                        await self._cond.wait()
                    full = not delta or seen == 0 or self.seq != seen + 1
                    seen = self.seq
                    text = self.text(unit, full, tags)
                if text:  # a delta with nothing for this view is not sent
                    await ws.send_text(text)
                    self.sent += 1
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            self.clients -= 1


def spec_bands(spec_path: str | None = None) -> dict[str, Any]:
    """NOR/PAR of every CPP by phase: {tag: {"uom", "phases": {phase: {nor, par, target}}}}."""
    spec = load_spec(spec_path)
    out: dict[str, Any] = {}
    for tag in spec.cpp_tags:
        t = spec.tags[tag]
        out[tag] = {"uom": t.uom, "phases": {}}
        for ph in PHASES:
            lim = t.limits(ph)
            out[tag]["phases"][ph] = {"nor": lim.nor, "par": lim.par, "target": lim.target}
    return out


def make_app(
    hot: HotStore,
    health: Callable[[], dict[str, Any]] | None = None,
    alarms: Any = None,
    write_token: str | None = None,
    interval_s: float = 0.2,
) -> FastAPI:
    """The API over ``hot``; ``alarms`` is the gateway's ``AlarmService`` (None in a fan-out
    replica: actions answer 503); actions need ``Authorization: Bearer <write_token>``."""
    app = FastAPI(title="pharma-twin live gateway", version="1")
    bc = Broadcaster(hot, interval_s)
    app.state.broadcaster = bc

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        base = {"at_us": now_us(), "units": hot.units(), "ws_clients": bc.clients}
        h = health() if health else (hot.get_doc("health") or {})
        return {**base, **h}

    @app.get("/units")
    def get_units() -> list[str]:
        return hot.units()

    @app.get("/units/{unit}/latest")
    def get_latest(unit: str) -> list[dict[str, Any]]:
        out = hot.latest(unit)
        if not out:
            raise HTTPException(404, f"unit {unit!r} has no values in the hot store")
        return out

    @app.get("/units/{unit}/tags/{tag}/window")
    def get_window(
        unit: str, tag: str, seconds: float = Query(300.0, gt=0, le=hot.window_s)
    ) -> dict[str, Any]:
        return {"unit_id": unit, "tag": tag, **hot.window(unit, tag, seconds)}

    @app.get("/spec")
    def get_spec() -> dict[str, Any]:
        return spec_bands()

    @app.get("/alarms")
    def get_alarms() -> list[dict[str, Any]]:
        if alarms is not None:
            return list(alarms.engine.open_alarms())
        return list(hot.get_doc("alarms") or [])

    def _act(authorization: str | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if alarms is None:
            raise HTTPException(503, "alarm actions are served by the gateway process only")
        if not write_token:
            raise HTTPException(503, "alarm actions are off: set the API's write token variable")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), write_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token")
        try:
            return fn()
        except PermissionDeniedError as e:
            raise HTTPException(403, str(e)) from None
        except (AlarmError, ValueError) as e:
            raise HTTPException(409, str(e)) from None

    @app.post("/alarms/{alarm_id}/ack")
    def post_ack(
        alarm_id: str, body: AckBody, authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        return _act(
            authorization,
            lambda: alarms.acknowledge(alarm_id, body.user_id, body.comment, body.context_id),
        )

    @app.post("/alarms/{alarm_id}/shelve")
    def post_shelve(
        alarm_id: str, body: ShelveBody, authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        return _act(
            authorization,
            lambda: alarms.shelve(
                alarm_id, body.user_id, body.reason, body.duration_s, body.context_id
            ),
        )

    @app.post("/alarms/{alarm_id}/unshelve")
    def post_unshelve(
        alarm_id: str, body: UnshelveBody, authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        return _act(
            authorization,
            lambda: alarms.unshelve(alarm_id, body.user_id, body.reason, body.context_id),
        )

    @app.websocket("/ws/live")
    async def ws_live(
        ws: WebSocket, unit: str | None = None, tags: str | None = None, delta: bool = True
    ) -> None:
        await ws.accept()
        picked = tuple(t for t in tags.split(",") if t) if tags else None
        await bc.serve(ws, unit, picked, delta)

    @app.websocket("/ws/units/{unit}")
    async def ws_unit(ws: WebSocket, unit: str, interval_s: float = 0.25) -> None:
        await ws.accept()
        last_sent: tuple[int, tuple[bool, ...]] = (-1, ())
        try:
            while True:
                latest = await asyncio.to_thread(hot.latest, unit)
                key = (
                    max((d["recv_ts_us"] for d in latest), default=0),
                    tuple(d["stale"] for d in latest),
                )
                if key != last_sent:  # new values, or a tag went stale / came back
                    await ws.send_json({"unit_id": unit, "sent_us": now_us(), "tags": latest})
                    last_sent = key
                await asyncio.sleep(max(0.05, interval_s))
        except WebSocketDisconnect:
            return

    return app


__all__ = ["Broadcaster", "make_app", "spec_bands"]
