"""The vectorised fed-batch CHO bioreactor engine.

One `Engine` integrates a cohort of batches side by side: every state variable is a numpy
vector with one element per batch, so 100 batches cost little more than one. The model is
a mechanistic, unstructured, unsegregated fed-batch CHO model (Monod growth with lactate
and ammonia inhibition, death, lysis, a lactate metabolic shift, Luedeking-Piret style
product formation enhanced by the temperature shift) coupled to the physics the control
system sees: oxygen transfer and uptake, CO2 production and stripping, the bicarbonate
buffer (pH), and a jacketed vessel heat balance. PID loops close the temperature, pH
(CO2 sparge / base dead-band) and DO (agitation then O2 cascade) loops on the *measured*
values, so probe bias, drift and failure act on the process the way they do in a plant.

Equations, parameter values and their sources are in docs/process_model.md. Time is in
hours, concentrations in g/L (glucose, lactate, titer) or mmol/L (glutamine, ammonia,
alkalinity, dissolved gases), cells in 1e6 cells/mL.

The engine is resumable: `Engine.snapshot(i)` returns the full state of batch ``i`` and
`Engine.from_snapshot` continues it, possibly with changed set-points (what-if mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

INF = np.inf


@dataclass(frozen=True)
class KineticParams:
    """Kinetic and physical constants of the model (see docs/process_model.md)."""

    mu_max: float = 0.055  # 1/h at 36.5 C, before limitations
    x_max: float = 45.0  # 1e6 cells/mL, density limitation of the logistic term
    k_glc: float = 0.3  # g/L, Monod constant glucose
    k_gln: float = 0.15  # mmol/L, Monod constant glutamine
    ki_lac: float = 5.0  # g/L, lactate inhibition
    ki_amm: float = 12.0  # mmol/L, ammonia inhibition
    temp_growth_coeff: float = 0.28  # 1/K, growth loss per K below 36.5 C
    kd_min: float = 0.0012  # 1/h, basal death
    kd_amm: float = 0.006  # 1/h, ammonia-induced death (max)
    k_d_amm: float = 20.0  # mmol/L
    kd_age: float = 5.5e-5  # 1/h per day^2, culture-age death
    kd_starve: float = 0.02  # 1/h at zero glucose
    k_lysis: float = 0.030  # 1/h, dead-cell lysis
    q_glc_m: float = 0.0068  # g/L/h per 1e6 cells/mL, maintenance uptake
    y_glc_mu: float = 0.25  # g/L per 1e6 cells/mL per (1/h) growth uptake
    y_lac_glc: float = 0.48  # g lactate / g glucose in glycolytic phase
    mu_shift: float = 0.008  # 1/h, growth rate at which the lactate shift is half-way
    q_lac_c: float = 0.008  # g/L/h per 1e6 cells/mL, max lactate consumption
    q_gln_m: float = 0.0012  # mmol/L/h per 1e6 cells/mL
    y_gln_mu: float = 0.10
    k_gln_deg: float = 0.0015  # 1/h, spontaneous glutamine degradation
    y_amm_gln: float = 0.6  # mol NH3 / mol Gln
    q_amm_aa: float = 0.0003  # mmol/L/h per 1e6 cells/mL, other amino-acid catabolism
    q_p: float = 0.00085  # g/L/h per 1e6 cells/mL (about 20 pg/cell/day) at 36.5 C
    qp_temp_gain: float = 0.15  # relative increase of q_p per K below 36.5 C
    q_o2: float = 0.12  # mmol/L/h per 1e6 cells/mL (0.12 pmol/cell/h)
    rq: float = 0.95  # respiratory quotient
    c_sat_air: float = 0.21  # mmol/L O2 at air saturation, 1 atm, 36.5 C
    alpha_co2: float = 0.0307  # mmol/L per mmHg CO2
    pka_app: float = 6.1  # apparent pKa of the CO2/bicarbonate pair
    kla0: float = 7.0  # 1/h at 100 rpm and 40 slpm
    strip_eff: float = 0.8  # approach of bubbles to CO2 equilibrium
    heat_o2: float = 0.46  # kJ per mmol O2 consumed
    ua_jacket: float = 2880.0  # kJ/h/K (0.8 kW/K)
    ua_ambient: float = 180.0  # kJ/h/K
    tau_jacket: float = 0.15  # h
    base_meq_per_ml: float = 2.0  # 1 M Na2CO3
    base_max_ml_h: float = 3000.0
    evaporation_l_h: float = 0.02
    contaminant_mu: float = 0.8  # 1/h (doubling about 52 min)
    contaminant_o2: float = 25.0  # mmol/L/h at full contaminant load
    contaminant_glc: float = 2.0  # g/L/h at full load
    contaminant_acid: float = 6.0  # mmol/L/h of organic acids at full load


# Each recorded trajectory: name -> description. Measured (m_) values are what probes report.
RECORDED = (
    "T_m",
    "pH_m",
    "DO_m",
    "rpm",
    "air",
    "o2",
    "co2",
    "feed_lph",
    "feed_cmd_lph",
    "base_ml",
    "V",
    "OUR",
    "CER",
    "strip",
    "Xv",
    "Xd",
    "G",
    "Gln",
    "L",
    "A",
    "P",
    "DO",
    "pH",
    "T",
    "Tj",
    "pco2",
    "osm",
    "B",
    "Qgas",
)


# True state trajectories kept as ground truth (hourly) and for release-CQA summaries.
TRUTH_VARIABLES = (
    "Xv",
    "Xd",
    "G",
    "Gln",
    "L",
    "A",
    "P",
    "V",
    "DO",
    "pH",
    "T",
    "pco2",
    "osm",
    "B",
    "OUR",
)


@dataclass
class BatchInputs:
    """Per-batch inputs of a cohort: one numpy element per batch (see `plant.plan_history`)."""

    # recipe set-points
    T_grow: np.ndarray
    T_prod: np.ndarray
    shift_h: np.ndarray
    ramp_h: np.ndarray
    ph_sp: np.ndarray
    ph_db: np.ndarray
    do_sp: np.ndarray
    rpm_min: np.ndarray
    rpm_max: np.ndarray
    air: np.ndarray
    o2_max: np.ndarray
    co2_max: np.ndarray
    p_gauge: np.ndarray
    # initial charge
    V0: np.ndarray
    Xv0: np.ndarray
    G0: np.ndarray
    Gln0: np.ndarray
    alk0: np.ndarray
    osm0: np.ndarray
    # feed and glucose control
    feed_start_h: np.ndarray
    feed_end_h: np.ndarray
    feed_lph: np.ndarray
    feed_G: np.ndarray
    feed_Gln: np.ndarray
    gc_threshold: np.ndarray
    gc_bolus_to: np.ndarray
    gc_stock: np.ndarray
    # raw-material and equipment condition
    mu_lot: np.ndarray
    qp_lot: np.ndarray
    kla_factor: np.ndarray
    T_amb: np.ndarray
    hour_of_day0: np.ndarray
    T_bias: np.ndarray
    ph_bias: np.ndarray
    ph_drift_h: np.ndarray  # normal probe drift, pH units per hour since calibration
    do_fouling: np.ndarray  # fractional loss of DO probe sensitivity
    bearing_run_h0: np.ndarray
    bearing_life_h: np.ndarray
    pump_run_h0: np.ndarray
    pump_life_h: np.ndarray
    vib_base: np.ndarray
    # motor degradations (bearing, winding of the agitator and feed-pump motors): the P
    # point, growth time constant and failure/replacement time, hours after inoculation
    agt_brg_p_h: np.ndarray
    agt_brg_tau_h: np.ndarray
    agt_brg_f_h: np.ndarray
    agt_wdg_p_h: np.ndarray
    agt_wdg_tau_h: np.ndarray
    agt_wdg_f_h: np.ndarray
    fp_brg_p_h: np.ndarray
    fp_brg_tau_h: np.ndarray
    fp_brg_f_h: np.ndarray
    fp_wdg_p_h: np.ndarray
    fp_wdg_tau_h: np.ndarray
    fp_wdg_f_h: np.ndarray
    agt_imb_base: np.ndarray  # healthy phase-current unbalance from the supply, %
    fp_imb_base: np.ndarray
    # faults: onset hours after inoculation (inf = none)
    contam_onset_h: np.ndarray
    ph_drift_fault_onset_h: np.ndarray
    ph_drift_fault_end_h: np.ndarray
    ph_drift_fault_rate_h: np.ndarray
    do_fail_onset_h: np.ndarray
    do_fail_end_h: np.ndarray
    pump_fail_onset_h: np.ndarray
    pump_fail_end_h: np.ndarray
    chiller_onset_h: np.ndarray
    chiller_end_h: np.ndarray
    agitator_fail_h: np.ndarray
    end_h: np.ndarray  # harvest or abort

    @property
    def n(self) -> int:
        return len(self.end_h)

    def take(self, idx: np.ndarray | list[int]) -> BatchInputs:
        return BatchInputs(**{f.name: np.asarray(getattr(self, f.name))[idx] for f in fields(self)})

    def with_values(self, **kw: float | np.ndarray) -> BatchInputs:
        """A copy with some inputs replaced (scalars broadcast to every batch)."""
        unknown = set(kw) - {f.name for f in fields(self)}
        if unknown:
            raise KeyError(f"unknown batch inputs {sorted(unknown)}")
        return replace(
            self,
            **{k: np.broadcast_to(np.asarray(v, float), (self.n,)).copy() for k, v in kw.items()},
        )

    @staticmethod
    def concat(parts: list[BatchInputs]) -> BatchInputs:
        return BatchInputs(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in fields(BatchInputs)
            }
        )


@dataclass
class EngineState:
    """Integrated state and controller memory; one element per batch."""

    k: int  # step index (elapsed time = k * dt_h)
    Xv: np.ndarray
    Xd: np.ndarray
    G: np.ndarray
    Gln: np.ndarray
    L: np.ndarray
    A: np.ndarray
    P: np.ndarray
    V: np.ndarray
    C: np.ndarray  # dissolved O2, mmol/L
    pco2: np.ndarray  # mmHg
    alk: np.ndarray  # mmol/L bicarbonate-equivalent alkalinity
    osm_base: np.ndarray  # mOsm/kg of everything not tracked explicitly
    T: np.ndarray
    Tj: np.ndarray
    B: np.ndarray  # contaminant load (0..1)
    base_ml: np.ndarray
    feed_l: np.ndarray
    bolus_l: np.ndarray
    glc_used: np.ndarray  # g of glucose consumed (cells and contaminant), for mass balances
    i_T: np.ndarray
    i_do: np.ndarray
    i_co2: np.ndarray
    i_base: np.ndarray

    def take(self, idx: np.ndarray | list[int]) -> EngineState:
        kw: dict[str, Any] = {"k": self.k}
        for f in fields(self):
            if f.name != "k":
                kw[f.name] = np.asarray(getattr(self, f.name))[idx].copy()
        return EngineState(**kw)


@dataclass
class Snapshot:
    """Everything needed to continue one batch: its inputs and state at step ``state.k``."""

    inputs: BatchInputs
    state: EngineState
    dt_h: float
    params: KineticParams = field(default_factory=KineticParams)


class Engine:
    """Integrates a cohort of batches with explicit Euler steps of ``dt_h`` hours."""

    def __init__(
        self,
        inputs: BatchInputs,
        dt_h: float = 1 / 60,
        seed: int = 0,
        params: KineticParams | None = None,
        state: EngineState | None = None,
    ) -> None:
        if not 0 < dt_h <= 1 / 60 + 1e-12:
            raise ValueError(f"dt_h must be in (0, 1/60] hours (at most 60 s), got {dt_h}")
        self.inputs = inputs
        self.dt_h = dt_h
        self.p = params or KineticParams()
        self.rng = np.random.default_rng(seed)
        self.state = state or self._initial_state()

    # ------------------------------------------------------------ set-up
    def _initial_state(self) -> EngineState:
        u, p = self.inputs, self.p
        n = u.n
        z = np.zeros(n)
        pabs = 1.013 + u.p_gauge
        # medium pre-equilibrated to the top of the pH band before inoculation
        pco2 = u.alk0 / (p.alpha_co2 * 10 ** (u.ph_sp + 0.5 * u.ph_db - p.pka_app))
        # jacket and integrator start at the steady state that balances ambient losses
        tj0 = u.T_grow + p.ua_ambient * (u.T_grow - u.T_amb) / p.ua_jacket
        return EngineState(
            k=0,
            Xv=u.Xv0.astype(float).copy(),
            Xd=u.Xv0 * 0.03,
            G=u.G0.astype(float).copy(),
            Gln=u.Gln0.astype(float).copy(),
            L=np.full(n, 0.1),
            A=np.full(n, 0.5),
            P=np.zeros(n),
            V=u.V0.astype(float).copy(),
            C=p.c_sat_air * pabs / 1.013 * 0.9,
            pco2=pco2,
            alk=u.alk0.astype(float).copy(),
            osm_base=u.osm0 - 5.55 * u.G0 - 0.1 * 11.1,
            T=u.T_grow.astype(float).copy(),
            Tj=tj0,
            B=z.copy(),
            base_ml=z.copy(),
            feed_l=z.copy(),
            bolus_l=z.copy(),
            glc_used=z.copy(),
            i_T=(tj0 - u.T_grow) / 6.0,
            i_do=z.copy(),
            i_co2=z.copy(),
            i_base=z.copy(),
        )

    def snapshot(self, i: int) -> Snapshot:
        """The full state of batch ``i`` now, for what-if continuation."""
        return Snapshot(self.inputs.take([i]), self.state.take([i]), self.dt_h, self.p)

    @classmethod
    def from_snapshot(cls, snap: Snapshot, seed: int = 0, **changes: float) -> Engine:
        """Continue a batch from a snapshot, optionally with changed inputs (set-points)."""
        inputs = snap.inputs.with_values(**changes) if changes else snap.inputs
        return cls(
            inputs, dt_h=snap.dt_h, seed=seed, params=snap.params, state=snap.state.take([0])
        )

    # ------------------------------------------------------------ integration
    def run(self, n_steps: int) -> dict[str, np.ndarray]:
        """Advance every batch ``n_steps`` steps; returns recorded trajectories (steps, batches)."""
        u, p, s, h = self.inputs, self.p, self.state, self.dt_h
        n = u.n
        rec = {name: np.empty((n_steps, n), dtype=np.float32) for name in RECORDED}
        steps_per_day = round(24 / h)
        pabs = 1.013 + u.p_gauge
        c_sat = p.c_sat_air * pabs / 1.013
        fill_half = u.rpm_max - u.rpm_min
        vessel_frac = u.V0 / 2000.0
        noise = self.rng.standard_normal((n_steps, 3, n))
        sample_noise = self.rng.standard_normal((n_steps // steps_per_day + 2, n))
        minimum, maximum, where, exp, log10, sqrt = (
            np.minimum,
            np.maximum,
            np.where,
            np.exp,
            np.log10,
            np.sqrt,
        )
        Xv, Xd, G, Gln, L, A, P, V = s.Xv, s.Xd, s.G, s.Gln, s.L, s.A, s.P, s.V
        C, pco2, alk, osm_base, T, Tj, B = s.C, s.pco2, s.alk, s.osm_base, s.T, s.Tj, s.B
        base_ml, feed_l, bolus_l, glc_used = s.base_ml, s.feed_l, s.bolus_l, s.glc_used
        i_T, i_do, i_co2, i_base = s.i_T, s.i_do, s.i_co2, s.i_base
        k0 = s.k
        for j in range(n_steps):
            k = k0 + j
            t = k * h
            # ---------------- schedule and equipment state
            ramp = minimum(maximum((t - u.shift_h) / u.ramp_h, 0.0), 1.0)
            T_sp = u.T_grow + (u.T_prod - u.T_grow) * ramp
            dT_sp = where(
                (t >= u.shift_h) & (t < u.shift_h + u.ramp_h), (u.T_prod - u.T_grow) / u.ramp_h, 0.0
            )
            pump_failed = (t >= u.pump_fail_onset_h) & (t < u.pump_fail_end_h)
            feed_cmd = where((t >= u.feed_start_h) & (t < u.feed_end_h), u.feed_lph, 0.0)
            pump_wear = (u.pump_run_h0 + t) / u.pump_life_h
            F = where(pump_failed, 0.0, feed_cmd * (1.0 - 0.12 * minimum(pump_wear, 1.0) ** 2))
            agit_ok = t < u.agitator_fail_h
            # ---------------- measurements (what the controllers see)
            pH = p.pka_app + log10(maximum(alk, 0.3) / (p.alpha_co2 * pco2))
            DO = C / c_sat * 100.0
            T_m = T + u.T_bias + 0.01 * noise[j, 0]
            drift = u.ph_drift_h * t + where(
                (t >= u.ph_drift_fault_onset_h) & (t < u.ph_drift_fault_end_h),
                u.ph_drift_fault_rate_h * maximum(t - u.ph_drift_fault_onset_h, 0.0),
                0.0,
            )
            pH_m = pH + u.ph_bias + drift + 0.004 * noise[j, 1]
            DO_m = where(
                (t >= u.do_fail_onset_h) & (t < u.do_fail_end_h),
                maximum(0.8 + 0.3 * noise[j, 2], 0.0),
                DO * (1.0 - u.do_fouling) + 0.4 * noise[j, 2],
            )
            # ---------------- daily sample and glucose bolus
            if k % steps_per_day == 0 and k > 0:
                g_meas = G * (1.0 + 0.03 * sample_noise[k // steps_per_day - k0 // steps_per_day])
                need = (g_meas < u.gc_threshold) & (t < u.end_h)
                vol = where(need, (u.gc_bolus_to - g_meas) * V / (u.gc_stock - u.gc_bolus_to), 0.0)
                vol = maximum(vol, 0.0)
                G = (G * V + vol * u.gc_stock) / (V + vol)
                dil = V / (V + vol)
                Xv, Xd, Gln, L, A, P, alk, B = (
                    Xv * dil,
                    Xd * dil,
                    Gln * dil,
                    L * dil,
                    A * dil,
                    P * dil,
                    alk * dil,
                    B * dil,
                )
                V = V + vol
                bolus_l = bolus_l + vol
            # ---------------- controllers
            # temperature: PI on the jacket supply temperature with set-point feed-forward
            e_T = T_sp - T_m
            tj_cmd = T_sp + 6.0 * e_T + 6.0 * i_T + dT_sp * V * 4.18 / p.ua_jacket
            i_T = where((tj_cmd > 5.0) & (tj_cmd < 45.0), i_T + e_T * h, i_T)
            tj_cmd = minimum(maximum(tj_cmd, 5.0), 45.0)
            chiller_bad = (t >= u.chiller_onset_h) & (t < u.chiller_end_h)
            tj_cmd = where(chiller_bad, maximum(tj_cmd, minimum(u.T_grow + 2.5, T + 3.0)), tj_cmd)
            # DO: PI cascade, output 0..100 agitation then 100..200 oxygen
            e_do = u.do_sp - DO_m
            u_do = 0.6 * e_do + 2.0 * i_do
            i_do = where(
                ((u_do > 0) | (e_do > 0)) & ((u_do < 200) | (e_do < 0)), i_do + e_do * h, i_do
            )
            u_do = minimum(maximum(u_do, 0.0), 200.0)
            rpm = where(agit_ok, u.rpm_min + fill_half * minimum(u_do, 100.0) / 100.0, 0.0)
            o2 = u.o2_max * maximum(u_do - 100.0, 0.0) / 100.0
            # pH: dead-band; CO2 sparge above the band, base below it
            e_hi = pH_m - (u.ph_sp + u.ph_db * 0.6)
            i_co2 = minimum(maximum(i_co2 + e_hi * h, 0.0), u.co2_max / 40.0)
            co2 = minimum(maximum(60.0 * e_hi + 40.0 * i_co2, 0.0), u.co2_max)
            e_lo = (u.ph_sp - u.ph_db * 0.6) - pH_m
            i_base = minimum(maximum(i_base + e_lo * h, 0.0), p.base_max_ml_h / 8000.0)
            base_rate = minimum(maximum(8000.0 * e_lo + 8000.0 * i_base, 0.0), p.base_max_ml_h)
            # ---------------- gas transfer
            Qgas = u.air + o2 + co2
            kla = where(
                agit_ok,
                p.kla0 * u.kla_factor * (rpm / 100.0) ** 1.5 * sqrt(Qgas / 40.0),
                0.4 * u.kla_factor,
            )
            y_o2 = (0.2095 * u.air + o2) / Qgas
            c_star = c_sat * y_o2 / 0.2095
            # ---------------- kinetics
            f_T = where(T <= 36.5, exp(-p.temp_growth_coeff * (36.5 - T)), exp(-0.5 * (T - 36.5)))
            f_met = exp(-0.1 * (36.5 - T))
            f_pH = exp(-(((pH - 7.0) / 0.3) ** 2))
            f_DO = DO / (DO + 3.0)
            mu = (
                p.mu_max
                * u.mu_lot
                * f_T
                * f_pH
                * f_DO
                * G
                / (G + p.k_glc)
                * Gln
                / (Gln + p.k_gln)
                / (1.0 + L / p.ki_lac)
                / (1.0 + A / p.ki_amm)
                * maximum(1.0 - Xv / p.x_max, 0.0)
            )
            day = t / 24.0
            kd = (
                p.kd_min
                + p.kd_amm * A / (A + p.k_d_amm)
                + p.kd_age * day * day
                + p.kd_starve * 0.1 / (G + 0.1)
                + 0.004 * 0.1 / (Gln + 0.1)
                + 0.02 * maximum(T - 38.0, 0.0)
                + 0.02 * maximum((5.0 - DO) / 5.0, 0.0)
                + 0.06 * B / (B + 0.1)
                + 0.05 * maximum(abs(pH - 7.0) - 0.3, 0.0)
            )
            q_glc = (p.q_glc_m + p.y_glc_mu * mu) * sqrt(f_met)
            s_shift = mu / (mu + p.mu_shift)
            q_lac = p.y_lac_glc * q_glc * s_shift * G / (G + 0.05) - p.q_lac_c * (
                1.0 - s_shift
            ) * L / (L + 0.5)
            q_gln = (p.q_gln_m + p.y_gln_mu * mu) * Gln / (Gln + 0.3)
            q_p = p.q_p * u.qp_lot * (1.0 + p.qp_temp_gain * (36.5 - T)) * f_pH
            our_cells = p.q_o2 * Xv * (0.6 + 0.4 * f_met) * f_DO
            our = our_cells + p.contaminant_o2 * B * C / (C + 0.01)
            otr = kla * (c_star - C)
            strip = (
                p.strip_eff
                * (Qgas * 60.0 / 22.414 / V)
                * 1000.0
                * (pco2 - 760.0 * pabs * co2 / Qgas)
                / (760.0 * pabs)
            )
            cer = p.rq * our + 1.5 * p.contaminant_o2 * B
            # ---------------- balances
            F_base_l = base_rate / 1000.0
            F_in = F + F_base_l
            D = F_in / V
            b_growth = p.contaminant_mu * B * G / (G + 0.2) * maximum(1.0 - B, 0.0)
            dXv = (mu - kd) * Xv - D * Xv
            dXd = kd * Xv - p.k_lysis * Xd - D * Xd
            glc_uptake = q_glc * Xv + p.contaminant_glc * B * G / (G + 0.2)
            dG = -glc_uptake + F * u.feed_G / V - D * G
            dL = q_lac * Xv - D * L
            dGln = -q_gln * Xv - p.k_gln_deg * Gln + F * u.feed_Gln / V - D * Gln
            dA = (p.y_amm_gln * q_gln + p.q_amm_aa) * Xv + p.k_gln_deg * Gln - D * A
            dP = q_p * Xv - D * P
            dC = otr - our
            dpco2 = (cer - strip) / p.alpha_co2
            dalk = (
                base_rate * p.base_meq_per_ml / V
                - 11.1 * q_lac * Xv
                + (p.y_amm_gln * q_gln + p.q_amm_aa) * Xv * 0.5
                - p.contaminant_acid * B
                + F * 10.0 / V
                - D * alk
            )
            dosm = (
                F * (700.0 - osm_base) / V
                + F_base_l * (1.5 * p.base_meq_per_ml * 1000.0 - osm_base) / V
            )
            T_amb = u.T_amb + 2.0 * np.sin(2 * math.pi * (u.hour_of_day0 + t) / 24.0)
            q_heat = (
                p.ua_jacket * (Tj - T)
                + p.heat_o2 * our * V
                + 0.3 * (rpm / 120.0) ** 3 * 3600.0
                - p.ua_ambient * (T - T_amb)
            )
            dT = q_heat / (V * 4.18)
            dTj = (tj_cmd - Tj) / p.tau_jacket
            # ---------------- record (values at the start of the step)
            r = rec
            r["T_m"][j] = T_m
            r["pH_m"][j] = pH_m
            r["DO_m"][j] = DO_m
            r["rpm"][j] = rpm
            r["air"][j] = u.air
            r["o2"][j] = o2
            r["co2"][j] = co2
            r["feed_lph"][j] = F
            r["feed_cmd_lph"][j] = where(pump_failed, 0.0, feed_cmd)
            r["base_ml"][j] = base_ml
            r["V"][j] = V
            r["OUR"][j] = our
            r["CER"][j] = cer
            r["strip"][j] = strip
            r["Xv"][j] = Xv
            r["Xd"][j] = Xd
            r["G"][j] = G
            r["Gln"][j] = Gln
            r["L"][j] = L
            r["A"][j] = A
            r["P"][j] = P
            r["DO"][j] = DO
            r["pH"][j] = pH
            r["T"][j] = T
            r["Tj"][j] = Tj
            r["pco2"][j] = pco2
            r["osm"][j] = osm_base + 5.55 * G + 11.1 * L + A
            r["B"][j] = B
            r["Qgas"][j] = Qgas
            # ---------------- Euler update
            Xv = maximum(Xv + h * dXv, 1e-6)
            Xd = maximum(Xd + h * dXd, 0.0)
            glc_used = glc_used + h * minimum(glc_uptake, G / h + F * u.feed_G / V) * V
            G = maximum(G + h * dG, 0.0)
            L = maximum(L + h * dL, 0.0)
            Gln = maximum(Gln + h * dGln, 0.0)
            A = maximum(A + h * dA, 0.0)
            P = maximum(P + h * dP, 0.0)
            C = minimum(maximum(C + h * dC, 0.0), c_star.clip(min=c_sat) * 1.5)
            pco2 = maximum(pco2 + h * dpco2, 1.0)
            alk = alk + h * dalk
            osm_base = osm_base + h * dosm
            T = T + h * dT
            Tj = Tj + h * dTj
            B = where(t >= u.contam_onset_h, maximum(B, 1e-4) + h * b_growth, 0.0)
            V = V + h * (F_in - p.evaporation_l_h * vessel_frac)
            base_ml = base_ml + h * base_rate
            feed_l = feed_l + h * F
        self.state = EngineState(
            k=k0 + n_steps,
            Xv=Xv,
            Xd=Xd,
            G=G,
            Gln=Gln,
            L=L,
            A=A,
            P=P,
            V=V,
            C=C,
            pco2=pco2,
            alk=alk,
            osm_base=osm_base,
            T=T,
            Tj=Tj,
            B=B,
            base_ml=base_ml,
            feed_l=feed_l,
            bolus_l=bolus_l,
            glc_used=glc_used,
            i_T=i_T,
            i_do=i_do,
            i_co2=i_co2,
            i_base=i_base,
        )
        return rec
