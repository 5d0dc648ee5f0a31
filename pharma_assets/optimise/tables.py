"""The optimisation tables the Dagster assets write (plain Python, lake in and frames out).

* ``gold/twin_calibrated_state``: one row per running batch: calibration status, the
  multipliers with 95 % intervals, the state now and the harvest forecast;
* ``gold/batch_recommendations``: per running batch and engine (``mpc``, ``neural`` when a
  surrogate is given): the actions for the rest of the batch and their expected gain;
* ``gold/harvest_recommendations``: per running batch: the harvest day with the most
  expected product within the viability and CQA limits;
* ``gold/twin_sensitivity``, ``gold/design_space``, ``gold/recipe_recommendations``: per
  recipe.

A running batch that cannot be calibrated (missing tags, not enough data) is a row with
``status`` and the reason, never dropped: the running batches and the rows reconcile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime

import numpy as np
import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.lake.storage import Lake
from pharma_assets.twin.config import RecipeBook, load_recipes

from . import headroom, inbatch, recipe, sensitivity
from .calibration import CalibratedBatch, calibrate_lactate
from .observations import CalibrationDataError, from_lake
from .surrogate import Surrogate, recommend_neural
from .whatif import Scenario, run_whatif

log = logging.getLogger(__name__)


def running_batches(lake: Lake) -> list[str]:
    b = lake.read("silver", "batches", columns=["batch_id", "status"])
    if b is None:
        return []
    return sorted(b.filter(pl.col("status") == "running")["batch_id"].to_list())


def calibrate_running(
    lake: Lake,
    recipes: RecipeBook | None = None,
    as_of: datetime | None = None,
    n_members: int = 50,
) -> tuple[dict[str, CalibratedBatch], dict[str, str]]:
    """Calibrated ensembles of every running batch (with the batch's lactate kinetics from its
    LIMS lactate, `calibration.calibrate_lactate`), and the reason for each that failed."""
    recipes = recipes or load_recipes()
    cals, errors = {}, {}
    for bid in running_batches(lake):
        try:
            obs = from_lake(lake, bid, as_of=as_of)
            cals[bid] = calibrate_lactate(obs, recipes.get(obs.recipe_id), n_members=n_members)
        except (CalibrationDataError, KeyError, ValueError) as e:
            errors[bid] = str(e)
    return cals, errors


def calibrated_state_table(
    cals: dict[str, CalibratedBatch], errors: dict[str, str]
) -> pl.DataFrame:
    rows: list[dict[str, object]] = []
    for bid, cal in cals.items():
        base = run_whatif(cal, Scenario())
        s = base.baseline.summary()["product_mass_kg"]
        st = cal.state
        row: dict[str, object] = {
            "batch_id": bid,
            "recipe_id": cal.recipe.recipe_id,
            "status": ("prior_only" if cal.prior_only else "calibrated"),
            "message": cal.message,
            "as_of_h": cal.as_of_h,
            "members": cal.n_members,
            "observations": cal.n_obs,
            "vcd_e6_cells_ml": float(np.median(st.Xv)),
            "viability_pct": float(np.median(100 * st.Xv / (st.Xv + st.Xd))),
            "titer_g_l": float(np.median(st.P)),
            "volume_l": float(np.median(st.V)),
            "harvest_product_kg_p05": s["p05"],
            "harvest_product_kg": s["median"],
            "harvest_product_kg_p95": s["p95"],
        }
        for name in ("log_xv0", "log_mu", "log_kd", "log_qp"):
            lo, hi = cal.interval(name)
            key = name.removeprefix("log_")
            row.update({f"{key}_mult": cal.estimate(name), f"{key}_lo": lo, f"{key}_hi": hi})
        rows.append(row)
    for bid, why in errors.items():
        rows.append({"batch_id": bid, "status": "not_calibrated", "message": why})
    return _frame(rows)


def batch_recommendation_table(
    cals: dict[str, CalibratedBatch],
    errors: dict[str, str],
    surrogates: Mapping[str, Surrogate | None],
    spec: CppSpec | None = None,
) -> pl.DataFrame:
    """MPC and, where the batch's recipe has a surrogate (``surrogates[recipe_id]``), the
    neural engine for every calibrated running batch."""
    spec = spec or load_spec()
    rows: list[dict[str, object]] = []
    for cal in cals.values():
        recs = [inbatch.recommend_mpc(cal, spec=spec)]
        sur = surrogates.get(cal.recipe.recipe_id)
        if sur is not None:
            recs.append(recommend_neural(cal, sur, spec=spec)[0])
        for r in recs:
            rows.append(
                {
                    **r.record(),
                    "status": "recommended" if r.changed else "keep_plan",
                    "prior_only": cal.prior_only,
                    "par_problems": "; ".join(inbatch.par_problems(r.actions, cal, spec)),
                }
            )
    for bid, why in errors.items():
        rows.append({"batch_id": bid, "engine": "none", "status": "not_calibrated", "changes": why})
    return _frame(rows)


def harvest_table(
    cals: dict[str, CalibratedBatch], errors: dict[str, str], spec: CppSpec | None = None
) -> pl.DataFrame:
    rows: list[dict[str, object]] = []
    for bid, cal in cals.items():
        h = inbatch.harvest_timing(cal, spec=spec)
        rows.append(
            {
                "batch_id": bid,
                "as_of_h": cal.as_of_h,
                "status": "advised",
                "harvest_day": h.harvest_day,
                "expected_product_kg": h.expected_product_kg,
                "product_kg_p05": h.interval_kg[0],
                "product_kg_p95": h.interval_kg[1],
                "planned_harvest_day": h.planned_day,
                "planned_product_kg": h.planned_product_kg,
                "p_in_spec": h.p_ok,
                "window_lo_day": float(h.curve["harvest_day"].to_numpy().min()),
                "window_hi_day": float(h.curve["harvest_day"].to_numpy().max()),
            }
        )
    for bid, why in errors.items():
        rows.append({"batch_id": bid, "status": "not_calibrated", "message": why})
    return _frame(rows)


def sensitivity_tables(
    recipes: RecipeBook | None = None, n_base: int = 256, spec: CppSpec | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Sobol indices and the design space of the two most influential CPPs, every recipe."""
    recipes = recipes or load_recipes()
    idx, ds = [], []
    for r in recipes.recipes:
        s = sensitivity.sobol(r, n_base=n_base, spec=spec)
        idx.append(s)
        top = sensitivity.most_influential(s, 2)
        ds.append(sensitivity.design_space(r, (top[0], top[1]), spec=spec))
    return pl.concat(idx, how="diagonal_relaxed"), pl.concat(ds, how="diagonal_relaxed")


