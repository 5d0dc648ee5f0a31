"""``pharma-twin live --serve opcua|mqtt|modbus``: the twin's plant as live device endpoints.

Each unit runs its planned batches on the wall clock (``speed`` x real time, 1 = real
time), one simulator step per ``period_s`` (1 s: 1 Hz CPPs), and every step's tag values
are served over the plant's protocols instead of being written as telemetry files: an
OPC UA server (``opc.tcp://host:port/twin``, ISA-88 address space) and/or a Sparkplug B
edge node on an MQTT broker, and the pumps' and agitator drives' health tags over Modbus
TCP (``twin_register_map``; then not over the other protocols). The gateway (``pharma-twin gateway``) lands the telemetry.
MES events (batch start, phase changes, end) are still written to the landing zone as
files, as a real MES exports them; LIMS results are not produced in this mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..twin.config import CANONICAL_TAGS, PROTOCOLS, PlantConfig, RecipeBook
from ..twin.engine import Engine
from ..twin.history import mes_events
from ..twin.landing import chunk_path, quality_codes, write_jsonl
from ..twin.live import next_sequence
from ..twin.outputs import telemetry_signals
from ..twin.plant import BatchPlan, plan_history
from .protocols.modbus import ModbusTwinServer, RegisterMap
from .protocols.mqtt_common import MqttSettings
from .protocols.opcua import TagNode, TwinOpcuaServer
from .protocols.sparkplug import MetricDef, SparkplugEdgeNode

log = logging.getLogger(__name__)

# Equipment-health tags of the pumps and agitator drives: served over Modbus (as a skid's
# PLC would) when ``modbus`` is among the protocols, else with the other tags.
UTILITY_TAGS = (
    "agitator_vibration_mm_s",
    "agitator_bearing_temp_c",
    "agitator_motor_current_a",
    "feed_pump_current_a",
    "agitator_bearing_defect_ge",
    "agitator_winding_temp_c",
    "agitator_current_imbalance_pct",
    "feed_pump_bearing_defect_ge",
    "feed_pump_winding_temp_c",
    "feed_pump_current_imbalance_pct",
)


def twin_register_map(tags: list[str]) -> RegisterMap:
    """The twin's Modbus register map: each utility tag a float32 (2 words), big word
    order, from address 0 (docs/examples/modbus_register_map.yaml is this map)."""
    regs = [
        {"name": t, "address": 2 * i, "type": "float32", "uom": u}
        for i, (t, u) in enumerate((t, CANONICAL_TAGS[t]) for t in UTILITY_TAGS if t in tags)
    ]
    return RegisterMap.model_validate({"word_order": "big", "registers": regs})


@dataclass
class _Unit:
    queue: list[BatchPlan]
    plan: BatchPlan | None = None
    engine: Engine | None = None
    rng: np.random.Generator | None = None
    k: int = 0
    events_written: int = 0
    history: list[str] = field(default_factory=list)


@dataclass
class StepOutput:
    unit_id: str
    batch_id: str  # "" while idle
    ts: datetime
    values: dict[str, float]
    quality: dict[str, int]


class LiveFeed:
    """The plant stepping one ``period_s`` at a time; ``step(now)`` returns each unit's
    values (idle units report their last values with an empty batch id)."""

    def __init__(
        self,
        plant: PlantConfig,
        recipes: RecipeBook,
        landing: Path,
        seed: int = 7,
        period_s: float = 1.0,
        batches_per_unit: int = 20,
        start: datetime | None = None,
    ) -> None:
        self.plant, self.landing, self.seed = plant, Path(landing), seed
        self.dt_h = period_s / 3600.0
        self.tags = [t.tag for t in plant.tags]
        t0 = (start or datetime.now(UTC)).replace(microsecond=0)
        self.units: dict[str, _Unit] = {}
        for ui, unit in enumerate(plant.units):
            one = plant.with_units(len(plant.units)).model_copy(
                update={"areas": [plant.areas[0].model_copy(update={"units": [unit]})]}
            )
            first = next_sequence(self.landing, unit.unit_id)
            p = plan_history(
                one,
                recipes,
                batches_per_unit,
                seed=seed * 100 + ui,
                start=t0 + timedelta(seconds=5 * ui),
            )
            for b in p.batches:  # continue after the batches already landed
                b.seq = first + b.seq - 1
                b.batch_id = f"{unit.unit_id}-B{b.seq:04d}"
                b.lots["inoculum_lot"] = f"INO-{b.batch_id}"
            self.units[unit.unit_id] = _Unit(queue=p.batches)
        self.last: dict[str, dict[str, float]] = {u: {} for u in self.units}

    def _emit_events(self, u: _Unit, upto: datetime) -> None:
        assert u.plan is not None
        due = [e for e in mes_events(u.plan) if e["event_ts"] <= upto]
        new = due[u.events_written :]
        if new:
            write_jsonl(
                chunk_path(
                    self.landing,
                    "mes",
                    u.plan.unit_id,
                    u.plan.batch_id,
                    new[0]["event_ts"],
                    u.events_written + 1,
                    "jsonl",
                ),
                new,
            )
            u.events_written = len(due)

    def step(self, now: datetime) -> list[StepOutput]:
        out = []
        for uid, u in self.units.items():
            if u.plan is None and u.queue and u.queue[0].start <= now:
                b = u.queue.pop(0)
                u.plan, u.k, u.events_written = b, 0, 0
                u.engine = Engine(b.engine_inputs(), dt_h=self.dt_h, seed=self.seed + b.seq)
                u.rng = np.random.default_rng([self.seed, b.seq])
                log.info("started %s on %s", b.batch_id, uid)
            if u.plan is None or u.engine is None or u.rng is None:
                out.append(StepOutput(uid, "", now, {}, {}))
                continue
            rec = u.engine.run(1)
            sig = telemetry_signals(rec, u.engine.inputs, self.dt_h, u.k, u.rng)
            vals = {t: float(sig[t][0, 0]) for t in self.tags}
            q = quality_codes(u.rng, (len(self.tags),))
            out.append(
                StepOutput(
                    uid,
                    u.plan.batch_id,
                    now,
                    vals,
                    {t: int(c) for t, c in zip(self.tags, q, strict=True)},
                )
            )
            self.last[uid] = vals
            u.k += 1
            self._emit_events(u, now)
            if u.k * self.dt_h >= u.plan.end_h:
                self._emit_events(u, u.plan.end + timedelta(seconds=1))
                u.plan, u.engine = None, None
        return out


def twin_unit_register_map(tags: list[str]) -> RegisterMap:
    """The register map of a unit served wholly over Modbus (``protocol: modbus`` in the
    plant YAML): every tag a float32 (2 words), big word order, from address 0."""
    regs = [
        {"name": t, "address": 2 * i, "type": "float32", "uom": CANONICAL_TAGS[t]}
        for i, t in enumerate(tags)
    ]
    return RegisterMap.model_validate({"word_order": "big", "registers": regs})


def shard_endpoint(endpoint: str, i: int) -> str:
    """The endpoint of OPC UA shard ``i``: the base endpoint's port + i."""
    head, _, rest = endpoint.removeprefix("opc.tcp://").partition("/")
    host, _, port = head.rpartition(":")
    return f"opc.tcp://{host}:{int(port) + i}/{rest}"


