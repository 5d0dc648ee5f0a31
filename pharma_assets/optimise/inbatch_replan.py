"""In-batch recommendations re-planned every hour, as the schedule runs them, against a plan
made once: the same held-out disturbed batches as `inbatch_eval` (full engine).

Arms, every one continuing the same batch from the same engine state at the decision day:

* ``fixed``: the recipe as planned;
* ``mpc_once``: one MPC decision at the decision day with the standard calibration, followed
  to harvest (the evaluation of `inbatch_eval`);
* ``mpc_lac_once``: the same with `calibration.calibrate_lactate` (the twin also learns the
  batch's lactate kinetics from its LIMS lactate);
* ``mpc_lac_hourly``: re-planned every ``every_h`` hours (the schedule's cadence, cron
  ``7 * * * *``) from the decision day to harvest: each time the batch's record so far is
  observed through the landing zone's models, calibrated (lactate kinetics re-fitted when a
  new LIMS lactate result arrived, else kept), and the MPC's actions replace the plan for
  the next hour. The pump's commanded flow per hour goes with the record (tag
  ``feed_setpoint_ml_h``), so the calibration's pump factor is delivered / commanded hour
  by hour and a feed change an hour ago does not look like pump wear. Set-points already changed are part of the plan the next calibration sees.

How a re-plan composes with the last one: set-points, shift and harvest day are absolute
(the harvest window stays the schedule's: planned end -2 d ... +1 d); the feed action is
relative to the feed now commanded, and the commanded feed is held within the recipe's
feed band (x0.8-1.3 of the recipe, the pump range), so re-planning cannot ratchet it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.twin.config import PlantConfig, Recipe, RecipeBook, load_plant
from pharma_assets.twin.engine import BatchInputs, Engine
from pharma_assets.twin.plant import plan_history

from .calibration import (
    FEED_SETPOINT,
    CalibratedBatch,
    LactateFit,
    calibrate,
    calibrate_lactate,
    fit_lactate,
)
from .inbatch import par_problems, recommend_mpc
from .inbatch_eval import (
    DISTURBANCES,
    DT,
    EVAL_SEED,
    CppWatch,
    copy_state,
    disturb,
    disturbed_params,
    outcome_row,
    stack_inputs,
    summarise,
    with_actions,
)
from .observations import BatchObservations, from_engine
from .recipe import FEED_SCALE_RANGE, EngineSummary
from .whatif import MAX_FEED_PCT_FILL_PER_DAY

ARMS = ("fixed", "mpc_once", "mpc_lac_once", "mpc_lac_hourly")


@dataclass
class ReplanEvaluation:
    per_batch: pl.DataFrame  # batch x arm
    summary: pl.DataFrame  # disturbance x arm (`inbatch_eval.summarise`)
    decision_day: float
    every_h: float
    replans: int  # MPC decisions made by the hourly arm
    par_problems: int  # limits broken by any recommendation of any arm (must be 0)


def recipe_now(recipe: Recipe, a: dict[str, float]) -> Recipe:
    """The recipe with the batch's current plan (set-points, shift, commanded feed), which
    the next calibration replays as the batch's plan."""
    sp = recipe.setpoints.model_copy(
        update={
            "production_temperature_c": float(a["T_prod"]),
            "ph": float(a["ph_sp"]),
            "dissolved_oxygen_pct": float(a["do_sp"]),
            "temperature_shift_day": float(a["shift_day"]),
        }
    )
    fd = recipe.feed.model_copy(
        update={"rate_pct_fill_per_day": recipe.feed.rate_pct_fill_per_day * a["feed_scale"]}
    )
    return recipe.model_copy(update={"setpoints": sp, "feed": fd})


def compose(current: dict[str, float], rec: dict[str, float], recipe: Recipe) -> dict[str, float]:
    """The new absolute plan from the current one and a recommendation made against it."""
    hi = min(FEED_SCALE_RANGE[1], MAX_FEED_PCT_FILL_PER_DAY / recipe.feed.rate_pct_fill_per_day)
    feed = float(np.clip(current["feed_scale"] * rec["feed_scale"], FEED_SCALE_RANGE[0], hi))
    return {**{k: float(v) for k, v in rec.items()}, "feed_scale": feed}


