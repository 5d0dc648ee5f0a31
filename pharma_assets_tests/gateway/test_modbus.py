"""Modbus TCP through a real pymodbus server on 127.0.0.1: register map, scaling, faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap, TagMapping
from pharma_assets.gateway.protocols.modbus import (
    ModbusSource,
    ModbusTwinServer,
    RegisterMap,
    load_register_map,
)
from pharma_assets.gateway.records import GOOD, now_us
from pharma_assets.twin.config import ConfigError

from .brokers import free_port

MAP = {
    "word_order": "little",
    "registers": [
        {"name": "feed_pump_current_a", "address": 10, "type": "float32", "uom": "A"},
        {"name": "FIC101", "address": 12, "type": "int16", "scale": 0.1, "uom": "L/h"},
        {
            "name": "agitator_motor_current_a",
            "address": 13,
            "type": "uint32",
            "scale": 0.001,
            "uom": "A",
        },
    ],
}


async def _until(cond, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_register_map_validation(tmp_path: Path) -> None:
    bad = {
        "registers": [
            {"name": "a", "address": 0, "type": "float32", "uom": "A"},
            {"name": "b", "address": 1, "type": "int16", "uom": "A"},
        ]
    }
    p = tmp_path / "map.yaml"
    import yaml

    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"register 1 is used by both 'a' and 'b'"):
        load_register_map(p)
    rm = RegisterMap.model_validate(MAP)
    assert (rm.start, rm.count) == (10, 5)
    regs = [0] * rm.count
    for a, w in rm.encode(
        {"feed_pump_current_a": 1.5, "FIC101": 12.3, "agitator_motor_current_a": 70000.001}
    ).items():
        regs[a - rm.start : a - rm.start + len(w)] = w
    got = {n: v for n, v, _ in rm.decode(regs)}
    assert got["feed_pump_current_a"] == 1.5 and got["FIC101"] == pytest.approx(12.3)
    assert got["agitator_motor_current_a"] == pytest.approx(70000.001)  # > 16 bits, 2 words


def test_polling_scaling_mapping_batch_and_exception_responses(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        rm = RegisterMap.model_validate(MAP)
        srv = ModbusTwinServer("127.0.0.1", port, {"BR01": 1, "BR02": 2}, rm)
        await srv.start()
        gw = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")
        # the batch comes from the unit's other source (OPC UA or MQTT in a plant)
        gw.ingest(
            "opc", SourceMap("opc"), "BR01", "BR01-B0009", [("ph", 7.0, None, now_us(), GOOD)]
        )
        smap = SourceMap("mb", {"FIC101": TagMapping(tag="feed_rate_ml_h", from_uom="L/h")})
        src = ModbusSource(
            gw,
            "mb",
            smap,
            "127.0.0.1",
            port,
            {"BR01": 1, "BR02": 2},
            rm,
            poll_interval_s=0.2,
            timeout_s=1.0,
        )
        srv.set(
            "BR01", {"feed_pump_current_a": 1.25, "FIC101": 0.5, "agitator_motor_current_a": 6.2}
        )
        srv.set(
            "BR02", {"feed_pump_current_a": 2.5, "FIC101": 0.1, "agitator_motor_current_a": 5.0}
        )
        task = asyncio.create_task(src.run())
        try:
            await _until(lambda: len(gw.hot.latest("BR02")) == 3, what="BR02 values")
            v = {d["tag"]: d for d in gw.hot.latest("BR01")}
            assert v["feed_pump_current_a"]["value"] == 1.25
            assert v["feed_rate_ml_h"]["value"] == pytest.approx(500.0)  # 0.5 L/h -> mL/h
            assert v["feed_rate_ml_h"]["uom"] == "mL/h"
            assert v["agitator_motor_current_a"]["value"] == pytest.approx(6.2)
            assert gw.batch_of("BR01") == "BR01-B0009" and gw.batch_of("BR02") is None
            # the pump of BR02 answers with an exception (device failure): counted, BR01 goes on
            srv.fail["BR02"] = 4
            gaps = src.stats.gaps
            await _until(lambda: src.stats.gaps >= gaps + 2, what="exception responses counted")
            assert "exception response" in src.stats.last_error
            n1 = len(gw.hot.window("BR01", "feed_pump_current_a", 60)["ts_us"])
            await _until(
                lambda: len(gw.hot.window("BR01", "feed_pump_current_a", 60)["ts_us"]) > n1 + 2
            )
            del srv.fail["BR02"]
            # server gone: disconnect noticed, reconnect when it returns
            await srv.stop()
            await _until(lambda: not src.stats.connected, what="disconnect noticed")
            srv2 = ModbusTwinServer("127.0.0.1", port, {"BR01": 1, "BR02": 2}, rm)
            srv2.set("BR01", {"feed_pump_current_a": 3.0})
            await srv2.start()
            await _until(
                lambda: (
                    gw.hot.latest("BR01")
                    and {d["tag"]: d["value"] for d in gw.hot.latest("BR01")}["feed_pump_current_a"]
                    == 3.0
                ),
                timeout=30,
                what="values after reconnect",
            )
            assert src.stats.reconnects >= 1
            await srv2.stop()
        finally:
            src._stop.set()
            await task

    asyncio.run(main())
