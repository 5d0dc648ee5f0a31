"""Lakehouse benchmarks: ingestion throughput, incremental cost, peak memory, gold reads and
sensor latency (issue "Foundation 2/2").

Every measured step runs in a fresh subprocess (``--child NAME ARGS``) so that its memory,
caches and imports are its own; the parent only prepares inputs, collects the JSON the child
prints on its last line and takes medians. Sections run alone with
``python -m benchmarks.bench_lakehouse --only ingest|incremental|memory|gold|sensor`` (several
``--only`` may be given); ``python -m benchmarks.run_all`` (``make bench``) runs them all and
writes the table into docs/benchmarks.md.

How the inputs are made (all in a temporary folder, removed at the end unless ``--keep``):

- ingest: ``simulate_history`` of 16 batches (6 units, seed 42, 1-minute data) -> about 6.5
  million readings in 235 telemetry files.
- incremental / gold: a 6-batch simulation (one batch per unit) is the template. The lake of
  N batches holds one *live* batch (the template's first batch at full resolution, running:
  no batch_end event, release assays not landed, its last chunks withheld) plus N - 1
  replicas of the template batches under new batch ids (``<id>-R<round>``), every timestamp
  shifted back by ``round`` x the template's span, MES event ids, LIMS sample ids and lots
  rewritten, telemetry thinned to one timestamp in ``THIN_MIN`` minutes (so each replica keeps
  its 15 daily chunk files and all 20 tags, with 1/THIN_MIN of the rows). The landing is
  ingested in bulk through the real functions (bronze.ingest_files per source, which groups
  files into commits of up to 1 M rows; silver.build_batches/build_lab_results;
  silver.process_telemetry, 100 batches per call, committed in groups of about 1 M readings), then
  gold.build_gold.
- memory: one batch of 10,000,000 readings: the template's first batch interpolated to
  1-second sampling (plus white noise of half the step-to-step spread of each tag) for
  500,000 s, written as 139 one-hour chunks with ``write_telemetry_chunk``, with its MES file.
- sensor: the live batch and one complete batch, pre-ingested; then ``dagster-daemon`` with
  the repository's workspace, a temporary DAGSTER_HOME and the landing sensor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
START = datetime(2026, 1, 5, tzinfo=UTC)
SEED = 42
THIN_MIN = 30  # replicas keep one timestamp in THIN_MIN minutes
SECTIONS = ("ingest", "incremental", "memory", "gold", "sensor")
TARGETS = {
    "ingest": ("pipeline / raw time", 3.0),
    "incremental": ("1,000-batch / 10-batch time", 1.5),
    "memory": ("peak RSS MB", 2048.0),
    "gold": ("latency ms", 200.0),
    "sensor": ("median s", 30.0),
}


def log(msg: str) -> None:
    print(f"[bench_lakehouse {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def _load() -> str:
    """The 1/5/15-minute load averages (the machine is shared: read timings against them)."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# =============================================================================== children