@dataclass(frozen=True)
class ServePlan:
    """Which unit is served over which protocol, and with which tags.

    A unit with a ``protocol`` in the plant YAML (its own or its area's) is served over
    that protocol only, with all its tags (a ``modbus`` unit is a Modbus device with
    ``twin_unit_register_map``). A unit without one is served over every protocol
    ``--serve`` names; when that includes ``modbus`` its pump and agitator-drive health
    tags go over Modbus (``twin_register_map``) and not over the others.
    OPC UA units are split into shards of ``opcua_shard_size`` units, one server each on
    consecutive ports (``shard_endpoint``); None: one server.
    """

    protocols: tuple[str, ...]
    unit_protocols: dict[str, tuple[str, ...]]  # unit -> protocols it is served over
    tags: dict[tuple[str, str], list[str]]  # (unit, protocol) -> tags
    opcua_shards: list[list[str]]
    modbus_devices: dict[str, int]  # unit -> device id
    modbus_maps: dict[str, RegisterMap]  # unit -> its register map

    def units_over(self, proto: str) -> list[str]:
        return [u for u, ps in self.unit_protocols.items() if proto in ps]


def plan_serving(
    plant: PlantConfig, protocols: list[str], opcua_shard_size: int | None = None
) -> ServePlan:
    """The ``ServePlan`` of ``plant`` for the protocols ``--serve`` names (ValueError, one
    line, when the plant YAML asks for one it does not name)."""
    bad = sorted(set(protocols) - set(PROTOCOLS))
    if bad or not protocols:
        raise ValueError(f"--serve takes opcua, mqtt and/or modbus, got {protocols}")
    if opcua_shard_size is not None and opcua_shard_size < 1:
        raise ValueError(f"--opcua-shard-size must be at least 1, got {opcua_shard_size}")
    tags = [t.tag for t in plant.tags]
    utility = [t for t in tags if t in UTILITY_TAGS] if "modbus" in protocols else []
    unit_protocols: dict[str, tuple[str, ...]] = {}
    unit_tags: dict[tuple[str, str], list[str]] = {}
    maps: dict[str, RegisterMap] = {}
    for u in plant.units:
        p = plant.protocol_of(u.unit_id)
        if p is not None and p not in protocols:
            raise ValueError(
                f"unit {u.unit_id} is served over {p} (plant YAML) but --serve names only "
                f"{', '.join(protocols)}"
            )
        if p is not None:
            unit_protocols[u.unit_id] = (p,)
            unit_tags[(u.unit_id, p)] = tags
            if p == "modbus":
                maps[u.unit_id] = twin_unit_register_map(tags)
            continue
        ps = tuple(x for x in PROTOCOLS if x in protocols)
        unit_protocols[u.unit_id] = ps
        for x in ps:
            unit_tags[(u.unit_id, x)] = (
                utility if x == "modbus" else [t for t in tags if t not in utility]
            )
        if "modbus" in ps:
            maps[u.unit_id] = twin_register_map(tags)
    opc = [u for u, ps in unit_protocols.items() if "opcua" in ps]
    size = opcua_shard_size or max(len(opc), 1)
    modbus_units = [u for u, ps in unit_protocols.items() if "modbus" in ps]
    return ServePlan(
        tuple(protocols),
        unit_protocols,
        unit_tags,
        [opc[i : i + size] for i in range(0, len(opc), size)],
        {u: i + 1 for i, u in enumerate(modbus_units)},
        maps,
    )


