"""Raw-material attributes as batch features: the CoA results of the batch's media and feed
lots (``silver/material_lots``) that were known at the scoring time.

Per lot and attribute the feature is the mean of the accepted results tested by then
(the supplier CoA and the site's incoming QC measure the same lot with independent assay
noise, so their mean is the better estimate). Columns: ``coa_media_<attribute>`` and
``coa_feed_<attribute>`` for every attribute of the material contract
(``lake/specs/material_spec.yaml``); null where no result was known. Quarantined results
never reach silver, so they are never features; the simulator's true lot attributes
(``ground_truth``'s ``attr_*``) are never read.
"""

from __future__ import annotations

import polars as pl

from pharma_assets.lake.material_lots import DEFAULT_MATERIAL_SPEC, load_material_spec

LOT_COLUMNS = {"media": "media_lot", "feed": "feed_lot"}


def feature_names() -> list[str]:
    spec = load_material_spec(DEFAULT_MATERIAL_SPEC)
    return [f"coa_{m}_{a}" for m in LOT_COLUMNS for a in spec.materials[m].attributes]


def material_features(base: pl.DataFrame, material_lots: pl.DataFrame | None) -> pl.DataFrame:
    """``batch_id`` plus one column per material attribute, from ``base`` (``batch_id``,
    ``as_of_ts``, ``media_lot``, ``feed_lot``) and the accepted CoA results."""
    names = feature_names()
    out = base.select("batch_id")
    if material_lots is None or material_lots.height == 0:
        return out.with_columns([pl.lit(None, pl.Float64).alias(n) for n in names])
    for material, lot_col in LOT_COLUMNS.items():
        res = material_lots.filter(pl.col("material") == material).select(
            pl.col("lot_id").alias(lot_col), "attribute", "value", "tested_ts"
        )
        j = base.select("batch_id", "as_of_ts", lot_col).join(res, on=lot_col)
        j = j.filter(pl.col("tested_ts") <= pl.col("as_of_ts"))
        agg = j.group_by("batch_id", "attribute").agg(pl.col("value").mean())
        if agg.height:
            wide = agg.pivot(on="attribute", index="batch_id", values="value")
            wide = wide.rename({c: f"coa_{material}_{c}" for c in wide.columns if c != "batch_id"})
            out = out.join(wide, on="batch_id", how="left")
    for n in names:
        if n not in out.columns:
            out = out.with_columns(pl.lit(None, pl.Float64).alias(n))
    return out.select("batch_id", *[pl.col(n).cast(pl.Float64) for n in names])
