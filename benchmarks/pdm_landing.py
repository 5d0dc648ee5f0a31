"""The PdM model's inputs read straight from a landing zone, for the 1,000-batch benchmark.

Building a 1,000-batch lake with ``pharma-twin pipeline`` takes 30-55 minutes on a quiet
2-core machine and well over an hour on a loaded one. For the PdM figures this module reads
the same landing files and applies silver's telemetry rules that the PdM inputs depend on:
readings with quality ``bad`` or outside the CPP spec's physical limits are left out, the
rest averaged per batch and elapsed minute (the shape of ``silver/batch_timeline``), then
rolled up hourly by the same ``features`` code the lake path uses. The CMMS work orders and
MES batch starts come from their landing files. ``test_pdm_landing`` checks on the ML test
plant that the hourly rollup and the equipment-hour features from this path equal those
from the lake. Benchmark-only: the product reads the lake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pharma_assets.lake.specs import load_spec
from pharma_assets.ml import features

UTC_US = pl.Datetime("us", "UTC")
#: the tags the equipment-hour features read: the condition tags and the load they are
#: judged against (agitator speed, culture volume, feed flow); the others stay null
PDM_TAGS = (*features.CONDITION_TAGS, "agitation_rpm", "volume_l", "feed_rate_ml_h")


@dataclass
class LandingInputs:
    hourly: pl.DataFrame
    maintenance: pl.DataFrame
    batches: pl.DataFrame
    readings: int
    dropped: int


def _jsonl(files: list[Path]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for f in files:
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def maintenance_from_landing(landing: Path) -> pl.DataFrame:
    rows = _jsonl(sorted((landing / "cmms").rglob("*.jsonl")))
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("event_ts").str.to_datetime(time_zone="UTC").dt.cast_time_unit("us")
    )


def batches_from_landing(landing: Path) -> pl.DataFrame:
    rows = [r for r in _jsonl(sorted((landing / "mes").rglob("*.jsonl")))]
    starts = [r for r in rows if r.get("event_type") == "batch_start"]
    return pl.DataFrame(
        [
            {
                "batch_id": r["batch_id"],
                "unit_id": r["unit_id"],
                "recipe_id": r["recipe_id"],
                "start_ts": r["event_ts"],
            }
            for r in starts
        ]
    ).with_columns(pl.col("start_ts").str.to_datetime(time_zone="UTC").dt.cast_time_unit("us"))


def hourly_from_landing(
    landing: Path,
    batches: pl.DataFrame,
    batches_per_chunk: int = 50,
    tags: tuple[str, ...] = PDM_TAGS,
) -> tuple[pl.DataFrame, int, int]:
    """Hourly rollup of the ``tags`` of every batch's telemetry (the rollup's other columns
    null); (hourly, readings kept, readings dropped)."""
    spec = load_spec()
    limits = pl.DataFrame(
        {
            "tag": list(tags),
            "lo": [spec.tags[t].physical[0] for t in tags],
            "hi": [spec.tags[t].physical[1] for t in tags],
        }
    )
    starts = batches.select("batch_id", pl.col("start_ts").alias("batch_start"))
    dirs = sorted(d for u in (landing / "telemetry").iterdir() for d in u.iterdir() if d.is_dir())
    parts: list[pl.DataFrame] = []
    kept = dropped = 0
    for i in range(0, len(dirs), batches_per_chunk):
        files = [f for d in dirs[i : i + batches_per_chunk] for f in sorted(d.glob("*.parquet"))]
        raw = (
            pl.scan_parquet(files)
            .with_columns(pl.col("tag", "batch_id", "unit_id", "quality").cast(pl.String))
            .filter(pl.col("tag").is_in(list(tags)))
            .collect()
        )
        ok = raw.join(limits, on="tag", how="inner").filter(
            (pl.col("quality") != "bad") & pl.col("value").is_between(pl.col("lo"), pl.col("hi"))
        )
        kept += ok.height
        dropped += raw.height - ok.height
        ok = ok.join(starts, on="batch_id", how="inner").with_columns(
            elapsed_min=((pl.col("ts") - pl.col("batch_start")).dt.total_seconds() // 60).cast(
                pl.Int32
            )
        )
        wide = ok.pivot(
            on="tag",
            index=["batch_id", "unit_id", "batch_start", "elapsed_min"],
            values="value",
            aggregate_function="mean",
        )
        for t in tags:
            if t not in wide.columns:
                wide = wide.with_columns(pl.lit(None, pl.Float64).alias(t))
        wide = wide.with_columns(
            minute_ts=(pl.col("batch_start") + pl.duration(minutes=pl.col("elapsed_min"))).cast(
                UTC_US
            ),
            phase=pl.lit(None, pl.String),
        ).sort("batch_id", "elapsed_min")
        parts.append(features.hourly_rollup(wide))
    return pl.concat(parts, how="diagonal_relaxed").sort("batch_id", "elapsed_h"), kept, dropped


def load_landing_inputs(landing: Path) -> LandingInputs:
    batches = batches_from_landing(landing)
    hourly, kept, dropped = hourly_from_landing(landing, batches)
    return LandingInputs(hourly, maintenance_from_landing(landing), batches, kept, dropped)
