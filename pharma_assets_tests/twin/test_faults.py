"""Every injected fault leaves its signature in the data and a label in the ground truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pharma_assets.twin.config import FAULT_TYPES, load_plant, load_recipes
from pharma_assets.twin.outputs import telemetry_signals
from pharma_assets.twin.plant import plan_history

from .conftest import DT_H

NOMINAL, CONTAM, PUMP, PH_DRIFT, DO_FAIL, CHILLER, AGITATOR = range(7)


def k(hours: float) -> int:
    return round(hours / DT_H)


def test_contamination_signature_within_hours(fault_cohort):
    r = fault_cohort.rec
    onset = k(120)
    after = slice(onset + k(8), onset + k(14))
    # oxygen uptake rises well above the clean twin's, within hours of onset
    assert r["OUR"][after, CONTAM].mean() > 1.5 * r["OUR"][after, NOMINAL].mean()
    # the DO loop saturates: DO falls below its set-point
    assert r["DO_m"][onset + k(14) : onset + k(24), CONTAM].mean() < 30
    # acids and CO2 overwhelm the base: pH falls below the dead-band
    assert r["pH"][onset + k(20) : onset + k(24), CONTAM].mean() < 6.9
    # glucose consumed (the daily bolus tops it up again, so look at the low point)
    w = slice(onset + k(8), onset + k(24))
    assert r["G"][w, CONTAM].min() < 0.5 * r["G"][w, NOMINAL].min()
    # and before onset the batch is indistinguishable from the clean one
    np.testing.assert_allclose(r["Xv"][:onset, CONTAM], r["Xv"][:onset, NOMINAL], rtol=0.05)


def test_feed_pump_failure_stops_feed(fault_cohort):
    r, u = fault_cohort.rec, fault_cohort.inputs
    window = slice(k(151), k(169))
    assert np.all(r["feed_lph"][window, PUMP] == 0)
    assert np.all(r["feed_lph"][window, NOMINAL] > 0)
    assert r["feed_lph"][k(171), PUMP] > 0  # feed resumes after repair
    sig = telemetry_signals(fault_cohort.rec, u, DT_H, 0, np.random.default_rng(0))
    assert np.all(sig["feed_pump_current_a"][window, PUMP] == 0)
    assert np.all(sig["feed_rate_ml_h"][window, PUMP] == 0)


def test_ph_probe_drift_departs_from_true_value(fault_cohort):
    r, u = fault_cohort.rec, fault_cohort.inputs
    gap = r["pH_m"][:, PH_DRIFT] - r["pH"][:, PH_DRIFT] - u.ph_bias[PH_DRIFT]
    assert abs(gap[k(99)]) < 0.03
    assert gap[k(139)] > 0.2  # 0.15 pH/day for ~40 h
    # the controller holds the *reading* in band, so the true pH is pushed out of it
    assert r["pH"][k(139), PH_DRIFT] < 6.85
    assert abs(gap[k(150)]) < 0.03  # recalibrated


def test_do_probe_failure_reads_zero_while_true_do_rises(fault_cohort):
    r = fault_cohort.rec
    w = slice(k(102), k(114))
    assert r["DO_m"][w, DO_FAIL].max() < 3
    assert r["DO"][k(110), DO_FAIL] > 60  # controller drives O2/agitation up on a false low


def test_chiller_fault_causes_temperature_excursion(fault_cohort):
    r = fault_cohort.rec
    assert r["T"][k(205), CHILLER] - r["T"][k(205), NOMINAL] > 0.5
    assert abs(r["T"][k(199), CHILLER] - r["T"][k(199), NOMINAL]) < 0.05


def test_agitator_failure_and_bearing_degradation(fault_cohort):
    r, u = fault_cohort.rec, fault_cohort.inputs
    assert np.all(r["rpm"][k(180.1) :, AGITATOR] == 0)
    assert r["DO"][k(183), AGITATOR] < 10
    sig = telemetry_signals(r, u, DT_H, 0, np.random.default_rng(0))
    vib = sig["agitator_vibration_mm_s"][:, AGITATOR]
    # vibration rises towards failure: last 12 h before failure vs 3 days earlier
    assert vib[k(168) : k(180)].mean() > 2.0 * vib[k(96) : k(108)].mean()
    assert (
        sig["agitator_bearing_temp_c"][k(178), AGITATOR]
        > sig["agitator_bearing_temp_c"][k(100), AGITATOR] + 5
    )
    assert np.all(sig["agitator_motor_current_a"][k(181) :, AGITATOR] == 0)


@pytest.fixture(scope="module")
def faulty_plan():
    plant = load_plant()
    plant = plant.model_copy(
        update={
            "faults": plant.faults.model_copy(
                update={f: 0.3 for f in type(plant.faults).model_fields}
            )
        }
    )
    return plan_history(plant, load_recipes(), 60, seed=5)


def test_every_fault_type_is_labelled_inside_its_batch(faulty_plan):
    seen = {lab.fault_type for lab in faulty_plan.labels}
    assert seen == set(FAULT_TYPES)
    batches = {b.batch_id: b for b in faulty_plan.batches}
    for lab in faulty_plan.labels:
        b = batches[lab.batch_id]
        assert b.start <= lab.onset_ts < b.end
        if lab.end_ts is not None:
            assert lab.onset_ts <= lab.end_ts <= b.end
        if lab.fault_type in (
            "agitator_failure",
            "feed_pump_failure",
            "do_probe_failure",
            "chiller_fault",
        ):
            assert lab.equipment_id and lab.equipment_id.startswith(b.unit_id)


def test_aborts_and_maintenance_follow_faults(faulty_plan):
    for b in faulty_plan.batches:
        types = {f.fault_type for f in b.faults}
        if "contamination" in types or "agitator_failure" in types:
            assert b.status == "aborted" and b.end_h < b.planned_end_h
        else:
            assert b.status == "complete"
    failures = [e for e in faulty_plan.maintenance if e.event_type == "failure"]
    repairs = [e for e in faulty_plan.maintenance if e.event_type == "corrective_maintenance"]
    assert failures and len(repairs) == len(failures)
    assert any(e.event_type == "preventive_maintenance" for e in faulty_plan.maintenance)
    # a unit never runs two batches at once
    by_unit: dict[str, list] = {}
    for b in faulty_plan.batches:
        by_unit.setdefault(b.unit_id, []).append(b)
    for bs in by_unit.values():
        bs.sort(key=lambda b: b.start)
        assert all(a.end <= nxt.start for a, nxt in itertools.pairwise(bs))


def test_default_fault_rates_are_a_few_percent_of_batches():
    plan = plan_history(load_plant(), load_recipes(), 300, seed=11)
    faulted = sum(bool(b.faults) for b in plan.batches) / len(plan.batches)
    # the motor failure modes run about ten times faster than real motors (so a history
    # holds enough failures to learn from, docs/process_model.md section 15): the agitator
    # and feed pump together fail in about a fifth of the batches; every kind stays rare
    assert 0.03 <= faulted <= 0.35, faulted
    for kind in {f.fault_type for b in plan.batches for f in b.faults}:
        share = sum(any(f.fault_type == kind for f in b.faults) for b in plan.batches) / 300
        assert share <= 0.15, (kind, share)