def serve_live(
    plant: PlantConfig,
    recipes: RecipeBook,
    landing: Path,
    protocols: list[str],
    seed: int = 7,
    speed: float = 1.0,
    period_s: float = 1.0,
    opcua_endpoint: str = "opc.tcp://127.0.0.1:4840/twin",
    mqtt: MqttSettings | None = None,
    steps: int | None = None,
    on_step: Callable[[list[StepOutput]], None] | None = None,
    modbus_address: tuple[str, int] = ("127.0.0.1", 5020),
    opcua_shard_size: int | None = None,
    shard_processes: bool | None = None,
) -> int:
    """Serve the live plant until Ctrl-C (or ``steps`` steps); returns steps served.
    Which unit goes over which protocol: ``plan_serving``. ``shard_processes`` (default:
    when ``opcua_shard_size`` is given) runs each OPC UA shard's server in its own process
    (``ShardProcess``), fed each step by this one."""
    plan = plan_serving(plant, protocols, opcua_shard_size)
    feed = LiveFeed(plant, recipes, landing, seed, period_s)
    return asyncio.run(
        _serve(
            feed,
            plan,
            speed,
            period_s,
            opcua_endpoint,
            mqtt or MqttSettings(),
            steps,
            on_step,
            modbus_address,
            opcua_shard_size is not None if shard_processes is None else shard_processes,
        )
    )


