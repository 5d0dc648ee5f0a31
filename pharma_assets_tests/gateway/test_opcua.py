"""OPC UA through a real asyncua server on 127.0.0.1: twin server -> gateway client."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import Client, ua

from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.gateway.protocols.opcua import OpcuaSource, TagNode, TwinOpcuaServer
from pharma_assets.gateway.records import BAD, UNCERTAIN

from .brokers import free_port

TAGS = [
    TagNode("temperature_c", "degC", "TT"),
    TagNode("ph", "pH", "PH"),
    TagNode("agitation_rpm", "rpm", "AGT"),
]


async def _until(cond, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _server(port: int) -> TwinOpcuaServer:
    return TwinOpcuaServer(
        f"opc.tcp://127.0.0.1:{port}/twin", "SITE01", {"USP": ["BR01", "BR02"]}, TAGS
    )


def test_address_space_units_and_quality_reach_the_gateway(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        srv = _server(port)
        await srv.start()
        gw = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")
        src = OpcuaSource(
            gw, "opc1", SourceMap("opc1"), f"opc.tcp://127.0.0.1:{port}/twin", "SITE01"
        )
        task = asyncio.create_task(src.run())
        try:
            # the address space a third-party client sees: folders, EU and EURange
            async with Client(f"opc.tcp://127.0.0.1:{port}/twin") as c:
                idx = await c.get_namespace_index("urn:pharma-twin:SITE01")
                v = await c.nodes.objects.get_child(
                    [
                        f"{idx}:SITE01",
                        f"{idx}:USP",
                        f"{idx}:BR01",
                        f"{idx}:BR01-TT",
                        f"{idx}:temperature_c",
                    ]
                )
                eu = await (await v.get_child(f"{idx}:EngineeringUnits")).read_value()
                rng = await (await v.get_child(f"{idx}:EURange")).read_value()
                assert eu.DisplayName.Text == "degC" and (rng.Low, rng.High) == (0.0, 150.0)
            await _until(lambda: src.stats.connected, what="subscription")
            t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
            for k in range(5):
                await srv.write(
                    "BR01",
                    t0 + timedelta(seconds=k),
                    {"temperature_c": 36.5 + k / 10, "ph": 7.0 + k / 100, "agitation_rpm": 120.0},
                    batch_id="BR01-B0007",
                )
                await asyncio.sleep(0.15)
            await srv.write("BR02", t0, {"ph": 6.9}, quality={"ph": UNCERTAIN})
            await srv.write(
                "BR02",
                t0 + timedelta(seconds=1),
                {"temperature_c": 37.0},
                quality={"temperature_c": BAD},
            )
            await _until(
                lambda: len(gw.hot.window("BR01", "temperature_c", 60)["ts_us"]) == 5,
                what="5 values",
            )
            await _until(lambda: len(gw.hot.latest("BR02")) == 2, what="BR02")
            w = gw.hot.window("BR01", "temperature_c", 60)
            assert w["ts_us"][0] == int(t0.timestamp() * 1e6)  # source time, not receive time
            assert w["value"][-1] == pytest.approx(36.9)
            q = {d["tag"]: d["quality"] for d in gw.hot.latest("BR02")}
            assert q == {"ph": "uncertain", "temperature_c": "bad"}
            assert src.batch["BR01"] == "BR01-B0007" and src.batch["BR02"] is None
        finally:
            src._stop.set()
            await task
            await srv.stop()

    asyncio.run(main())


def test_server_restart_reconnects_and_resubscribes(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        srv = _server(port)
        await srv.start()
        gw = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")
        src = OpcuaSource(
            gw,
            "opc1",
            SourceMap("opc1"),
            f"opc.tcp://127.0.0.1:{port}/twin",
            "SITE01",
            watchdog_s=1.0,
            reconnect_max_delay_s=2.0,
        )
        task = asyncio.create_task(src.run())
        try:
            await _until(lambda: src.stats.connected)
            t0 = datetime.now(UTC) - timedelta(seconds=30)
            await srv.write("BR01", t0, {"ph": 7.0})
            await _until(lambda: gw.hot.window("BR01", "ph", 60)["value"][-1:] == [7.0])
            await srv.stop()
            await _until(lambda: not src.stats.connected, what="loss detected")
            srv = _server(port)
            await srv.start()
            await _until(lambda: src.stats.connected, timeout=60, what="reconnected")

            async def arrived() -> bool:
                await srv.write("BR01", datetime.now(UTC), {"ph": 7.2})
                return gw.hot.window("BR01", "ph", 60)["value"][-1:] == [7.2]

            deadline = time.monotonic() + 60
            while not await arrived():
                assert time.monotonic() < deadline, "no data after the server restart"
                await asyncio.sleep(0.5)
            assert src.stats.reconnects >= 1
        finally:
            src._stop.set()
            await task
            await srv.stop()

    asyncio.run(main())


def test_unknown_node_name_is_refused_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        srv = TwinOpcuaServer(
            f"opc.tcp://127.0.0.1:{port}/twin",
            "SITE01",
            {"USP": ["BR01"]},
            [TagNode("ph", "pH", "PH")],
        )
        await srv.start()
        # a node the tag map does not know, added by the plant's integrator
        unit = srv.server.get_node(ua.NodeId("SITE01.USP.BR01", srv.idx))
        extra = await unit.add_variable(
            ua.NodeId("SITE01.USP.BR01.FIC_999", srv.idx), f"{srv.idx}:FIC_999", 1.0
        )
        gw = Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")
        src = OpcuaSource(
            gw, "opc1", SourceMap("opc1"), f"opc.tcp://127.0.0.1:{port}/twin", "SITE01"
        )
        task = asyncio.create_task(src.run())
        try:
            await _until(lambda: src.stats.connected)
            await extra.write_value(
                ua.DataValue(
                    ua.Variant(2.0, ua.VariantType.Double), SourceTimestamp=datetime.now(UTC)
                )
            )
            await _until(lambda: src.stats.rejected["unknown_tag"] >= 1, what="unknown tag counted")
            assert "FIC_999" in (tmp_path / "rejected.jsonl").read_text()
        finally:
            src._stop.set()
            await task
            await srv.stop()

    asyncio.run(main())
