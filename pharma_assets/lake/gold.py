"""Gold: the tables people read (dashboards, models, QA), derived from silver aggregates.

Gold never rereads raw telemetry: it combines the per-file aggregates silver keeps
(``telemetry_stats``, ``excursion_segments``) with batches and lab results, so a refresh
costs in proportion to the number of batches, not the number of readings.

- ``cpp_excursions``: adjacent out-of-NOR segments joined into excursions with start, end,
  duration, peak, minutes outside PAR and severity (minor: outside NOR only; major:
  outside PAR; critical: outside PAR for at least ``CRITICAL_PAR_MINUTES``).
- ``batch_summary``: one row per batch (see docs/data_model.md for every column).
- ``unit_status``: the latest state of every unit.
- ``plant_kpis``: per ISO week of batch start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from . import silver
from .specs import CppSpec
from .storage import UTC_US, Lake

LAYER = "gold"
#: release_status of a batch QA has not decided yet
PENDING_RELEASE = "pending_review"
#: the QA decisions gold applies to batch_summary: one row per decided batch
RELEASE_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(),
    "release_status": pl.String(),
    "released_by": pl.String(),
    "released_at": UTC_US,
}
CRITICAL_PAR_MINUTES = 60.0
EXCURSION_SCHEMA = {
    "excursion_id": pl.String(),
    "batch_id": pl.String(),
    "unit_id": pl.String(),
    "tag": pl.String(),
    "phase": pl.String(),
    "start_ts": UTC_US,
    "end_ts": UTC_US,
    "duration_min": pl.Float64(),
    "minutes_outside_par": pl.Float64(),
    "peak_value": pl.Float64(),
    "direction": pl.String(),
    "target": pl.Float64(),
    "nor_lo": pl.Float64(),
    "nor_hi": pl.Float64(),
    "par_lo": pl.Float64(),
    "par_hi": pl.Float64(),
    "severity": pl.String(),
    "active": pl.Boolean(),
}


def excursions(
    segments: pl.DataFrame, batches: pl.DataFrame, last_ts: pl.DataFrame
) -> pl.DataFrame:
    """Join segments of the same batch and tag that are at most two sample periods apart."""
    if segments.height == 0:
        return pl.DataFrame(schema=EXCURSION_SCHEMA)
    s = segments.sort("batch_id", "tag", "start_ts").with_columns(
        gap_s=(
            pl.col("start_ts") - pl.col("end_ts").shift(1).over("batch_id", "tag")
        ).dt.total_seconds()
    )
    s = s.with_columns(
        new=(pl.col("gap_s").is_null() | (pl.col("gap_s") > 2 * pl.col("sample_period_s")))
    ).with_columns(episode=pl.col("new").cum_sum().over("batch_id", "tag"))
    s = s.with_columns(dev=(pl.col("peak_value") - pl.col("target")).abs())
    ex = s.group_by("batch_id", "unit_id", "tag", "episode").agg(
        phase=pl.col("phase").first(),
        start_ts=pl.col("start_ts").min(),
        end_ts=pl.col("end_ts").max(),
        n_readings=pl.col("n_readings").sum(),
        period=pl.col("sample_period_s").median(),
        n_outside_par=pl.col("n_outside_par").sum(),
        peak_value=pl.col("peak_value").sort_by("dev").last(),
        target=pl.col("target").first(),
        nor_lo=pl.col("nor_lo").first(),
        nor_hi=pl.col("nor_hi").first(),
        par_lo=pl.col("par_lo").first(),
        par_hi=pl.col("par_hi").first(),
    )
    ex = (
        ex.with_columns(
            duration_min=(pl.col("end_ts") - pl.col("start_ts")).dt.total_seconds() / 60
            + pl.col("period") / 60,
            minutes_outside_par=pl.col("n_outside_par") * pl.col("period") / 60,
            direction=pl.when(pl.col("peak_value") > pl.col("target"))
            .then(pl.lit("high"))
            .otherwise(pl.lit("low")),
        )
        .with_columns(
            severity=pl.when(pl.col("minutes_outside_par") >= CRITICAL_PAR_MINUTES)
            .then(pl.lit("critical"))
            .when(pl.col("n_outside_par") > 0)
            .then(pl.lit("major"))
            .otherwise(pl.lit("minor"))
        )
        .join(batches.select("batch_id", "status"), on="batch_id", how="left")
        .join(last_ts, on=["batch_id", "tag"], how="left")
        .with_columns(
            active=(pl.col("status") == "running")
            & (pl.col("end_ts") >= pl.col("last_ts")).fill_null(False),
            excursion_id=pl.format(
                "{}-{}-{}",
                pl.col("batch_id"),
                pl.col("tag"),
                pl.col("start_ts").dt.strftime("%Y%m%dT%H%M%S"),
            ),
        )
    )
    return ex.select(list(EXCURSION_SCHEMA)).cast(EXCURSION_SCHEMA).sort("start_ts")  # type: ignore[arg-type]


def _cpk(stats: pl.DataFrame, spec: CppSpec) -> pl.DataFrame:
    """Cpk per batch and CPP over the spec's Cpk phases (``CppSpec.cpk_phase_names``: the
    production phase of a bioreactor; every phase of a class without one; the whole batch
    under a one-phase rule), each phase against its own PAR; a batch's Cpk is its lowest."""
    phases = list(spec.cpk_phase_names)
    rows = []
    for tag in spec.cpp_tags:
        for phase in phases:
            lim = spec.tags[tag].limits(phase)
            assert lim.par is not None
            rows.append({"tag": tag, "phase": phase, "lsl": lim.par[0], "usl": lim.par[1]})
    lim_df = pl.DataFrame(rows)
    agg = (
        stats.filter(pl.col("phase").is_in(phases))
        .group_by("batch_id", "tag", "phase")
        .agg(n=pl.col("n").sum(), s=pl.col("sum").sum(), ss=pl.col("sumsq").sum())
        .join(lim_df, on=["tag", "phase"], how="inner")
        .with_columns(mean=pl.col("s") / pl.col("n"))
        .with_columns(
            sd=((pl.col("ss") - pl.col("n") * pl.col("mean") ** 2) / (pl.col("n") - 1))
            .clip(0)
            .sqrt()
        )
        .with_columns(
            cpk=pl.when(pl.col("sd") > 0).then(
                pl.min_horizontal(pl.col("usl") - pl.col("mean"), pl.col("mean") - pl.col("lsl"))
                / (3 * pl.col("sd"))
            )
        )
    )
    return agg.group_by("batch_id", "tag").agg(pl.col("cpk").min())


