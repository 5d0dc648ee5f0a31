"""Recipe optimisation on the twin, verified on fresh plant batches the optimiser never saw.

The optimiser (optuna's TPE sampler, a Bayesian optimiser with constraint handling) chooses a
recipe's set-points (growth and production temperature, pH, DO, shift day, feed rate,
harvest day) to maximise the expected product mass over the plant's batch-to-batch
variability: seed density, media and feed lots (growth, productivity, feed concentration,
manganese), feed-pump wear, kLa, timing of the shift and the feed start, death rate. Each
candidate is scored on the fast twin (`model`) over ``n_train`` plant draws from the
*training* seeds, under three constraints:

* every release CQA the twin predicts meets its specification with probability >= 95 %
  (the joint right-first-time probability over the draws, with the release assays' noise);
* every CPP set-point inside its PAR (the search box *is* the PAR; `check_par` re-checks);
* the batch ends within its schedule slot (harvest day <= the recipe's planned duration)
  and the harvest volume stays within the vessel's working volume.

Verification (`verify`) is on the *full engine* (60 s steps, control loops, probes, faults,
equipment wear) for a plant history planned from an *evaluation* seed disjoint from every
training seed: the same batches (same lots, seeds, faults) run once with the current recipe
and once with the recommendation, and the release assays use the same random numbers in
both arms, so the difference is the recipe's alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.twin.config import PlantConfig, Recipe, RecipeBook, load_plant
from pharma_assets.twin.engine import BatchInputs, Engine
from pharma_assets.twin.outputs import release_assays
from pharma_assets.twin.plant import plan_history

from . import model
from .whatif import (
    MAX_FEED_PCT_FILL_PER_DAY,
    RELEASE_ASSAY_CV,
    RELEASE_ASSAY_SD,
    cqas_at_harvest,
)

log = logging.getLogger(__name__)

TRAIN_STREAM = 1301  # SeedSequence entropy prefix of the optimiser's plant draws
DEFAULT_TRAIN_SEEDS = range(0, 64)
DEFAULT_EVAL_SEED = 913_013  # plant-history seed of the verification; never a training seed
MIN_P_IN_SPEC = 0.95
SHIFT_BAND_DAYS = 1.5  # the shift day has no PAR in the spec: recipe +/- this
FEED_SCALE_RANGE = (0.8, 1.3)  # the feed rate has no PAR: this band around the recipe
HARVEST_EARLIEST_DAYS = 2.0  # the harvest may move this much earlier than the schedule slot
DECISIONS = ("T_grow", "T_prod", "ph_sp", "do_sp", "shift_day", "feed_scale", "harvest_day")


class SeedOverlap(ValueError):
    """The verification would reuse a seed the optimiser trained on."""


@dataclass(frozen=True)
class Bound:
    name: str
    lo: float
    hi: float
    source: str


def bounds(recipe: Recipe, spec: CppSpec | None = None) -> dict[str, Bound]:
    """The search box: PAR for the CPP set-points, stated bands for the rest."""
    spec = spec or load_spec()

    def par(tag: str, phase: str) -> tuple[float, float]:
        p = spec.tags[tag].limits(phase).par
        assert p is not None
        return p

    sp, fd, ini = recipe.setpoints, recipe.feed, recipe.initial
    v = f"spec v{spec.version}"
    feed_max = MAX_FEED_PCT_FILL_PER_DAY / fd.rate_pct_fill_per_day
    end = recipe.planned_duration_days
    shift = sp.temperature_shift_day
    del ini
    return {
        "T_grow": Bound(
            "T_grow", *par("temperature_c", "growth"), f"temperature_c PAR (growth) {v}"
        ),
        "T_prod": Bound(
            "T_prod", *par("temperature_c", "production"), f"temperature_c PAR (production) {v}"
        ),
        "ph_sp": Bound("ph_sp", *par("ph", "production"), f"ph PAR {v}"),
        "do_sp": Bound(
            "do_sp",
            *par("dissolved_oxygen_pct", "production"),
            f"dissolved_oxygen_pct PAR (production) {v}",
        ),
        "shift_day": Bound(
            "shift_day",
            max(shift - SHIFT_BAND_DAYS, 1.0),
            shift + SHIFT_BAND_DAYS,
            f"recipe shift day ± {SHIFT_BAND_DAYS:g} d (no PAR)",
        ),
        "feed_scale": Bound(
            "feed_scale",
            FEED_SCALE_RANGE[0],
            min(FEED_SCALE_RANGE[1], feed_max),
            "recipe feed rate × 0.8-1.3, within the pump range (no PAR)",
        ),
        "harvest_day": Bound(
            "harvest_day",
            end - HARVEST_EARLIEST_DAYS,
            end,
            f"schedule slot: at most the planned {end:g} days",
        ),
    }


def current_settings(recipe: Recipe) -> dict[str, float]:
    sp = recipe.setpoints
    return {
        "T_grow": sp.temperature_c,
        "T_prod": sp.production_temperature_c,
        "ph_sp": sp.ph,
        "do_sp": sp.dissolved_oxygen_pct,
        "shift_day": sp.temperature_shift_day,
        "feed_scale": 1.0,
        "harvest_day": recipe.planned_duration_days,
    }


def check_par(settings: dict[str, float], recipe: Recipe, spec: CppSpec | None = None) -> list[str]:
    """Every setting outside its bound, as messages naming the limit (empty: all inside)."""
    out = []
    for name, b in bounds(recipe, spec).items():
        v = settings[name]
        if not (math.isfinite(v) and b.lo - 1e-9 <= v <= b.hi + 1e-9):
            out.append(f"{name} {v:g} is outside [{b.lo:g}, {b.hi:g}] ({b.source})")
    return out


# ---------------------------------------------------------------- plant variability
@dataclass
class PlantDraws:
    """``n`` batches' worth of plant variability for the fast twin (one element each)."""

    seeds: tuple[int, ...]
    xv0: np.ndarray  # seed density multiplier
    v0: np.ndarray
    mu: np.ndarray
    qp: np.ndarray
    kd: np.ndarray
    feed_conc: np.ndarray
    feed_factor: np.ndarray  # pump delivery (wear)
    kla: np.ndarray
    shift_dh: np.ndarray
    feed_start_dh: np.ndarray
    end_dh: np.ndarray
    glc0: np.ndarray
    mn_ppb: np.ndarray

    @property
    def n(self) -> int:
        return len(self.seeds)


