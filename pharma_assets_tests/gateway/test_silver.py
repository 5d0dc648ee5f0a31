"""The cold path unchanged in meaning: the gateway's landing chunks go through the existing
pipeline into silver, each reading once (twin over MQTT -> gateway -> landing -> Dagster)."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.gateway.coldpath import ColdPath
from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.gateway.protocols.mqtt_common import MqttSettings
from pharma_assets.gateway.protocols.sparkplug import SparkplugHost
from pharma_assets.gateway.serve import serve_live
from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import run_pipeline
from pharma_assets.twin.config import load_plant, load_recipes

from .brokers import Mosquitto, wait_for


@pytest.mark.slow
def test_gateway_landing_reaches_silver_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    plant = load_plant(None).with_units(2)
    gw = Gateway("SITE01", MemoryHotStore(), ColdPath(tmp_path / "buf", landing))
    gw.start_flusher(2.0)
    settings = MqttSettings(port=mosquitto.port)
    host = SparkplugHost(gw, "mqtt", SourceMap("mqtt"), settings, "SITE01")
    host.start()
    steps = 15
    t = threading.Thread(
        target=serve_live,
        args=(plant, load_recipes(None), landing, ["mqtt"]),
        kwargs={"seed": 5, "mqtt": settings, "steps": steps},
    )
    t.start()
    t.join(120)
    seen: list[int] = []

    def settled() -> bool:  # no new reading for a second after the twin stopped
        seen.append(gw.sources["mqtt"].accepted)
        return len(seen) > 50 and seen[-1] == seen[-51] > 0

    wait_for(settled, 30, "in-flight messages")
    assert sum(gw.sources["mqtt"].rejected.values()) == 0
    host.stop()
    gw.stop()  # final flush
    assert gw.cold is not None
    landed = gw.cold.state["landed"]
    assert landed == gw.sources["mqtt"].accepted > 0
    # a second flush after restart adds nothing
    gw2 = Gateway("SITE01", MemoryHotStore(), ColdPath(tmp_path / "buf", landing))
    gw2.flush()
    assert gw2.cold is not None and gw2.cold.state["landed"] == landed

    res = LakehouseResource(lake_uri=str(tmp_path / "lake"), landing_dir=str(landing))
    with dg.instance_for_test() as instance:
        assert run_pipeline(res, instance).ok
    lake = Lake.at(res.lake_uri)
    silver = lake.read("silver", "telemetry")
    quarantine = lake.read("silver", "telemetry_quarantine")
    assert silver is not None
    n_q = 0 if quarantine is None else quarantine.height
    assert silver.height + n_q == landed  # each landed reading in silver or quarantine
    assert silver.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
    assert sorted(silver["batch_id"].cast(pl.String).unique()) == ["BR01-B0001", "BR02-B0001"]
