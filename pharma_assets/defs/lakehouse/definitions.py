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
)  # fmt: skip
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
        ],
        asset_checks=[live_telemetry_fresh, quarantine_rate_alarm],
        jobs=[batch_ingest_job, plant_events_job, gold_job, lake_maintenance_job],
        sensors=[landing_sensor, gold_refresh_sensor, live_health_sensor],
        schedules=[lake_maintenance_schedule],
        resources={"lakehouse": LakehouseResource.from_env()},
    )