def apply_release_decisions(summary: pl.DataFrame, decisions: pl.DataFrame | None) -> pl.DataFrame:
    """``batch_summary`` with QA's decisions: ``release_status`` (``released`` / ``rejected``
    / ``pending_review``), ``released_by`` and ``released_at``. ``decisions`` has the
    ``RELEASE_SCHEMA`` columns (``compliance.release.release_status_frame`` reads them from
    ``gxp/batch_release``); None means no decision yet."""
    d = pl.DataFrame(schema=RELEASE_SCHEMA) if decisions is None else decisions
    base = summary.drop([c for c in RELEASE_SCHEMA if c != "batch_id" and c in summary.columns])
    return base.join(d.select(list(RELEASE_SCHEMA)), on="batch_id", how="left").with_columns(
        pl.col("release_status").fill_null(PENDING_RELEASE)
    )


def build_gold(
    lake: Lake,
    spec: CppSpec,
    now: datetime | None = None,
    release_decisions: pl.DataFrame | None = None,
) -> dict[str, int]:
    """Rebuild the gold tables from silver; ``release_decisions`` are QA's decisions from
    ``gxp/batch_release`` (see :func:`apply_release_decisions`), passed in by the asset that
    declares that table as its input."""
    now = now or datetime.now(UTC)
    batches = lake.read(silver.LAYER, "batches")
    if batches is None:
        return {"batches": 0}
    batches = _current_phases(batches, lake.read(silver.LAYER, "batch_phases"))
    stats = lake.read(silver.LAYER, "telemetry_stats")
    segs = lake.read(silver.LAYER, "excursion_segments")
    labs = lake.read(silver.LAYER, "lab_results")
    stats = (
        stats
        if stats is not None
        else pl.DataFrame(
            schema={
                "batch_id": pl.String,
                "unit_id": pl.String,
                "tag": pl.String,
                "phase": pl.String,
                "n": pl.UInt32,
                "sum": pl.Float64,
                "sumsq": pl.Float64,
                "min": pl.Float64,
                "max": pl.Float64,
                "first_ts": UTC_US,
                "last_ts": UTC_US,
                "last_value": pl.Float64,
            }
        )
    )
    last = (
        stats.sort("last_ts")
        .group_by("batch_id", "tag")
        .agg(last_ts=pl.col("last_ts").last(), last_value=pl.col("last_value").last())
    )
    ex = excursions(
        segs if segs is not None else pl.DataFrame(schema=silver.SEGMENT_SCHEMA),
        batches,
        last.select("batch_id", "tag", "last_ts"),
    )
    lake.overwrite(LAYER, "cpp_excursions", ex)
    summary = batch_summary(batches, stats, ex, labs, last, spec)
    summary = apply_release_decisions(summary, release_decisions)
    lake.overwrite(LAYER, "batch_summary", summary)
    lake.overwrite(LAYER, "unit_status", unit_status(batches, last, ex, spec, now))
    kpis = plant_kpis(summary)
    lake.overwrite(LAYER, "plant_kpis", kpis)
    return {
        "batches": summary.height,
        "excursions": ex.height,
        "weeks": kpis.height,
        "completed": int((summary["status"] == "complete").sum()),
    }


