"""Planning a plant history: batch schedule, raw-material lots, equipment wear, faults.

Everything random about a plant is drawn here, up front, from one seed: which recipe each
batch runs, its lots and their attributes, the condition of every piece of equipment,
which faults strike when, and therefore when each batch ends. The vectorised engine then
integrates all batches side by side from these inputs. Because batch end times (harvest,
or abort after a contamination or an agitator failure) are decided at planning time, the
calendar of every unit (turnaround, repairs, preventive maintenance) is known before any
kinetics run, which is what lets the engine treat 100 batches as one vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np

from .config import (
    FaultRates,
    MotorReliability,
    PFInterval,
    PlantConfig,
    Recipe,
    RecipeBook,
    ReliabilityConfig,
)
from .engine import INF, BatchInputs

#: motor degradations with a P-F interval: agitator / feed-pump motor, bearing / winding
MOTOR_DEGRADATIONS = ("agt_brg", "agt_wdg", "fp_brg", "fp_wdg")
#: ground-truth ``detail`` of each critical failure mode (pharma_assets.ml.pdm maps them)
AGT_BEARING = "drive-end bearing seized"
AGT_WINDING = "agitator stator winding insulation failure"
AGT_WINDING_FAST = "agitator stator turn-to-turn short"
AGT_TRIP = "agitator drive tripped (supply interruption or interlock)"
FP_HEAD = "pump head worn out"
FP_BEARING = "pump motor bearing failed"
FP_WINDING = "pump motor winding insulation failure"
FP_WINDING_FAST = "pump motor turn-to-turn short"
FP_TRIP = "pump motor tripped"


@dataclass
class FaultLabel:
    """Ground truth of one injected fault or equipment failure (never a model feature)."""

    fault_id: str
    fault_type: str
    site_id: str
    unit_id: str
    batch_id: str | None
    equipment_id: str | None
    onset_ts: datetime
    end_ts: datetime | None
    is_equipment_failure: bool
    detail: str


@dataclass
class MaintenanceEvent:
    """A CMMS record: work order, part replacement, calibration or failure."""

    work_order_id: str
    event_ts: datetime
    site_id: str
    unit_id: str
    equipment_id: str
    event_type: str  # preventive_maintenance | corrective_maintenance | failure | calibration
    part: str | None
    description: str
    downtime_h: float
    run_hours_at_event: float


@dataclass
class BatchPlan:
    batch_id: str
    site_id: str
    area_id: str
    unit_id: str
    seq: int
    recipe: Recipe
    start: datetime
    planned_end_h: float
    end_h: float
    status: str  # complete | aborted
    abort_reason: str | None
    lots: dict[str, str] = field(default_factory=dict)
    lot_attributes: dict[str, float] = field(default_factory=dict)
    faults: list[FaultLabel] = field(default_factory=list)
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.end_h)

    def engine_inputs(self) -> BatchInputs:
        """This batch alone as a one-element engine cohort."""
        return BatchInputs(**{k: np.array([v], dtype=float) for k, v in self.inputs.items()})


@dataclass
class PlantPlan:
    plant: PlantConfig
    seed: int
    batches: list[BatchPlan]
    maintenance: list[MaintenanceEvent]
    labels: list[FaultLabel]

    def inputs(self, idx: list[int] | None = None) -> BatchInputs:
        rows = [
            self.batches[i].inputs for i in (idx if idx is not None else range(len(self.batches)))
        ]
        return BatchInputs(**{k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]})


def _weibull(rng: np.random.Generator, scale: float, shape: float) -> float:
    return float(scale * rng.weibull(shape))


@dataclass
class _Part:
    """The clock of one motor degradation: run hours at its functional failure (``life``),
    run hours so far, its P-F interval and how much the degradation grows from P to F."""

    life: float
    run: float
    pf: float
    ratio: float
    fast: bool = False

    def batch_inputs(self) -> tuple[float, float]:
        """P point (hours after this batch's start) and growth time constant."""
        return self.life - self.run - self.pf, self.pf / float(np.log(self.ratio))


def _draw_pf(rng: np.random.Generator, d: PFInterval) -> float:
    return float(d.median_h * np.exp(d.sigma * rng.standard_normal()))


def _new_part(
    rng: np.random.Generator,
    life: float,
    m: MotorReliability,
    run: float = 0.0,
    winding: bool = False,
) -> _Part:
    """A part that fails at run hour ``life`` with a P-F interval drawn for its mode (never
    longer than the part's life: a new part starts healthy)."""
    fast = winding and bool(rng.random() < m.winding_fast_share)
    d = (m.winding_fast_pf if fast else m.winding_pf) if winding else m.bearing_pf
    pf = min(_draw_pf(rng, d), life)
    z = float(rng.standard_normal())
    ratio = m.failure_to_detection_ratio * float(np.exp(m.failure_to_detection_ratio_sigma * z))
    return _Part(life=life, run=run, pf=max(pf, 0.5), ratio=max(ratio, 1.5), fast=fast)


def _winding_part(rng: np.random.Generator, m: MotorReliability, run: float = 0.0) -> _Part:
    life = _weibull(rng, m.winding_life_weibull_scale_h, m.winding_life_weibull_shape)
    while life <= run + 48:
        life = _weibull(rng, m.winding_life_weibull_scale_h, m.winding_life_weibull_shape)
    return _new_part(rng, life, m, run=run, winding=True)


def _fp_bearing_part(rng: np.random.Generator, m: MotorReliability, run: float = 0.0) -> _Part:
    scale, shape = m.feed_pump_bearing_life_weibull_scale_h, m.feed_pump_bearing_life_weibull_shape
    life = _weibull(rng, scale, shape)
    while life <= run + 48:
        life = _weibull(rng, scale, shape)
    return _new_part(rng, life, m, run=run)


def nominal_inputs(recipe: Recipe, **overrides: float) -> dict[str, float]:
    """Inputs of a fault-free batch with nominal lots and new equipment (tests, what-if)."""
    sp, ini, fd, gc = recipe.setpoints, recipe.initial, recipe.feed, recipe.glucose_control
    row = {
        "T_grow": sp.temperature_c,
        "T_prod": sp.production_temperature_c,
        "shift_h": sp.temperature_shift_day * 24.0,
        "ramp_h": sp.temperature_ramp_h,
        "ph_sp": sp.ph,
        "ph_db": sp.ph_deadband,
        "do_sp": sp.dissolved_oxygen_pct,
        "rpm_min": sp.agitation_rpm_min,
        "rpm_max": sp.agitation_rpm_max,
        "air": sp.air_flow_slpm,
        "o2_max": sp.o2_flow_max_slpm,
        "co2_max": sp.co2_flow_max_slpm,
        "p_gauge": sp.headspace_pressure_bar,
        "V0": ini.fill_volume_l,
        "Xv0": ini.seed_density_e6_cells_ml,
        "G0": ini.glucose_g_l,
        "Gln0": ini.glutamine_mmol_l,
        "alk0": ini.bicarbonate_mmol_l,
        "osm0": 295.0,
        "feed_start_h": fd.start_day * 24.0,
        "feed_end_h": fd.end_day * 24.0,
        "feed_lph": fd.rate_pct_fill_per_day / 100.0 * ini.fill_volume_l / 24.0,
        "feed_G": fd.glucose_g_l,
        "feed_Gln": fd.glutamine_mmol_l,
        "gc_threshold": gc.threshold_g_l,
        "gc_bolus_to": gc.bolus_to_g_l,
        "gc_stock": gc.stock_g_l,
        "mu_lot": 1.0,
        "qp_lot": 1.0,
        "kla_factor": 1.0,
        "T_amb": 21.0,
        "hour_of_day0": 8.0,
        "T_bias": 0.0,
        "ph_bias": 0.0,
        "ph_drift_h": 0.0,
        "do_fouling": 0.0,
        "bearing_run_h0": 0.0,
        "bearing_life_h": 1e9,
        "pump_run_h0": 0.0,
        "pump_life_h": 1e9,
        "vib_base": 1.1,
        **{
            f"{k}_{v}": (1.0 if v == "tau_h" else INF)
            for k in MOTOR_DEGRADATIONS
            for v in ("p_h", "tau_h", "f_h")
        },
        "agt_imb_base": 1.0,
        "fp_imb_base": 1.0,
        "contam_onset_h": INF,
        "ph_drift_fault_onset_h": INF,
        "ph_drift_fault_end_h": INF,
        "ph_drift_fault_rate_h": 0.0,
        "do_fail_onset_h": INF,
        "do_fail_end_h": INF,
        "pump_fail_onset_h": INF,
        "pump_fail_end_h": INF,
        "chiller_onset_h": INF,
        "chiller_end_h": INF,
        "agitator_fail_h": INF,
        "end_h": recipe.planned_duration_days * 24.0,
    }
    unknown = set(overrides) - set(row)
    if unknown:
        raise KeyError(f"unknown inputs {sorted(unknown)}")
    row.update(overrides)
    return row


def batch_id_for(unit_id: str, seq: int) -> str:
    return f"{unit_id}-B{seq:04d}"


class PlannedFault(NamedTuple):
    """A fault drawn for one batch, in hours from the batch's inoculation."""

    onset_h: float
    end_h: float | None  # None: lasts until the batch ends
    fault_type: str
    equipment_id: str | None
    is_equipment_failure: bool
    detail: str


class BatchAbort(NamedTuple):
    """A fault that ends the batch early: when (hours from inoculation) and why."""

    at_h: float
    reason: str


class FaultDraw(NamedTuple):
    """What one fault kind does to one batch: engine inputs to set, the ground-truth label
    and, for a fault that kills the batch, when it is aborted."""

    inputs: dict[str, float]
    fault: PlannedFault
    abort: BatchAbort | None = None


class FaultAt(NamedTuple):
    """A planned fault in hours from the plan's origin (absolute time is set at the end)."""

    onset_h: float
    end_h: float | None
    fault_type: str
    unit_id: str
    batch_id: str | None
    equipment_id: str | None
    is_equipment_failure: bool
    detail: str


class MaintenanceAt(NamedTuple):
    """A CMMS record in hours from the plan's origin."""

    at_h: float
    event_type: str
    unit_id: str
    equipment_id: str
    part: str | None
    description: str
    downtime_h: float
    run_hours: float


@dataclass
class UnitWear:
    """The wear state of one unit's agitator bearing, feed pump and DO membrane."""

    bearing_life: float
    pump_life: float
    bearing_run: float
    pump_run: float
    since_pm: float
    since_membrane: int
    #: motor degradations (``MOTOR_DEGRADATIONS``), their own random stream, the supply's
    #: phase-current unbalance of each motor; empty/None: motors without degradation modes
    parts: dict[str, _Part] = field(default_factory=dict)
    motor_rng: np.random.Generator | None = None
    agt_imb_base: float = 1.0
    fp_imb_base: float = 1.0


class BatchDraw(NamedTuple):
    """Everything a fault-kind function may read for one batch."""

    rng: np.random.Generator
    inputs: dict[str, float]
    planned_h: float
    wear: UnitWear
    rates: FaultRates
    equipment: dict[str, str]  # equipment type -> equipment id of this unit
    motors: MotorReliability = MotorReliability()


def _initial_wear(rng: np.random.Generator, rel: ReliabilityConfig) -> UnitWear:
    bearing_life = _weibull(rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape)
    pump_life = _weibull(rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape)
    bearing_run = float(rng.uniform(0, 0.5) * rel.preventive_maintenance_interval_h)
    pump_run = float(rng.uniform(0, 0.5) * rel.preventive_maintenance_interval_h)
    # a part already past its drawn life would have failed before our history starts
    while bearing_life <= bearing_run + 48:
        bearing_life = _weibull(
            rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
        )
    while pump_life <= pump_run + 48:
        pump_life = _weibull(rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape)
    since_pm = max(bearing_run, pump_run)
    since_membrane = int(rng.integers(0, rel.do_membrane_replacement_batches))
    return UnitWear(bearing_life, pump_life, bearing_run, pump_run, since_pm, since_membrane)


# ---------------------------------------------------------------- one function per fault kind


def agitator_wear_out(d: BatchDraw) -> FaultDraw | None:
    """The agitator motor fails during the batch: its drive-end bearing or its stator
    winding reaches its drawn life (a motor already past it fails at start-up), or the
    drive trips without precursor (supply interruption, interlock); the first of these."""
    w = d.wear
    cands = [(w.bearing_life - w.bearing_run, "agt_brg")]
    if "agt_wdg" in w.parts:
        cands.append((w.parts["agt_wdg"].life - w.parts["agt_wdg"].run, "agt_wdg"))
    cands = [(max(f, 0.5), k) for f, k in cands]
    if w.motor_rng is not None and w.motor_rng.random() < d.motors.agitator_sudden_trip:
        cands.append((float(w.motor_rng.uniform(12, max(d.planned_h - 12, 13))), "trip"))
    fail_at, mode = min(cands)
    if fail_at >= d.planned_h:
        return None
    abort = BatchAbort(fail_at + float(d.rng.uniform(3, 6)), "agitator failure")
    why = {"agt_brg": AGT_BEARING, "trip": AGT_TRIP}.get(mode, "")
    if mode == "agt_wdg":
        why = AGT_WINDING_FAST if w.parts["agt_wdg"].fast else AGT_WINDING
    fault = PlannedFault(
        fail_at, None, "agitator_failure", d.equipment["agitator_motor"], True, why
    )
    inputs = {"agitator_fail_h": fail_at}
    if mode != "trip":
        inputs[f"{mode}_f_h"] = fail_at
    return FaultDraw(inputs, fault, abort)


def feed_pump_failure(d: BatchDraw) -> FaultDraw | None:
    """The feed pump fails during the feed window: its head wears out, its motor's bearing
    or winding reaches its life (a motor past it fails when the feed starts), or the motor
    trips without precursor; the first of these."""
    row, rng, w = d.inputs, d.rng, d.wear
    fs, fe = row["feed_start_h"], row["feed_end_h"]
    cands: list[tuple[float, str]] = []
    head = w.pump_life - w.pump_run
    if fs <= head < fe:
        cands.append((head, "head"))
    for k in ("fp_brg", "fp_wdg"):
        if k in w.parts and w.motor_rng is not None:
            f_at = w.parts[k].life - w.parts[k].run
            if f_at < fe:
                cands.append((max(f_at, fs + float(w.motor_rng.uniform(0.1, 0.5))), k))
    if rng.random() < d.rates.feed_pump_failure:
        cands.append((float(rng.uniform(fs, fe - 12)), "trip"))
    if not cands:
        return None
    onset, mode = min(cands)
    dur = float(rng.uniform(8, 16) if mode == "head" else rng.uniform(6, 24))
    why = {"head": FP_HEAD, "trip": FP_TRIP, "fp_brg": FP_BEARING}.get(mode, "")
    if mode == "fp_wdg":
        why = FP_WINDING_FAST if w.parts["fp_wdg"].fast else FP_WINDING
    fault = PlannedFault(
        onset, onset + dur, "feed_pump_failure", d.equipment["feed_pump"], True, why
    )
    inputs = {"pump_fail_onset_h": onset, "pump_fail_end_h": onset + dur}
    if mode in MOTOR_DEGRADATIONS:
        inputs[f"{mode}_f_h"] = onset
    return FaultDraw(inputs, fault)


def contamination(d: BatchDraw) -> FaultDraw | None:
    """A bacterial contaminant, confirmed (and the batch aborted) 18-36 h after onset."""
    rng = d.rng
    if not rng.random() < d.rates.contamination:
        return None
    onset = float(rng.uniform(1.5, 9.0)) * 24
    abort = BatchAbort(onset + float(rng.uniform(18, 36)), "contamination confirmed")
    fault = PlannedFault(onset, None, "contamination", None, False, "bacterial contaminant")
    return FaultDraw({"contam_onset_h": onset}, fault, abort)


def ph_probe_drift(d: BatchDraw) -> FaultDraw | None:
    """The pH probe drifts until it is recalibrated 24-48 h later."""
    rng = d.rng
    if not rng.random() < d.rates.ph_probe_drift:
        return None
    onset = float(rng.uniform(1, 10)) * 24
    rate = float(rng.choice([-1, 1]) * rng.uniform(0.10, 0.20)) / 24.0
    end = onset + float(rng.uniform(24, 48))
    fault = PlannedFault(
        onset,
        end,
        "ph_probe_drift",
        d.equipment["ph_probe"],
        False,
        f"drift {rate * 24:+.3f} pH/day until recalibration",
    )
    inputs = {
        "ph_drift_fault_onset_h": onset,
        "ph_drift_fault_end_h": end,
        "ph_drift_fault_rate_h": rate,
    }
    return FaultDraw(inputs, fault)


def do_probe_failure(d: BatchDraw) -> FaultDraw | None:
    """The DO probe's membrane ruptures; the reading sits near zero until replaced."""
    rng = d.rng
    if not rng.random() < d.rates.do_probe_failure:
        return None
    onset = float(rng.uniform(1, 11)) * 24
    end = onset + float(rng.uniform(6, 24))
    fault = PlannedFault(
        onset,
        end,
        "do_probe_failure",
        d.equipment["do_probe"],
        True,
        "membrane rupture, reading near zero until probe replaced",
    )
    return FaultDraw({"do_fail_onset_h": onset, "do_fail_end_h": end}, fault)


def chiller_fault(d: BatchDraw) -> FaultDraw | None:
    """The chiller stops cooling the jacket for 3-10 h."""
    rng = d.rng
    if not rng.random() < d.rates.chiller_fault:
        return None
    onset = float(rng.uniform(1, 12)) * 24
    end = onset + float(rng.uniform(3, 10))
    fault = PlannedFault(
        onset, end, "chiller_fault", d.equipment["chiller"], True, "loss of jacket cooling"
    )
    return FaultDraw({"chiller_onset_h": onset, "chiller_end_h": end}, fault)


#: the fault kinds, in the order their random draws are made (the order is part of the seed)
FAULT_KINDS: tuple[Callable[[BatchDraw], FaultDraw | None], ...] = (
    agitator_wear_out,
    feed_pump_failure,
    contamination,
    ph_probe_drift,
    do_probe_failure,
    chiller_fault,
)


# ---------------------------------------------------------------- after a batch: the CMMS


def maintenance_after_batch(
    rng: np.random.Generator,
    wear: UnitWear,
    rel: ReliabilityConfig,
    uid: str,
    eq: dict[str, str],
    t: float,
    end_h: float,
    faults: dict[str, FaultDraw],
    motors: MotorReliability | None = None,
) -> tuple[list[MaintenanceAt], float]:
    """Wear accrued by a batch that started at ``t`` and ran ``end_h`` hours, and the work
    orders that follow it (calibration, repairs of the failures it saw, preventive
    maintenance when due, DO membrane replacement); returns them and the downtime (h)."""
    wear.bearing_run += end_h
    wear.pump_run += end_h
    for motor_part in wear.parts.values():
        motor_part.run += end_h
    m = motors or MotorReliability()
    mrng = wear.motor_rng or rng
    wear.since_pm += end_h
    wear.since_membrane += 1
    t_end = t + end_h
    down = rel.turnaround_h
    out = [
        MaintenanceAt(
            t,
            "calibration",
            uid,
            eq["ph_probe"],
            None,
            "pH and DO probe calibration before inoculation",
            0.5,
            wear.bearing_run - end_h,
        )
    ]
    agitator = faults.get("agitator_failure")
    if agitator is not None and agitator.fault.onset_h < end_h:
        on, why = agitator.fault.onset_h, agitator.fault.detail
        run_at = wear.bearing_run - end_h + on
        failed, part, repair = {
            AGT_TRIP: (
                "agitator drive tripped; no fault found on the motor",
                None,
                "reset and test agitator drive after trip",
            ),
            AGT_WINDING: (
                "agitator motor tripped on earth fault; stator winding failed",
                "agitator motor",
                "replace agitator motor (stator winding failed)",
            ),
            AGT_WINDING_FAST: (
                "agitator motor tripped on earth fault; stator winding failed",
                "agitator motor",
                "replace agitator motor (stator winding failed)",
            ),
        }.get(
            why,
            (
                "agitator tripped on high vibration; bearing seized",
                "drive-end bearing",
                "replace agitator drive-end bearing",
            ),
        )
        out += [
            MaintenanceAt(t + on, "failure", uid, eq["agitator_motor"], None, failed, 0.0, run_at),
            MaintenanceAt(
                t_end + 2,
                "corrective_maintenance",
                uid,
                eq["agitator_motor"],
                part,
                repair,
                rel.repair_downtime_h,
                run_at,
            ),
        ]
        if why != AGT_TRIP:  # a new bearing (or a new motor, with a new winding)
            wear.bearing_run = 0.0
            wear.bearing_life = _weibull(
                rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
            )
            if wear.parts:
                wear.parts["agt_brg"] = _new_part(mrng, wear.bearing_life, m)
                if why in (AGT_WINDING, AGT_WINDING_FAST):
                    wear.parts["agt_wdg"] = _winding_part(mrng, m)
        down += rel.repair_downtime_h
    pump = faults.get("feed_pump_failure")
    if pump is not None and pump.fault.onset_h < end_h:
        on, off = pump.fault.onset_h, pump.fault.end_h
        assert off is not None
        why = pump.fault.detail
        part, repair = {
            FP_HEAD: ("pump head", "replace feed pump head and tubing"),
            FP_BEARING: ("pump motor bearings", "replace feed pump motor bearings"),
            FP_WINDING: ("feed pump motor", "replace feed pump motor (winding failed)"),
            FP_WINDING_FAST: ("feed pump motor", "replace feed pump motor (winding failed)"),
        }.get(why, (None, "reset feed pump drive after trip; motor tested"))
        out += [
            MaintenanceAt(
                t + on,
                "failure",
                uid,
                eq["feed_pump"],
                None,
                "feed pump stopped",
                0.0,
                wear.pump_run,
            ),
            MaintenanceAt(
                t + min(off, end_h),
                "corrective_maintenance",
                uid,
                eq["feed_pump"],
                part,
                repair,
                0.0,
                wear.pump_run,
            ),
        ]
        if why == FP_HEAD:
            wear.pump_run = 0.0
            wear.pump_life = _weibull(
                rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape
            )
        elif why in (FP_BEARING, FP_WINDING, FP_WINDING_FAST) and wear.parts:
            wear.parts["fp_brg"] = _fp_bearing_part(mrng, m)  # new bearings (or a new motor)
            if why != FP_BEARING:
                wear.parts["fp_wdg"] = _winding_part(mrng, m)
    if wear.since_pm >= rel.preventive_maintenance_interval_h:
        out += [
            MaintenanceAt(
                t_end + 4,
                "preventive_maintenance",
                uid,
                eq["agitator_motor"],
                "drive-end bearing",
                "preventive maintenance: replace agitator bearings",
                8.0,
                wear.bearing_run,
            ),
            MaintenanceAt(
                t_end + 4,
                "preventive_maintenance",
                uid,
                eq["feed_pump"],
                "pump head",
                "preventive maintenance: replace feed pump head and motor bearings",
                8.0,
                wear.pump_run,
            ),
        ]
        wear.bearing_run, wear.pump_run, wear.since_pm = 0.0, 0.0, 0.0
        wear.bearing_life = _weibull(
            rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
        )
        wear.pump_life = _weibull(rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape)
        if wear.parts:
            wear.parts["agt_brg"] = _new_part(mrng, wear.bearing_life, m)
            wear.parts["fp_brg"] = _fp_bearing_part(mrng, m)
        down += 8.0
    if wear.since_membrane >= rel.do_membrane_replacement_batches:
        out.append(
            MaintenanceAt(
                t_end + 3,
                "preventive_maintenance",
                uid,
                eq["do_probe"],
                "DO membrane",
                "replace DO probe membrane and electrolyte",
                0.0,
                wear.bearing_run,
            )
        )
        wear.since_membrane = 0
    return out, down


# ---------------------------------------------------------------- the plan


def _batch_inputs(
    rng: np.random.Generator,
    recipe: Recipe,
    planned: float,
    wear: UnitWear,
    unit: tuple[float, float, float],
) -> dict[str, float]:
    """The engine inputs of one batch before faults: the recipe's nominal values with the
    batch-to-batch variation drawn here, the unit's traits and its wear state."""
    vib_base, kla_factor, t_bias_unit = unit
    row = nominal_inputs(recipe)
    ini = recipe.initial
    row.update(
        V0=ini.fill_volume_l * float(rng.normal(1, 0.01)),
        Xv0=ini.seed_density_e6_cells_ml * float(rng.lognormal(0, 0.15)),
        Gln0=ini.glutamine_mmol_l * float(rng.normal(1, 0.05)),
        alk0=ini.bicarbonate_mmol_l * float(rng.normal(1, 0.04)),
        shift_h=row["shift_h"] + float(rng.normal(0, 1.5)),
        feed_start_h=row["feed_start_h"] + float(rng.normal(0, 1.0)),
        mu_lot=float(rng.normal(1, 0.03)),  # seed-train vitality; times media lot below
        kla_factor=kla_factor,
        T_amb=float(rng.normal(21, 1.5)),
        T_bias=t_bias_unit + float(rng.normal(0, 0.01)),
        ph_bias=float(rng.normal(0, 0.012)),
        ph_drift_h=float(rng.normal(0, 0.003)) / 24.0,
        do_fouling=0.03 * wear.since_membrane * float(rng.uniform(0.8, 1.2)),
        bearing_run_h0=wear.bearing_run,
        bearing_life_h=wear.bearing_life,
        pump_run_h0=wear.pump_run,
        pump_life_h=wear.pump_life,
        vib_base=vib_base,
        agt_imb_base=wear.agt_imb_base,
        fp_imb_base=wear.fp_imb_base,
    )
    for key, part in wear.parts.items():
        row[f"{key}_p_h"], row[f"{key}_tau_h"] = part.batch_inputs()
    row["feed_end_h"] = min(row["feed_end_h"], planned - 2.0)
    return row


def _plan_unit(
    plant: PlantConfig,
    recipes: RecipeBook,
    shares: np.ndarray,
    unit_index: int,
    n: int,
    rng: np.random.Generator,
    t: float,
    first_seq: int,
    motor_rng: np.random.Generator | None = None,
) -> tuple[list[BatchPlan], list[FaultAt], list[MaintenanceAt]]:
    """The ``n`` batches of one unit, its faults and its work orders (hours from origin)."""
    rel, rates = plant.reliability, plant.faults
    uid = plant.units[unit_index].unit_id
    area = plant.area_of(uid)
    eq: dict[str, str] = {e.type: f"{uid}-{e.suffix}" for e in plant.equipment}
    wear = _initial_wear(rng, rel)
    traits = (
        float(rng.normal(1.1, 0.12)),
        float(rng.normal(1.0, 0.06)),
        float(rng.normal(0, 0.02)),
    )  # vibration base, kLa factor, T bias
    mot = plant.motors
    if motor_rng is not None:
        mr = motor_rng
        wear.motor_rng = mr
        wear.parts = {
            "agt_brg": _new_part(mr, wear.bearing_life, mot, run=wear.bearing_run),
            "agt_wdg": _winding_part(
                mr, mot, float(mr.uniform(0, 0.5)) * mot.winding_life_weibull_scale_h
            ),
            "fp_brg": _fp_bearing_part(mr, mot, wear.pump_run),
            "fp_wdg": _winding_part(
                mr, mot, float(mr.uniform(0, 0.5)) * mot.winding_life_weibull_scale_h
            ),
        }
        wear.agt_imb_base = float(np.clip(mr.normal(1.0, 0.3), 0.2, None))
        wear.fp_imb_base = float(np.clip(mr.normal(1.2, 0.35), 0.2, None))
    batches: list[BatchPlan] = []
    faults_at: list[FaultAt] = []
    maint: list[MaintenanceAt] = []
    for j in range(n):
        seq = first_seq + j
        bid = batch_id_for(uid, seq)
        recipe = recipes.recipes[int(rng.choice(len(recipes.recipes), p=shares))]
        planned = recipe.planned_duration_days * 24.0 + float(rng.normal(0, 2.0))
        row = _batch_inputs(rng, recipe, planned, wear, traits)
        draw = BatchDraw(rng, row, planned, wear, rates, eq, mot)
        drawn = [f for f in (kind(draw) for kind in FAULT_KINDS) if f is not None]
        for f in drawn:
            row.update(f.inputs)
        aborts = [f.abort for f in drawn if f.abort is not None]
        end_h, status, reason = planned, "complete", None
        if aborts:
            end_h, reason = min(aborts)
            status = "aborted"
        row["end_h"] = end_h
        batches.append(
            BatchPlan(
                batch_id=bid,
                site_id=plant.site.site_id,
                area_id=area,
                unit_id=uid,
                seq=seq,
                recipe=recipe,
                start=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=t),  # shifted below
                planned_end_h=planned,
                end_h=end_h,
                status=status,
                abort_reason=reason,
                inputs=row,
            )
        )
        faults_at += [
            FaultAt(
                t + f.onset_h,
                None if f.end_h is None else t + min(f.end_h, end_h),
                f.fault_type,
                uid,
                bid,
                f.equipment_id,
                f.is_equipment_failure,
                f.detail,
            )
            for f in (d.fault for d in drawn)
            if f.onset_h < end_h
        ]
        done, down = maintenance_after_batch(
            rng, wear, rel, uid, eq, t, end_h, {d.fault.fault_type: d for d in drawn}, mot
        )
        maint += done
        t = t + end_h + down + float(rng.uniform(0, 6))
    return batches, faults_at, maint


