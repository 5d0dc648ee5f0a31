"""Recipe optimisation: stays inside the PAR, never evaluates on its training seeds, and the
verification compares like with like."""

from __future__ import annotations

import polars as pl
import pytest

from pharma_assets.optimise import recipe as ro
from pharma_assets.twin.config import load_recipes


@pytest.fixture(scope="module")
def fb14():  # type: ignore[no-untyped-def]
    return load_recipes().get("MAB-A-FB14")


def test_plant_draws_are_reproducible_per_seed_and_differ_between_seeds() -> None:
    a, b = ro.plant_draws([1, 2, 3]), ro.plant_draws([3, 2, 1])
    assert a.xv0[0] == b.xv0[2] and a.qp[2] == b.qp[0]
    assert len(set(a.xv0)) == 3


def test_verification_refuses_a_training_seed(fb14) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ro.SeedOverlap, match="evaluation seed 5 is one of"):
        ro.verify(fb14, ro.current_settings(fb14), n_batches=2, eval_seed=5, train_seeds=range(10))
    assert ro.DEFAULT_EVAL_SEED not in set(ro.DEFAULT_TRAIN_SEEDS)


def test_optimiser_stays_in_par_and_meets_its_constraints(fb14) -> None:  # type: ignore[no-untyped-def]
    opt = ro.optimise(fb14, n_trials=48, train_seeds=range(16))
    assert opt.trials.height == 48 and opt.train_seeds == tuple(range(16))
    box = ro.bounds(fb14)
    for row in opt.trials.iter_rows(named=True):  # every candidate tried, not just the best
        assert not ro.check_par({k: row[k] for k in ro.DECISIONS}, fb14), row
        assert all(box[k].lo <= row[k] <= box[k].hi for k in ro.DECISIONS)
    assert opt.best.p_rft >= ro.MIN_P_IN_SPEC
    assert opt.best.mean_product_kg >= opt.current.mean_product_kg
    assert opt.best.settings["harvest_day"] <= fb14.planned_duration_days


def test_check_par_names_the_limit(fb14) -> None:  # type: ignore[no-untyped-def]
    s = ro.current_settings(fb14) | {"ph_sp": 7.4}
    (msg,) = ro.check_par(s, fb14)
    assert "ph_sp 7.4 is outside [6.8, 7.2] (ph PAR" in msg


def test_verifying_the_current_recipe_against_itself_finds_no_gain(fb14) -> None:  # type: ignore[no-untyped-def]
    v = ro.verify(fb14, ro.current_settings(fb14), n_batches=6, eval_seed=777_001)
    assert v.per_batch.height == 12
    cur = v.per_batch.filter(pl.col("arm") == "current")
    rec = v.per_batch.filter(pl.col("arm") == "recommended")
    assert cur["batch_id"].to_list() == rec["batch_id"].to_list()
    # same batches, same lots and assay noise: only the engine's probe noise differs
    assert abs(v.gain) < 0.01 and v.rft_current == v.rft_recommended
    assert v.gain_ci[0] <= v.gain <= v.gain_ci[1]


def test_recipe_with_is_the_next_version(fb14) -> None:  # type: ignore[no-untyped-def]
    s = ro.current_settings(fb14) | {"shift_day": 6.4, "T_prod": 32.9, "harvest_day": 13.9}
    r = ro.recipe_with(fb14, s)
    assert r.version == fb14.version + 1
    assert r.setpoints.temperature_shift_day == 6.4 and r.planned_duration_days == 13.9
    assert r.feed.end_day <= 13.9
    assert next(p.start_day for p in r.phases if p.phase == "production") == 6.4
