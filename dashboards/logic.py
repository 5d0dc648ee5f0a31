"""What the dashboard pages show, computed from lake tables: plain polars, no Streamlit.

Every number a page displays comes from a function here, so tests can compute the same
number independently from the fixture tables and compare, and the functions can be reused
outside Streamlit (reports, notebooks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from pharma_assets.lake.specs import CppSpec

#: plant units: display columns of the overview table (from gold/unit_status)
OVERVIEW_COLUMNS = (
    "unit_id",
    "state",
    "current_batch_id",
    "phase",
    "day",
    "active_excursions",
    "active_excursion_tags",
    "active_alarms",
    "alarm_sources",
    "last_batch_id",
    "last_batch_status",
    "last_reading_ts",
)
#: most points one trajectory trace sends to the browser (minute data is averaged to fit)
MAX_TRACE_POINTS = 1500
#: offline (LIMS) analytes drawn on the chart of an online CPP (same quantity, same unit)
LAB_ON_CPP = {"ph": "ph_offline", "dissolved_co2_mmhg": "pco2_mmhg"}


# ----------------------------------------------------------------------------- overview
def running_units(unit_status: pl.DataFrame) -> int:
    """How many units have a running batch."""
    return int((unit_status["state"] == "running").sum())


def latest_per(df: pl.DataFrame, key: str | list[str], ts: str) -> pl.DataFrame:
    """The row with the largest ``ts`` for each ``key`` (ties: the last row written)."""
    if df.height == 0:
        return df
    return df.sort(ts).group_by(key, maintain_order=True).last()


def latest_per_lazy(lf: pl.LazyFrame, key: str, ts: str) -> pl.DataFrame:
    """``latest_per`` on a lazy scan: only the latest rows are materialised."""
    return lf.filter(pl.col(ts) == pl.col(ts).max().over(key)).collect().pipe(latest_per, key, ts)


def unit_alarms(
    unit_status: pl.DataFrame,
    equipment_latest: pl.DataFrame | None,
    contamination_latest: pl.DataFrame | None,
    mspc_latest: pl.DataFrame | None,
) -> pl.DataFrame:
    """Active alarms per unit: equipment items in alarm now, and for the running batch the
    latest contamination window and the latest MSPC hour when they are in alarm."""
    units = unit_status.select("unit_id", "current_batch_id")
    parts: list[pl.DataFrame] = []
    if equipment_latest is not None and equipment_latest.height:
        parts.append(
            equipment_latest.filter(pl.col("alarm")).select(
                "unit_id", source=pl.lit("equipment:") + pl.col("equipment_id")
            )
        )
    for df, label in ((contamination_latest, "contamination"), (mspc_latest, "mspc")):
        if df is not None and df.height:
            parts.append(
                df.filter(pl.col("alarm"))
                .join(units, left_on="batch_id", right_on="current_batch_id", how="inner")
                .select(pl.col("unit_id"), source=pl.lit(label))
            )
    if not parts:
        return units.select(
            "unit_id", active_alarms=pl.lit(0, pl.UInt32), alarm_sources=pl.lit(None, pl.String)
        )
    alarms = (
        pl.concat(parts)
        .group_by("unit_id")
        .agg(
            active_alarms=pl.len().cast(pl.UInt32),
            alarm_sources=pl.col("source").sort().str.join(", "),
        )
    )
    return (
        units.select("unit_id")
        .join(alarms, on="unit_id", how="left")
        .with_columns(pl.col("active_alarms").fill_null(0))
    )


def overview_table(unit_status: pl.DataFrame, alarms: pl.DataFrame) -> pl.DataFrame:
    """One row per unit: status, current batch, phase, day, active excursions and alarms."""
    t = unit_status.join(alarms, on="unit_id", how="left").with_columns(
        pl.col("day").round(2), pl.col("active_alarms").fill_null(0)
    )
    return t.select([c for c in OVERVIEW_COLUMNS if c in t.columns]).sort("unit_id")


@dataclass(frozen=True)
class PlantKpis:
    """Plant-level figures shown as metrics on the overview page."""

    units: int
    running_units: int
    batches: int
    completed: int
    aborted: int
    right_first_time_pct: float | None
    mean_titer_g_l: float | None


def plant_kpis(unit_status: pl.DataFrame, summary: pl.DataFrame) -> PlantKpis:
    """Totals over every batch in gold/batch_summary (RFT and titer over complete ones)."""
    done = summary.filter(pl.col("status") == "complete")
    rft_share = done["right_first_time"].cast(pl.Float64).mean()
    rft = 100 * float(rft_share) if isinstance(rft_share, int | float) else None
    titer = done["final_titer_g_l"].mean()
    return PlantKpis(
        units=unit_status.height,
        running_units=running_units(unit_status),
        batches=summary.height,
        completed=done.height,
        aborted=int((summary["status"] == "aborted").sum()),
        right_first_time_pct=rft,
        mean_titer_g_l=float(titer) if isinstance(titer, int | float) else None,
    )


def fmt(v: float | int | None, digits: int = 1, suffix: str = "", scale: float = 1.0) -> str:
    """A number for a metric tile (times ``scale``); an em dash when there is none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, int) and scale == 1.0:
        return f"{v}{suffix}"
    return f"{v * scale:.{digits}f}{suffix}"


