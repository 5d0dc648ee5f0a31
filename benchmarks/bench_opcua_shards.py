"""Live gateway over OPC UA with the twin's servers sharded per group of units (issue 12).

``shards`` server processes (asyncua, one per group of ``units / shards`` units, 20 Double
tags each, ISA-88 address space as ``live --serve``) write every tag once a second with the
wall clock as source time. One gateway process subscribes to every shard (one OPC UA
source each, publishing interval 100 ms) and runs the full ingest path (mapping, checks,
disk buffer, in-process hot store, landing flush every 5 s by its flusher process); fan-out
is not in this process. Measured: source time -> readable in the hot store (p50/p99/max), readings
written by the shards vs accepted vs landed, the gateway's CPU and peak RSS, load average.

    python -m benchmarks.bench_opcua_shards --units 100 --shards 5 --seconds 60
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

from .bench_gateway import _proc_cpu_s, _proc_hwm_mb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shard_role(port: int, first: int, count: int, folder: Path, idx: int) -> None:
    from pharma_assets.gateway.protocols.opcua import TagNode, TwinOpcuaServer
    from pharma_assets.process import CANONICAL_TAGS

    tags = [TagNode(t, u, "bioreactor") for t, u in list(CANONICAL_TAGS.items())[:20]]
    units = [f"U{u:04d}" for u in range(first, first + count)]

    async def main() -> None:
        srv = TwinOpcuaServer(f"opc.tcp://127.0.0.1:{port}/twin", "BENCH", {"A1": units}, tags)
        await srv.start()
        rng = np.random.default_rng(idx)
        now = datetime.now(UTC)
        for u in units:
            await srv.write(u, now, {t.tag: 50.0 for t in tags}, batch_id=f"{u}-B0001")
        (folder / f"shard{idx}.ready").write_text("1")
        written, t_next = 0, time.monotonic()
        while not (folder / "stop_shards").exists():
            if (folder / "go").exists():
                now = datetime.now(UTC)
                vals = rng.normal(50, 10, size=(len(units), len(tags)))
                for i, u in enumerate(units):
                    await srv.write(u, now, {t.tag: float(vals[i, j]) for j, t in enumerate(tags)})
                    written += len(tags)
                (folder / f".shard{idx}.n").write_text(str(written))
                os.replace(folder / f".shard{idx}.n", folder / f"shard{idx}.n")
            t_next += 1.0
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        await srv.stop()

    asyncio.run(main())


def gateway_role(ports: list[int], folder: Path) -> None:
    from pharma_assets.gateway.coldpath import ColdPath
    from pharma_assets.gateway.core import Gateway
    from pharma_assets.gateway.hotstore import MemoryHotStore
    from pharma_assets.gateway.mapping import SourceMap
    from pharma_assets.gateway.protocols.opcua import OpcuaSource
    from pharma_assets.gateway.records import now_us

    lat: list[np.ndarray] = []
    counting = [False]

    class TimedStore(MemoryHotStore):
        def put(self, readings: Any) -> None:
            super().put(readings)
            if readings and counting[0]:
                t = now_us()
                lat.append(t - np.fromiter((r.source_ts_us for r in readings), np.int64))

    gw = Gateway("BENCH", TimedStore(), ColdPath(folder / "buf", folder / "landing"))
    srcs = []
    for i, p in enumerate(ports):
        s = OpcuaSource(
            gw,
            f"shard{i}",
            SourceMap(f"shard{i}"),
            f"opc.tcp://127.0.0.1:{p}/twin",
            "BENCH",
            publishing_interval_ms=100,
        )
        s.start_in_thread()
        srcs.append(s)
    gw.start_flusher(5.0, process=True)  # as the gateway service does
    while not all(
        gw.sources.get(f"shard{i}") and gw.sources[f"shard{i}"].connected for i in range(len(ports))
    ):
        time.sleep(0.2)
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
    for s in srcs:
        s.stop()
    gw.stop()
    d = np.concatenate(lat) / 1000.0 if lat else np.zeros(0)
    (folder / "result.json").write_text(
        json.dumps(
            {
                "accepted": int(sum(s.accepted for s in gw.sources.values()) - base),
                "landed": gw.cold.state["landed"] if gw.cold else 0,
                "rejected": int(sum(sum(s.rejected.values()) for s in gw.sources.values())),
                "p50_ms": float(np.percentile(d, 50)) if d.size else None,
                "p99_ms": float(np.percentile(d, 99)) if d.size else None,
                "max_ms": float(d.max()) if d.size else None,
            }
        )
    )


def run(units: int, shards: int, seconds: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench_opcua_"))
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
                ],
                env=env,
            )
        )
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
        ],
        env=env,
    )
    while not (folder / "gw.ready").exists():
        time.sleep(0.2)
    time.sleep(2)
    load0 = os.getloadavg()[0]
    cpu0, wall0 = _proc_cpu_s(gw.pid), time.monotonic()
    (folder / "go").write_text("1")
    time.sleep(seconds)
    (folder / "stop_shards").write_text("1")
    wall1 = time.monotonic()
    load1 = os.getloadavg()[0]

    def n(name: str) -> int:
        try:
            return int((folder / name).read_text() or 0)
        except (OSError, ValueError):
            return 0

    for sp in procs:
        sp.wait(60)
    written = sum(n(f"shard{i}.n") for i in range(shards))
    deadline = time.monotonic() + 60
    while n("gw.n") < written and time.monotonic() < deadline:
        time.sleep(0.2)
    drain = time.monotonic() - wall1
    cpu1, wall2 = _proc_cpu_s(gw.pid), time.monotonic()
    hwm = _proc_hwm_mb(gw.pid)
    (folder / "stop_gw").write_text("1")
    gw.wait(180)
    res = json.loads((folder / "result.json").read_text())
    return {
        "units": units,
        "shards": shards,
        "seconds": seconds,
        "written": written,
        "readings_per_s": written / seconds,
        **res,
        "drain_s": drain,
        "gateway_cpu_pct": 100 * (cpu1 - cpu0) / (wall2 - wall0),
        "gateway_peak_rss_mb": hwm,
        "load": f"{load0:.1f} / {load1:.1f}",
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| units x tags | OPC UA shards | s | readings/s | written | accepted | landed | p50 ms | "
        "p99 ms | max ms | drained after s | gateway CPU % | gateway RSS MB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['units']} x 20 | {r['shards']} | {r['seconds']:g} | {r['readings_per_s']:,.0f} | "
            f"{r['written']:,} | {r['accepted']:,} | {r['landed']:,} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['drain_s']:.1f} | "
            f"{r['gateway_cpu_pct']:.0f} | {r['gateway_peak_rss_mb']:.0f} | {r['load']} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["bench", "shard", "gateway"], default="bench")
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--port", type=int)
    ap.add_argument("--ports", default="")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--idx", type=int, default=0)
    ap.add_argument("--folder", type=Path)
    a = ap.parse_args()
    if a.role == "shard":
        shard_role(a.port, a.first, a.count, a.folder, a.idx)
    elif a.role == "gateway":
        gateway_role([int(p) for p in a.ports.split(",")], a.folder)
    else:
        r = run(a.units, a.shards, a.seconds)
        print(json.dumps(r))
        print(markdown([r]))
