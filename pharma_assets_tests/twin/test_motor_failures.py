"""Motor failure modes: each degradation shows in its signals over its P-F interval, a
sudden trip shows in none, and the planned modes keep the shares and P-F intervals that
docs/process_model.md states."""

from __future__ import annotations

import collections
from datetime import UTC, datetime

import numpy as np
import pytest

from pharma_assets.twin import plant as tp
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.outputs import telemetry_signals
from pharma_assets.twin.plant import nominal_inputs, plan_history

from .conftest import DT_H, run_rows

NOMINAL, AGT_WDG, AGT_BRG, AGT_TRIP, FP_WDG, FP_BRG = range(6)
P_H, F_H, FP_P_H, FP_F_H = 60.0, 180.0, 100.0, 200.0
RATIO = 20.0


def _deg(key: str, p: float, f: float) -> dict[str, float]:
    return {f"{key}_p_h": p, f"{key}_tau_h": (f - p) / np.log(RATIO), f"{key}_f_h": f}


def _rows() -> list[dict[str, float]]:
    recipe = load_recipes().recipes[0]
    end = 215.0
    return [
        nominal_inputs(recipe, end_h=end),
        nominal_inputs(recipe, end_h=end, agitator_fail_h=F_H, **_deg("agt_wdg", P_H, F_H)),
        nominal_inputs(recipe, end_h=end, agitator_fail_h=F_H, **_deg("agt_brg", P_H, F_H)),
        nominal_inputs(recipe, end_h=end, agitator_fail_h=F_H),
        nominal_inputs(
            recipe,
            end_h=end,
            pump_fail_onset_h=FP_F_H,
            pump_fail_end_h=FP_F_H + 10,
            **_deg("fp_wdg", FP_P_H, FP_F_H),
        ),
        nominal_inputs(
            recipe,
            end_h=end,
            pump_fail_onset_h=FP_F_H,
            pump_fail_end_h=FP_F_H + 10,
            **_deg("fp_brg", FP_P_H, FP_F_H),
        ),
    ]


@pytest.fixture(scope="module")
def motors():
    c = run_rows(_rows())
    sig = telemetry_signals(c.rec, c.inputs, DT_H, 0, np.random.default_rng(3))
    return sig


def _mean(sig: dict[str, np.ndarray], tag: str, b: int, h0: float, h1: float) -> float:
    return float(sig[tag][round(h0 / DT_H) : round(h1 / DT_H), b].mean())


def test_agitator_winding_degradation_rises_over_the_pf_interval(motors):
    s = motors
    for tag, rise in (
        ("agitator_current_imbalance_pct", 4.0),  # 0.4 % at P -> 8 % at F
        ("agitator_winding_temp_c", 6.0),
        ("agitator_motor_current_a", 0.4),  # the no-load current of the shorted turns
    ):
        before = _mean(s, tag, AGT_WDG, P_H - 24, P_H) - _mean(s, tag, NOMINAL, P_H - 24, P_H)
        early = _mean(s, tag, AGT_WDG, P_H, P_H + 24) - _mean(s, tag, NOMINAL, P_H, P_H + 24)
        mid = _mean(s, tag, AGT_WDG, F_H - 72, F_H - 48) - _mean(
            s, tag, NOMINAL, F_H - 72, F_H - 48
        )
        last = _mean(s, tag, AGT_WDG, F_H - 6, F_H) - _mean(s, tag, NOMINAL, F_H - 6, F_H)
        assert abs(before) < 0.2 * rise, (tag, before)  # nothing before P
        assert early < mid < last, (tag, early, mid, last)  # grows towards F
        assert last > rise, (tag, last)
    # the bearing band does not move with a winding fault
    d = _mean(s, "agitator_bearing_defect_ge", AGT_WDG, F_H - 6, F_H)
    assert d < _mean(s, "agitator_bearing_defect_ge", NOMINAL, F_H - 6, F_H) + 0.1


def test_agitator_bearing_defect_shows_in_band_then_vibration_then_heat(motors):
    s = motors
    band = "agitator_bearing_defect_ge"
    nominal_band = _mean(s, band, NOMINAL, F_H - 6, F_H)
    assert (
        abs(_mean(s, band, AGT_BRG, P_H - 24, P_H) - _mean(s, band, NOMINAL, P_H - 24, P_H)) < 0.05
    )
    assert _mean(s, band, AGT_BRG, F_H - 6, F_H) > nominal_band + 2.0
    vib = "agitator_vibration_mm_s"
    assert _mean(s, vib, AGT_BRG, F_H - 6, F_H) > _mean(s, vib, NOMINAL, F_H - 6, F_H) + 1.5
    # temperature comes last: little at mid-interval, several degrees at the end
    temp = "agitator_bearing_temp_c"
    mid = _mean(s, temp, AGT_BRG, F_H - 72, F_H - 48) - _mean(s, temp, NOMINAL, F_H - 72, F_H - 48)
    last = _mean(s, temp, AGT_BRG, F_H - 6, F_H) - _mean(s, temp, NOMINAL, F_H - 6, F_H)
    assert mid < 1.5 < 5.0 < last
    # the phase currents stay balanced
    imb = "agitator_current_imbalance_pct"
    assert abs(_mean(s, imb, AGT_BRG, F_H - 6, F_H) - _mean(s, imb, NOMINAL, F_H - 6, F_H)) < 0.2


