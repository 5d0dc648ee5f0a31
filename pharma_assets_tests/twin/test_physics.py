"""Physical sanity, control performance and published ranges of nominal batches."""

from __future__ import annotations

import numpy as np

from pharma_assets.twin.plant import nominal_inputs

from .conftest import DT_H, run_rows


def _end_steps(c):
    return np.ceil(c.inputs.end_h / DT_H).astype(int)


def test_concentrations_nonnegative_and_do_bounded(nominal_cohort):
    rec = nominal_cohort.rec
    for name in ("Xv", "Xd", "G", "Gln", "L", "A", "P", "pco2", "B"):
        assert float(rec[name].min()) >= 0.0, name
    assert float(rec["DO"].min()) >= 0.0
    assert float(rec["DO"].max()) <= 100.0


def test_volume_rises_with_feed(nominal_cohort):
    rec, u = nominal_cohort.rec, nominal_cohort.inputs
    for b, end in enumerate(_end_steps(nominal_cohort)):
        v = rec["V"][:end, b]
        fed = rec["feed_lph"][:end, b] > 0
        dv = np.diff(v)
        assert (dv[fed[:-1]] > 0).mean() > 0.99  # feeding raises volume
        assert v[-1] > u.V0[b] * 1.2


def test_glucose_mass_balance(recipes):
    """G*V at the end = initial + fed + boluses - consumed, within 1 %."""
    rows = [nominal_inputs(r) for r in recipes.recipes]
    c = run_rows(rows)
    s, u = c.engine.state, c.inputs
    g_in = u.G0 * u.V0 + s.feed_l * u.feed_G + s.bolus_l * u.gc_stock
    g_end = s.G * s.V
    residual = (g_in - s.glc_used) - g_end
    assert np.all(np.abs(residual) <= 0.01 * g_in), (residual, g_in)
    assert np.all(s.glc_used > 0.5 * g_in)  # the cells did eat most of it


def test_no_cells_means_glucose_only_follows_feed_and_dilution(recipes):
    row = nominal_inputs(recipes.recipes[0], Xv0=1e-6, mu_lot=0.0, end_h=120.0, feed_start_h=10.0)
    c = run_rows([row])
    s, u = c.engine.state, c.inputs
    expected = (u.G0 * u.V0 + s.feed_l * u.feed_G + s.bolus_l * u.gc_stock) / s.V
    assert abs(float(s.G[0] - expected[0])) < 0.01 * float(expected[0])


def test_temperature_within_0_1_c_of_setpoint(nominal_cohort):
    rec, u = nominal_cohort.rec, nominal_cohort.inputs
    t = np.arange(rec["T"].shape[0]) * DT_H
    for b, end in enumerate(_end_steps(nominal_cohort)):
        ramp = np.clip((t - u.shift_h[b]) / u.ramp_h[b], 0, 1)
        sp = u.T_grow[b] + (u.T_prod[b] - u.T_grow[b]) * ramp
        steady = (t < u.shift_h[b] - 0.1) | (t > u.shift_h[b] + u.ramp_h[b] + 2.0)
        steady[:end] &= True
        err = np.abs(rec["T_m"][:end, b] - sp[:end])[steady[:end]]
        assert err.max() <= 0.1, (b, err.max())


def test_ph_within_deadband(nominal_cohort):
    rec, u = nominal_cohort.rec, nominal_cohort.inputs
    for b, end in enumerate(_end_steps(nominal_cohort)):
        ph = rec["pH_m"][60:end, b]  # after the first hour
        lo, hi = u.ph_sp[b] - u.ph_db[b], u.ph_sp[b] + u.ph_db[b]
        inside = ((ph >= lo - 0.015) & (ph <= hi + 0.015)).mean()
        assert inside >= 0.995, (b, inside, ph.min(), ph.max())


def test_do_controlled_near_setpoint_once_demand_exists(nominal_cohort):
    rec, u = nominal_cohort.rec, nominal_cohort.inputs
    for b, end in enumerate(_end_steps(nominal_cohort)):
        k = np.argmax(rec["DO_m"][:end, b] < u.do_sp[b])  # first time demand pulls DO to set-point
        do = rec["DO_m"][k + 120 : end - 300, b]
        assert abs(float(np.median(do)) - u.do_sp[b]) < 2.0
        assert float(np.percentile(np.abs(do - u.do_sp[b]), 99)) < 8.0


def test_nominal_batches_in_published_ranges(nominal_cohort):
    """Over 32 batches from 4 plant seeds: the published industrial CHO fed-batch ranges."""
    rec, u = nominal_cohort.rec, nominal_cohort.inputs
    ends = _end_steps(nominal_cohort)
    peak_vcd, peak_day, titer, via, lac, days = [], [], [], [], [], []
    for b, end in enumerate(ends):
        xv = rec["Xv"][:end, b]
        peak_vcd.append(xv.max())
        peak_day.append(xv.argmax() * DT_H / 24)
        titer.append(rec["P"][end - 1, b])
        via.append(100 * rec["Xv"][end - 1, b] / (rec["Xv"][end - 1, b] + rec["Xd"][end - 1, b]))
        lac.append(rec["L"][:end, b].max())
        days.append(u.end_h[b] / 24)
    peak_vcd, peak_day, titer, via, lac, days = map(
        np.array, (peak_vcd, peak_day, titer, via, lac, days)
    )
    assert len(titer) == 32
    assert np.all((peak_vcd >= 10) & (peak_vcd <= 30)), peak_vcd
    assert np.mean((peak_day >= 6) & (peak_day <= 9)) >= 0.75, peak_day
    assert np.all((peak_day >= 5) & (peak_day <= 10.5)), peak_day
    assert np.all((titer >= 2) & (titer <= 8)), titer
    assert np.all((via >= 60) & (via <= 90)), via
    assert np.all(lac < 3.0), lac
    assert np.all((days >= 12) & (days <= 16)), days
    assert titer.std() > 0.1  # batches genuinely vary
