"""What-if: continue a calibrated batch from its as-of time under changed set-points.

A `Scenario` names the changes a process engineer would try (temperature-shift day and
target, pH and DO set-points, feed scale, glucose bolus target, harvest day). `check` refuses
a scenario that is physically impossible or leaves the CPP spec's proven acceptable range
(PAR), naming the limit, and flags set-points outside the normal operating range (NOR).
`run_whatif` integrates every twin of the calibrated ensemble twice from the same as-of
state, as planned and with the changes, and summarises the trajectories and the predicted
CQAs at harvest with ensemble intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.lake.storage import Lake

from . import model
from .calibration import CalibratedBatch

MAX_BATCH_DAYS = 30.0  # Recipe.planned_duration_days upper bound (twin.config)
MAX_FEED_PCT_FILL_PER_DAY = 20.0  # FeedConfig.rate_pct_fill_per_day upper bound
# Culture temperature the model (and CHO cells) can be run at at all (SetpointConfig bounds).
TEMPERATURE_PHYSICAL = (28.0, 39.0)
QUANTILES = (0.05, 0.5, 0.95)  # the reported 90 % interval and median

# Assay noise of each release CQA in the engine's release model (twin.outputs.release_assays),
# used to turn a predicted value into a probability of meeting its specification.
RELEASE_ASSAY_SD = {
    "aggregates_hmw_pct": 0.08,
    "g0f_pct": 0.8,
    "g1f_pct": 0.93,
    "g2f_pct": 0.3,
    "afucosylated_pct": 0.3,
    "acidic_variants_pct": 0.8,
    "hcp_ppm": 4.0,
    "purity_pct": 0.13,
}
RELEASE_ASSAY_CV = {"titer_g_l": 0.03}

# Release-CQA model terms the fast twin does not track, held at nominal values
# (docs/process_model.md section 12): peak pCO2, peak osmolality, media Mn, hours of pH
# outside 6.9-7.1.
NOMINAL_PEAK_PCO2 = 100.0
NOMINAL_PEAK_OSMOLALITY = 425.0
NOMINAL_MN_PPB = 40.0


class ScenarioRefused(ValueError):
    """A scenario input is physically impossible or outside the PAR (message names it)."""


@dataclass(frozen=True)
class Scenario:
    """Changes from the as-of time on; None keeps the batch's plan."""

    shift_day: float | None = None  # day of the temperature shift
    production_temp_c: float | None = None  # temperature after the shift
    ph: float | None = None  # pH set-point
    do_pct: float | None = None  # DO set-point, % air saturation
    feed_scale: float | None = None  # multiplier on the recipe feed rate
    glucose_target_g_l: float | None = None  # bolus-to glucose concentration
    harvest_day: float | None = None

    def changes(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Check:
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(scenario: Scenario, cal: CalibratedBatch, spec: CppSpec | None = None) -> Check:
    """Every limit the scenario breaks (refusals) or NOR it leaves (warnings)."""
    spec = spec or load_spec()
    u = cal.inputs
    as_of_day = cal.as_of_h / 24.0
    out = Check()

    def bounds(name: str, value: float, lo: float, hi: float, what: str) -> bool:
        if not (math.isfinite(value) and lo <= value <= hi):
            out.refusals.append(f"{name} {value:g} is outside {what} [{lo:g}, {hi:g}]")
            return False
        return True

    def cpp(name: str, value: float, tag: str, phase: str, physical: tuple[float, float]) -> None:
        if not bounds(name, value, *physical, "the physical limits"):
            return
        lim = spec.tags[tag].limits(phase)
        assert lim.par is not None and lim.nor is not None
        if bounds(name, value, *lim.par, f"the {tag} PAR ({phase}, spec v{spec.version})"):
            lo, hi = lim.nor
            if not lo <= value <= hi:
                out.warnings.append(
                    f"{name} {value:g} is outside the {tag} NOR ({phase}) [{lo:g}, {hi:g}]"
                )

    s = scenario
    if s.production_temp_c is not None:
        cpp(
            "production temperature",
            s.production_temp_c,
            "temperature_c",
            "production",
            TEMPERATURE_PHYSICAL,
        )
    if s.ph is not None:
        cpp("pH set-point", s.ph, "ph", "production", spec.tags["ph"].physical)
    if s.do_pct is not None:
        cpp(
            "DO set-point",
            s.do_pct,
            "dissolved_oxygen_pct",
            "production",
            spec.tags["dissolved_oxygen_pct"].physical,
        )
    if s.feed_scale is not None:
        pct = float(u.feed_lph[0]) * 24.0 / float(u.V0[0]) * 100.0
        bounds(
            "feed scale",
            s.feed_scale,
            0.0,
            MAX_FEED_PCT_FILL_PER_DAY / pct,
            f"the feed pump range (0 to {MAX_FEED_PCT_FILL_PER_DAY:g} % of fill per day)",
        )
    if s.glucose_target_g_l is not None:
        thr, stock = float(u.gc_threshold[0]), float(u.gc_stock[0])
        bounds(
            "glucose target",
            s.glucose_target_g_l,
            thr,
            min(stock, 100.0),
            "the range from the bolus threshold to the stock (or 100 g/L)",
        )
    harvest_day = s.harvest_day if s.harvest_day is not None else float(u.end_h[0]) / 24
    if s.harvest_day is not None:
        bounds(
            "harvest day",
            s.harvest_day,
            as_of_day,
            MAX_BATCH_DAYS,
            "the days from the as-of time to the longest batch",
        )
    if s.shift_day is not None:
        planned_shift_day = float(u.shift_h[0]) / 24
        if planned_shift_day < as_of_day and abs(s.shift_day - planned_shift_day) > 1e-9:
            out.refusals.append(
                f"shift day {s.shift_day:g}: the temperature shift already started on day "
                f"{planned_shift_day:.2f}, before the as-of day {as_of_day:.2f}"
            )
        else:
            bounds(
                "shift day",
                s.shift_day,
                as_of_day,
                harvest_day,
                "the days from the as-of time to harvest",
            )
    return out


def _inputs(cal: CalibratedBatch, s: Scenario) -> model.TwinInputs:
    u = cal.inputs
    kw: dict[str, float | np.ndarray] = {}
    if s.shift_day is not None:
        kw["shift_h"] = s.shift_day * 24.0
    if s.production_temp_c is not None:
        kw["T_prod"] = s.production_temp_c
    if s.ph is not None:
        kw["ph_sp"] = s.ph
    if s.do_pct is not None:
        kw["do_sp"] = s.do_pct
    if s.feed_scale is not None:
        kw["feed_lph"] = u.feed_lph * s.feed_scale
    if s.glucose_target_g_l is not None:
        kw["gc_bolus_to"] = s.glucose_target_g_l
    if s.harvest_day is not None:
        kw["end_h"] = s.harvest_day * 24.0
        kw["feed_end_h"] = np.minimum(u.feed_end_h, s.harvest_day * 24.0 - 2.0)
    return u.with_values(**kw) if kw else u


@dataclass
class Outcome:
    """One arm (baseline or scenario): per-member trajectories and harvest CQAs."""

    t_h: np.ndarray  # from inoculation to harvest (calibration history, then forecast)
    trajectories: dict[str, np.ndarray]  # name -> (times, members)
    cqas: dict[str, np.ndarray]  # name -> (members,)

    def summary(self) -> dict[str, dict[str, float]]:
        """Median and 90 % interval of each harvest CQA over the ensemble."""
        return {
            k: dict(
                zip(("p05", "median", "p95"), map(float, np.quantile(v, QUANTILES)), strict=True)
            )
            for k, v in self.cqas.items()
        }

    def bands(self, name: str) -> np.ndarray:
        """(3, times): 5 %, 50 % and 95 % of a trajectory over the ensemble."""
        return np.quantile(self.trajectories[name], QUANTILES, axis=1)


def in_spec_probability(o: Outcome, spec: CppSpec) -> dict[str, float]:
    """Share of the ensemble whose predicted CQA meets its release specification."""
    out = {}
    for name, v in o.cqas.items():
        lab = spec.lab.release.get(name)
        if lab is None or lab.spec is None:
            continue
        lo, hi = lab.spec
        ok = np.ones(len(v), bool)
        if lo is not None:
            ok &= v >= lo
        if hi is not None:
            ok &= v <= hi
        out[name] = float(ok.mean())
    return out


@dataclass
class WhatIfResult:
    batch_id: str
    as_of_h: float
    scenario: Scenario
    baseline: Outcome
    outcome: Outcome
    warnings: list[str]
    prior_only: bool
    baseline_in_spec: dict[str, float] = field(default_factory=dict)
    outcome_in_spec: dict[str, float] = field(default_factory=dict)

    def delta(self, cqa: str) -> dict[str, float]:
        """Paired scenario - baseline difference over the ensemble (median, 90 % interval)."""
        d = self.outcome.cqas[cqa] - self.baseline.cqas[cqa]
        return dict(
            zip(("p05", "median", "p95"), map(float, np.quantile(d, QUANTILES)), strict=True)
        )


def _outcome(cal: CalibratedBatch, u: model.TwinInputs) -> Outcome:
    end_h = math.ceil(float(u.end_h.max()) / model.DT_H) * model.DT_H
    fwd, _ = model.simulate(u, cal.state, max(end_h, cal.as_of_h), params=cal.params)
    hist = cal.history
    traj = {k: np.concatenate([hist[k][:-1], fwd[k]]) for k in (*model.STATE_NAMES, "t_h")}
    cqas = cqas_at_harvest(traj, u)
    t_h = traj.pop("t_h")
    return Outcome(t_h, traj, cqas)


def cqas_at_harvest(
    traj: dict[str, np.ndarray], u: model.TwinInputs, mn_ppb: float | np.ndarray = NOMINAL_MN_PPB
) -> dict[str, np.ndarray]:
    """Each member's CQAs at its own harvest (``u.end_h``) from its trajectory since
    inoculation (``traj`` as `model.simulate` returns it); adds viability and product mass
    to ``traj``. ``mn_ppb`` is the media lot's manganese (per member or one value); the
    release model's other untracked terms are held at their nominal values."""
    t_h = traj["t_h"]
    traj["viability_pct"] = 100.0 * traj["Xv"] / (traj["Xv"] + traj["Xd"])
    traj["product_kg"] = traj["P"] * traj["V"] / 1000.0
    k_end = np.minimum(
        np.round(u.end_h / model.DT_H).astype(int) - round(t_h[0] / model.DT_H), len(t_h) - 1
    )
    members = np.arange(u.n)
    at = {k: traj[k][k_end, members] for k in (*model.STATE_NAMES, "viability_pct", "product_kg")}
    upto = t_h[:, None] <= u.end_h[None, :]
    peak_a = np.where(upto, traj["A"], -np.inf).max(axis=0)
    peak_l = np.where(upto, traj["L"], -np.inf).max(axis=0)
    T = model.temperature_setpoint(u, t_h[:, None])
    prod = upto & (t_h[:, None] >= u.shift_h[None, :])
    mean_prod_T = np.where(
        prod.any(axis=0), (T * prod).sum(axis=0) / np.maximum(prod.sum(axis=0), 1), T.mean(axis=0)
    )
    max_T = np.where(upto, T, -np.inf).max(axis=0)
    dT = mean_prod_T - 33.0
    dead = 1.0 - at["viability_pct"] / 100.0
    aggregates = (
        1.1
        + 0.35 * np.maximum(dT, 0)
        + 0.09 * peak_a
        + 1.2 * dead
        + 0.004 * max(NOMINAL_PEAK_PCO2 - 60, 0)
        + 0.4 * np.maximum(max_T - 37.5, 0)
    )
    g0f = (
        36.0
        + 0.9 * peak_a
        + 1.6 * dT
        - 0.12 * (mn_ppb - 40.0)
        + 6.0 * dead
        + 0.02 * (NOMINAL_PEAK_OSMOLALITY - 400)
    )
    g2f = np.maximum(9.0 - 0.25 * peak_a - 0.4 * dT + 0.05 * (mn_ppb - 40.0), 1.0)
    afuc = 6.0 + 0.012 * (NOMINAL_PEAK_OSMOLALITY - 400) + 0.01 * (NOMINAL_PEAK_PCO2 - 80)
    duration_days = u.end_h / 24.0
    return {
        "titer_g_l": at["P"],
        "product_mass_kg": at["product_kg"],
        "harvest_volume_l": at["V"],
        "viability_pct": at["viability_pct"],
        "peak_lactate_g_l": peak_l,
        "peak_ammonia_mmol_l": peak_a,
        "aggregates_hmw_pct": aggregates,
        "g0f_pct": g0f,
        "g1f_pct": 100.0 - g0f - g2f - afuc - 4.0,
        "g2f_pct": g2f,
        "afucosylated_pct": np.broadcast_to(afuc, g0f.shape).copy(),
        "acidic_variants_pct": 17.0
        + 0.9 * (duration_days - 14)
        + 0.7 * dT
        + 0.2 * peak_a
        + 10.0 * dead,
        "hcp_ppm": 25.0 + 180.0 * dead**1.5,
        "purity_pct": 100.0 - aggregates - 0.68,
    }


def run_whatif(
    cal: CalibratedBatch, scenario: Scenario, spec: CppSpec | None = None
) -> WhatIfResult:
    """Baseline and scenario for every twin of ``cal``; refuses a scenario outside limits."""
    spec = spec or load_spec()
    c = check(scenario, cal, spec)
    if c.refusals:
        raise ScenarioRefused(
            f"scenario refused for batch {cal.batch_id}: " + "; ".join(c.refusals)
        )
    base = _outcome(cal, cal.inputs)
    changed = _outcome(cal, _inputs(cal, scenario))
    warnings = list(c.warnings)
    if cal.prior_only:
        warnings.append(cal.message)
    return WhatIfResult(
        cal.batch_id,
        cal.as_of_h,
        scenario,
        base,
        changed,
        warnings,
        cal.prior_only,
        in_spec_probability(base, spec),
        in_spec_probability(changed, spec),
    )


# ---------------------------------------------------------------- saved scenarios
SCENARIO_LAYER, SCENARIO_TABLE = "gold", "whatif_scenarios"


def twin_version() -> str:
    """Identifies the twin a scenario ran on: the fast model's source and kinetic defaults."""
    import hashlib
    import inspect

    from pharma_assets.twin.engine import KineticParams

    src = inspect.getsource(model) + repr(KineticParams())
    return "fast-twin-" + hashlib.sha256(src.encode()).hexdigest()[:12]


def scenario_row(res: WhatIfResult, user: str, purpose: str = "") -> dict[str, object]:
    """One row for gold/whatif_scenarios: who, when, inputs, outputs and the twin version."""
    import json
    import uuid
    from datetime import UTC, datetime

    return {
        "scenario_id": "WIF-" + uuid.uuid4().hex[:12],
        "batch_id": res.batch_id,
        "as_of_h": res.as_of_h,
        "created_by": user,
        "created_at": datetime.now(UTC),
        "purpose": purpose,
        "inputs_json": json.dumps(res.scenario.changes(), sort_keys=True),
        "baseline_json": json.dumps(res.baseline.summary(), sort_keys=True),
        "outcome_json": json.dumps(res.outcome.summary(), sort_keys=True),
        "delta_product_kg_median": res.delta("product_mass_kg")["median"],
        "warnings": "; ".join(res.warnings),
        "prior_only": res.prior_only,
        "twin_version": twin_version(),
    }


def save_scenario(lake: Lake, res: WhatIfResult, user: str, purpose: str = "") -> str:
    """Append the scenario to gold/whatif_scenarios; returns its id."""
    import polars as pl

    row = scenario_row(res, user, purpose)
    lake.append(SCENARIO_LAYER, SCENARIO_TABLE, pl.DataFrame([row]))
    return str(row["scenario_id"])