class _Decider:
    """One arm's decisions for one batch: calibrate on the record so far, recommend."""

    def __init__(self, recipe: Recipe, lactate: bool, n_members: int, spec: CppSpec) -> None:
        self.recipe, self.lactate, self.n, self.spec = recipe, lactate, n_members, spec
        self.fit: LactateFit | None = None
        self.fit_samples = -1
        self.par_problems = 0

    def calibrate(self, obs: BatchObservations, r: Recipe, seed: int) -> CalibratedBatch:
        if not self.lactate:
            return calibrate(obs, r, self.n, seed)
        n_lac = len(obs.lims.get("lactate_g_l", ((), ()))[0])
        if n_lac == self.fit_samples:  # no new lactate result: keep the kinetics
            if self.fit is None:
                return calibrate(obs, r, self.n, seed)
            cal = calibrate(obs, r, self.n, seed, params=self.fit.params())
            cal.lactate = self.fit
            return cal
        cal = calibrate_lactate(obs, r, self.n, seed)
        self.fit = cal.lactate if cal.lactate is not None else fit_lactate(cal, obs)
        self.fit_samples = n_lac
        return cal

    def decide(self, obs: BatchObservations, plan: dict[str, float], seed: int) -> dict[str, float]:
        r = recipe_now(self.recipe, plan)
        cal = self.calibrate(obs, r, seed)
        rec = recommend_mpc(cal, spec=self.spec)
        self.par_problems += len(par_problems(rec.actions, cal, self.spec))
        return compose(plan, rec.actions, self.recipe)


def _yield(fit: LactateFit | None) -> float:
    return fit.yield_mult if fit is not None else math.nan


def _hourly(x: np.ndarray) -> np.ndarray:
    """Hourly means of a minute signal (whole hours only)."""
    per_h = round(1 / DT)
    hours = len(x) // per_h
    return np.asarray(x[: hours * per_h], float).reshape(hours, per_h).mean(axis=1)


def _concat(recs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}


