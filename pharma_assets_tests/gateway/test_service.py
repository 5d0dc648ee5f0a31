"""The gateway as a service: sources YAML, CLI process, HTTP + WebSocket API, SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import polars as pl
import pytest
import yaml
from websockets.sync.client import connect

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.gateway.cli import parse_serve
from pharma_assets.gateway.config import load_sources
from pharma_assets.gateway.protocols.mqtt_common import MqttSettings
from pharma_assets.gateway.protocols.opcua import TagNode, TwinOpcuaServer
from pharma_assets.gateway.protocols.sparkplug import MetricDef, SparkplugEdgeNode
from pharma_assets.gateway.serve import LiveFeed
from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import run_pipeline
from pharma_assets.twin.config import ConfigError, load_plant, load_recipes

from .brokers import Mosquitto, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from pharma_assets.cli import app; app()"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
METRICS = [MetricDef("temperature_c", "degC"), MetricDef("ph", "pH")]


def _sources(tmp: Path, mqtt_port: int, api_port: int, opcua_port: int | None = None) -> Path:
    srcs: list[dict] = [
        {
            "name": "mqtt1",
            "kind": "mqtt_sparkplug",
            "host": "127.0.0.1",
            "port": mqtt_port,
            "group_id": "SITE01",
        }
    ]
    if opcua_port:
        srcs.append(
            {
                "name": "opc1",
                "kind": "opcua",
                "url": f"opc.tcp://127.0.0.1:{opcua_port}/twin",
                "tags": {"TT101": {"tag": "temperature_c", "from_uom": "K"}},
            }
        )
    cfg = {
        "site_id": "SITE01",
        "landing_dir": "landing",
        "buffer_dir": "buf",
        "flush_interval_s": 0.5,
        "api": {"port": api_port},
        "sources": srcs,
    }
    p = tmp / "sources.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _landing(root: Path) -> pl.DataFrame:
    files = sorted((root / "telemetry").rglob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def test_sources_yaml_errors_name_the_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("site_id: SITE01\nsources:\n  - {name: a, kind: opcua, url: http://x}\n")
    with pytest.raises(ConfigError, match=r"s.yaml is invalid: sources.0.opcua.url"):
        load_sources(p)
    p.write_text(
        "site_id: SITE01\nsources:\n  - {name: a, kind: mqtt_sparkplug, group_id: G,"
        " tags: {X: {tag: ph, from_uom: furlong}}}\n"
    )
    with pytest.raises(ConfigError, match=r"no unit conversion from 'furlong' to 'pH'"):
        load_sources(p)
    p.write_text("site_id: SITE01\nsources: []\n")
    with pytest.raises(ConfigError, match="sources"):
        load_sources(p)
    p.write_text(
        "site_id: SITE01\nsources:\n  - {name: pumps, kind: modbus, port: 5020,"
        " devices: {BR01: 1}, register_map: maps/skid.yaml}\n"
    )
    cfg = load_sources(p)
    assert cfg.sources[0].register_map == tmp_path / "maps/skid.yaml"  # type: ignore[union-attr]
    assert cfg.landing_dir == tmp_path / "landing"
    assert parse_serve("opcua,mqtt=broker:1884") == {
        "opcua": "opc.tcp://127.0.0.1:4840/twin",
        "mqtt": "broker:1884",
    }
    assert parse_serve("modbus") == {"modbus": "127.0.0.1:5020"}
    with pytest.raises(Exception, match="unknown protocol 'bacnet'"):
        parse_serve("bacnet")


def test_gateway_process_serves_api_and_lands_mqtt_and_opcua(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    api_port, opc_port = free_port(), free_port()
    srv = TwinOpcuaServer(
        f"opc.tcp://127.0.0.1:{opc_port}/twin",
        "SITE01",
        {"USP": ["BR03"]},
        [TagNode("TT101", "K", "TT")],
    )
    loop = asyncio.new_event_loop()  # the server's loop runs in a thread while the test waits
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)  # hang guard under load

    run(srv.start())
    cfg = _sources(tmp_path, mosquitto.port, api_port, opc_port)
    gw = subprocess.Popen(
        [*CLI, "gateway", "--sources", str(cfg)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    edge = SparkplugEdgeNode(
        MqttSettings(port=mosquitto.port), "SITE01", "twin", {"BR01": METRICS, "BR02": METRICS}
    )
    base = f"http://127.0.0.1:{api_port}"
    try:

        def healthy() -> bool:
            try:
                h = httpx.get(f"{base}/health", timeout=1).json()
            except httpx.HTTPError:
                return False
            return all(h["sources"].get(s, {}).get("connected") for s in ("mqtt1", "opc1"))

        wait_for(healthy, 60, "gateway API and both sources connected")
        edge.start()
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
        with connect(f"ws://127.0.0.1:{api_port}/ws/units/BR01?interval_s=0.1") as ws:
            for k in range(10):
                ts = t0 + timedelta(seconds=k)
                for dev in ("BR01", "BR02"):
                    edge.publish(
                        dev,
                        int(ts.timestamp() * 1000),
                        {"temperature_c": 36.0 + k / 10, "ph": 7.0 + k / 100},
                        batch_id=f"{dev}-B0001",
                    )
                run(srv.write("BR03", ts, {"TT101": 310.15 + k}, batch_id="BR03-B0001"))
            pushed: list[dict] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv(timeout=5))
                pushed.append(msg)
                temps = [d["value"] for d in msg["tags"] if d["tag"] == "temperature_c"]
                if temps == [pytest.approx(36.9)]:
                    break
            assert pushed and pushed[-1]["unit_id"] == "BR01"
            assert [d["value"] for d in pushed[-1]["tags"] if d["tag"] == "temperature_c"] == [
                pytest.approx(36.9)
            ]

        def opc_done() -> bool:
            r = httpx.get(
                f"{base}/units/BR03/tags/temperature_c/window?seconds=120", timeout=2
            ).json()
            return len(r["ts_us"]) == 10

        wait_for(opc_done, 30, "OPC UA values in the hot store")
        latest = {d["tag"]: d for d in httpx.get(f"{base}/units/BR03/latest").json()}
        assert (
            latest["temperature_c"]["value"] == pytest.approx(46.0)
            and latest["temperature_c"]["uom"] == "degC"
        )
        assert httpx.get(f"{base}/units/BR99/latest").status_code == 404
        assert sorted(httpx.get(f"{base}/units").json()) == ["BR01", "BR02", "BR03"]
    finally:
        edge.stop()
        gw.send_signal(signal.SIGTERM)
        out, err = gw.communicate(timeout=60)
        run(srv.stop())
        loop.call_soon_threadsafe(loop.stop)
    assert gw.returncode == 0, err
    assert "50 readings landed" in out + err  # 2 units x 10 steps x 2 tags (MQTT) + 10 (OPC UA)
    df = _landing(tmp_path / "landing")
    assert df.height == 50
    assert sorted(df["batch_id"].cast(pl.String).unique()) == [
        "BR01-B0001",
        "BR02-B0001",
        "BR03-B0001",
    ]
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0


@pytest.mark.parametrize("workers", ["0", "1"])
def test_gateway_sigkill_mid_stream_with_mqtt_nothing_lost_nothing_twice(
    mosquitto: Mosquitto, tmp_path: Path, workers: str
) -> None:
    """Also with the MQTT source in a worker process (``--workers 1``): the SIGKILLed
    gateway's worker exits with it, and what it had not handed over is redelivered."""
    api_port = free_port()
    cfg = _sources(tmp_path, mosquitto.port, api_port)
    start = [*CLI, "gateway", "--sources", str(cfg), "--workers", workers]

    def launch() -> subprocess.Popen[str]:
        return subprocess.Popen(
            start, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    gw = launch()
    landing = tmp_path / "landing"
    edge = SparkplugEdgeNode(
        MqttSettings(port=mosquitto.port),
        "SITE01",
        "twin",
        {f"BR{u:02d}": METRICS for u in range(1, 4)},
    )

    def subscribed() -> bool:  # its persistent session is registered with the broker
        try:
            h = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=1).json()
        except httpx.HTTPError:
            return False
        return bool(h["sources"].get("mqtt1", {}).get("connected"))

    wait_for(subscribed, 60, "gateway up and subscribed")
    edge.start()
    steps = 300
    t0 = int(time.time() * 1000) - steps * 1000 - 5000
    # the MES side of those batches lands as files, as in a plant (batch start before t0)
    mes_start = datetime.fromtimestamp(t0 / 1000, UTC) - timedelta(seconds=20)
    feed = LiveFeed(load_plant(None).with_units(3), load_recipes(None), landing, start=mes_start)
    assert [o.batch_id for o in feed.step(mes_start + timedelta(seconds=15))] == [
        "BR01-B0001",
        "BR02-B0001",
        "BR03-B0001",
    ]
    kills = 0
    for k in range(steps):
        for u in range(1, 4):
            edge.publish(
                f"BR{u:02d}",
                t0 + k * 1000,
                {"temperature_c": 36.0 + k * 1e-3 + u, "ph": 7.0 + k * 1e-4},
                batch_id=f"BR{u:02d}-B0001",
            )
        time.sleep(0.01)
        if k in (80, 200):  # SIGKILL mid-stream (the broker queues for the persistent session)
            gw.send_signal(signal.SIGKILL)
            gw.wait(30)
            kills += 1
            time.sleep(0.3)
            gw = launch()
    expected = steps * 3 * 2
    try:
        wait_for(lambda: _landing(landing).height >= expected, 90, f"{expected} readings landed")
    finally:
        edge.stop()
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=60)
    assert kills == 2
    df = _landing(landing)
    assert df.height == expected, err[-2000:]
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
    # ... and on through the existing pipeline into silver, each reading once
    res = LakehouseResource(lake_uri=str(tmp_path / "lake"), landing_dir=str(landing))
    with dg.instance_for_test() as instance:
        assert run_pipeline(res, instance).ok
    lake = Lake.at(res.lake_uri)
    silver = lake.read("silver", "telemetry")
    quarantine = lake.read("silver", "telemetry_quarantine")
    assert silver is not None
    n_q = 0 if quarantine is None else quarantine.height
    assert silver.height + n_q == expected  # (the LiveFeed step above wrote MES files only)
    assert silver.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
