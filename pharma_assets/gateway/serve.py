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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from ..twin.config import CANONICAL_TAGS, PlantConfig, RecipeBook
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
) -> int:
    """Serve the live plant until Ctrl-C (or ``steps`` steps); returns steps served."""
    bad = sorted(set(protocols) - {"opcua", "mqtt", "modbus"})
    if bad or not protocols:
        raise ValueError(f"--serve takes opcua, mqtt and/or modbus, got {protocols}")
    feed = LiveFeed(plant, recipes, landing, seed, period_s)
    site = plant.site.site_id
    tag_nodes = [TagNode(t.tag, t.uom, t.equipment) for t in plant.tags]
    return asyncio.run(
        _serve(
            feed,
            site,
            tag_nodes,
            protocols,
            speed,
            period_s,
            opcua_endpoint,
            mqtt or MqttSettings(),
            steps,
            on_step,
            modbus_address,
        )
    )


async def _serve(
    feed: LiveFeed,
    site: str,
    tag_nodes: list[TagNode],
    protocols: list[str],
    speed: float,
    period_s: float,
    endpoint: str,
    mqtt: MqttSettings,
    steps: int | None,
    on_step: Callable[[list[StepOutput]], None] | None,
    modbus_address: tuple[str, int],
) -> int:
    server = edge = mb = None
    utility: set[str] = set()
    if "modbus" in protocols:
        rm = twin_register_map([t.tag for t in tag_nodes])
        utility = {r.name for r in rm.registers}
        devices = {u: i + 1 for i, u in enumerate(feed.units)}
        mb = ModbusTwinServer(modbus_address[0], modbus_address[1], devices, rm)
        await mb.start()
        log.info("Modbus TCP server at %s:%s, device ids %s", *modbus_address, devices)
        tag_nodes = [t for t in tag_nodes if t.tag not in utility]
    if "opcua" in protocols:
        areas = {a.area_id: [u.unit_id for u in a.units] for a in feed.plant.areas}
        server = TwinOpcuaServer(endpoint, site, areas, tag_nodes)
        await server.start()
        log.info("OPC UA server at %s", endpoint)
    if "mqtt" in protocols:
        metrics = [MetricDef(t.tag, t.uom) for t in tag_nodes]
        edge = SparkplugEdgeNode(mqtt, site, "twin", dict.fromkeys(feed.units, metrics))
        edge.start()
        log.info("Sparkplug B edge node spBv1.0/%s/+/twin on %s:%s", site, mqtt.host, mqtt.port)
    wall0, sim0 = time.monotonic(), datetime.now(UTC)
    n = 0
    try:
        while steps is None or n < steps:
            now = sim0 + timedelta(seconds=n * period_s)
            outs = feed.step(now)
            for o in outs:
                if not o.values:
                    continue
                if mb is not None:
                    mb.set(o.unit_id, {t: v for t, v in o.values.items() if t in utility})
                vals = {t: v for t, v in o.values.items() if t not in utility}
                if server is not None:
                    await server.write(o.unit_id, o.ts, vals, o.quality, o.batch_id)
                if edge is not None:
                    edge.publish(
                        o.unit_id,
                        int(o.ts.timestamp() * 1000),
                        vals,
                        o.batch_id,
                        {t: (192, 64, 0)[q] for t, q in o.quality.items() if t in vals},
                    )
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
        if server is not None:
            await server.stop()
        if mb is not None:
            await mb.stop()
    return n


__all__ = ["LiveFeed", "StepOutput", "serve_live"]