def run_child(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``--child name`` in a fresh interpreter; its JSON result plus its peak RSS (MB)."""
    import pharma_assets  # sets polars' allocator settings in os.environ (pharma_assets/__init__)

    cmd = [sys.executable, "-m", "benchmarks.bench_lakehouse", "--child", name, json.dumps(kwargs)]
    # every child, the raw copy included, runs with the allocator settings the product's
    # processes get (the raw copy imports polars before pharma_assets and would otherwise run
    # on polars' defaults: a baseline on other terms than the pipeline's)
    env = dict(os.environ)
    if "_RJEM_MALLOC_CONF" not in env and not pharma_assets.allocator_defaults_requested():
        env["_RJEM_MALLOC_CONF"] = pharma_assets.ALLOCATOR_CONF
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {name} failed with exit code {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["child_peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_simulate(out: str, batches: int) -> dict[str, Any]:
    from pharma_assets.twin.config import load_plant, load_recipes
    from pharma_assets.twin.history import simulate_history

    r = simulate_history(
        load_plant(),
        load_recipes(),
        batches,
        SEED,
        Path(out) / "landing",
        truth_out=Path(out) / "truth",
        start=START,
    )
    return {"files": r.files_written, "readings": r.readings_written}


def _telemetry_files(landing: str) -> list[Any]:
    from pharma_assets.lake.landing_scan import scan_landing

    return [f for f in scan_landing(landing) if f.source == "telemetry"]


def child_raw(landing: str, table: str, lake_settings: bool = False) -> dict[str, Any]:
    """Raw baseline: read the landed telemetry with polars and write it to a fresh Delta table.

    ``lake_settings``: write with the lake's Parquet settings (``storage.writer_properties``)
    instead of delta-rs's defaults: shown beside the target's ratio, not used for it."""
    import polars as pl
    from deltalake import write_deltalake

    from pharma_assets.lake.storage import writer_properties

    paths = [str(f.path(landing)) for f in _telemetry_files(landing)]
    t0, c0 = time.perf_counter(), time.process_time()
    df = pl.read_parquet(paths)
    t1 = time.perf_counter()
    table_data = df.to_arrow()
    if lake_settings:
        props = writer_properties(table_data.schema)
        write_deltalake(table, table_data, mode="append", writer_properties=props)
    else:
        write_deltalake(table, table_data, mode="append")
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "rows": df.height,
        "files": len(paths),
        "read_s": t1 - t0,
        "write_s": t2 - t1,
        "total_s": t2 - t0,
        "cpu_s": c2 - c0,
    }


def child_pipeline(landing: str, lake_dir: str) -> dict[str, Any]:
    """MES -> batches (timed apart), then telemetry landing -> bronze -> silver in one pass."""
    from pharma_assets.lake import bronze, silver
    from pharma_assets.lake.landing_scan import scan_landing
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake
    from pharma_assets.lake.telemetry_ingest import ingest_telemetry

    lake, spec = Lake.at(lake_dir), load_spec()
    files = scan_landing(landing)
    t0 = time.perf_counter()
    bronze.ingest_files(lake, landing, "mes", [f for f in files if f.source == "mes"], "bench")
    silver.build_batches(lake)
    t1, c1 = time.perf_counter(), time.process_time()
    tel = [f for f in files if f.source == "telemetry"]
    r = ingest_telemetry(lake, landing, tel, spec, "bench")
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "rows": r.bronze.rows_accepted,
        "files": len(tel),
        "rows_valid": r.silver.rows_valid,
        "rows_quarantined": r.silver.rows_quarantined,
        "handed_over": r.handed_over_files,
        "mes_s": t1 - t0,
        "cpu_s": c2 - c1,
        "total_s": t2 - t1,
    }


# ---------------------------------------------------------------------- landing builders
ISO_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z")


def _shift_text(text: str, old: str, new: str, shift: timedelta) -> str:
    def sub(m: re.Match[str]) -> str:
        t = datetime.fromisoformat(m.group(0).replace("Z", "+00:00")) + shift
        return t.astimezone(UTC).isoformat().replace("+00:00", "Z")

    return ISO_TS.sub(sub, text.replace(old, new))


def _shift_name(name: str, shift: timedelta) -> str:
    from pharma_assets.twin.landing import stamp

    t = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) + shift
    return stamp(t) + name[16:]


def _template_batches(landing: Path) -> list[tuple[str, str]]:
    """(unit_id, batch_id) of every batch in a landing zone, in batch-id order."""
    return sorted(
        ((u.name, b.name) for u in (landing / "mes").iterdir() for b in u.iterdir()),
        key=lambda x: x[1],
    )


_THINNED: dict[tuple[Path, int], Any] = {}


def replicate_batch(
    src: Path, dst: Path, unit: str, bid: str, new: str, shift: timedelta, thin_min: int
) -> int:
    """Copy a landed batch under a new id, shifted in time, telemetry thinned; rows written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    for source in ("mes", "lims"):
        for p in sorted((src / source / unit / bid).iterdir()):
            out = dst / source / unit / new / _shift_name(p.name, shift)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_shift_text(p.read_text(), bid, new, shift))
    rows = 0
    shift_us = int(shift.total_seconds() * 1_000_000)
    for p in sorted((src / "telemetry" / unit / bid).iterdir()):
        if (p, thin_min) not in _THINNED:  # each template file is read and thinned once
            t = pq.read_table(p)
            ts = t.column("ts").cast(pa.int64()).to_numpy()
            keep = (ts // 60_000_000) % thin_min == 0
            _THINNED[p, thin_min] = (t.filter(pa.array(keep)), ts[keep])
        t, ts = _THINNED[p, thin_min]
        n = t.num_rows
        t = t.set_column(0, "ts", pa.array(ts + shift_us, type=pa.timestamp("us", tz="UTC")))
        i = t.schema.get_field_index("batch_id")
        ids = pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([new]))
        t = t.set_column(i, "batch_id", ids)
        out = dst / "telemetry" / unit / new / _shift_name(p.name, shift)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out, compression="zstd")
        rows += n
    return rows


