"""History mode: simulate a whole plant history and write it to the landing zone.

Batches are integrated in cohorts (vectors of up to ``cohort_size`` batches) so the cost
per batch falls as the cohort grows and peak memory stays bounded whatever the number of
batches. Each cohort's results are written out and released before the next one runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .coa import write_certificates
from .config import PlantConfig, RecipeBook
from .engine import TRUTH_VARIABLES, Engine
from .landing import (
    chunk_path,
    maintenance_record,
    quality_codes,
    write_ground_truth,
    write_jsonl,
    write_lims_csv,
    write_telemetry_chunk,
)
from .outputs import batch_history_summary, lab_samples, release_assays, telemetry_signals
from .plant import BatchPlan, PlantPlan, plan_history

Progress = Callable[[int, int, str], None]


@dataclass
class HistoryResult:
    plan: PlantPlan
    landing: Path
    ground_truth: Path
    files_written: int = 0
    readings_written: int = 0
    batch_minutes: float = 0.0
    truth: list[dict[str, Any]] = field(default_factory=list)


def tag_strides(plant: PlantConfig, dt_s: float) -> list[int]:
    strides = []
    for t in plant.tags:
        s = t.sampling_period_s / dt_s
        if s < 1 or abs(s - round(s)) > 1e-9:
            raise ValueError(
                f"tag {t.tag}: sampling period {t.sampling_period_s} s is not a multiple of the "
                f"simulator step {dt_s:g} s; use --period that divides every tag's period"
            )
        strides.append(round(s))
    return strides


def mes_events(b: BatchPlan) -> list[dict[str, Any]]:
    """MES records of a batch: start (recipe, lots), phase changes, end (status)."""
    base = {
        "site_id": b.site_id,
        "area_id": b.area_id,
        "unit_id": b.unit_id,
        "batch_id": b.batch_id,
    }
    ev: list[dict[str, Any]] = [
        {
            **base,
            "event_type": "batch_start",
            "event_ts": b.start,
            "recipe_id": b.recipe.recipe_id,
            "recipe_version": b.recipe.version,
            "product": b.recipe.product,
            "planned_end_ts": b.start + timedelta(hours=b.planned_end_h),
            "material_lots": b.lots,
            "operator": f"op{(b.seq * 7) % 13 + 1:02d}",
        }
    ]
    for ph in b.recipe.phases:
        start_h = b.inputs["shift_h"] if ph.phase == "production" else ph.start_day * 24.0
        if ph.phase == "harvest":
            start_h = b.planned_end_h - (b.recipe.planned_duration_days - ph.start_day) * 24.0
        if start_h < b.end_h:
            ev.append(
                {
                    **base,
                    "event_type": "phase_start",
                    "event_ts": b.start + timedelta(hours=start_h),
                    "phase": ph.phase,
                }
            )
    ev.append(
        {
            **base,
            "event_type": "batch_end",
            "event_ts": b.end,
            "status": b.status,
            "reason": b.abort_reason or "harvested",
        }
    )
    for i, e in enumerate(ev):
        e["event_id"] = f"{b.batch_id}-E{i + 1:03d}"
    return ev


def simulate_history(
    plant: PlantConfig,
    recipes: RecipeBook,
    n_batches: int,
    seed: int,
    out: Path,
    truth_out: Path | None = None,
    period_s: float = 60.0,
    start: datetime | None = None,
    cohort_size: int = 64,
    chunk_hours: float = 24.0,
    progress: Progress | None = None,
) -> HistoryResult:
    """Plan and simulate ``n_batches`` batches and write landing files and ground truth."""
    out = Path(out)
    truth_out = Path(truth_out) if truth_out else out.parent / "ground_truth"
    dt_h = period_s / 3600.0
    strides = tag_strides(plant, period_s)
    plan = plan_history(plant, recipes, n_batches, seed, start=start)
    res = HistoryResult(plan=plan, landing=out, ground_truth=truth_out)
    order = sorted(range(len(plan.batches)), key=lambda i: plan.batches[i].end_h)
    cohorts = [order[i : i + cohort_size] for i in range(0, len(order), cohort_size)]
    tags = [t.tag for t in plant.tags]
    uoms = [t.uom for t in plant.tags]
    steps_per_chunk = max(1, round(chunk_hours / dt_h))
    hourly_rows: list[pa.Table] = []
    done = 0
    for ci, idx in enumerate(cohorts):
        inputs = plan.inputs(idx)
        n_steps = math.ceil(float(inputs.end_h.max()) / dt_h) + 1
        eng = Engine(inputs, dt_h=dt_h, seed=seed * 1000 + ci)
        rec = eng.run(n_steps)
        rng = np.random.default_rng([seed, ci, 7])
        sig = telemetry_signals(rec, inputs, dt_h, 0, rng)
        mat = np.stack([sig[t] for t in tags], axis=-1)  # (steps, batches, tags)
        del sig
        mask_all = np.stack([(np.arange(n_steps) % s) == 0 for s in strides], axis=-1)
        for j, bi in enumerate(idx):
            b = plan.batches[bi]
            end_k = min(math.ceil(b.end_h / dt_h), n_steps)
            t0_us = int(b.start.timestamp() * 1_000_000)
            step_us = round(period_s * 1_000_000)
            for seq, k0 in enumerate(range(0, end_k, steps_per_chunk), start=1):
                k1 = min(k0 + steps_per_chunk, end_k)
                vals = mat[k0:k1, j, :]
                qual = quality_codes(rng, vals.shape)
                ts_us = t0_us + np.arange(k0, k1, dtype=np.int64) * step_us
                path = chunk_path(
                    out,
                    "telemetry",
                    b.unit_id,
                    b.batch_id,
                    b.start + timedelta(hours=k0 * dt_h),
                    seq,
                    "parquet",
                )
                m = mask_all[k0:k1]
                write_telemetry_chunk(
                    path,
                    ts_us,
                    b.site_id,
                    b.unit_id,
                    b.batch_id,
                    tags,
                    uoms,
                    vals,
                    qual,
                    None if m.all() else m,
                )
                res.files_written += 1
                res.readings_written += int(m.sum())
            res.batch_minutes += end_k * period_s / 60.0
            # MES
            ev = mes_events(b)
            write_jsonl(chunk_path(out, "mes", b.unit_id, b.batch_id, b.start, 1, "jsonl"), ev)
            # LIMS: daily in-process samples and release assays at harvest
            spd = round(24 / dt_h)
            rows = []
            for d, k in enumerate(range(0, end_k, spd)):
                ts = b.start + timedelta(hours=k * dt_h + 0.25)
                sid = f"{b.batch_id}-S{d:02d}"
                for analyte, value, uom in lab_samples(rec, k, j, rng):
                    rows.append(
                        (
                            sid,
                            b.site_id,
                            b.unit_id,
                            b.batch_id,
                            ts,
                            "in_process",
                            analyte,
                            value,
                            uom,
                        )
                    )
            hist = batch_history_summary(rec, inputs, j, end_k, dt_h)
            rel_ts = b.end + timedelta(hours=30)
            for analyte, value, uom in release_assays(
                hist, b.lot_attributes["media_mn_ppb"], b.status == "complete", rng
            ):
                rows.append(
                    (
                        f"{b.batch_id}-REL",
                        b.site_id,
                        b.unit_id,
                        b.batch_id,
                        rel_ts,
                        "release",
                        analyte,
                        value,
                        uom,
                    )
                )
            write_lims_csv(chunk_path(out, "lims", b.unit_id, b.batch_id, b.start, 1, "csv"), rows)
            res.files_written += 2
            # truth
            xv = rec["Xv"][:end_k, j]
            via = xv / (xv + rec["Xd"][:end_k, j])
            res.truth.append(
                {
                    "batch_id": b.batch_id,
                    "site_id": b.site_id,
                    "unit_id": b.unit_id,
                    "seq": b.seq,
                    "recipe_id": b.recipe.recipe_id,
                    "start_ts": b.start,
                    "end_ts": b.end,
                    "duration_days": b.end_h / 24.0,
                    "status": b.status,
                    "abort_reason": b.abort_reason,
                    "fault_types": ",".join(sorted({f.fault_type for f in b.faults})),
                    "peak_vcd_e6_cells_ml": float(xv.max()),
                    "peak_vcd_day": float(xv.argmax() * dt_h / 24),
                    "final_viability_pct": float(100 * via[-1]),
                    "final_titer_g_l": float(rec["P"][end_k - 1, j]),
                    "peak_lactate_g_l": float(rec["L"][:end_k, j].max()),
                    "harvest_volume_l": float(rec["V"][end_k - 1, j]),
                    "product_mass_kg": float(
                        rec["P"][end_k - 1, j] * rec["V"][end_k - 1, j] / 1000
                    ),
                    **{f"lot_{k}": v for k, v in b.lots.items()},
                    **{f"attr_{k}": v for k, v in b.lot_attributes.items()},
                    **{f"hist_{k}": v for k, v in hist.items()},
                }
            )
            hk = np.arange(0, end_k, round(1 / dt_h))
            hourly_rows.append(
                pa.table(
                    {
                        "batch_id": [b.batch_id] * len(hk),
                        "elapsed_h": (hk * dt_h).astype(np.float64),
                        **{name: rec[name][hk, j].astype(np.float64) for name in TRUTH_VARIABLES},
                    }
                )
            )
            done += 1
            if progress:
                progress(done, len(plan.batches), b.batch_id)
        del rec, mat
    # CMMS: one file per unit with its maintenance history
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for e in plan.maintenance:
        by_unit.setdefault(e.unit_id, []).append(maintenance_record(e))
    for uid, recs in by_unit.items():
        write_jsonl(chunk_path(out, "cmms", uid, None, recs[0]["event_ts"], 1, "jsonl"), recs)
        res.files_written += 1
    # LIMS: a supplier CoA and an incoming-QC document per raw-material lot
    res.files_written += len(write_certificates(plan, out))
    write_ground_truth(
        truth_out, plan.labels, res.truth, pa.concat_tables(hourly_rows) if hourly_rows else None
    )
    return res
