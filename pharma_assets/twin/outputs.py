"""From engine trajectories to what a plant's systems record.

- `telemetry_signals`: the historian tags (probe readings with noise, bias and failure
  modes; equipment condition signals from the wear state).
- `lab_samples`: daily in-process LIMS samples with assay error.
- `release_assays`: release CQAs at harvest, causally linked to the batch's process history
  (temperature and ammonia raise aggregates and lower galactosylation; manganese in the
  media lot raises galactosylation; contamination raises bioburden and endotoxin).
"""

from __future__ import annotations

import numpy as np

from pharma_assets.process.gas import MOLAR_VOLUME_L, Y_O2_AIR

from .engine import BatchInputs


def equipment_condition(u: BatchInputs, t_h: np.ndarray) -> dict[str, np.ndarray]:
    """Bearing and pump wear fractions and hours to failure at elapsed times ``t_h``."""
    t = t_h[:, None]
    bearing_run = u.bearing_run_h0 + t
    pump_run = u.pump_run_h0 + t
    return {
        "bearing_wear": bearing_run / u.bearing_life_h,
        "bearing_remaining_h": u.bearing_life_h - bearing_run,
        "pump_wear": np.minimum(pump_run / u.pump_life_h, 1.0),
    }


#: degradation growth capped at this multiple of its size at the P point
MAX_DEGRADATION = 40.0


def degradation(u: BatchInputs, key: str, t: np.ndarray) -> np.ndarray:
    """Size of one motor degradation (``agt_brg``, ``agt_wdg``, ``fp_brg``, ``fp_wdg``) at
    elapsed hours ``t`` (steps, 1), in multiples of its size at the P point: zero before P,
    then exponential growth exp((t - P) / tau) until the part fails or is replaced (the
    exponential degradation model of bearing vibration, docs/process_model.md)."""
    p = getattr(u, f"{key}_p_h")
    tau = np.maximum(getattr(u, f"{key}_tau_h"), 1e-6)
    f = getattr(u, f"{key}_f_h")
    active = (t >= p) & (t < f)
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.exp(np.minimum(np.where(active, (t - p) / tau, -np.inf), np.log(MAX_DEGRADATION)))
    return np.where(active, x, 0.0)


