"""The lakehouse code location: assets, checks, jobs, sensors and the lake resource."""

import dagster as dg

from . import assets
from .automation import (
    batch_ingest_job,
    gold_job,
    gold_refresh_sensor,
    lake_maintenance_job,
    lake_maintenance_schedule,
    landing_sensor,
    live_health_sensor,
    live_telemetry_fresh,
    plant_events_job,
    quarantine_rate_alarm,
)
from .engine import spark_backfill_job
from .material_assets import bronze_coa, silver_material_lots
from .resources import LakehouseResource


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            assets.bronze_mes,
            assets.bronze_lims,
            assets.bronze_cmms,
            assets.silver_batches,
            assets.silver_lab_results,
            assets.silver_maintenance,
            assets.telemetry_ingest,
            assets.gold_tables,
            bronze_coa,
            silver_material_lots,
        ],
        asset_checks=[live_telemetry_fresh, quarantine_rate_alarm],
        jobs=[
            batch_ingest_job,
            plant_events_job,
            gold_job,
            lake_maintenance_job,
            spark_backfill_job,
        ],
        sensors=[landing_sensor, gold_refresh_sensor, live_health_sensor],
        schedules=[lake_maintenance_schedule],
        resources={"lakehouse": LakehouseResource.from_env()},
    )
