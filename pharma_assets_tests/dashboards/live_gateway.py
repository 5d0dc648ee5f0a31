"""A real gateway API (uvicorn on a free 127.0.0.1 port) over an in-process hot store with an
alarm service on a test lake, for the Live page tests (AppTest and Chromium)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from pharma_assets.gateway.alarm_service import AlarmService
from pharma_assets.gateway.alarms import AlarmSettings
from pharma_assets.gateway.api import make_app
from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.gateway.records import GOOD, now_us
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake

TOKEN = "test-token"
SPEC = load_spec()


class Production:
    """Every batch is in production, started long ago (past the settle time)."""

    def phase_at(self, unit_id: str, batch_id: str, ts_us: int) -> tuple[str, int] | None:
        return ("production", ts_us - 10 * 3600 * 1_000_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveGateway:
    lake: Lake
    port: int = field(default_factory=free_port)
    hot: MemoryHotStore = field(default_factory=MemoryHotStore)
    units: tuple[str, ...] = ("BR01", "BR02")

    def __post_init__(self) -> None:
        self.gw = Gateway("SITE01", self.hot, max_age_s=1e9)
        self.svc = AlarmService(
            self.lake, SPEC, Production(), AlarmSettings(on_delay_s=0), flush_interval_s=3600
        )
        self.gw.alarms = self.svc.engine
        self.svc.engine.sinks.append(self._publish)
        self.smap = SourceMap("twin", {})
        self.k = 0
        self.server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _publish(self, _ev: Any = None) -> None:
        self.hot.set_doc("alarms", self.svc.engine.open_alarms())
        self.hot.set_doc("health", {"sources": {"twin": {"name": "twin", "connected": True}}})
        self.hot.set_doc(
            "units", {u: {"batch_id": f"{u}-B0001", "phase": "production"} for u in self.units}
        )

    def put(self, unit: str, values: dict[str, float]) -> None:
        """One reading of each tag, now."""
        self.k += 1
        t = now_us()
        self.gw.ingest(
            "twin",
            self.smap,
            unit,
            f"{unit}-B0001",
            [(tag, v, None, t, GOOD) for tag, v in values.items()],
        )
        self._publish()

    def normal(self) -> dict[str, float]:
        out = {}
        for tag in SPEC.cpp_tags:
            lim = SPEC.tags[tag].limits("production")
            assert lim.nor is not None
            out[tag] = (lim.nor[0] + lim.nor[1]) / 2
        return out

    def start(self) -> LiveGateway:
        for u in self.units:
            self.put(u, self.normal())
        app = make_app(self.hot, None, self.svc, TOKEN, interval_s=0.1)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gateway API did not start")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            time.sleep(0.5)
        self.svc.close()
