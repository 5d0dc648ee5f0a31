"""Evaluation of the in-batch recommenders on held-out disturbed batches (full engine).

Batches are planned from a fresh plant seed (`EVAL_SEED`, used by nothing else; FB14 only,
batches without a planned fault) and disturbed in three ways the recommenders have to cope
with:

* ``slow_growth``: a slow-growing lot (growth x0.85);
* ``pump_outage``: the feed pump stops on day 3.5 for 20 h and is repaired;
* ``high_lactate``: a lactate-overflow line (lactate yield x1.6, lactate consumption x0.4),
  which the fast twin does not model: its lactate parameters are fixed.

Each batch runs in the full engine to the decision day; its LIMS and online signals up to
then are observed through the landing zone's models and calibrated; each engine (MPC on
the twin, MLP surrogate) recommends; then the batch continues in the full engine three
times from the same state: the fixed recipe, the MPC actions, the neural actions. Product
mass, every release assay (same assay noise in the three arms) and the realised CPPs after
the decision are compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

import numpy as np
import polars as pl
from scipy.stats import t as student_t

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.twin.config import PlantConfig, Recipe, RecipeBook, load_plant
from pharma_assets.twin.engine import BatchInputs, Engine, EngineState, KineticParams
from pharma_assets.twin.outputs import release_assays
from pharma_assets.twin.plant import plan_history

from .calibration import calibrate
from .inbatch import harvest_timing, par_problems, recommend_mpc
from .observations import from_engine
from .recipe import EngineSummary, in_spec
from .surrogate import Surrogate, recommend_neural

EVAL_SEED = 424_242
DISTURBANCES = ("slow_growth", "pump_outage", "high_lactate")
DT = 1 / 60


@dataclass
class InBatchEvaluation:
    per_batch: pl.DataFrame  # batch x arm
    summary: pl.DataFrame  # disturbance x arm
    decision_day: float
    neural_kept: int  # neural choices the twin check kept
    neural_total: int


def disturb(kind: str, row: dict[str, float]) -> dict[str, float]:
    r = dict(row)
    if kind == "slow_growth":
        r["mu_lot"] *= 0.85
    elif kind == "pump_outage":
        r["pump_fail_onset_h"], r["pump_fail_end_h"] = 84.0, 104.0
    return r


def disturbed_params(kind: str) -> KineticParams:
    p = KineticParams()
    if kind == "high_lactate":
        return replace(p, y_lac_glc=p.y_lac_glc * 1.6, q_lac_c=p.q_lac_c * 0.4)
    return p


def stack_inputs(inputs: list[BatchInputs]) -> BatchInputs:
    return BatchInputs(
        **{
            f.name: np.concatenate([getattr(u, f.name) for u in inputs])
            for f in fields(BatchInputs)
        }
    )


def with_actions(u: BatchInputs, acts: list[dict[str, float]]) -> BatchInputs:
    end_h = np.array([a["harvest_day"] * 24.0 for a in acts])
    return u.with_values(
        T_prod=np.array([a["T_prod"] for a in acts]),
        shift_h=np.array([a["shift_day"] * 24.0 for a in acts]),
        ph_sp=np.array([a["ph_sp"] for a in acts]),
        do_sp=np.array([a["do_sp"] for a in acts]),
        feed_lph=u.feed_lph * np.array([a["feed_scale"] for a in acts]),
        end_h=end_h,
        feed_end_h=np.minimum(u.feed_end_h, end_h - 2.0),
    )


def evaluate(
    recipe: Recipe,
    surrogate: Surrogate,
    per_disturbance: int = 6,
    decision_day: float = 6.0,
    eval_seed: int = EVAL_SEED,
    n_members: int = 50,
    plant: PlantConfig | None = None,
    spec: CppSpec | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InBatchEvaluation:
    spec = spec or load_spec()
    plant = plant or load_plant()
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
    rows, kept, total = [], 0, 0
    k_dec = round(decision_day * 24 / DT)
    done = 0
    for g, kind in enumerate(DISTURBANCES):
        group = clean[g * per_disturbance : (g + 1) * per_disturbance]
        u = stack_inputs(
            [
                BatchInputs(**{k: np.array([v], float) for k, v in disturb(kind, b.inputs).items()})
                for b in group
            ]
        )
        params = disturbed_params(kind)
        eng = Engine(u, dt_h=DT, seed=eval_seed + g, params=params)
        rec = eng.run(k_dec)
        state0 = eng.state
        bids = [f"{b.batch_id}-{kind}" for b in group]
        obs = from_engine(
            rec, u, DT, bids, [recipe.recipe_id] * len(group), seed=eval_seed + 10 + g
        )
        arms: dict[str, list[dict[str, float]]] = {"fixed": [], "mpc": [], "neural": []}
        extra: list[dict[str, object]] = []
        for i, o in enumerate(obs):
            o.planned_end_h, o.end_h = float(u.end_h[i]), None
            cal = calibrate(o, recipe, n_members=n_members, seed=i)
            mpc = recommend_mpc(cal, spec=spec)
            neu, ok = recommend_neural(cal, surrogate, spec=spec)
            hv = harvest_timing(cal, spec=spec)
            kept, total = kept + int(ok), total + 1
            arms["fixed"].append(mpc.planned)
            arms["mpc"].append(mpc.actions)
            arms["neural"].append(neu.actions)
            extra.append(
                {
                    "mpc_par_problems": len(par_problems(mpc.actions, cal, spec)),
                    "neural_par_problems": len(par_problems(neu.actions, cal, spec)),
                    "mpc_expected_gain_kg": mpc.expected_gain_kg,
                    "neural_expected_gain_kg": neu.expected_gain_kg,
                    "mpc_changes": mpc.record()["changes"],
                    "neural_changes": neu.record()["changes"],
                    "neural_kept": ok,
                    "harvest_day_advised": hv.harvest_day,
                    "harvest_expected_kg": hv.expected_product_kg,
                }
            )
            done += 1
            if progress:
                progress(done, need)
        for arm, acts in arms.items():
            ua = with_actions(u, acts)
            ends = ua.end_h.copy()
            acc = EngineSummary(ua, ends, DT)
            acc.add(rec, 0)
            e2 = Engine(
                ua, dt_h=DT, seed=eval_seed + 100 + g, params=params, state=copy_state(state0)
            )
            cpp = CppWatch(ua, spec)
            res = run_watched(e2, acc, cpp)
            for i, b in enumerate(group):
                h = {k: float(v[i]) for k, v in res.items()}
                rng = np.random.default_rng([eval_seed, g, i])
                rows.append(
                    {
                        **outcome_row(h, b.lot_attributes["media_mn_ppb"], spec, rng),
                        "batch_id": bids[i],
                        "disturbance": kind,
                        "arm": arm,
                        "harvest_day": float(ends[i]) / 24,
                        "cpp_minutes_outside_par": float(cpp.minutes[i]),
                        **extra[i],
                    }
                )
    per = pl.DataFrame(rows)
    return InBatchEvaluation(per, summarise(per), decision_day, kept, total)


def copy_state(s: EngineState) -> EngineState:
    """An independent copy of an engine state (arrays copied, the step counter shared)."""
    return EngineState(
        **{
            f.name: (getattr(s, f.name) if f.name == "k" else getattr(s, f.name).copy())
            for f in fields(EngineState)
        }
    )


OUTCOME_CQAS = ("aggregates_hmw_pct", "g0f_pct", "titer_g_l")


def outcome_row(
    h: dict[str, float], media_mn_ppb: float, spec: CppSpec, rng: np.random.Generator
) -> dict[str, object]:
    """What an evaluation records of one simulated batch at harvest: product mass,
    viability, the release assays drawn with ``rng`` and those out of spec."""
    assays = {k: v for k, v, _ in release_assays(h, media_mn_ppb, True, rng)}
    bad = [k for k, v in assays.items() if not in_spec(spec, k, v)]
    return {
        "product_mass_kg": h["final_titer_g_l"] * h["final_volume_l"] / 1000,
        "cqa_out_of_spec": ",".join(bad),
        "viability_pct": 100 * h["final_viability"],
        **{f"cqa_{k}": assays[k] for k in OUTCOME_CQAS},
    }


class CppWatch:
    """Minutes after the decision where the true temperature (production, after the ramp)
    or pH is outside its PAR."""

    def __init__(self, u: BatchInputs, spec: CppSpec) -> None:
        t = spec.tags["temperature_c"].limits("production").par
        p = spec.tags["ph"].limits("production").par
        assert t is not None and p is not None
        self.t_par, self.ph_par, self.u = t, p, u
        self.minutes = np.zeros(u.n)

    def add(self, rec: dict[str, np.ndarray], k0: int) -> None:
        m = rec["T"].shape[0]
        t_h = ((k0 + np.arange(m)) * DT)[:, None]
        live = t_h < self.u.end_h[None, :]
        settled = t_h > self.u.shift_h[None, :] + self.u.ramp_h[None, :] + 2.0
        T, pH = rec["T"], rec["pH"]
        out_t = settled & ((self.t_par[0] > T) | (self.t_par[1] < T))
        out_p = (pH < self.ph_par[0]) | (pH > self.ph_par[1])
        self.minutes += (live & (out_t | out_p)).sum(axis=0) * DT * 60


def run_watched(eng: Engine, acc: EngineSummary, cpp: CppWatch) -> dict[str, np.ndarray]:
    k0, k_max = eng.state.k, int(acc.end_k.max())
    while k0 < k_max:
        m = min(1440, k_max - k0)
        rec = eng.run(m)
        acc.add(rec, k0)
        cpp.add(rec, k0)
        k0 += m
    return acc.result()


def summarise(per: pl.DataFrame) -> pl.DataFrame:
    """Per disturbance and arm: mean product mass, its gain over the fixed recipe (paired,
    mean and 95 % t-interval), CQA and CPP breaks."""
    fixed = per.filter(pl.col("arm") == "fixed").select("batch_id", fixed_kg="product_mass_kg")
    j = per.join(fixed, on="batch_id").with_columns(
        gain_kg=pl.col("product_mass_kg") - pl.col("fixed_kg")
    )
    out = []
    for (dist, arm), g in j.group_by("disturbance", "arm", maintain_order=True):
        d = g["gain_kg"].to_numpy()
        n = len(d)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        tq = float(student_t.ppf(0.975, n - 1)) if n > 1 else float("nan")
        out.append(
            {
                "disturbance": dist,
                "arm": arm,
                "batches": n,
                "mean_product_mass_kg": float(g["product_mass_kg"].mean()),  # type: ignore[arg-type]
                "gain_kg": float(d.mean()),
                "gain_pct": float(d.mean() / g["fixed_kg"].mean() * 100),  # type: ignore[operator]
                "gain_ci_lo_kg": float(d.mean() - tq * se),
                "gain_ci_hi_kg": float(d.mean() + tq * se),
                "cqa_breaks": int((g["cqa_out_of_spec"] != "").sum()),
                "cpp_breaks": int((g["cpp_minutes_outside_par"] > 60).sum()),
            }
        )
    return pl.DataFrame(out)
