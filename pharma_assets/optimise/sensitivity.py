"""Global sensitivity of harvest CQAs to the CPP set-points of one recipe (Sobol indices).

Saltelli sampling with the Saltelli (2010) first-order and Jansen (1999) total-order
estimators, confidence intervals by bootstrap over the base samples; the same estimators as
SALib's ``sobol.analyze`` (which is not a dependency of this project). Each factor varies
uniformly over its range: the CPP's PAR from the spec for temperature, pH and DO, and a
stated band around the recipe for the shift day and the feed rate, which have no PAR. The
twin is the recipe's nominal fast twin (multipliers 1) from inoculation to the planned end:
the indices describe the recipe, not one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.twin.config import Recipe

from . import model
from .whatif import cqas_at_harvest

OUTPUTS = ("product_mass_kg", "titer_g_l", "viability_pct", "aggregates_hmw_pct", "g0f_pct")


@dataclass(frozen=True)
class Factor:
    name: str  # twin input (model.TwinInputs field) or "feed_scale"
    lo: float
    hi: float
    source: str  # where the range comes from


def factors(recipe: Recipe, spec: CppSpec | None = None) -> list[Factor]:
    """The CPP set-points over their PAR, plus shift day and feed rate around the recipe."""
    spec = spec or load_spec()

    def par(tag: str, phase: str) -> tuple[float, float]:
        p = spec.tags[tag].limits(phase).par
        assert p is not None
        return p

    shift = recipe.setpoints.temperature_shift_day * 24
    return [
        Factor("T_grow", *par("temperature_c", "growth"), f"temperature_c PAR v{spec.version}"),
        Factor(
            "T_prod",
            *par("temperature_c", "production"),
            f"temperature_c PAR (production) v{spec.version}",
        ),
        Factor("ph_sp", *par("ph", "production"), f"ph PAR v{spec.version}"),
        Factor(
            "do_sp",
            *par("dissolved_oxygen_pct", "production"),
            f"dissolved_oxygen_pct PAR (production) v{spec.version}",
        ),
        Factor("shift_h", shift - 24, shift + 24, "recipe shift day ± 1 day"),
        Factor("feed_scale", 0.8, 1.2, "recipe feed rate ± 20 %"),
    ]


def _evaluate(recipe: Recipe, fs: list[Factor], x: np.ndarray) -> dict[str, np.ndarray]:
    n = x.shape[0]
    u = model.recipe_inputs(recipe, n)
    kw: dict[str, float | np.ndarray] = {}
    for j, f in enumerate(fs):
        if f.name == "feed_scale":
            kw["feed_lph"] = u.feed_lph * x[:, j]
        else:
            kw[f.name] = x[:, j]
    u = u.with_values(**kw)
    s0 = model.initial_state(recipe, n)
    traj, _ = model.simulate(u, s0, float(u.end_h.max()))
    return cqas_at_harvest(traj, u)


def sobol(
    recipe: Recipe,
    n_base: int = 512,
    seed: int = 0,
    n_boot: int = 200,
    spec: CppSpec | None = None,
) -> pl.DataFrame:
    """First-order (S1) and total (ST) Sobol indices with 95 % bootstrap intervals, one row
    per output x factor; ``n_base`` x (factors + 2) twin runs, all in one ensemble."""
    fs = factors(recipe, spec)
    res = sobol_indices(
        lambda x: _evaluate(recipe, fs, x),
        np.array([f.lo for f in fs]),
        np.array([f.hi for f in fs]),
        n_base,
        seed,
        n_boot,
    )
    rows = []
    for name in OUTPUTS:
        for i, f in enumerate(fs):
            r = {k: float(v[i]) for k, v in res[name].items()}
            rows.append(
                {
                    "recipe_id": recipe.recipe_id,
                    "output": name,
                    "factor": f.name,
                    "lo": f.lo,
                    "hi": f.hi,
                    "range_source": f.source,
                    **r,
                    "n_runs": n_base * (len(fs) + 2),
                }
            )
    return pl.DataFrame(rows)


def sobol_indices(
    fn: Callable[[np.ndarray], dict[str, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    n_base: int = 512,
    seed: int = 0,
    n_boot: int = 200,
) -> dict[str, dict[str, np.ndarray]]:
    """Sobol indices of every output of ``fn`` (rows of inputs -> dict of output vectors)
    over the box [lo, hi]: output -> {S1, S1_lo, S1_hi, ST, ST_lo, ST_hi} per factor.
    ``fn`` is called once on all n_base x (d + 2) points."""
    d = len(lo)
    from scipy.stats import qmc  # lazy: the code location imports this module

    base = qmc.Sobol(2 * d, scramble=True, seed=seed).random(n_base)
    A, B = lo + (hi - lo) * base[:, :d], lo + (hi - lo) * base[:, d:]
    AB = np.repeat(A[None], d, axis=0)
    for i in range(d):
        AB[i, :, i] = B[:, i]
    out = fn(np.vstack([A, B, AB.reshape(d * n_base, d)]))
    boot = np.random.default_rng(seed).integers(0, n_base, (n_boot, n_base))
    res = {}
    for name, y in out.items():
        fA, fB = y[:n_base], y[n_base : 2 * n_base]
        fAB = y[2 * n_base :].reshape(d, n_base)
        cols: dict[str, list[float]] = {
            k: [] for k in ("S1", "S1_lo", "S1_hi", "ST", "ST_lo", "ST_hi")
        }
        for i in range(d):
            s1, st = _indices(fA, fB, fAB[i])
            b1, bt = _indices(fA[boot], fB[boot], fAB[i][boot])
            for k, v in (("S1", s1), ("ST", st)):
                cols[k].append(float(v))
            for k, b in (("S1", b1), ("ST", bt)):
                cols[f"{k}_lo"].append(float(np.nanquantile(b, 0.025)))
                cols[f"{k}_hi"].append(float(np.nanquantile(b, 0.975)))
        res[name] = {k: np.array(v) for k, v in cols.items()}
    return res


def _indices(fA: np.ndarray, fB: np.ndarray, fABi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Saltelli (2010) S1 and Jansen ST along the last axis (outputs centred first, as SALib
    does, which keeps S1's variance independent of the output's mean)."""
    both = np.concatenate([fA, fB], axis=-1)
    var = both.var(axis=-1)
    var = np.where(var > 0, var, np.nan)
    fB = fB - both.mean(axis=-1, keepdims=True)
    s1 = (fB * (fABi - fA)).mean(axis=-1) / var
    st = 0.5 * ((fA - fABi) ** 2).mean(axis=-1) / var
    return s1, st


