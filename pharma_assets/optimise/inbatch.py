"""In-batch recommendations: what to change for the rest of a running batch, and when to
harvest.

From a calibrated ensemble (`calibration.calibrate` at the batch's as-of time) the
recommender chooses, within the NOR (inside the PAR) and the schedule, the production
temperature, the
shift day (if the shift is still ahead), pH and DO set-points, the feed rate and the
harvest day that maximise the expected product mass over the ensemble, subject to every
predicted release CQA meeting its specification with probability >= 95 % and the harvest
viability staying above `MIN_HARVEST_VIABILITY` with the same probability.

Two engines choose:

* ``mpc``: model-predictive optimisation on the calibrated twin itself: a batch of
  candidate actions (quasi-random over the box, plus "no change") scored on a subset of the
  ensemble, then the best few re-scored on every member. Open loop from the as-of time
  (refreshed hourly by the schedule, which makes it receding-horizon in use).
* ``neural``: the same search on a neural surrogate of the twin (`surrogate`): an MLP that
  maps (state, batch multipliers, actions) to the harvest CQAs, trained on twin rollouts;
  thousands of candidates cost milliseconds.

Whatever the engine, a recommendation passes `whatif.check` (the same PAR and physical
limits a manual what-if is held to) before it is returned; one that would not raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec

from . import model
from .calibration import CalibratedBatch
from .recipe import FEED_SCALE_RANGE, Bound, p_in_spec
from .whatif import MAX_BATCH_DAYS, MAX_FEED_PCT_FILL_PER_DAY, Scenario, check, cqas_at_harvest

ACTIONS = ("T_prod", "shift_day", "ph_sp", "do_sp", "feed_scale", "harvest_day")
MIN_HARVEST_VIABILITY = 50.0  # % at harvest (a common harvest trigger; a site choice)
MIN_P = 0.95
SHIFT_BAND_DAYS = 1.5
HARVEST_EARLY_DAYS = 2.0  # harvest window: planned end - this ...
HARVEST_LATE_DAYS = 1.0  # ... to planned end + this (the unit's schedule slack)


class RecommendationRefused(ValueError):
    """A recommendation would leave the PAR or a physical limit (a bug if it ever fires)."""


def action_bounds(cal: CalibratedBatch, spec: CppSpec | None = None) -> dict[str, Bound]:
    """The search box for the rest of the batch: NOR for set-points, the unit's schedule
    for the harvest, the shift only if it is still ahead."""
    u = cal.inputs
    pct = float(u.feed_lph[0]) * 24.0 / float(u.V0[0]) * 100.0
    return box(cal.as_of_h / 24, float(u.shift_h[0]) / 24, float(u.end_h[0]) / 24, pct, spec)


def box(
    as_of_d: float,
    shift: float,
    planned_end: float,
    feed_pct_fill_per_day: float,
    spec: CppSpec | None = None,
) -> dict[str, Bound]:
    """`action_bounds` from the batch's as-of day, planned shift and end days and feed rate."""
    spec = spec or load_spec()

    def par(tag: str, phase: str) -> tuple[float, float]:
        # the NOR, inside the PAR: the realised value scatters around its set-point (control
        # noise, overshoot), and a set-point on the PAR edge put the true temperature above
        # the PAR for over an hour in the evaluation (docs/optimisation.md)
        p = spec.tags[tag].limits(phase).nor
        assert p is not None
        return p

    h_lo = max(as_of_d + 0.25, planned_end - HARVEST_EARLY_DAYS)
    h_hi = min(max(planned_end + HARVEST_LATE_DAYS, h_lo), MAX_BATCH_DAYS)
    if shift <= as_of_d:  # already shifted: fixed
        s_lo = s_hi = shift
    else:
        s_lo = max(as_of_d, shift - SHIFT_BAND_DAYS)
        s_hi = max(min(shift + SHIFT_BAND_DAYS, h_lo - 1.0), s_lo)
    pct = feed_pct_fill_per_day
    f_hi = min(FEED_SCALE_RANGE[1], MAX_FEED_PCT_FILL_PER_DAY / pct) if pct > 0 else 1.0
    v = f"spec v{spec.version}"
    return {
        "T_prod": Bound("T_prod", *par("temperature_c", "production"), f"temperature NOR {v}"),
        "shift_day": Bound("shift_day", s_lo, s_hi, "shift still ahead ± 1.5 d, else fixed"),
        "ph_sp": Bound("ph_sp", *par("ph", "production"), f"ph NOR {v}"),
        "do_sp": Bound("do_sp", *par("dissolved_oxygen_pct", "production"), f"DO NOR {v}"),
        "feed_scale": Bound("feed_scale", FEED_SCALE_RANGE[0], f_hi, "feed × 0.8-1.3, pump range"),
        "harvest_day": Bound("harvest_day", h_lo, h_hi, "planned end -2 d ... +1 d"),
    }


