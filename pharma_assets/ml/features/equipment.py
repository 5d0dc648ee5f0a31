"""(a) Equipment-hour features for predictive maintenance: one row per critical equipment
item per hour of run time (condition signals, trends, health residuals, maintenance)."""

from __future__ import annotations

import polars as pl

from pharma_assets.process.vocabulary import UnitClass

from .common import hours
from .tags import (
    CONDITION_TAGS,
    EPOCH,
    EQUIPMENT_SIGNALS,
    EQUIPMENT_TYPES,
    FEED_PUMP_MOTOR_TAGS,
    MAINTENANCE_RESETS,
    N_SIGNALS,
    TREND_WINDOW,
)


def equipment_hour_features(
    hourly: pl.DataFrame,
    maintenance: pl.DataFrame,
    batches: pl.DataFrame | None = None,
    equipment: dict[str, tuple[str, tuple[str, ...]]] | None = None,
) -> pl.DataFrame:
    """One row per equipment item per hour of run time.

    ``equipment``: the items a unit class declares (id suffix -> (type, condition tags)),
    default the bioreactor's agitator motor (AGT) and feed pump (FP). Those two have their
    own signal and health-residual definitions (below); any other item (a dryer's vacuum
    pump, a fan) is read generically from its declared condition tags (:func:`_generic_item`):
    signal ``s{i}`` is its i-th tag (the first ``N_SIGNALS``), its health residual ``h{i}``
    the tag's deviation from the item's own baseline (the mean of its earlier hours). Rows
    of a generic item are the hours in which at least one of its tags has a reading.

    Columns: ``equipment_id, unit_id, equipment_type, hour_ts, batch_id, elapsed_h``; per
    condition signal its hourly mean/max/std, its 24 h trend (least-squares slope per hour
    over the rows of the last 24 h ending at this row) and its deviation from the 24 h
    mean; ``hours_since_maintenance`` (wall-clock, since the last preventive or corrective
    maintenance of the item in the CMMS; null if none recorded), ``run_hours_since_
    maintenance`` (hours with telemetry since then, i.e. batch run time),
    ``run_hours_total`` (hours with telemetry since the start of the history) and
    ``failed_state`` (a CMMS failure newer than the last repair: the item is down).
    Health residuals ``h0..h2`` (:func:`_add_health_residuals`): the condition signal minus
    what the item's load needs, from a per-item baseline fitted on its own earlier hours,
    with their level over the last 24 and 72 valid hours and their 72 h slope. ``batches``
    (MES, for the recipe of each batch) is optional; without it the feed deficit is taken
    against one plant-wide reference flow. Everything in the row is known at ``hour_ts``.
    """
    hourly = hourly.with_columns(
        pump_current_per_flow=pl.when(pl.col("feed_rate_ml_h_mean") > 1.0).then(
            pl.col("feed_pump_current_a_mean") / pl.col("feed_rate_ml_h_mean") * 1000.0
        )
    )
    items = (
        {s: (t, EQUIPMENT_SIGNALS[t]) for s, t in EQUIPMENT_TYPES.items()}
        if equipment is None
        else equipment
    )
    frames = []
    for suffix, (etype, item_tags) in items.items():
        if EQUIPMENT_TYPES.get(suffix) != etype:
            g = _generic_item(hourly, suffix, etype, item_tags)
            if g is not None:
                frames.append(g)
            continue
        signals = EQUIPMENT_SIGNALS[etype]
        cols: list[pl.Expr] = [
            (pl.col("unit_id") + f"-{suffix}").alias("equipment_id"),
            pl.col("unit_id"),
            pl.lit(etype).alias("equipment_type"),
            pl.col("hour_ts"),
            pl.col("batch_id"),
            pl.col("elapsed_h"),
            pl.col("agitation_rpm_mean").alias("load_agitation_rpm"),
            pl.col("feed_rate_ml_h_mean").alias("load_feed_rate_ml_h"),
        ]
        for i, s in enumerate(signals):
            src_mean = s if s == "pump_current_per_flow" else f"{s}_mean"
            src_std = f"{s}_std"
            if s in FEED_PUMP_MOTOR_TAGS:
                src_mean, src_std = f"{s}_feeding", f"{s}_feeding_std"
            has_max = s in CONDITION_TAGS
            mx = pl.col(f"{s}_max") if has_max else pl.col(src_mean)
            if s in FEED_PUMP_MOTOR_TAGS:
                mx = pl.when(pl.col(src_mean).is_not_null()).then(mx)
            cols.append(pl.col(src_mean).alias(f"s{i}_mean"))
            cols.append(mx.alias(f"s{i}_max"))
            cols.append(
                (pl.col(src_std) if has_max else pl.lit(None, pl.Float64)).alias(f"s{i}_std")
            )
        cols += _residual_inputs(etype)
        frames.append(hourly.select(cols))
    if not frames:  # no item with telemetry: an empty table of the same columns
        frames.append(_generic_item(hourly, "_", "_", ("_",), keep_empty=True))  # type: ignore[arg-type]
    eq = pl.concat(frames).sort("equipment_id", "hour_ts")
    eq = _add_trends(eq, n_signals=N_SIGNALS)
    eq = _add_health_residuals(eq, batches)
    eq = _add_maintenance(eq, maintenance)
    return eq


