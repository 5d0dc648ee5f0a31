"""Product mass balance features (``features/product_balance.py``): the documented
arithmetic on a hand-made batch with a temperature shift, and the fallback to one
productivity before the temperature has moved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from pharma_assets.ml.features.product_balance import T_REF_C, product_balance_features

START = datetime(2026, 1, 1, tzinfo=UTC)
Q1, Q2 = 0.05, 0.015  # g/L per (pF/cm x day), and per K below T_REF_C (titer 1-3 g/L)
X, V = 2.0, 1000.0  # constant biomass (pF/cm) and volume (L)


def _temp(h: float) -> float:
    return 36.5 if h <= 120 else 33.0  # shift after day 5


def _batch(n_hours: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    hours = np.arange(1, n_hours + 1, dtype=float)
    hourly = pl.DataFrame(
        {
            "batch_id": "B1",
            "hour_ts": [START + timedelta(hours=float(h)) for h in hours],
            "capacitance_pf_cm_mean": X,
            "volume_l_last": V,
            "temperature_c_mean": [_temp(h) for h in hours],
        },
        schema_overrides={"hour_ts": pl.Datetime("us", "UTC")},
    )
    j1 = np.cumsum(np.full(n_hours, X * V / 24.0))
    j2 = np.cumsum([(T_REF_C - _temp(h)) * X * V / 24.0 for h in hours])
    rows = [
        (
            "B1",
            START + timedelta(days=d),
            "titer_g_l",
            (Q1 * j1[24 * d - 1] + Q2 * j2[24 * d - 1]) / V,
        )
        for d in range(1, n_hours // 24 + 1)
    ]
    rows.append(("B1", START, "titer_g_l", 0.0))  # day 0: before any telemetry, not used
    lab = pl.DataFrame(
        rows,
        schema={
            "batch_id": pl.String,
            "sample_ts": pl.Datetime("us", "UTC"),
            "analyte": pl.String,
            "value": pl.Float64,
        },
        orient="row",
    )
    base = pl.DataFrame({"batch_id": ["B1"], "elapsed_h": [float(n_hours)]})
    return base, hourly, lab


def test_two_productivities_recovered_and_extrapolated_to_harvest() -> None:
    base, hourly, lab = _batch(168)  # day 7, two days after the shift
    dur = pl.DataFrame({"batch_id": ["B1"], "expected_duration_h": [240.0]})
    r = product_balance_features(base, hourly, lab, dur).row(0, named=True)
    assert r["bal_q1"] == pytest.approx(Q1, rel=1e-6)
    assert r["bal_q2"] == pytest.approx(Q2, rel=1e-6)
    assert r["bal_fit_rel_rmse"] == pytest.approx(0.0, abs=1e-9)
    # mass now + 3 more days at the latest biomass, volume and temperature (33.0 C)
    j1_now = X * V * 7.0
    j2_now = (T_REF_C - 36.5) * X * V * 5.0 + (T_REF_C - 33.0) * X * V * 2.0
    m_end = Q1 * (j1_now + X * V * 3.0) + Q2 * (j2_now + (T_REF_C - 33.0) * X * V * 3.0)
    assert r["mass_bal_harvest_kg"] == pytest.approx(m_end / 1000.0, rel=1e-6)
    assert r["titer_bal_harvest"] == pytest.approx(m_end / V, rel=1e-6)
    # one constant productivity cannot follow the shift: a different, worse estimate
    assert abs(r["titer_bal1_harvest"] / (m_end / V) - 1) > 0.05


def test_one_productivity_before_the_temperature_moves() -> None:
    base, hourly, lab = _batch(72)  # day 3: constant temperature, J_2 proportional to J_1
    dur = pl.DataFrame({"batch_id": ["B1"], "expected_duration_h": [72.0]})
    r = product_balance_features(base, hourly, lab, dur).row(0, named=True)
    q = Q1 + Q2 * (T_REF_C - 36.5)  # the productivity the data show
    assert r["bal_q1"] == pytest.approx(q, rel=1e-6)
    assert r["bal_q2"] == 0.0
    assert r["titer_bal_harvest"] == pytest.approx(r["titer_bal1_harvest"])
    assert r["titer_bal_harvest"] == pytest.approx(q * X * V * 3.0 / V, rel=1e-6)
