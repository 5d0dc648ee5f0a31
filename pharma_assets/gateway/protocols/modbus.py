"""Modbus TCP (pymodbus 3.16): register-map devices served by the twin, polled by the gateway.

Utility skids and pumps rarely speak OPC UA; they expose holding registers described in a
register map the integrator delivers (YAML, validated on load)::

    word_order: big            # order of the 16-bit words of 32-bit values (big | little)
    registers:
      - {name: feed_pump_current_a, address: 0, type: float32, uom: A}
      - {name: FIC101, address: 2, type: int16, scale: 0.1, uom: "L/h"}   # raw 123 = 12.3 L/h

``value = raw * scale + offset`` in ``uom``; then the gateway's tag map and unit
conversion apply as for every source. Types: int16, uint16, int32, uint32, float32.

* ``ModbusTwinServer``: the twin's devices (one Modbus device id per unit) with the
  ``SimDevice``/``SimData`` API (the ``ModbusDeviceContext`` shims are deprecated); the
  registers are filled from the twin's current values whenever a request reads them.
* ``ModbusSource``: polls every device every ``poll_interval_s`` with one read of the
  map's span, stamps readings with the poll time, counts exception responses and
  timeouts (``SourceStats.gaps``, ``last_error``) and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from ...errors import ConfigError
from ..records import GOOD, now_us

if TYPE_CHECKING:
    from ..core import Gateway
    from ..mapping import SourceMap

log = logging.getLogger(__name__)

_WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_DT = ModbusTcpClient.DATATYPE
_CLIENT_TYPES = {
    "int16": _DT.INT16,
    "uint16": _DT.UINT16,
    "int32": _DT.INT32,
    "uint32": _DT.UINT32,
    "float32": _DT.FLOAT32,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterSpec(_Model):
    name: str = Field(min_length=1)
    address: int = Field(ge=0, lt=65535)
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "float32"
    scale: float = 1.0
    offset: float = 0.0
    uom: str = Field(min_length=1)

    @property
    def words(self) -> int:
        return _WORDS[self.type]


class RegisterMap(_Model):
    word_order: Literal["big", "little"] = "big"
    registers: list[RegisterSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self) -> RegisterMap:
        used: dict[int, str] = {}
        for r in self.registers:
            for a in range(r.address, r.address + r.words):
                if a in used:
                    raise ValueError(f"register {a} is used by both {used[a]!r} and {r.name!r}")
                used[a] = r.name
        return self

    @property
    def start(self) -> int:
        return min(r.address for r in self.registers)

    @property
    def count(self) -> int:
        return max(r.address + r.words for r in self.registers) - self.start

    def encode(self, values: Mapping[str, float]) -> dict[int, list[int]]:
        """Engineering values -> register words by address (for the twin's server)."""
        out = {}
        for r in self.registers:
            if r.name in values:
                raw = (values[r.name] - r.offset) / r.scale
                if r.type != "float32":
                    raw = round(raw)
                words = ModbusTcpClient.convert_to_registers(
                    raw, _CLIENT_TYPES[r.type], word_order=self.word_order
                )
                out[r.address] = list(words)
        return out

    def decode(self, regs: list[int]) -> list[tuple[str, float, str]]:
        """Registers of the whole span -> (name, engineering value, uom)."""
        out = []
        for r in self.registers:
            i = r.address - self.start
            raw = ModbusTcpClient.convert_from_registers(
                regs[i : i + r.words], _CLIENT_TYPES[r.type], word_order=self.word_order
            )
            out.append((r.name, float(raw) * r.scale + r.offset, r.uom))  # type: ignore[arg-type]
        return out


def load_register_map(path: Path) -> RegisterMap:
    """Load and validate a register map YAML; errors name the file and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"register map {p} does not exist")
    try:
        return RegisterMap.model_validate(yaml.safe_load(p.read_text()))
    except (yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"register map {p} is invalid: {e}".replace("\n", " ")) from None


class ModbusTwinServer:
    """Modbus TCP server with one device id per unit, registers as in ``regmap`` (one map
    for every device, or a map per unit)."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: Mapping[str, int],
        regmap: RegisterMap | Mapping[str, RegisterMap],
    ) -> None:
        self.host, self.port = host, port
        self.devices = dict(devices)
        self.maps = {u: regmap[u] if isinstance(regmap, Mapping) else regmap for u in self.devices}
        self.fail: dict[str, int] = {}  # unit -> Modbus exception code to answer (tests, faults)
        self._regs: dict[int, list[int]] = {
            d: [0] * self.maps[u].count for u, d in self.devices.items()
        }
        sims = [
            SimDevice(
                id=d,
                simdata=[
                    SimData(
                        self.maps[u].start,
                        count=self.maps[u].count,
                        values=0,
                        datatype=DataType.REGISTERS,
                    )
                ],
                action=partial(self._action, d),
            )
            for u, d in self.devices.items()
        ]
        self.server = ModbusTcpServer(sims, address=(host, port))
        self._task: asyncio.Task[Any] | None = None

    async def _action(
        self,
        dev: int,
        fc: int,
        start: int,
        address: int,
        count: int,
        current: list[int],
        set_values: Any,
    ) -> Any:
        unit = next(u for u, d in self.devices.items() if d == dev)
        if unit in self.fail:
            from pymodbus.constants import ExcCodes

            return ExcCodes(self.fail[unit])
        current[:] = self._regs[dev]
        return None

    def set(self, unit: str, values: Mapping[str, float]) -> None:
        regs, rm = self._regs[self.devices[unit]], self.maps[unit]
        for addr, words in rm.encode(values).items():
            i = addr - rm.start
            regs[i : i + len(words)] = words

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve_forever())
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                return
            await asyncio.sleep(0.05)
        raise OSError(f"Modbus server on {self.host}:{self.port} did not start")

    async def stop(self) -> None:
        await self.server.shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class ModbusSource:
    """The gateway's Modbus TCP poller for one server (see module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        name: str,
        smap: SourceMap,
        host: str,
        port: int,
        devices: Mapping[str, int],  # unit (or device name) -> Modbus device id
        regmap: RegisterMap,
        poll_interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.gw, self.name, self.smap, self.host, self.port = gateway, name, smap, host, port
        self.devices, self.regmap = dict(devices), regmap
        self.poll_interval_s, self.timeout_s = poll_interval_s, timeout_s
        self.stats = gateway.stats(name, "modbus")
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _poll(self, client: AsyncModbusTcpClient) -> None:
        for unit, dev in self.devices.items():
            rr = await client.read_holding_registers(
                self.regmap.start, count=self.regmap.count, device_id=dev
            )
            ts = now_us()
            if rr.isError():
                self.stats.gaps += 1
                self.stats.last_error = f"device {dev} ({unit}): exception response {rr}"
                log.warning("source %s: %s", self.name, self.stats.last_error)
                continue
            items = [(n, v, u, ts, GOOD) for n, v, u in self.regmap.decode(list(rr.registers))]
            batch = self.gw.batch_of(self.smap.unit(unit), ts)
            self.gw.ingest(self.name, self.smap, unit, batch, items, names_batch=False)

    async def run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            client = AsyncModbusTcpClient(
                self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
            )
            try:
                if not await client.connect():
                    raise ConnectionError(f"cannot connect to {self.host}:{self.port}")
                self.stats.connected, delay = True, 1.0
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    await self._poll(client)
                    wait = self.poll_interval_s - (time.monotonic() - t0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), max(wait, 0.0))
            except (ModbusException, ConnectionError, OSError, TimeoutError) as e:
                if self.stats.connected:
                    self.stats.reconnects += 1
                self.stats.connected = False
                self.stats.last_error = f"{type(e).__name__}: {e}"
                log.warning(
                    "source %s: %s; retry in %.0f s", self.name, self.stats.last_error, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 30.0)
            finally:
                client.close()
        self.stats.connected = False

    def start_in_thread(self) -> None:
        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            self._loop.run_until_complete(self.run())

        self._thread = threading.Thread(target=main, name=f"modbus-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)


__all__ = ["ModbusSource", "ModbusTwinServer", "RegisterMap", "RegisterSpec", "load_register_map"]
