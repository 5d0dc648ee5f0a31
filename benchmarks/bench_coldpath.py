"""Cold path through the gateway (issue 12): gateway flush -> rows in silver.

One process: the twin's live plant (``LiveFeed``, ``units`` units, 1 Hz on the wall clock,
its MES files into a temporary landing zone) feeds ``Gateway.ingest`` directly (the
protocol is not what this measures; bench_gateway does); the gateway's cold path flushes
every ``flush_s`` into the landing zone. The real ``landing_sensor`` is evaluated every
``sensor_s`` (the deployment's 15 s) and the runs it requests (``batch_ingest_job``:
bronze + silver in one pass) are executed in this process, as the daemon's run would
execute them in a new one. For every flush: from the moment its files are in landing
until a tick's run has put every reading it carried into silver (latest silver time of
each batch >= the newest reading the flush carried). Not included: a real run's process
start (loading the code location, 2.5 s CPU in issue 17's soak); the soak measured the
whole Dagster path from the file simulator.

    python -m benchmarks.bench_coldpath [--units 10] [--seconds 240]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def run(
    units: int = 10, seconds: float = 240.0, flush_s: float = 5.0, sensor_s: float = 15.0
) -> dict[str, Any]:
    import dagster as dg
    import polars as pl

    from pharma_assets.defs.lakehouse.automation import landing_sensor
    from pharma_assets.defs.lakehouse.definitions import defs as lakehouse_defs
    from pharma_assets.defs.lakehouse.resources import LakehouseResource
    from pharma_assets.gateway.coldpath import ColdPath
    from pharma_assets.gateway.core import Gateway
    from pharma_assets.gateway.hotstore import MemoryHotStore
    from pharma_assets.gateway.mapping import SourceMap
    from pharma_assets.gateway.serve import LiveFeed
    from pharma_assets.pipeline import QUIET
    from pharma_assets.twin.config import load_plant, load_recipes

    tmp = Path(tempfile.mkdtemp(prefix="bench_coldpath_"))
    landing, lake_dir = tmp / "landing", tmp / "lake"
    res = LakehouseResource(lake_uri=str(lake_dir), landing_dir=str(landing))
    d = lakehouse_defs()
    defs = dg.Definitions(
        assets=d.assets,
        asset_checks=d.asset_checks,
        jobs=d.jobs,
        sensors=d.sensors,
        resources={"lakehouse": res},
    )
    plant = load_plant(None).with_units(units)
    feed = LiveFeed(plant, load_recipes(None), landing, seed=11, period_s=1.0)
    gw = Gateway(plant.site.site_id, MemoryHotStore(), ColdPath(tmp / "buf", landing))
    smap = SourceMap("twin")
    newest: dict[str, int] = {}  # batch -> newest source time accepted (µs)
    flushes: list[dict[str, Any]] = []
    stop = threading.Event()

    def feeder() -> None:
        t_next = time.monotonic()
        while not stop.is_set():
            now = datetime.now(UTC)
            ts = int(now.timestamp() * 1e6)
            for o in feed.step(now):
                if not o.batch_id:
                    continue
                items = [(t, v, None, ts, o.quality.get(t, 0)) for t, v in o.values.items()]
                gw.ingest("twin", smap, o.unit_id, o.batch_id, items)
                newest[o.batch_id] = ts
            t_next += 1.0
            stop.wait(max(0.0, t_next - time.monotonic()))

    def flusher() -> None:
        while not stop.wait(flush_s):
            with gw.lock:  # what this flush will carry at least (the seal comes after)
                carried = dict(newest)
            r = gw.flush()
            if r is not None and r.files:
                flushes.append({"landed_at": time.monotonic(), "carried": carried, "seen": None})

    def silver_newest() -> dict[str, int]:
        lake = res.lake()
        df = lake.read("silver", "telemetry", columns=["batch_id", "ts"])
        if df is None or df.height == 0:
            return {}
        agg = df.group_by(pl.col("batch_id").cast(pl.String)).agg(pl.col("ts").max())
        return {
            b: int(t.replace(tzinfo=UTC).timestamp() * 1e6)
            if t.tzinfo is None
            else int(t.timestamp() * 1e6)
            for b, t in agg.iter_rows()
        }

    runs_s: list[float] = []
    failed = 0
    cursor: str | None = None

    def tick(instance: dg.DagsterInstance) -> None:
        nonlocal cursor, failed
        with dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            definitions=defs,
            resources={"lakehouse": res},
            cursor=cursor,
        ) as ctx:
            data = landing_sensor.evaluate_tick(ctx)
        cursor = data.cursor
        for req in data.dynamic_partitions_requests or []:
            assert isinstance(req, dg.AddDynamicPartitionsRequest)
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        for rr in data.run_requests or []:
            job = defs.resolve_job_def(rr.job_name or "")
            t0 = time.monotonic()
            r = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                run_config=QUIET,
                tags=dict(rr.tags),
                partition_key=rr.partition_key,
            )
            runs_s.append(time.monotonic() - t0)
            failed += 0 if r.success else 1
        seen = silver_newest()
        t = time.monotonic()
        for f in flushes:
            if f["seen"] is None and all(seen.get(b, -1) >= ts for b, ts in f["carried"].items()):
                f["seen"] = t

    load0 = os.getloadavg()[0]
    threads = [threading.Thread(target=feeder), threading.Thread(target=flusher)]
    with dg.instance_for_test() as instance:
        for th in threads:
            th.start()
        end = time.monotonic() + seconds
        next_tick = time.monotonic() + sensor_s
        while time.monotonic() < end:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += sensor_s
            tick(instance)
        stop.set()
        for th in threads:
            th.join()
        gw.stop()  # final flush, then ticks until everything is in silver (bounded)
        for _ in range(4):
            tick(instance)
            if all(f["seen"] for f in flushes):
                break
    load1 = os.getloadavg()[0]
    lake = res.lake()
    silver_rows = lake.read("silver", "telemetry", columns=["ts"])
    quarantine = lake.read("silver", "telemetry_quarantine", columns=["ts"])
    n_q = 0 if quarantine is None else quarantine.height
    lat = [f["seen"] - f["landed_at"] for f in flushes if f["seen"] is not None]
    assert gw.cold is not None
    return {
        "units": units,
        "seconds": seconds,
        "flush_s": flush_s,
        "sensor_s": sensor_s,
        "flushes": len(flushes),
        "flushes_in_silver": len(lat),
        "median_s": statistics.median(lat) if lat else float("nan"),
        "p90_s": float(np.percentile(lat, 90)) if lat else float("nan"),
        "max_s": max(lat, default=float("nan")),
        "runs": len(runs_s),
        "runs_failed": failed,
        "run_median_s": statistics.median(runs_s) if runs_s else float("nan"),
        "accepted": gw.sources["twin"].accepted if gw.sources else 0,
        "landed": gw.cold.state["landed"],
        "silver_plus_quarantine": (0 if silver_rows is None else silver_rows.height) + n_q,
        "load": f"{load0:.1f} / {load1:.1f}",
    }


HEADER = (
    "| units | s | flush every s | sensor every s | flushes | in silver | flush -> silver "
    "median s | p90 s | max s | runs (failed) | run median s | accepted | landed | silver + "
    "quarantine rows | load avg (start / end) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def line(r: dict[str, Any]) -> str:
    return (
        f"| {r['units']} | {r['seconds']:g} | {r['flush_s']:g} | {r['sensor_s']:g} | "
        f"{r['flushes']} | {r['flushes_in_silver']} | {r['median_s']:.1f} | {r['p90_s']:.1f} | "
        f"{r['max_s']:.1f} | {r['runs']} ({r['runs_failed']}) | {r['run_median_s']:.1f} | "
        f"{r['accepted']:,} | {r['landed']:,} | {r['silver_plus_quarantine']:,} | {r['load']} |"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--units", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=240.0)
    a = ap.parse_args()
    r = run(a.units, a.seconds)
    print(HEADER)
    print(line(r))
    print(json.dumps(r))
