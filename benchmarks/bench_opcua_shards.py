"""Live gateway over OPC UA with the twin's servers sharded per group of units (issue 12),
optionally mixed with MQTT, with the gateway's sources in worker processes.

``shards`` server processes (asyncua, one per group of ``units / shards`` units, 20 Double
tags each, ISA-88 address space as ``live --serve``) write every tag once a second with the
wall clock as source time. With ``--mqtt-units M`` a publisher process also plays M
Sparkplug B devices (one DDATA per unit per second with all 20 tags, spread over the
second) through a private Mosquitto. One gateway (``--role gateway``) subscribes to every
shard (one OPC UA source each, publishing interval 100 ms) and to the MQTT group, and
runs the full ingest path (mapping, checks, disk buffer, in-process hot store, landing
flush every 5 s by its flusher process); fan-out is not in it. ``--workers N`` runs the
OPC UA and MQTT sources in N worker processes (``gateway/workers.py``; 0: all in the
gateway process, as before). Measured: source time -> readable in the hot store
(p50/p99/max), readings written/published vs accepted vs landed, the gateway's CPU (its
process, and with its worker and flusher processes) and peak RSS (all of them), load
average.

    python -m benchmarks.bench_opcua_shards --units 500 --shards 10 --seconds 300 --workers 2
    python -m benchmarks.bench_opcua_shards --units 250 --shards 5 --mqtt-units 250 \
        --seconds 300 --workers 2                                      # mixed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .bench_gateway import SLICES, _one_cpu_s, _proc_cpu_s, _proc_hwm_mb, _start_broker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shard_role(
    port: int, first: int, count: int, folder: Path, idx: int, burst: bool = False
) -> None:
    from pharma_assets.gateway.protocols.opcua import TagNode, TwinOpcuaServer
    from pharma_assets.process import CANONICAL_TAGS

    tags = [TagNode(t, u, "bioreactor") for t, u in list(CANONICAL_TAGS.items())[:20]]
    units = [f"U{u:04d}" for u in range(first, first + count)]

    async def main() -> None:
        srv = TwinOpcuaServer(f"opc.tcp://127.0.0.1:{port}/twin", "BENCH", {"A1": units}, tags)
        await srv.start()
        if not hasattr(srv, "write_units"):  # the server before 2026-12-04 (for before/after)

            async def write_units(ts: Any, values: Any, batch_ids: Any = None) -> None:
                for u, vals in values.items():
                    await srv.write(u, ts, vals, batch_id=(batch_ids or {}).get(u))

            srv.write_units = write_units  # type: ignore[method-assign]

        rng = np.random.default_rng(idx)
        now = datetime.now(UTC)
        await srv.write_units(
            now,
            {u: {t.tag: 50.0 for t in tags} for u in units},
            batch_ids={u: f"{u}-B0001" for u in units},
        )
        (folder / f"shard{idx}.ready").write_text("1")
        # spread: each unit at its own phase of the second (SLICES groups, as the MQTT
        # devices of this benchmark and as a plant's controllers do); burst: every unit of
        # the shard at the top of its second (the model of the runs before 2026-12-04 19:00)
        slices = 1 if burst else min(SLICES, len(units))
        per = -(-len(units) // slices)
        written, t_next = 0, time.monotonic()
        while not (folder / "stop_shards").exists():
            go = (folder / "go").exists()
            vals = rng.normal(50, 10, size=(len(units), len(tags)))
            for k in range(slices):
                if go:
                    now = datetime.now(UTC)  # source time: when the value is sampled
                    await srv.write_units(
                        now,
                        {
                            units[i]: {t.tag: float(vals[i, j]) for j, t in enumerate(tags)}
                            for i in range(k * per, min(len(units), (k + 1) * per))
                        },
                    )
                await asyncio.sleep(max(0.0, t_next + (k + 1) / slices - time.monotonic()))
            if go:
                written += len(units) * len(tags)
                (folder / f".shard{idx}.n").write_text(str(written))
                os.replace(folder / f".shard{idx}.n", folder / f"shard{idx}.n")
            t_next += 1.0
        # the last slices were written just now: serve them (a publishing interval or
        # two) before stopping, else they count as written and never published
        await asyncio.sleep(2.0)
        await srv.stop()

    asyncio.run(main())


def mqtt_role(port: int, units: int, folder: Path) -> None:
    """Play ``units`` Sparkplug B devices: one DDATA per unit per second, all 20 tags."""
    from pharma_assets.gateway.protocols.mqtt_common import MqttSettings
    from pharma_assets.gateway.protocols.sparkplug import MetricDef, SparkplugEdgeNode
    from pharma_assets.process import CANONICAL_TAGS

    tags = list(CANONICAL_TAGS)[:20]
    devices = {f"M{u:04d}": [MetricDef(t, CANONICAL_TAGS[t]) for t in tags] for u in range(units)}
    names = list(devices)
    edge = SparkplugEdgeNode(MqttSettings(port=port), "BENCH", "bench", devices)
    edge.start()
    now_ms = time.time_ns() // 1_000_000
    for d in names:
        edge.publish(d, now_ms, dict.fromkeys(tags, 50.0), batch_id=f"{d}-B0001")
    (folder / "mqtt.ready").write_text("1")
    while not (folder / "go").exists():
        time.sleep(0.05)
    rng = np.random.default_rng(99)
    published, per, t0 = 0, -(-units // SLICES), time.monotonic()
    s = 0
    while not (folder / "stop_shards").exists():
        vals = rng.normal(50, 10, size=(units, len(tags)))
        for k in range(SLICES):  # each unit at its own phase of the second
            while (dt := t0 + s + k / SLICES - time.monotonic()) > 0:
                time.sleep(dt)
            for u in range(k * per, min(units, (k + 1) * per)):
                published += edge.publish(
                    names[u], time.time_ns() // 1_000_000, dict(zip(tags, vals[u], strict=True))
                )
        (folder / ".mqtt.n").write_text(str(published))
        os.replace(folder / ".mqtt.n", folder / "mqtt.n")
        s += 1
    edge.stop()


def gateway_role(
    ports: list[int], folder: Path, workers: int, mqtt_port: int, publishing_ms: float = 100.0
) -> None:
    from pharma_assets.gateway.coldpath import ColdPath
    from pharma_assets.gateway.config import MqttSourceConfig, OpcuaSourceConfig
    from pharma_assets.gateway.core import Gateway
    from pharma_assets.gateway.hotstore import MemoryHotStore
    from pharma_assets.gateway.records import now_us
    from pharma_assets.gateway.service import build_source
    from pharma_assets.gateway.workers import WorkerPool

    lat: list[np.ndarray] = []
    counting = [False]

    class TimedStore(MemoryHotStore):
        def put(self, readings: Any) -> None:
            super().put(readings)
            if readings and counting[0]:
                t = now_us()
                lat.append(t - np.fromiter((r.source_ts_us for r in readings), np.int64))

    gw = Gateway("BENCH", TimedStore(), ColdPath(folder / "buf", folder / "landing"))
    configs: list[Any] = [
        OpcuaSourceConfig(
            name=f"shard{i}",
            kind="opcua",
            url=f"opc.tcp://127.0.0.1:{p}/twin",
            site_id="BENCH",
            publishing_interval_ms=publishing_ms,
        )
        for i, p in enumerate(ports)
    ]
    if mqtt_port:
        configs.append(
            MqttSourceConfig(
                name="mqtt",
                kind="mqtt_sparkplug",
                port=mqtt_port,
                group_id="BENCH",
                client_id=f"bench-gateway-{folder.name}",
            )
        )
    srcs, pool = [], None
    if workers:
        pool = WorkerPool(gw, configs, workers, "BENCH", folder / "buf")
        pool.start()
    else:
        srcs = [build_source(gw, sc, "BENCH", folder / "buf") for sc in configs]
    gw.start_flusher(5.0, process=True)  # as the gateway service does
    while not all(gw.sources.get(sc.name) and gw.sources[sc.name].connected for sc in configs):
        time.sleep(0.2)
    flusher = gw._flush_proc.pid if gw._flush_proc is not None else None
    (folder / "pids.json").write_text(
        json.dumps(
            {
                "workers": [w.proc.pid for w in pool.workers] if pool is not None else [],
                "flusher": [flusher] if flusher else [],
            }
        )
    )
    (folder / "gw.ready").write_text("1")
    while not (folder / "go").exists():
        time.sleep(0.05)
    counting[0] = True
    base = sum(s.accepted for s in gw.sources.values())
    while not (folder / "stop_gw").exists():
        n = sum(s.accepted for s in gw.sources.values()) - base
        (folder / ".gw.n").write_text(str(n))
        os.replace(folder / ".gw.n", folder / "gw.n")
        time.sleep(0.2)
    if pool is not None:
        pool.stop()
    for s in srcs:
        s.stop()
    gw.stop()
    d = np.concatenate(lat) / 1000.0 if lat else np.zeros(0)
    (folder / "result.json").write_text(
        json.dumps(
            {
                "accepted": int(sum(s.accepted for s in gw.sources.values()) - base),
                # of the readings of the timed window (the first values, written before it
                # to name the batches, are landed too)
                "landed": (gw.cold.state["landed"] if gw.cold else 0) - base,
                "rejected": int(sum(sum(s.rejected.values()) for s in gw.sources.values())),
                "worker_restarts": int(sum(s.worker_restarts for s in gw.sources.values())),
                "p50_ms": float(np.percentile(d, 50)) if d.size else None,
                "p99_ms": float(np.percentile(d, 99)) if d.size else None,
                "max_ms": float(d.max()) if d.size else None,
            }
        )
    )


def run(
    units: int,
    shards: int,
    seconds: float,
    workers: int = 0,
    mqtt_units: int = 0,
    publishing_ms: float = 100.0,
    burst: bool = False,
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench_opcua_"))
    broker, mqtt_port, mqtt_pub = None, 0, None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ports = [_free_port() for _ in range(shards)]
    per = units // shards
    procs = []
    for i, p in enumerate(ports):
        procs.append(
            subprocess.Popen(
                [
                    "nice",
                    "-n",
                    "10",
                    sys.executable,
                    "-m",
                    "benchmarks.bench_opcua_shards",
                    "--role",
                    "shard",
                    "--port",
                    str(p),
                    "--first",
                    str(i * per),
                    "--count",
                    str(per),
                    "--idx",
                    str(i),
                    "--folder",
                    str(folder),
                    *(["--burst"] if burst else []),
                ],
                env=env,
            )
        )
    if mqtt_units:
        broker, mqtt_port = _start_broker(folder)
    while not all((folder / f"shard{i}.ready").exists() for i in range(shards)):
        time.sleep(0.2)
    gw = subprocess.Popen(
        [
            "nice",
            "-n",
            "10",
            sys.executable,
            "-m",
            "benchmarks.bench_opcua_shards",
            "--role",
            "gateway",
            "--ports",
            ",".join(map(str, ports)),
            "--folder",
            str(folder),
            "--workers",
            str(workers),
            "--mqtt-port",
            str(mqtt_port),
            "--publishing-ms",
            str(publishing_ms),
        ],
        env=env,
    )
    while not (folder / "gw.ready").exists():
        time.sleep(0.2)
    if mqtt_units:
        mqtt_pub = subprocess.Popen(
            [
                *("nice", "-n", "10", sys.executable, "-m", "benchmarks.bench_opcua_shards"),
                *("--role", "mqtt", "--mqtt-port", str(mqtt_port)),
                *("--mqtt-units", str(mqtt_units), "--folder", str(folder)),
            ],
            env=env,
        )
        while not (folder / "mqtt.ready").exists():
            time.sleep(0.2)
    time.sleep(2)
    load0 = os.getloadavg()[0]
    cpu0, wall0 = _proc_cpu_s(gw.pid), time.monotonic()
    own0 = _one_cpu_s(gw.pid)
    pids = json.loads((folder / "pids.json").read_text())
    part0 = {k: sum(_one_cpu_s(p) for p in v) for k, v in pids.items()}
    shard_cpu0 = sum(_one_cpu_s(sp.pid) for sp in procs)
    (folder / "go").write_text("1")
    time.sleep(seconds)
    shard_cpu1 = sum(_one_cpu_s(sp.pid) for sp in procs)
    (folder / "stop_shards").write_text("1")
    wall1 = time.monotonic()
    load1 = os.getloadavg()[0]

    def n(name: str) -> int:
        try:
            return int((folder / name).read_text() or 0)
        except (OSError, ValueError):
            return 0

    for sp in procs + ([mqtt_pub] if mqtt_pub else []):
        sp.wait(60)
    written = sum(n(f"shard{i}.n") for i in range(shards))
    published = n("mqtt.n")
    written += published
    deadline = time.monotonic() + 60
    while n("gw.n") < written and time.monotonic() < deadline:
        time.sleep(0.2)
    drain = time.monotonic() - wall1
    cpu1, wall2 = _proc_cpu_s(gw.pid), time.monotonic()
    own1 = _one_cpu_s(gw.pid)
    part1 = {k: sum(_one_cpu_s(p) for p in v) for k, v in pids.items()}
    hwm = _proc_hwm_mb(gw.pid)
    (folder / "stop_gw").write_text("1")
    gw.wait(180)
    if broker is not None:
        broker.terminate()
        broker.wait(10)
    res = json.loads((folder / "result.json").read_text())
    per10k = max(written, 1) / 10_000
    return {
        "units": units,
        "shards": shards,
        "mqtt_units": mqtt_units,
        "workers": workers,
        "publishing_ms": publishing_ms,
        "phases": "burst" if burst else "spread",
        "seconds": seconds,
        "written": written,
        "mqtt_published": published,
        "readings_per_s": written / seconds,
        **res,
        "drain_s": drain,
        "gateway_cpu_pct": 100 * (cpu1 - cpu0) / (wall2 - wall0),
        "gateway_main_cpu_pct": 100 * (own1 - own0) / (wall2 - wall0),
        "gateway_peak_rss_mb": hwm,
        # CPU seconds per 10,000 readings: the shard servers (the twin, benchmark side) over
        # the timed window, the gateway (its process, workers and flusher) until drained
        "shard_cpu_s_per_10k": (shard_cpu1 - shard_cpu0) / per10k,
        "gateway_cpu_s_per_10k": (cpu1 - cpu0) / per10k,
        "gateway_main_cpu_s_per_10k": (own1 - own0) / per10k,
        # (a worker restarted in the window would be missed here: see worker_restarts)
        "gateway_workers_cpu_s_per_10k": (part1["workers"] - part0["workers"]) / per10k,
        "gateway_flusher_cpu_s_per_10k": (part1["flusher"] - part0["flusher"]) / per10k,
        "load": f"{load0:.1f} / {load1:.1f}",
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| OPC UA units x 20 tags | shards | MQTT units | workers | publishing ms | phases | s | "
        "readings/s | in | accepted | landed | p50 ms | p99 ms | max ms | drained after s | "
        "gateway CPU % (main) | CPU s / 10k readings: shards | gateway (main) | "
        "gateway RSS MB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50, p99, mx = (
            "-" if r.get(k) is None else f"{r[k]:.0f}" for k in ("p50_ms", "p99_ms", "max_ms")
        )
        out.append(
            f"| {r['units']} | {r['shards']} | {r['mqtt_units']} | {r['workers']} | "
            f"{r['publishing_ms']:g} | {r['phases']} | {r['seconds']:g} | "
            f"{r['readings_per_s']:,.0f} | "
            f"{r['written']:,} | {r['accepted']:,} | {r['landed']:,} | {p50} | {p99} | {mx} | "
            f"{r['drain_s']:.1f} | "
            f"{r['gateway_cpu_pct']:.0f} ({r['gateway_main_cpu_pct']:.0f}) | "
            f"{r['shard_cpu_s_per_10k']:.2f} | {r['gateway_cpu_s_per_10k']:.2f} "
            f"({r['gateway_main_cpu_s_per_10k']:.2f}) | "
            f"{r['gateway_peak_rss_mb']:.0f} | {r['load']} |"
        )
    return "\n".join(out)


# ``make bench`` (``run_all --only opcua``): the two runs, 5 minutes each (about
# 13 minutes in all); meant for a quiet machine (see docs/benchmarks.md)
DEFAULT_RUNS: list[dict[str, Any]] = [
    {"units": 500, "shards": 10, "seconds": 300, "workers": 2},
    {"units": 250, "shards": 5, "seconds": 300, "workers": 2, "mqtt_units": 250},
]


def main(runs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [run(**kw) for kw in (runs or DEFAULT_RUNS)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["bench", "shard", "gateway", "mqtt"], default="bench")
    ap.add_argument("--workers", type=int, default=0, help="gateway worker processes (0: none)")
    ap.add_argument("--mqtt-units", type=int, default=0, help="units over MQTT too (mixed)")
    ap.add_argument("--mqtt-port", type=int, default=0)
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument(
        "--publishing-ms", type=float, default=100.0, help="the gateway's publishing interval"
    )
    ap.add_argument(
        "--burst",
        action="store_true",
        help="write every unit of a shard at the top of its second (default: spread)",
    )
    ap.add_argument("--port", type=int)
    ap.add_argument("--ports", default="")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--idx", type=int, default=0)
    ap.add_argument("--folder", type=Path)
    a = ap.parse_args()
    if a.role == "shard":
        shard_role(a.port, a.first, a.count, a.folder, a.idx, a.burst)
    elif a.role == "gateway":
        gateway_role(
            [int(p) for p in a.ports.split(",")], a.folder, a.workers, a.mqtt_port, a.publishing_ms
        )
    elif a.role == "mqtt":
        mqtt_role(a.mqtt_port, a.mqtt_units, a.folder)
    else:
        r = run(a.units, a.shards, a.seconds, a.workers, a.mqtt_units, a.publishing_ms, a.burst)
        print(json.dumps(r))
        print(markdown([r]))