def batch_summary(
    batches: pl.DataFrame,
    stats: pl.DataFrame,
    ex: pl.DataFrame,
    labs: pl.DataFrame | None,
    last: pl.DataFrame,
    spec: CppSpec,
) -> pl.DataFrame:
    s = batches.select(
        "batch_id",
        "site_id",
        "unit_id",
        "product",
        "recipe_id",
        "recipe_version",
        "start_ts",
        "end_ts",
        "status",
        "end_reason",
        "media_lot",
        "feed_lot",
        "inoculum_lot",
        "base_lot",
        "material_lots",
        duration_h=(pl.col("end_ts") - pl.col("start_ts")).dt.total_seconds() / 3600,
    )
    vol = last.filter(pl.col("tag") == "volume_l").select(
        "batch_id", harvest_volume_l=pl.col("last_value")
    )
    s = s.join(vol, on="batch_id", how="left")
    if labs is not None and labs.height:
        ip = labs.filter(pl.col("sample_type") == "in_process")
        vcd = (
            ip.filter(pl.col("analyte") == "viable_cell_density_e6_cells_ml")
            .group_by("batch_id")
            .agg(peak_vcd_e6_cells_ml=pl.col("value").max())
        )
        ip_titer = (
            ip.filter(pl.col("analyte") == "titer_g_l")
            .sort("sample_ts")
            .group_by("batch_id")
            .agg(last_ip_titer=pl.col("value").last())
        )
        rel = labs.filter(pl.col("sample_type") == "release")
        wide = rel.pivot(on="analyte", index="batch_id", values="value", aggregate_function="last")
        wide = wide.rename({c: f"cqa_{c}" for c in wide.columns if c != "batch_id"})
        ok = rel.group_by("batch_id").agg(
            cqa_results=pl.len(), cqa_out_of_spec=(~pl.col("within_spec").fill_null(False)).sum()
        )
        s = s.join(vcd, on="batch_id", how="left").join(ip_titer, on="batch_id", how="left")
        s = s.join(wide, on="batch_id", how="left").join(ok, on="batch_id", how="left")
    reported = set()
    if labs is not None and labs.height:
        rel_all = labs.filter(pl.col("sample_type") == "release")
        reported = set(rel_all["analyte"].unique().to_list())
    required = spec.required_release_assays(reported)
    for a in [*spec.lab.release, *[r for r in required if r not in spec.lab.release]]:
        if f"cqa_{a}" not in s.columns:
            s = s.with_columns(pl.lit(None, pl.Float64).alias(f"cqa_{a}"))
    for c, t in (
        ("peak_vcd_e6_cells_ml", pl.Float64),
        ("last_ip_titer", pl.Float64),
        ("cqa_results", pl.UInt32),
        ("cqa_out_of_spec", pl.UInt32),
    ):
        if c not in s.columns:
            s = s.with_columns(pl.lit(None, t).alias(c))
    s = s.with_columns(
        # a spec without a titer release assay (another unit class) has no cqa_titer_g_l
        final_titer_g_l=pl.coalesce(
            *[c for c in ("cqa_titer_g_l", "last_ip_titer") if c in s.columns]
        ),
    ).with_columns(product_mass_kg=pl.col("final_titer_g_l") * pl.col("harvest_volume_l") / 1000)
    # excursions per CPP
    counts = ex.group_by("batch_id", "tag").agg(
        n=pl.len(), m=pl.col("duration_min").sum(), major=(pl.col("severity") != "minor").sum()
    )
    for tag in spec.cpp_tags:
        cnt = counts.filter(pl.col("tag") == tag).select(
            "batch_id",
            pl.col("n").alias(f"exc_count_{tag}"),
            pl.col("m").alias(f"exc_minutes_{tag}"),
        )
        s = s.join(cnt, on="batch_id", how="left").with_columns(
            pl.col(f"exc_count_{tag}").fill_null(0), pl.col(f"exc_minutes_{tag}").fill_null(0.0)
        )
    tot = counts.group_by("batch_id").agg(
        excursions_total=pl.col("n").sum(), excursions_major=pl.col("major").sum()
    )
    s = s.join(tot, on="batch_id", how="left").with_columns(
        pl.col("excursions_total").fill_null(0), pl.col("excursions_major").fill_null(0)
    )
    cpk = _cpk(stats, spec)
    for tag in spec.cpp_tags:
        s = s.join(
            cpk.filter(pl.col("tag") == tag).select("batch_id", pl.col("cpk").alias(f"cpk_{tag}")),
            on="batch_id",
            how="left",
        )
    s = s.with_columns(
        right_first_time=(pl.col("status") == "complete")
        & pl.all_horizontal(*[pl.col(f"cqa_{a}").is_not_null() for a in required])
        & (pl.col("cqa_out_of_spec").fill_null(0) == 0)
        & (pl.col("excursions_major") <= spec.right_first_time.max_major_excursions),
        release_status=pl.lit(PENDING_RELEASE),
        spec_version=pl.lit(spec.version),
    ).drop("last_ip_titer")
    return s.sort("start_ts")


