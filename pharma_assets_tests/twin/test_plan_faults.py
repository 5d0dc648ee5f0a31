"""The plan's fault kinds: one function each, returning named records."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from pharma_assets.twin import plant as P
from pharma_assets.twin.config import FaultRates, load_plant, load_recipes

EQ = {
    "agitator_motor": "BR01-AGT",
    "feed_pump": "BR01-FP",
    "ph_probe": "BR01-PH",
    "do_probe": "BR01-DO",
    "chiller": "BR01-CHL",
}


def _draw(rate: float, wear: P.UnitWear, seed: int = 3) -> P.BatchDraw:
    rates = FaultRates(
        contamination=rate,
        ph_probe_drift=rate,
        do_probe_failure=rate,
        feed_pump_failure=rate,
        chiller_fault=rate,
    )
    row = {"feed_start_h": 72.0, "feed_end_h": 300.0}
    return P.BatchDraw(np.random.default_rng(seed), row, 336.0, wear, rates, EQ)


def _new_parts() -> P.UnitWear:
    return P.UnitWear(
        bearing_life=5000.0,
        pump_life=5000.0,
        bearing_run=0.0,
        pump_run=0.0,
        since_pm=0.0,
        since_membrane=0,
    )


@pytest.mark.parametrize(
    ("kind", "fault_type", "inputs", "aborts"),
    [
        (P.feed_pump_failure, "feed_pump_failure", {"pump_fail_onset_h", "pump_fail_end_h"}, False),
        (P.contamination, "contamination", {"contam_onset_h"}, True),
        (
            P.ph_probe_drift,
            "ph_probe_drift",
            {"ph_drift_fault_onset_h", "ph_drift_fault_end_h", "ph_drift_fault_rate_h"},
            False,
        ),
        (P.do_probe_failure, "do_probe_failure", {"do_fail_onset_h", "do_fail_end_h"}, False),
        (P.chiller_fault, "chiller_fault", {"chiller_onset_h", "chiller_end_h"}, False),
    ],
)
def test_each_random_fault_kind(kind, fault_type, inputs, aborts) -> None:  # type: ignore[no-untyped-def]
    assert kind(_draw(0.0, _new_parts())) is None  # rate 0: never
    got = kind(_draw(1.0, _new_parts()))
    assert isinstance(got, P.FaultDraw) and isinstance(got.fault, P.PlannedFault)
    assert got.fault.fault_type == fault_type
    assert set(got.inputs) == inputs
    assert (got.abort is not None) == aborts
    if got.fault.end_h is not None:
        assert got.fault.end_h > got.fault.onset_h


def test_wear_out_faults_follow_the_wear_state() -> None:
    worn = P.UnitWear(
        bearing_life=1100.0,
        pump_life=1100.0,
        bearing_run=1000.0,
        pump_run=1000.0,
        since_pm=0.0,
        since_membrane=0,
    )
    agt = P.agitator_wear_out(_draw(0.0, worn))
    assert agt is not None and agt.fault.onset_h == pytest.approx(100.0)
    assert agt.abort is not None and 103.0 <= agt.abort.at_h <= 106.0
    assert agt.fault.equipment_id == "BR01-AGT" and agt.fault.is_equipment_failure
    pump = P.feed_pump_failure(_draw(0.0, worn))  # 100 h falls in the feed window
    assert pump is not None and pump.fault.detail == "pump head worn out"
    assert P.agitator_wear_out(_draw(0.0, _new_parts())) is None


def test_plan_records_are_named_and_reproducible() -> None:
    plant, recipes = load_plant().with_units(2), load_recipes()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    a = P.plan_history(plant, recipes, 12, seed=7, start=start)
    b = P.plan_history(plant, recipes, 12, seed=7, start=start)
    assert repr((a.batches, a.maintenance, a.labels)) == repr((b.batches, b.maintenance, b.labels))
    assert [m.work_order_id for m in a.maintenance][:2] == ["WO-000001", "WO-000002"]
    assert all(
        lab.onset_ts < next(x.end for x in a.batches if x.batch_id == lab.batch_id)
        for lab in a.labels
        if lab.batch_id
    )
