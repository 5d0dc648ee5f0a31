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
    material_lots: pl.DataFrame | None = None  # accepted CoA results (silver/material_lots)


def _require(df: pl.DataFrame | None, name: str, lake: Lake) -> pl.DataFrame:
    if df is None:
        raise FileNotFoundError(
            f"table {name} does not exist in lake {lake.root}; run the lakehouse pipeline "
            "first (pharma-twin pipeline)"
        )
    return df


LAB_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(),
    "site_id": pl.String(),
    "unit_id": pl.String(),
    "batch_id": pl.String(),
    "sample_ts": pl.Datetime("us", "UTC"),
    "sample_type": pl.String(),
    "analyte": pl.String(),
    "value": pl.Float64(),
    "uom": pl.String(),
}
MAINTENANCE_SCHEMA: dict[str, pl.DataType] = {
    "work_order_id": pl.String(),
    "event_ts": pl.Datetime("us", "UTC"),
    "site_id": pl.String(),
    "unit_id": pl.String(),
    "equipment_id": pl.String(),
    "event_type": pl.String(),
    "part": pl.String(),
    "description": pl.String(),
    "downtime_h": pl.Float64(),
    "run_hours_at_event": pl.Float64(),
    "valid": pl.Boolean(),
}


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
            ("silver", "material_lots"),
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
        material_lots=lake.read("silver", "material_lots"),
    )
