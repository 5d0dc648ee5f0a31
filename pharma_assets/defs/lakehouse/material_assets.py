"""Raw-material certificates of analysis: landing ``coa/`` -> ``bronze/coa`` ->
``silver/material_lots`` (domain code: ``pharma_assets/lake/material_lots.py``)."""

import dagster as dg

from pharma_assets.lake import material_lots

from .assets import DELTA, ingest_plant_wide
from .resources import LakehouseResource


@dg.asset(
    key=["bronze", "coa"],
    group_name="bronze",
    deps=[dg.AssetKey(["landing", "coa"])],
    kinds=DELTA,
    description="LIMS certificates of analysis of raw-material lots (supplier CoA and the "
    "site's incoming-QC results), one row per reported result as landed.",
)
def bronze_coa(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    return ingest_plant_wide(context, lakehouse, "coa")


@dg.asset(
    key=["silver", "material_lots"],
    group_name="silver",
    deps=[bronze_coa],
    kinds=DELTA,
    description="Accepted CoA results per lot x issuer x attribute, checked against the "
    "material contract (specs/material_spec.yaml); rejected results go to "
    "silver/material_lot_quarantine with the failed check and the offending value.",
)
def silver_material_lots(lakehouse: LakehouseResource) -> dg.MaterializeResult:
    lake = lakehouse.lake()
    return dg.MaterializeResult(metadata=material_lots.build_material_lots(lake))
