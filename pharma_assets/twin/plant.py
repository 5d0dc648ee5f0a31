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

from .config import FaultRates, PlantConfig, Recipe, RecipeBook, ReliabilityConfig
from .engine import INF, BatchInputs


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


class BatchDraw(NamedTuple):
    """Everything a fault-kind function may read for one batch."""

    rng: np.random.Generator
    inputs: dict[str, float]
    planned_h: float
    wear: UnitWear
    rates: FaultRates
    equipment: dict[str, str]  # equipment type -> equipment id of this unit


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
    """The agitator's drive-end bearing reaches its drawn life during the batch."""
    fail_at = d.wear.bearing_life - d.wear.bearing_run
    if fail_at >= d.planned_h:
        return None
    abort = BatchAbort(fail_at + float(d.rng.uniform(3, 6)), "agitator failure")
    fault = PlannedFault(fail_at, None, "agitator_failure", d.equipment["agitator_motor"], True,
                         "drive-end bearing seized")  # fmt: skip
    return FaultDraw({"agitator_fail_h": fail_at}, fault, abort)


def feed_pump_failure(d: BatchDraw) -> FaultDraw | None:
    """The feed pump wears out during the feed window, or trips at random."""
    row, rng = d.inputs, d.rng
    pump_fail_at = d.wear.pump_life - d.wear.pump_run
    if row["feed_start_h"] <= pump_fail_at < row["feed_end_h"]:
        onset, dur, why = pump_fail_at, float(rng.uniform(8, 16)), "pump head worn out"
    elif rng.random() < d.rates.feed_pump_failure:
        onset = float(rng.uniform(row["feed_start_h"], row["feed_end_h"] - 12))
        dur, why = float(rng.uniform(6, 24)), "pump motor tripped"
    else:
        return None
    fault = PlannedFault(
        onset, onset + dur, "feed_pump_failure", d.equipment["feed_pump"], True, why
    )
    return FaultDraw({"pump_fail_onset_h": onset, "pump_fail_end_h": onset + dur}, fault)


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
    fault = PlannedFault(onset, end, "ph_probe_drift", d.equipment["ph_probe"], False,
                         f"drift {rate * 24:+.3f} pH/day until recalibration")  # fmt: skip
    inputs = {"ph_drift_fault_onset_h": onset, "ph_drift_fault_end_h": end,
              "ph_drift_fault_rate_h": rate}  # fmt: skip
    return FaultDraw(inputs, fault)


def do_probe_failure(d: BatchDraw) -> FaultDraw | None:
    """The DO probe's membrane ruptures; the reading sits near zero until replaced."""
    rng = d.rng
    if not rng.random() < d.rates.do_probe_failure:
        return None
    onset = float(rng.uniform(1, 11)) * 24
    end = onset + float(rng.uniform(6, 24))
    fault = PlannedFault(onset, end, "do_probe_failure", d.equipment["do_probe"], True,
                         "membrane rupture, reading near zero until probe replaced")  # fmt: skip
    return FaultDraw({"do_fail_onset_h": onset, "do_fail_end_h": end}, fault)


