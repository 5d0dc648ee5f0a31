"""Back-test: calibrate on held-out simulated batches at fixed days, forecast the harvest.

Held-out batches come from a fresh plant seed, simulated by the full engine (60 s steps,
every fault mechanism, plant variability the twin does not model: kLa, probe bias, DO
fouling, pump wear, room temperature). Only what the plant would have recorded reaches
calibration (`observations.from_engine`: LIMS with assay error, hourly online signals). The
forecast is the baseline what-if (no change) to the batch's planned end, scored against the
engine's true titer and product mass at harvest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from pharma_assets.twin.config import PlantConfig, RecipeBook, load_plant, load_recipes
from pharma_assets.twin.engine import Engine
from pharma_assets.twin.plant import plan_history

from .calibration import CalibratedBatch, calibrate, lot_prior
from .observations import BatchObservations, from_engine
from .whatif import Scenario, run_whatif

TARGETS = ("titer_g_l", "product_mass_kg")


@dataclass
class HeldOut:
    observations: list[BatchObservations]
    truth: dict[str, dict[str, float]]  # batch_id -> target -> true value at harvest
    faulted: set[str]  # batches with a non-aborting fault (pump, probe, chiller)


def simulate_held_out(
    n_batches: int,
    seed: int,
    plant: PlantConfig | None = None,
    recipes: RecipeBook | None = None,
) -> HeldOut:
    """Simulate a plant history of ``n_batches`` and keep the completed batches."""
    plant = plant or load_plant()
    recipes = recipes or load_recipes()
    plan = plan_history(plant, recipes, n_batches, seed, start=datetime(2027, 1, 4, tzinfo=UTC))
    idx = [i for i, b in enumerate(plan.batches) if b.status == "complete"]
    inputs = plan.inputs(idx)
    dt_h = 1 / 60
    rec = Engine(inputs, dt_h=dt_h, seed=seed).run(math.ceil(float(inputs.end_h.max()) / dt_h) + 1)
    bids = [plan.batches[i].batch_id for i in idx]
    obs = from_engine(
        rec,
        inputs,
        dt_h,
        bids,
        [plan.batches[i].recipe.recipe_id for i in idx],
        seed=seed + 1,
        starts=[plan.batches[i].start for i in idx],
        lots=[plan.batches[i].lots for i in idx],
    )
    truth = {}
    for j, bid in enumerate(bids):
        k = min(math.ceil(float(inputs.end_h[j]) / dt_h), rec["P"].shape[0]) - 1
        p, v = float(rec["P"][k, j]), float(rec["V"][k, j])
        truth[bid] = {"titer_g_l": p, "product_mass_kg": p * v / 1000.0}
    faulted = {plan.batches[i].batch_id for i in idx if plan.batches[i].faults}
    return HeldOut(obs, truth, faulted)


def backtest(
    held: HeldOut,
    horizons_days: Sequence[float] = (3.0, 7.0),
    n_members: int = 50,
    level: float = 0.9,
    recipes: RecipeBook | None = None,
    progress: Callable[[int, int], None] | None = None,
    lot_priors: bool = False,
) -> pl.DataFrame:
    """One row per batch x horizon x target (x method): truth, forecast median and interval.

    With ``lot_priors`` every forecast is made twice: on the recipe prior, and on the lot
    prior (`calibration.lot_prior`) from the held-out batches of the same lots that had
    finished before this batch's as-of time, each calibrated on its whole record.
    """
    recipes = recipes or load_recipes()
    q = ((1 - level) / 2, 0.5, (1 + level) / 2)
    finals: list[tuple[BatchObservations, CalibratedBatch, datetime]] = []
    if lot_priors:
        for o in held.observations:
            if o.start is None or o.end_h is None:
                raise ValueError(f"lot priors need start and end times; {o.batch_id} has none")
            c = calibrate(o, recipes.get(o.recipe_id), n_members=2)
            finals.append((o, c, o.start + timedelta(hours=o.end_h)))
    rows = []
    total, done = len(held.observations) * len(horizons_days), 0
    for obs in held.observations:
        recipe = recipes.get(obs.recipe_id)
        for day in horizons_days:
            seen = obs.until(day * 24)
            priors: dict[str, dict[str, tuple[float, float]]] = {"recipe prior": {}}
            if lot_priors:
                assert obs.start is not None
                as_of = obs.start + timedelta(days=day)
                earlier = [(o, c) for o, c, end in finals if end <= as_of and o is not obs]
                priors["lot prior"] = lot_prior(obs, earlier)
            for method, prior in priors.items():
                cal = calibrate(seen, recipe, n_members=n_members, seed=done, prior=prior)
                res = run_whatif(cal, Scenario())
                for target in TARGETS:
                    lo, med, hi = np.quantile(res.baseline.cqas[target], q)
                    rows.append(
                        {
                            "batch_id": obs.batch_id,
                            "recipe_id": obs.recipe_id,
                            "horizon_day": float(day),
                            "target": target,
                            "method": method,
                            "lot_parameters": ",".join(sorted(prior)),
                            "true": held.truth[obs.batch_id][target],
                            "predicted": float(med),
                            "lower": float(lo),
                            "upper": float(hi),
                            "prior_only": cal.prior_only,
                            "faulted": obs.batch_id in held.faulted,
                        }
                    )
            done += 1
            if progress:
                progress(done, total)
    return pl.DataFrame(rows)


def metrics(rows: pl.DataFrame) -> pl.DataFrame:
    """R², MAE and interval coverage per method, horizon and target."""
    out = []
    if "method" not in rows.columns:
        rows = rows.with_columns(method=pl.lit("recipe prior"))
    keys = ["method", "horizon_day", "target"]
    for (method, day, target), g in rows.group_by(keys, maintain_order=True):
        y, f = g["true"].to_numpy(), g["predicted"].to_numpy()
        ss_res = float(((y - f) ** 2).sum())
        ss_tot = float(((y - y.mean()) ** 2).sum())
        lo, hi = g["lower"].to_numpy(), g["upper"].to_numpy()
        inside = (lo <= y) & (y <= hi)
        out.append(
            {
                "method": method,
                "horizon_day": day,
                "target": target,
                "n": g.height,
                "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
                "mae": float(np.abs(y - f).mean()),
                "bias": float((f - y).mean()),
                "coverage": float(inside.mean()),
                "mean_width": float((hi - lo).mean()),
            }
        )
    return pl.DataFrame(out).sort("target", "horizon_day", "method")