def declared_equipment(unit_class: UnitClass) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The equipment items a unit class declares: id suffix -> (type, condition tags)."""
    return {s: (d.type, tuple(d.tags)) for s, d in unit_class.equipment.items()}


def _generic_item(
    hourly: pl.DataFrame,
    suffix: str,
    etype: str,
    item_tags: tuple[str, ...],
    keep_empty: bool = False,
) -> pl.DataFrame | None:
    """The hourly rows of a declared item PdM has no specific model of: signal ``s{i}`` =
    the hourly mean, max and std of its i-th condition tag (null where the site does not
    record it); health residual input ``h{i}`` = that tag against the item's baseline
    (kind ``base``). None when none of its tags is in the rollup (nothing to read)."""
    tags = [t for t in item_tags[:N_SIGNALS]]
    present = [t for t in tags if f"{t}_mean" in hourly.columns]
    if not present and not keep_empty:
        return None
    none = pl.lit(None, pl.Float64)

    def col(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64) if name in hourly.columns else none

    cols: list[pl.Expr] = [
        (pl.col("unit_id") + f"-{suffix}").alias("equipment_id"),
        pl.col("unit_id"),
        pl.lit(etype).alias("equipment_type"),
        pl.col("hour_ts"),
        pl.col("batch_id"),
        pl.col("elapsed_h"),
        none.alias("load_agitation_rpm"),
        none.alias("load_feed_rate_ml_h"),
    ]
    for i in range(N_SIGNALS):
        t = tags[i] if i < len(tags) else "_absent_"
        cols += [
            col(f"{t}_mean").alias(f"s{i}_mean"),
            col(f"{t}_max").alias(f"s{i}_max"),
            col(f"{t}_std").alias(f"s{i}_std"),
        ]
    for i in range(N_RESIDUALS):
        t = tags[i] if i < len(tags) else "_absent_"
        cols += [
            none.alias(f"_x{i}"),
            col(f"{t}_mean").alias(f"_y{i}"),
            pl.lit("base").alias(f"_k{i}"),
        ]
    out = hourly.select(cols)
    if keep_empty:
        return out.clear()
    return out.filter(
        pl.any_horizontal([pl.col(f"s{i}_mean").is_not_null() for i in range(N_SIGNALS)])
    )


# per equipment type: (load x, condition y) pairs whose baseline y ~ a + b x is fitted per
# item on its earlier hours; the residual y - (a + b x) is what wear adds to the signal
#   agitator: log vibration vs log speed (vibration grows as a power of speed), bearing
#   temperature vs speed (friction heat), motor current vs speed^3 x volume (affinity law:
#   shaft power ~ N^3, scaled by the liquid's height)
#   generic items (any other declared type): each condition tag against the mean of the
#   item's earlier hours ("base")
#   feed pump (feeding hours only; the pump runs at the recipe's rate, so the load is
#   constant): current vs nothing (baseline = the item's lowest earlier level, i.e. a fresh
#   pump head), delivered flow as a deficit against the recipe's flow
#   motors (agitator and feed pump): bearing defect band vs speed (agitator) or its lowest
#   earlier level (pump), stator winding temperature vs load (agitator: copper losses ~ the
#   load; pump: constant load, lowest earlier level), phase-current unbalance against the
#   item's lowest earlier level (the supply's own unbalance)
N_RESIDUALS = 6
RESID_MIN_HOURS = 48  # valid earlier hours before a per-item baseline is trusted


def _residual_inputs(etype: str) -> list[pl.Expr]:
    rpm = pl.col("agitation_rpm_mean")
    on = rpm > 1.0
    pairs: list[tuple[pl.Expr, pl.Expr]]
    if etype == "agitator_motor":
        vib, temp, cur = (f"{t}_mean" for t in CONDITION_TAGS[:3])
        pairs = [
            (
                pl.when(on).then((rpm / 100.0).log()),
                pl.when(on & (pl.col(vib) > 0)).then(pl.col(vib).log()),
            ),
            (pl.when(on).then(rpm), pl.when(on).then(pl.col(temp))),
            (
                pl.when(on).then((rpm / 140.0) ** 3 * pl.col("volume_l_last") / 2000.0),
                pl.when(on).then(pl.col(cur)),
            ),
        ]
        load = pl.when(on).then((rpm / 140.0) ** 3 * pl.col("volume_l_last") / 2000.0)
        pairs += [
            (pl.when(on).then(rpm), pl.when(on).then(pl.col("agitator_bearing_defect_ge_mean"))),
            (load, pl.when(on).then(pl.col("agitator_winding_temp_c_mean"))),
            (
                pl.lit(None, pl.Float64),
                pl.when(on).then(pl.col("agitator_current_imbalance_pct_mean")),
            ),
        ]
        kinds = ["fit", "fit", "fit", "fit", "fit", "min"]
    else:
        feeding = pl.col("feeding_readings") >= 0.5 * pl.col("n_readings")
        amps = pl.when(feeding).then(pl.col("feed_pump_current_feeding"))
        flow = pl.when(feeding).then(pl.col("feed_rate_feeding"))
        none = pl.lit(None, pl.Float64)
        pairs = [(none, amps), (none, flow), (none, amps)]
        pairs += [
            (none, pl.when(feeding).then(pl.col(f"{t}_feeding"))) for t in FEED_PUMP_MOTOR_TAGS
        ]
        kinds = ["min", "flow", "level", "min", "min", "min"]
    out: list[pl.Expr] = []
    for i, ((x, y), kind) in enumerate(zip(pairs, kinds, strict=True)):
        out.append(x.cast(pl.Float64).alias(f"_x{i}"))
        out.append(y.cast(pl.Float64).alias(f"_y{i}"))
        out.append(pl.lit(kind).alias(f"_k{i}"))
    return out


def _expanding_fit_resid(x: pl.Expr, y: pl.Expr) -> pl.Expr:
    """y - (a + b x), with a, b least squares over the item's EARLIER valid rows (the
    current row excluded), null until ``RESID_MIN_HOURS`` of them exist."""
    ok = x.is_not_null() & y.is_not_null()
    xv, yv = pl.when(ok).then(x).otherwise(0.0), pl.when(ok).then(y).otherwise(0.0)

    def prior(e: pl.Expr) -> pl.Expr:
        return (e.cum_sum() - e).over("equipment_id")

    n = prior(ok.cast(pl.Float64))
    sx, sy, sxx, sxy = prior(xv), prior(yv), prior(xv * xv), prior(xv * yv)
    den = n * sxx - sx * sx
    b = pl.when(den.abs() > 1e-9 * (n * n + 1.0)).then((n * sxy - sx * sy) / den).otherwise(0.0)
    a = (sy - b * sx) / n
    return pl.when(ok & (n >= RESID_MIN_HOURS)).then(y - (a + b * x))


def _add_health_residuals(eq: pl.DataFrame, batches: pl.DataFrame | None) -> pl.DataFrame:
    """Residual condition signals ``h{i}_resid`` (see ``_residual_inputs``) and, over the
    item's valid hours (agitator turning, pump feeding), their mean over the last 24 and 72
    such hours, the least-squares slope over the last 72 (per 100 h) and the change against
    the 24 hours before the last 48; carried forward over invalid hours (last known value)."""
    eq = eq.sort("equipment_id", "hour_ts")
    if batches is not None and "recipe_id" in batches.columns:
        eq = eq.join(batches.select("batch_id", "recipe_id"), on="batch_id", how="left")
    else:
        eq = eq.with_columns(recipe_id=pl.lit(None, pl.String))
    # the recipe's delivered flow of a healthy pump: the highest feeding-hour flow any pump
    # delivered on that recipe before this hour (plant-wide, causal)
    flow_ref = (
        eq.filter(pl.col("_k1") == "flow")
        .select("equipment_id", "hour_ts", "recipe_id", "_y1")
        .sort("hour_ts", "equipment_id")
        .with_columns(
            _ref=pl.col("_y1").cum_max().forward_fill().shift(1).over("recipe_id"),
        )
        .select("equipment_id", "hour_ts", "_ref")
    )
    eq = eq.join(flow_ref, on=["equipment_id", "hour_ts"], how="left")
    exprs = []
    has_base = bool((eq["_k0"] == "base").any()) if eq.height else False
    for i in range(N_RESIDUALS):
        x, y, k = pl.col(f"_x{i}"), pl.col(f"_y{i}"), pl.col(f"_k{i}")
        prior_min = y.cum_min().forward_fill().shift(1).over("equipment_id")
        n_prior = (y.is_not_null().cast(pl.Int64).cum_sum() - y.is_not_null().cast(pl.Int64)).over(
            "equipment_id"
        )
        # a generic item's baseline: the mean of its earlier valid hours (computed only when
        # such an item is in the table)
        yz = y.fill_null(0.0)
        prior_mean = (
            (yz.cum_sum() - yz).over("equipment_id") / pl.max_horizontal(n_prior, 1)
            if has_base
            else pl.lit(None, pl.Float64)
        )
        resid = (
            pl.when(k == "fit")
            .then(_expanding_fit_resid(x, y))
            .when(k == "min")
            .then(pl.when(n_prior >= RESID_MIN_HOURS).then(y - prior_min))
            .when(k == "flow")
            .then(1.0 - y / pl.col("_ref"))
            .when(k == "base")
            .then(pl.when(n_prior >= RESID_MIN_HOURS).then(y - prior_mean))
            .otherwise(y)
        )
        exprs.append(resid.alias(f"h{i}_resid"))
    eq = eq.with_columns(exprs)
    # trends over valid hours only (by count), then carried forward
    val = eq.select("equipment_id", "hour_ts", *[f"h{i}_resid" for i in range(N_RESIDUALS)])
    trend_cols = []
    for i in range(N_RESIDUALS):
        r = f"h{i}_resid"
        v = val.filter(pl.col(r).is_not_null()).select("equipment_id", "hour_ts", r)
        idx = pl.int_range(pl.len()).cast(pl.Float64).over("equipment_id")
        v = v.with_columns(_i=idx).with_columns(
            _m24=pl.col(r).rolling_mean(24, min_samples=6).over("equipment_id"),
            _m72=pl.col(r).rolling_mean(72, min_samples=12).over("equipment_id"),
            _mi=pl.col("_i").rolling_mean(72, min_samples=12).over("equipment_id"),
            _mii=(pl.col("_i") ** 2).rolling_mean(72, min_samples=12).over("equipment_id"),
            _miy=(pl.col("_i") * pl.col(r)).rolling_mean(72, min_samples=12).over("equipment_id"),
            _old=pl.col(r).shift(48).rolling_mean(24, min_samples=6).over("equipment_id"),
        )
        var = pl.col("_mii") - pl.col("_mi") ** 2
        v = v.select(
            "equipment_id",
            "hour_ts",
            pl.col("_m24").alias(f"h{i}_mean_24h"),
            pl.col("_m72").alias(f"h{i}_mean_72h"),
            pl.when(var > 0)
            .then(100.0 * (pl.col("_miy") - pl.col("_mi") * pl.col("_m72")) / var)
            .alias(f"h{i}_slope_72h"),
            (pl.col("_m24") - pl.col("_old")).alias(f"h{i}_delta_72h"),
        )
        eq = eq.join(v, on=["equipment_id", "hour_ts"], how="left")
        trend_cols += [f"h{i}_mean_24h", f"h{i}_mean_72h", f"h{i}_slope_72h", f"h{i}_delta_72h"]
    eq = eq.sort("equipment_id", "hour_ts").with_columns(
        pl.col(trend_cols).forward_fill().over("equipment_id")
    )
    tmp = [c for c in eq.columns if c.startswith(("_x", "_y", "_k"))] + ["_ref", "recipe_id"]
    return eq.drop(tmp)


def signal_names(equipment_type: str) -> dict[str, str]:
    """Generic column prefix (s0, s1, s2) -> the signal it holds, per equipment type."""
    return {f"s{i}": s for i, s in enumerate(EQUIPMENT_SIGNALS[equipment_type])}


def _add_trends(eq: pl.DataFrame, n_signals: int) -> pl.DataFrame:
    t = hours(pl.col("hour_ts").dt.replace_time_zone(None) - pl.lit(EPOCH))
    eq = eq.with_columns(_t=t)
    exprs = []
    for i in range(n_signals):
        y = pl.col(f"s{i}_mean")
        w = TREND_WINDOW
        valid = y.is_not_null()
        tt = pl.when(valid).then(pl.col("_t"))
        m_t = tt.rolling_mean_by("hour_ts", w)
        m_y = y.rolling_mean_by("hour_ts", w)
        m_ty = (tt * y).rolling_mean_by("hour_ts", w)
        m_tt = (tt * tt).rolling_mean_by("hour_ts", w)
        var = m_tt - m_t * m_t
        slope = pl.when(var > 1.0).then((m_ty - m_t * m_y) / var)
        exprs += [
            slope.over("equipment_id").alias(f"s{i}_slope_24h"),
            (y - m_y).over("equipment_id").alias(f"s{i}_dev_24h"),
            y.rolling_max_by("hour_ts", w).over("equipment_id").alias(f"s{i}_max_24h"),
        ]
    return eq.with_columns(exprs).drop("_t")


def _add_maintenance(eq: pl.DataFrame, maintenance: pl.DataFrame) -> pl.DataFrame:
    eq = eq.with_columns(run_hours_total=pl.int_range(1, pl.len() + 1).over("equipment_id"))
    m = (
        maintenance.filter(pl.col("valid").fill_null(True))
        if "valid" in maintenance
        else maintenance
    )
    resets = (
        m.filter(pl.col("event_type").is_in(MAINTENANCE_RESETS))
        .select("equipment_id", pl.col("event_ts").alias("maint_ts"))
        .sort("equipment_id", "maint_ts")
    )
    fails = (
        m.filter(pl.col("event_type") == "failure")
        .select("equipment_id", pl.col("event_ts").alias("last_failure_ts"))
        .sort("equipment_id", "last_failure_ts")
    )
    # run hours accumulated by the item up to each maintenance event
    at_reset = resets.join_asof(
        eq.select("equipment_id", "hour_ts", "run_hours_total").sort("equipment_id", "hour_ts"),
        left_on="maint_ts",
        right_on="hour_ts",
        by="equipment_id",
        strategy="backward",
        check_sortedness=False,
    ).select("equipment_id", "maint_ts", pl.col("run_hours_total").fill_null(0).alias("_rh0"))
    eq = eq.sort("equipment_id", "hour_ts")
    eq = eq.join_asof(
        at_reset.sort("equipment_id", "maint_ts"),
        left_on="hour_ts",
        right_on="maint_ts",
        by="equipment_id",
        strategy="backward",
        check_sortedness=False,
    ).join_asof(
        fails,
        left_on="hour_ts",
        right_on="last_failure_ts",
        by="equipment_id",
        strategy="backward",
        check_sortedness=False,
    )
    return eq.with_columns(
        hours_since_maintenance=hours(pl.col("hour_ts") - pl.col("maint_ts")),
        run_hours_since_maintenance=(pl.col("run_hours_total") - pl.col("_rh0")).cast(pl.Float64),
        maintenance_known=pl.col("maint_ts").is_not_null(),
        failed_state=pl.col("last_failure_ts").is_not_null()
        & (pl.col("maint_ts").is_null() | (pl.col("last_failure_ts") > pl.col("maint_ts"))),
        run_hours_total=pl.col("run_hours_total").cast(pl.Float64),
    ).drop("_rh0")


EQUIPMENT_FEATURES = [
    "elapsed_h",
    "load_agitation_rpm",
    "load_feed_rate_ml_h",
    *[
        f"s{i}_{k}"
        for i in range(N_SIGNALS)
        for k in ("mean", "max", "std", "slope_24h", "dev_24h", "max_24h")
    ],
    "hours_since_maintenance",
    "run_hours_since_maintenance",
    "run_hours_total",
]
#: the health-residual features (per equipment type: see ``_residual_inputs``)
HEALTH_FEATURES = [
    f"h{i}_{k}"
    for i in range(N_RESIDUALS)
    for k in ("resid", "mean_24h", "mean_72h", "slope_72h", "delta_72h")
]
