"""``live --serve``: the twin's plant served over OPC UA and Sparkplug B at 1 Hz."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.gateway.protocols.modbus import ModbusSource, load_register_map
from pharma_assets.gateway.protocols.mqtt_common import MqttSettings
from pharma_assets.gateway.protocols.opcua import OpcuaSource
from pharma_assets.gateway.protocols.sparkplug import SparkplugHost
from pharma_assets.gateway.serve import (
    UTILITY_TAGS,
    gateway_sources_for,
    plan_serving,
    serve_live,
    twin_register_map,
)
from pharma_assets.twin.config import ConfigError, load_plant, load_recipes

from .brokers import Mosquitto, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_live_serve_feeds_all_protocols_with_batch_ids(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    plant = load_plant(None).with_units(2)
    opc_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/twin"
    gw_mqtt = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "r1.jsonl")
    gw_opc = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "r2.jsonl")
    settings = MqttSettings(port=mosquitto.port)
    host = SparkplugHost(gw_mqtt, "mqtt", SourceMap("mqtt"), settings, "SITE01")
    host.start()
    opc = OpcuaSource(gw_opc, "opc", SourceMap("opc"), endpoint, "SITE01")
    mb_port = free_port()
    regmap = load_register_map(REPO / "docs/examples/modbus_register_map.yaml")
    assert regmap == twin_register_map([t.tag for t in plant.tags])  # the shipped map is true
    mb = ModbusSource(
        gw_mqtt,
        "mb",
        SourceMap("mb"),
        "127.0.0.1",
        mb_port,
        {"BR01": 1, "BR02": 2},
        regmap,
        poll_interval_s=0.5,
    )
    served: list[int] = []
    t = threading.Thread(
        target=lambda: served.append(
            serve_live(
                plant,
                load_recipes(None),
                tmp_path / "landing",
                ["opcua", "mqtt", "modbus"],
                seed=3,
                speed=1.0,
                period_s=1.0,
                opcua_endpoint=endpoint,
                mqtt=settings,
                steps=12,
                modbus_address=("127.0.0.1", mb_port),
            )
        )
    )
    t.start()
    try:
        wait_for(lambda: ("twin", "BR02") in host.devices, 30, "DBIRTH from the twin")
        opc.start_in_thread()
        mb.start_in_thread()
        n_proto = len(plant.tags) - len(UTILITY_TAGS)  # utility tags go over Modbus only
        wait_for(lambda: len(gw_opc.hot.latest("BR01")) == n_proto, 30, "OPC UA values")
        t.join(300)  # a hang guard: 12 steps at 1 s, but OPC UA start-up is slow on a loaded CI
        # It hung when the gateway's OPC UA client reconnected: asyncua's server answered its
        # Republish requests with empty messages and the client asked again, for ever
        # (test_opcua.py::test_dropped_socket_reconnects_without_a_republish_storm).
        assert not t.is_alive(), "serve_live did not finish its 12 steps in 300 s"
        assert served == [12]
        n_tags = len(plant.tags)
        # every tag of both units: over MQTT, and the utility tags polled over Modbus
        wait_for(lambda: all(len(gw_mqtt.hot.latest(u)) == n_tags for u in ("BR01", "BR02")))
        assert (
            gw_mqtt.sources["mb"].accepted > 0 and sum(gw_mqtt.sources["mb"].rejected.values()) == 0
        )
        pump = {d["tag"]: d["value"] for d in gw_mqtt.hot.latest("BR01")}["feed_pump_current_a"]
        assert pump is not None and 0 <= pump < 50
        temps = gw_mqtt.hot.window("BR01", "temperature_c", 60)
        assert 10 <= len(temps["ts_us"]) <= 12
        assert all(30 < v < 40 for v in temps["value"] if v is not None)
        assert host.devices[("twin", "BR01")].batch_id == "BR01-B0001"
        assert host.devices[("twin", "BR02")].batch_id == "BR02-B0001"
        assert sum(gw_mqtt.sources["mqtt"].rejected.values()) == 0
        # MES still lands as files, so silver can place the gateway's telemetry in its batch
        assert list((tmp_path / "landing/mes/BR01/BR01-B0001").glob("*.jsonl"))
    finally:
        mb.stop()
        opc.stop()
        host.stop()


MIXED_PLANT = """
site: {site_id: SITE01, name: Mixed-protocol plant}
areas:
  - area_id: USP
    name: Upstream
    protocol: opcua                # the area's default
    units:
      - {unit_id: BR01, working_volume_l: 2000}
      - {unit_id: BR02, working_volume_l: 2000, protocol: modbus}   # a Modbus skid
      - {unit_id: BR03, working_volume_l: 2000, protocol: mqtt}
  - area_id: PILOT
    name: Pilot
    units:
      - {unit_id: BR04, working_volume_l: 2000, protocol: opcua}