def planned_actions(cal: CalibratedBatch) -> dict[str, float]:
    """The batch's plan as it stands (no change)."""
    u = cal.inputs
    return {
        "T_prod": float(u.T_prod[0]),
        "shift_day": float(u.shift_h[0]) / 24.0,
        "ph_sp": float(u.ph_sp[0]),
        "do_sp": float(u.do_sp[0]),
        "feed_scale": 1.0,
        "harvest_day": float(u.end_h[0]) / 24.0,
    }


def to_scenario(a: dict[str, float], cal: CalibratedBatch) -> Scenario:
    """The actions as a what-if scenario (only what differs from the plan)."""
    p = planned_actions(cal)

    def ch(k: str) -> float | None:
        return float(a[k]) if abs(a[k] - p[k]) > 1e-9 else None

    return Scenario(
        shift_day=ch("shift_day"),
        production_temp_c=ch("T_prod"),
        ph=ch("ph_sp"),
        do_pct=ch("do_sp"),
        feed_scale=ch("feed_scale"),
        harvest_day=ch("harvest_day"),
    )


def par_problems(
    a: dict[str, float], cal: CalibratedBatch, spec: CppSpec | None = None
) -> list[str]:
    """Every limit the actions break: whatif's refusals (PAR, physical limits, schedule), and
    for every value the recommendation changes, the search box (NOR for set-points)."""
    spec = spec or load_spec()
    out = list(check(to_scenario(a, cal), cal, spec).refusals)
    for k, tag in (("T_prod", "temperature_c"), ("ph_sp", "ph"), ("do_sp", "dissolved_oxygen_pct")):
        par = spec.tags[tag].limits("production").par
        assert par is not None
        if not par[0] - 1e-9 <= a[k] <= par[1] + 1e-9:  # kept or changed: never outside PAR
            out.append(f"{k} {a[k]:g} is outside the {tag} PAR [{par[0]:g}, {par[1]:g}]")
    plan = planned_actions(cal)
    for k, b in action_bounds(cal, spec).items():
        if abs(a[k] - plan[k]) <= 1e-9:
            continue
        if not (math.isfinite(a[k]) and b.lo - 1e-9 <= a[k] <= b.hi + 1e-9):
            out.append(f"{k} {a[k]:g} is outside [{b.lo:g}, {b.hi:g}] ({b.source})")
    return out


def _tile_members(
    cal: CalibratedBatch, idx: np.ndarray, k: int
) -> tuple[model.TwinInputs, model.TwinState]:
    sel = np.tile(idx, k)
    u = model.TwinInputs(**{f.name: getattr(cal.inputs, f.name)[sel] for f in fields(cal.inputs)})
    s = cal.state
    st = model.TwinState(s.t_h, *(getattr(s, n)[sel] for n in model.STATE_NAMES))
    return u, st


def _apply(u: model.TwinInputs, actions: Sequence[dict[str, float]], m: int) -> model.TwinInputs:
    col = lambda k: np.repeat([a[k] for a in actions], m)  # noqa: E731
    end_h = col("harvest_day") * 24.0
    return u.with_values(
        T_prod=col("T_prod"),
        shift_h=col("shift_day") * 24.0,
        ph_sp=col("ph_sp"),
        do_sp=col("do_sp"),
        feed_lph=u.feed_lph * col("feed_scale"),
        end_h=end_h,
        feed_end_h=np.minimum(u.feed_end_h, end_h - 2.0),
    )


@dataclass
class ActionScore:
    actions: dict[str, float]
    mean_product_kg: float
    p_ok: float  # joint probability: every CQA in spec and viability above the limit
    cqa_median: dict[str, float]
    product_kg: np.ndarray = field(repr=False)


