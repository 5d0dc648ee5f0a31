"""Spark engine benchmark: the backfill of a larger plant on polars, on a real Spark
standalone cluster of 1 and 2 workers on this machine, and on Spark local mode.

The parent simulates the plant once (``simulate_history``: ``--units`` units, ``--batches``
batches, seed 42, 1-minute data), then:

1. polars: a fresh process runs the polars backfill into a fresh lake (``bronze.ingest_files``
   for every source, ``silver.build_batches``/``build_lab_results``/``build_maintenance``,
   ``silver.process_telemetry`` of every batch): what ``PHARMA_ENGINE=polars`` does.
2. A Spark standalone master and one worker (1 core, ``--worker-memory``) are started from
   the pyspark install (``spark-class org.apache.spark.deploy.master.Master`` /
   ``...deploy.worker.Worker``) on 127.0.0.1; a fresh driver process connects
   (``spark://127.0.0.1:<port>``) and runs ``engines.spark.backfill.backfill`` into a fresh
   lake. Then a second worker joins and the run is repeated on a fresh lake. Then Spark
   local mode (``local[2]``, no cluster). The cluster is stopped at the end (also on error).
3. Parity: every bronze and silver table of each Spark lake has the polars lake's row count,
   and silver/telemetry the same sum of values.

Figures per run: session start (JVM, connection to the master, executors), backfill
seconds, readings/s of the backfill (session start excluded and included), load average
before and after. One run each (the whole benchmark takes several minutes); the machine's
other work shows in the load average beside each figure.

``python -m benchmarks.bench_spark [--batches 8 --units 6]`` prints a JSON summary;
``python -m benchmarks.run_all --only spark`` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED = 42


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_HOME=str(_spark_home()),
        PYSPARK_PYTHON=sys.executable,
        PYTHONPATH=str(REPO),
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )
    return env


# ------------------------------------------------------------------------ children
def _counts(lake_root: str) -> dict[str, Any]:
    import polars as pl

    from pharma_assets.lake.storage import Lake

    lake = Lake.at(lake_root)
    out: dict[str, Any] = {}
    for layer in ("bronze", "silver"):
        for p in sorted((Path(lake_root) / layer).iterdir()):
            if (p / "_delta_log").is_dir():
                df = lake.scan(layer, p.name)
                assert df is not None
                out[f"{layer}/{p.name}"] = df.select(pl.len()).collect().item()
    tel = lake.scan("silver", "telemetry")
    assert tel is not None
    out["silver/telemetry value sum"] = round(
        float(tel.select(pl.col("value").sum()).collect().item()), 3
    )
    return out


def child_polars(landing: str, lake_root: str) -> dict[str, Any]:
    from pharma_assets.engines import polars as polars_engine
    from pharma_assets.lake.storage import Lake

    lake = Lake.at(lake_root)
    t0 = time.perf_counter()
    rep = polars_engine.backfill(lake, landing, "bench-polars")
    secs = time.perf_counter() - t0
    return {
        "backfill_s": secs,
        "session_s": 0.0,
        "readings": rep.rows_in,
        "counts": _counts(lake_root),
        "bytes_per_reading": _bytes_per_reading(lake, landing),
    }


def _bytes_per_reading(lake: Any, landing: str) -> dict[str, float]:
    """Compressed bytes per reading of the landed Parquet and of the lake's telemetry tables
    (the sizes of the snapshot's data files, Delta log excluded): docs/scaling.md uses them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, float] = {}
    files = list((Path(landing) / "telemetry").rglob("*.parquet"))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    out["landing"] = sum(f.stat().st_size for f in files) / max(rows, 1)
    for layer, name in (
        ("bronze", "telemetry"),
        ("silver", "telemetry"),
        ("silver", "batch_timeline"),
    ):
        dt = lake.table(layer, name)
        adds = pa.table(dt.get_add_actions(flatten=True))
        size, n = (
            sum(adds.column("size_bytes").to_pylist()),
            sum(adds.column("num_records").to_pylist()),
        )
        out[f"{layer}/{name}"] = size / max(n, 1)
        out[f"{layer}/{name} rows"] = n
    return out


def child_spark(
    master: str, landing: str, lake_root: str, cores: int, per_task: int
) -> dict[str, Any]:
    from pharma_assets.engines.spark import backfill
    from pharma_assets.engines.spark.session import build_session
    from pharma_assets.lake.landing_scan import scan_landing

    t0 = time.perf_counter()
    extra = {
        "spark.cores.max": str(cores),
        "spark.executor.cores": "1",
        "spark.executorEnv.PYTHONPATH": str(REPO),
        "spark.executorEnv.SPARK_LOCAL_IP": "127.0.0.1",
    }
    spark = build_session(master, extra=extra)
    # wait for the executors to register (a standalone app gets them after the session)
    sc = spark.sparkContext
    want = cores if master.startswith("spark://") else 0
    deadline = time.monotonic() + 300
    while want and sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < want:  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{want} executors did not register with {master} in 300 s")
        time.sleep(0.5)
    executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # type: ignore[union-attr]
    session_s = time.perf_counter() - t0
    ids = sorted({f.batch_id for f in scan_landing(landing) if f.batch_id})
    t1 = time.perf_counter()
    rep = backfill.backfill(
        spark, lake_root, landing, ids, "bench-spark", batches_per_task=per_task
    )
    secs = time.perf_counter() - t1
    spark.stop()
    return {
        "backfill_s": secs,
        "session_s": session_s,
        "readings": int(rep.silver.get("rows_in", 0)),
        "tasks": rep.tasks,
        "executors": executors,
        "counts": _counts(lake_root),
    }


def _run_child(*args: str) -> dict[str, Any]:
    load0 = _load()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_spark", "--child", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["load_before"], r["load_after"] = load0, _load()
    return r


# ------------------------------------------------------------------------ cluster
class Cluster:
    """A Spark standalone master and workers on 127.0.0.1, as separate JVM processes."""

    def __init__(self, folder: Path, worker_memory: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.worker_memory = worker_memory
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> Path:
        log = self.folder / f"{name}.log"
        cls = str(_spark_home() / "bin" / "spark-class")
        fh = open(log, "wb")  # noqa: SIM115 (kept open for the process's life)
        self.procs.append(
            subprocess.Popen(
                [cls, *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )
        )
        return log

    def _wait(self, log: Path, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{log.name}: no {text!r} after {timeout:.0f} s:\n{log.read_text()[-2000:]}"
                )
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Spark process exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)

    def start_master(self) -> None:
        self.master_log = self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(_free_port()),
        )
        self._wait(self.master_log, "I have been elected leader")

    def add_worker(self) -> None:
        n = sum(1 for _ in self.folder.glob("worker*.log")) + 1
        work = self.folder / f"work{n}"
        work.mkdir()
        self._spawn(
            f"worker{n}",
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            self.worker_memory,
            "--webui-port",
            str(_free_port()),
            "--work-dir",
            str(work),
            self.master_url,
        )
        deadline = time.monotonic() + 300
        while self.master_log.read_text(errors="replace").count("Registering worker") < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {n} did not register in 300 s")
            time.sleep(0.5)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def cluster(folder: Path, worker_memory: str) -> Iterator[Cluster]:
    c = Cluster(folder, worker_memory)
    try:
        c.start_master()
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------------ parent
def main(
    batches: int = 8,
    units: int = 6,
    per_task: int = 2,
    worker_memory: str = "2g",
    keep: bool = False,
) -> dict[str, Any]:
    from pharma_assets.twin.config import load_plant, load_recipes
    from pharma_assets.twin.history import simulate_history

    tmp = Path(tempfile.mkdtemp(prefix="bench_spark_"))
    t_all = time.perf_counter()
    try:
        landing = tmp / "landing"
        simulate_history(
            load_plant().with_units(units),
            load_recipes(),
            batches,
            seed=SEED,
            out=landing,
            truth_out=tmp / "truth",
        )
        runs: dict[str, dict[str, Any]] = {}
        runs["polars"] = _run_child("polars", str(landing), str(tmp / "lake_polars"))
        with cluster(tmp / "cluster", worker_memory) as c:
            c.add_worker()
            runs["spark standalone, 1 worker"] = _run_child(
                "spark", c.master_url, str(landing), str(tmp / "lake_w1"), "1", str(per_task)
            )
            c.add_worker()
            runs["spark standalone, 2 workers"] = _run_child(
                "spark", c.master_url, str(landing), str(tmp / "lake_w2"), "2", str(per_task)
            )
        runs["spark local[2]"] = _run_child(
            "spark", "local[2]", str(landing), str(tmp / "lake_local"), "2", str(per_task)
        )
        ref = runs["polars"]["counts"]
        for r in runs.values():
            r["parity"] = r["counts"] == ref
            r["readings_per_s"] = r["readings"] / r["backfill_s"]
            r["readings_per_s_with_start"] = r["readings"] / (r["backfill_s"] + r["session_s"])
            r["vs_polars"] = r["backfill_s"] / runs["polars"]["backfill_s"]
        return {
            "batches": batches,
            "units": units,
            "batches_per_task": per_task,
            "readings": ref.get("silver/telemetry", 0) + ref.get("silver/telemetry_quarantine", 0),
            "runs": runs,
            "total_s": time.perf_counter() - t_all,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['batches']} batches on {r['units']} units ({r['readings']:,} readings), "
        f"{r['batches_per_task']} batches per Spark task; whole benchmark "
        f"{r['total_s'] / 60:.1f} min; `uptime` at the end: {r['uptime']}.",
        "",
        "| engine | executors | session start s | backfill s | readings/s | readings/s incl. start | time vs polars | parity (row counts, value sum) | load avg before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r["runs"].items():
        lines.append(
            f"| {name} | {'-' if name == 'polars' else x.get('executors') or '- (in the driver)'} | {x['session_s']:.1f} | {x['backfill_s']:.1f} | "
            f"{x['readings_per_s']:,.0f} | {x['readings_per_s_with_start']:,.0f} | {x['vs_polars']:.2f}x | "
            f"{'same' if x['parity'] else 'DIFFERENT'} | {x['load_before']} / {x['load_after']} |"
        )
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs="+")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--units", type=int, default=6)
    ap.add_argument("--batches-per-task", type=int, default=2)
    ap.add_argument("--worker-memory", default="2g")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "polars":
            res = child_polars(*rest)
        elif kind == "spark":
            res = child_spark(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        else:
            sys.exit(f"error: unknown child {kind!r}")
        print(json.dumps(res))
    else:
        out = main(a.batches, a.units, a.batches_per_task, a.worker_memory, a.keep)
        print("\n".join(markdown(out)))
        print(json.dumps(out))