"""


def _mixed_plant(tmp_path: Path) -> Path:
    import yaml

    base = yaml.safe_load((REPO / "pharma_assets/twin/config/plant_default.yaml").read_text())
    base.update(yaml.safe_load(MIXED_PLANT))
    p = tmp_path / "plant.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def test_unknown_protocol_in_plant_yaml_is_one_line_error(tmp_path: Path) -> None:
    p = _mixed_plant(tmp_path)
    p.write_text(p.read_text().replace("protocol: mqtt", "protocol: profinet"))
    with pytest.raises(ConfigError) as e:
        load_plant(p)
    msg = str(e.value)
    assert "\n" not in msg and "areas.0.units.2.protocol" in msg
    assert "unknown protocol 'profinet'; use opcua, mqtt, modbus" in msg


def test_serve_plan_follows_the_plant_yaml(tmp_path: Path) -> None:
    plant = load_plant(_mixed_plant(tmp_path))
    with pytest.raises(ValueError, match=r"unit BR03 is served over mqtt .* names only opcua"):
        plan_serving(plant, ["opcua", "modbus"])
    plan = plan_serving(plant, ["opcua", "mqtt", "modbus"], opcua_shard_size=1)
    assert plan.unit_protocols == {
        "BR01": ("opcua",),
        "BR02": ("modbus",),
        "BR03": ("mqtt",),
        "BR04": ("opcua",),
    }
    assert plan.opcua_shards == [["BR01"], ["BR04"]]
    assert plan.tags[("BR02", "modbus")] == [t.tag for t in plant.tags]  # the whole unit
    # units keep their protocol when --units folds the areas into one
    assert [plant.with_units(5).protocol_of(f"BR0{i}") for i in range(1, 6)] == [
        "opcua",
        "modbus",
        "mqtt",
        "opcua",
        "opcua",
    ]
    # the shipped example (make demo with PHARMA_DEMO_PLANT) plans as its comment says
    example = plan_serving(
        load_plant(REPO / "docs/examples/plant_mixed_protocols.yaml"), ["opcua", "mqtt", "modbus"]
    )
    assert example.units_over("opcua") == ["BR01", "BR02", "BR03"]
    assert example.units_over("mqtt") == ["BR04", "BR05"]
    assert example.modbus_devices == {"BR06": 1}
    # no protocol in the YAML: every --serve protocol, pump health over Modbus
    plain = plan_serving(load_plant(None).with_units(2), ["opcua", "mqtt", "modbus"])
    assert plain.unit_protocols["BR01"] == ("opcua", "mqtt", "modbus")
    assert set(plain.tags[("BR01", "modbus")]) == set(UTILITY_TAGS)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_mixed_plant_every_unit_reaches_hot_store_and_landing_with_batch_ids(
    mosquitto: Mosquitto, tmp_path: Path, workers: int
) -> None:
    """OPC UA (two shards, each server in its own process), Sparkplug B on Mosquitto and a
    Modbus skid, one plant; the gateway built from the sources the serve plan gives (as
    make demo does), its OPC UA and MQTT sources in the gateway process or (workers=2) in
    two worker processes."""
    import multiprocessing

    import polars as pl

    from pharma_assets.gateway.config import GatewayConfig
    from pharma_assets.gateway.service import start_service

    plant = load_plant(_mixed_plant(tmp_path))
    plan = plan_serving(plant, ["opcua", "mqtt", "modbus"], opcua_shard_size=1)
    opc_port, mb_port = free_port(), free_port()
    while opc_port + 1 == mb_port:
        mb_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/twin"
    mqtt = MqttSettings(port=mosquitto.port)
    landing = tmp_path / "landing"
    sources = gateway_sources_for(
        plan, tmp_path / "gw", endpoint, mqtt, ("127.0.0.1", mb_port), "SITE01"
    )
    assert [s["kind"] for s in sources] == ["opcua", "opcua", "mqtt_sparkplug", "modbus"]
    cfg = GatewayConfig.model_validate(
        {
            "site_id": "SITE01",
            "landing_dir": str(landing),
            "buffer_dir": str(tmp_path / "buf"),
            "flush_interval_s": 0.5,
            "api": None,
            "workers": workers,
            "sources": sources,
        }
    )
    steps = 24  # BR04 starts its first batch 15 s in (5 s per unit)
    served: list[int] = []
    t = threading.Thread(
        target=lambda: served.append(
            serve_live(
                plant,
                load_recipes(None),
                landing,
                ["opcua", "mqtt", "modbus"],
                seed=5,
                opcua_endpoint=endpoint,
                mqtt=mqtt,
                steps=steps,
                modbus_address=("127.0.0.1", mb_port),
                opcua_shard_size=1,
            )
        )
    )
    svc = start_service(cfg)  # first, so the Sparkplug host sees the twin's births
    t.start()
    try:
        n_tags = len(plant.tags)
        units = ["BR01", "BR02", "BR03", "BR04"]
        wait_for(
            lambda: all(len(svc.gateway.hot.latest(u)) == n_tags for u in units),
            120,
            "every tag of every unit in the hot store",
        )
        children = [p.name for p in multiprocessing.active_children()]
        assert sorted(n for n in children if n.startswith("opcua-shard-")) == [
            f"opcua-shard-opc.tcp://127.0.0.1:{opc_port + i}/twin" for i in range(2)
        ]
        if workers:
            assert svc.pool is not None
            assert sorted(n for n in children if n.startswith("gateway-worker-")) == [
                "gateway-worker-0",
                "gateway-worker-1",
            ]
            assert [sorted(s) for s in svc.pool.health()["sources"]] == [
                ["twin-mqtt", "twin-opcua-0"],
                ["twin-opcua-1"],
            ]
        else:
            assert svc.pool is None
        t.join(300)
        assert not t.is_alive(), "serve_live did not finish"
        assert served == [steps]
    finally:
        svc.stop()
        t.join(60)
    assert set(svc.gateway.sources) == {
        "twin-opcua-0",
        "twin-opcua-1",
        "twin-mqtt",
        "twin-modbus-unit",
    }
    for name, st in svc.gateway.sources.items():
        assert st.accepted > 0, name
        assert sum(st.rejected.values()) == 0, (name, dict(st.rejected))
    files = sorted((landing / "telemetry").rglob("*.parquet"))
    df = pl.concat([pl.read_parquet(f) for f in files])
    by_unit = df.group_by("unit_id").agg(pl.col("batch_id").unique(), pl.col("tag").n_unique())
    got = {r["unit_id"]: (r["batch_id"], r["tag"]) for r in by_unit.to_dicts()}
    assert got == {u: ([f"{u}-B0001"], n_tags) for u in units}
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
