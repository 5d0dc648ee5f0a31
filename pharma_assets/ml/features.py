"""Feature tables (the "feature store") shared by training and scoring.

Three tables, all computed from what a real plant has in its lake (historian telemetry via
``silver/batch_timeline``, MES ``silver/batches``, LIMS ``silver/lab_results``, CMMS
``silver/maintenance_events``). The simulator's ground truth (fault labels, hidden
raw-material attributes ``attr_*``) is never read here.

* :func:`equipment_hour_features`: one row per critical equipment item (agitator AGT, feed
  pump FP) per hour of run time, for predictive maintenance.
* :func:`batch_hour_features`: one row per batch per elapsed hour: CPP statistics, OUR/CER
  from the off-gas balance, specific rates, cumulative feed.
* :func:`batch_features`: one row per batch at a forecast horizon (day 3, day 7, harvest):
  recipe, lot history, early-phase summaries and in-process LIMS results known by then.

No feature looks past its scoring time. Hourly rows are stamped with the END of their hour
(``hour_ts`` / ``elapsed_h``): a row with ``hour_ts = T`` uses readings with timestamps
``< T`` only, so it can be scored at ``T``. Rolling trends look back, never forward.

OUR/CER (documented formula, gas volumes at standard conditions 0 degC, 1 atm,
22.414 L/mol; off-gas mole fractions on a dry basis, as the analyser reports them)::

    n_air, n_o2, n_co2 = flows [slpm] * 60 / 22.414           # mol/h in
    n_inert_in = 0.7905 * n_air                                # N2 + Ar of air, not consumed
    n_out      = n_inert_in / (1 - y_o2 - y_co2)               # inert balance
    OUR = (0.2095 * n_air + n_o2 - y_o2 * n_out) * 1000 / V    # mmol O2 / L / h
    CER = (y_co2 * n_out - 0.0004 * n_air - n_co2) * 1000 / V  # mmol CO2 / L / h
    RQ  = CER / OUR

Specific rates are per unit of viable biovolume (capacitance, pF/cm): ``q_o2 = OUR /
capacitance``. Cumulative feed is the time integral of ``feed_rate_ml_h`` (L).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from pharma_assets.lake.storage import Lake

MOLAR_VOLUME_L = 22.414  # L/mol at 0 degC, 1 atm (standard litres)
Y_O2_AIR = 0.2095
Y_INERT_AIR = 0.7905
Y_CO2_AIR = 0.0004

CPP_TAGS = (
    "temperature_c",
    "ph",
    "dissolved_oxygen_pct",
    "agitation_rpm",
    "headspace_pressure_bar",
    "dissolved_co2_mmhg",
)
PROCESS_TAGS = (
    *CPP_TAGS,
    "air_flow_slpm",
    "o2_flow_slpm",
    "co2_flow_slpm",
    "feed_rate_ml_h",
    "offgas_o2_pct",
    "offgas_co2_pct",
    "capacitance_pf_cm",
    "jacket_temperature_c",
)
CONDITION_TAGS = (
    "agitator_vibration_mm_s",
    "agitator_bearing_temp_c",
    "agitator_motor_current_a",
    "feed_pump_current_a",
)
LAST_TAGS = ("volume_l", "base_addition_ml", "capacitance_pf_cm")
#: every timeline tag the hourly rollup reads (a superset of the contamination and MSPC tags)
ROLLUP_TAGS = (*PROCESS_TAGS, *CONDITION_TAGS, "volume_l", "base_addition_ml")

EQUIPMENT_TYPES = {"AGT": "agitator_motor", "FP": "feed_pump"}
# per equipment type: the hourly condition columns whose level and trend describe its health
EQUIPMENT_SIGNALS: dict[str, tuple[str, ...]] = {
    "agitator_motor": (
        "agitator_vibration_mm_s",
        "agitator_bearing_temp_c",
        "agitator_motor_current_a",
    ),
    "feed_pump": ("feed_pump_current_a", "feed_rate_ml_h", "pump_current_per_flow"),
}
MAINTENANCE_RESETS = ("preventive_maintenance", "corrective_maintenance")

LIMS_ANALYTES = (
    "viable_cell_density_e6_cells_ml",
    "viability_pct",
    "glucose_g_l",
    "glutamine_mmol_l",
    "lactate_g_l",
    "ammonia_mmol_l",
    "osmolality_mosm_kg",
    "titer_g_l",
    "ph_offline",
    "pco2_mmhg",
)
HORIZONS_H: dict[str, float | None] = {"day3": 72.0, "day7": 168.0, "harvest": None}
TREND_WINDOW = "24h"

_EPOCH = datetime(2020, 1, 1)


@dataclass
class MlInputs:
    """The lake tables the features read, with the Delta version of each read."""

    hourly: pl.DataFrame  # hourly_rollup of silver/batch_timeline
    batches: pl.DataFrame
    lab_results: pl.DataFrame
    maintenance: pl.DataFrame
    batch_summary: pl.DataFrame
    versions: dict[str, int | None] = field(default_factory=dict)


def _require(df: pl.DataFrame | None, name: str, lake: Lake) -> pl.DataFrame:
    if df is None:
        raise FileNotFoundError(
            f"table {name} does not exist in lake {lake.root}; run the lakehouse pipeline "
            "first (pharma-twin pipeline)"
        )
    return df


LAB_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(), "site_id": pl.String(), "unit_id": pl.String(),
    "batch_id": pl.String(), "sample_ts": pl.Datetime("us", "UTC"), "sample_type": pl.String(),
    "analyte": pl.String(), "value": pl.Float64(), "uom": pl.String(),
}  # fmt: skip
MAINTENANCE_SCHEMA: dict[str, pl.DataType] = {
    "work_order_id": pl.String(), "event_ts": pl.Datetime("us", "UTC"), "site_id": pl.String(),
    "unit_id": pl.String(), "equipment_id": pl.String(), "event_type": pl.String(),
    "part": pl.String(), "description": pl.String(), "downtime_h": pl.Float64(),
    "run_hours_at_event": pl.Float64(), "valid": pl.Boolean(),
}  # fmt: skip


def _or_empty(df: pl.DataFrame | None, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema) if df is None else df


def load_inputs(lake: Lake, with_hourly: bool = True) -> MlInputs:
    """Read the silver/gold tables the features need (the timeline already rolled up;
    ``with_hourly=False`` skips the timeline, for consumers of the stored feature tables)."""
    versions = {
        f"{layer}/{name}": lake.version(layer, name)
        for layer, name in (
            ("silver", "batch_timeline"),
            ("silver", "batches"),
            ("silver", "lab_results"),
            ("silver", "maintenance_events"),
            ("gold", "batch_summary"),
        )
    }
    tl = lake.scan("silver", "batch_timeline")
    if tl is None and with_hourly:
        raise FileNotFoundError(
            f"table silver/batch_timeline does not exist in lake {lake.root}; run the "
            "lakehouse pipeline first (pharma-twin pipeline)"
        )
    summary = lake.read("gold", "batch_summary")
    return MlInputs(
        hourly=hourly_rollup(tl) if tl is not None and with_hourly else pl.DataFrame(),
        batches=_require(lake.read("silver", "batches"), "silver/batches", lake),
        # a site without LIMS or CMMS has no such table: empty, and the models that need
        # them are skipped (ml/capabilities.py), rather than every feature failing
        lab_results=_or_empty(lake.read("silver", "lab_results"), LAB_SCHEMA),
        maintenance=_or_empty(lake.read("silver", "maintenance_events"), MAINTENANCE_SCHEMA),
        batch_summary=summary if summary is not None else pl.DataFrame(),
        versions=versions,
    )


# --------------------------------------------------------------------------- hourly rollup


def gas_rates(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add OUR, CER (mmol/L/h) and RQ per reading (formula in the module docstring)."""
    to_mol_h = 60.0 / MOLAR_VOLUME_L
    y_o2 = pl.col("offgas_o2_pct") / 100.0
    y_co2 = pl.col("offgas_co2_pct") / 100.0
    n_air = pl.col("air_flow_slpm").fill_null(0.0) * to_mol_h
    n_o2 = pl.col("o2_flow_slpm").fill_null(0.0) * to_mol_h
    n_co2 = pl.col("co2_flow_slpm").fill_null(0.0) * to_mol_h
    n_out = Y_INERT_AIR * n_air / (1.0 - y_o2 - y_co2)
    vol = pl.when(pl.col("volume_l") > 1.0).then(pl.col("volume_l"))
    our = (Y_O2_AIR * n_air + n_o2 - y_o2 * n_out) * 1000.0 / vol
    cer = (y_co2 * n_out - Y_CO2_AIR * n_air - n_co2) * 1000.0 / vol
    return lf.with_columns(our_mmol_l_h=our, cer_mmol_l_h=cer).with_columns(
        rq=pl.when(pl.col("our_mmol_l_h").abs() > 1e-6).then(
            pl.col("cer_mmol_l_h") / pl.col("our_mmol_l_h")
        )
    )


