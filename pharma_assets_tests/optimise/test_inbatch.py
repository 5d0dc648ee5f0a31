"""In-batch recommendations: never outside the PAR (property-style over many random states),
better than or equal to the plan on the twin, harvest advice inside its window; the neural
engine's training seeds are disjoint from every evaluation seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pharma_assets.optimise import inbatch, inbatch_eval, recipe, surrogate
from pharma_assets.optimise.calibration import CalibratedBatch, calibrate
from pharma_assets.optimise.model import TwinState

from .conftest import Synthetic


@pytest.fixture(scope="module")
def cals(synthetic: Synthetic) -> list[CalibratedBatch]:
    return [
        calibrate(synthetic.obs.until(d * 24), synthetic.recipe, n_members=10, seed=d)
        for d in (3, 5, 7)
    ]


@pytest.fixture(scope="module")
def tiny_surrogate(synthetic: Synthetic) -> surrogate.Surrogate:
    ro = surrogate.rollouts(
        synthetic.recipe, seeds=range(500_000, 500_030), days=(3, 5, 7, 9), actions_per_state=8
    )
    return surrogate.train(ro, hidden=(16,))


def _random_state(cal: CalibratedBatch, rng: np.random.Generator) -> CalibratedBatch:
    """The same batch pushed somewhere else: other cells, metabolites, plan and death rate
    (the plan itself stays inside the PAR)."""
    s = cal.state
    n = s.n
    st = TwinState(
        s.t_h,
        s.Xv * rng.uniform(0.3, 2.0),
        s.Xd * rng.uniform(0.5, 1.5),
        s.G * rng.uniform(0.0, 2.0),
        s.Gln * rng.uniform(0.2, 2.0),
        s.L * rng.uniform(0.5, 4.0),
        s.A * rng.uniform(0.5, 3.0),
        s.P * rng.uniform(0.5, 2.0),
        s.V * rng.uniform(0.9, 1.1),
    )
    u = cal.inputs.with_values(
        T_prod=rng.uniform(31.5, 34.0),
        ph_sp=rng.uniform(6.8, 7.2),
        do_sp=rng.uniform(20, 60),
        end_h=rng.uniform(12, 16) * 24,
        feed_lph=cal.inputs.feed_lph * rng.uniform(0.8, 1.2),
        kd_mult=cal.inputs.kd_mult * rng.uniform(0.7, 1.5, n),
    )
    return replace(cal, state=st, inputs=u)


def test_no_recommendation_ever_leaves_par(cals: list[CalibratedBatch], tiny_surrogate) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(20261203)
    seen_changes = 0
    for i in range(16):
        cal = _random_state(cals[i % len(cals)], rng)
        box = inbatch.action_bounds(cal)
        mpc = inbatch.recommend_mpc(cal, n_candidates=32, n_search_members=4, top=2, seed=i)
        neu, _ = surrogate.recommend_neural(cal, tiny_surrogate, n_candidates=64, seed=i)
        hv = inbatch.harvest_timing(cal, step_days=0.5)
        for rec in (mpc, neu):
            assert inbatch.par_problems(rec.actions, cal) == [], (i, rec.actions)
            for k, v in rec.changed.items():  # what it changes stays inside the NOR box
                assert box[k].lo - 1e-9 <= v <= box[k].hi + 1e-9, (i, k, v)
            lim = {"T_prod": (31.5, 34.0), "ph_sp": (6.8, 7.2), "do_sp": (20.0, 60.0)}  # PAR
            for k, (lo, hi) in lim.items():
                assert lo <= rec.actions[k] <= hi, (i, k, rec.actions[k])
            seen_changes += bool(rec.changed)
        assert box["harvest_day"].lo - 1e-9 <= hv.harvest_day <= box["harvest_day"].hi + 1e-9
    assert seen_changes > 0  # the property was exercised on real changes, not only "keep plan"


def test_a_recommendation_is_the_plan_or_better_and_feasible_on_the_twin(
    cals: list[CalibratedBatch],
) -> None:
    cal = cals[-1]
    rec = inbatch.recommend_mpc(cal, n_candidates=32, n_search_members=6)
    plan = inbatch.score_actions(cal, [rec.planned])[0]
    assert rec.planned_product_kg == pytest.approx(plan.mean_product_kg)
    if rec.changed:
        assert rec.p_ok >= inbatch.MIN_P
        assert rec.expected_product_kg > rec.planned_product_kg or plan.p_ok < inbatch.MIN_P
    else:
        assert rec.actions == rec.planned
    assert rec.record()["changes"] == (
        ", ".join(f"{k}={v:.3g}" for k, v in rec.changed.items()) or "none"
    )


def test_shift_is_fixed_once_it_happened(cals: list[CalibratedBatch]) -> None:
    cal = cals[-1]  # day 7: shifted on day 5
    b = inbatch.action_bounds(cal)["shift_day"]
    assert b.lo == b.hi == pytest.approx(float(cal.inputs.shift_h[0]) / 24)
    with pytest.raises(inbatch.RecommendationRefused, match="ph_sp"):
        inbatch.finish(
            replace(cal, inputs=cal.inputs.with_values(ph_sp=7.5)),
            "mpc",
            inbatch.planned_actions(replace(cal, inputs=cal.inputs.with_values(ph_sp=7.5))),
            __import__("pharma_assets.lake.specs", fromlist=["load_spec"]).load_spec(),
        )


def test_harvest_advice_is_the_best_feasible_day(cals: list[CalibratedBatch]) -> None:
    hv = inbatch.harvest_timing(cals[-1])
    feas = hv.curve.filter(hv.curve["p_ok"] >= inbatch.MIN_P)
    assert hv.expected_product_kg == pytest.approx(feas["mean_product_kg"].max())
    assert hv.interval_kg[0] <= hv.expected_product_kg <= hv.interval_kg[1]


def test_surrogate_is_accurate_enough_on_held_out_draws(tiny_surrogate) -> None:  # type: ignore[no-untyped-def]
    assert tiny_surrogate.n_test > 0 and set(tiny_surrogate.r2) == set(surrogate.OUTPUTS)
    assert tiny_surrogate.r2["product_mass_kg"] > 0.5  # even the tiny net learns the main effect


def test_training_and_evaluation_seeds_are_disjoint() -> None:
    train = set(recipe.DEFAULT_TRAIN_SEEDS) | set(surrogate.SURROGATE_SEEDS)
    assert not set(recipe.DEFAULT_TRAIN_SEEDS) & set(surrogate.SURROGATE_SEEDS)
    assert recipe.DEFAULT_EVAL_SEED not in train and inbatch_eval.EVAL_SEED not in train
    assert recipe.DEFAULT_EVAL_SEED != inbatch_eval.EVAL_SEED


def test_each_recipe_has_its_own_surrogate_in_mlflow(tiny_surrogate, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pharma_assets.twin.config import load_recipes

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lt = load_recipes().get("MAB-A-FB15-LT")
    ro = surrogate.rollouts(lt, seeds=range(500_000, 500_020), days=(4, 8), actions_per_state=6)
    sur_lt = surrogate.train(ro, hidden=(8,))
    assert surrogate.model_name(lt.recipe_id) == "pharma_inbatch_surrogate_mab_a_fb15_lt"
    surrogate.log_to_mlflow(sur_lt, lt.recipe_id, uri=uri)
    got, note = surrogate.load_latest(lt.recipe_id, uri)
    assert got is not None and "fb15_lt v1" in note
    x = ro.X[:5]
    assert np.allclose(got.predict(x)["product_mass_kg"], sur_lt.predict(x)["product_mass_kg"])
    none, note14 = surrogate.load_latest("MAB-A-FB14", uri)  # FB14 has none registered here
    assert none is None and "mpc only" in note14
    # the FB15-LT rollouts are the FB15-LT recipe's, not FB14's: its shift day is later
    assert not np.allclose(ro.X.mean(axis=0), tiny_surrogate.pipeline[0].mean_)  # type: ignore[index]
