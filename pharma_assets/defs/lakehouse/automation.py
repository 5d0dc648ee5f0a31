"""Jobs and sensors: the landing sensor, the gold refresh and the rebuild/backfill jobs."""


import hashlib
import json
import os
from collections import defaultdict

import dagster as dg
import polars as pl

from pharma_assets.lake import bronze
from pharma_assets.lake.landing_scan import scan_landing

from .assets import (
    batch_partitions,
    bronze_cmms,
    bronze_lims,
    bronze_mes,
    bronze_telemetry,
    gold_tables,
    silver_batches,
    silver_lab_results,
    silver_maintenance,
    silver_telemetry,
)
from .resources import LakehouseResource

BATCH_ASSETS = [bronze_telemetry, bronze_mes, bronze_lims, silver_batches, silver_lab_results, silver_telemetry]

batch_ingest_job = dg.define_asset_job(
    "batch_ingest_job",
    selection=dg.AssetSelection.assets(*BATCH_ASSETS),
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    description="Ingest one batch partition (or a range, as a backfill): landing -> bronze -> silver.",
)
plant_events_job = dg.define_asset_job(
    "plant_events_job",
    selection=dg.AssetSelection.assets(bronze_cmms, silver_maintenance),
    executor_def=dg.in_process_executor,
    description="CMMS maintenance events and files landed outside the layout.",
)
gold_job = dg.define_asset_job(
    "gold_job",
    selection=dg.AssetSelection.assets(gold_tables),
    executor_def=dg.in_process_executor,
    description="Refresh the gold tables from silver aggregates.",
)

SENSOR_INTERVAL_S = int(os.environ.get("PHARMA_SENSOR_INTERVAL_S", "15"))


def plan_requests(landing_dir: str, lake_ingested: set[str], since_ns: int) -> tuple[dict[str, list[str]], list[str], int]:
    """New, not yet ingested files since the high-water mark: ({batch: [files]}, plant files, new mark)."""
    files = scan_landing(landing_dir, since_ns)
    per_batch: dict[str, list[str]] = defaultdict(list)
    plant: list[str] = []
    hwm = since_ns
    for f in files:
        hwm = max(hwm, f.arrived_ns)
        if f.rel in lake_ingested:
            continue
        if f.batch_id is not None:
            per_batch[f.batch_id].append(f.rel)
        else:
            plant.append(f.rel)
    return dict(per_batch), plant, hwm


def _run_key(prefix: str, rels: list[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(rels)).encode()).hexdigest()[:16]
    return f"{prefix}:{digest}"


@dg.sensor(
    name="landing_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    jobs=[batch_ingest_job, plant_events_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the landing zone: adds a batch partition per new batch and requests "
    "one ingestion run per batch with new files (run key = hash of those files). Cursor: "
    "the arrival-time high-water mark (inode ctime, ns).",
)
def landing_sensor(context: dg.SensorEvaluationContext, lakehouse: LakehouseResource) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {"hwm_ns": 0}
    lake = lakehouse.lake()
    log = bronze.read_log(lake)
    ingested = set(log["source_file"].to_list()) if log.height else set()
    per_batch, plant, hwm = plan_requests(lakehouse.landing_dir, ingested, cursor["hwm_ns"])
    existing = set(context.instance.get_dynamic_partitions(batch_partitions.name or "batch"))
    new_keys = sorted(k for k in per_batch if k not in existing)
    runs = [
        dg.RunRequest(run_key=_run_key(bid, rels), partition_key=bid, job_name=batch_ingest_job.name,
                      tags={"pharma/files": str(len(rels))})  # fmt: skip
        for bid, rels in sorted(per_batch.items())
    ]
    if plant:
        runs.append(dg.RunRequest(run_key=_run_key("plant", plant), job_name=plant_events_job.name))
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps({"hwm_ns": hwm}),
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[batch_ingest_job, plant_events_job],
    request_job=gold_job,
    name="gold_refresh_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes gold after every successful ingestion run.",
)
def gold_refresh_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"gold-after-{context.dagster_run.run_id}")



