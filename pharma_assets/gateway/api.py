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
    WS   /ws/live?unit=U                        the Live view's feed: every unit's latest
                                                values (compact), open alarms, health and
                                                each unit's batch and phase;
                                                with ``unit``, that unit only

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


class Broadcaster:
    """One snapshot of the hot store per ``interval_s``, shared by every WebSocket client of
    this process; texts are serialised once per snapshot and view (all units or one)."""

    def __init__(self, hot: HotStore, interval_s: float = 0.2) -> None:
        self.hot, self.interval_s = hot, interval_s
        self.seq = 0
        self.units: dict[str, dict[str, list[Any]]] = {}
        self.alarms: Any = []
        self.health: Any = None
        self.meta: Any = {}
        self.snap_us = 0
        self._texts: dict[str | None, str] = {}
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.clients = 0

    def _build(self) -> bool:
        now = now_us()
        units = {}
        for u in self.hot.units():
            units[u] = {
                d["tag"]: [
                    d["value"],
                    d["source_ts_us"],
                    d["recv_ts_us"],
                    _QUALITY.get(d["quality"], 2),
                    d["stale"],
                    d["uom"],
                ]
                for d in self.hot.latest(u, now)
            }
        alarms = self.hot.get_doc("alarms") or []
        health = self.hot.get_doc("health")
        meta = self.hot.get_doc("units") or {}
        changed = (
            units != self.units
            or alarms != self.alarms
            or health != self.health
            or meta != self.meta
        )
        if changed:
            self.units, self.alarms, self.health, self.snap_us = units, alarms, health, now
            self.meta = meta
        return changed

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

    def text(self, unit: str | None) -> str:
        t = self._texts.get(unit)
        if t is None:
            units = self.units if unit is None else {unit: self.units.get(unit, {})}
            meta = self.meta if unit is None else {unit: self.meta.get(unit, {})}
            alarms = (
                self.alarms
                if unit is None
                else [a for a in self.alarms if a.get("unit_id") == unit]
            )
            t = self._texts[unit] = json.dumps(
                {
                    "seq": self.seq,
                    "snap_us": self.snap_us,
                    "sent_us": now_us(),
                    "units": units,
                    "alarms": alarms,
                    "health": self.health,
                    "meta": meta,
                },
                separators=(",", ":"),
                default=str,
            )
        return t

    async def serve(self, ws: WebSocket, unit: str | None) -> None:
        self.start()
        self.clients += 1
        seen = 0  # snapshot 0 is "none built yet"
        try:
            while True:
                async with self._cond:
                    if self.seq == seen:
                        await self._cond.wait()
                    seen = self.seq
                await ws.send_text(self.text(unit))
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
    async def ws_live(ws: WebSocket, unit: str | None = None) -> None:
        await ws.accept()
        await bc.serve(ws, unit)

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
