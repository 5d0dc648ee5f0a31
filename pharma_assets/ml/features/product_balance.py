"""Product mass balance features: the titer a process engineer expects at harvest from the
in-process titer results and the viable biomass integral, with a specific productivity
that depends on the culture temperature.

Physics (any fed-batch CHO text, e.g. the IVCD method of Renard et al. 1988; the
productivity gain of a temperature shift: Yoon et al. 2003, Kumar et al. 2007): the
product mass in the broth grows with the integral of viable cells, ``d(P V)/dt = q_P X_v V``
(feeding dilutes the titer, not the mass), and a mild hypothermic shift raises ``q_P``.
Written with a ``q_P`` linear in temperature, ``q_P = q_1 + q_2 (T_ref - T)``, the product
mass at time ``t`` is linear in the two unknowns::

    M(t) = P(t) V(t) = q_1 J_1(t) + q_2 J_2(t)
    J_1(t) = int X V dt,   J_2(t) = int (T_ref - T) X V dt

with ``X`` the viable biomass seen by the capacitance probe (hourly mean, pF/cm), ``V`` the
broth volume (hourly last) and ``T`` the culture temperature (hourly mean), all telemetry
known by then. ``q_1, q_2`` are fitted per batch by weighted least squares through every
in-process titer result sampled by then (each multiplied by the volume at its sample;
weights for an assay whose error grows with the value: ``1 / ((P + P_0) V)^2``). Before the
temperature has moved, ``J_2`` is proportional to ``J_1`` and only one ``q`` is fitted. The
harvest estimate is ``M`` at the scoring time plus, for a batch still running, the
remaining days at the latest biomass, volume and temperature (expected duration from the
recipe's completed batches), divided by the latest volume.

Nothing here reads a release result or a simulator parameter: the two productivities are
fitted on each batch's own in-process data.
"""

from __future__ import annotations

import polars as pl

#: reference temperature of the linear q_P(T) basis (any value gives the same fit)
T_REF_C = 37.0
#: titer floor of the weights (g/L): early results near zero are not trusted infinitely
P0_G_L = 0.1
#: the two-parameter fit is used only when the temperature basis is not collinear
#: (1 - r^2 of J_1, J_2 above this) and at least this many results are known
MIN_RESULTS_2P = 4
MIN_DECORRELATION = 1e-4

#: the late-phase productivity: fitted through the origin over the latest results only
LATE_RESULTS = 8

BALANCE_FEATURES = (
    "bal_q_late",
    "titer_bal_late_harvest",
    "mass_bal_late_harvest_kg",
    "bal_q1",
    "bal_q2",
    "bal_fit_rel_rmse",
    "titer_bal_harvest",
    "mass_bal_harvest_kg",
    "titer_bal1_harvest",
    "mass_bal1_harvest_kg",
)