async def _serve(
    feed: LiveFeed,
    plan: ServePlan,
    speed: float,
    period_s: float,
    endpoint: str,
    mqtt: MqttSettings,
    steps: int | None,
    on_step: Callable[[list[StepOutput]], None] | None,
    modbus_address: tuple[str, int],
    shard_processes: bool = False,
) -> int:
    plant = feed.plant
    site = plant.site.site_id
    node = {t.tag: TagNode(t.tag, t.uom, t.equipment) for t in plant.tags}
    servers: dict[str, TwinOpcuaServer] = {}  # unit -> its shard's server (in this process)
    shards: list[TwinOpcuaServer] = []
    procs: list[ShardProcess] = []
    proc_of: dict[str, int] = {}  # unit -> index in procs
    edge = mb = None
    try:
        if plan.modbus_devices:
            mb = ModbusTwinServer(
                modbus_address[0], modbus_address[1], plan.modbus_devices, plan.modbus_maps
            )
            await mb.start()
            log.info(
                "Modbus TCP server at %s:%s, device ids %s", *modbus_address, plan.modbus_devices
            )
        for i, units in enumerate(plan.opcua_shards):
            areas: dict[str, list[str]] = {}
            for u in units:
                areas.setdefault(plant.area_of(u), []).append(u)
            ep = shard_endpoint(endpoint, i)
            unit_nodes = {u: [node[t] for t in plan.tags[(u, "opcua")]] for u in units}
            if shard_processes:
                procs.append(ShardProcess(ep, site, areas, unit_nodes))
                proc_of.update(dict.fromkeys(units, len(procs) - 1))
                continue
            srv = TwinOpcuaServer(ep, site, areas, unit_nodes)
            shards.append(srv)
            await srv.start()
            servers.update(dict.fromkeys(units, srv))
            log.info("OPC UA server at %s: %s", ep, ", ".join(units))
        for sp in procs:  # start them all, then wait: they build their address spaces at once
            sp.start()
        for sp in procs:
            await sp.ready()
            log.info("OPC UA server at %s (pid %d): %s", sp.endpoint, sp.pid, ", ".join(sp.units))
        mqtt_units = plan.units_over("mqtt")
        if mqtt_units:
            metrics = {
                u: [MetricDef(t, node[t].uom) for t in plan.tags[(u, "mqtt")]] for u in mqtt_units
            }
            edge = SparkplugEdgeNode(mqtt, site, "twin", metrics)
            edge.start()
            log.info(
                "Sparkplug B edge node spBv1.0/%s/+/twin on %s:%s: %s",
                site,
                mqtt.host,
                mqtt.port,
                ", ".join(mqtt_units),
            )
        wall0, sim0 = time.monotonic(), datetime.now(UTC)
        n = 0
        while steps is None or n < steps:
            now = sim0 + timedelta(seconds=n * period_s)
            outs = feed.step(now)
            to_procs: list[list[tuple[object, ...]]] = [[] for _ in procs]
            for o in outs:
                if not o.values:
                    continue
                u = o.unit_id
                if mb is not None and u in plan.modbus_devices:
                    mb.set(u, {t: o.values[t] for t in plan.tags[(u, "modbus")]})
                if u in servers:
                    vals = {t: o.values[t] for t in plan.tags[(u, "opcua")]}
                    await servers[u].write(u, o.ts, vals, o.quality, o.batch_id)
                elif u in proc_of:
                    vals = {t: o.values[t] for t in plan.tags[(u, "opcua")]}
                    to_procs[proc_of[u]].append((u, o.ts, vals, o.quality, o.batch_id))
                if edge is not None and (u, "mqtt") in plan.tags:
                    vals = {t: o.values[t] for t in plan.tags[(u, "mqtt")]}
                    edge.publish(
                        u,
                        int(o.ts.timestamp() * 1000),
                        vals,
                        o.batch_id,
                        {t: (192, 64, 0)[q] for t, q in o.quality.items() if t in vals},
                    )
            for sp, writes in zip(procs, to_procs, strict=True):
                if writes:
                    sp.deliver(writes)  # a dead shard is restarted, its values counted
            if on_step:
                on_step(outs)
            n += 1
            lag = n * period_s / speed - (time.monotonic() - wall0)
            if lag > 0:
                await asyncio.sleep(lag)
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.info("live serving interrupted")
    finally:
        if edge is not None:
            edge.stop()
        for srv in shards:
            await srv.stop()
        for sp in procs:
            sp.stop()
        if mb is not None:
            await mb.stop()
    return n