def _current_phases(batches: pl.DataFrame, phases: pl.DataFrame | None) -> pl.DataFrame:
    """Each batch's current phase from ``silver/batch_phases``: phases found by a tag
    crossing are recorded there as silver reads the telemetry, after the batches table was
    built."""
    if phases is None or phases.height == 0:
        return batches
    cur = (
        phases.sort("start_ts")
        .group_by("batch_id")
        .agg(_phase=pl.col("phase").last(), _start=pl.col("start_ts").last())
    )
    return (
        batches.join(cur, on="batch_id", how="left")
        .with_columns(
            current_phase=pl.coalesce("_phase", "current_phase"),
            current_phase_start=pl.coalesce("_start", "current_phase_start"),
        )
        .drop("_phase", "_start")
    )


def unit_status(
    batches: pl.DataFrame, last: pl.DataFrame, ex: pl.DataFrame, spec: CppSpec, now: datetime
) -> pl.DataFrame:
    latest = batches.sort("start_ts").group_by("unit_id").agg(pl.all().last())
    cpp_last = last.filter(pl.col("tag").is_in(spec.cpp_tags))
    wide = (
        cpp_last.pivot(on="tag", index="batch_id", values="last_value", aggregate_function="last")
        if cpp_last.height
        else pl.DataFrame(schema={"batch_id": pl.String})
    )
    wide = wide.rename({c: f"last_{c}" for c in wide.columns if c != "batch_id"})
    last_reading = last.group_by("batch_id").agg(last_reading_ts=pl.col("last_ts").max())
    active = (
        ex.filter(pl.col("active"))
        .group_by("batch_id")
        .agg(
            active_excursions=pl.len(),
            active_excursion_tags=pl.col("tag").unique().sort().str.join(","),
        )
    )
    out = (
        latest.join(wide, on="batch_id", how="left")
        .join(last_reading, on="batch_id", how="left")
        .join(active, on="batch_id", how="left")
        .with_columns(
            state=pl.when(pl.col("status") == "running")
            .then(pl.lit("running"))
            .otherwise(pl.lit("idle")),
            current_batch_id=pl.when(pl.col("status") == "running").then(pl.col("batch_id")),
            phase=pl.when(pl.col("status") == "running").then(pl.col("current_phase")),
            day=pl.when(pl.col("status") == "running").then(
                (
                    pl.coalesce("last_reading_ts", pl.lit(now, UTC_US)) - pl.col("start_ts")
                ).dt.total_seconds()
                / 86400
            ),
            active_excursions=pl.col("active_excursions").fill_null(0),
            updated_at=pl.lit(now, UTC_US),
        )
        .rename({"batch_id": "last_batch_id", "status": "last_batch_status"})
    )
    for tag in spec.cpp_tags:
        if f"last_{tag}" not in out.columns:
            out = out.with_columns(pl.lit(None, pl.Float64).alias(f"last_{tag}"))
    cols = [
        "unit_id",
        "state",
        "current_batch_id",
        "phase",
        "day",
        "last_batch_id",
        "last_batch_status",
        "recipe_id",
        "start_ts",
        "last_reading_ts",
        *[f"last_{t}" for t in spec.cpp_tags],
        "active_excursions",
        "active_excursion_tags",
        "updated_at",
    ]
    return out.select(cols).sort("unit_id")


