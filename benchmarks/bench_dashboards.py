"""Dashboard benchmark: every page's script on a lake with 1,000 batches in gold.

How the 1,000-batch lake is made (SYNTHETIC, in a temporary folder):

1. The dashboard test plant (``pharma_assets_tests/dashboards/fixture_lake.py``: 2 units,
   6 history batches plus one running live batch, seed 7) is simulated and pushed through
   bronze/silver/gold with the real pipeline functions.
2. Its batches are replicated under new ids onto 10 units (``BR01``..``BR10``, 100 batches
   each, ``<unit>-B<seq>``): batch k copies fixture batch ``k mod 6`` (history batches), every
   timestamp shifted so each unit runs its batches back to back; the last batch of units
   BR01-BR05 is a copy of the running fixture batch, so 5 units are running. Replicated
   tables: silver/batches, silver/batch_phases, silver/lab_results, gold/batch_summary,
   gold/cpp_excursions; gold/plant_kpis is recomputed with ``pharma_assets.lake.gold
   .plant_kpis`` and gold/unit_status is rebuilt from the fixture's running and idle rows.
   Lineage text columns (``source_file``, ``material_lots`` JSON) still name the fixture
   batch. silver/batch_timeline is replicated for the running batches and 45 others only
   (a minute timeline per batch is ~20k rows x 26 columns; 1,000 would be 20 M rows): the
   pages read one or a few batches of it by partition filter.
3. The ML gold tables are written over the 1,000 batches by the fixture's
   ``write_ml_gold`` (contract shape, synthetic scores): ~0.7 M equipment-health hours,
   ~0.3 M MSPC hours, the golden batch from the replicated complete timelines.

Measured per page, in one process (Streamlit AppTest):

- cold: a new AppTest on that page with every Streamlit cache cleared (``st.cache_data``
  and ``st.cache_resource``): the full script incl. the Delta reads; median and p95 of
  ``--runs`` runs (target p95 <= 1.5 s). Python modules stay imported (each page is run
  once before measuring), as in a running Streamlit server;
- cached rerun: ``at.run()`` again on the same session (only version checks, cached
  frames, building the figures and tables): median and p95 (target <= 200 ms);
- MLflow: ``PHARMA_MLFLOW_URI`` points at a store that does not exist, so the models page
  takes its versions from gold/model_performance (the registry query is not measured);
- raw read: ``pl.read_delta`` of the tables the page reads, in full, same process, median;
  the ratio = cold median / raw-read median.

Run: ``python -m benchmarks.bench_dashboards [--runs 10] [--reruns 20] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from pharma_assets.lake import gold
from pharma_assets.lake.storage import Lake

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboards" / "app.py")
N_BATCHES = 1000
N_UNITS = 10
RUNNING_UNITS = 5
TIMELINE_EXTRA = 45
TARGET_P95_S = 1.5
TARGET_RERUN_S = 0.2

# tables each page reads (for the raw-read comparison)
PAGE_TABLES: dict[str, list[tuple[str, str]]] = {
    "overview": [
        ("gold", "unit_status"),
        ("gold", "batch_summary"),
        ("gold", "plant_kpis"),
        ("gold", "cpp_excursions"),
        ("gold", "equipment_health"),
        ("gold", "contamination_risk"),
        ("gold", "mspc_scores"),
    ],
    "bioreactor": [
        ("silver", "batches"),
        ("silver", "batch_timeline"),
        ("silver", "batch_phases"),
        ("gold", "cpp_excursions"),
        ("silver", "lab_results"),
        ("gold", "golden_batch"),
    ],
    "batch_quality": [("gold", "batch_summary"), ("silver", "batch_timeline")],
    "equipment": [("gold", "equipment_health")],
    "monitoring": [
        ("gold", "contamination_risk"),
        ("gold", "mspc_scores"),
        ("silver", "batches"),
        ("gold", "mspc_alarms"),
    ],
    "models": [("gold", "model_performance")],
}


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def _replicate(df: pl.DataFrame, mapping: pl.DataFrame) -> pl.DataFrame:
    """Rows of the source batches, once per new batch: ids replaced, timestamps shifted."""
    out = df.join(mapping, left_on="batch_id", right_on="src", how="inner")
    ts_cols = [c for c, t in df.schema.items() if isinstance(t, pl.Datetime)]
    exprs: list[pl.Expr] = [pl.col(c) + pl.col("_shift") for c in ts_cols]
    exprs.append(pl.col("new").alias("batch_id"))
    if "unit_id" in df.columns:
        exprs.append(pl.col("_unit").alias("unit_id"))
    if "sample_id" in df.columns:
        exprs.append(
            pl.concat_str(pl.col("new"), pl.col("sample_id").str.slice(10)).alias("sample_id")
        )
    if "excursion_id" in df.columns:
        exprs.append(
            pl.concat_str(pl.col("new"), pl.col("excursion_id").str.slice(10)).alias("excursion_id")
        )
    if "inoculum_lot" in df.columns:
        exprs.append(pl.concat_str(pl.lit("INO-"), pl.col("new")).alias("inoculum_lot"))
    return out.with_columns(exprs).select(df.columns)


def build_big_lake(root: Path) -> Lake:
    """The 1,000-batch lake described in the module docstring."""
    from pharma_assets_tests.dashboards.fixture_lake import build_fixture_lake, write_ml_gold

    small = build_fixture_lake(root / "small", with_ml=False)
    bs = small.read("gold", "batch_summary")
    assert bs is not None
    hist = bs.filter(pl.col("status") != "running").sort("start_ts")
    run_row = bs.filter(pl.col("status") == "running").row(0, named=True)
    hist_rows = list(hist.iter_rows(named=True))
    per_unit = N_BATCHES // N_UNITS
    base = hist_rows[0]["start_ts"] - timedelta(days=15 * per_unit)
    rows = []
    for u in range(N_UNITS):
        unit = f"BR{u + 1:02d}"
        t = base + timedelta(hours=7 * u)
        for seq in range(1, per_unit + 1):
            last = seq == per_unit
            src = (
                run_row
                if (last and u < RUNNING_UNITS)
                else hist_rows[(u * per_unit + seq) % len(hist_rows)]
            )
            if src is run_row:
                t = run_row["start_ts"] + timedelta(hours=7 * u)
            rows.append(
                {
                    "new": f"{unit}-B{seq:04d}",
                    "src": src["batch_id"],
                    "_unit": unit,
                    "_shift": t - src["start_ts"],
                }
            )
            dur = (
                (src["end_ts"] - src["start_ts"])
                if src["end_ts"] is not None
                else timedelta(days=14)
            )
            t = t + dur + timedelta(hours=20)
    mapping = pl.DataFrame(
        rows,
        schema={
            "new": pl.String,
            "src": pl.String,
            "_unit": pl.String,
            "_shift": pl.Duration("us"),
        },
    )
    big = Lake.at(root / "lake")
    for layer, name in (
        ("silver", "batches"),
        ("silver", "batch_phases"),
        ("silver", "lab_results"),
        ("gold", "batch_summary"),
        ("gold", "cpp_excursions"),
    ):
        src_df = small.read(layer, name)
        assert src_df is not None
        big.overwrite(layer, name, _replicate(src_df, mapping))
    summary = big.read("gold", "batch_summary")
    assert summary is not None
    big.overwrite("gold", "plant_kpis", gold.plant_kpis(summary))
    # unit status: running units from the fixture's running row, the others idle
    us = small.read("gold", "unit_status")
    assert us is not None
    run_t = us.filter(pl.col("state") == "running")
    idle_t = us.filter(pl.col("state") == "idle")
    newest = summary.sort("start_ts").group_by("unit_id").last()
    parts = []
    for r in newest.iter_rows(named=True):
        tmpl = run_t if r["status"] == "running" else idle_t
        shift = r["start_ts"] - tmpl["start_ts"][0] if r["status"] == "running" else timedelta(0)
        parts.append(
            tmpl.with_columns(
                unit_id=pl.lit(r["unit_id"]),
                last_batch_id=pl.lit(r["batch_id"]),
                current_batch_id=pl.lit(
                    r["batch_id"] if r["status"] == "running" else None, pl.String
                ),
                start_ts=pl.col("start_ts") + shift,
                last_reading_ts=pl.col("last_reading_ts") + shift,
                last_batch_status=pl.lit(r["status"]),
            )
        )
    big.overwrite("gold", "unit_status", pl.concat(parts).sort("unit_id"))
    # timelines: running batches and TIMELINE_EXTRA others (partitioned like silver)
    keep = mapping.filter(pl.col("src") == run_row["batch_id"])
    others = mapping.filter(pl.col("src") != run_row["batch_id"]).tail(TIMELINE_EXTRA)
    tl_src = small.read("silver", "batch_timeline")
    assert tl_src is not None
    for m in (keep, others):
        big.append("silver", "batch_timeline", _replicate(tl_src, m), partition_by=["batch_id"])
    write_ml_gold(big)
    return big


def _clear_caches() -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


BENCH_USER, BENCH_PASSWORD = "bench.viewer", "Bench-viewer-2026"


def _viewer(lake: Lake) -> None:
    """A read-only account to log in with (the pages need a session); the audit key goes to a
    folder beside the lake unless PHARMA_GXP_HOME is set."""
    from pharma_assets.compliance import users

    os.environ.setdefault("PHARMA_GXP_HOME", str(Path(lake.root).parent / "gxp_home"))
    if users.get_user(lake, "admin") is None:
        users.create_user(
            lake,
            "admin",
            "Bench Admin",
            "admin",
            "Bench-admin-2026!",
            "system:bench",
            "benchmark account",
            bootstrap=True,
        )
    if users.get_user(lake, BENCH_USER) is None:
        users.create_user(
            lake, BENCH_USER, "Bench Viewer", "viewer", BENCH_PASSWORD, "admin", "benchmark account"
        )


def _apptest(page: str) -> Any:
    """The app on ``page`` with a fresh viewer session (login is not part of the timing)."""
    from streamlit.testing.v1 import AppTest

    from pharma_assets.compliance import users

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["gxp_session"] = users.login(
        Lake.at(os.environ["PHARMA_LAKE_URI"]), BENCH_USER, BENCH_PASSWORD
    )
    at.switch_page(f"app_pages/{page}.py")
    return at


def measure(lake: Lake, runs: int, reruns: int) -> list[dict[str, Any]]:
    os.environ["PHARMA_LAKE_URI"] = lake.root
    # no MLflow store: the models page shows versions from gold/model_performance
    os.environ["PHARMA_MLFLOW_URI"] = (
        f"sqlite:///{Path(lake.root).parent / 'no-mlflow' / 'mlflow.db'}"
    )
    _viewer(lake)
    # warm imports once per page (plotly, polars, deltalake, streamlit runtime, page modules)
    for page in PAGE_TABLES:
        _apptest(page).run()
    out = []
    for page, tables in PAGE_TABLES.items():
        cold = []
        for _ in range(runs):
            _clear_caches()
            at = _apptest(page)
            t0 = time.perf_counter()
            at.run()
            cold.append(time.perf_counter() - t0)
            assert not at.exception, [e.value for e in at.exception]
        warm = []
        for _ in range(reruns):
            t0 = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - t0)
        raw = []
        for _ in range(max(3, runs // 2)):
            t0 = time.perf_counter()
            for layer, name in tables:
                pl.read_delta(lake.uri(layer, name))
            raw.append(time.perf_counter() - t0)
        out.append(
            {
                "page": page,
                "cold_median_s": statistics.median(cold),
                "cold_p95_s": _p95(cold),
                "rerun_median_s": statistics.median(warm),
                "rerun_p95_s": _p95(warm),
                "raw_read_median_s": statistics.median(raw),
                "ratio_cold_to_raw": statistics.median(cold) / statistics.median(raw),
                "ratio_rerun_to_raw": statistics.median(warm) / statistics.median(raw),
            }
        )
    return out


def rows_for_doc(res: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines = [
        f"Dashboards: {meta['batches']} batches in gold ({meta['rows']}), {platform.machine()}, "
        f"Python {platform.python_version()}; cold = new session, all Streamlit caches cleared "
        f"({meta['runs']} runs); rerun = same session ({meta['reruns']} runs). "
        f"Targets: cold p95 <= {TARGET_P95_S} s, rerun <= {TARGET_RERUN_S * 1000:.0f} ms.",
        "",
        "| page | cold median s | cold p95 s | rerun median ms | rerun p95 ms | raw polars read s | cold / raw | pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        ok = r["cold_p95_s"] <= TARGET_P95_S and r["rerun_p95_s"] <= TARGET_RERUN_S
        lines.append(
            f"| {r['page']} | {r['cold_median_s']:.2f} | {r['cold_p95_s']:.2f} | "
            f"{r['rerun_median_s'] * 1000:.0f} | {r['rerun_p95_s'] * 1000:.0f} | "
            f"{r['raw_read_median_s']:.3f} | {r['ratio_cold_to_raw']:.1f} | {'PASS' if ok else 'FAIL'} |"
        )
    return lines


def main(runs: int = 10, reruns: int = 20, keep: Path | None = None) -> dict[str, Any]:
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench_dash_"))
    try:
        t0 = time.perf_counter()
        lake = Lake.at(tmp / "lake")
        if lake.version("gold", "batch_summary") is None:
            lake = build_big_lake(tmp)
        build_s = time.perf_counter() - t0
        counts = {
            n: pl.scan_delta(lake.uri(layer, n)).select(pl.len()).collect().item()
            for layer, n in (
                ("gold", "batch_summary"),
                ("gold", "equipment_health"),
                ("gold", "mspc_scores"),
                ("silver", "lab_results"),
                ("silver", "batch_timeline"),
            )
        }
        res = measure(lake, runs, reruns)
        meta = {
            "batches": counts["batch_summary"],
            "runs": runs,
            "reruns": reruns,
            "build_s": build_s,
            "rows": ", ".join(f"{k} {v:,} rows" for k, v in counts.items()),
        }
        return {"pages": res, "meta": meta}
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--reruns", type=int, default=20)
    ap.add_argument("--keep", type=Path, default=None, help="build (or reuse) the lake here")
    a = ap.parse_args()
    r = main(a.runs, a.reruns, a.keep)
    print(f"lake built in {r['meta']['build_s']:.0f} s")
    print("\n".join(rows_for_doc(r["pages"], r["meta"])))
