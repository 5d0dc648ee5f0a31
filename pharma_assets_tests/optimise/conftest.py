"""A synthetic batch simulated by the full engine with known batch-specific multipliers.

FB14 with seed density 0.6 (x1.2 the recipe's), growth x1.06, every death term x1.3 and
specific productivity x0.92, run to day 8 at the engine's 60 s step; its LIMS samples and
hourly online signals come from the landing zone's own assay and signal models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from pharma_assets.optimise import observations
from pharma_assets.twin.config import Recipe, load_recipes
from pharma_assets.twin.engine import BatchInputs, Engine, KineticParams
from pharma_assets.twin.plant import nominal_inputs

TRUE = {"log_xv0": 1.2, "log_mu": 1.06, "log_kd": 1.3, "log_qp": 0.92, "log_cap": 1.1}
DAYS = 8


@dataclass
class Synthetic:
    recipe: Recipe
    inputs: BatchInputs
    rec: dict[str, np.ndarray]
    obs: observations.BatchObservations


@pytest.fixture(scope="session")
def synthetic() -> Synthetic:
    recipe = load_recipes().get("MAB-A-FB14")
    row = nominal_inputs(recipe, Xv0=0.6, mu_lot=1.06, qp_lot=0.92, shift_h=121.0)
    p0 = KineticParams()
    m = TRUE["log_kd"]
    params = replace(
        p0,
        kd_min=p0.kd_min * m,
        kd_amm=p0.kd_amm * m,
        kd_age=p0.kd_age * m,
        kd_starve=p0.kd_starve * m,
    )
    u = BatchInputs(**{k: np.array([v]) for k, v in row.items()})
    rec = Engine(u, dt_h=1 / 60, seed=3, params=params).run(DAYS * 24 * 60 + 1)
    obs = observations.from_engine(rec, u, 1 / 60, ["SYN-0001"], [recipe.recipe_id], seed=4)[0]
    obs.planned_end_h = float(row["end_h"])
    obs.end_h = None  # the batch is still running at day 8
    return Synthetic(recipe, u, rec, obs)
