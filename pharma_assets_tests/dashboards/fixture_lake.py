"""A small fixture plant for the dashboard tests and benchmark.

``build_fixture_lake`` simulates 2 units x 3 history batches (seed 7), then runs the live
simulator (no sleeping) for ``live_hours`` of process time just after the history, so the first
unit has one *running* batch whose telemetry has partly landed (the last unit's live batch
is dropped so that one unit is idle). Everything is pushed through
bronze, silver and gold with the plain-Python lake functions (as
``pharma_assets_tests/lake/conftest.py::ingest_all`` does).

``write_ml_gold`` writes the ML gold tables in the shape of the models contract
(/tmp/pt/ml_contract.md, docs/dashboards.md) when the real ``ml`` group is not available:
the scores are SYNTHETIC (seeded functions of run hours and elapsed time), only their shape
and their relations (health = 100 * (1 - p), alarm = p >= threshold, ...) are real. The
golden-batch envelope is computed for real from silver/batch_timeline of complete batches.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from pharma_assets.lake import bronze, gold, silver
from pharma_assets.lake.landing_scan import SOURCES, files_for_source, scan_landing
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import UTC_US, Lake
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history
from pharma_assets.twin.live import run_live
from pharma_assets.twin.plant import plan_history

SEED = 7
UNITS = 2
HISTORY_BATCHES = 6  # 3 per unit
ENVELOPE_TAGS = ("temperature_c", "ph", "dissolved_oxygen_pct", "agitation_rpm")


def ingest_all(lake: Lake, landing: Path, run_id: str = "dash-fixture") -> dict[str, int]:
    """Everything landed -> bronze -> silver -> gold, in dependency order."""
    spec = load_spec()
    files = scan_landing(landing)
    for src in (*SOURCES, "unroutable"):
        fs = (
            files_for_source(landing, src)
            if src in ("cmms", "unroutable")
            else [f for f in files if f.source == src]
        )
        bronze.ingest_files(lake, landing, src, fs, run_id)
    silver.build_batches(lake)
    silver.build_lab_results(lake, spec)
    silver.build_maintenance(lake)
    batch_ids = sorted({f.batch_id for f in files if f.batch_id})
    silver.process_telemetry(lake, batch_ids, spec, run_id)
    return gold.build_gold(lake, spec)


def build_fixture_lake(root: Path, live_hours: float = 30.0, with_ml: bool = True) -> Lake:
    """Simulate, ingest and (optionally) add ML gold tables; returns the Lake at root/lake."""
    root = Path(root)
    plant = load_plant().with_units(UNITS)
    recipes = load_recipes()
    landing = root / "landing"
    # live batches start at a UTC midnight and their live_hours must be fully in the past
    # (the live twin never writes the future: it would wait for the wall clock). That is
    # yesterday 00:00, unless it is too early in the day for live_hours since then: then the
    # day before. The history ends before that midnight (the planner's own placement when
    # it is yesterday's, else planned one day earlier).
    now = datetime.now(UTC)
    live_start = (now - timedelta(hours=live_hours + 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    history_start = None
    if live_start < now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1):
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        plan = plan_history(plant, recipes, HISTORY_BATCHES, SEED, start=epoch)
        span_h = max((b.start - epoch).total_seconds() / 3600 + b.end_h for b in plan.batches)
        history_start = (live_start - timedelta(hours=span_h)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
    simulate_history(
        plant,
        recipes,
        HISTORY_BATCHES,
        seed=SEED,
        out=landing,
        truth_out=root / "truth",
        start=history_start,
    )
    run_live(
        plant,
        recipes,
        landing,
        seed=SEED,
        speed=0,
        hours=live_hours,
        batches_per_unit=1,
        start=live_start,
        sleep=lambda _s: None,
    )
    # keep one unit idle: drop the live batch of the last unit (files this function wrote)
    idle = plant.units[-1].unit_id
    for src in ("telemetry", "mes", "lims"):
        for d in (landing / src / idle).glob(f"{idle}-B{HISTORY_BATCHES // UNITS + 1:04d}"):
            shutil.rmtree(d)
    lake = Lake.at(root / "lake")
    ingest_all(lake, landing)
    if with_ml:
        write_ml_gold(lake)
    return lake


def _latest_reading(lake: Lake) -> pl.DataFrame:
    """Last reading time of each running batch (gold/unit_status)."""
    us = lake.read("gold", "unit_status", ["current_batch_id", "last_reading_ts"])
    assert us is not None
    return us.filter(pl.col("current_batch_id").is_not_null()).select(
        batch_id=pl.col("current_batch_id"), last_ts=pl.col("last_reading_ts")
    )


def write_ml_gold(lake: Lake, seed: int = SEED, scored_at: datetime | None = None) -> None:
    """Write the ML gold tables (contract shape, synthetic scores; see the module doc)."""
    rng = np.random.default_rng(seed)
    scored = scored_at or datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    summary = lake.read("gold", "batch_summary")
    assert summary is not None
    last = _latest_reading(lake)
    b = summary.join(last, on="batch_id", how="left").sort("start_ts")
    b = b.with_columns(stop=pl.coalesce("end_ts", "last_ts"))

    # ---- equipment health: hourly per critical item over each batch's run time
    rows: list[dict[str, object]] = []
    thresholds = {"agitator_motor": 0.5, "feed_pump": 0.5}
    for unit_id in sorted(b["unit_id"].unique().to_list()):
        run_h = {"agitator_motor": 1000.0 + 900 * rng.random(), "feed_pump": 500 * rng.random()}
        for r in b.filter(pl.col("unit_id") == unit_id).iter_rows(named=True):
            hours = int((r["stop"] - r["start_ts"]).total_seconds() // 3600)
            for h in range(hours + 1):
                ts = (r["start_ts"] + timedelta(hours=h)).replace(minute=0, second=0, microsecond=0)
                for etype, suffix in (("agitator_motor", "AGT"), ("feed_pump", "FP")):
                    hsm = run_h[etype] + h
                    scale = 2500.0 if etype == "agitator_motor" else 1800.0
                    p = float(
                        np.clip(1 / (1 + np.exp(-(hsm - scale) / 150)) + rng.normal(0, 0.01), 0, 1)
                    )
                    rows.append(
                        {
                            "equipment_id": f"{unit_id}-{suffix}",
                            "unit_id": unit_id,
                            "equipment_type": etype,
                            "hour_ts": ts,
                            "batch_id": r["batch_id"],
                            "health_score": 100 * (1 - p),
                            "failure_probability": p,
                            "alarm": p >= thresholds[etype],
                            "threshold": thresholds[etype],
                            "hours_since_maintenance": hsm,
                        }
                    )
            run_h = {k: v + hours for k, v in run_h.items()}
    meta = {"model_version": "1", "scored_at": scored}
    eh = pl.DataFrame(rows).with_columns(
        pl.col("hour_ts").cast(UTC_US),
        model_name=pl.lit("pharma_pdm_failure_72h"),
        model_version=pl.lit(meta["model_version"]),
        scored_at=pl.lit(scored, UTC_US),
    )
    eh = eh.unique(["equipment_id", "hour_ts"], keep="last").sort("equipment_id", "hour_ts")
    lake.overwrite("gold", "equipment_health", eh)

    running = b.filter(pl.col("status") == "running")
    # ---- contamination risk: running batches, 5-minute windows
    crows: list[dict[str, object]] = []
    feats = ["offgas_co2_pct", "dissolved_oxygen_pct", "ph", "capacitance_pf_cm", "o2_flow_slpm"]
    for r in running.iter_rows(named=True):
        n = int((r["stop"] - r["start_ts"]).total_seconds() // 300)
        drift = rng.uniform(0.0, 0.02)
        for k in range(1, n + 1):
            score = float(0.3 + drift * k / 12 + rng.normal(0, 0.05))
            top = rng.choice(feats, size=3, replace=False)
            crows.append(
                {
                    "batch_id": r["batch_id"],
                    "unit_id": r["unit_id"],
                    "window_end_ts": r["start_ts"] + timedelta(minutes=5 * k),
                    "elapsed_h": k * 5 / 60,
                    "anomaly_score": score,
                    "threshold": 0.6,
                    "alarm": score >= 0.6,
                    "risk": float(1 / (1 + np.exp(-(score - 0.6) * 10))),
                    "top_features": ",".join(str(t) for t in top),
                }
            )
    cr = pl.DataFrame(crows).with_columns(
        pl.col("window_end_ts").cast(UTC_US),
        model_name=pl.lit("pharma_contamination_iforest"),
        model_version=pl.lit("1"),
        scored_at=pl.lit(scored, UTC_US),
    )
    lake.overwrite("gold", "contamination_risk", cr)

    # ---- MSPC scores (every batch, hourly) and alarms
    tags = ["temperature_c", "ph", "dissolved_oxygen_pct", "agitation_rpm", "dissolved_co2_mmhg"]
    mrows: list[dict[str, object]] = []
    for r in b.iter_rows(named=True):
        hours = int((r["stop"] - r["start_ts"]).total_seconds() // 3600)
        for h in range(1, hours + 1):
            t2 = float(rng.chisquare(4))
            spe = float(rng.chisquare(3))
            if r["status"] == "running" and h > hours - 3:  # a running batch drifting now
                t2 += 15.0
            shares = rng.dirichlet(np.ones(len(tags)))
            order = np.argsort(-shares)[:3]
            mrows.append(
                {
                    "batch_id": r["batch_id"],
                    "unit_id": r["unit_id"],
                    "elapsed_h": float(h),
                    "t2": t2,
                    "t2_limit": 13.28,
                    "spe": spe,
                    "spe_limit": 11.34,
                    "alarm": t2 > 13.28 or spe > 11.34,
                    # a level model at factor 1: the larger ratio to its limit decides
                    "alarm_ratio": max(t2 / 13.28, spe / 11.34),
                    "alarm_by": "T²" if t2 / 13.28 >= spe / 11.34 else "SPE",
                    "top_contributors": ",".join(f"{tags[i]}:{shares[i]:.3f}" for i in order),
                    "_contrib": json.dumps({tags[i]: round(float(shares[i]), 3) for i in order}),
                }
            )
    ms = pl.DataFrame(mrows).with_columns(
        model_name=pl.lit("pharma_mspc_pca"),
        model_version=pl.lit("2"),
        scored_at=pl.lit(scored, UTC_US),
    )
    lake.overwrite("gold", "mspc_scores", ms.drop("_contrib"))
    alarms = pl.concat(
        [
            ms.filter(pl.col(stat) > pl.col(f"{stat}_limit")).select(
                "batch_id",
                "unit_id",
                "elapsed_h",
                statistic=pl.lit(stat),
                value=pl.col(stat),
                limit=pl.col(f"{stat}_limit"),
                contributions=pl.col("_contrib"),
                model_version=pl.col("model_version"),
            )
            for stat in ("t2", "spe")
        ]
    )
    lake.overwrite("gold", "mspc_alarms", alarms)

    # ---- golden batch: real envelope of complete batches from silver/batch_timeline
    done = summary.filter(pl.col("status") == "complete")["batch_id"].to_list()
    tl = lake.read("silver", "batch_timeline", filter_expr=pl.col("batch_id").is_in(done))
    assert tl is not None
    long = (
        tl.with_columns(elapsed_h=(pl.col("elapsed_min") // 60).cast(pl.Float64))
        .unpivot(index=["batch_id", "elapsed_h"], on=list(ENVELOPE_TAGS), variable_name="tag")
        .group_by("batch_id", "tag", "elapsed_h")
        .agg(v=pl.col("value").mean())
    )
    env = (
        long.group_by("tag", "elapsed_h")
        .agg(mean=pl.col("v").mean(), sd=pl.col("v").std(), n_batches=pl.len())
        .filter(pl.col("n_batches") >= 2)
        .with_columns(lo=pl.col("mean") - 3 * pl.col("sd"), hi=pl.col("mean") + 3 * pl.col("sd"))
        .select("tag", "elapsed_h", "mean", "lo", "hi", "n_batches", model_version=pl.lit("1"))
        .sort("tag", "elapsed_h")
    )
    lake.overwrite("gold", "golden_batch", env)

    # ---- model performance
    perf = [
        ("pharma_pdm_failure_72h", "1", "recall", 0.82, 0.80, True),
        ("pharma_pdm_failure_72h", "1", "false_alarms_per_week", 0.7, 1.0, True),
        ("pharma_quality_final_titer_g_l_day7", "1", "mape_pct", 11.5, 10.0, False),
        ("pharma_quality_final_titer_g_l_day7", "2", "mape_pct", 8.9, 10.0, True),
        ("pharma_contamination_iforest", "1", "median_detection_lead_h", 7.5, 6.0, True),
        ("pharma_mspc_pca", "2", "false_alarm_rate_pct", 3.1, 5.0, True),
    ]
    champions = {"pharma_quality_final_titer_g_l_day7": "2"}
    mp = pl.DataFrame(
        [
            {
                "model_name": n,
                "model_version": v,
                "metric": m,
                "value": val,
                "target": t,
                "target_met": ok,
                "evaluation_set": "holdout:last 25% of batches by start",
                "n": 40,
                "is_champion": champions.get(n, v) == v,
                "mlflow_run_id": f"run{i:04d}",
                "computed_at": scored,
            }
            for i, (n, v, m, val, t, ok) in enumerate(perf)
        ]
    ).with_columns(pl.col("computed_at").cast(UTC_US))
    lake.overwrite("gold", "model_performance", mp)


if __name__ == "__main__":  # manual use: python -m pharma_assets_tests.dashboards.fixture_lake DIR
    import sys
    import time

    t0 = time.perf_counter()
    lk = build_fixture_lake(Path(sys.argv[1]))
    print(f"fixture lake at {lk.root} in {time.perf_counter() - t0:.1f} s")
