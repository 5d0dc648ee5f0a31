"""Peak memory of ingesting ONE large telemetry file (issue 18): landing -> bronze -> silver.

For each size (1 M, 10 M, 30 M readings by default) a fresh child process ingests a landing
zone holding one batch whose telemetry is a single Parquet file of that many rows, then the
parent reads the child's own peak RSS (``ru_maxrss`` from ``os.wait4``). The target is a
flat peak of at most 2 GB whatever the file's size.

How the input is made: a one-batch simulation (1 unit, seed 42) is the template; its
readings are interpolated onto an even time grid over the batch's span (20 tags per
timestamp, white noise of half the step-to-step spread of each tag, clipped to the tag's
observed range) and written as one file with ``pyarrow.parquet.ParquetWriter`` in row groups
of 1 M rows (the generator itself never holds the whole file), with the batch's MES file.

``python -m benchmarks.bench_memory --rows 1000000 --rows 10000000`` runs some sizes;
``python -m benchmarks.run_all --only memory`` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED = 42
START = datetime(2026, 1, 5, tzinfo=UTC)
SIZES = (1_000_000, 10_000_000, 30_000_000)
TARGET_MB = 2048.0


def log(msg: str) -> None:
    print(f"[bench_memory {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def run_child(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``--child name`` in a fresh interpreter; its JSON result plus its peak RSS (MB)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", name, json.dumps(kwargs)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"child {name} failed with exit code {code}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["child_peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# =============================================================================== children
def child_template(out: str) -> dict[str, Any]:
    from pharma_assets.twin.config import load_plant, load_recipes
    from pharma_assets.twin.history import simulate_history

    r = simulate_history(
        load_plant().with_units(1),
        load_recipes(),
        1,
        SEED,
        Path(out) / "landing",
        truth_out=Path(out) / "truth",
        start=START,
    )
    return {"files": r.files_written, "readings": r.readings_written}


def child_one_file(template: str, out: str, rows: int) -> dict[str, Any]:
    """A landing zone of one batch whose telemetry is ONE Parquet file of ``rows`` readings."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pharma_assets.twin.config import load_plant
    from pharma_assets.twin.landing import QUALITY_CODES, chunk_path, quality_codes

    src, dst = Path(template), Path(out)
    unit = next((src / "mes").iterdir()).name
    bid = next((src / "mes" / unit).iterdir()).name
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
    steps = -(-rows // len(tags))
    step_us = max(1, int((t_src[-1] - t_src[0]) // steps))
    rng = np.random.default_rng(SEED)
    curves = []
    for tag in tags:
        y = wide[tag].to_numpy().astype(np.float64)
        ok = np.isfinite(y)
        curves.append(
            (t_src[ok], y[ok], 0.5 * float(np.std(np.diff(y[ok]))), y[ok].min(), y[ok].max())
        )
    t0_us = int(t_src[0])
    path = chunk_path(
        dst, "telemetry", unit, bid, datetime.fromtimestamp(t0_us / 1e6, UTC), 1, "parquet"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    per_group = 1_000_000 // len(tags)
    written = 0
    writer: pq.ParquetWriter | None = None
    for k in range(0, steps, per_group):
        n = min(per_group, steps - k)
        ts_us = t0_us + (k + np.arange(n, dtype=np.int64)) * step_us
        values = np.empty((n, len(tags)))
        for j, (tx, y, sd, lo, hi) in enumerate(curves):
            values[:, j] = np.clip(
                np.interp(ts_us.astype(np.float64), tx, y) + rng.normal(0.0, sd, n), lo, hi
            )
        quality = quality_codes(rng, values.shape).ravel()
        keep = min(n * len(tags), rows - written)
        tag_idx = np.tile(np.arange(len(tags), dtype=np.int32), n)[:keep]
        const = np.zeros(keep, dtype=np.int32)
        table = pa.table(
            {
                "ts": pa.array(
                    np.repeat(ts_us, len(tags))[:keep], type=pa.timestamp("us", tz="UTC")
                ),
                "site_id": pa.DictionaryArray.from_arrays(const, pa.array([site])),
                "unit_id": pa.DictionaryArray.from_arrays(const, pa.array([unit])),
                "batch_id": pa.DictionaryArray.from_arrays(const, pa.array([bid])),
                "tag": pa.DictionaryArray.from_arrays(tag_idx, pa.array(tags)),
                "value": pa.array(values.ravel()[:keep]),
                "uom": pa.DictionaryArray.from_arrays(tag_idx, pa.array(uoms)),
                "quality": pa.DictionaryArray.from_arrays(
                    quality[:keep].astype(np.int32), pa.array(QUALITY_CODES)
                ),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table)
        written += keep
    assert writer is not None
    writer.close()
    os.replace(tmp, path)
    for p in (src / "mes" / unit / bid).iterdir():
        (dst / "mes" / unit / bid).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst / "mes" / unit / bid / p.name)
    return {"batch_id": bid, "rows": written, "bytes": path.stat().st_size, "step_us": step_us}


def child_ingest(landing: str, lake_dir: str) -> dict[str, Any]:
    """MES -> batches, then the one telemetry file -> bronze -> silver (timeline, stats, ...)."""
    from pharma_assets.lake import bronze, silver
    from pharma_assets.lake.landing_scan import scan_landing
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake

    base = _hwm_mb()
    lake, spec = Lake.at(lake_dir), load_spec()
    files = scan_landing(landing)
    bronze.ingest_files(lake, landing, "mes", [f for f in files if f.source == "mes"], "mem")
    silver.build_batches(lake)
    tel = [f for f in files if f.source == "telemetry"]
    t0 = time.perf_counter()
    rep = bronze.ingest_files(lake, landing, "telemetry", tel, "mem")
    t1 = time.perf_counter()
    hwm_bronze = _hwm_mb()
    srep = silver.process_telemetry(
        lake, sorted({f.batch_id for f in tel if f.batch_id}), spec, "mem"
    )
    t2 = time.perf_counter()
    return {
        "rows": rep.rows_accepted,
        "files_quarantined": rep.files_quarantined,
        "rows_valid": srep.rows_valid,
        "rows_quarantined": srep.rows_quarantined,
        "bronze_s": t1 - t0,
        "silver_s": t2 - t1,
        "baseline_mb": base,
        "hwm_after_bronze_mb": hwm_bronze,
        "hwm_mb": _hwm_mb(),
    }


CHILDREN = {"template": child_template, "one_file": child_one_file, "ingest": child_ingest}


# =============================================================================== parent
def main(
    sizes: tuple[int, ...] = SIZES, workdir: str | None = None, keep: bool = False
) -> dict[str, Any]:
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="pharma-bench-mem-"))
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"sizes": [], "load_before": os.getloadavg()}
    try:
        log("simulating the one-batch template")
        run_child("template", out=str(root / "template"))
        for rows in sizes:
            d = root / f"r{rows}"
            log(f"writing one telemetry file of {rows:,} readings")
            made = run_child(
                "one_file",
                template=str(root / "template" / "landing"),
                out=str(d / "landing"),
                rows=rows,
            )
            log(f"ingesting it ({made['bytes'] / 1e6:.0f} MB)")
            r = run_child("ingest", landing=str(d / "landing"), lake_dir=str(d / "lake"))
            r.update(file_rows=made["rows"], file_mb=made["bytes"] / 1e6)
            log(
                f"{rows:,} rows: peak {r['child_peak_rss_mb']:.0f} MB (after bronze "
                f"{r['hwm_after_bronze_mb']:.0f}), bronze {r['bronze_s']:.0f} s, "
                f"silver {r['silver_s']:.0f} s"
            )
            out["sizes"].append(r)
            shutil.rmtree(d, ignore_errors=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def rows_for_doc(res: dict[str, Any]) -> list[str]:
    lines = [
        "| readings in the file | file MB | peak RSS MB (bronze / total) | bronze s | silver s | "
        "valid / quarantined rows | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["sizes"]:
        ok = "met" if r["child_peak_rss_mb"] <= TARGET_MB else "NOT met"
        lines.append(
            f"| {r['file_rows']:,} | {r['file_mb']:.0f} | {r['hwm_after_bronze_mb']:,.0f} / "
            f"{r['child_peak_rss_mb']:,.0f} | {r['bronze_s']:.0f} | {r['silver_s']:.0f} | "
            f"{r['rows_valid']:,} / {r['rows_quarantined']:,} | <= {TARGET_MB:,.0f} MB: {ok} |"
        )
    lb, la = res["load_before"], res["load_after"]
    lines += [
        "",
        f"Load average (1/5/15 min) before: {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}; "
        f"after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}.",
    ]
    return lines


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, action="append", help="file sizes (default 1M, 10M, 30M)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, metavar=("NAME", "ARGS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        name, args = a.child
        print(json.dumps(CHILDREN[name](**json.loads(args)), default=str), flush=True)
        return
    res = main(tuple(a.rows or SIZES), a.workdir, a.keep)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    print("\n".join(rows_for_doc(res)))


if __name__ == "__main__":
    cli()
