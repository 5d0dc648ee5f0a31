"""Sobol indices: the estimator on a function with known indices, then on the twin."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pharma_assets.optimise import sensitivity
from pharma_assets.twin.config import load_recipes


def test_estimator_recovers_the_ishigami_indices() -> None:
    """Ishigami (a=7, b=0.1) on [-pi, pi]^3: S1 = 0.314, 0.442, 0; ST = 0.558, 0.442, 0.244."""

    def ishigami(x: np.ndarray) -> dict[str, np.ndarray]:
        s = np.sin(x[:, 0])
        return {"y": s + 7 * np.sin(x[:, 1]) ** 2 + 0.1 * x[:, 2] ** 4 * s}

    lo, hi = np.full(3, -np.pi), np.full(3, np.pi)
    r = sensitivity.sobol_indices(ishigami, lo, hi, n_base=4096, seed=1)["y"]
    np.testing.assert_allclose(r["S1"], [0.314, 0.442, 0.0], atol=0.03)
    np.testing.assert_allclose(r["ST"], [0.558, 0.442, 0.244], atol=0.03)
    assert (r["S1_lo"] <= r["S1"]).all() and (r["S1"] <= r["S1_hi"]).all()
    assert (r["ST_lo"] < [0.558, 0.442, 0.244]).all() and (r["ST_hi"] > [0.558, 0.442, 0.244]).all()


def test_twin_sensitivity_over_par() -> None:
    recipe = load_recipes().get("MAB-A-FB14")
    df = sensitivity.sobol(recipe, n_base=128, n_boot=50)
    assert df.height == len(sensitivity.OUTPUTS) * 6
    ph = df.filter(pl.col("factor") == "ph_sp").row(0, named=True)
    assert (ph["lo"], ph["hi"]) == (6.8, 7.2) and "ph PAR v" in ph["range_source"]
    mass = df.filter(pl.col("output") == "product_mass_kg")
    st = dict(zip(mass["factor"], mass["ST"], strict=True))
    # the pH factor of the kinetics acts on growth and productivity; DO barely matters at
    # 20-60 % (f_DO = DO / (DO + 3))
    assert st["ph_sp"] > st["do_sp"] and st["do_sp"] < 0.05
    agg = df.filter(pl.col("output") == "aggregates_hmw_pct")
    assert agg.sort("ST")["factor"][-1] == "T_prod"  # temperature drives aggregates
    assert df["S1"].sum() / len(sensitivity.OUTPUTS) == pytest.approx(1.0, abs=0.35)