def plant_draws(seeds: Sequence[int]) -> PlantDraws:
    """One draw per seed of the variability the plant simulator puts on a batch
    (twin.plant.plan_history), plus a death-rate spread the simulator does not vary but a
    real line has; seed ``s`` always gives the same batch."""
    cols: dict[str, list[float]] = {
        k: []
        for k in (
            "xv0",
            "v0",
            "mu",
            "qp",
            "kd",
            "feed_conc",
            "feed_factor",
            "kla",
            "shift_dh",
            "feed_start_dh",
            "end_dh",
            "glc0",
            "mn_ppb",
        )
    }
    for s in seeds:
        r = np.random.default_rng([TRAIN_STREAM, int(s)])
        row = {
            "xv0": r.lognormal(0, 0.15),
            "v0": r.normal(1, 0.01),
            "mu": r.normal(1, 0.03) * r.normal(1, 0.04),
            "qp": r.normal(1, 0.05),
            "kd": r.lognormal(0, 0.10),
            "feed_conc": r.normal(1, 0.03),
            "feed_factor": r.uniform(0.9, 1.0),
            "kla": r.normal(1, 0.06),
            "shift_dh": r.normal(0, 1.5),
            "feed_start_dh": r.normal(0, 1.0),
            "end_dh": r.normal(0, 2.0),
            "glc0": r.normal(1, 0.03),
            "mn_ppb": r.uniform(20, 60),
        }
        for k, v in row.items():
            cols[k].append(float(v))
    return PlantDraws(tuple(int(s) for s in seeds), **{k: np.array(v) for k, v in cols.items()})


