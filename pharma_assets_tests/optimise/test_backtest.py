"""Back-test machinery: held-out batches from a fresh plant seed, metrics that add up."""

from __future__ import annotations

import polars as pl
import pytest

from pharma_assets.optimise import backtest


def test_metrics_by_hand() -> None:
    rows = pl.DataFrame(
        {
            "horizon_day": [3.0] * 4,
            "target": ["titer_g_l"] * 4,
            "true": [1.0, 2.0, 3.0, 4.0],
            "predicted": [1.5, 2.0, 3.0, 3.5],
            "lower": [1.2, 1.0, 2.0, 3.0],
            "upper": [2.0, 3.0, 4.0, 5.0],
        }
    )
    m = backtest.metrics(rows).row(0, named=True)
    assert m["n"] == 4
    assert m["r2"] == pytest.approx(1 - 0.5 / 5.0)
    assert m["mae"] == pytest.approx(0.25)
    assert m["bias"] == pytest.approx(0.0)
    assert m["coverage"] == pytest.approx(0.75)  # the first interval misses 1.0
    assert m["mean_width"] == pytest.approx(1.7)


def test_backtest_on_held_out_batches() -> None:
    held = backtest.simulate_held_out(3, seed=31)
    assert len(held.observations) == len(held.truth) >= 2
    rows = backtest.backtest(held, (7.0,), n_members=20)
    assert rows.height == 2 * len(held.observations)
    assert set(rows["target"]) == {"titer_g_l", "product_mass_kg"}
    assert not rows["prior_only"].any()
    assert (rows["lower"] <= rows["predicted"]).all() and (rows["predicted"] <= rows["upper"]).all()
    m = backtest.metrics(rows)
    titer = m.filter(pl.col("target") == "titer_g_l").row(0, named=True)
    assert titer["mae"] < 0.4  # g/L, at day 7 of a ~4 g/L harvest
