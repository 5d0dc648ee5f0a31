"""HTTP + WebSocket API over the hot store (FastAPI), for dashboards and third parties.

    GET  /health                                gateway health (sources, lag, buffer)
    GET  /units                                 units with values
    GET  /units/{unit}/latest                   latest value of every tag (+ stale flag)
    GET  /units/{unit}/tags/{tag}/window?seconds=300
    WS   /ws/units/{unit}?interval_s=0.25       pushes the unit's latest values when they change

The API reads only the hot store, so it can run inside the gateway process (default) or
as separate processes sharing Redis (``pharma-twin gateway api --hot-store redis://...``):
ingest and fan-out to many clients belong in separate processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect

from .hotstore import HotStore
from .records import now_us


def make_app(hot: HotStore, health: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    app = FastAPI(title="pharma-twin live gateway", version="1")

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        base = {"at_us": now_us(), "units": hot.units()}
        return {**base, **(health() if health else {})}

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

    @app.websocket("/ws/units/{unit}")
    async def ws_unit(ws: WebSocket, unit: str, interval_s: float = 0.25) -> None:
        await ws.accept()
        last_sent: tuple[int, tuple[bool, ...]] = (-1, ())
        try:
            while True:
                latest = await asyncio.to_thread(hot.latest, unit)
                key = (max((d["recv_ts_us"] for d in latest), default=0),
                       tuple(d["stale"] for d in latest))  # fmt: skip
                if key != last_sent:  # new values, or a tag went stale / came back
                    await ws.send_json({"unit_id": unit, "sent_us": now_us(), "tags": latest})
                    last_sent = key
                await asyncio.sleep(max(0.05, interval_s))
        except WebSocketDisconnect:
            return

    return app


__all__ = ["make_app"]
