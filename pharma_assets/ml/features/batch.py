"""(c) Batch features at a forecast horizon (day 3, day 7, harvest): recipe, lot history,
process summaries, in-process LIMS and yield trajectories known by then."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from ..material_features import material_features
from .common import hours
from .inputs import MlInputs
from .product_balance import product_balance_features
from .tags import CPP_TAGS, HORIZONS_H, LIMS_ANALYTES


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
        elapsed_h=hours(pl.col("as_of_ts") - pl.col("start_ts")),
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
    lab = lab.with_columns(day=hours(pl.col("sample_ts") - pl.col("start_ts")) / 24.0)
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
    bal = product_balance_features(base, h, lab, traj)
    out = (
        base.join(proc, on="batch_id", how="left")
        .join(traj, on="batch_id", how="left")
        .join(bal, on="batch_id", how="left")
    )
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
    out = out.join(material_features(base, inputs.material_lots), on="batch_id", how="left").drop(
        "media_lot", "feed_lot", "end_ts"
    )
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
        _dur_h=hours(pl.col("end_ts") - pl.col("start_ts")),
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