def twin_batches(
    recipe: Recipe, draws: PlantDraws, settings: Sequence[dict[str, float]]
) -> tuple[model.TwinInputs, model.TwinState]:
    """Fast-twin inputs and initial states for every (settings, draw) pair, settings-major."""
    k, n = len(settings), draws.n
    u = model.recipe_inputs(recipe, k * n)
    tile = lambda a: np.tile(a, k)  # noqa: E731
    col = lambda name: np.repeat([s[name] for s in settings], n)  # noqa: E731
    end_h = col("harvest_day") * 24.0 + tile(draws.end_dh)
    u = u.with_values(
        T_grow=col("T_grow"),
        T_prod=col("T_prod"),
        ph_sp=col("ph_sp"),
        do_sp=col("do_sp"),
        shift_h=col("shift_day") * 24.0 + tile(draws.shift_dh),
        V0=u.V0 * tile(draws.v0),
        feed_start_h=u.feed_start_h + tile(draws.feed_start_dh),
        feed_end_h=np.minimum(recipe.feed.end_day * 24.0, end_h - 2.0),
        feed_lph=u.feed_lph * col("feed_scale"),
        feed_factor=tile(draws.feed_factor),
        feed_G=u.feed_G * tile(draws.feed_conc),
        feed_Gln=u.feed_Gln * tile(draws.feed_conc),
        end_h=end_h,
        kla_min=u.kla_min * tile(draws.kla),
        mu_mult=tile(draws.mu),
        kd_mult=tile(draws.kd),
        qp_mult=tile(draws.qp),
    )
    ini = recipe.initial
    s0 = model.initial_state(
        recipe,
        k * n,
        Xv=ini.seed_density_e6_cells_ml * tile(draws.xv0),
        G=ini.glucose_g_l * tile(draws.glc0),
        V=u.V0,
    )
    return u, s0