def plant_kpis(summary: pl.DataFrame) -> pl.DataFrame:
    done = pl.col("status") == "complete"
    return (
        summary.with_columns(week_start=pl.col("start_ts").dt.truncate("1w").dt.date())
        .group_by("week_start")
        .agg(
            batches_started=pl.len(),
            batches_completed=done.sum(),
            batches_aborted=(pl.col("status") == "aborted").sum(),
            batches_running=(pl.col("status") == "running").sum(),
            right_first_time_pct=pl.when(done.sum() > 0).then(
                100 * (pl.col("right_first_time") & done).sum() / done.sum()
            ),
            mean_titer_g_l=pl.col("final_titer_g_l").filter(done).mean(),
            mean_product_mass_kg=pl.col("product_mass_kg").filter(done).mean(),
        )
        .sort("week_start")
    )


def check_one_row_per_batch(lake: Lake) -> dict[str, Any]:
    summary = lake.read(LAYER, "batch_summary", ["batch_id", "status"])
    batches = lake.read(silver.LAYER, "batches", ["batch_id", "status"])
    if summary is None or batches is None:
        return {"passed": True, "batches": 0, "note": "no batches yet"}
    dup = summary.height - summary["batch_id"].n_unique()
    completed = batches.filter(pl.col("status") == "complete")
    missing = completed.join(summary, on="batch_id", how="anti").height
    return {
        "passed": dup == 0 and missing == 0 and summary.height == batches.height,
        "gold_rows": summary.height,
        "silver_batches": batches.height,
        "completed_batches": completed.height,
        "duplicate_rows": dup,
        "completed_missing": missing,
    }


def check_freshness(lake: Lake, max_age_h: float, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    us = lake.read(LAYER, "unit_status")
    if us is None:
        return {"passed": True, "running_units": 0}
    running = us.filter(pl.col("state") == "running")
    age = running.with_columns(
        age_h=(pl.lit(now, UTC_US) - pl.col("last_reading_ts")).dt.total_seconds() / 3600
    )
    stale = age.filter(pl.col("age_h").is_null() | (pl.col("age_h") > max_age_h))
    max_age = age["age_h"].fill_null(0.0).max()
    return {
        "passed": stale.height == 0,
        "running_units": running.height,
        "stale_units": stale["unit_id"].to_list(),
        "max_age_h": float(max_age) if isinstance(max_age, int | float) else 0.0,
        "threshold_h": max_age_h,
    }
