"""Sources in worker processes (``workers: N``): real servers on 127.0.0.1, real SIGKILLs.

An OPC UA server (asyncua, in a thread of this process) and a Sparkplug B edge node on a
private Mosquitto feed a gateway service whose two sources run in two worker processes.
Each worker is SIGKILLed once mid-stream: the pool restarts it and counts the gap; every
reading reaches the hot store and the landing zone exactly once, and the counts reconcile
(readings in = accepted + refused, accepted = landed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pharma_assets.gateway.config import GatewayConfig, load_sources
from pharma_assets.gateway.protocols.mqtt_common import MqttSettings
from pharma_assets.gateway.protocols.opcua import TagNode, TwinOpcuaServer
from pharma_assets.gateway.protocols.sparkplug import MetricDef, SparkplugEdgeNode
from pharma_assets.gateway.service import GatewayService, start_service
from pharma_assets.gateway.workers import assign, resolve_workers
from pharma_assets.twin.config import ConfigError

from .brokers import Mosquitto, free_port, wait_for

METRICS = [MetricDef("temperature_c", "degC"), MetricDef("ph", "pH")]


class LoopThread:
    """An event loop in a thread (the OPC UA server runs there while the test drives it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.t = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.t.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)  # hang guard

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(10)


@pytest.fixture
def opcua_server() -> Iterator[tuple[TwinOpcuaServer, LoopThread]]:
    lt = LoopThread()
    srv = TwinOpcuaServer(
        f"opc.tcp://127.0.0.1:{free_port()}/twin",
        "SITE01",
        {"USP": ["BR03"]},
        [TagNode("TT101", "K", "TT")],
    )
    lt.run(srv.start())
    try:
        yield srv, lt
    finally:
        lt.run(srv.stop())
        lt.close()


@pytest.fixture
def service_factory() -> Iterator[Any]:
    """Start gateway services; each is stopped (workers joined) at teardown."""
    started: list[GatewayService] = []

    def start(cfg: GatewayConfig) -> GatewayService:
        svc = start_service(cfg)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        if not svc._stop.is_set():
            svc.stop()


def test_workers_setting_assignment_and_errors(tmp_path: Path) -> None:
    assert resolve_workers(0, 10) == 0
    assert resolve_workers(3, 10) == 3
    assert resolve_workers("auto", 10) == min(os.cpu_count() or 1, 10)
    assert resolve_workers("auto", 1) == 1
    assert resolve_workers("auto", 0) == 0
    assert assign(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]
    assert assign(list("ab"), 4) == [["a"], ["b"]]  # no idle worker processes
    p = tmp_path / "s.yaml"
    p.write_text(
        "site_id: S\nworkers: many\nsources: [{name: a, kind: opcua, url: 'opc.tcp://h:1'}]\n"
    )
    with pytest.raises(ConfigError, match=r"s\.yaml is invalid: workers"):
        load_sources(p)
    p.write_text(
        "site_id: S\nworkers: -1\nsources: [{name: a, kind: opcua, url: 'opc.tcp://h:1'}]\n"
    )
    with pytest.raises(ConfigError, match="workers must be 0 or more"):
        load_sources(p)