def p_in_spec(
    cqas: dict[str, np.ndarray], spec: CppSpec, extra_sd: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Per member and release CQA: the probability that the release assay meets the
    specification, given the predicted value and the assay's noise (plus ``extra_sd``, e.g. a
    surrogate model's error, added in quadrature)."""
    out = {}
    for name, v in cqas.items():
        lab = spec.lab.release.get(name)
        if lab is None or lab.spec is None:
            continue
        sd = RELEASE_ASSAY_SD.get(name, 0.0) + RELEASE_ASSAY_CV.get(name, 0.0) * np.abs(v)
        sd = np.sqrt(sd**2 + (extra_sd or {}).get(name, 0.0) ** 2)
        sd = np.maximum(sd, 1e-9)
        lo, hi = lab.spec
        p = np.ones(len(v))
        if lo is not None:
            p *= _phi((v - lo) / sd)
        if hi is not None:
            p *= _phi((hi - v) / sd)
        out[name] = p
    return out


def _phi(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(z), float)


@dataclass
class Evaluation:
    """A recipe's predicted outcome over a set of plant draws (fast twin)."""

    settings: dict[str, float]
    mean_product_kg: float
    p_rft: float  # mean over draws of the joint probability that every CQA is in spec
    p_cqa: dict[str, float]
    max_volume_l: float
    p_volume_ok: float


def evaluate(
    recipe: Recipe,
    draws: PlantDraws,
    settings: Sequence[dict[str, float]],
    working_volume_l: float,
    spec: CppSpec | None = None,
) -> list[Evaluation]:
    """Score several candidate settings over the same draws in one vectorised twin run."""
    spec = spec or load_spec()
    u, s0 = twin_batches(recipe, draws, settings)
    traj, _ = model.simulate(u, s0, math.ceil(float(u.end_h.max()) / model.DT_H) * model.DT_H)
    cq = cqas_at_harvest(traj, u, np.tile(draws.mn_ppb, len(settings)))
    ps = p_in_spec(cq, spec)
    joint = np.prod(np.vstack(list(ps.values())), axis=0)
    vmax = np.where(traj["t_h"][:, None] <= u.end_h[None, :], traj["V"], 0).max(axis=0)
    out = []
    for i, s in enumerate(settings):
        sl = slice(i * draws.n, (i + 1) * draws.n)
        out.append(
            Evaluation(
                dict(s),
                float(cq["product_mass_kg"][sl].mean()),
                float(joint[sl].mean()),
                {k: float(p[sl].mean()) for k, p in ps.items()},
                float(vmax[sl].max()),
                float((vmax[sl] <= working_volume_l).mean()),
            )
        )
    return out


# ---------------------------------------------------------------- the optimiser
@dataclass
class Optimisation:
    recipe_id: str
    recipe_version: int
    current: Evaluation
    best: Evaluation
    trials: pl.DataFrame
    train_seeds: tuple[int, ...]
    n_trials: int
    sampler_seed: int
    feasible_trials: int

    @property
    def predicted_gain(self) -> float:
        return self.best.mean_product_kg / self.current.mean_product_kg - 1.0


def optimise(
    recipe: Recipe,
    n_trials: int = 160,
    batch: int = 8,
    train_seeds: Sequence[int] = DEFAULT_TRAIN_SEEDS,
    sampler_seed: int = 0,
    spec: CppSpec | None = None,
    plant: PlantConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Optimisation:
    """Bayesian optimisation (TPE with constraints) of ``recipe`` on the fast twin over the
    plant draws of ``train_seeds``; ``batch`` candidates are scored per twin run."""
    import optuna

    spec = spec or load_spec()
    plant = plant or load_plant()
    wv = min(u.working_volume_l for u in plant.units)
    bx = bounds(recipe, spec)
    draws = plant_draws(train_seeds)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = optuna.samplers.TPESampler(
        seed=sampler_seed, n_startup_trials=min(24, n_trials // 4), multivariate=True
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    cur = current_settings(recipe)
    study.enqueue_trial(cur)
    rows = []
    done = 0
    while done < n_trials:
        trials = [study.ask() for _ in range(min(batch, n_trials - done))]
        settings = [{k: t.suggest_float(k, b.lo, b.hi) for k, b in bx.items()} for t in trials]
        for t, ev in zip(trials, evaluate(recipe, draws, settings, wv, spec), strict=True):
            c = [MIN_P_IN_SPEC - ev.p_rft, MIN_P_IN_SPEC - ev.p_volume_ok]
            t.set_constraint("p_rft", c[0])  # <= 0 is feasible
            t.set_constraint("p_volume_ok", c[1])
            study.tell(t, ev.mean_product_kg)
            rows.append(
                {
                    "trial": t.number,
                    **ev.settings,
                    "mean_product_kg": ev.mean_product_kg,
                    "p_rft": ev.p_rft,
                    "p_volume_ok": ev.p_volume_ok,
                    "max_volume_l": ev.max_volume_l,
                    "feasible": max(c) <= 0,
                }
            )
        done += len(trials)
        if progress:
            progress(done, n_trials)
    trials_df = pl.DataFrame(rows)
    feas = trials_df.filter(pl.col("feasible"))
    current = evaluate(recipe, draws, [cur], wv, spec)[0]
    if feas.height == 0:
        best = current
    else:
        top = feas.sort("mean_product_kg", descending=True).row(0, named=True)
        best = evaluate(recipe, draws, [{k: float(top[k]) for k in DECISIONS}], wv, spec)[0]
        if best.mean_product_kg <= current.mean_product_kg:
            best = current
    problems = check_par(best.settings, recipe, spec)
    if problems:  # the search box is the PAR; this would be a bug
        raise AssertionError(f"optimiser left its bounds: {problems}")
    return Optimisation(
        recipe.recipe_id,
        recipe.version,
        current,
        best,
        trials_df,
        tuple(int(s) for s in train_seeds),
        n_trials,
        sampler_seed,
        feas.height,
    )


# ---------------------------------------------------------------- verification
@dataclass
class Verification:
    eval_seed: int
    n_batches: int
    per_batch: pl.DataFrame  # one row per batch x arm
    gain: float  # relative gain in mean product mass (recommended / current - 1)
    gain_ci: tuple[float, float]  # 95 % paired bootstrap
    gain_kg: float
    rft_current: float
    rft_recommended: float
    cqa_quantiles: pl.DataFrame = field(repr=False, default_factory=pl.DataFrame)

    def meets_target(self, min_gain: float = 0.05) -> bool:
        return self.gain >= min_gain and self.rft_recommended >= self.rft_current


def _arm_inputs(
    rows: list[dict[str, float]],
    recipe: Recipe,
    s: dict[str, float],
    planned: list[float],
    status: list[str],
) -> tuple[BatchInputs, list[float], list[bool]]:
    cur = current_settings(recipe)
    out, ends, completed = [], [], []
    for r, pl_h, st in zip(rows, planned, status, strict=True):
        r = dict(r)
        new_planned = pl_h + (s["harvest_day"] - cur["harvest_day"]) * 24.0
        done = st == "complete" or r["end_h"] >= new_planned  # an abort after harvest: none
        end = new_planned if done else r["end_h"]
        r.update(
            T_grow=s["T_grow"],
            T_prod=s["T_prod"],
            ph_sp=s["ph_sp"],
            do_sp=s["do_sp"],
            shift_h=r["shift_h"] + (s["shift_day"] - cur["shift_day"]) * 24.0,
            feed_lph=r["feed_lph"] * s["feed_scale"],
            feed_end_h=min(recipe.feed.end_day * 24.0, new_planned - 2.0),
            end_h=end,
        )
        out.append(r)
        ends.append(end)
        completed.append(done)
    u = BatchInputs(**{k: np.array([r[k] for r in out], float) for k in out[0]})
    return u, ends, completed


def verify(
    recipe: Recipe,
    recommended: dict[str, float],
    n_batches: int = 60,
    eval_seed: int = DEFAULT_EVAL_SEED,
    train_seeds: Sequence[int] = DEFAULT_TRAIN_SEEDS,
    plant: PlantConfig | None = None,
    spec: CppSpec | None = None,
    n_boot: int = 2000,
) -> Verification:
    """Run the current and the recommended recipe on the same fresh plant batches with the
    full engine and compare product mass, right-first-time and every release CQA."""
    if eval_seed in set(int(s) for s in train_seeds):
        raise SeedOverlap(f"evaluation seed {eval_seed} is one of the optimiser's training seeds")
    spec = spec or load_spec()
    plant = plant or load_plant()
    book = RecipeBook(recipes=[recipe])
    plan = plan_history(plant, book, n_batches, eval_seed, start=datetime(2028, 1, 3, tzinfo=UTC))
    bs = plan.batches
    rows = [dict(b.inputs) for b in bs]
    planned = [b.planned_end_h for b in bs]
    status = [b.status for b in bs]
    u_cur, end_cur, ok_cur = _arm_inputs(rows, recipe, current_settings(recipe), planned, status)
    u_rec, end_rec, ok_rec = _arm_inputs(rows, recipe, recommended, planned, status)
    done = ok_cur + ok_rec
    both = BatchInputs(
        **{
            k: np.concatenate([getattr(u_cur, k), getattr(u_rec, k)])
            for k in u_cur.__dataclass_fields__
        }
    )
    ends = np.array(end_cur + end_rec)
    res = _run_engine(both, ends, seed=eval_seed)
    out = []
    n = len(bs)
    for j in range(2 * n):
        i = j % n
        arm = "current" if j < n else "recommended"
        completed = done[j]
        h = {k: float(v[j]) for k, v in res.items()}
        rng = np.random.default_rng([eval_seed, i])  # same assay noise in both arms
        assays = {
            k: v
            for k, v, _ in release_assays(h, bs[i].lot_attributes["media_mn_ppb"], completed, rng)
        }
        ok = completed and all(in_spec(spec, k, v) for k, v in assays.items())
        mass = h["final_titer_g_l"] * h["final_volume_l"] / 1000.0 if completed else 0.0
        out.append(
            {
                "batch_id": bs[i].batch_id,
                "arm": arm,
                "completed": completed,
                "product_mass_kg": mass,
                "right_first_time": ok,
                "duration_days": h["duration_days"],
                **{f"cqa_{k}": assays.get(k) for k in spec.lab.release},
            }
        )
    df = pl.DataFrame(out)
    cur = df.filter(pl.col("arm") == "current")["product_mass_kg"].to_numpy()
    rec = df.filter(pl.col("arm") == "recommended")["product_mass_kg"].to_numpy()
    rng = np.random.default_rng(eval_seed)
    idx = rng.integers(0, n, (n_boot, n))
    boot = rec[idx].mean(axis=1) / cur[idx].mean(axis=1) - 1.0
    q = [
        {
            "arm": arm,
            "cqa": c,
            "p05": float(np.quantile(v, 0.05)),
            "median": float(np.median(v)),
            "p95": float(np.quantile(v, 0.95)),
            "in_spec": float(np.mean([in_spec(spec, c, x) for x in v])),
        }
        for arm in ("current", "recommended")
        for c in spec.lab.release
        if len(
            v := df.filter((pl.col("arm") == arm) & pl.col("completed"))[f"cqa_{c}"]
            .drop_nulls()
            .to_numpy()
        )
    ]
    rft = df.group_by("arm").agg(pl.col("right_first_time").mean())
    r = dict(zip(rft["arm"], rft["right_first_time"], strict=True))
    return Verification(
        eval_seed,
        n,
        df,
        float(rec.mean() / cur.mean() - 1.0),
        (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))),
        float(rec.mean() - cur.mean()),
        float(r["current"]),
        float(r["recommended"]),
        pl.DataFrame(q),
    )


def in_spec(spec: CppSpec, name: str, v: float | None) -> bool:
    lab = spec.lab.release.get(name)
    if lab is None or lab.spec is None or v is None:
        return True
    lo, hi = lab.spec
    return (lo is None or v >= lo) and (hi is None or v <= hi)


class EngineSummary:
    """Running summaries of full-engine trajectories for the release model (the same as
    twin.outputs.batch_history_summary), fed chunk by chunk so no full record is kept."""

    KEYS = (
        "max_temp_c",
        "peak_ammonia_mmol_l",
        "max_pco2_mmhg",
        "peak_osmolality",
        "peak_contaminant",
    )
    SOURCES = ("T", "A", "pco2", "osm", "B")

    def __init__(self, u: BatchInputs, ends: np.ndarray, dt: float) -> None:
        n = u.n
        self.dt = dt
        self.end_k = np.ceil(ends / dt).astype(int)
        self.shift_k = (u.shift_h / dt).astype(int)
        self.sum_t, self.cnt_t, self.all_t = np.zeros(n), np.zeros(n), np.zeros(n)
        self.peaks = {k: np.full(n, -np.inf) for k in self.KEYS}
        self.ph_out = np.zeros(n)
        self.last = {k: np.zeros(n) for k in ("Xv", "Xd", "P", "V")}

    def copy(self) -> EngineSummary:
        import copy

        return copy.deepcopy(self)

    def add(self, rec: dict[str, np.ndarray], k0: int) -> None:
        m = rec["T"].shape[0]
        ks = k0 + np.arange(m)[:, None]
        end_k = self.end_k
        live = ks < end_k[None, :]
        T = rec["T"].astype(float)
        prod = live & (ks >= np.minimum(self.shift_k, end_k - 1)[None, :])
        self.sum_t += np.where(prod, T, 0).sum(axis=0)
        self.cnt_t += prod.sum(axis=0)
        self.all_t += np.where(live, T, 0).sum(axis=0)
        for k, name in zip(self.KEYS, self.SOURCES, strict=True):
            self.peaks[k] = np.maximum(
                self.peaks[k], np.where(live, rec[name], -np.inf).max(axis=0)
            )
        pH = rec["pH"]
        self.ph_out += (live & ((pH < 6.9) | (pH > 7.1))).sum(axis=0) * self.dt
        at = np.clip(end_k - 1 - k0, 0, m - 1)
        here = (end_k - 1 >= k0) & (end_k - 1 < k0 + m)
        cols = np.arange(len(end_k))
        for k in self.last:
            self.last[k] = np.where(here, rec[k][at, cols], self.last[k])

    def result(self) -> dict[str, np.ndarray]:
        steps = np.maximum(self.end_k, 1)
        return {
            "mean_production_temp_c": np.where(
                self.cnt_t > 0, self.sum_t / np.maximum(self.cnt_t, 1), self.all_t / steps
            ),
            **self.peaks,
            "final_viability": self.last["Xv"] / (self.last["Xv"] + self.last["Xd"]),
            "final_titer_g_l": self.last["P"],
            "final_volume_l": self.last["V"],
            "hours_ph_outside_6_9_7_1": self.ph_out,
            "duration_days": steps * self.dt / 24.0,
        }


def run_to_end(eng: Engine, acc: EngineSummary, chunk: int = 1440) -> dict[str, np.ndarray]:
    """Advance ``eng`` to every batch's end, feeding ``acc``; returns its summaries."""
    k0, k_max = eng.state.k, int(acc.end_k.max())
    while k0 < k_max:
        m = min(chunk, k_max - k0)
        acc.add(eng.run(m), k0)
        k0 += m
    return acc.result()


def _run_engine(u: BatchInputs, ends: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The full engine from inoculation to each batch's end (summaries only)."""
    dt = 1 / 60
    return run_to_end(Engine(u, dt_h=dt, seed=seed), EngineSummary(u, ends, dt))


def recommendation_record(opt: Optimisation, ver: Verification | None) -> dict[str, object]:
    """A flat record of a recommendation and its evidence (for the Delta table and the
    change-control request)."""
    rec: dict[str, object] = {
        "recipe_id": opt.recipe_id,
        "recipe_version": opt.recipe_version,
        **{f"current_{k}": v for k, v in opt.current.settings.items()},
        **{f"recommended_{k}": v for k, v in opt.best.settings.items()},
        "twin_current_mean_product_kg": opt.current.mean_product_kg,
        "twin_recommended_mean_product_kg": opt.best.mean_product_kg,
        "twin_predicted_gain": opt.predicted_gain,
        "twin_p_rft": opt.best.p_rft,
        "n_trials": opt.n_trials,
        "feasible_trials": opt.feasible_trials,
        "train_seeds": f"{min(opt.train_seeds)}-{max(opt.train_seeds)} ({len(opt.train_seeds)})",
    }
    if ver is not None:
        rec.update(
            eval_seed=ver.eval_seed,
            eval_batches=ver.n_batches,
            verified_gain=ver.gain,
            verified_gain_lo=ver.gain_ci[0],
            verified_gain_hi=ver.gain_ci[1],
            verified_gain_kg=ver.gain_kg,
            rft_current=ver.rft_current,
            rft_recommended=ver.rft_recommended,
            meets_target=ver.meets_target(),
        )
    return rec


def recipe_with(recipe: Recipe, s: dict[str, float]) -> Recipe:
    """The recipe with the recommended settings, as the next version (for change control)."""
    d = recipe.model_dump()
    sp = d["setpoints"]
    sp.update(
        temperature_c=round(s["T_grow"], 2),
        production_temperature_c=round(s["T_prod"], 2),
        ph=round(s["ph_sp"], 3),
        dissolved_oxygen_pct=round(s["do_sp"], 1),
        temperature_shift_day=round(s["shift_day"], 2),
    )
    d["feed"]["rate_pct_fill_per_day"] = round(
        recipe.feed.rate_pct_fill_per_day * s["feed_scale"], 3
    )
    d["planned_duration_days"] = round(s["harvest_day"], 2)
    d["feed"]["end_day"] = min(recipe.feed.end_day, round(s["harvest_day"] - 2 / 24, 2))
    for ph in d["phases"]:
        if ph["phase"] == "production":
            ph["start_day"] = round(s["shift_day"], 2)
        if ph["phase"] == "harvest":
            ph["start_day"] = round(s["harvest_day"] - 0.2, 2)
    d["version"] = recipe.version + 1
    return Recipe.model_validate(d)


def settings_dict(e: Evaluation) -> dict[str, float]:
    return {k: float(v) for k, v in asdict(e)["settings"].items()}
