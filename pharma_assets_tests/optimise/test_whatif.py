"""What-if from a calibrated batch: no change is the baseline bit for bit, limits refuse,
and the answers obey the physics."""

from __future__ import annotations

import numpy as np
import pytest

from pharma_assets.lake.specs import load_spec
from pharma_assets.optimise import calibration, whatif
from pharma_assets.optimise.calibration import CalibratedBatch
from pharma_assets_tests.optimise.conftest import Synthetic


@pytest.fixture(scope="module")
def cal(synthetic: Synthetic) -> CalibratedBatch:
    # day 6: after the temperature shift (day 5.04), before harvest (day 14)
    return calibration.calibrate(synthetic.obs.until(6 * 24), synthetic.recipe, n_members=30)


def _same(a: whatif.Outcome, b: whatif.Outcome) -> None:
    np.testing.assert_array_equal(a.t_h, b.t_h)
    assert a.trajectories.keys() == b.trajectories.keys() and a.cqas.keys() == b.cqas.keys()
    for k in a.trajectories:
        np.testing.assert_array_equal(a.trajectories[k], b.trajectories[k], err_msg=k)
    for k in a.cqas:
        np.testing.assert_array_equal(a.cqas[k], b.cqas[k], err_msg=k)


def test_no_change_reproduces_the_baseline_exactly(cal: CalibratedBatch) -> None:
    res = whatif.run_whatif(cal, whatif.Scenario())
    _same(res.baseline, res.outcome)
    # set-points restated at their planned values take the same path, bit for bit
    same = whatif.Scenario(
        ph=7.0,
        do_pct=40.0,
        production_temp_c=33.0,
        feed_scale=1.0,
        harvest_day=14.0,
        glucose_target_g_l=5.0,
    )
    _same(res.baseline, whatif.run_whatif(cal, same).outcome)
    # the forecast continues the calibration: history up to as-of is the calibrated one
    k = len(cal.history["t_h"]) - 1
    np.testing.assert_array_equal(res.baseline.trajectories["Xv"][: k + 1], cal.history["Xv"])
    assert res.baseline.t_h[-1] == 14 * 24
    s = res.baseline.summary()["titer_g_l"]
    assert s["p05"] < s["median"] < s["p95"]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (whatif.Scenario(ph=15.0), "pH set-point 15 is outside the physical limits [0, 14]"),
        (whatif.Scenario(feed_scale=-0.5), "feed scale -0.5 is outside the feed pump range"),
        (
            whatif.Scenario(production_temp_c=30.0),
            "production temperature 30 is outside the temperature_c PAR (production, spec "
            f"v{load_spec().version}) [31.5, 34]",
        ),
        (whatif.Scenario(do_pct=70.0), "DO set-point 70 is outside the dissolved_oxygen_pct PAR"),
        (whatif.Scenario(shift_day=7.0), "the temperature shift already started on day 5.04"),
        (whatif.Scenario(harvest_day=5.0), "harvest day 5 is outside the days from the as-of"),
        (whatif.Scenario(glucose_target_g_l=2.0), "glucose target 2 is outside"),
    ],
)
def test_refusals_name_the_limit(
    cal: CalibratedBatch, scenario: whatif.Scenario, message: str
) -> None:
    with pytest.raises(
        whatif.ScenarioRefused, match=r"^scenario refused for batch SYN-0001: "
    ) as e:
        whatif.run_whatif(cal, scenario)
    assert message in str(e.value)


def test_every_broken_limit_is_listed_and_nor_is_only_flagged(cal: CalibratedBatch) -> None:
    with pytest.raises(whatif.ScenarioRefused) as e:
        whatif.run_whatif(cal, whatif.Scenario(ph=15.0, feed_scale=-1.0))
    assert "pH set-point 15" in str(e.value) and "feed scale -1" in str(e.value)
    res = whatif.run_whatif(cal, whatif.Scenario(ph=6.85))  # inside PAR, outside NOR
    assert res.warnings == ["pH set-point 6.85 is outside the ph NOR (production) [6.9, 7.1]"]


def test_physical_sanity(cal: CalibratedBatch) -> None:
    base = whatif.run_whatif(cal, whatif.Scenario())
    later = whatif.run_whatif(cal, whatif.Scenario(harvest_day=15.0))
    # product is only made, never destroyed: harvesting later gives more in every twin
    assert (later.outcome.cqas["product_mass_kg"] > base.baseline.cqas["product_mass_kg"]).all()
    assert (later.outcome.cqas["viability_pct"] < base.baseline.cqas["viability_pct"]).all()
    # no feed: less volume in every twin, and less product mass (starved of glutamine)
    nofeed = whatif.run_whatif(cal, whatif.Scenario(feed_scale=0.0))
    assert (nofeed.outcome.cqas["harvest_volume_l"] < base.baseline.cqas["harvest_volume_l"]).all()
    # a pH set-point away from the optimum costs productivity in every twin
    off = whatif.run_whatif(cal, whatif.Scenario(ph=6.85))
    assert (off.outcome.cqas["titer_g_l"] < base.baseline.cqas["titer_g_l"]).all()
    assert off.delta("titer_g_l")["p95"] < 0


def test_prior_only_calibration_warns_in_the_what_if(synthetic: Synthetic) -> None:
    cal0 = calibration.calibrate(synthetic.obs.until(6.0), synthetic.recipe, n_members=20)
    res = whatif.run_whatif(cal0, whatif.Scenario(shift_day=6.0))
    assert res.prior_only and any("too little data" in w for w in res.warnings)
    s = res.outcome.summary()["titer_g_l"]
    assert s["p95"] / s["p05"] > 1.3  # wide