def test_worker_processes_killed_are_restarted_nothing_lost_nothing_twice(
    mosquitto: Mosquitto,
    opcua_server: tuple[TwinOpcuaServer, LoopThread],
    service_factory: Any,
    tmp_path: Path,
) -> None:
    srv, lt = opcua_server
    landing = tmp_path / "landing"
    cfg = GatewayConfig.model_validate(
        {
            "site_id": "SITE01",
            "landing_dir": str(landing),
            "buffer_dir": str(tmp_path / "buf"),
            "flush_interval_s": 0.5,
            "api": None,
            "workers": 2,
            "sources": [
                {
                    "name": "mqtt1",
                    "kind": "mqtt_sparkplug",
                    "port": mosquitto.port,
                    "group_id": "SITE01",
                    "edge_nodes": ["twin"],
                },
                {
                    "name": "opc1",
                    "kind": "opcua",
                    "url": srv.endpoint,
                    "tags": {"TT101": {"tag": "temperature_c", "from_uom": "K"}},
                },
            ],
        }
    )
    svc: GatewayService = service_factory(cfg)
    assert svc.pool is not None
    assert svc.pool.health()["sources"] == [["mqtt1"], ["opc1"]]
    gw = svc.gateway
    wait_for(lambda: all(gw.stats(s).connected for s in ("mqtt1", "opc1")), 120, "both sources up")
    # a node of another group's edge node this source does not take (edge_nodes)
    other = SparkplugEdgeNode(
        MqttSettings(port=mosquitto.port), "SITE01", "other", {"BR09": METRICS}
    )
    edge = SparkplugEdgeNode(
        MqttSettings(port=mosquitto.port), "SITE01", "twin", {"BR01": METRICS, "BR02": METRICS}
    )
    edge.start()
    other.start()
    steps = 60
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=steps + 30)
    pids = {w.sources[0].name: w.proc.pid for w in svc.pool.workers}

    def opc_has(ts: datetime) -> bool:
        want = int(ts.timestamp() * 1_000_000)
        return any(
            d["tag"] == "temperature_c" and d["source_ts_us"] == want for d in gw.hot.latest("BR03")
        )

    try:
        for k in range(steps):
            ts = t0 + timedelta(seconds=k)
            ms = int(ts.timestamp() * 1000)
            for dev in ("BR01", "BR02"):
                edge.publish(
                    dev, ms, {"temperature_c": 36.0 + k / 100, "ph": 7.0 + k / 1000}, f"{dev}-B0001"
                )
            other.publish("BR09", ms, {"temperature_c": 30.0, "ph": 7.0}, "BR09-B0001")
            # OPC UA in lock step (a subscription delivers the current value, not history)
            lt.run(srv.write("BR03", ts, {"TT101": 300.0 + k}, batch_id="BR03-B0001"))
            wait_for(lambda ts=ts: opc_has(ts), 60, f"OPC UA step {k} in the hot store")
            if k == steps // 4:  # the MQTT worker, with messages in flight
                os.kill(pids["mqtt1"], signal.SIGKILL)
            if k == steps * 3 // 5:  # the OPC UA worker; go on once its replacement has subscribed
                os.kill(pids["opc1"], signal.SIGKILL)
                wait_for(
                    lambda: gw.stats("opc1").worker_restarts == 1 and gw.stats("opc1").connected,
                    120,
                    "the OPC UA worker restarted and subscribed",
                )
        n_mqtt, n_opc = 2 * steps * 2, steps
        try:
            wait_for(lambda: gw.stats("mqtt1").accepted == n_mqtt, 120, "every MQTT reading")
        except AssertionError as e:
            raise AssertionError(f"{e}: {gw.stats('mqtt1')}") from None
    finally:
        edge.stop()
        other.stop()
    health = svc.health()
    svc.stop()
    assert health["workers"]["restarts"] == 2 and health["workers"]["alive"] == 2
    assert health["workers"]["pids"] != [pids["mqtt1"], pids["opc1"]]
    for name, n in (("mqtt1", n_mqtt), ("opc1", n_opc)):
        st = gw.stats(name)
        assert st.worker_restarts == 1 and st.gaps >= 1, (name, st)
        assert st.accepted == n, (name, st.accepted)
        assert st.readings_in == st.accepted + sum(st.rejected.values()), (name, st)
        assert st.rejected["unknown_tag"] == st.rejected["unknown_unit"] == 0
    # the restarted subscription's first value (the step before, again) is refused as a duplicate
    assert gw.stats("opc1").rejected["duplicate"] >= 1
    # hot store: every reading once
    for unit, tag, n in (("BR01", "ph", steps), ("BR02", "temperature_c", steps)):
        assert len(gw.hot.window(unit, tag, 3600)["ts_us"]) == n
    assert len(gw.hot.window("BR03", "temperature_c", 3600)["ts_us"]) == n_opc
    assert "BR09" not in gw.hot.units()  # not this source's edge node
    # landing: every accepted reading exactly once
    files = sorted((landing / "telemetry").rglob("*.parquet"))
    df = pl.concat([pl.read_parquet(f) for f in files])
    assert gw.cold is not None
    assert df.height == n_mqtt + n_opc == gw.cold.state["landed"]
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
    assert sorted(df["unit_id"].cast(pl.String).unique()) == ["BR01", "BR02", "BR03"]
    got = df.filter(pl.col("unit_id") == "BR03").sort("ts")["value"].to_list()
    assert got == pytest.approx([300.0 + k - 273.15 for k in range(steps)])
