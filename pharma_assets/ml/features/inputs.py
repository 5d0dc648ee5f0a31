"""The lake tables the features read (:class:`MlInputs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from pharma_assets.lake.storage import Lake

from .rollup import hourly_rollup


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
        lab_results=_require(lake.read("silver", "lab_results"), "silver/lab_results", lake),
        maintenance=_require(
            lake.read("silver", "maintenance_events"), "silver/maintenance_events", lake
        ),
        batch_summary=summary if summary is not None else pl.DataFrame(),
        versions=versions,
    )
