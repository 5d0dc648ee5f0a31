"""The neural engine of the in-batch recommender: an MLP surrogate of the twin.

Trained on fast-twin rollouts: plant draws (`recipe.plant_draws`, seeds from their own
stream, disjoint from the recipe optimiser's and from every evaluation seed) widened by the
disturbances a running batch meets (slow growth, under-delivered feed, a lactate excess at
the decision time), simulated to an as-of day between 2 and 11, then continued to harvest
under random actions from the in-batch box (`inbatch.box`). The network maps the state at
the as-of time, the batch multipliers and the actions to the harvest CQAs (standardised
inputs and outputs, scikit-learn ``MLPRegressor``; no deep-learning framework). Its
held-out error per CQA is kept and added to the assay noise when it judges a CQA's
probability of meeting its specification.

`recommend_neural` searches thousands of candidate actions on the surrogate over every
ensemble member; the chosen actions are then scored once on the twin against the plan
(`inbatch.finish`), which keeps the plan if the twin disagrees that they are feasible and
better; `evaluation` counts how often that happened.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.twin.config import Recipe

from . import model
from .calibration import CalibratedBatch
from .inbatch import (
    ACTIONS,
    MIN_HARVEST_VIABILITY,
    MIN_P,
    Recommendation,
    box,
    candidates,
    finish,
)
from .recipe import p_in_spec, plant_draws, twin_batches
from .whatif import cqas_at_harvest

MODEL_NAME = "pharma_inbatch_surrogate"  # one registered model per recipe: `model_name`
SURROGATE_SEEDS = range(500_000, 500_096)  # plant draws of the training rollouts
OUTPUTS = (
    "product_mass_kg",
    "viability_pct",
    "titer_g_l",
    "aggregates_hmw_pct",
    "g0f_pct",
    "g1f_pct",
    "g2f_pct",
    "acidic_variants_pct",
    "hcp_ppm",
    "purity_pct",
)
STATE_FEATURES = (
    "as_of_day",
    "log_xv",
    "log_xd",
    "log_g",
    "log_gln",
    "log_l",
    "log_a",
    "log_p",
    "v",
    "peak_a",
    "log_mu",
    "log_kd",
    "log_qp",
    "feed_factor",
    "shifted_h",
)
ACTION_FEATURES = ("T_prod", "shift_in_days", "ph_sp", "do_sp", "feed_scale", "harvest_in_days")
FEATURES = STATE_FEATURES + ACTION_FEATURES


def state_features(
    as_of_h: float, s: model.TwinState, u: model.TwinInputs, peak_a: np.ndarray
) -> np.ndarray:
    """(members, state features) at the as-of time."""
    shifted = np.maximum(as_of_h - u.shift_h, 0.0)
    cols = [
        np.full(s.n, as_of_h / 24.0),
        np.log(s.Xv),
        np.log(s.Xd + 1e-3),
        np.log(s.G + 0.1),
        np.log(s.Gln + 0.1),
        np.log(s.L + 0.1),
        np.log(s.A + 0.1),
        np.log(s.P + 0.01),
        s.V,
        peak_a,
        np.log(u.mu_mult),
        np.log(u.kd_mult),
        np.log(u.qp_mult),
        u.feed_factor,
        shifted,
    ]
    return np.column_stack(cols)


def action_features(
    as_of_h: float, a: dict[str, np.ndarray] | dict[str, float], n: int
) -> np.ndarray:
    d = as_of_h / 24.0
    g = {k: np.broadcast_to(np.asarray(a[k], float), (n,)) for k in ACTIONS}
    return np.column_stack(
        [
            g["T_prod"],
            np.maximum(g["shift_day"] - d, 0.0),
            g["ph_sp"],
            g["do_sp"],
            g["feed_scale"],
            g["harvest_day"] - d,
        ]
    )


@dataclass
class Rollouts:
    X: np.ndarray
    Y: np.ndarray
    group: np.ndarray  # plant draw of each row (held-out split by draw)


def rollouts(
    recipe: Recipe,
    seeds: range = SURROGATE_SEEDS,
    days: tuple[int, ...] = tuple(range(2, 12)),
    actions_per_state: int = 8,
    seed: int = 0,
    spec: CppSpec | None = None,
) -> Rollouts:
    """Twin rollouts from disturbed plant draws at each as-of day under random actions."""
    spec = spec or load_spec()
    rng = np.random.default_rng(seed)
    draws = plant_draws(seeds)
    n = draws.n
    kind = rng.integers(0, 4, n)  # 0 nominal, 1 slow growth, 2 feed under-delivery, 3 lactate
    draws.mu = np.where(kind == 1, draws.mu * rng.uniform(0.8, 0.95, n), draws.mu)
    draws.feed_factor = np.where(kind == 2, rng.uniform(0.6, 0.9, n), draws.feed_factor)
    base = {
        "T_grow": recipe.setpoints.temperature_c,
        "T_prod": recipe.setpoints.production_temperature_c,
        "ph_sp": recipe.setpoints.ph,
        "do_sp": recipe.setpoints.dissolved_oxygen_pct,
        "shift_day": recipe.setpoints.temperature_shift_day,
        "feed_scale": 1.0,
        "harvest_day": recipe.planned_duration_days,
    }
    u0, s0 = twin_batches(recipe, draws, [base])
    Xs, Ys, Gs = [], [], []
    k = actions_per_state
    pct = recipe.feed.rate_pct_fill_per_day
    for d in days:
        t = d * 24.0
        hist, st = model.simulate(u0, s0, t)
        st.L = np.where(kind == 3, st.L * rng.uniform(1.3, 2.5, n), st.L)
        peak_a = hist["A"].max(axis=0)
        sf = state_features(t, st, u0, peak_a)
        acts: dict[str, np.ndarray] = {}
        for name in ACTIONS:
            lo, hi = np.empty(n * k), np.empty(n * k)
            for i in range(n):
                b = box(d, float(u0.shift_h[i]) / 24, float(u0.end_h[i]) / 24, pct, spec)[name]
                lo[i * k : (i + 1) * k], hi[i * k : (i + 1) * k] = b.lo, b.hi
            acts[name] = lo + (hi - lo) * rng.random(n * k)
        sel = np.repeat(np.arange(n), k)
        u = model.TwinInputs(**{f: getattr(u0, f)[sel] for f in u0.__dataclass_fields__})
        end_h = acts["harvest_day"] * 24.0
        u = u.with_values(
            T_prod=acts["T_prod"],
            shift_h=acts["shift_day"] * 24.0,
            ph_sp=acts["ph_sp"],
            do_sp=acts["do_sp"],
            feed_lph=u.feed_lph * acts["feed_scale"],
            end_h=end_h,
            feed_end_h=np.minimum(u.feed_end_h, end_h - 2.0),
        )
        s = model.TwinState(st.t_h, *(getattr(st, nm)[sel] for nm in model.STATE_NAMES))
        fwd, _ = model.simulate(u, s, math.ceil(float(end_h.max()) / model.DT_H) * model.DT_H)
        traj = {nm: np.concatenate([hist[nm][:-1][:, sel], fwd[nm]]) for nm in model.STATE_NAMES}
        traj["t_h"] = np.concatenate([hist["t_h"][:-1], fwd["t_h"]])
        cq = cqas_at_harvest(traj, u)  # nominal media Mn, as every calibrated twin
        Xs.append(np.hstack([sf[sel], action_features(t, acts, n * k)]))
        Ys.append(np.column_stack([cq[o] for o in OUTPUTS]))
        Gs.append(sel)
    return Rollouts(np.vstack(Xs), np.vstack(Ys), np.concatenate(Gs))


@dataclass
class Surrogate:
    pipeline: object  # StandardScaler + MLPRegressor
    y_mean: np.ndarray
    y_sd: np.ndarray
    rmse: dict[str, float]  # held-out error per output
    r2: dict[str, float]
    n_train: int
    n_test: int
    params: dict[str, object] = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        z = self.pipeline.predict(X)  # type: ignore[attr-defined]
        y = np.asarray(z).reshape(len(X), -1) * self.y_sd + self.y_mean
        return {o: y[:, j] for j, o in enumerate(OUTPUTS)}


def train(ro: Rollouts, seed: int = 0, hidden: tuple[int, ...] = (64, 64)) -> Surrogate:
    """Fit the MLP; the last fifth of the plant draws is held out for the error figures."""
    # scikit-learn is imported here, not at module level: the Dagster code location (and
    # every run worker) loads this module, and must not pay for it (test_load_cost)
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cut = np.quantile(np.unique(ro.group), 0.8)
    tr, te = ro.group <= cut, ro.group > cut
    y_mean, y_sd = ro.Y[tr].mean(axis=0), ro.Y[tr].std(axis=0) + 1e-9
    params = {
        "hidden_layer_sizes": hidden,
        "alpha": 1e-4,
        "max_iter": 300,
        "early_stopping": True,
        "random_state": seed,
    }
    pipe = make_pipeline(StandardScaler(), MLPRegressor(**params))  # type: ignore[arg-type]
    with threadpool_limits(1):  # small matrices: BLAS threads only contend on a busy machine
        pipe.fit(ro.X[tr], (ro.Y[tr] - y_mean) / y_sd)
    sur = Surrogate(pipe, y_mean, y_sd, {}, {}, int(tr.sum()), int(te.sum()), params)
    pred = sur.predict(ro.X[te])
    for j, o in enumerate(OUTPUTS):
        sur.rmse[o] = float(np.sqrt(np.mean((pred[o] - ro.Y[te, j]) ** 2)))
        sur.r2[o] = float(r2_score(ro.Y[te, j], pred[o]))
    return sur


def recommend_neural(
    cal: CalibratedBatch,
    sur: Surrogate,
    n_candidates: int = 1024,
    seed: int = 0,
    spec: CppSpec | None = None,
) -> tuple[Recommendation, bool]:
    """The surrogate's best feasible actions, checked once on the twin; also returns whether
    the twin check kept the surrogate's choice (False: it fell back to the plan)."""
    spec = spec or load_spec()
    cands = candidates(cal, n_candidates, seed, spec)
    m, k = cal.n_members, len(cands)
    peak_a = cal.history["A"].max(axis=0)
    sf = state_features(cal.as_of_h, cal.state, cal.inputs, peak_a)
    acts = {a: np.repeat([c[a] for c in cands], m) for a in ACTIONS}
    X = np.hstack([np.tile(sf, (k, 1)), action_features(cal.as_of_h, acts, m * k)])
    pred = sur.predict(X)
    ps = p_in_spec(pred, spec, sur.rmse)
    joint = np.prod(np.vstack(list(ps.values())), axis=0)
    from scipy.special import ndtr

    joint = joint * ndtr(
        (pred["viability_pct"] - MIN_HARVEST_VIABILITY) / max(sur.rmse["viability_pct"], 0.5)
    )
    mass = pred["product_mass_kg"].reshape(k, m).mean(axis=1)
    p_ok = joint.reshape(k, m).mean(axis=1)
    order = np.argsort(-np.where(p_ok >= MIN_P, mass, -np.inf))
    best = cands[int(order[0])] if p_ok[order[0]] >= MIN_P else cands[0]
    rec = finish(cal, "neural", best, spec)
    kept = all(abs(rec.actions[a] - best[a]) < 1e-9 for a in ACTIONS)
    return rec, kept


