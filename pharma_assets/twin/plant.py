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

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from .config import MotorReliability, PFInterval, PlantConfig, Recipe, RecipeBook
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
    rel, rates = plant.reliability, plant.faults
    site = plant.site.site_id
    root = np.random.SeedSequence(seed)
    unit_rngs = [np.random.default_rng(s) for s in root.spawn(len(units))]
    lot_rng = np.random.default_rng(root.spawn(len(units) + 1)[-1])
    motor_rngs = [np.random.default_rng(s) for s in root.spawn(len(units))]
    mot = plant.motors
    shares = np.array([r.share for r in recipes.recipes])
    shares = shares / shares.sum()
    per_unit = [len(range(i, n_batches, len(units))) for i in range(len(units))]
    mean_cycle_h = (
        float(np.dot(shares, [r.planned_duration_days for r in recipes.recipes])) * 24
        + rel.turnaround_h
    )

    batches: list[BatchPlan] = []
    maint: list[tuple[float, str, str, str, str | None, str, float, float]] = []
    labels_rel: list[tuple[float, float | None, str, str, str | None, str | None, bool, str]] = []
    wo = 0

    for ui, unit in enumerate(units):
        rng = unit_rngs[ui]
        uid = unit.unit_id
        area = plant.area_of(uid)
        eq = {e.type: f"{uid}-{e.suffix}" for e in plant.equipment}
        t = ui * mean_cycle_h / len(units)  # staggered unit starts, hours from plan origin
        bearing_life = _weibull(
            rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
        )
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
        vib_base = float(rng.normal(1.1, 0.12))
        mrng = motor_rngs[ui]

        def winding_part(run: float = 0.0, mrng: np.random.Generator = mrng) -> _Part:
            life = _weibull(mrng, mot.winding_life_weibull_scale_h, mot.winding_life_weibull_shape)
            while life <= run + 48:
                life = _weibull(
                    mrng, mot.winding_life_weibull_scale_h, mot.winding_life_weibull_shape
                )
            return _new_part(mrng, life, mot, run=run, winding=True)

        def fp_bearing_part(run: float = 0.0, mrng: np.random.Generator = mrng) -> _Part:
            scale, shape = (
                mot.feed_pump_bearing_life_weibull_scale_h,
                mot.feed_pump_bearing_life_weibull_shape,
            )
            life = _weibull(mrng, scale, shape)
            while life <= run + 48:
                life = _weibull(mrng, scale, shape)
            return _new_part(mrng, life, mot, run=run)

        parts = {
            "agt_brg": _new_part(mrng, bearing_life, mot, run=bearing_run),
            "agt_wdg": winding_part(float(mrng.uniform(0, 0.5)) * mot.winding_life_weibull_scale_h),
            "fp_brg": fp_bearing_part(pump_run),
            "fp_wdg": winding_part(float(mrng.uniform(0, 0.5)) * mot.winding_life_weibull_scale_h),
        }
        agt_imb_base = float(np.clip(mrng.normal(1.0, 0.3), 0.2, None))
        fp_imb_base = float(np.clip(mrng.normal(1.2, 0.35), 0.2, None))
        kla_factor = float(rng.normal(1.0, 0.06))
        t_bias_unit = float(rng.normal(0, 0.02))
        for j in range(per_unit[ui]):
            seq = first_seq + j
            bid = batch_id_for(uid, seq)
            recipe = recipes.recipes[int(rng.choice(len(recipes.recipes), p=shares))]
            planned = recipe.planned_duration_days * 24.0 + float(rng.normal(0, 2.0))
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
                do_fouling=0.03 * since_membrane * float(rng.uniform(0.8, 1.2)),
                bearing_run_h0=bearing_run,
                bearing_life_h=bearing_life,
                pump_run_h0=pump_run,
                pump_life_h=pump_life,
                vib_base=vib_base,
                agt_imb_base=agt_imb_base,
                fp_imb_base=fp_imb_base,
            )
            for key, part in parts.items():
                row[f"{key}_p_h"], row[f"{key}_tau_h"] = part.batch_inputs()
            row["feed_end_h"] = min(row["feed_end_h"], planned - 2.0)
            end_h, status, reason = planned, "complete", None
            blabels: list[tuple[float, float | None, str, str | None, bool, str]] = []
            ends: list[tuple[float, str]] = []

            # agitator motor: bearing defect, stator winding, or a sudden drive trip; a
            # motor already past its life fails at start-up
            agt_cands = [
                (max(parts[k].life - parts[k].run, 0.5), k) for k in ("agt_brg", "agt_wdg")
            ]
            if mrng.random() < mot.agitator_sudden_trip:
                agt_cands.append((float(mrng.uniform(12, max(planned - 12, 13))), "trip"))
            fail_at, agt_mode = min(agt_cands)
            agitator_failed = fail_at < planned
            if agitator_failed:
                row["agitator_fail_h"] = fail_at
                if agt_mode != "trip":
                    row[f"{agt_mode}_f_h"] = fail_at
                ends.append((fail_at + float(rng.uniform(3, 6)), "agitator failure"))
                why = {"agt_brg": AGT_BEARING, "trip": AGT_TRIP}.get(
                    agt_mode, AGT_WINDING_FAST if parts["agt_wdg"].fast else AGT_WINDING
                )
                blabels.append((fail_at, None, "agitator_failure", eq["agitator_motor"], True, why))
            # feed pump: head wear-out or a motor failure during the feed window (a motor
            # past its life fails when the feed starts), or a sudden trip
            fs, fe = row["feed_start_h"], row["feed_end_h"]
            fp_cands: list[tuple[float, str]] = []
            pump_fail_at = pump_life - pump_run
            if fs <= pump_fail_at < fe:
                fp_cands.append((pump_fail_at, "head"))
            for k in ("fp_brg", "fp_wdg"):
                f_at = parts[k].life - parts[k].run
                if f_at < fe:
                    fp_cands.append((max(f_at, fs + float(mrng.uniform(0.1, 0.5))), k))
            if rng.random() < rates.feed_pump_failure:
                fp_cands.append((float(rng.uniform(fs, fe - 12)), "trip"))
            pump_failed = bool(fp_cands)
            fp_mode = ""
            if pump_failed:
                onset, fp_mode = min(fp_cands)
                dur = float(rng.uniform(8, 16) if fp_mode == "head" else rng.uniform(6, 24))
                why = {"head": FP_HEAD, "trip": FP_TRIP, "fp_brg": FP_BEARING}.get(
                    fp_mode, FP_WINDING_FAST if parts["fp_wdg"].fast else FP_WINDING
                )
                row["pump_fail_onset_h"], row["pump_fail_end_h"] = onset, onset + dur
                if fp_mode in parts:
                    row[f"{fp_mode}_f_h"] = onset
                blabels.append(
                    (onset, onset + dur, "feed_pump_failure", eq["feed_pump"], True, why)
                )
            if rng.random() < rates.contamination:
                onset = float(rng.uniform(1.5, 9.0)) * 24
                row["contam_onset_h"] = onset
                ends.append((onset + float(rng.uniform(18, 36)), "contamination confirmed"))
                blabels.append((onset, None, "contamination", None, False, "bacterial contaminant"))
            if rng.random() < rates.ph_probe_drift:
                onset = float(rng.uniform(1, 10)) * 24
                rate = float(rng.choice([-1, 1]) * rng.uniform(0.10, 0.20)) / 24.0
                end = onset + float(rng.uniform(24, 48))
                row.update(
                    ph_drift_fault_onset_h=onset,
                    ph_drift_fault_end_h=end,
                    ph_drift_fault_rate_h=rate,
                )
                blabels.append((onset, end, "ph_probe_drift", eq["ph_probe"], False,
                                f"drift {rate * 24:+.3f} pH/day until recalibration"))  # fmt: skip
            if rng.random() < rates.do_probe_failure:
                onset = float(rng.uniform(1, 11)) * 24
                end = onset + float(rng.uniform(6, 24))
                row.update(do_fail_onset_h=onset, do_fail_end_h=end)
                blabels.append((onset, end, "do_probe_failure", eq["do_probe"], True,
                                "membrane rupture, reading near zero until probe replaced"))  # fmt: skip
            if rng.random() < rates.chiller_fault:
                onset = float(rng.uniform(1, 12)) * 24
                end = onset + float(rng.uniform(3, 10))
                row.update(chiller_onset_h=onset, chiller_end_h=end)
                blabels.append((onset, end, "chiller_fault", eq["chiller"], True,
                                "loss of jacket cooling"))  # fmt: skip
            if ends:
                end_h, reason = min(ends)
                status = "aborted"
            row["end_h"] = end_h
            blabels = [b for b in blabels if b[0] < end_h]

            batches.append(
                BatchPlan(
                    batch_id=bid,
                    site_id=site,
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
            for onset, fend, ftype, eqid, is_fail, detail in blabels:
                labels_rel.append((t + onset, None if fend is None else t + min(fend, end_h), ftype, uid,
                                   bid, eqid, is_fail, detail))  # fmt: skip

            # ---------------- after the batch: wear, repairs, maintenance
            bearing_run += end_h
            pump_run += end_h
            for part in parts.values():
                part.run += end_h
            since_pm += end_h
            since_membrane += 1
            t_end = t + end_h
            down = rel.turnaround_h
            maint.append((t, "calibration", uid, eq["ph_probe"], None,
                          "pH and DO probe calibration before inoculation", 0.5, bearing_run - end_h))  # fmt: skip
            if agitator_failed and fail_at < end_h:
                agt_run = parts["agt_brg"].run - end_h + fail_at
                if agt_mode == "agt_brg":
                    maint.append((t + fail_at, "failure", uid, eq["agitator_motor"], None,
                                  "agitator tripped on high vibration; bearing seized", 0.0, agt_run))  # fmt: skip
                    maint.append((t_end + 2, "corrective_maintenance", uid, eq["agitator_motor"], "drive-end bearing",
                                  "replace agitator drive-end bearing", rel.repair_downtime_h, agt_run))  # fmt: skip
                elif agt_mode == "agt_wdg":
                    maint.append((t + fail_at, "failure", uid, eq["agitator_motor"], None,
                                  "agitator motor tripped on earth fault; stator winding failed", 0.0, agt_run))  # fmt: skip
                    maint.append((t_end + 2, "corrective_maintenance", uid, eq["agitator_motor"], "agitator motor",
                                  "replace agitator motor (stator winding failed)", rel.repair_downtime_h, agt_run))  # fmt: skip
                    parts["agt_wdg"] = winding_part()
                else:
                    maint.append((t + fail_at, "failure", uid, eq["agitator_motor"], None,
                                  "agitator drive tripped; no fault found on the motor", 0.0, agt_run))  # fmt: skip
                    maint.append((t_end + 2, "corrective_maintenance", uid, eq["agitator_motor"], None,
                                  "reset and test agitator drive after trip", rel.repair_downtime_h, agt_run))  # fmt: skip
                if agt_mode in ("agt_brg", "agt_wdg"):  # a new bearing (or a new motor)
                    bearing_run, bearing_life = 0.0, _weibull(rng, rel.bearing_life_weibull_scale_h,
                                                              rel.bearing_life_weibull_shape)  # fmt: skip
                    parts["agt_brg"] = _new_part(mrng, bearing_life, mot)
                down += rel.repair_downtime_h
            if pump_failed and row["pump_fail_onset_h"] < end_h:
                on = row["pump_fail_onset_h"]
                maint.append(
                    (
                        t + on,
                        "failure",
                        uid,
                        eq["feed_pump"],
                        None,
                        "feed pump stopped",
                        0.0,
                        pump_run,
                    )
                )
                part_name, what = {
                    "head": ("pump head", "replace feed pump head and tubing"),
                    "fp_brg": ("pump motor bearings", "replace feed pump motor bearings"),
                    "fp_wdg": ("feed pump motor", "replace feed pump motor (winding failed)"),
                    "trip": ("", "reset feed pump drive after trip; motor tested"),
                }[fp_mode]
                maint.append((t + min(row["pump_fail_end_h"], end_h), "corrective_maintenance", uid,
                              eq["feed_pump"], part_name or None, what, 0.0, pump_run))  # fmt: skip
                if fp_mode == "head":
                    pump_run, pump_life = (
                        0.0,
                        _weibull(rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape),
                    )
                elif fp_mode in ("fp_brg", "fp_wdg"):  # new bearings (or a new motor)
                    parts["fp_brg"] = fp_bearing_part()
                    if fp_mode == "fp_wdg":
                        parts["fp_wdg"] = winding_part()
            if since_pm >= rel.preventive_maintenance_interval_h:
                maint.append((t_end + 4, "preventive_maintenance", uid, eq["agitator_motor"], "drive-end bearing",
                              "preventive maintenance: replace agitator bearings", 8.0, bearing_run))  # fmt: skip
                maint.append((t_end + 4, "preventive_maintenance", uid, eq["feed_pump"], "pump head",
                              "preventive maintenance: replace feed pump head and motor bearings", 8.0, pump_run))  # fmt: skip
                bearing_run, pump_run, since_pm = 0.0, 0.0, 0.0
                bearing_life = _weibull(
                    rng, rel.bearing_life_weibull_scale_h, rel.bearing_life_weibull_shape
                )
                pump_life = _weibull(
                    rng, rel.pump_life_weibull_scale_h, rel.pump_life_weibull_shape
                )
                parts["agt_brg"] = _new_part(mrng, bearing_life, mot)
                parts["fp_brg"] = fp_bearing_part()
                down += 8.0
            if since_membrane >= rel.do_membrane_replacement_batches:
                maint.append((t_end + 3, "preventive_maintenance", uid, eq["do_probe"], "DO membrane",
                              "replace DO probe membrane and electrolyte", 0.0, bearing_run))  # fmt: skip
                since_membrane = 0
            t = t_end + down + float(rng.uniform(0, 6))

    # ---------------- raw-material lots, in chronological order of inoculation
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
            fault_type=ft,
            site_id=site,
            unit_id=uid,
            batch_id=bid,
            equipment_id=eqid,
            onset_ts=origin + timedelta(hours=on),
            end_ts=None if end is None else origin + timedelta(hours=end),
            is_equipment_failure=fail,
            detail=detail,
        )
        for k, (on, end, ft, uid, bid, eqid, fail, detail) in enumerate(
            sorted(labels_rel, key=lambda x: x[0])
        )
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
            event_ts=origin + timedelta(hours=ts),
            site_id=site,
            unit_id=uid,
            equipment_id=eqid,
            event_type=etype,
            part=part,
            description=desc,
            downtime_h=down,
            run_hours_at_event=run,
        )
        for k, (ts, etype, uid, eqid, part, desc, down, run) in enumerate(
            sorted(maint, key=lambda x: (x[0], x[3]))
        )
    ]
    del wo
    return PlantPlan(plant=plant, seed=seed, batches=batches, maintenance=events, labels=labels)