def hourly_rollup(timeline: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Roll ``silver/batch_timeline`` up to one row per batch per elapsed hour.

    Row ``elapsed_h = k`` covers minutes ``[60(k-1), 60k)`` and is stamped ``hour_ts`` = the
    end of that hour, so it is known at ``hour_ts``. Per tag: mean; condition tags also max
    and std; volume, base and capacitance also the last value; feed volume delivered in the
    hour (L, from the sample spacing).
    """
    lf = timeline.lazy() if isinstance(timeline, pl.DataFrame) else timeline
    names = lf.collect_schema().names()
    tags = list(ROLLUP_TAGS)
    missing = [t for t in tags if t not in names]
    lf = lf.with_columns([pl.lit(None, pl.Float64).alias(t) for t in missing])
    lf = (
        lf.select("batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", *tags)
        .unique(subset=["batch_id", "elapsed_min"], keep="first")
        .sort("batch_id", "elapsed_min")
    )
    return _rollup_minutes(lf)


def _rollup_minutes(lf: pl.LazyFrame) -> pl.DataFrame:
    """The hourly rollup of a timeline holding one row per (batch, elapsed minute), sorted
    by batch and minute, with every ``ROLLUP_TAGS`` column (the body of ``hourly_rollup``)."""
    lf = gas_rates(lf)
    dt_h = (
        (pl.col("elapsed_min").diff().over("batch_id") / 60.0)
        .fill_null(pl.col("elapsed_min").diff().over("batch_id").median() / 60.0)
        .fill_null(1.0 / 60.0)
        .clip(0.0, 1.0)
    )
    lf = lf.with_columns(
        hour_idx=(pl.col("elapsed_min") // 60).cast(pl.Int32),
        feed_l=pl.col("feed_rate_ml_h").fill_null(0.0) * dt_h / 1000.0,
    )
    feeding = pl.col("feed_rate_ml_h") > 0.0
    aggs: list[pl.Expr] = [
        pl.col("unit_id").first(),
        (
            pl.col("minute_ts").first()
            - pl.duration(minutes=pl.col("elapsed_min").first() % 60)
            + pl.duration(hours=1)
        ).alias("hour_ts"),
        pl.col("phase").last(),
        pl.len().alias("n_readings"),
        pl.col("feed_l").sum().alias("feed_l_hour"),
        # the feed pump's condition is only visible while it delivers: its current and
        # flow over the minutes it pumped (null in hours without feeding)
        feeding.sum().alias("feeding_readings"),
        pl.col("feed_pump_current_a").filter(feeding).mean().alias("feed_pump_current_feeding"),
        pl.col("feed_rate_ml_h").filter(feeding).mean().alias("feed_rate_feeding"),
    ]
    for t in (*PROCESS_TAGS, "our_mmol_l_h", "cer_mmol_l_h", "rq"):
        aggs.append(pl.col(t).mean().alias(f"{t}_mean"))
    for t in CPP_TAGS:
        aggs.append(pl.col(t).std().alias(f"{t}_std"))
    for t in CONDITION_TAGS:
        aggs += [
            pl.col(t).mean().alias(f"{t}_mean"),
            pl.col(t).max().alias(f"{t}_max"),
            pl.col(t).std().alias(f"{t}_std"),
        ]
    for t in LAST_TAGS:
        aggs.append(pl.col(t).drop_nulls().last().alias(f"{t}_last"))
    out = (
        lf.group_by("batch_id", "hour_idx")
        .agg(aggs)
        .with_columns(elapsed_h=(pl.col("hour_idx") + 1).cast(pl.Float64))
        .drop("hour_idx")
        .sort("batch_id", "elapsed_h")
        .collect()
    )
    return out.with_columns(
        cum_feed_l=pl.col("feed_l_hour").cum_sum().over("batch_id"),
        q_o2=pl.when(pl.col("capacitance_pf_cm_mean") > 0.05).then(
            pl.col("our_mmol_l_h_mean") / pl.col("capacitance_pf_cm_mean")
        ),
        hour_ts=pl.col("hour_ts").dt.cast_time_unit("us"),
    )


# --------------------------------------------------------------------------- one timeline pass


@dataclass
class TimelineProducts:
    """Everything the ml group derives from the minute-level ``silver/batch_timeline``,
    computed in one pass: the hourly rollup (:func:`hourly_rollup`), the contamination
    detector's 5-minute windows (``contamination.window_features``) and the MSPC hourly
    means of complete hours (``mspc.hourly_means``). Each is row-for-row what its own
    function returns on the same timeline."""

    hourly: pl.DataFrame
    windows: pl.DataFrame
    mspc_hourly: pl.DataFrame
    n_batches: int = 0


def timeline_batch_ids(lake: Lake) -> list[str]:
    """Batch ids present in ``silver/batch_timeline`` (its partition column; no data read)."""
    tl = lake.scan("silver", "batch_timeline")
    if tl is None:
        raise FileNotFoundError(
            f"table silver/batch_timeline does not exist in lake {lake.root}; run the "
            "lakehouse pipeline first (pharma-twin pipeline)"
        )
    return sorted(tl.select(pl.col("batch_id").unique()).collect()["batch_id"].to_list())


def products_from_timeline(timeline: pl.DataFrame, step_min: int = 60) -> TimelineProducts:
    """The three timeline products of some batches' timeline rows (see ``TimelineProducts``).

    A minute may be split across landing files (several rows): the contamination and MSPC
    consumers average such rows, the hourly rollup keeps the first row of the minute (as
    ``hourly_rollup`` does). When every minute has one row, sorted (the usual case), the
    rows are used as they are, with no group-by. NaN never reaches silver (the telemetry
    contract quarantines non-finite values), so averaging with NaN ignored equals the
    contamination module's plain mean.
    """
    tl = timeline
    missing = [t for t in ROLLUP_TAGS if t not in tl.columns]
    tl = tl.with_columns([pl.lit(None, pl.Float64).alias(t) for t in missing])
    site = site_tags(tl)
    cols = ["batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", *ROLLUP_TAGS, *site]
    if not _sorted_unique(tl):
        tl = tl.sort("batch_id", "elapsed_min", maintain_order=True)
    if _sorted_unique(tl):
        # one row per minute already (the usual case: silver writes a batch's minutes in
        # order, one file per minute range): the minute mean is the row itself, and a
        # group-by over millions of rows would cost most of the pass
        first = tl.select(cols)
        m = first.with_columns(
            [pl.col(t).cast(pl.Float64).fill_nan(None) for t in (*ROLLUP_TAGS, *site)]
        )
        return _products_from_minutes(first, m, site, step_min)
    m = (
        tl.group_by("batch_id", "elapsed_min")
        .agg(
            pl.col("unit_id").first(),
            pl.col("minute_ts").min(),
            pl.col("phase").first(),
            pl.len().alias("_rows"),
            *[pl.col(t).cast(pl.Float64).fill_nan(None).mean() for t in (*ROLLUP_TAGS, *site)],
        )
        .sort("batch_id", "elapsed_min")
    )
    first = (
        tl.select(cols)
        .unique(subset=["batch_id", "elapsed_min"], keep="first", maintain_order=True)
        .sort("batch_id", "elapsed_min")
    )
    return _products_from_minutes(first, m.drop("_rows"), site, step_min)


#: timeline columns that are not tags
TIMELINE_KEYS = ("batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", "source_file")


def site_tags(timeline: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """Numeric timeline columns that are tags the bioreactor class does not know (a site's
    own tags, another unit class's tags): MSPC and the golden batch monitor them too."""
    schema = timeline.collect_schema()
    return sorted(c for c, t in schema.items()
                  if c not in TIMELINE_KEYS and c not in ROLLUP_TAGS and t.is_numeric())  # fmt: skip


def _sorted_unique(tl: pl.DataFrame) -> bool:
    """Rows strictly ordered by (batch_id, elapsed_min): sorted, one row per minute."""
    if tl.height < 2:
        return True
    b, e = pl.col("batch_id"), pl.col("elapsed_min")
    ok = (b > b.shift(1)) | ((b == b.shift(1)) & (e > e.shift(1)))
    return bool(tl.select(ok.fill_null(True).all()).item())


def _products_from_minutes(
    first: pl.DataFrame, m: pl.DataFrame, site: Sequence[str] = (), step_min: int = 60
) -> TimelineProducts:
    """``first``: the first row of each minute (hourly rollup input); ``m``: per-minute tag
    means; both one row per (batch, minute), sorted."""
    from . import contamination, mspc  # local: those modules stay free of feature code

    return TimelineProducts(
        hourly=_rollup_minutes(first.lazy()),
        windows=contamination.window_features_from_minutes(m),
        mspc_hourly=mspc.hourly_means_from_minutes(m, (*mspc.PROCESS_TAGS, *site), step_min),
        n_batches=m["batch_id"].n_unique(),
    )


def timeline_products(
    lake: Lake, batch_ids: Sequence[str] | None = None, chunk_batches: int = 40
) -> TimelineProducts:
    """One pass over ``silver/batch_timeline`` (all batches, or ``batch_ids``), read by
    partition ``chunk_batches`` batches at a time (memory stays bounded on a long history;
    every product is computed per batch, so chunking changes no row)."""
    if chunk_batches < 1:
        raise ValueError(f"chunk_batches must be >= 1, got {chunk_batches}")
    ids = sorted(set(batch_ids)) if batch_ids is not None else timeline_batch_ids(lake)
    schema = lake.scan("silver", "batch_timeline")
    if schema is None:
        raise FileNotFoundError(
            f"table silver/batch_timeline does not exist in lake {lake.root}; run the "
            "lakehouse pipeline first (pharma-twin pipeline)"
        )
    present = set(schema.collect_schema().names())
    need = ["batch_id", "unit_id", "elapsed_min", "minute_ts", "phase"]
    cols = need + [t for t in ROLLUP_TAGS if t in present] + site_tags(schema)
    from . import mspc

    # MSPC's maturity grid: an hour for long (cell-culture) batches, minutes for short ones
    b = lake.read("silver", "batches", ["start_ts", "end_ts"])
    durations = [] if b is None else (
        b.filter(pl.col("end_ts").is_not_null())
        .select((pl.col("end_ts") - pl.col("start_ts")).dt.total_minutes())
        .to_series().to_list()
    )  # fmt: skip
    step = mspc.choose_step_min(durations)
    parts: list[TimelineProducts] = []
    for i in range(0, len(ids), chunk_batches):
        chunk = ids[i : i + chunk_batches]
        tl = lake.read("silver", "batch_timeline", columns=cols, partition=("batch_id", chunk))
        if tl is not None and tl.height:
            parts.append(products_from_timeline(tl, step))
    if not parts:
        empty = lake.read("silver", "batch_timeline", columns=cols, filter_expr=pl.lit(False))
        assert empty is not None
        return products_from_timeline(empty, step)
    return TimelineProducts(
        hourly=pl.concat([p.hourly for p in parts]).sort("batch_id", "elapsed_h"),
        windows=pl.concat([p.windows for p in parts]).sort("batch_id", "window"),
        mspc_hourly=pl.concat([p.mspc_hourly for p in parts], how="diagonal_relaxed").sort(
            "batch_id", "hour"
        ),
        n_batches=sum(p.n_batches for p in parts),
    )


# --------------------------------------------------------------------------- (a) equipment


def _hours(expr: pl.Expr) -> pl.Expr:
    return expr.dt.total_microseconds() / 3.6e9


def equipment_hour_features(
    hourly: pl.DataFrame, maintenance: pl.DataFrame, batches: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per critical equipment item (AGT, FP) per hour of run time.

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
    frames = []
    for suffix, etype in EQUIPMENT_TYPES.items():
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
            cols.append(pl.col(src_mean).alias(f"s{i}_mean"))
            has_max = s in CONDITION_TAGS
            cols.append((pl.col(f"{s}_max") if has_max else pl.col(src_mean)).alias(f"s{i}_max"))
            cols.append(
                (pl.col(f"{s}_std") if has_max else pl.lit(None, pl.Float64)).alias(f"s{i}_std")
            )
        cols += _residual_inputs(etype)
        frames.append(hourly.select(cols))
    eq = pl.concat(frames).sort("equipment_id", "hour_ts")
    eq = _add_trends(eq, n_signals=3)
    eq = _add_health_residuals(eq, batches)
    eq = _add_maintenance(eq, maintenance)
    return eq


# per equipment type: (load x, condition y) pairs whose baseline y ~ a + b x is fitted per
# item on its earlier hours; the residual y - (a + b x) is what wear adds to the signal
#   agitator: log vibration vs log speed (vibration grows as a power of speed), bearing
#   temperature vs speed (friction heat), motor current vs speed^3 x volume (affinity law:
#   shaft power ~ N^3, scaled by the liquid's height)
#   feed pump (feeding hours only; the pump runs at the recipe's rate, so the load is
#   constant): current vs nothing (baseline = the item's lowest earlier level, i.e. a fresh
#   pump head), delivered flow as a deficit against the recipe's flow
N_RESIDUALS = 3
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
        kinds = ["fit", "fit", "fit"]
    else:
        feeding = pl.col("feeding_readings") >= 0.5 * pl.col("n_readings")
        amps = pl.when(feeding).then(pl.col("feed_pump_current_feeding"))
        flow = pl.when(feeding).then(pl.col("feed_rate_feeding"))
        none = pl.lit(None, pl.Float64)
        pairs = [(none, amps), (none, flow), (none, amps)]
        kinds = ["min", "flow", "level"]
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
    for i in range(N_RESIDUALS):
        x, y, k = pl.col(f"_x{i}"), pl.col(f"_y{i}"), pl.col(f"_k{i}")
        prior_min = y.cum_min().forward_fill().shift(1).over("equipment_id")
        n_prior = (y.is_not_null().cast(pl.Int64).cum_sum() - y.is_not_null().cast(pl.Int64)).over(
            "equipment_id"
        )
        resid = (
            pl.when(k == "fit")
            .then(_expanding_fit_resid(x, y))
            .when(k == "min")
            .then(pl.when(n_prior >= RESID_MIN_HOURS).then(y - prior_min))
            .when(k == "flow")
            .then(1.0 - y / pl.col("_ref"))
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
    t = _hours(pl.col("hour_ts").dt.replace_time_zone(None) - pl.lit(_EPOCH))
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
        hours_since_maintenance=_hours(pl.col("hour_ts") - pl.col("maint_ts")),
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
        for i in range(3)
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


# --------------------------------------------------------------------------- (b) batch x hour


def batch_hour_features(hourly: pl.DataFrame) -> pl.DataFrame:
    """One row per batch per elapsed hour: CPP means/std, OUR, CER, RQ, ``q_o2``,
    cumulative feed, volume, base and capacitance (last), stamped at the end of the hour."""
    keep = [
        "batch_id",
        "unit_id",
        "elapsed_h",
        "hour_ts",
        "phase",
        "n_readings",
        *[f"{t}_mean" for t in PROCESS_TAGS],
        *[f"{t}_std" for t in CPP_TAGS],
        "our_mmol_l_h_mean",
        "cer_mmol_l_h_mean",
        "rq_mean",
        "q_o2",
        "feed_l_hour",
        "cum_feed_l",
        *[f"{t}_last" for t in LAST_TAGS],
    ]
    return hourly.select(keep)


# --------------------------------------------------------------------------- (c) batch


def _horizon_cut(horizon: str) -> float | None:
    if horizon not in HORIZONS_H:
        raise ValueError(f"horizon {horizon!r} unknown; use one of {sorted(HORIZONS_H)}")
    return HORIZONS_H[horizon]


def batch_features(
    inputs: MlInputs,
    horizon: str,
    batch_ids: Sequence[str] | None = None,
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """One row per batch with what is known at the horizon (day3 = 72 h after inoculation,
    day7 = 168 h, harvest = the batch end; never later than ``as_of`` when given).

    Columns: ``batch_id, unit_id, start_ts, as_of_ts, elapsed_h``; ``recipe_<id>`` one-hot
    and ``recipe_version``; lot history (``lot_<kind>_n_prior``, ``lot_<kind>_prior_titer``:
    batches that used the same media/feed lot and ended before ``as_of_ts``, and their mean
    final titer, from MES + LIMS); process summaries over the window (``w_*``: means of CPPs,
    OUR/CER, q_o2; ``last24_*``: means over the last 24 h; ``cum_feed_l``, ``volume_l``,
    ``base_addition_ml``, ``capacitance`` last and max); in-process LIMS results sampled by
    then (``lims_last_<analyte>``, ``lims_max_<analyte>``, ``lims_slope_<analyte>`` per day
    over the last two samples).
    """
    cut_h = _horizon_cut(horizon)
    b = inputs.batches
    if batch_ids is not None:
        b = b.filter(pl.col("batch_id").is_in(list(batch_ids)))
    now = pl.lit(as_of, pl.Datetime("us", "UTC")) if as_of is not None else None
    if cut_h is None:
        cut = pl.col("end_ts") if now is None else pl.coalesce(pl.col("end_ts"), now)
    else:
        planned = pl.col("start_ts") + pl.duration(hours=cut_h)
        cut = pl.min_horizontal(planned, pl.col("end_ts").fill_null(planned))
    as_of_expr = cut if now is None else pl.min_horizontal(cut, now)
    base = b.select(
        "batch_id",
        "unit_id",
        "start_ts",
        "end_ts",
        "recipe_id",
        "recipe_version",
        "media_lot",
        "feed_lot",
        as_of_ts=as_of_expr.cast(pl.Datetime("us", "UTC")),
    ).filter(pl.col("as_of_ts").is_not_null())
    base = base.with_columns(
        elapsed_h=_hours(pl.col("as_of_ts") - pl.col("start_ts")),
    )

    # process summaries from the hourly rollup, hours ending by as_of
    h = inputs.hourly.join(
        base.select("batch_id", "as_of_ts", "elapsed_h"), on="batch_id", suffix="_cut"
    )
    h = h.filter(pl.col("hour_ts") <= pl.col("as_of_ts"))
    proc_means = [
        *[f"{t}_mean" for t in CPP_TAGS],
        "our_mmol_l_h_mean",
        "cer_mmol_l_h_mean",
        "rq_mean",
        "q_o2",
        "feed_rate_ml_h_mean",
        "o2_flow_slpm_mean",
        "air_flow_slpm_mean",
        "offgas_co2_pct_mean",
        "jacket_temperature_c_mean",
    ]
    last24 = pl.col("elapsed_h") > pl.col("elapsed_h_cut") - 24.0
    proc = h.group_by("batch_id").agg(
        pl.len().alias("n_hours"),
        *[pl.col(c).mean().alias(f"w_{c}") for c in proc_means],
        *[pl.col(c).filter(last24).mean().alias(f"last24_{c}") for c in proc_means],
        *[pl.col(f"{t}_std").mean().alias(f"w_{t}_std") for t in CPP_TAGS],
        pl.col("our_mmol_l_h_mean").max().alias("w_our_max"),
        pl.col("cum_feed_l").max().alias("cum_feed_l"),
        pl.col("volume_l_last").drop_nulls().last().alias("volume_l_last"),
        pl.col("base_addition_ml_last").drop_nulls().last().alias("base_addition_ml_last"),
        pl.col("capacitance_pf_cm_last").drop_nulls().last().alias("capacitance_last"),
        pl.col("capacitance_pf_cm_mean").max().alias("capacitance_max"),
        (pl.col("dissolved_oxygen_pct_mean") < 20).sum().alias("hours_do_below_20"),
        (pl.col("temperature_c_mean") > 37.5).sum().alias("hours_temp_above_37_5"),
    )

    # in-process LIMS known by as_of
    lab = inputs.lab_results.filter(
        (pl.col("sample_type") == "in_process") & pl.col("analyte").is_in(LIMS_ANALYTES)
    ).join(base.select("batch_id", "as_of_ts", "start_ts"), on="batch_id")
    lab = lab.filter(pl.col("sample_ts") <= pl.col("as_of_ts")).sort(
        "batch_id", "analyte", "sample_ts"
    )
    lab = lab.with_columns(day=_hours(pl.col("sample_ts") - pl.col("start_ts")) / 24.0)
    lims = lab.group_by("batch_id", "analyte").agg(
        pl.col("value").last().alias("last"),
        pl.col("value").max().alias("max"),
        (
            (pl.col("value").last() - pl.col("value").shift(1).last())
            / (pl.col("day").last() - pl.col("day").shift(1).last())
        ).alias("slope"),
    )
    wide = None
    for stat in ("last", "max", "slope"):
        p = lims.pivot(on="analyte", index="batch_id", values=stat)
        p = p.rename({c: f"lims_{stat}_{c}" for c in p.columns if c != "batch_id"})
        wide = p if wide is None else wide.join(p, on="batch_id", how="full", coalesce=True)
    expected_lims = [f"lims_{s}_{a}" for s in ("last", "max", "slope") for a in LIMS_ANALYTES]

    # lot history: same lot, batches ended before as_of, their final titer (release LIMS)
    titer = (
        inputs.lab_results.filter(
            (pl.col("sample_type") == "release") & (pl.col("analyte") == "titer_g_l")
        )
        .group_by("batch_id")
        .agg(
            pl.col("value").last().alias("prior_titer"), pl.col("sample_ts").max().alias("titer_ts")
        )
    )
    done = (
        inputs.batches.filter(pl.col("status") == "complete")
        .select(
            pl.col("batch_id").alias("prior_batch"),
            "media_lot",
            "feed_lot",
            pl.col("end_ts").alias("prior_end"),
        )
        .join(titer.rename({"batch_id": "prior_batch"}), on="prior_batch", how="inner")
    )
    lot_frames = []
    for kind in ("media_lot", "feed_lot"):
        j = base.select("batch_id", "as_of_ts", kind).join(
            done.select("prior_batch", kind, "titer_ts", "prior_titer"), on=kind
        )
        j = j.filter(
            (pl.col("titer_ts") <= pl.col("as_of_ts"))
            & (pl.col("prior_batch") != pl.col("batch_id"))
        )
        short = kind.split("_")[0]
        lot_frames.append(
            j.group_by("batch_id").agg(
                pl.len().cast(pl.Float64).alias(f"lot_{short}_n_prior"),
                pl.col("prior_titer").mean().alias(f"lot_{short}_prior_titer"),
            )
        )

    traj = _yield_trajectory_features(inputs, base, h, lab)
    out = base.join(proc, on="batch_id", how="left").join(traj, on="batch_id", how="left")
    if wide is not None:
        out = out.join(wide, on="batch_id", how="left")
    for c in expected_lims:
        if c not in out.columns:
            out = out.with_columns(pl.lit(None, pl.Float64).alias(c))
    for lf in lot_frames:
        out = out.join(lf, on="batch_id", how="left")
    out = out.with_columns(
        pl.col("^lot_.*_n_prior$").fill_null(0.0),
        recipe_version=pl.col("recipe_version").cast(pl.Float64),
    )
    recipes = sorted(inputs.batches["recipe_id"].drop_nulls().unique().to_list())
    out = out.with_columns(
        [(pl.col("recipe_id") == r).cast(pl.Float64).alias(f"recipe_{r}") for r in recipes]
    )
    out = out.drop("media_lot", "feed_lot", "end_ts")
    # a fixed column order (pivots order columns by first appearance): models index by name,
    # but a stable table schema keeps the feature store's Delta versions comparable
    others = [c for c in out.columns if not c.startswith("lims_")]
    lot_at = next(i for i, c in enumerate(others) if c.startswith("lot_"))
    order = others[:lot_at] + expected_lims + others[lot_at:]
    return out.select(order).sort("start_ts", "batch_id")


TITER_FIT_SAMPLES = 8  # in-process titer samples in the time-trend fit (the latest ones)


def _harvest_time(batches: pl.DataFrame, base: pl.DataFrame) -> pl.DataFrame:
    """Per batch the expected harvest time known at ``as_of_ts``: the median duration of
    the same recipe's completed batches that ended by then (MES), after the start; the
    actual end once the batch has ended by ``as_of_ts``."""
    done = batches.filter(pl.col("status") == "complete").select(
        "recipe_id",
        pl.col("end_ts").alias("_prior_end"),
        _dur_h=_hours(pl.col("end_ts") - pl.col("start_ts")),
    )
    med = (
        base.select("batch_id", "recipe_id", "as_of_ts")
        .join(done, on="recipe_id")
        .filter(pl.col("_prior_end") <= pl.col("as_of_ts"))
        .group_by("batch_id")
        .agg(pl.col("_dur_h").median().alias("_dur_h"))
    )
    return (
        base.select("batch_id", "start_ts", "end_ts", "as_of_ts", "elapsed_h")
        .join(med, on="batch_id", how="left")
        .with_columns(
            expected_duration_h=pl.when(
                pl.col("end_ts").is_not_null() & (pl.col("end_ts") <= pl.col("as_of_ts"))
            )
            .then(pl.col("elapsed_h"))
            .otherwise(pl.max_horizontal(pl.col("_dur_h"), pl.col("elapsed_h")))
        )
        .select("batch_id", "expected_duration_h")
    )


def _yield_trajectory_features(
    inputs: MlInputs, base: pl.DataFrame, h: pl.DataFrame, lab: pl.DataFrame
) -> pl.DataFrame:
    """What a process engineer computes from the in-process data known at ``as_of_ts``
    (``h``: hourly rows ending by then; ``lab``: in-process LIMS sampled by then, with
    ``day`` since inoculation):

    * ``ivcd_lims`` (1e6 cells x day / mL): trapezoid integral of the LIMS viable cell
      density over its samples; ``ivcd_cap`` (pF/cm x day): integral of the hourly
      capacitance (viable biovolume) up to ``as_of``;
    * ``qp_lims``, ``qp_cap``: cell-specific productivity, latest titer / IVCD;
    * ``titer_fit_now``, ``titer_fit_slope_d`` and ``titer_fit_harvest``: least-squares line
      through the latest ``TITER_FIT_SAMPLES`` titer samples against time, its value at
      ``as_of``, its slope (g/L/day) and its extrapolation to the expected harvest
      (``expected_duration_h``: the recipe's median duration of batches completed by then);
    * ``qp_cap_fit`` and ``titer_cap_harvest``: titer = q x capacitance IVCD (product
      grows with the integral of viable cells) fitted through the origin over every titer
      sample so far, and q x the IVCD expected at harvest (current capacitance held);
      ``mass_fit_harvest_kg`` / ``mass_cap_harvest_kg``: those titers x the latest volume.
    """
    dur = _harvest_time(inputs.batches, base)
    cap = h.sort("batch_id", "hour_ts").select(
        "batch_id",
        "hour_ts",
        _ivcd_cap=(pl.col("capacitance_pf_cm_mean").fill_null(0.0) / 24.0)
        .cum_sum()
        .over("batch_id"),
    )
    ivcd_cap = cap.group_by("batch_id").agg(pl.col("_ivcd_cap").last().alias("ivcd_cap"))
    vcd = (
        lab.filter(pl.col("analyte") == "viable_cell_density_e6_cells_ml")
        .sort("batch_id", "sample_ts")
        .group_by("batch_id", maintain_order=True)
        .agg(
            ((pl.col("value") + pl.col("value").shift(1)) / 2.0 * pl.col("day").diff())
            .sum()
            .alias("ivcd_lims")
        )
    )
    tit = (
        lab.filter(pl.col("analyte") == "titer_g_l")
        .select("batch_id", "sample_ts", "day", "value")
        .sort("batch_id", "sample_ts")
    )
    tit = tit.join_asof(
        cap,
        left_on="sample_ts",
        right_on="hour_ts",
        by="batch_id",
        strategy="backward",
        check_sortedness=False,
    ).with_columns(pl.col("_ivcd_cap").fill_null(0.0))
    k = TITER_FIT_SAMPLES

    def _fit(x: str) -> list[pl.Expr]:
        xs, ys = pl.col(x).tail(k), pl.col("value").tail(k)
        sxx = ((xs - xs.mean()) ** 2).sum()
        b = pl.when(sxx > 1e-12).then(((xs - xs.mean()) * (ys - ys.mean())).sum() / sxx)
        return [b.alias(f"_b_{x}"), (ys.mean() - b * xs.mean()).alias(f"_a_{x}")]

    ic, v = pl.col("_ivcd_cap"), pl.col("value")
    fits = tit.group_by("batch_id").agg(
        pl.col("value").last().alias("_titer_last"),
        pl.len().alias("_n_titer"),
        *_fit("day"),
        # titer = q x IVCD (no product without cells): least squares through the origin
        # over every sample so far; late samples, with the largest IVCD, weigh the most
        pl.when((ic * ic).sum() > 1e-9).then((ic * v).sum() / (ic * ic).sum()).alias("_q_cap"),
    )
    last_cap = h.group_by("batch_id").agg(
        pl.col("capacitance_pf_cm_last").drop_nulls().last().alias("_cap_last"),
        pl.col("volume_l_last").drop_nulls().last().alias("_vol_last"),
    )
    days_now = pl.col("elapsed_h") / 24.0
    days_left = (pl.col("expected_duration_h") - pl.col("elapsed_h")).clip(0.0, None) / 24.0
    ok = pl.col("_n_titer") >= 2
    out = (
        base.select("batch_id", "elapsed_h")
        .join(dur, on="batch_id", how="left")
        .join(ivcd_cap, on="batch_id", how="left")
        .join(vcd, on="batch_id", how="left")
        .join(fits, on="batch_id", how="left")
        .join(last_cap, on="batch_id", how="left")
        .with_columns(
            qp_lims=pl.when(pl.col("ivcd_lims") > 0.1).then(
                pl.col("_titer_last") / pl.col("ivcd_lims")
            ),
            qp_cap=pl.when(pl.col("ivcd_cap") > 0.1).then(
                pl.col("_titer_last") / pl.col("ivcd_cap")
            ),
            titer_fit_now=pl.when(ok).then(pl.col("_a_day") + pl.col("_b_day") * days_now),
            titer_fit_slope_d=pl.when(ok).then(pl.col("_b_day")),
            titer_fit_harvest=pl.when(ok).then(
                pl.col("_a_day") + pl.col("_b_day") * pl.col("expected_duration_h") / 24.0
            ),
            qp_cap_fit=pl.when(ok).then(pl.col("_q_cap")),
            titer_cap_harvest=pl.when(ok).then(
                pl.col("_q_cap")
                * (pl.col("ivcd_cap") + pl.col("_cap_last").fill_null(0.0) * days_left)
            ),
        )
        .with_columns(
            mass_fit_harvest_kg=pl.col("titer_fit_harvest") * pl.col("_vol_last") / 1000.0,
            mass_cap_harvest_kg=pl.col("titer_cap_harvest") * pl.col("_vol_last") / 1000.0,
        )
    )
    return out.select("batch_id", *YIELD_TRAJECTORY_FEATURES)


#: the yield-trajectory columns of :func:`batch_features` (``_yield_trajectory_features``)
YIELD_TRAJECTORY_FEATURES = (
    "expected_duration_h",
    "ivcd_lims",
    "ivcd_cap",
    "qp_lims",
    "qp_cap",
    "qp_cap_fit",
    "titer_fit_now",
    "titer_fit_slope_d",
    "titer_fit_harvest",
    "titer_cap_harvest",
    "mass_fit_harvest_kg",
    "mass_cap_harvest_kg",
)


def batch_feature_columns(df: pl.DataFrame) -> list[str]:
    """The model inputs among :func:`batch_features` columns (ids and times excluded)."""
    skip = {"batch_id", "unit_id", "start_ts", "as_of_ts", "recipe_id"}
    return [c for c in df.columns if c not in skip and df.schema[c].is_numeric()]


def nan_to_null(df: pl.DataFrame) -> pl.DataFrame:
    """NaN -> null in float columns (so every model sees one kind of missing value)."""
    return df.with_columns(pl.col(pl.Float64).fill_nan(None))


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
