"""How much a recipe can still gain inside its box, and what holds the optimiser back.

For a recipe's optimisation (`recipe.optimise`), each decision is moved alone over its whole
search box (the PAR for set-points, the schedule slot for the harvest, the recipe's bands for
shift and feed) with every other decision at the proposal, on the optimiser's own training
draws (the fast twin). Per decision: where the proposal sits in its box, whether it is at a
bound, the best mass the one-dimensional profile reaches with and without the constraints,
and which constraint (P(every CQA in spec) >= 95 %, harvest volume within the working
volume) stops it. Together with the best infeasible trial of the search this says whether a
recipe is near its optimum within the PAR or held by a constraint or a bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.twin.config import PlantConfig, Recipe, load_plant

from .recipe import DECISIONS, MIN_P_IN_SPEC, Optimisation, bounds, evaluate, plant_draws

AT_BOUND = 0.02  # within this share of the range from a bound counts as "at the bound"


def profiles(
    recipe: Recipe,
    opt: Optimisation,
    points: int = 9,
    spec: CppSpec | None = None,
    plant: PlantConfig | None = None,
) -> pl.DataFrame:
    """One row per decision and grid point: the proposal with that decision moved, on the
    optimiser's training draws (mean product mass, P(right first time), P(volume ok))."""
    spec = spec or load_spec()
    plant = plant or load_plant()
    wv = min(u.working_volume_l for u in plant.units)
    bx = bounds(recipe, spec)
    best = opt.best.settings
    settings, keys = [], []
    for d in DECISIONS:
        for v in np.linspace(bx[d].lo, bx[d].hi, points):
            settings.append(best | {d: float(v)})
            keys.append((d, float(v)))
    evs = evaluate(recipe, plant_draws(opt.train_seeds), settings, wv, spec)
    return pl.DataFrame(
        {
            "decision": [k[0] for k in keys],
            "value": [k[1] for k in keys],
            "mean_product_kg": [e.mean_product_kg for e in evs],
            "p_rft": [e.p_rft for e in evs],
            "p_volume_ok": [e.p_volume_ok for e in evs],
        }
    ).with_columns(
        feasible=(pl.col("p_rft") >= MIN_P_IN_SPEC) & (pl.col("p_volume_ok") >= MIN_P_IN_SPEC)
    )


def headroom(
    recipe: Recipe,
    opt: Optimisation,
    points: int = 9,
    spec: CppSpec | None = None,
    plant: PlantConfig | None = None,
) -> tuple[pl.DataFrame, dict[str, object]]:
    """Per decision: box, current, proposal, position in the box, at a bound, the
    profile's best feasible and best unconstrained mass (relative to the proposal) and the
    constraint that binds; plus a summary of the search (best feasible vs best infeasible
    trial and what made it infeasible)."""
    spec = spec or load_spec()
    bx = bounds(recipe, spec)
    prof = profiles(recipe, opt, points, spec, plant)
    m0 = opt.best.mean_product_kg
    rows = []
    for d in DECISIONS:
        p = prof.filter(pl.col("decision") == d)
        lo, hi, v = bx[d].lo, bx[d].hi, float(opt.best.settings[d])
        pos = (v - lo) / (hi - lo) if hi > lo else 0.5
        feas = p.filter("feasible")
        best_all = p.sort("mean_product_kg", descending=True).row(0, named=True)
        binding = None
        if not best_all["feasible"] and best_all["mean_product_kg"] > m0:
            binding = "p_rft" if best_all["p_rft"] < MIN_P_IN_SPEC else "harvest volume"
        rows.append(
            {
                "decision": d,
                "lo": lo,
                "hi": hi,
                "source": bx[d].source,
                "current": float(opt.current.settings[d]),
                "proposed": v,
                "position_in_box": pos,
                "at_bound": "lo" if pos <= AT_BOUND else ("hi" if pos >= 1 - AT_BOUND else ""),
                "profile_best_feasible_gain": (
                    float(feas["mean_product_kg"].to_numpy().max()) / m0 - 1
                    if feas.height
                    else None
                ),
                "profile_best_value": float(best_all["value"]),
                "profile_best_unconstrained_gain": float(best_all["mean_product_kg"]) / m0 - 1,
                "binding_constraint": binding,
            }
        )
    t = opt.trials
    inf = t.filter(~pl.col("feasible") & (pl.col("mean_product_kg") > m0))
    summary: dict[str, object] = {
        "recipe_id": opt.recipe_id,
        "twin_gain": opt.predicted_gain,
        "best_p_rft": opt.best.p_rft,
        "best_p_volume_ok": opt.best.p_volume_ok,
        "trials": t.height,
        "feasible_trials": opt.feasible_trials,
        "infeasible_trials_above_best": inf.height,
    }
    if inf.height:
        top = inf.sort("mean_product_kg", descending=True).row(0, named=True)
        summary |= {
            "best_infeasible_gain": top["mean_product_kg"] / opt.current.mean_product_kg - 1,
            "best_infeasible_p_rft": top["p_rft"],
            "best_infeasible_p_volume_ok": top["p_volume_ok"],
        }
    return pl.DataFrame(rows), summary


def near_optimum(table: pl.DataFrame, tol: float = 0.005) -> Sequence[str]:
    """Decisions along which the proposal could still gain more than ``tol`` (relative) on
    the twin without breaking a constraint."""
    t = table.filter(pl.col("profile_best_feasible_gain") > tol)
    return t["decision"].to_list()