def product_balance_features(
    base: pl.DataFrame, h: pl.DataFrame, lab: pl.DataFrame, duration: pl.DataFrame
) -> pl.DataFrame:
    """``batch_id`` + :data:`BALANCE_FEATURES` from ``base`` (``batch_id``, ``elapsed_h``),
    ``h`` (hourly rows ending by the scoring time), ``lab`` (in-process results sampled by
    then) and ``duration`` (``batch_id``, ``expected_duration_h``)."""
    _hh, last, tit = balance_samples(h, lab)
    w, j1, j2, m = pl.col("_w"), pl.col("_j1"), pl.col("_j2"), pl.col("_m")
    fit = tit.group_by("batch_id").agg(
        pl.len().alias("_n"),
        (w * j1 * j1).sum().alias("_s11"),
        (w * j1 * j2).sum().alias("_s12"),
        (w * j2 * j2).sum().alias("_s22"),
        (w * j1 * m).sum().alias("_b1"),
        (w * j2 * m).sum().alias("_b2"),
        pl.col("_j1", "_j2", "_m", "_w"),
        # late phase: M = q J_1 through the origin over the latest results, unweighted (the
        # latest, largest results dominate: the productivity of the production phase)
        pl.when((pl.col("_j1").tail(LATE_RESULTS) ** 2).sum() > 0)
        .then(
            (pl.col("_j1").tail(LATE_RESULTS) * pl.col("_m").tail(LATE_RESULTS)).sum()
            / (pl.col("_j1").tail(LATE_RESULTS) ** 2).sum()
        )
        .alias("bal_q_late"),
    )
    s11, s12, s22, b1, b2 = (pl.col(c) for c in ("_s11", "_s12", "_s22", "_b1", "_b2"))
    det = s11 * s22 - s12 * s12
    two = (
        (pl.col("_n") >= MIN_RESULTS_2P)
        & (s11 > 0)
        & (s22 > 0)
        & (det > MIN_DECORRELATION * s11 * s22)
    )
    one_q = pl.when(s11 > 0).then(b1 / s11)
    fit = fit.with_columns(
        bal_q1=pl.when(two).then((s22 * b1 - s12 * b2) / det).otherwise(one_q),
        bal_q2=pl.when(two).then((s11 * b2 - s12 * b1) / det).otherwise(0.0),
        _q_one=one_q,
    )
    # weighted relative residual of the fit (how well the balance explains the results)
    resid = (
        fit.explode("_j1", "_j2", "_m", "_w")
        .with_columns(
            _r2=pl.col("_w") * (pl.col("_m") - pl.col("bal_q1") * j1 - pl.col("bal_q2") * j2) ** 2
        )
        .group_by("batch_id")
        .agg((pl.col("_r2").mean().sqrt()).alias("bal_fit_rel_rmse"))
    )
    days_left = (pl.col("expected_duration_h") - pl.col("elapsed_h")).clip(0.0, None) / 24.0
    g_now = pl.col("_x_last").fill_null(0.0) * pl.col("_v_last")
    j1_end = pl.col("_j1_now") + g_now * days_left
    j2_end = pl.col("_j2_now") + g_now * (T_REF_C - pl.col("_t_last")).fill_null(0.0) * days_left
    out = (
        base.select("batch_id", "elapsed_h")
        .join(duration.select("batch_id", "expected_duration_h"), on="batch_id", how="left")
        .join(last, on="batch_id", how="left")
        .join(fit.drop("_j1", "_j2", "_m", "_w"), on="batch_id", how="left")
        .join(resid, on="batch_id", how="left")
        .with_columns(
            _m_end=pl.col("bal_q1") * j1_end + pl.col("bal_q2") * j2_end,
            _m_end1=pl.col("_q_one") * j1_end,
            _m_late=pl.col("bal_q_late") * j1_end,
        )
        .with_columns(
            titer_bal_harvest=pl.when(pl.col("_v_last") > 0).then(
                pl.col("_m_end") / pl.col("_v_last")
            ),
            mass_bal_harvest_kg=pl.col("_m_end") / 1000.0,
            titer_bal1_harvest=pl.when(pl.col("_v_last") > 0).then(
                pl.col("_m_end1") / pl.col("_v_last")
            ),
            mass_bal1_harvest_kg=pl.col("_m_end1") / 1000.0,
            titer_bal_late_harvest=pl.when(pl.col("_v_last") > 0).then(
                pl.col("_m_late") / pl.col("_v_last")
            ),
            mass_bal_late_harvest_kg=pl.col("_m_late") / 1000.0,
        )
    )
    return out.select("batch_id", *[pl.col(c).cast(pl.Float64) for c in BALANCE_FEATURES])


def balance_samples(
    h: pl.DataFrame, lab: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(hourly integrals ``_j1``, ``_j2`` per batch and hour; the latest values per batch;
    the in-process titer results with the integrals, volume, mass ``_m`` and weight ``_w``
    at their sample time)."""
    hh = (
        h.sort("batch_id", "hour_ts")
        .select(
            "batch_id",
            "hour_ts",
            _x=pl.col("capacitance_pf_cm_mean").fill_null(0.0).clip(0.0, None),
            _v=pl.col("volume_l_last").forward_fill().over("batch_id"),
            _t=pl.col("temperature_c_mean").forward_fill().over("batch_id"),
        )
        .with_columns(_g=(pl.col("_x") * pl.col("_v")).fill_null(0.0) / 24.0)
        .with_columns(
            _j1=pl.col("_g").cum_sum().over("batch_id"),
            _j2=(pl.col("_g") * (T_REF_C - pl.col("_t")).fill_null(0.0)).cum_sum().over("batch_id"),
        )
    )
    last = hh.group_by("batch_id").agg(
        pl.col("_j1").last().alias("_j1_now"),
        pl.col("_j2").last().alias("_j2_now"),
        pl.col("_x").last().alias("_x_last"),
        pl.col("_v").drop_nulls().last().alias("_v_last"),
        pl.col("_t").drop_nulls().tail(24).mean().alias("_t_last"),
    )
    tit = (
        lab.filter(pl.col("analyte") == "titer_g_l")
        .select("batch_id", "sample_ts", "value")
        .sort("batch_id", "sample_ts")
        .join_asof(
            hh.select("batch_id", "hour_ts", "_j1", "_j2", "_v"),
            left_on="sample_ts",
            right_on="hour_ts",
            by="batch_id",
            strategy="backward",
            check_sortedness=False,
        )
        .filter(pl.col("_j1").is_not_null() & pl.col("_v").is_not_null())
        .with_columns(
            _m=pl.col("value") * pl.col("_v"),
            _w=1.0 / ((pl.col("value") + P0_G_L) * pl.col("_v")) ** 2,
        )
    )
    return hh, last, tit