def test_sudden_trip_has_no_precursor(motors):
    """The same batch with and without the trip (same seeds): every tag identical up to
    the trip, then the agitator stops."""
    s, c = motors, _rows()
    c[AGT_TRIP]["agitator_fail_h"] = np.inf
    no_trip = run_rows(c)
    s2 = telemetry_signals(no_trip.rec, no_trip.inputs, DT_H, 0, np.random.default_rng(3))
    k = round(F_H / DT_H)
    for tag in s:
        np.testing.assert_allclose(s[tag][:k, AGT_TRIP], s2[tag][:k, AGT_TRIP], err_msg=tag)
    assert np.all(s["agitation_rpm"][k + 6 :, AGT_TRIP] == 0)
    assert np.all(s2["agitation_rpm"][k + 6 :, AGT_TRIP] > 0)


def test_feed_pump_motor_degradations_show_while_pumping(motors):
    s = motors
    imb, wt, band = (
        "feed_pump_current_imbalance_pct",
        "feed_pump_winding_temp_c",
        "feed_pump_bearing_defect_ge",
    )
    for tag, b, rise in ((imb, FP_WDG, 4.0), (wt, FP_WDG, 6.0), (band, FP_BRG, 2.0)):
        before = _mean(s, tag, b, FP_P_H - 24, FP_P_H) - _mean(s, tag, NOMINAL, FP_P_H - 24, FP_P_H)
        last = _mean(s, tag, b, FP_F_H - 6, FP_F_H) - _mean(s, tag, NOMINAL, FP_F_H - 6, FP_F_H)
        assert abs(before) < 0.2 * rise and last > rise, (tag, before, last)
    # while the pump is down the motor is off: no current, ambient winding temperature
    down = slice(round((FP_F_H + 1) / DT_H), round((FP_F_H + 9) / DT_H))
    assert np.all(s[imb][down, FP_WDG] == 0)
    assert s[wt][down, FP_WDG].mean() < 23


def test_planned_failure_modes_shares_and_pf_intervals():
    plant = load_plant()
    plan = plan_history(plant, load_recipes(), 600, seed=11, start=datetime(2021, 1, 4, tzinfo=UTC))
    details = collections.Counter(
        lab.detail
        for lab in plan.labels
        if lab.fault_type in ("agitator_failure", "feed_pump_failure")
    )
    bearing = details[tp.AGT_BEARING] + details[tp.FP_BEARING]
    winding = sum(
        details[d] for d in (tp.AGT_WINDING, tp.AGT_WINDING_FAST, tp.FP_WINDING, tp.FP_WINDING_FAST)
    )
    sudden = details[tp.AGT_TRIP] + details[tp.FP_TRIP]
    motor = bearing + winding + sudden
    assert motor > 60, details
    # IEEE-IAS / EPRI motor surveys: bearings ~41-44 %, stator ~26-37 %, the rest other
    assert 0.35 < bearing / motor < 0.6, details
    assert 0.18 < winding / motor < 0.42, details
    assert 0.1 < sudden / motor < 0.32, details
    m = plant.motors
    # the modes the 72 h model is asked to catch have P-F >= 72 h (1st percentile)
    assert m.bearing_pf.quantile(0.01) >= 72 and m.winding_pf.quantile(0.01) >= 72
    assert m.winding_fast_pf.quantile(0.99) < 72


def test_degradation_inputs_are_consistent_with_failure_times():
    """A batch whose agitator fails of a degradation carries that degradation's P point
    before the failure, and its signals stop at the failure (the part is replaced)."""
    plan = plan_history(
        load_plant(), load_recipes(), 300, seed=5, start=datetime(2021, 1, 4, tzinfo=UTC)
    )
    seen = 0
    for b in plan.batches:
        r = b.inputs
        for lab in b.faults:
            if lab.detail in (tp.AGT_BEARING, tp.AGT_WINDING):
                key = "agt_brg" if lab.detail == tp.AGT_BEARING else "agt_wdg"
                assert r[f"{key}_f_h"] == pytest.approx(r["agitator_fail_h"])
                assert r[f"{key}_p_h"] < r["agitator_fail_h"]
                seen += 1
            if lab.detail == tp.AGT_TRIP:
                assert all(r[f"{k}_f_h"] == np.inf for k in ("agt_brg", "agt_wdg"))
    assert seen > 5
