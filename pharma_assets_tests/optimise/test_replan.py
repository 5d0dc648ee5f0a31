"""Hourly re-planning, the batch's lactate kinetics, and the recipe headroom analysis."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from pharma_assets.optimise import calibration, headroom, inbatch_eval, inbatch_replan, observations
from pharma_assets.optimise import recipe as ro
from pharma_assets.optimise.surrogate import SURROGATE_SEEDS
from pharma_assets.optimise.whatif import MAX_FEED_PCT_FILL_PER_DAY
from pharma_assets.twin.config import load_recipes
from pharma_assets.twin.engine import BatchInputs, Engine, KineticParams
from pharma_assets.twin.plant import nominal_inputs

FB14 = load_recipes().get("MAB-A-FB14")


def _observe(params: KineticParams, days: float = 6.0) -> observations.BatchObservations:
    row = nominal_inputs(FB14)
    u = BatchInputs(**{k: np.array([v]) for k, v in row.items()})
    rec = Engine(u, dt_h=1 / 60, seed=3, params=params).run(round(days * 24 * 60))
    obs = observations.from_engine(rec, u, 1 / 60, ["LAC-1"], [FB14.recipe_id], seed=4)[0]
    obs.planned_end_h, obs.end_h = float(row["end_h"]), None
    return obs


def test_lactate_kinetics_are_learnt_from_lims_lactate() -> None:
    p = KineticParams()
    high = _observe(replace(p, y_lac_glc=p.y_lac_glc * 1.6, q_lac_c=p.q_lac_c * 0.4))
    cal = calibration.calibrate_lactate(high, FB14, n_members=8)
    assert cal.lactate is not None and "lactate kinetics" in cal.message
    assert 1.4 < cal.lactate.yield_mult < 2.0  # true 1.6
    assert cal.lactate.consumption_mult < 1.0  # true 0.4 (little seen by day 6)
    assert cal.lactate.rms_after < cal.lactate.rms_before / 3
    # the twin now carries the lactate the LIMS measured
    _t, v = high.lims["lactate_g_l"]
    assert np.median(cal.state.L) == pytest.approx(v[-1], rel=0.25)
    nominal = calibration.calibrate_lactate(_observe(p), FB14, n_members=8)
    assert nominal.lactate is not None
    assert 0.8 < nominal.lactate.yield_mult < 1.25 and 0.7 < nominal.lactate.consumption_mult < 1.4


def test_lactate_needs_three_results_else_it_is_the_plain_calibration() -> None:
    obs = _observe(KineticParams()).until(60.0)  # 3 LIMS days but cut the lactate
    obs.lims["lactate_g_l"] = tuple(x[:2] for x in obs.lims["lactate_g_l"])  # type: ignore[assignment]
    cal = calibration.calibrate_lactate(obs, FB14, n_members=4)
    assert cal.lactate is None and "lactate" not in cal.message


def test_pump_factor_uses_the_commanded_feed_when_it_is_recorded() -> None:
    obs = _observe(KineticParams())
    # the command was raised 30 % an hour ago: delivered/recipe would read as a worn pump
    n = len(obs.hourly["feed_rate_ml_h"])
    cmd = np.where(obs.hourly["feed_rate_ml_h"] > 0, 1.0, 0.0) * FB14.feed.rate_pct_fill_per_day
    cmd = cmd / 100 * FB14.initial.fill_volume_l / 24 * 1000
    plain = calibration.build_problem(obs, FB14).base.feed_factor[0]
    obs.hourly[calibration.FEED_SETPOINT] = cmd
    with_cmd = calibration.build_problem(obs, FB14).base.feed_factor[0]
    assert with_cmd == pytest.approx(plain, abs=0.03)  # same command: same answer
    raised = FB14.model_copy(
        update={
            "feed": FB14.feed.model_copy(
                update={"rate_pct_fill_per_day": FB14.feed.rate_pct_fill_per_day * 1.3}
            )
        }
    )
    assert calibration.build_problem(obs, raised).base.feed_factor[0] == pytest.approx(
        with_cmd, abs=1e-9
    )  # the factor is delivered / commanded, not delivered / the new recipe rate
    assert n > 100


def test_composed_plans_never_leave_the_par_or_the_feed_band() -> None:
    """Property: whatever sequence of recommendations (each inside its box), the plan the
    batch runs stays inside the PAR and the recipe's feed band."""
    from pharma_assets.lake.specs import load_spec

    spec = load_spec()
    rng = np.random.default_rng(7)
    par = {
        "T_prod": spec.tags["temperature_c"].limits("production").par,
        "ph_sp": spec.tags["ph"].limits("production").par,
        "do_sp": spec.tags["dissolved_oxygen_pct"].limits("production").par,
    }
    f_hi = min(ro.FEED_SCALE_RANGE[1], MAX_FEED_PCT_FILL_PER_DAY / FB14.feed.rate_pct_fill_per_day)
    plan = ro.current_settings(FB14) | {"feed_scale": 1.0}
    for _ in range(500):
        rec = {
            "T_prod": rng.uniform(32.0, 33.5),
            "shift_day": plan["shift_day"],
            "ph_sp": rng.uniform(6.9, 7.1),
            "do_sp": rng.uniform(30, 50),
            "feed_scale": rng.uniform(*ro.FEED_SCALE_RANGE),
            "harvest_day": rng.uniform(12, 15),
        }
        plan = inbatch_replan.compose(plan, rec, FB14)
        for k, (lo, hi) in par.items():  # type: ignore[misc]
            assert lo <= plan[k] <= hi
        assert ro.FEED_SCALE_RANGE[0] <= plan["feed_scale"] <= f_hi + 1e-12
        r = inbatch_replan.recipe_now(FB14, plan)
        assert r.setpoints.production_temperature_c == plan["T_prod"]
        assert r.feed.rate_pct_fill_per_day == pytest.approx(
            FB14.feed.rate_pct_fill_per_day * plan["feed_scale"]
        )