def max_or_none(s: pl.Series) -> float | None:
    """Largest non-null value of a numeric series as a float, None when there is none."""
    m = s.cast(pl.Float64).max()
    return float(m) if isinstance(m, int | float) else None


# ----------------------------------------------------------------------------- trajectories
def downsample(timeline: pl.DataFrame, columns: list[str], max_points: int) -> pl.DataFrame:
    """Average minute rows into equal buckets so a trace has at most ``max_points`` points."""
    tl = timeline.sort("elapsed_min")
    if tl.height <= max_points:
        return tl.select("elapsed_min", "phase", *columns).with_columns(
            elapsed_h=pl.col("elapsed_min") / 60
        )
    step = math.ceil(tl.height / max_points)
    return (
        tl.with_columns(_b=(pl.col("elapsed_min") // step))
        .group_by("_b", maintain_order=True)
        .agg(
            pl.col("elapsed_min").min(),
            pl.col("phase").first(),
            *[pl.col(c).mean() for c in columns],
        )
        .drop("_b")
        .with_columns(elapsed_h=pl.col("elapsed_min") / 60)
    )


def phase_spans(
    phases: pl.DataFrame, batch_start: datetime, last_h: float
) -> list[tuple[str, float, float]]:
    """(phase, start_h, end_h) in hours since inoculation; an open phase ends at ``last_h``."""
    out = []
    for r in phases.sort("start_ts").iter_rows(named=True):
        s = (r["start_ts"] - batch_start).total_seconds() / 3600
        e = last_h if r["end_ts"] is None else (r["end_ts"] - batch_start).total_seconds() / 3600
        out.append((r["phase"], s, max(s, e)))
    return out


def band_segments(
    spec: CppSpec, tag: str, spans: list[tuple[str, float, float]]
) -> list[dict[str, float | str]]:
    """NOR and PAR of a CPP over each phase span (limits may differ per phase)."""
    rows: list[dict[str, float | str]] = []
    for phase, s, e in spans:
        lim = spec.tags[tag].limits(phase)
        if lim.nor is None or lim.par is None:
            continue
        rows.append(
            {
                "phase": phase,
                "start_h": s,
                "end_h": e,
                "target": lim.target or math.nan,
                "nor_lo": lim.nor[0],
                "nor_hi": lim.nor[1],
                "par_lo": lim.par[0],
                "par_hi": lim.par[1],
            }
        )
    return rows


def excursion_spans(excursions: pl.DataFrame, tag: str, batch_start: datetime) -> pl.DataFrame:
    """Excursions of one tag as hour spans since inoculation, for highlighting."""
    return excursions.filter(pl.col("tag") == tag).with_columns(
        start_h=(pl.col("start_ts") - pl.lit(batch_start)).dt.total_seconds() / 3600,
        end_h=(pl.col("end_ts") - pl.lit(batch_start)).dt.total_seconds() / 3600,
    )


def lab_points(labs: pl.DataFrame, analyte: str, batch_start: datetime) -> pl.DataFrame:
    """In-process results of one analyte with hours since inoculation."""
    return (
        labs.filter((pl.col("analyte") == analyte) & (pl.col("sample_type") == "in_process"))
        .with_columns(
            elapsed_h=(pl.col("sample_ts") - pl.lit(batch_start)).dt.total_seconds() / 3600
        )
        .sort("elapsed_h")
    )


# ----------------------------------------------------------------------------- quality
def control_limits(values: pl.Series) -> tuple[float, float, float] | None:
    """(mean, mean - 3 sd, mean + 3 sd) of the non-null values, sd with ddof 1.

    An individuals chart across batches: the limits describe batch-to-batch variation.
    None when fewer than two values exist.
    """
    v = values.drop_nulls().drop_nans() if values.dtype.is_float() else values.drop_nulls()
    if v.len() < 2:
        return None
    m, sd = float(v.mean()), float(v.std())  # type: ignore[arg-type]
    return m, m - 3 * sd, m + 3 * sd


def control_chart(
    summary: pl.DataFrame, column: str
) -> tuple[pl.DataFrame, tuple[float, float, float] | None]:
    """Points (complete batches in start order) and their limits, with out-of-limit flags."""
    pts = (
        summary.filter(pl.col("status") == "complete")
        .sort("start_ts")
        .select("batch_id", "unit_id", "start_ts", pl.col(column).cast(pl.Float64).alias("value"))
        .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
    )
    lim = control_limits(pts["value"])
    if lim is None:
        return pts.with_columns(out_of_control=pl.lit(False)), None
    return pts.with_columns(
        out_of_control=(pl.col("value") < lim[1]) | (pl.col("value") > lim[2])
    ), lim


def cpk_per_cpp(summary: pl.DataFrame, spec: CppSpec) -> pl.DataFrame:
    """Per CPP: production-phase PAR, batches with a Cpk, mean, min and latest batch Cpk.

    The per-batch Cpk comes from gold/batch_summary (production readings vs production PAR);
    only complete batches count.
    """
    done = summary.filter(pl.col("status") == "complete").sort("start_ts")
    rows = []
    for tag in spec.cpp_tags:
        col = f"cpk_{tag}"
        v = (
            done[col].drop_nulls().drop_nans()
            if col in done.columns
            else pl.Series([], dtype=pl.Float64)
        )
        lim = spec.tags[tag].limits("production")
        assert lim.par is not None
        rows.append(
            {
                "cpp": tag,
                "uom": spec.tags[tag].uom,
                "lsl": lim.par[0],
                "usl": lim.par[1],
                "batches": v.len(),
                "mean_cpk": float(v.mean()) if v.len() else None,  # type: ignore[arg-type]
                "min_cpk": float(v.min()) if v.len() else None,  # type: ignore[arg-type]
                "latest_cpk": float(v[-1]) if v.len() else None,
            }
        )
    return pl.DataFrame(
        rows,
        schema_overrides={"mean_cpk": pl.Float64, "min_cpk": pl.Float64, "latest_cpk": pl.Float64},
    )


def cqa_long(
    summary: pl.DataFrame, spec: CppSpec, batch_ids: list[str] | None = None
) -> pl.DataFrame:
    """Release CQAs as rows (batch, CQA, value, unit, spec limits, within spec)."""
    s = summary if batch_ids is None else summary.filter(pl.col("batch_id").is_in(batch_ids))
    rows = []
    for r in s.sort("start_ts").iter_rows(named=True):
        for a, ls in spec.lab.release.items():
            v = r.get(f"cqa_{a}")
            lo, hi = ls.spec if ls.spec else (None, None)
            ok = None if v is None else ((lo is None or v >= lo) and (hi is None or v <= hi))
            rows.append(
                {
                    "batch_id": r["batch_id"],
                    "cqa": a,
                    "value": v,
                    "uom": ls.uom,
                    "spec_lo": lo,
                    "spec_hi": hi,
                    "within_spec": ok,
                }
            )
    return pl.DataFrame(
        rows,
        schema={
            "batch_id": pl.String,
            "cqa": pl.String,
            "value": pl.Float64,
            "uom": pl.String,
            "spec_lo": pl.Float64,
            "spec_hi": pl.Float64,
            "within_spec": pl.Boolean,
        },
    )


COMPARE_ROWS = (
    "unit_id",
    "status",
    "start_ts",
    "end_ts",
    "duration_h",
    "final_titer_g_l",
    "product_mass_kg",
    "peak_vcd_e6_cells_ml",
    "harvest_volume_l",
    "excursions_total",
    "excursions_major",
    "right_first_time",
    "cqa_out_of_spec",
)
LOT_COLUMNS = ("batch_id", "unit_id", "media_lot", "feed_lot", "inoculum_lot", "base_lot")


def compare_batches(summary: pl.DataFrame, batch_ids: list[str], spec: CppSpec) -> pl.DataFrame:
    """Batches side by side: one row per attribute, one column per batch (values as text)."""
    cols = [
        *COMPARE_ROWS,
        *[f"cqa_{a}" for a in spec.lab.release],
        *[f"cpk_{t}" for t in spec.cpp_tags],
    ]
    s = summary.filter(pl.col("batch_id").is_in(batch_ids))
    order = [b for b in batch_ids if b in s["batch_id"].to_list()]
    out: dict[str, list[str]] = {"attribute": [c for c in cols if c in s.columns]}
    for b in order:
        r = s.filter(pl.col("batch_id") == b).row(0, named=True)
        out[b] = [_txt(r[c]) for c in out["attribute"]]
    return pl.DataFrame(out)


def _txt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def material_lots(summary: pl.DataFrame, batch_ids: list[str]) -> pl.DataFrame:
    """Raw-material lots of each chosen batch."""
    return summary.filter(pl.col("batch_id").is_in(batch_ids)).select(LOT_COLUMNS).sort("batch_id")


# ----------------------------------------------------------------------------- equipment
def maintenance_schedule(equipment_latest: pl.DataFrame) -> pl.DataFrame:
    """Proposed maintenance, highest failure risk first.

    Action: in alarm (probability >= the model's threshold) -> "now: stop before next
    batch"; at least half the threshold -> "next turnaround"; else "routine (per plan)".
    """
    if equipment_latest.height == 0:
        return equipment_latest
    return (
        equipment_latest.sort(["failure_probability", "equipment_id"], descending=[True, False])
        .with_columns(
            priority=pl.int_range(1, pl.len() + 1),
            action=pl.when(pl.col("failure_probability") >= pl.col("threshold"))
            .then(pl.lit("now: stop before next batch"))
            .when(pl.col("failure_probability") >= pl.col("threshold") / 2)
            .then(pl.lit("next turnaround"))
            .otherwise(pl.lit("routine (per plan)")),
        )
        .select(
            "priority",
            "equipment_id",
            "unit_id",
            "equipment_type",
            "failure_probability",
            "health_score",
            "threshold",
            "alarm",
            "hours_since_maintenance",
            "hour_ts",
            "action",
            "model_version",
        )
    )


def reduce_trend(trend: pl.DataFrame, max_points: int) -> pl.DataFrame:
    """An item's hourly scores in time order; beyond ``max_points`` rows, buckets of
    consecutive hours: first hour, mean health score, max failure probability, any alarm,
    and ``hours`` (rows in the bucket). Nothing is dropped silently: ``hours`` sums to the
    number of scored hours."""
    t = trend.sort("hour_ts")
    if t.height <= max_points:
        return t.with_columns(hours=pl.lit(1, pl.UInt32))
    step = math.ceil(t.height / max_points)
    return (
        t.with_row_index("_i")
        .with_columns(_b=pl.col("_i") // step)
        .group_by("_b", maintain_order=True)
        .agg(
            pl.col("equipment_id").first(),
            pl.col("hour_ts").first(),
            pl.col("batch_id").last(),
            pl.col("health_score").mean(),
            pl.col("failure_probability").max(),
            pl.col("threshold").last(),
            pl.col("alarm").any(),
            hours=pl.len().cast(pl.UInt32),
        )
        .drop("_b")
    )


# ----------------------------------------------------------------------------- monitoring
def parse_contributors(text: str | None) -> list[tuple[str, float]]:
    """``"tag:share,tag:share"`` -> [(tag, share)], largest share first; bad parts skipped."""
    out = []
    for part in (text or "").split(","):
        tag, _, share = part.strip().rpartition(":")
        try:
            out.append((tag, float(share)))
        except ValueError:
            continue
    return sorted((p for p in out if p[0]), key=lambda p: -p[1])


def parse_contributions_json(text: str | None) -> list[tuple[str, float]]:
    """The JSON ``{tag: share}`` of gold/mspc_alarms as sorted pairs."""
    try:
        d = json.loads(text or "{}")
    except json.JSONDecodeError:
        return []
    return sorted(((str(k), float(v)) for k, v in d.items()), key=lambda p: -p[1])


def top_contributors(scores: pl.DataFrame, n: int = 5) -> pl.DataFrame:
    """Tags that contribute most to a batch's MSPC statistics: mean share over alarm hours
    (over all hours when there was no alarm), with the hours in which they were listed."""
    s = scores.filter(pl.col("alarm")) if scores["alarm"].any() else scores
    rows = [
        (tag, share)
        for t in s["top_contributors"].to_list()
        for tag, share in parse_contributors(t)
    ]
    if not rows:
        return pl.DataFrame(
            schema={"tag": pl.String, "mean_share": pl.Float64, "hours_listed": pl.UInt32}
        )
    return (
        pl.DataFrame(rows, schema={"tag": pl.String, "share": pl.Float64}, orient="row")
        .group_by("tag")
        .agg(mean_share=pl.col("share").sum() / s.height, hours_listed=pl.len().cast(pl.UInt32))
        .sort(["mean_share", "tag"], descending=[True, False])
        .head(n)
    )


# ----------------------------------------------------------------------------- models
def model_overview(perf: pl.DataFrame) -> pl.DataFrame:
    """Per model: versions evaluated, champion version, metrics met / evaluated for it."""
    champ = (
        perf.filter(pl.col("is_champion"))
        .group_by("model_name")
        .agg(
            champion_version=pl.col("model_version").first(),
            champion_targets_met=pl.col("target_met").fill_null(False).sum(),
            champion_metrics=pl.len(),
        )
    )
    return (
        perf.group_by("model_name")
        .agg(versions=pl.col("model_version").unique().sort().str.join(", "))
        .join(champ, on="model_name", how="left")
        .sort("model_name")
    )


# ----------------------------------------------------------------------------- display
#: units spelled out from a column-name suffix (longest suffix first)
_UNIT_SUFFIXES = (
    ("_e6_cells_ml", "10⁶ cells/mL"),
    ("_mosm_kg", "mOsm/kg"),
    ("_mmol_l", "mmol/L"),
    ("_g_per_l", "g/L"),
    ("_pf_cm", "pF/cm"),
    ("_ml_h", "mL/h"),
    ("_mm_s", "mm/s"),
    ("_g_l", "g/L"),
    ("_mmhg", "mmHg"),
    ("_slpm", "slpm"),
    ("_rpm", "rpm"),
    ("_bar", "bar"),
    ("_pct", "%"),
    ("_kg", "kg"),
    ("_ml", "mL"),
    ("_min", "min"),
    ("_c", "°C"),
    ("_a", "A"),
    ("_l", "L"),
    ("_h", "h"),
    ("_ts", "UTC"),
)
#: words written differently from their snake_case form
_WORDS = {
    "id": "ID",
    "ph": "pH",
    "cpp": "CPP",
    "cqa": "CQA",
    "cpk": "Cpk",
    "uom": "unit of measure",
    "capa": "CAPA",
    "lsl": "LSL",
    "usl": "USL",
    "vcd": "VCD",
    "hmw": "HMW",
    "co2": "CO₂",
    "o2": "O₂",
    "t2": "T²",
    "spe": "SPE",
    "mspc": "MSPC",
    "rft": "RFT",
    "ebr": "EBR",
}
_LABELS = {
    "unit_id": "Unit",
    "batch_id": "Batch",
    "equipment_id": "Equipment item",
    "current_batch_id": "Current batch",
    "last_batch_id": "Last batch",
    "model_name": "Model",
    "model_version": "Model version",
    "day": "Day of batch",
    "hours": "Hours in bucket",
    "priority": "Priority",
    "seq": "Seq",
    "elapsed_h": "Time since inoculation (h)",
    "health_score": "Health score (0-100)",
    "failure_probability": "Failure probability (72 h, 0-1)",
    "threshold": "Alarm threshold",
    "risk": "Risk (0-1)",
    "ts_utc": "Time (UTC)",
    "table_name": "Table",
    "record_id": "Record ID",
    "context_id": "Session / run ID",
}


def column_label(name: str) -> str:
    """A table header for a snake_case column: words, with the unit its suffix names
    (``final_titer_g_l`` -> "Final titer (g/L)", ``start_ts`` -> "Start (UTC)")."""
    if name in _LABELS:
        return _LABELS[name]
    unit = None
    stem = name
    for suffix, u in _UNIT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            stem, unit = name[: -len(suffix)], u
            break
    if name.endswith("_at"):
        unit = "UTC"
    words = [_WORDS.get(w, w) for w in stem.split("_") if w]
    if words and words[0] != "pH":  # a header starts with a capital (pH stays pH)
        words[0] = words[0][:1].upper() + words[0][1:]
    text = " ".join(words) or name
    return f"{text} ({unit})" if unit else text


#: display format of timestamps (UTC) on the pages
TS_FORMAT = "%Y-%m-%d %H:%M UTC"


def fmt_ts(ts: datetime | None) -> str:
    """``2026-02-23 00:00 UTC`` (converted to UTC when aware); an em dash for None."""
    if ts is None:
        return "—"
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime(TS_FORMAT)


def fmt_age(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


# ----------------------------------------------------------------------------- freshness
@dataclass(frozen=True)
class Freshness:
    """How recent a page's data is: its tables' newest commit, the newest reading of the
    running batches, and the running batches whose newest reading is older than the page's
    threshold."""

    as_of: datetime | None
    newest_reading: datetime | None
    threshold_min: float
    stale: pl.DataFrame  # unit_id, current_batch_id, last_reading_ts, age_min


def freshness(
    committed: list[datetime | None],
    unit_status: pl.DataFrame | None,
    now: datetime,
    threshold_min: float,
) -> Freshness:
    """``committed``: the commit times of the tables a page shows; ``unit_status``: the
    gold table (running units and their newest reading). A running batch with no reading
    at all counts as stale."""
    times = [t for t in committed if t is not None]
    as_of = max(times) if times else None
    schema = {
        "unit_id": pl.String,
        "current_batch_id": pl.String,
        "last_reading_ts": pl.Datetime("us", "UTC"),
        "age_min": pl.Float64,
    }
    if unit_status is None or unit_status.height == 0:
        return Freshness(as_of, None, threshold_min, pl.DataFrame(schema=schema))
    running = unit_status.filter(pl.col("state") == "running").select(
        "unit_id", "current_batch_id", "last_reading_ts"
    )
    newest = running["last_reading_ts"].max()
    aged = running.with_columns(
        age_min=(
            pl.lit(now).cast(pl.Datetime("us", "UTC")) - pl.col("last_reading_ts")
        ).dt.total_seconds(fractional=True)
        / 60
    )
    stale = aged.filter(pl.col("age_min").is_null() | (pl.col("age_min") > threshold_min))
    return Freshness(
        as_of,
        newest if isinstance(newest, datetime) else None,
        threshold_min,
        stale.sort("unit_id"),
    )


# ----------------------------------------------------------------------------- running batches
def running_batch_ids(batches: pl.DataFrame | None) -> list[str]:
    """Batches whose status is ``running`` (silver/batches), sorted."""
    if batches is None or batches.height == 0:
        return []
    return sorted(batches.filter(pl.col("status") == "running")["batch_id"].to_list())


def mspc_batch_order(scored: list[str], batches: pl.DataFrame | None) -> list[tuple[str, str]]:
    """(batch, status) for the MSPC picker: running batches first (even before their first
    score), then the scored batches, newest start first."""
    ids = set(scored) | set(running_batch_ids(batches))
    if not ids:
        return []
    frame = pl.DataFrame({"batch_id": sorted(ids)})
    if batches is not None:
        frame = frame.join(
            batches.select("batch_id", "status", "start_ts"), on="batch_id", how="left"
        )
    else:
        frame = frame.with_columns(status=pl.lit(None, pl.String), start_ts=pl.lit(None))
    frame = frame.sort(
        [pl.col("status") == "running", "start_ts", "batch_id"],
        descending=[True, True, False],
        nulls_last=True,
    )
    return [(r["batch_id"], r["status"] or "unknown") for r in frame.iter_rows(named=True)]


def windows_of(parts: list[pl.DataFrame | None]) -> pl.DataFrame:
    """Scored contamination windows from gold/contamination_risk and gold/contamination_live:
    one row per (batch, window), the live score winning over a retraining's copy."""
    frames = [p for p in parts if p is not None]
    if not frames:
        return pl.DataFrame(
            schema={"batch_id": pl.String, "elapsed_h": pl.Float64, "anomaly_score": pl.Float64}
        )
    return (
        pl.concat(frames, how="diagonal_relaxed")
        .unique(["batch_id", "window_end_ts"], keep="last", maintain_order=True)
        .sort("batch_id", "elapsed_h")
    )


def golden_of(golden: pl.DataFrame, tag: str, recipe_id: str | None) -> pl.DataFrame:
    """The golden-batch envelope of one tag, of the batch's recipe when the table holds one
    envelope per recipe (gold/golden_batch has ``recipe_id`` then), in time order."""
    g = golden.filter(pl.col("tag") == tag)
    if "recipe_id" in g.columns and recipe_id is not None:
        g = g.filter(pl.col("recipe_id") == recipe_id)
    return g.sort("elapsed_h")


# ----------------------------------------------------------------------------- equipment (now)
#: an item whose latest score is this many hours older than the newest score is not "now"
EQUIPMENT_LAG_H = 2
#: probabilities (in %) below this are drawn at it on the log axis
PROB_FLOOR_PCT = 0.001
#: a threshold above this can practically never be reached by a calibrated probability
UNREACHABLE_THRESHOLD = 0.99


def equipment_now(schedule: pl.DataFrame, lag_h: float = EQUIPMENT_LAG_H) -> pl.DataFrame:
    """The schedule rows with ``current`` (scored within ``lag_h`` of the newest scored hour)
    and ``plot_pct`` (probability in %, floored for a log axis)."""
    newest = schedule["hour_ts"].max()
    return schedule.with_columns(
        current=(pl.lit(newest) - pl.col("hour_ts")) <= pl.duration(hours=lag_h),
        plot_pct=(pl.col("failure_probability") * 100).clip(lower_bound=PROB_FLOOR_PCT),
    )


def unreachable_thresholds(schedule: pl.DataFrame) -> pl.DataFrame:
    """Equipment types whose alarm threshold is above ``UNREACHABLE_THRESHOLD``."""
    return (
        schedule.filter(pl.col("threshold") > UNREACHABLE_THRESHOLD)
        .group_by("equipment_type")
        .agg(threshold=pl.col("threshold").max(), items=pl.len())
        .sort("equipment_type")
    )


# ----------------------------------------------------------------------------- Cpk chart
#: the Cpk axis ends here: one very capable CPP (Cpk 30) must not flatten the others
CPK_CAP = 3.0


def cpk_bars(cpk: pl.DataFrame, cap: float = CPK_CAP) -> pl.DataFrame:
    """The Cpk chart rows: ``shown`` (mean Cpk capped at ``cap``), ``label`` (the true value,
    with "▶" when capped), colour by capability and a hover text; CPPs without a Cpk are
    labelled "no data"."""
    v = pl.col("mean_cpk")
    return cpk.select(
        "cpp",
        "mean_cpk",
        shown=pl.min_horizontal(v.fill_null(0.0), pl.lit(cap)),
        label=pl.when(v.is_null())
        .then(pl.lit("no data"))
        .otherwise(
            v.round(2).cast(pl.String) + pl.when(v > cap).then(pl.lit(" ▶")).otherwise(pl.lit(""))
        ),
        colour=pl.when(v.is_null())
        .then(pl.lit("#9e9e9e"))
        .when(v < 1.0)
        .then(pl.lit("#c62828"))
        .when(v < 1.33)
        .then(pl.lit("#f9a825"))
        .otherwise(pl.lit("#2e7d32")),
        hover=pl.col("cpp")
        + pl.lit(": mean Cpk ")
        + v.round(3).cast(pl.String).fill_null("none")
        + pl.lit(" over ")
        + pl.col("batches").cast(pl.String)
        + pl.lit(" batches"),
    )


# ----------------------------------------------------------------------------- audit trail
#: actions the pipeline writes (one per materialization of a governed table), and their actor
MACHINE_ACTIONS = frozenset({"materialization"})
MACHINE_ACTORS = frozenset({"dagster"})
#: the audit page's views: name -> filter over the trail (None: every entry). The default view
#: is everything but the pipeline's entries: people's actions and the QA records the system
#: makes for them (deviations opened from excursions, account lockouts)
AUDIT_VIEWS: dict[str, pl.Expr | None] = {
    "People & QA records": ~(
        pl.col("action").is_in(list(MACHINE_ACTIONS)) | pl.col("actor").is_in(list(MACHINE_ACTORS))
    ),
    "Signatures": pl.col("action").is_in(
        ["e_signature", "signature_refused", "signature", "signature_failed"]
    ),
    "Releases & batch records": pl.col("action").str.starts_with("batch_")
    | pl.col("action").str.starts_with("ebr_"),
    "Deviations": pl.col("action").str.starts_with("deviation_"),
    "Logins & accounts": pl.col("action").is_in(
        ["login", "login_failed", "logout", "session_expired", "account_locked"]
    )
    | pl.col("action").str.starts_with("user_"),
    "Spec & model changes": pl.col("action").is_in(["spec_change", "model_promotion"]),
    "Pipeline (materializations)": pl.col("action").is_in(list(MACHINE_ACTIONS))
    | pl.col("actor").is_in(list(MACHINE_ACTORS)),
    "All entries": None,
}
DEFAULT_AUDIT_VIEW = "People & QA records"


def audit_view(trail: pl.DataFrame, view: str) -> pl.DataFrame:
    """The entries of one view of the audit trail (``AUDIT_VIEWS``); nothing is removed from
    the trail itself, "All entries" shows every entry."""
    expr = AUDIT_VIEWS[view]
    return trail if expr is None else trail.filter(expr)


def audit_view_counts(trail: pl.DataFrame) -> dict[str, int]:
    """Entries per view (the views overlap: "People & QA records" + "Pipeline" = "All
    entries")."""
    if trail.height == 0:
        return dict.fromkeys(AUDIT_VIEWS, 0)
    row = trail.select(
        [(pl.len() if e is None else e.sum()).alias(k) for k, e in AUDIT_VIEWS.items()]
    ).row(0, named=True)
    return {k: int(v) for k, v in row.items()}
