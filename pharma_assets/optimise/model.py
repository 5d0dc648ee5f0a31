"""The twin's cell-culture kinetics with ideal control: the fast model behind calibration and
what-if.

`pharma_assets.twin.engine.Engine` integrates kinetics *and* the fast physics a control
system sees (oxygen transfer, CO2 stripping, the jacket, PI loops) with 60 s Euler steps:
about 20,000 steps for a 14-day batch, several seconds on a loaded machine whatever the
cohort size. Calibration needs dozens of such runs and a what-if must answer in under two
seconds, so this module keeps the engine's biology (the same equations and the same
`KineticParams`, see docs/process_model.md section 4) and replaces the controlled physics by
its set-points: temperature follows its set-point ramp, pH sits at its set-point, and DO is
the set-point or, early in the batch when the culture cannot pull it down at minimum
agitation, the quasi-steady value of the oxygen balance. Without the stiff gas and heat
dynamics, 15-minute Euler steps are accurate (the slowest biological time constant is
about 20 h), which makes a 14-day run about 80 times cheaper.

Every array is one element per ensemble member, so an ensemble of twins costs about one run.
The model is deterministic: the same inputs give the same trajectories bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from pharma_assets.twin.config import Recipe
from pharma_assets.twin.engine import KineticParams

DT_H = 0.25  # integration step, hours

STATE_NAMES = ("Xv", "Xd", "G", "Gln", "L", "A", "P", "V")


@dataclass
class TwinInputs:
    """Set-points, schedule and batch-specific multipliers; one element per member."""

    T_grow: np.ndarray
    T_prod: np.ndarray
    shift_h: np.ndarray
    ramp_h: np.ndarray
    ph_sp: np.ndarray
    do_sp: np.ndarray
    V0: np.ndarray
    feed_start_h: np.ndarray
    feed_end_h: np.ndarray
    feed_lph: np.ndarray  # recipe (commanded) feed flow, L/h
    feed_factor: np.ndarray  # delivered / commanded flow (pump wear), applied after history
    feed_G: np.ndarray
    feed_Gln: np.ndarray
    gc_threshold: np.ndarray
    gc_bolus_to: np.ndarray
    gc_stock: np.ndarray
    end_h: np.ndarray
    kla_min: np.ndarray  # kLa at minimum agitation and air only, 1/h
    c_sat: np.ndarray  # O2 at air saturation at vessel pressure, mmol/L
    mu_mult: np.ndarray  # growth multiplier (seed vitality x media lot)
    kd_mult: np.ndarray  # death multiplier
    qp_mult: np.ndarray  # specific-productivity multiplier (feed lot)

    @property
    def n(self) -> int:
        return len(self.end_h)

    def with_values(self, **kw: float | np.ndarray) -> TwinInputs:
        """A copy with some inputs replaced (scalars broadcast to every member)."""
        unknown = set(kw) - {f.name for f in fields(self)}
        if unknown:
            raise KeyError(f"unknown twin inputs {sorted(unknown)}")
        return replace(
            self,
            **{k: np.broadcast_to(np.asarray(v, float), (self.n,)).copy() for k, v in kw.items()},
        )

    def repeat(self, n: int) -> TwinInputs:
        """``n`` copies of a one-member input set."""
        if self.n != 1:
            raise ValueError(f"repeat needs a one-member input set, got {self.n} members")
        return TwinInputs(**{f.name: np.repeat(getattr(self, f.name), n) for f in fields(self)})


@dataclass
class TwinState:
    """The integrated state at time ``t_h``; one element per member."""

    t_h: float
    Xv: np.ndarray
    Xd: np.ndarray
    G: np.ndarray
    Gln: np.ndarray
    L: np.ndarray
    A: np.ndarray
    P: np.ndarray
    V: np.ndarray

    @property
    def n(self) -> int:
        return len(self.Xv)

    def copy(self) -> TwinState:
        return TwinState(self.t_h, *(getattr(self, s).copy() for s in STATE_NAMES))


def recipe_inputs(recipe: Recipe, n: int = 1, planned_end_h: float | None = None) -> TwinInputs:
    """Nominal inputs of ``recipe`` for ``n`` members (multipliers 1)."""
    sp, ini, fd, gc = recipe.setpoints, recipe.initial, recipe.feed, recipe.glucose_control
    p = KineticParams()
    end_h = recipe.planned_duration_days * 24.0 if planned_end_h is None else planned_end_h
    pabs = 1.013 + sp.headspace_pressure_bar
    row = {
        "T_grow": sp.temperature_c,
        "T_prod": sp.production_temperature_c,
        "shift_h": sp.temperature_shift_day * 24.0,
        "ramp_h": sp.temperature_ramp_h,
        "ph_sp": sp.ph,
        "do_sp": sp.dissolved_oxygen_pct,
        "V0": ini.fill_volume_l,
        "feed_start_h": fd.start_day * 24.0,
        "feed_end_h": min(fd.end_day * 24.0, end_h - 2.0),
        "feed_lph": fd.rate_pct_fill_per_day / 100.0 * ini.fill_volume_l / 24.0,
        "feed_factor": 1.0,
        "feed_G": fd.glucose_g_l,
        "feed_Gln": fd.glutamine_mmol_l,
        "gc_threshold": gc.threshold_g_l,
        "gc_bolus_to": gc.bolus_to_g_l,
        "gc_stock": gc.stock_g_l,
        "end_h": end_h,
        "kla_min": p.kla0
        * (sp.agitation_rpm_min / 100.0) ** 1.5
        * math.sqrt(sp.air_flow_slpm / 40),
        "c_sat": p.c_sat_air * pabs / 1.013,
        "mu_mult": 1.0,
        "kd_mult": 1.0,
        "qp_mult": 1.0,
    }
    return TwinInputs(**{k: np.full(n, float(v)) for k, v in row.items()})


def initial_state(recipe: Recipe, n: int = 1, **values: float | np.ndarray) -> TwinState:
    """The recipe's initial charge (as the engine starts it); ``values`` override states."""
    ini = recipe.initial
    row: dict[str, float | np.ndarray] = {
        "Xv": ini.seed_density_e6_cells_ml,
        "G": ini.glucose_g_l,
        "Gln": ini.glutamine_mmol_l,
        "L": 0.1,
        "A": 0.5,
        "P": 0.0,
        "V": ini.fill_volume_l,
    }
    unknown = set(values) - set(STATE_NAMES)
    if unknown:
        raise KeyError(f"unknown states {sorted(unknown)}")
    row.update(values)
    arr = {k: np.broadcast_to(np.asarray(v, float), (n,)).copy() for k, v in row.items()}
    if "Xd" not in arr:
        arr["Xd"] = arr["Xv"] * 0.03  # viability 97 %, as the engine starts
    return TwinState(0.0, **arr)


