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

from . import recipe as recipe_mod
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


# ---------------------------------------------------------------- local refinement
SETPOINT_NOR = {
    "T_grow": ("temperature_c", "growth"),
    "T_prod": ("temperature_c", "production"),
    "ph_sp": ("ph", "production"),
    "do_sp": ("dissolved_oxygen_pct", "production"),
}


def refine_box(recipe: Recipe, spec: CppSpec | None = None) -> dict[str, tuple[float, float]]:
    """The optimiser's box with the set-points narrowed to their NOR (inside the PAR): a
    set-point on the PAR edge leaves the PAR whenever control scatters around it (the
    in-batch evaluation saw it for temperature), so a local refinement stays in the NOR."""
    spec = spec or load_spec()
    out = {}
    for d, b in bounds(recipe, spec).items():
        lo, hi = b.lo, b.hi
        if d in SETPOINT_NOR:
            nor = spec.tags[SETPOINT_NOR[d][0]].limits(SETPOINT_NOR[d][1]).nor
            if nor is not None:
                lo, hi = max(lo, nor[0]), min(hi, nor[1])
        out[d] = (lo, hi)
    return out


def refine(
    recipe: Recipe,
    opt: Optimisation,
    passes: int = 3,
    points: int = 9,
    spec: CppSpec | None = None,
    plant: PlantConfig | None = None,
) -> tuple[dict[str, float], pl.DataFrame]:
    """Coordinate ascent from the optimiser's proposal on the same training draws: each
    decision in turn moves to the best feasible point of its grid over `refine_box` (others
    held), for ``passes`` passes. Returns the refined settings and the trace (one row per
    pass and decision). The proposal is kept where no grid point beats it."""
    spec = spec or load_spec()
    plant = plant or load_plant()
    wv = min(u.working_volume_l for u in plant.units)
    draws = plant_draws(opt.train_seeds)
    box = refine_box(recipe, spec)
    cur = dict(opt.best.settings)
    for d, (lo, hi) in box.items():  # start inside the refinement box
        cur[d] = float(np.clip(cur[d], lo, hi))
    (ev,) = evaluate(recipe, draws, [cur], wv, spec)
    best_m = ev.mean_product_kg if ev.p_rft >= MIN_P_IN_SPEC else -np.inf
    trace = []
    for k in range(passes):
        for d in DECISIONS:
            lo, hi = box[d]
            grid = [cur | {d: float(v)} for v in np.linspace(lo, hi, points)]
            for s, e in zip(grid, evaluate(recipe, draws, grid, wv, spec), strict=True):
                ok = e.p_rft >= MIN_P_IN_SPEC and e.p_volume_ok >= MIN_P_IN_SPEC
                if ok and e.mean_product_kg > best_m + 1e-9:
                    best_m, cur = e.mean_product_kg, s
            trace.append({"pass": k + 1, "decision": d, "value": cur[d], "mean_product_kg": best_m})
    return cur, pl.DataFrame(trace)


def optimise_and_refine(
    recipe: Recipe,
    n_trials: int = 160,
    spec: CppSpec | None = None,
    plant: PlantConfig | None = None,
) -> tuple[Optimisation, pl.DataFrame]:
    """`recipe.optimise` (TPE over the PAR box), then `refine` (coordinate ascent in the NOR
    box) from its proposal on the same training draws; the refined settings replace the
    proposal when they are feasible and better on the twin. Returns the optimisation (its
    ``best`` the final proposal) and the refinement trace."""
    from dataclasses import replace

    spec = spec or load_spec()
    plant = plant or load_plant()
    opt = recipe_mod.optimise(recipe, n_trials=n_trials, spec=spec, plant=plant)
    s, trace = refine(recipe, opt, spec=spec, plant=plant)
    wv = min(u.working_volume_l for u in plant.units)
    (ev,) = evaluate(recipe, plant_draws(opt.train_seeds), [s], wv, spec)
    feasible = ev.p_rft >= MIN_P_IN_SPEC and ev.p_volume_ok >= MIN_P_IN_SPEC
    if feasible and ev.mean_product_kg > opt.best.mean_product_kg:
        problems = recipe_mod.check_par(ev.settings, recipe, spec)
        if problems:  # the refinement box is inside the PAR; this would be a bug
            raise AssertionError(f"refinement left the PAR: {problems}")
        opt = replace(opt, best=ev)
    return opt, trace
