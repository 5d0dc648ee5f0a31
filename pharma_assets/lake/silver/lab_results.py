"""Silver lab results (LIMS against the spec) and maintenance events (CMMS)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from .. import bronze
from ..input_rules import raw_reason_expr
from ..specs import CppSpec
from ..storage import UTC_US, Lake
from .batches import replace_batches
from .common import LAYER


def derive_lab_results(lims: pl.DataFrame, spec: CppSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows = [
        {
            "sample_type": st,
            "analyte": a,
            "spec_uom": s.uom,
            "phys_lo": s.physical[0],
            "phys_hi": s.physical[1],
            "spec_lo": s.spec[0] if s.spec else None,
            "spec_hi": s.spec[1] if s.spec else None,
        }
        for st, table in (("in_process", spec.lab.in_process), ("release", spec.lab.release))
        for a, s in table.items()
    ]
    lim = pl.DataFrame(
        rows,
        schema={
            "sample_type": pl.String,
            "analyte": pl.String,
            "spec_uom": pl.String,
            "phys_lo": pl.Float64,
            "phys_hi": pl.Float64,
            "spec_lo": pl.Float64,
            "spec_hi": pl.Float64,
        },
    )
    df = lims.join(lim, on=["sample_type", "analyte"], how="left")
    reason = (
        pl.when(pl.col("raw").is_not_null())
        .then(raw_reason_expr())
        .when(pl.col("spec_uom").is_null())
        .then(pl.lit("unknown_analyte"))
        .when(pl.col("uom") != pl.col("spec_uom"))
        .then(pl.lit("unknown_uom"))
        .when(~pl.col("value").is_finite().fill_null(False))
        .then(pl.lit("value_not_finite"))
        .when(~pl.col("value").is_between(pl.col("phys_lo"), pl.col("phys_hi")))
        .then(pl.lit("physical_limits"))
        .when(pl.struct("sample_id", "analyte").is_first_distinct().not_())
        .then(pl.lit("duplicate_result"))
    )
    offending = (
        pl.when(pl.col("raw").is_not_null())
        .then(pl.col("raw"))
        .when(pl.col("failed_check") == "unknown_analyte")
        .then(pl.col("analyte"))
        .when(pl.col("failed_check") == "unknown_uom")
        .then(pl.col("uom"))
        .otherwise(pl.col("value").cast(pl.String))
    )
    df = df.sort("sample_ts", "ingested_at", nulls_last=True).with_columns(failed_check=reason)
    bad = df.filter(pl.col("failed_check").is_not_null()).with_columns(offending_value=offending)
    good = df.filter(pl.col("failed_check").is_null()).with_columns(
        within_spec=pl.when(pl.col("sample_type") == "release").then(
            pl.col("value").ge(pl.col("spec_lo").fill_null(float("-inf")))
            & pl.col("value").le(pl.col("spec_hi").fill_null(float("inf")))
        ),
        spec_version=pl.lit(spec.version),
    )
    keep = [
        "sample_id",
        "site_id",
        "unit_id",
        "batch_id",
        "sample_ts",
        "sample_type",
        "analyte",
        "value",
        "uom",
    ]
    return (
        good.select(*keep, "spec_lo", "spec_hi", "within_spec", "spec_version", "source_file"),
        bad.select(*keep, "failed_check", "offending_value", "source_file"),
    )


def build_lab_results(
    lake: Lake, spec: CppSpec, batch_ids: Sequence[str] | None = None
) -> dict[str, int]:
    where = None if batch_ids is None else pl.col("batch_id").is_in(list(batch_ids))
    lims = lake.read(bronze.LAYER, "lims", filter_expr=where)
    if lims is None:
        return {"results": 0, "quarantined": 0}
    good, bad = derive_lab_results(lims, spec)
    with lake.lock("silver-lab"):
        files = sorted(set(lims["source_file"].to_list()))
        replace_batches(lake, "lab_results", good, batch_ids, files)
        replace_batches(lake, "lab_quarantine", bad, batch_ids)
    out_of_spec = good.filter(pl.col("within_spec").not_().fill_null(False)).height
    return {
        "rows_in": lims.height,
        "results": good.height,
        "quarantined": bad.height,
        "release_out_of_spec": out_of_spec,
    }


def build_maintenance(lake: Lake) -> dict[str, int]:
    cmms = lake.read(bronze.LAYER, "cmms")
    if cmms is None:
        return {"events": 0}
    rows = []
    for r in cmms.iter_rows(named=True):
        p = json.loads(r["payload"]) if r.get("payload") else {}
        rows.append(
            {
                "work_order_id": r["work_order_id"],
                "event_ts": r["event_ts"],
                "site_id": r["site_id"],
                "unit_id": r["unit_id"],
                "equipment_id": r["equipment_id"],
                "event_type": r["event_type"],
                "part": p.get("part"),
                "description": p.get("description"),
                "downtime_h": _float(p.get("downtime_h")),
                "run_hours_at_event": _float(p.get("run_hours_at_event")),
                "source_file": r["source_file"],
                "valid": r.get("raw") is None,
            }
        )
    schema: dict[str, Any] = {
        "work_order_id": pl.String,
        "event_ts": UTC_US,
        "site_id": pl.String,
        "unit_id": pl.String,
        "equipment_id": pl.String,
        "event_type": pl.String,
        "part": pl.String,
        "description": pl.String,
        "downtime_h": pl.Float64,
        "run_hours_at_event": pl.Float64,
        "source_file": pl.String,
        "valid": pl.Boolean,
    }
    df = pl.DataFrame(rows, schema=schema).unique(
        "work_order_id", keep="first", maintain_order=True
    )
    files = sorted(set(cmms["source_file"].to_list()))
    lake.overwrite(LAYER, "maintenance_events", df.sort("event_ts"), source_files=files)
    return {"events": df.height, "invalid": int((~df["valid"]).sum())}


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
