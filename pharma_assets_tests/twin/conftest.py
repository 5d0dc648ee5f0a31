"""Shared simulations for the twin tests (module-scoped: each runs once per session)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.engine import BatchInputs, Engine
from pharma_assets.twin.plant import nominal_inputs, plan_history

DT_H = 1 / 60


@dataclass
class Cohort:
    inputs: BatchInputs
    rec: dict[str, np.ndarray]
    engine: Engine


def run_rows(rows: list[dict[str, float]], seed: int = 0) -> Cohort:
    u = BatchInputs(**{k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]})
    eng = Engine(u, dt_h=DT_H, seed=seed)
    rec = eng.run(int(np.ceil(u.end_h.max() / DT_H)))
    return Cohort(u, rec, eng)


@pytest.fixture(scope="session")
def recipes():
    return load_recipes()


@pytest.fixture(scope="session")
def nominal_cohort() -> Cohort:
    """Fault-free batches drawn from several plant seeds (lots, seed density, equipment vary)."""
    plant = load_plant()
    plant = plant.model_copy(
        update={
            "faults": plant.faults.model_copy(
                update={k: 0.0 for k in type(plant.faults).model_fields}
            ),
            "reliability": plant.reliability.model_copy(
                update={"bearing_life_weibull_scale_h": 1e7, "pump_life_weibull_scale_h": 1e7}
            ),
            "motors": plant.motors.model_copy(
                update={
                    "winding_life_weibull_scale_h": 1e7,
                    "feed_pump_bearing_life_weibull_scale_h": 1e7,
                    "agitator_sudden_trip": 0.0,
                }
            ),
        }
    )
    rows = []
    for seed in range(4):
        plan = plan_history(plant, load_recipes(), 8, seed=seed)
        rows += [b.inputs for b in plan.batches]
    assert all(b == float("inf") for b in (r["contam_onset_h"] for r in rows))
    return run_rows(rows, seed=1)


@pytest.fixture(scope="session")
def fault_cohort(recipes) -> Cohort:
    """Batch 0 nominal; batch i>0 the same batch with one injected fault."""
    r = recipes.recipes[0]
    base = nominal_inputs(r)
    rows = [
        base,
        nominal_inputs(r, contam_onset_h=120.0),
        nominal_inputs(r, pump_fail_onset_h=150.0, pump_fail_end_h=170.0),
        nominal_inputs(
            r,
            ph_drift_fault_onset_h=100.0,
            ph_drift_fault_end_h=140.0,
            ph_drift_fault_rate_h=0.15 / 24,
        ),
        nominal_inputs(r, do_fail_onset_h=100.0, do_fail_end_h=115.0),
        nominal_inputs(r, chiller_onset_h=200.0, chiller_end_h=206.0),
        nominal_inputs(
            r,
            agitator_fail_h=180.0,
            bearing_life_h=2000.0,
            bearing_run_h0=1820.0,
            agt_brg_p_h=100.0,  # P-F 80 h, defect 20x its size at P by the failure
            agt_brg_tau_h=80.0 / float(np.log(20.0)),
            agt_brg_f_h=180.0,
        ),
    ]
    for row in rows:
        row["end_h"] = 240.0
    return run_rows(rows, seed=3)