def _shard_main(
    conn: Connection,
    endpoint: str,
    site: str,
    areas: dict[str, list[str]],
    unit_nodes: dict[str, list[TagNode]],
) -> None:
    """A shard process: one OPC UA server, written with what the parent sends each step
    (a list of ``(unit, ts, values, quality, batch_id)``) until it sends None or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the twin's; it stops us
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shard %(process)d %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)

    async def main() -> None:
        srv = TwinOpcuaServer(endpoint, site, areas, unit_nodes)
        try:
            await srv.start()
        except Exception as e:  # e.g. the port is taken: say so to the parent
            conn.send(("error", f"{type(e).__name__}: {e}"))
            return
        conn.send(("ready",))
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:  # in a thread, so the server keeps serving its clients meanwhile
                    msg = await loop.run_in_executor(None, conn.recv)
                except (EOFError, OSError):
                    break  # the twin went away
                if msg is None:
                    break
                for unit, ts, vals, quality, batch_id in msg:
                    await srv.write(unit, ts, vals, quality, batch_id)
        finally:
            await srv.stop()

    asyncio.run(main())


class ShardProcess:
    """One OPC UA shard's server in its own process (multiprocessing ``spawn``): a single
    pure-Python asyncua server cannot write 10,000 values/s, and shards in one process
    share its one core. The twin's simulator clock feeds it through a pipe, one message
    per step with the shard's units."""

    def __init__(
        self,
        endpoint: str,
        site: str,
        areas: dict[str, list[str]],
        unit_nodes: dict[str, list[TagNode]],
        restart_delay_s: float = 1.0,
        restart_max_delay_s: float = 30.0,
    ) -> None:
        self.endpoint, self.units = endpoint, list(unit_nodes)
        self._args = (endpoint, site, areas, unit_nodes)
        self.proc: Any = None
        self.conn: Connection | None = None
        self.pid = 0
        self.restart_delay_s, self.restart_max_delay_s = restart_delay_s, restart_max_delay_s
        self.restarts = 0  # times the process died and was started again
        self.unserved = 0  # values the twin produced while this shard was not serving
        self.serving = False  # the server listens and takes writes
        self._delay = restart_delay_s
        self._restart_at = 0.0

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_shard_main,
            args=(child, *self._args),
            name=f"opcua-shard-{self.endpoint}",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.conn, self.pid = parent, self.proc.pid

    async def ready(self, timeout_s: float = 300.0) -> None:
        """Wait until the server listens (RuntimeError naming the endpoint if it fails)."""
        assert self.conn is not None
        t0 = time.monotonic()
        while not self.conn.poll(0):
            if not self.proc.is_alive() or time.monotonic() - t0 > timeout_s:
                raise RuntimeError(
                    f"OPC UA shard {self.endpoint} did not start (exit {self.proc.exitcode})"
                )
            await asyncio.sleep(0.1)
        try:
            msg = self.conn.recv()
        except EOFError:
            msg = ("error", f"exit {self.proc.exitcode}")
        if msg[0] != "ready":
            raise RuntimeError(f"OPC UA shard {self.endpoint} did not start: {msg[1]}")
        self.serving = True

    def deliver(self, writes: list[tuple[object, ...]]) -> bool:
        """Send one step's writes if the shard serves; else count them as not served and
        restart a dead shard process (backoff ``restart_delay_s`` doubling to
        ``restart_max_delay_s``; back to the first delay once it serves again). Never
        blocks the twin's clock: the restarted process reports ready through its pipe and
        is polled here on later steps. True when the writes went to the server."""
        if self.serving and self.proc.is_alive():
            try:
                assert self.conn is not None
                self.conn.send(writes)
                return True
            except (OSError, ValueError):
                pass
        self.unserved += sum(len(cast(Sized, w[2])) for w in writes)
        self._revive()
        return False

    def _revive(self) -> None:
        now = time.monotonic()
        if self.serving:  # it just died
            self.serving = False
            self._restart_at = now + self._delay
            log.error(
                "OPC UA shard %s (pid %d) died (exit %s); restarting in %.0f s",
                self.endpoint,
                self.pid,
                self.proc.exitcode,
                self._delay,
            )
            return
        if self.proc.is_alive() and self.conn is not None:  # starting: ready yet?
            if not self.conn.poll(0):
                return
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                msg = ("error", "its pipe closed")
            if msg[0] == "ready":
                self.serving, self._delay = True, self.restart_delay_s
                log.info(
                    "OPC UA shard %s serving again (pid %d, restart %d; %d values not served)",
                    self.endpoint,
                    self.pid,
                    self.restarts,
                    self.unserved,
                )
                return
            log.error("OPC UA shard %s did not start: %s", self.endpoint, msg[1])
            self.proc.kill()
            self.proc.join(5)
            self._restart_at = now + self._delay
            return
        if now < self._restart_at:
            return
        if self.conn is not None:
            self.conn.close()
        self.restarts += 1
        self._delay = min(self._delay * 2, self.restart_max_delay_s)
        self.start()
        self._restart_at = now + self._delay  # if this start fails too

    def send(self, writes: list[tuple[object, ...]]) -> None:
        assert self.conn is not None
        try:
            self.conn.send(writes)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"OPC UA shard {self.endpoint} (pid {self.pid}) died: {e}") from e

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            log.error("OPC UA shard %s did not stop; terminating it", self.endpoint)
            self.proc.terminate()
            self.proc.join(10)
        if self.conn is not None:
            self.conn.close()


