"""Calibration of the twin to one batch: recovery of known parameters, the prior fallback,
missing data, and the fast model's agreement with the full engine."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pharma_assets.optimise import calibration, model
from pharma_assets.optimise.observations import CalibrationDataError
from pharma_assets_tests.optimise.conftest import TRUE, Synthetic


def test_fast_model_tracks_the_full_engine(synthetic: Synthetic) -> None:
    """Same inputs and multipliers: the ideal-control model stays within a few percent of
    the engine on VCD, viability and titer over the first 7 days."""
    u = model.recipe_inputs(synthetic.recipe).with_values(
        mu_mult=TRUE["log_mu"], kd_mult=TRUE["log_kd"], qp_mult=TRUE["log_qp"], shift_h=121.0
    )
    s0 = model.initial_state(synthetic.recipe, Xv=0.6)
    traj, _ = model.simulate(u, s0, 7 * 24)
    for day in (3, 5, 7):
        ke, km = day * 24 * 60, day * 24 * 4
        for v, tol in (("Xv", 0.05), ("P", 0.06), ("V", 0.01)):
            true = float(synthetic.rec[v][ke, 0])
            assert traj[v][km, 0] == pytest.approx(true, rel=tol), (v, day)


def test_calibration_recovers_known_parameters(synthetic: Synthetic) -> None:
    cal = calibration.calibrate(synthetic.obs.until(7 * 24), synthetic.recipe, n_members=50)
    assert not cal.prior_only
    assert cal.names == ("log_xv0", "log_mu", "log_kd", "log_qp", "log_cap")
    for name, true in TRUE.items():
        lo, hi = cal.interval(name, 0.95)
        assert lo <= true <= hi, (name, true, lo, hi)
        prior_lo, prior_hi = np.exp(1.96 * calibration.PRIOR_SD[name] * np.array([-1, 1]))
        assert hi / lo < 0.8 * prior_hi / prior_lo, f"{name}: the data narrowed nothing"
    assert cal.theta.shape == (50, 5)
    assert cal.state.n == 50 and cal.state.t_h == 7 * 24
    # the ensemble's VCD at the as-of time brackets the engine's true VCD
    xv = cal.state.Xv
    true_xv = float(synthetic.rec["Xv"][7 * 24 * 60, 0])
    assert np.quantile(xv, 0.02) <= true_xv <= np.quantile(xv, 0.98)


def test_too_little_data_falls_back_to_the_prior(synthetic: Synthetic) -> None:
    cal = calibration.calibrate(synthetic.obs.until(12.0), synthetic.recipe, n_members=20)
    assert cal.prior_only
    assert "too little data" in cal.message and "prior" in cal.message
    np.testing.assert_allclose(
        np.sqrt(np.diag(cal.cov)), [calibration.PRIOR_SD[n] for n in cal.names]
    )
    lo, hi = cal.interval("log_mu")
    assert lo < 0.83 and hi > 1.2  # wide
    assert cal.state.t_h == 12.0 and cal.state.n == 20


def test_missing_tags_and_analytes_are_listed(synthetic: Synthetic) -> None:
    obs = synthetic.obs.until(5 * 24)
    no_feed = replace(obs, tags=obs.tags - {"feed_rate_ml_h", "volume_l"})
    with pytest.raises(CalibrationDataError, match="tag volume_l, tag feed_rate_ml_h"):
        calibration.calibrate(no_feed, synthetic.recipe)
    no_titer = replace(obs, lims={k: v for k, v in obs.lims.items() if k != "titer_g_l"})
    with pytest.raises(CalibrationDataError, match="LIMS analyte titer_g_l"):
        calibration.calibrate(no_titer, synthetic.recipe)


def test_calibration_without_capacitance_drops_its_parameter(synthetic: Synthetic) -> None:
    obs = synthetic.obs.until(5 * 24)
    obs = replace(obs, tags=obs.tags - {"capacitance_pf_cm"})
    cal = calibration.calibrate(obs, synthetic.recipe, n_members=10)
    assert "log_cap" not in cal.names and not cal.prior_only


def test_lot_prior_pools_earlier_batches_of_the_same_lot(synthetic: Synthetic) -> None:
    obs = synthetic.obs.until(7 * 24)
    cal = calibration.calibrate(obs, synthetic.recipe, n_members=2)
    a = replace(obs, batch_id="A", lots={"feed_lot": "F1", "media_lot": "M2"})
    b = replace(obs, batch_id="B", lots={"feed_lot": "F2", "media_lot": "M1"})
    new = replace(obs, batch_id="N", lots={"feed_lot": "F1", "media_lot": "M1"})
    prior = calibration.lot_prior(new, [(a, cal), (b, cal)])
    iq, im = cal.names.index("log_qp"), cal.names.index("log_mu")
    assert prior["log_qp"][0] == pytest.approx(cal.theta_hat[iq])
    assert prior["log_qp"][1] == pytest.approx(np.sqrt(0.03**2 + cal.cov[iq, iq]))
    assert prior["log_mu"][0] == pytest.approx(cal.theta_hat[im])
    two = calibration.lot_prior(new, [(a, cal), (replace(a, batch_id="A2"), cal)])
    assert two["log_qp"][1] < prior["log_qp"][1] and "log_mu" not in two
    assert calibration.lot_prior(replace(new, lots={"feed_lot": "F9"}), [(a, cal)]) == {}
    # the prior replaces the recipe's: on too little data the result is that prior
    early = calibration.calibrate(
        synthetic.obs.until(12.0), synthetic.recipe, n_members=5, prior={"log_qp": (0.05, 0.02)}
    )
    assert early.theta_hat[iq] == 0.05 and np.sqrt(early.cov[iq, iq]) == pytest.approx(0.02)
    with pytest.raises(KeyError, match="log_qq"):
        calibration.calibrate(obs, synthetic.recipe, prior={"log_qq": (0.0, 0.1)})
