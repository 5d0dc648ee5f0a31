"""Lactate levers on the twin (docs/optimisation.md §9, "High lactate: which lever?").

For the 5 high-lactate held-out batches of `inbatch_eval` (FB14, plant seed 424242), run in
the full engine to day 3 and day 6 and observed through the landing zone models: calibrate
the twin with its nominal lactate kinetics and with the true (disturbed) ones ("oracle"),
let the MPC recommend, and scan the glucose bolus target (5, 3, 2, 1 g/L) with the plan
otherwise unchanged. Prints one line per batch and twin. Run:
``PYTHONPATH=. nice -n 10 python -m benchmarks.optimise_lactate_levers``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from pharma_assets.optimise import calibration, inbatch, model, observations
from pharma_assets.optimise import inbatch_eval as ie
from pharma_assets.twin.config import RecipeBook, load_plant, load_recipes
from pharma_assets.twin.engine import BatchInputs, Engine
from pharma_assets.twin.plant import plan_history


def main() -> None:
    r = load_recipes().get("MAB-A-FB14")
    start = datetime(2028, 6, 5, tzinfo=UTC)
    plan = plan_history(load_plant(), RecipeBook(recipes=[r]), 30, ie.EVAL_SEED, start=start)
    clean = [b for b in plan.batches if b.status == "complete" and not b.faults][10:15]
    u = ie.stack_inputs(
        [BatchInputs(**{k: np.array([v], float) for k, v in b.inputs.items()}) for b in clean]
    )
    hl = ie.disturbed_params("high_lactate")
    for day in (3, 6):
        rec = Engine(u, dt_h=ie.DT, seed=1, params=hl).run(round(day * 24 * 60))
        ids = [f"b{i}" for i in range(u.n)]
        obs = observations.from_engine(rec, u, ie.DT, ids, [r.recipe_id] * u.n, seed=2)
        for i, o in enumerate(obs):
            o.planned_end_h, o.end_h = float(u.end_h[i]), None
            lac = o.lims["lactate_g_l"][1][-1]
            for name, p in (("nominal", None), ("oracle", hl)):
                cal = calibration.calibrate(o, r, n_members=30, seed=i, params=p)
                m = inbatch.recommend_mpc(cal)
                plan_a = inbatch.planned_actions(cal)
                glc = {}
                for gt in (5.0, 3.0, 2.0, 1.0):
                    uu, ss = inbatch._tile_members(cal, np.arange(cal.n_members), 1)
                    uu = inbatch._apply(uu, [plan_a], cal.n_members).with_values(
                        gc_bolus_to=gt, gc_threshold=min(3.0, gt - 0.5) if gt > 1 else 0.5
                    )
                    fwd, _ = model.simulate(uu, ss, float(uu.end_h.max()), params=cal.params)
                    k = round(float(uu.end_h[0]) / model.DT_H) - round(cal.as_of_h / model.DT_H)
                    glc[gt] = round(float((fwd["P"][k] * fwd["V"][k]).mean() / 1000), 3)
                print(
                    f"day {day} batch {i} {name}: LIMS lactate {lac:.2f} g/L, twin "
                    f"{np.median(cal.state.L):.2f}; plan {m.planned_product_kg:.2f} kg, MPC gain "
                    f"{m.expected_gain_kg:+.3f} kg {m.changed}; glucose target -> kg {glc}"
                )


if __name__ == "__main__":
    main()
