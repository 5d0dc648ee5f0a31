"""OPC UA through a real asyncua server on 127.0.0.1: twin server -> gateway client."""

from __future__ import annotations

import asyncio
import socket
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


def test_republish_of_a_message_no_longer_held_is_refused_per_spec() -> None:
    """Part 4, 5.13.6: Bad_MessageNotAvailable, not an empty message with status Good."""

    async def main() -> None:
        port = free_port()
        srv = _server(port)
        await srv.start()
        try:
            async with Client(f"opc.tcp://127.0.0.1:{port}/twin") as c:
                sub = await c.create_subscription(100, None)
                with pytest.raises(ua.uaerrors.BadMessageNotAvailable):
                    await c.uaclient.session.republish(sub.subscription_id, 10_000)
                with pytest.raises(ua.uaerrors.BadSubscriptionIdInvalid):
                    await c.uaclient.session.republish(sub.subscription_id + 999, 1)
        finally:
            await srv.stop()

    asyncio.run(main())


@pytest.mark.parametrize("server_kind", ["twin", "asyncua_as_shipped"])
def test_dropped_socket_reconnects_without_a_republish_storm(
    tmp_path: Path, server_kind: str
) -> None:
    """After a reconnect the client reactivates its session and republishes the gap until
    the server says Bad_MessageNotAvailable; asyncua 2.1's server never says it, and the
    endless requests starved the twin's serving loop (the live --serve hang). The twin's
    server answers per spec; the gateway's client also ends the loop against a server that
    answers like asyncua as shipped (any other message than the one asked for)."""
    from asyncua.server.subscription_service import SubscriptionService

    async def main() -> None:
        port = free_port()
        srv = _server(port)
        await srv.start()
        svc = srv.server.iserver.subscription_service
        answer = (
            svc.republish
            if server_kind == "twin"
            else (lambda p: SubscriptionService.republish(svc, p))  # the unpatched answer
        )
        asked: list[int] = []

        def counting(params: ua.RepublishParameters) -> ua.NotificationMessage:
            asked.append(params.RetransmitSequenceNumber)
            return answer(params)

        svc.republish = counting
        gw = Gateway("SITE01", MemoryHotStore(), reject_log=None)
        src = OpcuaSource(
            gw, "opc1", SourceMap("opc1"), f"opc.tcp://127.0.0.1:{port}/twin", "SITE01"
        )
        task = asyncio.create_task(src.run())
        try:
            await _until(lambda: src.stats.connected, what="subscription")
            t0 = datetime.now(UTC) - timedelta(seconds=60)
            await srv.write("BR01", t0, {"ph": 7.0})
            await _until(lambda: gw.hot.window("BR01", "ph", 120)["value"][-1:] == [7.0])
            assert src.client is not None and src.client.uaclient.protocol is not None
            src.client.uaclient.protocol.transport.abort()  # the socket drops, the server lives
            await _until(lambda: src.stats.reconnects >= 1, what="loss detected")
            for k in range(1, 30):  # data flows again through the reactivated session
                await srv.write("BR01", t0 + timedelta(seconds=k), {"ph": 7.0 + k / 100})
                await asyncio.sleep(0.1)
                if gw.hot.window("BR01", "ph", 120)["value"][-1:] == [7.0 + k / 100]:
                    break
            else:
                raise AssertionError("no data after the reconnect")
            await asyncio.sleep(2.0)  # a storm would be thousands of requests by now
            assert 1 <= len(asked) <= 5, f"{len(asked)} republish requests after one reconnect"
        finally:
            src._stop.set()
            await task
            await srv.stop()

    asyncio.run(main())


class _ClientBackAtOnce(list):  # type: ignore[type-arg]
    """The server's list of open connections. While the server closes them, a client
    connects again at once, as an auto-reconnecting client does."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port, self.held = port, list[socket.socket]()

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from list(super().__iter__())
        if not self.held:
            self.held.append(socket.create_connection(("127.0.0.1", self.port), 5))


def test_stop_ends_when_a_client_reconnects_while_stopping() -> None:
    """asyncua's stop waited for ever on a connection made while it was stopping (the
    other half of the live --serve hang: the gateway had reconnected in between)."""

    async def main() -> None:
        port = free_port()
        srv = _server(port)
        await srv.start()
        srv.server.iserver.asyncio_transports = back = _ClientBackAtOnce(port)
        try:
            await asyncio.wait_for(srv.stop(), 30)
        finally:
            for s in back.held:
                s.close()
        assert back.held, "the test's client did not reconnect during the stop"

    asyncio.run(main())