def gateway_sources_for(
    plan: ServePlan,
    folder: Path,
    opcua_endpoint: str = "opc.tcp://127.0.0.1:4840/twin",
    mqtt: MqttSettings | None = None,
    modbus_address: tuple[str, int] = ("127.0.0.1", 5020),
    site_id: str = "SITE01",
    publishing_interval_ms: float = 100.0,
) -> list[dict[str, object]]:
    """The gateway's ``sources:`` entries for a twin served as ``plan`` says: an OPC UA
    source per shard, a Sparkplug B source when a unit is on MQTT, a Modbus source per
    register map (the maps are written to ``folder``). A unit served over several
    protocols (no ``protocol`` in the plant YAML) is subscribed over one of them only,
    OPC UA first, so no reading arrives twice; with MQTT that needs every MQTT unit to be
    served over MQTT only or every unit also over OPC UA (else ValueError)."""
    import yaml

    out: list[dict[str, object]] = []
    for i, _units in enumerate(plan.opcua_shards):
        out.append(
            {
                "name": f"twin-opcua-{i}" if len(plan.opcua_shards) > 1 else "twin-opcua",
                "kind": "opcua",
                "url": shard_endpoint(opcua_endpoint, i),
                "site_id": site_id,
                "publishing_interval_ms": publishing_interval_ms,
            }
        )
    mqtt_units = plan.units_over("mqtt")
    on_opc = set(plan.units_over("opcua"))
    if mqtt_units and not set(mqtt_units) <= on_opc:
        twice = sorted(set(mqtt_units) & on_opc)
        if twice:
            raise ValueError(
                f"units {twice} are served over OPC UA and MQTT while others are on MQTT "
                "only: give every unit a protocol in the plant YAML"
            )
        m = mqtt or MqttSettings()
        out.append(
            {
                "name": "twin-mqtt",
                "kind": "mqtt_sparkplug",
                "host": m.host,
                "port": m.port,
                "group_id": site_id,
            }
        )
    by_map: dict[str, dict[str, int]] = {}
    maps: dict[str, RegisterMap] = {}
    for u, d in plan.modbus_devices.items():
        rm = plan.modbus_maps[u]
        key = (
            "modbus_unit_map.yaml"
            if "temperature_c" in {r.name for r in rm.registers}
            else ("modbus_utility_map.yaml")
        )
        by_map.setdefault(key, {})[u] = d
        maps[key] = rm
    folder.mkdir(parents=True, exist_ok=True)
    for key, devices in sorted(by_map.items()):
        (folder / key).write_text(yaml.safe_dump(maps[key].model_dump(), sort_keys=False))
        out.append(
            {
                "name": f"twin-{key.removesuffix('_map.yaml').replace('_', '-')}",
                "kind": "modbus",
                "host": modbus_address[0],
                "port": modbus_address[1],
                "devices": devices,
                "register_map": str(folder / key),
                "poll_interval_s": 1.0,
            }
        )
    return out


__all__ = [
    "LiveFeed",
    "ServePlan",
    "ShardProcess",
    "StepOutput",
    "gateway_sources_for",
    "plan_serving",
    "serve_live",
    "shard_endpoint",
    "twin_register_map",
    "twin_unit_register_map",
]
