"""Exactly-once through a gateway SIGKILL for OPC UA and Modbus sources (real servers).

Neither protocol redelivers what a source sent while the gateway was down (no broker), so
"nothing lost" is about what the gateway took: the writer goes in lock step with the
gateway's hot store (a value is written only after the previous one is served by the API,
which the gateway updates after the reading is in its disk buffer), and pauses while the
gateway is dead. Every value a gateway took must then land once, although the process is
SIGKILLed twice while it flushes every 0.2 s; after a restart the OPC UA subscription
sends the current value again (the same source time stamp): it must not land twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import polars as pl
import pytest
import yaml

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.gateway.protocols.modbus import ModbusTwinServer, RegisterMap
from pharma_assets.gateway.protocols.opcua import TagNode, TwinOpcuaServer
from pharma_assets.gateway.serve import LiveFeed
from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import run_pipeline
from pharma_assets.twin.config import load_plant, load_recipes

from .brokers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from pharma_assets.cli import app; app()"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
UNITS = ["BR01", "BR02"]
TAGS = {"temperature_c": "degC", "ph": "pH"}


def _value(k: int, u: int, tag: str) -> float:
    return (36.0 if tag == "temperature_c" else 7.0) + k * 1e-3 + u * 1e-1


def _landing(root: Path) -> pl.DataFrame:
    files = sorted((root / "telemetry").rglob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["opcua", "modbus"])
def test_gateway_sigkill_mid_flush_opcua_and_modbus_nothing_lost_nothing_twice(
    tmp_path: Path, kind: str
) -> None:
    landing, port, api = tmp_path / "landing", free_port(), free_port()
    steps, kill_at = 45, (15, 30)
    # the MES side of the batches lands as files, as in a plant (batch start in the past)
    mes_start = datetime.now(UTC) - timedelta(seconds=steps + 60)
    feed = LiveFeed(load_plant(None).with_units(2), load_recipes(None), landing, start=mes_start)
    assert [o.batch_id for o in feed.step(mes_start + timedelta(seconds=10))] == [
        "BR01-B0001",
        "BR02-B0001",
    ]
    loop = asyncio.new_event_loop()  # the server's loop runs in a thread
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    source: dict[str, Any] = {"name": f"twin-{kind}", "kind": kind}
    if kind == "opcua":
        srv: Any = TwinOpcuaServer(
            f"opc.tcp://127.0.0.1:{port}/twin",
            "SITE01",
            {"USP": UNITS},
            [TagNode(t, u, "TT") for t, u in TAGS.items()],
        )
        source |= {"url": f"opc.tcp://127.0.0.1:{port}/twin", "publishing_interval_ms": 50}
    else:
        rm = RegisterMap.model_validate(
            {
                "registers": [
                    {"name": t, "address": 2 * i, "type": "float32", "uom": u}
                    for i, (t, u) in enumerate(TAGS.items())
                ]
            }
        )

        async def make() -> ModbusTwinServer:  # pymodbus wants its loop running
            return ModbusTwinServer("127.0.0.1", port, {u: i + 1 for i, u in enumerate(UNITS)}, rm)

        srv = run(make())
        (tmp_path / "map.yaml").write_text(yaml.safe_dump(rm.model_dump()))
        source |= {
            "host": "127.0.0.1",
            "port": port,
            "devices": {u: i + 1 for i, u in enumerate(UNITS)},
            "register_map": "map.yaml",
            "poll_interval_s": 0.2,
        }
    run(srv.start())
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "site_id": "SITE01",
                "landing_dir": "landing",
                "buffer_dir": "buf",
                "flush_interval_s": 0.2,  # flushing most of the time: the kills hit flushes
                "api": {"port": api},
                "sources": [source],
            }
        )
    )

    def launch() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, "gateway", "--sources", str(cfg)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def served(k: int) -> bool:
        try:
            for i, u in enumerate(UNITS):
                r = httpx.get(f"http://127.0.0.1:{api}/units/{u}/latest", timeout=2)
                got = {d["tag"]: d["value"] for d in r.json()} if r.status_code == 200 else {}
                if any(abs((got.get(t) or -1) - _value(k, i, t)) > 1e-4 for t in TAGS):
                    return False
            return True
        except (httpx.HTTPError, ValueError):
            return False

    def connected() -> bool:
        try:
            h = httpx.get(f"http://127.0.0.1:{api}/health", timeout=2).json()
            return bool(h["sources"][source["name"]]["connected"])
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    t0 = datetime.now(UTC) - timedelta(seconds=steps + 5)
    gw, kills = launch(), 0
    try:
        for k in range(steps):
            for i, u in enumerate(UNITS):
                vals = {t: _value(k, i, t) for t in TAGS}
                if kind == "opcua":
                    ts = t0 + timedelta(seconds=k)
                    run(srv.write(u, ts, vals, batch_id=f"{u}-B0001"))
                else:
                    srv.set(u, vals)
            wait_for(lambda k=k: served(k), 120, f"step {k} served by the gateway")
            if k in kill_at:
                time.sleep(0.05 + 0.07 * kills)  # somewhere in the next flush
                gw.send_signal(signal.SIGKILL)
                gw.wait(30)
                kills += 1
                gw = launch()
                # (it refuses the current value the subscription sends again: landed before)
                wait_for(connected, 120, "the restarted gateway connected")
        if kind == "modbus":
            time.sleep(1.0)  # a few more polls of the last step
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=120)
        run(srv.stop())
        loop.call_soon_threadsafe(loop.stop)
    assert kills == 2
    df = _landing(landing)
    assert df.height > 0, err[-2000:]
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0  # nothing twice
    assert set(df["batch_id"].cast(pl.String)) == {"BR01-B0001", "BR02-B0001"}
    # nothing lost: every step of every unit and tag was taken by a gateway, so it landed
    for i, u in enumerate(UNITS):
        for t in TAGS:
            vals = df.filter((pl.col("unit_id") == u) & (pl.col("tag") == t))["value"]
            got = {round((v - _value(0, i, t)) * 1e3) for v in vals}
            assert got == set(range(steps)), (u, t, sorted(set(range(steps)) - got))
    if kind == "opcua":  # one reading per step and tag: the initial values were refused
        assert df.height == steps * len(UNITS) * len(TAGS)
    # ... and on through the existing pipeline into silver, each reading once
    res = LakehouseResource(lake_uri=str(tmp_path / "lake"), landing_dir=str(landing))
    with dg.instance_for_test() as instance:
        assert run_pipeline(res, instance).ok
    lake = Lake.at(res.lake_uri)
    silver = lake.read("silver", "telemetry")
    quarantine = lake.read("silver", "telemetry_quarantine")
    assert silver is not None
    n_q = 0 if quarantine is None else quarantine.height
    assert silver.height + n_q == df.height
    assert silver.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