def chiller_fault(d: BatchDraw) -> FaultDraw | None:
    """The chiller stops cooling the jacket for 3-10 h."""
    rng = d.rng
    if not rng.random() < d.rates.chiller_fault:
        return None
    onset = float(rng.uniform(1, 12)) * 24
    end = onset + float(rng.uniform(3, 10))
    fault = PlannedFault(onset, end, "chiller_fault", d.equipment["chiller"], True,
                         "loss of jacket cooling")  # fmt: skip
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
) -> tuple[list[MaintenanceAt], float]:
    """Wear accrued by a batch that started at ``t`` and ran ``end_h`` hours, and the work
    orders that follow it (calibration, repairs of the failures it saw, preventive
    maintenance when due, DO membrane replacement); returns them and the downtime (h)."""
    wear.bearing_run += end_h
    wear.pump_run += end_h
    wear.since_pm += end_h
    wear.since_membrane += 1
    t_end = t + end_h
    down = rel.turnaround_h
    out = [MaintenanceAt(t, "calibration", uid, eq["ph_probe"], None,
                         "pH and DO probe calibration before inoculation", 0.5,
                         wear.bearing_run - end_h)]  # fmt: skip
    agitator = faults.get("agitator_failure")
    if agitator is not None and agitator.fault.onset_h < end_h:
        out += [
            MaintenanceAt(t + agitator.fault.onset_h, "failure", uid, eq["agitator_motor"], None,
                          "agitator tripped on high vibration; bearing seized", 0.0,
                          wear.bearing_life),
            MaintenanceAt(t_end + 2, "corrective_maintenance", uid, eq["agitator_motor"],
                          "drive-end bearing", "replace agitator drive-end bearing",
                          rel.repair_downtime_h, wear.bearing_life),
        ]  # fmt: skip
        wear.bearing_run = 0.0
        wear.bearing_life = _weibull(
            rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
        )
        down += rel.repair_downtime_h
    pump = faults.get("feed_pump_failure")
    if pump is not None and pump.fault.onset_h < end_h:
        on, off = pump.fault.onset_h, pump.fault.end_h
        assert off is not None
        out += [
            MaintenanceAt(t + on, "failure", uid, eq["feed_pump"], None, "feed pump stopped",
                          0.0, wear.pump_run),
            MaintenanceAt(t + min(off, end_h), "corrective_maintenance", uid, eq["feed_pump"],
                          "pump head", "replace feed pump head and tubing", 0.0, wear.pump_run),
        ]  # fmt: skip
        wear.pump_run = 0.0
        wear.pump_life = _weibull(rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape)
    if wear.since_pm >= rel.preventive_maintenance_interval_h:
        out += [
            MaintenanceAt(t_end + 4, "preventive_maintenance", uid, eq["agitator_motor"],
                          "drive-end bearing", "preventive maintenance: replace agitator bearings",
                          8.0, wear.bearing_run),
            MaintenanceAt(t_end + 4, "preventive_maintenance", uid, eq["feed_pump"], "pump head",
                          "preventive maintenance: replace feed pump head", 8.0, wear.pump_run),
        ]  # fmt: skip
        wear.bearing_run, wear.pump_run, wear.since_pm = 0.0, 0.0, 0.0
        wear.bearing_life = _weibull(
            rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
        )
        wear.pump_life = _weibull(rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape)
        down += 8.0
    if wear.since_membrane >= rel.do_membrane_replacement_batches:
        out.append(MaintenanceAt(t_end + 3, "preventive_maintenance", uid, eq["do_probe"],
                                 "DO membrane", "replace DO probe membrane and electrolyte", 0.0,
                                 wear.bearing_run))  # fmt: skip
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
    )
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
) -> tuple[list[BatchPlan], list[FaultAt], list[MaintenanceAt]]:
    """The ``n`` batches of one unit, its faults and its work orders (hours from origin)."""
    rel, rates = plant.reliability, plant.faults
    uid = plant.units[unit_index].unit_id
    area = plant.area_of(uid)
    eq: dict[str, str] = {e.type: f"{uid}-{e.suffix}" for e in plant.equipment}
    wear = _initial_wear(rng, rel)
    traits = (float(rng.normal(1.1, 0.12)), float(rng.normal(1.0, 0.06)),
              float(rng.normal(0, 0.02)))  # fmt: skip  # vibration base, kLa factor, T bias
    batches: list[BatchPlan] = []
    faults_at: list[FaultAt] = []
    maint: list[MaintenanceAt] = []
    for j in range(n):
        seq = first_seq + j
        bid = batch_id_for(uid, seq)
        recipe = recipes.recipes[int(rng.choice(len(recipes.recipes), p=shares))]
        planned = recipe.planned_duration_days * 24.0 + float(rng.normal(0, 2.0))
        row = _batch_inputs(rng, recipe, planned, wear, traits)
        draw = BatchDraw(rng, row, planned, wear, rates, eq)
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
            FaultAt(t + f.onset_h, None if f.end_h is None else t + min(f.end_h, end_h),
                    f.fault_type, uid, bid, f.equipment_id, f.is_equipment_failure, f.detail)
            for f in (d.fault for d in drawn) if f.onset_h < end_h
        ]  # fmt: skip
        done, down = maintenance_after_batch(
            rng, wear, rel, uid, eq, t, end_h, {d.fault.fault_type: d for d in drawn}
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
        {"mu": float(lot_rng.normal(1, 0.04)), "glc": float(lot_rng.normal(1, 0.03)),
         "mn_ppb": float(lot_rng.uniform(20, 60)), "osm": float(lot_rng.normal(295, 4))}
        for _ in range(n_media)
    ]  # fmt: skip
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
            plant, recipes, shares, ui, per_unit[ui], unit_rngs[ui], t0, first_seq
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