def evaluate_replanning(
    recipe: Recipe,
    per_disturbance: int = 3,
    decision_day: float = 6.0,
    every_h: float = 1.0,
    disturbances: tuple[str, ...] = DISTURBANCES,
    arms: tuple[str, ...] = ARMS,
    eval_seed: int = EVAL_SEED,
    n_members: int = 50,
    plant: PlantConfig | None = None,
    spec: CppSpec | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReplanEvaluation:
    spec = spec or load_spec()
    plant = plant or load_plant()
    unknown = set(arms) - set(ARMS)
    if unknown or "fixed" not in arms:
        raise ValueError(f"arms must include 'fixed' and be among {ARMS}, got {arms}")
    plan = plan_history(
        plant,
        RecipeBook(recipes=[recipe]),
        per_disturbance * 6,
        eval_seed,
        start=datetime(2028, 6, 5, tzinfo=UTC),
    )
    clean = [b for b in plan.batches if b.status == "complete" and not b.faults]
    need = per_disturbance * len(DISTURBANCES)
    if len(clean) < need:
        raise ValueError(f"plant seed {eval_seed} gave {len(clean)} clean batches, need {need}")
    k_dec = round(decision_day * 24 / DT)
    step = max(1, round(every_h / DT))
    rows: list[dict[str, object]] = []
    replans = problems = 0
    for kind in disturbances:
        g = DISTURBANCES.index(kind)
        group = clean[g * per_disturbance : (g + 1) * per_disturbance]
        u = stack_inputs(
            [
                BatchInputs(**{k: np.array([v], float) for k, v in disturb(kind, b.inputs).items()})
                for b in group
            ]
        )
        params = disturbed_params(kind)
        eng = Engine(u, dt_h=DT, seed=eval_seed + g, params=params)
        rec0 = eng.run(k_dec)
        state0 = eng.state
        bids = [f"{b.batch_id}-{kind}" for b in group]
        plan0 = [
            {
                "T_prod": float(u.T_prod[i]),
                "shift_day": float(u.shift_h[i]) / 24,
                "ph_sp": float(u.ph_sp[i]),
                "do_sp": float(u.do_sp[i]),
                "feed_scale": 1.0,
                "harvest_day": float(u.end_h[i]) / 24,
            }
            for i in range(u.n)
        ]
        for arm in arms:
            acts = [dict(p) for p in plan0]
            deciders = [_Decider(recipe, "lac" in arm, n_members, spec) for _ in range(u.n)]
            hourly = arm.endswith("hourly")
            decisions = [0] * u.n
            changes = [0] * u.n
            recs = [rec0]
            e = Engine(
                u, dt_h=DT, seed=eval_seed + 100 + g, params=params, state=copy_state(state0)
            )
            acc = EngineSummary(u, u.end_h.copy(), DT)
            acc.add(rec0, 0)
            cpp = CppWatch(u, spec)
            k = k_dec
            while True:
                due = arm != "fixed" and (k == k_dec or (hourly and (k - k_dec) % step == 0))
                if due:
                    full = _concat(recs)
                    for i in range(u.n):
                        now_d = k * DT / 24
                        if acts[i]["harvest_day"] - now_d < 0.25 + 1e-9:
                            continue  # harvest within the hour: nothing left to decide
                        rec_i = {n: v[:, i : i + 1] for n, v in full.items()}
                        ui = with_actions(u, acts).take([i])
                        obs = from_engine(
                            rec_i,
                            ui,
                            DT,
                            [bids[i]],
                            [recipe.recipe_id],
                            seed=eval_seed + 1000 * (g + 1) + i,
                            lims_seed=eval_seed + 10 + g * 100 + i,
                        )[0]
                        obs.planned_end_h, obs.end_h = float(u.end_h[i]), None
                        obs.hourly[FEED_SETPOINT] = _hourly(rec_i["feed_cmd_lph"][:, 0]) * 1000.0
                        new = deciders[i].decide(obs, acts[i], i)
                        decisions[i] += 1
                        changes[i] += int(any(abs(new[a] - acts[i][a]) > 1e-6 for a in new))
                        acts[i] = new
                    ua = with_actions(u, acts)
                    e.inputs = ua
                    acc.end_k = np.ceil(ua.end_h / DT).astype(int)
                    acc.shift_k = (ua.shift_h / DT).astype(int)
                    cpp.u = ua
                k_end = int(acc.end_k.max())
                if k >= k_end:
                    break
                m = min(step if hourly else 1440, k_end - k)
                r = e.run(m)
                acc.add(r, k)
                cpp.add(r, k)
                if hourly:
                    recs.append(r)
                k += m
            if progress:
                progress(f"{kind} {arm}: {sum(decisions)} decisions")
            replans += sum(decisions) if hourly else 0
            problems += sum(d.par_problems for d in deciders)
            res = acc.result()
            ends = acc.end_k * DT
            for i, b in enumerate(group):
                h = {key: float(v[i]) for key, v in res.items()}
                rng = np.random.default_rng([eval_seed, g, i])
                rows.append(
                    {
                        **outcome_row(h, b.lot_attributes["media_mn_ppb"], spec, rng),
                        "batch_id": bids[i],
                        "disturbance": kind,
                        "arm": arm,
                        "harvest_day": float(ends[i]) / 24,
                        "cpp_minutes_outside_par": float(cpp.minutes[i]),
                        "decisions": decisions[i],
                        "plan_changes": changes[i],
                        "lactate_yield_mult": _yield(deciders[i].fit),
                        **{f"final_{a}": v for a, v in acts[i].items()},
                    }
                )
    per = pl.DataFrame(rows)
    return ReplanEvaluation(per, summarise(per), decision_day, every_h, replans, problems)