# ---------------------------------------------------------------- design space (ICH Q8)
CPP_FACTORS = ("T_grow", "T_prod", "ph_sp", "do_sp")  # the set-points that have a PAR


def most_influential(indices: pl.DataFrame, k: int = 2) -> list[str]:
    """The ``k`` CPPs (factors with a PAR) with the largest total Sobol index on any CQA or
    product mass."""
    top = (
        indices.filter(pl.col("factor").is_in(CPP_FACTORS))
        .group_by("factor")
        .agg(pl.col("ST").max())
        .sort(["ST", "factor"], descending=[True, False])
    )
    return top["factor"].head(k).to_list()


def design_space(
    recipe: Recipe,
    factors_xy: tuple[str, str],
    n_grid: int = 13,
    seeds: range = range(0, 48),
    min_p: float = 0.95,
    spec: CppSpec | None = None,
) -> pl.DataFrame:
    """P(every release CQA in spec) over the plant's variability on a grid of two CPPs over
    their PAR (the others at the recipe's set-points); the design space is the cells with
    probability >= ``min_p`` (ICH Q8: a region of proven quality, not a single point)."""
    from .recipe import current_settings, evaluate, plant_draws

    spec = spec or load_spec()
    fs = {f.name: f for f in factors(recipe, spec)}
    fx, fy = (fs[n] for n in factors_xy)
    xs, ys = np.linspace(fx.lo, fx.hi, n_grid), np.linspace(fy.lo, fy.hi, n_grid)
    base = current_settings(recipe)
    grid = [base | {fx.name: float(x), fy.name: float(y)} for x in xs for y in ys]
    ev = evaluate(recipe, plant_draws(seeds), grid, working_volume_l=1e9, spec=spec)
    return pl.DataFrame(
        {
            "recipe_id": recipe.recipe_id,
            "factor_x": fx.name,
            "x": [g[fx.name] for g in grid],
            "factor_y": fy.name,
            "y": [g[fy.name] for g in grid],
            "p_in_spec": [e.p_rft for e in ev],
            "mean_product_kg": [e.mean_product_kg for e in ev],
            "in_design_space": [e.p_rft >= min_p for e in ev],
            "weakest_cqa": [min(e.p_cqa, key=lambda c: e.p_cqa[c]) for e in ev],
            "n_draws": len(seeds),
        }
    )