def test_replanning_evaluation_runs_decides_and_stays_in_spec() -> None:
    """One pump-outage batch from day 11, re-planned every 24 h (the hourly cadence costs too
    long for a unit test): decisions are made and followed, none breaks a limit."""
    ev = inbatch_replan.evaluate_replanning(
        FB14,
        per_disturbance=1,
        decision_day=11.0,
        every_h=24.0,
        disturbances=("pump_outage",),
        arms=("fixed", "mpc_lac_hourly"),
        n_members=12,
    )
    per = ev.per_batch
    assert per["arm"].to_list() == ["fixed", "mpc_lac_hourly"]
    fixed, hourly = per.row(0, named=True), per.row(1, named=True)
    assert fixed["decisions"] == 0 and fixed["final_feed_scale"] == 1.0
    assert hourly["decisions"] >= 2 and ev.replans == hourly["decisions"]
    assert ev.par_problems == 0
    assert (per["cpp_minutes_outside_par"] <= 60).all() and (per["cqa_out_of_spec"] == "").all()
    assert ev.summary.filter(pl.col("arm") == "fixed")["gain_kg"][0] == 0.0
    with pytest.raises(ValueError, match="arms"):
        inbatch_replan.evaluate_replanning(FB14, arms=("mpc_once",))


def test_evaluation_seeds_are_disjoint_from_training_seeds() -> None:
    assert inbatch_eval.EVAL_SEED not in set(SURROGATE_SEEDS)
    assert inbatch_eval.EVAL_SEED not in set(ro.DEFAULT_TRAIN_SEEDS)
    assert inbatch_eval.EVAL_SEED != ro.DEFAULT_EVAL_SEED


def test_headroom_profiles_stay_in_the_box_and_explain_the_proposal() -> None:
    opt = ro.optimise(FB14, n_trials=24, train_seeds=range(8))
    table, summary = headroom.headroom(FB14, opt, points=5)
    assert table["decision"].to_list() == list(ro.DECISIONS)
    box = ro.bounds(FB14)
    prof = headroom.profiles(FB14, opt, points=5)
    for row in prof.iter_rows(named=True):  # every profile point inside the PAR / box
        s = opt.best.settings | {row["decision"]: row["value"]}
        assert not ro.check_par(s, FB14), s
        assert box[row["decision"]].lo <= row["value"] <= box[row["decision"]].hi
    assert table["position_in_box"].is_between(0, 1).all()
    # the proposal itself is one profile point of each decision only if it is on the grid;
    # the unconstrained profile is never worse than the feasible one
    t = table.filter(pl.col("profile_best_feasible_gain").is_not_null())
    assert (t["profile_best_unconstrained_gain"] >= t["profile_best_feasible_gain"] - 1e-12).all()
    assert summary["feasible_trials"] == opt.feasible_trials
    assert summary["twin_gain"] == pytest.approx(opt.predicted_gain)


def test_refinement_stays_in_the_nor_and_never_loses_on_the_twin() -> None:
    opt = ro.optimise(FB14, n_trials=16, train_seeds=range(8))
    s, trace = headroom.refine(FB14, opt, passes=2, points=5)
    box = headroom.refine_box(FB14)
    for d, (lo, hi) in box.items():
        assert lo - 1e-9 <= s[d] <= hi + 1e-9, d
    assert not ro.check_par(s, FB14)
    for d in ("T_prod", "ph_sp", "do_sp"):  # the NOR lies inside the PAR
        assert ro.bounds(FB14)[d].lo <= box[d][0] < box[d][1] <= ro.bounds(FB14)[d].hi
    assert trace.height == 2 * len(ro.DECISIONS)
    assert trace["mean_product_kg"].is_sorted()  # coordinate ascent: never worse
    from pharma_assets.twin.config import load_plant

    wv = min(u.working_volume_l for u in load_plant().units)
    (ev,) = ro.evaluate(FB14, ro.plant_draws(opt.train_seeds), [s], wv)
    assert ev.p_rft >= ro.MIN_P_IN_SPEC
    assert ev.mean_product_kg == pytest.approx(trace["mean_product_kg"][-1])