def score_actions(
    cal: CalibratedBatch,
    actions: Sequence[dict[str, float]],
    members: np.ndarray | None = None,
    spec: CppSpec | None = None,
) -> list[ActionScore]:
    """Every candidate on the same ensemble members, in one twin run."""
    spec = spec or load_spec()
    idx = np.arange(cal.n_members) if members is None else members
    m, k = len(idx), len(actions)
    u, s = _tile_members(cal, idx, k)
    u = _apply(u, actions, m)
    end = math.ceil(float(u.end_h.max()) / model.DT_H) * model.DT_H
    fwd, _ = model.simulate(u, s, max(end, cal.as_of_h), params=cal.params)
    hist = cal.history
    sel = np.tile(idx, k)
    traj = {n: np.concatenate([hist[n][:-1][:, sel], fwd[n]]) for n in model.STATE_NAMES}
    traj["t_h"] = np.concatenate([hist["t_h"][:-1], fwd["t_h"]])
    cq = cqas_at_harvest(traj, u)
    ps = p_in_spec(cq, spec)
    joint = np.prod(np.vstack(list(ps.values())), axis=0) * (
        cq["viability_pct"] >= MIN_HARVEST_VIABILITY
    )
    out = []
    for i, a in enumerate(actions):
        sl = slice(i * m, (i + 1) * m)
        out.append(
            ActionScore(
                dict(a),
                float(cq["product_mass_kg"][sl].mean()),
                float(joint[sl].mean()),
                {n: float(np.median(v[sl])) for n, v in cq.items()},
                cq["product_mass_kg"][sl],
            )
        )
    return out


def candidates(
    cal: CalibratedBatch, n: int, seed: int, spec: CppSpec | None = None
) -> list[dict[str, float]]:
    """``n`` quasi-random actions over the box (scrambled Sobol), the plan first."""
    bx = action_bounds(cal, spec)
    from scipy.stats import qmc  # lazy: the code location imports this module

    x = qmc.Sobol(len(ACTIONS), scramble=True, seed=seed).random_base2(
        max(0, math.ceil(math.log2(n)))
    )[:n]
    out = [planned_actions(cal)]
    for row in x:
        out.append(
            {k: bx[k].lo + (bx[k].hi - bx[k].lo) * v for k, v in zip(ACTIONS, row, strict=True)}
        )
    return out


@dataclass
class Recommendation:
    batch_id: str
    as_of_h: float
    engine: str
    actions: dict[str, float]
    planned: dict[str, float]
    expected_product_kg: float  # over the full ensemble, on the twin
    planned_product_kg: float
    p_ok: float
    planned_p_ok: float
    interval_gain_kg: tuple[float, float]  # 5-95 % of the paired gain over the ensemble
    changed: dict[str, float]
    cqa_median: dict[str, float]

    @property
    def expected_gain_kg(self) -> float:
        return self.expected_product_kg - self.planned_product_kg

    def record(self) -> dict[str, object]:
        return {
            "batch_id": self.batch_id,
            "as_of_h": self.as_of_h,
            "engine": self.engine,
            **{f"rec_{k}": v for k, v in self.actions.items()},
            **{f"plan_{k}": v for k, v in self.planned.items()},
            "expected_product_kg": self.expected_product_kg,
            "planned_product_kg": self.planned_product_kg,
            "expected_gain_kg": self.expected_gain_kg,
            "gain_p05_kg": self.interval_gain_kg[0],
            "gain_p95_kg": self.interval_gain_kg[1],
            "p_in_spec": self.p_ok,
            "planned_p_in_spec": self.planned_p_ok,
            "changes": ", ".join(f"{k}={v:.3g}" for k, v in self.changed.items()) or "none",
        }


