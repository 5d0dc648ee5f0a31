"""Names shared by the silver modules: the layer and the telemetry tables it writes."""

from __future__ import annotations

LAYER = "silver"
TELEMETRY_TABLES = (
    "telemetry",
    "telemetry_quarantine",
    "excursion_segments",
    "telemetry_stats",
    "batch_timeline",
)
SILVER_TELEMETRY_COLUMNS = (
    "ts",
    "site_id",
    "unit_id",
    "batch_id",
    "tag",
    "value",
    "uom",
    "quality",
    "phase",
    "spec_version",
    "source_file",
    "row_hash",
    "processed_at",
)
MES_EVENT_TYPES = ("batch_start", "phase_start", "batch_end")