def recipe_recommendation_table(
    recipes: RecipeBook | None = None,
    n_trials: int = 160,
    eval_batches: int = 50,
    spec: CppSpec | None = None,
) -> pl.DataFrame:
    recipes = recipes or load_recipes()
    rows = []
    for r in recipes.recipes:
        opt, _ = headroom.optimise_and_refine(r, n_trials=n_trials, spec=spec)
        ver = recipe.verify(r, opt.best.settings, n_batches=eval_batches, spec=spec)
        rows.append(recipe.recommendation_record(opt, ver))
    return _frame(rows)


def par_violations(df: pl.DataFrame, spec: CppSpec | None = None, prefix: str = "rec_") -> int:
    """Rows whose recommended CPP set-points (``<prefix>T_prod``, ``ph_sp``, ``do_sp``, and
    ``T_grow`` where present) lie outside their PAR."""
    spec = spec or load_spec()
    checks = {
        "T_grow": ("temperature_c", "growth"),
        "T_prod": ("temperature_c", "production"),
        "ph_sp": ("ph", "production"),
        "do_sp": ("dissolved_oxygen_pct", "production"),
    }
    bad = pl.lit(False)
    for name, (tag, phase) in checks.items():
        col = f"{prefix}{name}"
        if col not in df.columns:
            continue
        lo, hi = spec.tags[tag].limits(phase).par  # type: ignore[misc]
        bad = bad | (
            pl.col(col).is_not_null() & ((pl.col(col) < lo - 1e-9) | (pl.col(col) > hi + 1e-9))
        )
    return int(df.select(bad.sum()).item()) if df.height else 0


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame({"batch_id": pl.Series([], dtype=pl.String)})
    clean = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    return pl.DataFrame(clean, infer_schema_length=None)