def stage_live_batch(
    src: Path, dst: Path, pending: Path, unit: str, bid: str, withheld: int
) -> list[str]:
    """Land a running batch: no batch_end, no release assays, last ``withheld`` chunks held back
    in ``pending`` (returned in delivery order)."""
    for source in ("mes", "lims"):
        for p in sorted((src / source / unit / bid).iterdir()):
            lines = p.read_text().splitlines(keepends=True)
            if source == "mes":
                lines = [x for x in lines if '"event_type": "batch_end"' not in x]
            else:
                lines = [x for x in lines if ",release," not in x]
            out = dst / source / unit / bid / p.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(lines))
    chunks = sorted((src / "telemetry" / unit / bid).iterdir())
    assert len(chunks) > withheld, f"{bid} has only {len(chunks)} chunks"
    held = []
    for i, p in enumerate(chunks):
        if i < len(chunks) - withheld:
            out = dst / "telemetry" / unit / bid / p.name
        else:
            out = pending / unit / bid / p.name
            held.append(f"telemetry/{unit}/{bid}/{p.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)
    return held


def deliver(pending: Path, landing: Path, rel: str) -> None:
    """Land a withheld chunk the way the writers do: hidden temporary name, then rename."""
    src = pending / rel.removeprefix("telemetry/")
    dst = landing / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def child_replica_landing(
    template: str, out: str, batches: int, withheld: int, thin_min: int
) -> dict[str, Any]:
    src, out_p = Path(template), Path(out)
    tmpl = _template_batches(src)
    # the template's span (first start to last end), so that rounds never overlap on a unit
    times = [
        datetime.fromisoformat(m.replace("Z", "+00:00"))
        for u, b in tmpl
        for p in (src / "mes" / u / b).iterdir()
        for m in ISO_TS.findall(p.read_text())
    ]
    period = timedelta(days=(max(times) - min(times)).days + 2)
    unit, live = tmpl[0]
    held = stage_live_batch(src, out_p / "landing", out_p / "pending", unit, live, withheld)
    rows, ids = 0, [live]
    for i in range(batches - 1):
        u, b = tmpl[i % len(tmpl)]
        r = i // len(tmpl) + 1
        new = f"{b}-R{r:03d}"
        rows += replicate_batch(src, out_p / "landing", u, b, new, -r * period, thin_min)
        ids.append(new)
    return {
        "live_batch": live,
        "pending": held,
        "replica_rows": rows,
        "batches": len(ids),
        "round_days": period.days,
    }


def child_build_lake(landing: str, lake_dir: str) -> dict[str, Any]:
    """Bulk ingestion of a landing zone through the real functions, then gold."""
    from pharma_assets.lake import bronze, gold, silver
    from pharma_assets.lake.landing_scan import scan_landing
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake
    from pharma_assets.lake.telemetry_ingest import ingest_telemetry

    lake, spec = Lake.at(lake_dir), load_spec()
    files = scan_landing(landing)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    for src in ("mes", "lims"):
        bronze.ingest_files(lake, landing, src, [f for f in files if f.source == src], "build")
    silver.build_batches(lake)
    silver.build_lab_results(lake, load_spec())
    t["bronze_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = sorted({f.batch_id for f in files if f.batch_id})
    tel: dict[str, list[Any]] = {}
    for f in files:
        if f.source == "telemetry":
            tel.setdefault(f.batch_id or "", []).append(f)
    rows, per_100 = 0, []
    for k in range(0, len(ids), 100):  # 100 batches per call, to show how the cost grows
        tk = time.perf_counter()
        fs = [f for b in ids[k : k + 100] for f in tel.get(b, [])]
        rows += ingest_telemetry(lake, landing, fs, spec, "build").silver.rows_valid
        per_100.append(time.perf_counter() - tk)
        if len(ids) > 100:
            log(f"silver: {k + len(ids[k : k + 100])} batches, last 100 in {per_100[-1]:.0f} s")
    t["silver_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = gold.build_gold(lake, spec)
    t["gold_s"] = time.perf_counter() - t0
    return {
        **t,
        "files": len(files),
        "silver_rows": rows,
        "silver_per_100_s": per_100,
        "gold": g,
        "tables": _table_stats(lake_dir),
    }


def _table_stats(lake_dir: str) -> dict[str, dict[str, int]]:
    """Per table: Delta version and number of data files (what snapshot loading costs)."""
    from deltalake import DeltaTable

    out = {}
    for layer in ("bronze", "silver", "gold"):
        base = Path(lake_dir) / layer
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if (d / "_delta_log").is_dir():
                dt = DeltaTable(str(d))
                out[f"{layer}/{d.name}"] = {"version": dt.version(), "files": len(dt.file_uris())}
    return out


def child_chunk(landing: str, lake_dir: str, pending: str, rel: str) -> dict[str, Any]:
    """Land one withheld chunk and ingest it as the batch's Dagster run does."""
    from pharma_assets.lake import bronze, silver
    from pharma_assets.lake.landing_scan import files_for_batch
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake
    from pharma_assets.lake.telemetry_ingest import ingest_telemetry

    lake, spec = Lake.at(lake_dir), load_spec()
    bid = rel.split("/")[2]
    deliver(Path(pending), Path(landing), rel)
    t0 = time.perf_counter()
    both = ingest_telemetry(lake, landing, files_for_batch(landing, "telemetry", bid), spec, "inc")
    rep, srep = both.bronze, both.silver
    t2 = time.perf_counter()
    # the rest of the partition's run (bronze_mes, bronze_lims, silver_batches, lab_results)
    for src in ("mes", "lims"):
        bronze.ingest_files(lake, landing, src, files_for_batch(landing, src, bid), "inc")
    silver.build_batches(lake, [bid])
    silver.build_lab_results(lake, spec, [bid])
    t3 = time.perf_counter()
    assert rep.files_accepted == 1 and srep.files_processed == 1, (rep, srep)
    return {"rows": rep.rows_accepted, "total_s": t2 - t0, "other_assets_s": t3 - t2}


def child_big_batch(template: str, out: str, seconds: int) -> dict[str, Any]:
    """One batch at 1-second sampling derived from the template's first batch."""
    import numpy as np
    import polars as pl

    from pharma_assets.twin.config import load_plant
    from pharma_assets.twin.landing import chunk_path, quality_codes, write_telemetry_chunk

    src, dst = Path(template), Path(out)
    unit, bid = _template_batches(src)[0]
    tel = pl.read_parquet(sorted((src / "telemetry" / unit / bid).iterdir()))
    site = str(tel["site_id"][0])
    plant = load_plant()
    tags, uoms = [t.tag for t in plant.tags], [t.uom for t in plant.tags]
    wide = (
        tel.with_columns(pl.col("tag").cast(pl.String))
        .pivot(on="tag", index="ts", values="value", aggregate_function="first")
        .sort("ts")
    )
    t_src = wide["ts"].dt.epoch("us").to_numpy().astype(np.float64)
    t0_us = int(t_src[0])
    ts_us = t0_us + np.arange(seconds, dtype=np.int64) * 1_000_000
    rng = np.random.default_rng(SEED)
    values = np.empty((seconds, len(tags)))
    for j, tag in enumerate(tags):
        y = wide[tag].to_numpy().astype(np.float64)
        ok = np.isfinite(y)
        values[:, j] = np.interp(ts_us.astype(np.float64), t_src[ok], y[ok])
        values[:, j] += rng.normal(0.0, 0.5 * float(np.std(np.diff(y[ok]))), seconds)
        np.clip(values[:, j], y[ok].min(), y[ok].max(), out=values[:, j])  # stay in range
    quality = quality_codes(rng, values.shape)
    chunk_s = 3600
    start = datetime.fromtimestamp(t0_us / 1e6, UTC)
    for seq, k in enumerate(range(0, seconds, chunk_s), start=1):
        path = chunk_path(dst, "telemetry", unit, bid, start + timedelta(seconds=k), seq, "parquet")
        write_telemetry_chunk(
            path,
            ts_us[k : k + chunk_s],
            site,
            unit,
            bid,
            tags,
            uoms,
            values[k : k + chunk_s],
            quality[k : k + chunk_s],
        )
    for p in (src / "mes" / unit / bid).iterdir():
        (dst / "mes" / unit / bid).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst / "mes" / unit / bid / p.name)
    return {"batch_id": bid, "readings": values.size, "files": -(-seconds // chunk_s)}


def child_memory(landing: str, lake_dir: str) -> dict[str, Any]:
    from pharma_assets.lake import bronze, silver
    from pharma_assets.lake.landing_scan import scan_landing
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake
    from pharma_assets.lake.telemetry_ingest import ingest_telemetry

    base = _rss_mb()
    lake, spec = Lake.at(lake_dir), load_spec()
    files = scan_landing(landing)
    t0 = time.perf_counter()
    bronze.ingest_files(lake, landing, "mes", [f for f in files if f.source == "mes"], "mem")
    silver.build_batches(lake)
    tel = [f for f in files if f.source == "telemetry"]
    both = ingest_telemetry(lake, landing, tel, spec, "mem")
    t2 = time.perf_counter()
    return {
        "rows": both.bronze.rows_accepted,
        "rows_valid": both.silver.rows_valid,
        "seconds": t2 - t0,
        "baseline_rss_mb": base,
        "hwm_mb": _rss_mb("VmHWM"),
    }


def child_gold_refresh(lake_dir: str, times: int) -> dict[str, Any]:
    """Rebuild gold ``times`` times, as the refresh sensor does after ingestion runs."""
    from pharma_assets.lake import gold
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake

    lake, spec = Lake.at(lake_dir), load_spec()
    t0 = time.perf_counter()
    for _ in range(times):
        gold.build_gold(lake, spec)
    return {
        "build_s": (time.perf_counter() - t0) / times,
        "version": lake.version("gold", "batch_summary"),
    }


def child_gold_read(lake_dir: str, warm: int) -> dict[str, Any]:
    import polars as pl

    from pharma_assets.lake.storage import Lake

    lake = Lake.at(lake_dir)
    t0 = time.perf_counter()
    df = lake.read("gold", "batch_summary")
    cold_lake = time.perf_counter() - t0
    assert df is not None
    t0 = time.perf_counter()
    df2 = pl.read_delta(lake.uri("gold", "batch_summary"))
    cold_pl = time.perf_counter() - t0
    warm_lake, warm_pl = [], []
    for _ in range(warm):
        t0 = time.perf_counter()
        lake.read("gold", "batch_summary")
        warm_lake.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pl.read_delta(lake.uri("gold", "batch_summary"))
        warm_pl.append(time.perf_counter() - t0)
    return {
        "rows": df.height,
        "cols": df.width,
        "rows_pl": df2.height,
        "cold_lake_ms": 1000 * cold_lake,
        "cold_pl_ms": 1000 * cold_pl,
        "warm_lake_ms": 1000 * med(warm_lake),
        "warm_pl_ms": 1000 * med(warm_pl),
    }


def child_preingest(landing: str, lake_dir: str) -> dict[str, Any]:
    from pharma_assets.lake import bronze, gold, silver
    from pharma_assets.lake.landing_scan import SOURCES, files_for_source, scan_landing
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake

    lake, spec = Lake.at(lake_dir), load_spec()
    files = scan_landing(landing)
    for src in (*SOURCES, "unroutable"):
        fs = (
            files_for_source(landing, src)
            if src in ("cmms", "unroutable")
            else [f for f in files if f.source == src]
        )
        bronze.ingest_files(lake, landing, src, fs, "pre")
    silver.build_batches(lake)
    silver.build_lab_results(lake, spec)
    ids = sorted({f.batch_id for f in files if f.batch_id})
    silver.process_telemetry(lake, ids, spec, "pre")
    gold.build_gold(lake, spec)
    return {"files": len(files), "batches": ids}


def child_run_summary(dagster_home: str) -> dict[str, Any]:
    """Runs of the temporary instance: counts per job and status, failures, and for every
    ingestion run its creation, start and end times and step durations (epoch seconds)."""
    os.environ["DAGSTER_HOME"] = dagster_home
    import dagster as dg

    inst = dg.DagsterInstance.get()
    by: dict[str, dict[str, int]] = {}
    errors, ingest = [], []
    for rec in inst.get_run_records():
        r = rec.dagster_run
        d = by.setdefault(r.job_name, {})
        d[r.status.value] = d.get(r.status.value, 0) + 1
        if r.job_name == "batch_ingest_job":
            st = inst.get_run_stats(r.run_id)
            steps = {
                s.step_key: s.end_time - s.start_time
                for s in inst.get_run_step_stats(r.run_id)
                if s.start_time and s.end_time
            }
            ingest.append(
                {
                    "created": rec.create_timestamp.timestamp(),
                    "start": st.start_time,
                    "end": st.end_time,
                    "status": r.status.value,
                    "steps": steps,
                }
            )
        if r.status == dg.DagsterRunStatus.FAILURE:
            for e in inst.all_logs(r.run_id):
                if e.is_dagster_event and e.dagster_event.is_failure:  # type: ignore[union-attr]
                    errors.append(f"{r.job_name} {r.run_id[:8]}: {e.message[:300]}")
    return {"runs": by, "errors": errors, "ingest_runs": sorted(ingest, key=lambda x: x["created"])}


def _run_workers(marker: str) -> list[int]:
    """Pids of Dagster run workers started for our temporary instance."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if f"DAGSTER_HOME={marker}".encode() in env and b"execute_run" in cmd:
            out.append(int(p.name))
    return out


def _latency_parts(drops: list[tuple[float, float]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Split each chunk's latency: landed -> run created (sensor), created -> started (queue
    and launch), started -> visible in silver; medians, from the first run created after the
    chunk landed."""
    parts: dict[str, list[float]] = {}
    steps: dict[str, list[float]] = {}
    for landed, visible in drops:
        run = next((r for r in runs if r["created"] >= landed and r["start"]), None)
        if run is None:
            continue
        parts.setdefault("sensor_s", []).append(run["created"] - landed)
        parts.setdefault("queue_and_launch_s", []).append(run["start"] - run["created"])
        parts.setdefault("run_until_visible_s", []).append(visible - run["start"])
        if run["end"]:
            parts.setdefault("whole_run_s", []).append(run["end"] - run["start"])
        for k, v in run["steps"].items():
            steps.setdefault(k, []).append(v)
    return {
        "parts": {k: med(v) for k, v in parts.items()},
        "steps": {k: med(v) for k, v in steps.items()},
    }


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "simulate": child_simulate,
    "raw": child_raw,
    "pipeline": child_pipeline,
    "replica_landing": child_replica_landing,
    "build_lake": child_build_lake,
    "chunk": child_chunk,
    "big_batch": child_big_batch,
    "memory": child_memory,
    "gold_refresh": child_gold_refresh,
    "gold_read": child_gold_read,
    "preingest": child_preingest,
    "run_summary": child_run_summary,
}


# =============================================================================== sections
class Work:
    """The run's scratch folder and the inputs shared between sections (built on demand)."""

    def __init__(self, root: Path, repeats: int, incremental_chunks: int) -> None:
        self.root, self.repeats, self.chunks = root, repeats, incremental_chunks
        self._template: Path | None = None
        self._lakes: dict[int, dict[str, Any]] = {}

    def template(self) -> Path:
        """Six simulated batches (one per unit): the source of replicas and big batches."""
        if self._template is None:
            d = self.root / "template"
            if not (d / "landing").is_dir():  # (a kept --workdir is reused)
                log("simulating the 6-batch template")
                run_child("simulate", out=str(d), batches=6)
            self._template = d / "landing"
        return self._template

    def lake(self, n: int) -> dict[str, Any]:
        """A lake of n batches (1 live + n - 1 replicas), ingested in bulk; gold built."""
        if n not in self._lakes:
            d = self.root / f"lake{n}"
            log(f"building the {n}-batch landing zone")
            t0 = time.perf_counter()
            info = run_child(
                "replica_landing",
                template=str(self.template()),
                out=str(d),
                batches=n,
                withheld=self.chunks,
                thin_min=THIN_MIN,
            )
            info["replicate_s"] = time.perf_counter() - t0
            log(f"ingesting the {n}-batch lake (bulk)")
            b = run_child("build_lake", landing=str(d / "landing"), lake_dir=str(d / "lake"))
            self._lakes[n] = {**info, "build": b, "dir": d}
            log(
                f"{n}-batch lake: bronze {b['bronze_s']:.0f} s, silver {b['silver_s']:.0f} s, "
                f"gold {b['gold_s']:.1f} s"
            )
        return self._lakes[n]


def section_ingest(w: Work) -> dict[str, Any]:
    d = w.root / "ingest"
    log("ingest: simulating 16 batches")
    sim = run_child("simulate", out=str(d), batches=16)
    landing = str(d / "landing")
    raws, pipes, tuned = [], [], []  # tuned: the raw copy with the lake's writer settings
    for i in range(w.repeats):
        raws.append(run_child("raw", landing=landing, table=str(d / f"raw{i}")))
        shutil.rmtree(d / f"raw{i}")
        pipes.append(run_child("pipeline", landing=landing, lake_dir=str(d / f"lake{i}")))
        shutil.rmtree(d / f"lake{i}")
        tuned.append(
            run_child("raw", landing=landing, table=str(d / f"rawl{i}"), lake_settings=True)
        )
        shutil.rmtree(d / f"rawl{i}")
        log(
            f"ingest rep {i + 1}: raw {raws[-1]['total_s']:.1f} s, "
            f"pipeline {pipes[-1]['total_s']:.1f} s"
        )
    shutil.rmtree(d)
    raw_s, pipe_s = med([r["total_s"] for r in raws]), med([p["total_s"] for p in pipes])
    rows = pipes[0]["rows"]
    assert raws[0]["rows"] == rows, (raws[0]["rows"], rows)
    return {
        "rows": rows,
        "files": pipes[0]["files"],
        "sim": sim,
        "raw_runs_s": [r["total_s"] for r in raws],
        "raw_s": raw_s,
        "raw_read_s": med([r["read_s"] for r in raws]),
        "raw_write_s": med([r["write_s"] for r in raws]),
        "pipe_runs_s": [p["total_s"] for p in pipes],
        "pipe_s": pipe_s,
        "pipe_cpu_s": med([p["cpu_s"] for p in pipes]),
        "raw_cpu_s": med([r["cpu_s"] for r in raws]),
        "raw_lake_settings_s": med([r["total_s"] for r in tuned]),
        "raw_lake_settings_cpu_s": med([r["cpu_s"] for r in tuned]),
        "handed_over": pipes[0]["handed_over"],
        "mes_s": med([p["mes_s"] for p in pipes]),
        "load": _load(),
        "pipe_rows_per_s": rows / pipe_s,
        "raw_rows_per_s": rows / raw_s,
        "rows_quarantined": pipes[0]["rows_quarantined"],
        "value": pipe_s / raw_s,
        "runs": [p["total_s"] / r["total_s"] for p, r in zip(pipes, raws, strict=True)],
    }


def section_incremental(w: Work) -> dict[str, Any]:
    small, big = w.lake(10), w.lake(1000)
    res: dict[int, list[dict[str, Any]]] = {10: [], 1000: []}
    for i in range(w.chunks):
        for n, lk in ((10, small), (1000, big)):
            r = run_child(
                "chunk",
                landing=str(lk["dir"] / "landing"),
                lake_dir=str(lk["dir"] / "lake"),
                pending=str(lk["dir"] / "pending"),
                rel=lk["pending"][i],
            )
            res[n].append(r)
            log(
                f"incremental chunk {i + 1}, {n} batches: {r['total_s']:.2f} s "
                f"(+{r['other_assets_s']:.2f} s other assets)"
            )
    m = {n: med([r["total_s"] for r in rs]) for n, rs in res.items()}
    return {
        "rows": res[10][0]["rows"],
        "thin_min": THIN_MIN,
        "lakes": {
            n: {k: lk[k] for k in ("replica_rows", "round_days", "replicate_s", "build")}
            for n, lk in ((10, small), (1000, big))
        },
        "runs_10_s": [r["total_s"] for r in res[10]],
        "runs_1000_s": [r["total_s"] for r in res[1000]],
        "median_10_s": m[10],
        "median_1000_s": m[1000],
        "other_10_s": med([r["other_assets_s"] for r in res[10]]),
        "other_1000_s": med([r["other_assets_s"] for r in res[1000]]),
        "value": m[1000] / m[10],
        "runs": [b["total_s"] / s["total_s"] for s, b in zip(res[10], res[1000], strict=True)],
    }


def section_memory(w: Work) -> dict[str, Any]:
    d = w.root / "memory"
    log("memory: writing one batch of 10,000,000 readings")
    big = run_child(
        "big_batch", template=str(w.template()), out=str(d / "landing"), seconds=500_000
    )
    runs = []
    for i in range(w.repeats):
        r = run_child("memory", landing=str(d / "landing"), lake_dir=str(d / f"lake{i}"))
        shutil.rmtree(d / f"lake{i}")
        runs.append(r)
        log(f"memory rep {i + 1}: peak {r['child_peak_rss_mb']:.0f} MB, {r['seconds']:.0f} s")
    shutil.rmtree(d)
    peaks = [r["child_peak_rss_mb"] for r in runs]
    return {
        "readings": big["readings"],
        "files": big["files"],
        "rows_valid": runs[0]["rows_valid"],
        "runs": peaks,
        "value": med(peaks),
        "max_mb": max(peaks),
        "baseline_rss_mb": med([r["baseline_rss_mb"] for r in runs]),
        "seconds": med([r["seconds"] for r in runs]),
    }


def section_gold(w: Work, refreshes: int = 20) -> dict[str, Any]:
    lk = w.lake(1000)
    lake_dir = str(lk["dir"] / "lake")
    ref = run_child("gold_refresh", lake_dir=lake_dir, times=refreshes)
    runs = [run_child("gold_read", lake_dir=lake_dir, warm=10) for _ in range(max(w.repeats, 5))]
    cold = [r["cold_lake_ms"] for r in runs]
    return {
        "rows": runs[0]["rows"],
        "cols": runs[0]["cols"],
        "gold_build_s": ref["build_s"],
        "version": ref["version"],
        "refreshes": refreshes,
        "runs": cold,
        "value": med(cold),
        "cold_pl_ms": med([r["cold_pl_ms"] for r in runs]),
        "warm_lake_ms": med([r["warm_lake_ms"] for r in runs]),
        "warm_pl_ms": med([r["warm_pl_ms"] for r in runs]),
    }


def _dagster_home(d: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    cfg["storage"]["sqlite"]["base_dir"] = str(d / "storage")
    cfg["local_artifact_storage"]["config"]["base_dir"] = str(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "dagster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d


def _visible(lake_dir: Path, rel: str) -> bool:
    import polars as pl
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(str(lake_dir / "silver" / "telemetry_log"))
    except TableNotFoundError:
        return False
    lf = pl.scan_delta(dt).filter(pl.col("source_file") == rel).select(pl.len())
    return bool(lf.collect().item())


def _kill_tree(proc: subprocess.Popen[bytes], marker: str) -> list[int]:
    """Stop the daemon's process group, then any process still carrying our DAGSTER_HOME."""
    with_marker = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                env = (p / "environ").read_bytes()
            except OSError:
                continue
            if f"DAGSTER_HOME={marker}".encode() in env.split(b"\0"):
                left.append(int(p.name))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with_marker += left
        if not left:
            break
        time.sleep(3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)
    return sorted(set(with_marker))


def section_sensor(w: Work, chunks: int, interval_s: int, timeout_s: float = 300) -> dict[str, Any]:
    d = w.root / "sensor"
    tmpl = w.template()
    unit, live = _template_batches(tmpl)[0]
    held = stage_live_batch(tmpl, d / "landing", d / "pending", unit, live, chunks + 1)
    u2, b2 = _template_batches(tmpl)[1]
    for src in ("mes", "lims", "telemetry"):
        shutil.copytree(tmpl / src / u2 / b2, d / "landing" / src / u2 / b2)
    log("sensor: pre-ingesting 2 batches")
    pre = run_child("preingest", landing=str(d / "landing"), lake_dir=str(d / "lake"))
    home = _dagster_home(d / "dagster_home")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PHARMA_LAKE_URI": str(d / "lake"),
        "PHARMA_LANDING_DIR": str(d / "landing"),
        "PHARMA_SENSOR_INTERVAL_S": str(interval_s),
    }
    daemon = Path(sys.executable).parent / "dagster-daemon"
    log_f = open(d / "daemon.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(daemon), "run", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        stdout=log_f,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lat: list[float] = []
    drops: list[tuple[float, float]] = []  # (landed, visible), epoch seconds
    warmup = None
    try:
        for i, rel in enumerate(held):
            t0, landed = time.monotonic(), time.time()
            deliver(d / "pending", d / "landing", rel)
            while not _visible(d / "lake", rel):
                if proc.poll() is not None:
                    raise RuntimeError(f"dagster-daemon exited; see {d / 'daemon.log'}")
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"{rel} not in silver after {timeout_s} s")
                time.sleep(0.25)
            dt = time.monotonic() - t0
            if i == 0:
                warmup = dt
                log(f"sensor warm-up chunk (daemon start-up included): {dt:.1f} s")
            else:
                lat.append(dt)
                drops.append((landed, time.time()))
                log(f"sensor chunk {i}: {dt:.1f} s")
        # let the runs in flight (checks, gold refresh) finish so that none is interrupted
        deadline, quiet = time.monotonic() + 120, 0
        while time.monotonic() < deadline and quiet < 3:
            quiet = 0 if _run_workers(str(home)) else quiet + 1
            time.sleep(2)
    finally:
        killed = _kill_tree(proc, str(home))
        log_f.close()
    summary = run_child("run_summary", dagster_home=str(home))
    for e in summary["errors"]:
        log(f"sensor: failed run: {e}")
    split = _latency_parts(drops, summary["ingest_runs"])
    return {
        "interval_s": interval_s,
        "chunks": chunks,
        "preingested": pre["batches"],
        "warmup_s": warmup,
        "runs": lat,
        "value": med(lat),
        "max_s": max(lat),
        "dagster_runs": summary["runs"],
        "run_errors": summary["errors"],
        **split,
        "stragglers_killed": len(killed),
    }


# =============================================================================== report
def _verdict(name: str, value: float) -> str:
    return "PASS" if value <= TARGETS[name][1] else "FAIL"


def rows_for_doc(res: dict[str, Any]) -> list[str]:
    """Markdown lines (table plus measurement details) for the sections in ``res``."""
    f = lambda xs, p=1: ", ".join(f"{x:.{p}f}" for x in xs)  # noqa: E731
    out = [
        "| # | what | measured (median) | runs | target | result |",
        "|---|---|---|---|---|---|",
    ]
    if "ingest" in res:
        r = res["ingest"]
        out.append(
            f"| 1 | ingestion telemetry landing -> bronze -> silver, {r['rows']:,} readings | "
            f"{r['pipe_rows_per_s']:,.0f} rows/s ({r['pipe_s']:.1f} s) vs raw "
            f"{r['raw_rows_per_s']:,.0f} rows/s ({r['raw_s']:.1f} s): ratio **{r['value']:.1f}** | "
            f"pipeline {f(r['pipe_runs_s'])} s; raw {f(r['raw_runs_s'])} s | ratio <= 3.0 | "
            f"{_verdict('ingest', r['value'])} |"
        )
    if "incremental" in res:
        r = res["incremental"]
        out.append(
            f"| 2 | one new chunk ({r['rows']:,} readings) landing -> bronze -> silver, "
            f"1,000 vs 10 batches | {r['median_1000_s']:.2f} s vs {r['median_10_s']:.2f} s: "
            f"ratio **{r['value']:.2f}** | 1,000: {f(r['runs_1000_s'], 2)} s; 10: "
            f"{f(r['runs_10_s'], 2)} s | ratio <= 1.5 | {_verdict('incremental', r['value'])} |"
        )
    if "memory" in res:
        r = res["memory"]
        out.append(
            f"| 3 | peak RSS ingesting one batch of {r['readings']:,} readings | "
            f"**{r['value']:,.0f} MB** ({r['seconds']:.0f} s) | {f(r['runs'], 0)} MB | "
            f"<= 2,048 MB | {_verdict('memory', r['value'])} |"
        )
    if "gold" in res:
        r = res["gold"]
        out.append(
            f"| 4 | read gold/batch_summary, {r['rows']:,} batches x {r['cols']} columns "
            f"(first read in a fresh process) | **{r['value']:.0f} ms** (warm: "
            f"{r['warm_lake_ms']:.0f} ms) | {f(r['runs'], 0)} ms | <= 200 ms | "
            f"{_verdict('gold', r['value'])} |"
        )
    if "sensor" in res:
        r = res["sensor"]
        out.append(
            f"| 5 | sensor latency: chunk landed -> rows in silver (interval {r['interval_s']} s) | "
            f"**{r['value']:.1f} s** (max {r['max_s']:.1f} s) | {f(r['runs'])} s | median <= 30 s | "
            f"{_verdict('sensor', r['value'])} |"
        )
    for name, err in res.get("errors", {}).items():
        out.append(f"| - | {name} | not measured: {err} | | | ERROR |")
    out.append("")
    if "ingest" in res:
        r = res["ingest"]
        out.append(
            f"- Ingestion: {r['files']} telemetry files of 16 simulated batches. Pipeline = "
            f"telemetry_ingest.ingest_telemetry, one pass ({r['handed_over']} files handed from "
            f"bronze to silver in memory), process CPU {r['pipe_cpu_s']:.1f} s (MES ingestion "
            f"and silver.build_batches before it: {r['mes_s']:.2f} s, not counted); raw = read "
            f"{r['raw_read_s']:.1f} s + write {r['raw_write_s']:.1f} s, CPU {r['raw_cpu_s']:.1f} s. "
            f"{r['rows_quarantined']:,} readings quarantined. Load average at the end: {r['load']}."
            f" CPU ratio {r['pipe_cpu_s'] / r['raw_cpu_s']:.1f}. Not in the target: the raw copy "
            f"written with the lake's Parquet settings took {r['raw_lake_settings_s']:.1f} s, CPU "
            f"{r['raw_lake_settings_cpu_s']:.1f} s (ratio "
            f"{r['pipe_s'] / r['raw_lake_settings_s']:.1f}, CPU "
            f"{r['pipe_cpu_s'] / r['raw_lake_settings_cpu_s']:.1f})."
        )
    if "incremental" in res:
        r = res["incremental"]
        b = {n: x["build"] for n, x in r["lakes"].items()}
        t = b[1000]["tables"]
        out.append(
            f"- Incremental (one pass, bronze and silver in one step; 10 -> 1,000 batches): the "
            f"rest of the partition's run (MES/LIMS bronze, batches, lab results) "
            f"{r['other_10_s']:.2f} -> {r['other_1000_s']:.2f} s, not counted. The 1,000-batch "
            f"lake ({r['lakes'][1000]['replica_rows']:,} replica readings, telemetry thinned to "
            f"1/{r['thin_min']} min) took {r['lakes'][1000]['replicate_s']:.0f} s to land and "
            f"{b[1000]['bronze_s']:.0f} s MES/LIMS bronze + {b[1000]['silver_s']:.0f} s telemetry "
            f"bronze and silver in one pass + {b[1000]['gold_s']:.1f} s gold to ingest; its silver/telemetry is at version "
            f"{t['silver/telemetry']['version']} with {t['silver/telemetry']['files']} files, "
            f"bronze/ingest_log at version {t['bronze/ingest_log']['version']} with "
            f"{t['bronze/ingest_log']['files']} files."
        )
    if "memory" in res:
        r = res["memory"]
        out.append(
            f"- Memory: {r['files']} one-hour chunks at 1-second sampling; the interpreter with "
            f"its imports holds {r['baseline_rss_mb']:.0f} MB (bronze and silver in one pass: "
            f"no separate bronze peak)."
        )
    if "gold" in res:
        r = res["gold"]
        out.append(
            f"- Gold: the 1,000-batch lake's gold was rebuilt {r['refreshes']} more times first "
            f"(as the refresh sensor does; gold.build_gold took {r['gold_build_s']:.1f} s each), "
            f"so batch_summary is at version {r['version']}. Lake.read, first read in a fresh "
            f"process, median of {len(r['runs'])} processes; pl.read_delta first read "
            f"{r['cold_pl_ms']:.0f} ms, warm {r['warm_pl_ms']:.0f} ms."
        )
    if "sensor" in res:
        r = res["sensor"]
        out.append(
            f"- Sensor: {len(r['runs'])} chunks dropped one at a time after a warm-up chunk "
            f"({r['warmup_s']:.0f} s, daemon start-up included, not counted); Dagster runs: "
            f"{json.dumps(r['dagster_runs'])}. Median split of a chunk's latency: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items())
            + "; ingestion run steps (s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
            + "."
        )
    return out


def main(
    only: list[str] | None = None,
    repeats: int = 3,
    sensor_chunks: int = 6,
    sensor_interval: int | None = None,
    workdir: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    only = list(only or SECTIONS)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="pharma-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    interval = sensor_interval or int(os.environ.get("PHARMA_SENSOR_INTERVAL_S", "15"))
    w = Work(root, repeats, max(repeats, 5))
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        for s in SECTIONS:
            if s not in only:
                continue
            ts = time.perf_counter()
            try:
                if s == "sensor":
                    res[s] = section_sensor(w, sensor_chunks, interval)
                else:
                    res[s] = globals()[f"section_{s}"](w)
            except Exception as e:  # report the others; the failure goes into the table
                log(f"{s} failed: {type(e).__name__}: {e}")
                res.setdefault("errors", {})[s] = f"{type(e).__name__}: {e}"
                continue
            res[s]["section_s"] = time.perf_counter() - ts
            log(
                f"{s}: {TARGETS[s][0]} = {res[s]['value']:.2f} ({_verdict(s, res[s]['value'])}), "
                f"section took {res[s]['section_s']:.0f} s"
            )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    res["total_s"] = time.perf_counter() - t0
    return res


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=SECTIONS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sensor-chunks", type=int, default=6)
    ap.add_argument(
        "--sensor-interval",
        type=int,
        default=None,
        help="PHARMA_SENSOR_INTERVAL_S for the daemon (default: env or 15)",
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "ARGS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        name, args = a.child
        print(json.dumps(CHILDREN[name](**json.loads(args)), default=str), flush=True)
        return
    res = main(a.only, a.repeats, a.sensor_chunks, a.sensor_interval, a.workdir, a.keep)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    print("\n".join(rows_for_doc(res)))


if __name__ == "__main__":
    cli()