def temperature_setpoint(u: TwinInputs, t: float | np.ndarray) -> np.ndarray:
    ramp = np.clip((t - u.shift_h) / u.ramp_h, 0.0, 1.0)
    return u.T_grow + (u.T_prod - u.T_grow) * ramp


def simulate(
    u: TwinInputs,
    s: TwinState,
    t_end_h: float,
    feed_hist_lph: np.ndarray | None = None,
    params: KineticParams | None = None,
    dt_h: float = DT_H,
) -> tuple[dict[str, np.ndarray], TwinState]:
    """Integrate from ``s.t_h`` to ``t_end_h``.

    Returns the trajectories (``t_h`` of shape (steps + 1,), every state of shape
    (steps + 1, members), first row the start state, last row the end state) and the end
    state. ``feed_hist_lph`` is the delivered feed flow observed in each elapsed hour
    (0, 1, ...): where given it replaces the recipe's feed, so past pump outages and wear are
    replayed as they happened. Glucose boluses follow the recipe's rule at every 24 h mark
    (after inoculation); a state at a 24 h mark already includes that mark's bolus, so a
    continuation from it does not add it again.
    """
    p = params or KineticParams()
    k0 = round(s.t_h / dt_h)
    if abs(k0 * dt_h - s.t_h) > 1e-9:
        raise ValueError(f"start time {s.t_h} h is not on the {dt_h} h step grid")
    n_steps = max(0, round(t_end_h / dt_h) - k0)
    steps_per_day = round(24 / dt_h)
    n_hist = 0 if feed_hist_lph is None else len(feed_hist_lph)
    Xv, Xd, G, Gln, L, A, P, V = (getattr(s, name).copy() for name in STATE_NAMES)
    rec: dict[str, np.ndarray] = {name: np.empty((n_steps + 1, u.n)) for name in STATE_NAMES}
    maximum, where = np.maximum, np.where
    evap = p.evaporation_l_h * u.V0 / 2000.0
    # everything that depends only on time and inputs, for all steps at once: (steps, members)
    t_all = ((k0 + np.arange(n_steps)) * dt_h)[:, None]
    T = temperature_setpoint(u, t_all)
    f_T = where(T <= 36.5, np.exp(-p.temp_growth_coeff * (36.5 - T)), np.exp(-0.5 * (T - 36.5)))
    f_met = np.exp(-0.1 * (36.5 - T))
    f_pH = np.exp(-(((u.ph_sp - 7.0) / 0.3) ** 2))
    mu_fac = p.mu_max * u.mu_mult * f_T * f_pH
    sq_met = np.sqrt(f_met)
    our_fac = p.q_o2 * (0.6 + 0.4 * f_met)
    qp_fac = p.q_p * u.qp_mult * (1.0 + p.qp_temp_gain * (36.5 - T)) * f_pH
    day = t_all / 24.0
    kd_fixed = u.kd_mult * (
        p.kd_min
        + p.kd_age * day * day
        + 0.02 * maximum(T - 38.0, 0.0)
        + 0.05 * maximum(abs(u.ph_sp - 7.0) - 0.3, 0.0)
    )
    feed = where(
        (t_all >= u.feed_start_h) & (t_all < u.feed_end_h), u.feed_lph * u.feed_factor, 0.0
    )
    n_seen = min(n_hist, n_steps)
    if n_seen:
        hours = np.floor(t_all[:, 0]).astype(int)
        seen = hours < n_hist
        feed[seen] = np.asarray(feed_hist_lph, float)[hours[seen]][:, None]
    o2_cap = u.kla_min * u.c_sat
    f_do = np.full(u.n, 40.0 / 43.0)
    for j in range(n_steps + 1):
        k = k0 + j
        if k % steps_per_day == 0 and j > 0:  # a state at t already holds t's bolus
            need = (u.gc_threshold > G) & (k * dt_h < u.end_h)
            vol = where(need, (u.gc_bolus_to - G) * V / (u.gc_stock - u.gc_bolus_to), 0.0)
            vol = maximum(vol, 0.0)
            G = (G * V + vol * u.gc_stock) / (V + vol)
            dil = V / (V + vol)
            Xv, Xd, Gln, L, A, P = Xv * dil, Xd * dil, Gln * dil, L * dil, A * dil, P * dil
            V = V + vol
        rec["Xv"][j], rec["Xd"][j], rec["G"][j], rec["Gln"][j] = Xv, Xd, G, Gln
        rec["L"][j], rec["A"][j], rec["P"][j], rec["V"][j] = L, A, P, V
        if j == n_steps:
            break
        F = feed[j]
        # DO: the set-point, or higher while minimum agitation already over-supplies O2
        DO = np.minimum(maximum(u.do_sp, 100.0 - 100.0 * our_fac[j] * Xv * f_do / o2_cap), 100.0)
        f_do = DO / (DO + 3.0)
        mu = (
            mu_fac[j]
            * f_do
            * G
            / (G + p.k_glc)
            * Gln
            / (Gln + p.k_gln)
            / ((1.0 + L / p.ki_lac) * (1.0 + A / p.ki_amm))
            * maximum(1.0 - Xv / p.x_max, 0.0)
        )
        kd = kd_fixed[j] + u.kd_mult * (
            p.kd_amm * A / (A + p.k_d_amm)
            + p.kd_starve * 0.1 / (G + 0.1)
            + 0.0004 / (Gln + 0.1)
            + 0.02 * maximum((5.0 - DO) / 5.0, 0.0)
        )
        q_glc = (p.q_glc_m + p.y_glc_mu * mu) * sq_met[j]
        s_shift = mu / (mu + p.mu_shift)
        q_lac = p.y_lac_glc * q_glc * s_shift * G / (G + 0.05) - p.q_lac_c * (1.0 - s_shift) * L / (
            L + 0.5
        )
        q_gln = (p.q_gln_m + p.y_gln_mu * mu) * Gln / (Gln + 0.3)
        h = dt_h
        hD = h * F / V
        hX = h * Xv
        Xv_new = maximum(Xv + (h * (mu - kd) - hD) * Xv, 1e-6)
        Xd = maximum(Xd + kd * hX - (h * p.k_lysis + hD) * Xd, 0.0)
        G = maximum(G - q_glc * hX + hD * (u.feed_G - G), 0.0)
        L = maximum(L + q_lac * hX - hD * L, 0.0)
        Gln_new = maximum(Gln - q_gln * hX - h * p.k_gln_deg * Gln + hD * (u.feed_Gln - Gln), 0.0)
        A = maximum(
            A + (p.y_amm_gln * q_gln + p.q_amm_aa) * hX + h * p.k_gln_deg * Gln - hD * A, 0.0
        )
        P = maximum(P + qp_fac[j] * hX - hD * P, 0.0)
        Xv, Gln = Xv_new, Gln_new
        V = V + h * (F - evap)
    rec["t_h"] = (k0 + np.arange(n_steps + 1)) * dt_h
    end = TwinState((k0 + n_steps) * dt_h, Xv, Xd, G, Gln, L, A, P, V)
    return rec, end
