"""The twin back-test on a lake's historical batches next to the XGBoost quality forecasts.

``python -m benchmarks.bench_optimise --lake-backtest LAKE [--mlflow URI]`` (or this module
with ``LAKE``): the lake must hold gold/model_performance from ``pharma-twin train`` (MLflow
at ``--mlflow`` or ``$PHARMA_MLFLOW_URI``). Prints the table (R², MAE, 80 % / 90 % interval
coverage, n per method, horizon and target), the load and the wall time; the per-batch
predictions go to ``--out`` (parquet) when given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime

import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.optimise import lake_backtest as lb


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def run(lake_uri: str, mlflow_uri: str | None = None, n_members: int = 50) -> dict:
    lake = Lake.at(lake_uri)
    t0 = time.perf_counter()
    load_before = _load()
    xgb = lb.xgb_holdout_from_registry(lake, uri=mlflow_uri)

    def progress(stage: str, i: int, n: int) -> None:
        if i == n or i % 10 == 0:
            print(f"  {stage}: {i}/{n} batches", file=sys.stderr, flush=True)

    skipped: dict[str, str] = {}
    rows = lb.lake_backtest(lake, xgb, n_members=n_members, progress=progress, skipped=skipped)
    return {
        "rows": rows,
        "table": lb.metrics(rows),
        "table_common": lb.metrics(lb.common_batches(rows)),
        "seconds": time.perf_counter() - t0,
        "load_before": load_before,
        "load_after": _load(),
        "measured_at": datetime.now(UTC),
        "n_held_out": len(lb.held_out_ids(xgb)),
        "skipped": skipped,
    }


def markdown(res: dict) -> list[str]:
    unit = {"final_titer_g_l": "g/L", "product_mass_kg": "kg"}
    lines = [
        f"Measured {res['measured_at']:%Y-%m-%d %H:%M} UTC, {res['n_held_out']} held-out "
        f"batches, {res['seconds']:.0f} s, load average {res['load_before']} -> "
        f"{res['load_after']}.",
        "",
        "| target | horizon | method | n | R² | MAE | 80 % coverage | 90 % coverage |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(v: float, fmt: str) -> str:
        return "–" if v is None or v != v else format(v, fmt)

    for r in res["table"].iter_rows(named=True):
        lines.append(
            f"| {r['target']} | {r['horizon']} | {r['method']} | {r['n']} | {f(r['r2'], '.3f')} "
            f"| {f(r['mae'], '.3f')} {unit[r['target']]} | {f(r['coverage_80'], '.2f')} "
            f"| {f(r['coverage_90'], '.2f')} |"
        )
    if res["skipped"]:
        lines += ["", "On the batches every method forecast:", "", *lines[2:4]]
        for r in res["table_common"].iter_rows(named=True):
            lines.append(
                f"| {r['target']} | {r['horizon']} | {r['method']} | {r['n']} "
                f"| {f(r['r2'], '.3f')} | {f(r['mae'], '.3f')} {unit[r['target']]} "
                f"| {f(r['coverage_80'], '.2f')} | {f(r['coverage_90'], '.2f')} |"
            )
    for bid, why in sorted(res["skipped"].items()):
        lines.append(f"\nnot calibrated (twin and hybrids leave it out): {bid}: {why}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lake")
    ap.add_argument("--mlflow", default=None)
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the per-batch predictions (parquet)")
    a = ap.parse_args(argv)
    res = run(a.lake, a.mlflow, a.members)
    if a.out:
        res["rows"].write_parquet(a.out)
    with pl.Config(tbl_rows=100):
        print("\n".join(markdown(res)))


if __name__ == "__main__":
    main()
