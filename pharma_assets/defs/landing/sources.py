"""External assets for the landing-zone sources the lakehouse ingests.

The simulator (`pharma-twin simulate` / `pharma-twin live`) or a real plant's exports
write these folders; Dagster does not materialize them, it observes and ingests them.
Formats: docs/data_model.md.
"""

import dagster as dg

_SOURCES = {
    "telemetry": (
        "Historian telemetry chunks (Parquet/CSV, long format: ts, unit, batch, tag, value, uom, quality).",
        "parquet",
    ),
    "mes": (
        "MES batch events (JSON lines): batch start with recipe and lots, phase changes, batch end.",
        "json",
    ),
    "lims": ("LIMS results (CSV): daily in-process samples and release assays.", "csv"),
    "cmms": (
        "CMMS maintenance events (JSON lines): work orders, part replacements, failures.",
        "json",
    ),
    "coa": (
        "LIMS certificates of analysis (CSV): supplier CoA and incoming-QC results per media/feed lot.",
        "csv",
    ),
}

landing_sources = [
    dg.AssetSpec(
        key=["landing", name],
        description=desc,
        group_name="landing",
        kinds={kind, "files"},
        metadata={"path_env": "PHARMA_LANDING_DIR", "folder": name},
    )
    for name, (desc, kind) in _SOURCES.items()
]