def model_name(recipe_id: str) -> str:
    """The MLflow model of a recipe's surrogate (each recipe's twin rollouts differ: its
    set-points, shift and feed), e.g. ``pharma_inbatch_surrogate_mab_a_fb14``."""
    return f"{MODEL_NAME}_{re.sub(r'[^a-z0-9]+', '_', recipe_id.lower()).strip('_')}"


def log_to_mlflow(sur: Surrogate, recipe_id: str, uri: str | None = None) -> object:
    """Register the surrogate in MLflow like the platform's other models (never promoted
    by the gate: it is judged by the in-batch evaluation, not by one metric)."""
    from pharma_assets.ml import registry

    metrics = {f"r2_{o}": v for o, v in sur.r2.items()} | {
        f"rmse_{o}": v for o, v in sur.rmse.items()
    }
    trained = registry.TrainedModel(
        name=model_name(recipe_id),
        model=sur,
        params={**sur.params, "recipe_id": recipe_id, "n_train": sur.n_train},
        features=list(FEATURES),
        data_versions={},
        metrics=metrics,
        gate_metric="r2_product_mass_kg",
        higher_is_better=True,
        evaluation_set=f"twin rollouts of held-out plant draws (n={sur.n_test})",
        n_eval=sur.n_test,
        artifacts={
            "r2": pl.DataFrame(
                {
                    "output": list(sur.r2),
                    "r2": list(sur.r2.values()),
                    "rmse": list(sur.rmse.values()),
                }
            )
        },
    )
    return registry.register(trained, None, uri=uri)


def load_latest(recipe_id: str, uri: str | None = None) -> tuple[Surrogate | None, str]:
    """The recipe's champion surrogate, else its newest registered version, else None; with
    a note."""
    from pharma_assets.ml import registry

    name = model_name(recipe_id)
    champ = registry.load_champion(name, uri=uri)
    if champ is not None:
        return champ[0], f"{name} champion v{champ[1]}"
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri or registry.tracking_uri())
        versions = client.search_model_versions(f"name='{name}'")
    except Exception as e:  # no registry or no such model yet
        return None, f"no {name} in MLflow ({type(e).__name__}): mpc only"
    if not versions:
        return None, f"no {name} registered yet: mpc only"
    v = str(max(int(m.version) for m in versions))
    return registry.load_version(name, v, uri=uri), f"{name} v{v} (newest, no champion)"
