"""MQTT Sparkplug B through a real Mosquitto on 127.0.0.1: edge node -> host -> gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap, TagMapping
from pharma_assets.gateway.protocols import sparkplug_b_pb2 as pb
from pharma_assets.gateway.protocols.mqtt_common import MqttSettings
from pharma_assets.gateway.protocols.sparkplug import (
    DOUBLE,
    MetricDef,
    SparkplugEdgeNode,
    SparkplugHost,
)

from .brokers import Mosquitto, wait_for

METRICS = [MetricDef("TT101", "K"), MetricDef("ph", "pH"), MetricDef("dissolved_oxygen_pct", "%")]


@pytest.fixture
def rig(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[SparkplugEdgeNode, SparkplugHost]]:
    s = MqttSettings(port=mosquitto.port)
    gw = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")
    smap = SourceMap("mqtt1", {"TT101": TagMapping(tag="temperature_c", from_uom="K")})
    host = SparkplugHost(gw, "mqtt1", smap, s, group="SITE01")
    host.start()
    edge = SparkplugEdgeNode(s, "SITE01", "twin", {"BR01": METRICS, "BR02": METRICS})
    edge.start()
    wait_for(lambda: ("twin", "BR02") in host.devices, what="DBIRTH of BR02")
    yield edge, host
    edge.stop()
    host.stop()


def _ms() -> int:
    return time.time_ns() // 1_000_000


def test_birth_data_and_units_reach_the_hot_store(
    rig: tuple[SparkplugEdgeNode, SparkplugHost],
) -> None:
    edge, host = rig
    gw = host.gw
    t0 = _ms() - 10_000
    for k in range(10):
        for dev in ("BR01", "BR02"):
            edge.publish(
                dev,
                t0 + k * 1000,
                {"TT101": 310.15 + k, "ph": 7.0, "dissolved_oxygen_pct": 40.0 + k},
                batch_id=f"{dev}-B0001",
            )
    # ph does not change after the first message: report by exception
    expected = 2 * (10 + 1 + 10)
    wait_for(lambda: gw.sources["mqtt1"].accepted == expected, what=f"{expected} readings")
    latest = {d["tag"]: d for d in gw.hot.latest("BR02")}
    assert latest["temperature_c"]["value"] == pytest.approx(37.0 + 9)
    assert latest["temperature_c"]["uom"] == "degC"
    assert latest["dissolved_oxygen_pct"]["source_ts_us"] == (t0 + 9000) * 1000
    w = gw.hot.window("BR01", "temperature_c", 60)
    assert len(w["ts_us"]) == 10
    st = host.stats
    assert st.connected and st.gaps == 0 and sum(st.rejected.values()) == 0
    assert host.devices[("twin", "BR01")].batch_id == "BR01-B0001"
    assert edge.publish("BR01", t0 + 10_000, {"ph": 7.0}) == 0  # unchanged: nothing sent


def test_wrong_unit_in_birth_certificate_is_refused(mosquitto: Mosquitto, tmp_path: Path) -> None:
    s = MqttSettings(port=mosquitto.port)
    gw = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")
    smap = SourceMap("mqtt1", {"TT101": TagMapping(tag="temperature_c", from_uom="K")})
    host = SparkplugHost(gw, "mqtt1", smap, s, group="G")
    host.start()
    bad = [
        MetricDef("TT101", "degF"),
        MetricDef("ph", "furlong"),
        MetricDef("agitation_rpm", "rpm"),
    ]
    edge = SparkplugEdgeNode(s, "G", "twin", {"BR01": bad})
    edge.start()
    try:
        wait_for(lambda: ("twin", "BR01") in host.devices, what="DBIRTH")
        edge.publish("BR01", _ms(), {"TT101": 98.6, "ph": 7.0, "agitation_rpm": 120.0}, "BR01-B1")
        wait_for(lambda: gw.sources["mqtt1"].readings_in == 3, what="3 readings")
        st = gw.sources["mqtt1"]
        assert st.rejected["unit_mismatch"] == 2 and st.accepted == 1
        assert [d["tag"] for d in gw.hot.latest("BR01")] == ["agitation_rpm"]
        text = (tmp_path / "rejected.jsonl").read_text()
        assert "'degF' but the tag map says from_uom 'K'" in text and "'furlong'" in text
    finally:
        edge.stop()
        host.stop()


def test_rebirth_with_new_aliases_and_unknown_alias_asks_for_rebirth(
    rig: tuple[SparkplugEdgeNode, SparkplugHost],
) -> None:
    edge, host = rig
    gw = host.gw
    t0 = _ms() - 5000
    edge.publish("BR01", t0, {"TT101": 300.0, "ph": 7.0, "dissolved_oxygen_pct": 40.0}, "BR01-B1")
    wait_for(lambda: gw.sources["mqtt1"].accepted == 3)
    old = dict(host.devices[("twin", "BR01")].aliases)
    edge.birth(alias_base=500)  # new aliases for the same metrics
    wait_for(lambda: host.devices[("twin", "BR01")].aliases != old, what="new aliases")
    edge.publish("BR01", t0 + 1000, {"TT101": 301.0, "ph": 7.1, "dissolved_oxygen_pct": 41.0})
    wait_for(lambda: gw.sources["mqtt1"].accepted == 6)
    assert {d["tag"]: d["value"] for d in gw.hot.latest("BR01")}["ph"] == pytest.approx(7.1)
    # a DDATA with an alias the host has no birth certificate for: refused, rebirth asked
    births = edge.births
    p = pb.Payload(timestamp=t0 + 2000, seq=(edge._seq + 1) % 256)
    p.metrics.add(alias=9999, timestamp=t0 + 2000, datatype=DOUBLE, double_value=1.0)
    edge._seq = (edge._seq + 1) % 256
    edge.publish_raw("DDATA", "BR01", p)
    wait_for(lambda: edge.births == births + 1, what="rebirth answered")
    assert host.rebirths_requested == 1 and host.stats.rejected["unknown_tag"] == 1
    edge.publish("BR01", t0 + 3000, {"ph": 7.2})
    wait_for(lambda: {d["tag"]: d["value"] for d in gw.hot.latest("BR01")}["ph"] == 7.2)


def test_duplicate_and_out_of_order_messages(rig: tuple[SparkplugEdgeNode, SparkplugHost]) -> None:
    edge, host = rig
    gw = host.gw
    t0 = _ms() - 5000
    al = edge._aliases["BR01"]

    def ddata(seq: int, ts: int, ph: float) -> pb.Payload:
        p = pb.Payload(timestamp=ts, seq=seq)
        p.metrics.add(alias=al["ph"], timestamp=ts, datatype=DOUBLE, double_value=ph)
        return p

    s0 = edge._seq
    first = ddata((s0 + 1) % 256, t0 + 2000, 7.0)
    edge.publish_raw("DDATA", "BR01", first)
    edge.publish_raw("DDATA", "BR01", first)  # the same message again (redelivery)
    edge.publish_raw("DDATA", "BR01", ddata((s0 + 3) % 256, t0 + 3000, 7.1))  # seq skips one
    edge.publish_raw("DDATA", "BR01", ddata((s0 + 2) % 256, t0 + 1000, 6.9))  # late, older
    wait_for(lambda: gw.sources["mqtt1"].readings_in == 4)
    st = gw.sources["mqtt1"]
    assert st.accepted == 2
    assert st.rejected["duplicate"] == 1 and st.rejected["out_of_order"] == 1
    assert st.gaps == 2  # the skip, and the late message
    assert gw.hot.window("BR01", "ph", 60)["value"] == [7.0, 7.1]


def test_nan_and_null_payload_values_are_bad_quality(
    rig: tuple[SparkplugEdgeNode, SparkplugHost],
) -> None:
    edge, host = rig
    gw = host.gw
    t0 = _ms() - 5000
    edge.publish(
        "BR01", t0, {"TT101": float("nan"), "ph": float("inf"), "dissolved_oxygen_pct": 40.0}
    )
    al = edge._aliases["BR01"]
    p = pb.Payload(timestamp=t0 + 1000, seq=(edge._seq + 1) % 256)
    p.metrics.add(alias=al["ph"], timestamp=t0 + 1000, datatype=DOUBLE, is_null=True)
    p.metrics.add(
        alias=al["dissolved_oxygen_pct"], timestamp=t0 + 1000, datatype=12, string_value="n/a"
    )
    edge._seq = (edge._seq + 1) % 256
    edge.publish_raw("DDATA", "BR01", p)
    wait_for(lambda: gw.sources["mqtt1"].accepted == 5)
    assert gw.sources["mqtt1"].bad_values == 4
    q = {d["tag"]: (d["value"], d["quality"]) for d in gw.hot.latest("BR01")}
    assert q == {
        "temperature_c": (None, "bad"),
        "ph": (None, "bad"),
        "dissolved_oxygen_pct": (None, "bad"),
    }


def test_broker_restart_mid_stream(
    rig: tuple[SparkplugEdgeNode, SparkplugHost], mosquitto: Mosquitto
) -> None:
    edge, host = rig
    gw = host.gw
    t0 = _ms() - 30_000
    edge.publish("BR01", t0, {"ph": 7.0}, "BR01-B1")
    wait_for(lambda: gw.sources["mqtt1"].accepted == 1)
    births = edge.births
    mosquitto.stop()
    wait_for(lambda: not host.stats.connected, what="host to notice the broker is gone")
    mosquitto.start()
    # both sides reconnect by themselves (backoff 1-30 s); the edge node births again
    wait_for(lambda: host.stats.connected and edge.births > births, timeout=60, what="reconnect")
    edge.publish("BR01", t0 + 20_000, {"ph": 7.3})
    wait_for(lambda: gw.hot.window("BR01", "ph", 120)["value"][-1:] == [7.3], timeout=30)
    # the broker may have delivered the node's NDEATH (will) while shutting down, and the
    # new births may have come before the host re-subscribed: data from a dead node makes
    # the host ask for a rebirth
    wait_for(lambda: host.devices[("twin", "BR01")].alive, what="device alive again")
    assert host.stats.reconnects >= 1


def test_a_message_that_breaks_handling_does_not_stop_the_subscriber(
    rig: tuple[SparkplugEdgeNode, SparkplugHost],
) -> None:
    edge, host = rig
    gw = host.gw
    t0 = _ms() - 5000
    al = edge._aliases["BR01"]
    p = pb.Payload(timestamp=t0, seq=(edge._seq + 1) % 256)
    m = p.metrics.add(alias=al["ph"], timestamp=t0, datatype=DOUBLE, double_value=7.0)
    m.properties.keys.append("Quality")
    m.properties.values.add(type=12, string_value="not a code")  # int() of it raises
    edge._seq = (edge._seq + 1) % 256
    edge.publish_raw("DDATA", "BR01", p)
    wait_for(lambda: "not a code" in host.stats.last_error, what="error recorded")
    edge.publish("BR01", t0 + 1000, {"ph": 7.05})  # the network thread is still alive
    wait_for(lambda: gw.hot.window("BR01", "ph", 60)["value"][-1:] == [7.05])


def test_birth_certificates_survive_a_restart_through_the_journal(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Each DBIRTH and batch change is appended to a journal (not a rewrite of every device's
    certificate: that was O(devices^2) per node birth); a new host reads snapshot + journal,
    ignores a torn final line and compacts."""
    s = MqttSettings(port=mosquitto.port)
    state = tmp_path / "sparkplug-mqtt1.json"
    gw = Gateway("SITE01", MemoryHotStore())
    host = SparkplugHost(gw, "mqtt1", SourceMap("mqtt1"), s, group="SITE01", state_path=state)
    host.start()
    devices = {f"BR{i:02d}": METRICS[1:] for i in range(1, 41)}
    edge = SparkplugEdgeNode(s, "SITE01", "twin", devices)
    edge.start()
    wait_for(lambda: len(host.devices) == 40, what="40 DBIRTHs")
    edge.publish("BR07", _ms(), {"ph": 7.1, "dissolved_oxygen_pct": 41.0}, batch_id="BR07-B0002")
    wait_for(lambda: host.devices[("twin", "BR07")].batch_id == "BR07-B0002", what="batch")
    edge.stop()
    host.stop()
    journal = state.with_name(state.name + ".journal")
    lines = journal.read_bytes().splitlines()
    assert len(lines) == 41  # 40 births + 1 batch change, appended; the snapshot untouched
    with open(journal, "ab") as f:
        f.write(b'{"node":"twin","device":"BR0')  # crash mid-append: never acknowledged
    again = SparkplugHost(gw, "mqtt1", SourceMap("mqtt1"), s, group="SITE01", state_path=state)
    assert len(again.devices) == 40
    br07 = again.devices[("twin", "BR07")]
    assert br07.batch_id == "BR07-B0002"
    assert set(br07.aliases.values()) == {"batch_id", "ph", "dissolved_oxygen_pct"}
    assert br07.units["ph"] == "pH"
    assert journal.read_bytes() == b""  # compacted into the snapshot on start
    again.stop()