def finish(
    cal: CalibratedBatch, engine: str, best: dict[str, float], spec: CppSpec
) -> Recommendation:
    """Score the chosen actions and the plan on every member; keep the plan unless the
    choice is feasible and better; check the limits."""
    plan = planned_actions(cal)
    chosen, base = score_actions(cal, [best, plan], spec=spec)
    better = chosen.mean_product_kg > base.mean_product_kg or base.p_ok < MIN_P
    if not (chosen.p_ok >= MIN_P and better):  # quality first: an infeasible plan may lose mass
        chosen = base
    problems = par_problems(chosen.actions, cal, spec)
    if problems:
        raise RecommendationRefused(f"{engine} recommendation for {cal.batch_id}: {problems}")
    d = chosen.product_kg - base.product_kg
    changed = {k: v for k, v in chosen.actions.items() if abs(v - plan[k]) > 1e-9}
    return Recommendation(
        cal.batch_id,
        cal.as_of_h,
        engine,
        chosen.actions,
        plan,
        chosen.mean_product_kg,
        base.mean_product_kg,
        chosen.p_ok,
        base.p_ok,
        (float(np.quantile(d, 0.05)), float(np.quantile(d, 0.95))),
        changed,
        chosen.cqa_median,
    )


def recommend_mpc(
    cal: CalibratedBatch,
    n_candidates: int = 128,
    n_search_members: int = 12,
    top: int = 6,
    seed: int = 0,
    spec: CppSpec | None = None,
) -> Recommendation:
    """Model-predictive choice on the calibrated twin: candidates scored on a member subset,
    the best ``top`` feasible re-scored on every member."""
    spec = spec or load_spec()
    cands = candidates(cal, n_candidates, seed, spec)
    sub = np.linspace(0, cal.n_members - 1, min(n_search_members, cal.n_members)).astype(int)
    scores = score_actions(cal, cands, sub, spec)
    feas = sorted((s for s in scores if s.p_ok >= MIN_P), key=lambda s: -s.mean_product_kg)
    if not feas:
        return finish(cal, "mpc", planned_actions(cal), spec)
    full = score_actions(cal, [s.actions for s in feas[:top]], spec=spec)
    ok = [s for s in full if s.p_ok >= MIN_P] or full[:1]
    return finish(cal, "mpc", max(ok, key=lambda s: s.mean_product_kg).actions, spec)


# ---------------------------------------------------------------- harvest timing
@dataclass
class HarvestAdvice:
    batch_id: str
    as_of_h: float
    harvest_day: float
    expected_product_kg: float
    interval_kg: tuple[float, float]
    planned_day: float
    planned_product_kg: float
    p_ok: float
    curve: pl.DataFrame  # harvest_day, mean product, p05, p95, p_ok


def harvest_timing(
    cal: CalibratedBatch, step_days: float = 0.25, spec: CppSpec | None = None
) -> HarvestAdvice:
    """Expected product mass for each harvest day in the window (set-points as planned);
    the best day whose viability and CQA limits hold with probability >= 95 %."""
    spec = spec or load_spec()
    bx = action_bounds(cal, spec)["harvest_day"]
    plan = planned_actions(cal)
    days = np.arange(bx.lo, bx.hi + 1e-9, step_days)
    if not len(days) or abs(days - plan["harvest_day"]).min() > 1e-9:
        days = np.sort(np.append(days, plan["harvest_day"]))
    scores = score_actions(cal, [plan | {"harvest_day": float(d)} for d in days], spec=spec)
    curve = pl.DataFrame(
        {
            "harvest_day": days,
            "mean_product_kg": [s.mean_product_kg for s in scores],
            "p05_kg": [float(np.quantile(s.product_kg, 0.05)) for s in scores],
            "p95_kg": [float(np.quantile(s.product_kg, 0.95)) for s in scores],
            "p_ok": [s.p_ok for s in scores],
            "viability_pct": [s.cqa_median["viability_pct"] for s in scores],
            "aggregates_hmw_pct": [s.cqa_median["aggregates_hmw_pct"] for s in scores],
        }
    )
    feas = curve.filter(pl.col("p_ok") >= MIN_P)
    i_plan = int(np.argmin(abs(days - plan["harvest_day"])))
    best = (
        feas.sort("mean_product_kg", descending=True).row(0, named=True)
        if feas.height
        else (curve.row(i_plan, named=True))
    )
    return HarvestAdvice(
        cal.batch_id,
        cal.as_of_h,
        float(best["harvest_day"]),
        float(best["mean_product_kg"]),
        (float(best["p05_kg"]), float(best["p95_kg"])),
        plan["harvest_day"],
        float(curve["mean_product_kg"][i_plan]),
        float(best["p_ok"]),
        curve,
    )