def telemetry_signals(
    rec: dict[str, np.ndarray], u: BatchInputs, dt_h: float, k0: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Every historian tag as a (steps, batches) float64 array."""
    n_steps, n = rec["T"].shape
    t_h = (k0 + np.arange(n_steps)) * dt_h

    def noise(sd: float) -> np.ndarray:
        return sd * rng.standard_normal((n_steps, n))

    rpm = rec["rpm"].astype(float)
    running = rpm > 1.0
    cond = equipment_condition(u, t_h)
    w, pw = cond["bearing_wear"], cond["pump_wear"]
    t = t_h[:, None]
    agt_brg, agt_wdg = degradation(u, "agt_brg", t), degradation(u, "agt_wdg", t)
    fp_brg, fp_wdg = degradation(u, "fp_brg", t), degradation(u, "fp_wdg", t)
    load = (rpm / 140.0) ** 3 * rec["V"] / 2000.0  # shaft power ~ N^3 (affinity law)
    vib = np.where(
        running,
        u.vib_base * (rpm / 100.0) ** 1.3 + 0.5 * w**2 + 0.12 * agt_brg + np.abs(noise(0.08)),
        0.05 + np.abs(noise(0.02)),
    )
    # bearing temperature: friction heat; a bearing defect heats it only late (stage 4)
    bearing_temp = np.where(
        running, 24.0 + 14.0 * rpm / 120.0 + 2.0 * w + 0.03 * agt_brg**2, 22.0
    ) + noise(0.2)
    # no-load (magnetising) current rises with shorted turns; a defect adds friction torque
    motor_current = np.where(
        running,
        2.5 + 5.5 * load + 1.2 * w**2 + 0.05 * agt_brg + 0.04 * agt_wdg + noise(0.05),
        0.0,
    )
    feed_cmd = rec["feed_cmd_lph"].astype(float)
    pumping = feed_cmd > 0
    pump_current = np.where(
        pumping,
        0.6
        + 0.5 * feed_cmd / np.maximum(u.feed_lph, 1e-9)
        + 0.6 * pw**2
        + 0.012 * fp_wdg
        + noise(0.02),
        0.0,
    )
    # envelope acceleration in the bearing's defect-frequency band (gE): a speed-dependent
    # floor plus the defect's growth from the P point
    agt_defect = np.where(
        running, 0.2 * rpm / 100.0 + 0.15 * agt_brg + np.abs(noise(0.03)), np.abs(noise(0.005))
    )
    fp_defect = np.where(pumping, 0.1 + 0.15 * fp_brg + np.abs(noise(0.02)), np.abs(noise(0.005)))
    # stator winding: copper losses ~ I^2 heat it above ambient; shorted turns add local
    # heat and unbalance the phase currents (NEMA definition: max deviation from the mean)
    agt_winding = np.where(
        running, 32.0 + 28.0 * load + 0.6 * agt_wdg + 0.2 * agt_brg, 22.0
    ) + noise(0.3)
    fp_winding = np.where(
        pumping, 30.0 + 6.0 * feed_cmd / np.maximum(u.feed_lph, 1e-9) + 0.6 * fp_wdg, 22.0
    ) + noise(0.3)
    agt_imb = np.where(running, u.agt_imb_base + 0.4 * agt_wdg + np.abs(noise(0.12)), 0.0)
    fp_imb = np.where(pumping, u.fp_imb_base + 0.4 * fp_wdg + np.abs(noise(0.15)), 0.0)
    V = rec["V"].astype(float)
    our, strip = rec["OUR"].astype(float), rec["strip"].astype(float)
    air, o2, co2 = rec["air"].astype(float), rec["o2"].astype(float), rec["co2"].astype(float)
    q_in = (air + o2 + co2) * 60.0 / MOLAR_VOLUME_L  # mol/h
    # the twin's sparge air is O2 + inert gas only (no CO2: Y_CO2_AIR is not added here)
    o2_out = (Y_O2_AIR * air + o2) * 60.0 / MOLAR_VOLUME_L - our * V / 1000.0
    co2_out = co2 * 60.0 / MOLAR_VOLUME_L + strip * V / 1000.0
    total_out = q_in - our * V / 1000.0 + strip * V / 1000.0
    day = t_h[:, None] / 24.0
    sig = {
        "temperature_c": rec["T_m"].astype(float),
        "ph": rec["pH_m"].astype(float),
        "dissolved_oxygen_pct": np.clip(rec["DO_m"].astype(float), 0.0, None),
        "agitation_rpm": np.where(running, rpm + noise(0.3), 0.0),
        "headspace_pressure_bar": u.p_gauge + 0.0006 * (rec["Qgas"] - 40.0) + noise(0.002),
        "air_flow_slpm": np.clip(air * (1 + noise(0.004)), 0, None),
        "o2_flow_slpm": np.clip(o2 + noise(0.05) * (o2 > 0), 0, None),
        "co2_flow_slpm": np.clip(co2 + noise(0.03) * (co2 > 0), 0, None),
        "feed_rate_ml_h": np.clip(rec["feed_lph"] * 1000.0 * (1 + noise(0.01)), 0, None),
        "base_addition_ml": rec["base_ml"].astype(float),
        "volume_l": V + noise(1.5),
        "offgas_o2_pct": 100.0 * o2_out / total_out + noise(0.02),
        "offgas_co2_pct": np.clip(100.0 * co2_out / total_out + noise(0.02), 0, None),
        "capacitance_pf_cm": 1.1 * rec["Xv"] * (1.0 + 0.02 * day) + 0.3 * rec["B"] + noise(0.25),
        "agitator_vibration_mm_s": vib,
        "agitator_bearing_temp_c": bearing_temp,
        "agitator_motor_current_a": motor_current,
        "feed_pump_current_a": pump_current,
        "jacket_temperature_c": rec["Tj"] + noise(0.05),
        "dissolved_co2_mmhg": rec["pco2"] + noise(1.0),
        "agitator_bearing_defect_ge": agt_defect,
        "agitator_winding_temp_c": agt_winding,
        "agitator_current_imbalance_pct": agt_imb,
        "feed_pump_bearing_defect_ge": fp_defect,
        "feed_pump_winding_temp_c": fp_winding,
        "feed_pump_current_imbalance_pct": fp_imb,
    }
    return sig


# ---------------------------------------------------------------- LIMS

IN_PROCESS_ANALYTES = {
    # analyte: (uom, relative assay CV, absolute floor SD)
    "viable_cell_density_e6_cells_ml": ("1e6 cells/mL", 0.05, 0.02),
    "viability_pct": ("%", 0.0, 1.0),
    "glucose_g_l": ("g/L", 0.03, 0.02),
    "glutamine_mmol_l": ("mmol/L", 0.05, 0.03),
    "lactate_g_l": ("g/L", 0.04, 0.02),
    "ammonia_mmol_l": ("mmol/L", 0.05, 0.05),
    "osmolality_mosm_kg": ("mOsm/kg", 0.01, 1.0),
    "titer_g_l": ("g/L", 0.05, 0.01),
    "ph_offline": ("pH", 0.0, 0.01),
    "pco2_mmhg": ("mmHg", 0.03, 1.0),
}


def lab_samples(
    rec: dict[str, np.ndarray], k_idx: int, b: int, rng: np.random.Generator
) -> list[tuple[str, float, str]]:
    """In-process results (analyte, value, uom) for batch ``b`` at recorded step ``k_idx``."""
    xv, xd = float(rec["Xv"][k_idx, b]), float(rec["Xd"][k_idx, b])
    truth = {
        "viable_cell_density_e6_cells_ml": xv,
        "viability_pct": 100.0 * xv / (xv + xd),
        "glucose_g_l": float(rec["G"][k_idx, b]),
        "glutamine_mmol_l": float(rec["Gln"][k_idx, b]),
        "lactate_g_l": float(rec["L"][k_idx, b]),
        "ammonia_mmol_l": float(rec["A"][k_idx, b]),
        "osmolality_mosm_kg": float(rec["osm"][k_idx, b]),
        "titer_g_l": float(rec["P"][k_idx, b]),
        "ph_offline": float(rec["pH"][k_idx, b]),
        "pco2_mmhg": float(rec["pco2"][k_idx, b]),
    }
    out = []
    for analyte, (uom, cv, floor) in IN_PROCESS_ANALYTES.items():
        v = truth[analyte]
        v = v * (1 + cv * rng.standard_normal()) + floor * rng.standard_normal()
        if analyte == "viability_pct":
            v = min(v, 100.0)
        out.append((analyte, round(max(v, 0.0), 4), uom))
    return out


RELEASE_ASSAYS = {
    "titer_g_l": "g/L",
    "aggregates_hmw_pct": "%",
    "acidic_variants_pct": "%",
    "g0f_pct": "%",
    "g1f_pct": "%",
    "g2f_pct": "%",
    "afucosylated_pct": "%",
    "hcp_ppm": "ppm",
    "bioburden_cfu_ml": "CFU/mL",
    "endotoxin_eu_ml": "EU/mL",
    "purity_pct": "%",
}


def batch_history_summary(
    rec: dict[str, np.ndarray], u: BatchInputs, b: int, end_k: int, dt_h: float
) -> dict[str, float]:
    """Process-history features the release CQAs depend on (truth, not measurements)."""
    steps = max(end_k, 1)
    shift_k = min(int(u.shift_h[b] / dt_h), steps - 1)
    T = rec["T"][:steps, b]
    xv, xd = float(rec["Xv"][steps - 1, b]), float(rec["Xd"][steps - 1, b])
    pH = rec["pH"][:steps, b]
    return {
        "mean_production_temp_c": float(T[shift_k:].mean()) if steps > shift_k else float(T.mean()),
        "max_temp_c": float(T.max()),
        "peak_ammonia_mmol_l": float(rec["A"][:steps, b].max()),
        "final_viability": xv / (xv + xd),
        "final_titer_g_l": float(rec["P"][steps - 1, b]),
        "max_pco2_mmhg": float(rec["pco2"][:steps, b].max()),
        "hours_ph_outside_6_9_7_1": float(((pH < 6.9) | (pH > 7.1)).sum() * dt_h),
        "hours_low_do": float((rec["DO"][:steps, b] < 10).sum() * dt_h),
        "peak_contaminant": float(rec["B"][:steps, b].max()),
        "duration_days": steps * dt_h / 24.0,
        "peak_osmolality": float(rec["osm"][:steps, b].max()),
    }


def release_assays(
    h: dict[str, float], mn_ppb: float, completed: bool, rng: np.random.Generator
) -> list[tuple[str, float, str]]:
    """Release results at harvest. Aborted batches get only the investigation assays."""
    z = rng.standard_normal
    dT = h["mean_production_temp_c"] - 33.0
    amm = h["peak_ammonia_mmol_l"]
    dead = 1.0 - h["final_viability"]
    contaminated = h["peak_contaminant"] > 0.01
    aggregates = (
        1.1
        + 0.35 * max(dT, 0)
        + 0.09 * amm
        + 1.2 * dead
        + 0.004 * max(h["max_pco2_mmhg"] - 60, 0)
        + 0.15 * h["hours_ph_outside_6_9_7_1"] / 24
        + 0.4 * max(h["max_temp_c"] - 37.5, 0)
        + 0.08 * z()
    )
    g0f = (
        36.0
        + 0.9 * amm
        + 1.6 * dT
        - 0.12 * (mn_ppb - 40.0)
        + 6.0 * dead
        + 0.02 * (h["peak_osmolality"] - 400)
        + 0.8 * z()
    )
    g2f = max(9.0 - 0.25 * amm - 0.4 * dT + 0.05 * (mn_ppb - 40.0) + 0.3 * z(), 1.0)
    afuc = 6.0 + 0.012 * (h["peak_osmolality"] - 400) + 0.01 * (h["max_pco2_mmhg"] - 80) + 0.3 * z()
    other = 4.0 + 0.2 * z()
    g1f = 100.0 - g0f - g2f - afuc - other
    acidic = 17.0 + 0.9 * (h["duration_days"] - 14) + 0.7 * dT + 0.2 * amm + 10.0 * dead + 0.8 * z()
    hcp = 25.0 + 180.0 * dead**1.5 + 4.0 * z()
    if contaminated:
        bioburden = float(10 ** rng.uniform(3, 6))
        endotoxin = float(10 ** rng.uniform(0.7, 2.0))
    else:
        bioburden = float(rng.poisson(0.05))
        endotoxin = float(np.exp(rng.normal(np.log(0.08), 0.4)))
    titer = h["final_titer_g_l"] * (1 + 0.03 * z())
    purity = 100.0 - aggregates - (0.6 + 0.1 * abs(z()))
    vals = {
        "titer_g_l": titer,
        "aggregates_hmw_pct": aggregates,
        "acidic_variants_pct": acidic,
        "g0f_pct": g0f,
        "g1f_pct": g1f,
        "g2f_pct": g2f,
        "afucosylated_pct": afuc,
        "hcp_ppm": max(hcp, 1.0),
        "bioburden_cfu_ml": bioburden,
        "endotoxin_eu_ml": endotoxin,
        "purity_pct": purity,
    }
    keep = RELEASE_ASSAYS if completed else ("titer_g_l", "bioburden_cfu_ml", "endotoxin_eu_ml")
    return [(k, round(float(vals[k]), 4), RELEASE_ASSAYS[k]) for k in keep]