def _assign_lots(batches: list[BatchPlan], lot_rng: np.random.Generator) -> None:
    """Raw-material lots, in chronological order of inoculation, and their attributes."""
    order = sorted(range(len(batches)), key=lambda i: (batches[i].start, batches[i].unit_id))
    n_media = max(1, (len(batches) + 5) // 6)
    n_feed = max(1, (len(batches) + 7) // 8)
    media = [
        {
            "mu": float(lot_rng.normal(1, 0.04)),
            "glc": float(lot_rng.normal(1, 0.03)),
            "mn_ppb": float(lot_rng.uniform(20, 60)),
            "osm": float(lot_rng.normal(295, 4)),
        }
        for _ in range(n_media)
    ]
    feeds = [
        {"conc": float(lot_rng.normal(1, 0.03)), "qp": float(lot_rng.normal(1, 0.05))}
        for _ in range(n_feed)
    ]
    year = 26
    for rank, i in enumerate(order):
        b = batches[i]
        mi, fi = rank * n_media // len(batches), rank * n_feed // len(batches)
        m, f = media[mi], feeds[fi]
        r = b.inputs
        r["mu_lot"] *= m["mu"]
        r["G0"] *= m["glc"]
        r["osm0"] = m["osm"]
        r["feed_G"] *= f["conc"]
        r["feed_Gln"] *= f["conc"]
        r["qp_lot"] = f["qp"]
        b.lots = {
            "media_lot": f"MED-{year}{mi + 1:04d}",
            "feed_lot": f"FEED-{year}{fi + 1:04d}",
            "inoculum_lot": f"INO-{b.batch_id}",
            "base_lot": f"NA2CO3-{year}{rank // 10 + 1:03d}",
        }
        b.lot_attributes = {
            "media_glucose_factor": m["glc"],
            "media_mn_ppb": m["mn_ppb"],
            "media_osmolality_mosm_kg": m["osm"],
            "media_growth_potency": m["mu"],
            "feed_concentration_factor": f["conc"],
            "feed_productivity_factor": f["qp"],
            "seed_density_e6_cells_ml": r["Xv0"],
        }


def plan_history(
    plant: PlantConfig,
    recipes: RecipeBook,
    n_batches: int,
    seed: int,
    start: datetime | None = None,
    first_seq: int = 1,
) -> PlantPlan:
    """Plan ``n_batches`` batches round-robin over the plant's units.

    ``start`` is the inoculation time of the first unit's first batch; when None the
    history is placed so that its last batch ends before today (UTC midnight), which keeps
    a given seed reproducible within a day; pass ``start`` for byte-identical output.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches}")
    units = plant.units
    site = plant.site.site_id
    root = np.random.SeedSequence(seed)
    unit_rngs = [np.random.default_rng(s) for s in root.spawn(len(units))]
    lot_rng = np.random.default_rng(root.spawn(len(units) + 1)[-1])
    motor_rngs = [np.random.default_rng(s) for s in root.spawn(len(units))]
    shares = np.array([r.share for r in recipes.recipes])
    shares = shares / shares.sum()
    per_unit = [len(range(i, n_batches, len(units))) for i in range(len(units))]
    mean_cycle_h = (
        float(np.dot(shares, [r.planned_duration_days for r in recipes.recipes])) * 24
        + plant.reliability.turnaround_h
    )

    batches: list[BatchPlan] = []
    maint: list[MaintenanceAt] = []
    faults_at: list[FaultAt] = []
    for ui in range(len(units)):
        t0 = ui * mean_cycle_h / len(units)  # staggered unit starts, hours from plan origin
        unit_batches, unit_faults, unit_maint = _plan_unit(
            plant, recipes, shares, ui, per_unit[ui], unit_rngs[ui], t0, first_seq, motor_rngs[ui]
        )
        batches += unit_batches
        faults_at += unit_faults
        maint += unit_maint
    _assign_lots(batches, lot_rng)

    # ---------------- absolute time
    span_h = max(b.start.timestamp() / 3600 + b.end_h for b in batches)
    if start is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        origin = today - timedelta(hours=span_h + 24)
        origin = origin.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        origin = start if start.tzinfo else start.replace(tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for b in batches:
        b.start = origin + (b.start - epoch)
        b.inputs["hour_of_day0"] = b.start.hour + b.start.minute / 60
    labels = [
        FaultLabel(
            fault_id=f"F{k + 1:05d}",
            fault_type=f.fault_type,
            site_id=site,
            unit_id=f.unit_id,
            batch_id=f.batch_id,
            equipment_id=f.equipment_id,
            onset_ts=origin + timedelta(hours=f.onset_h),
            end_ts=None if f.end_h is None else origin + timedelta(hours=f.end_h),
            is_equipment_failure=f.is_equipment_failure,
            detail=f.detail,
        )
        for k, f in enumerate(sorted(faults_at, key=lambda x: x.onset_h))
    ]
    by_batch: dict[str, list[FaultLabel]] = {}
    for lab in labels:
        if lab.batch_id:
            by_batch.setdefault(lab.batch_id, []).append(lab)
    for b in batches:
        b.faults = by_batch.get(b.batch_id, [])
    events = [
        MaintenanceEvent(
            work_order_id=f"WO-{k + 1:06d}",
            event_ts=origin + timedelta(hours=m.at_h),
            site_id=site,
            unit_id=m.unit_id,
            equipment_id=m.equipment_id,
            event_type=m.event_type,
            part=m.part,
            description=m.description,
            downtime_h=m.downtime_h,
            run_hours_at_event=m.run_hours,
        )
        for k, m in enumerate(sorted(maint, key=lambda x: (x.at_h, x.equipment_id)))
    ]
    return PlantPlan(plant=plant, seed=seed, batches=batches, maintenance=events, labels=labels)
