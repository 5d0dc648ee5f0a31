"""Jobs and sensors: the landing sensor, the gold refresh and the rebuild/backfill jobs."""

import hashlib
import json
import os
from collections import defaultdict

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pharma_assets.lake import progress
from pharma_assets.lake.landing_scan import LandedFile, scan_landing
from pharma_assets.lake.storage import Lake

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

BATCH_ASSETS = [
    bronze_telemetry,
    bronze_mes,
    bronze_lims,
    silver_batches,
    silver_lab_results,
    silver_telemetry,
]

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


def plan_requests(
    landing_dir: str, lake: Lake, files: list[LandedFile] | None = None
) -> tuple[dict[str, list[str]], list[str], int]:
    """Landed files not yet done through silver: ({batch: [files]}, plant-level files, newest arrival).

    Looks at every landed file, so a file whose run was interrupted between bronze and
    silver is requested again. ``files``: a scan of the landing zone already made.
    """
    files = scan_landing(landing_dir) if files is None else files
    hwm = max((f.arrived_ns for f in files), default=0)
    per_batch: dict[str, list[str]] = defaultdict(list)
    plant: list[str] = []
    for f in progress.unfinished(lake, files):
        if f.batch_id is not None:
            per_batch[f.batch_id].append(f.rel)
        else:
            plant.append(f.rel)
    return dict(per_batch), plant, hwm


def batch_run_requests(per_batch: dict[str, list[str]], ordered: list[str]) -> list[dg.RunRequest]:
    """One run for all batches with new files when they are close in partition order (live
    batches of every unit are), else one run per batch. Keys: a hash of the files."""
    if not per_batch:
        return []
    pos = {k: i for i, k in enumerate(ordered)}
    idx = sorted(pos[b] for b in per_batch)
    rels = [r for b in sorted(per_batch) for r in per_batch[b]]
    span = idx[-1] - idx[0] + 1
    if len(idx) == 1 or span > 2 * len(idx) + 4:
        return [
            dg.RunRequest(
                run_key=_run_key(bid, files),
                partition_key=bid,
                job_name=batch_ingest_job.name,
                tags={"pharma/files": str(len(files))},
            )
            for bid, files in sorted(per_batch.items())
        ]
    first, last = ordered[idx[0]], ordered[idx[-1]]
    return [
        dg.RunRequest(
            run_key=_run_key(f"{first}..{last}", rels), job_name=batch_ingest_job.name,
            tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last,
                  "pharma/files": str(len(rels)), "pharma/batches": str(len(idx))},
        )
    ]  # fmt: skip


def _run_key(prefix: str, rels: list[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(rels)).encode()).hexdigest()[:16]
    return f"{prefix}:{digest}"


@dg.sensor(
    name="landing_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    jobs=[batch_ingest_job, plant_events_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the landing zone: adds a batch partition per new batch and requests "
    "ingestion runs for the batches with new files (one range run when they are adjacent in "
    "partition order, as live batches are; run key = hash of the files). Files are pending "
    "until silver has them, so interrupted runs are completed. Cursor: the newest arrival "
    "(inode ctime, ns) and the number of files still pending; a tick with no newer arrival "
    "and nothing pending returns at once.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    files = scan_landing(lakehouse.landing_dir)
    newest = max((f.arrived_ns for f in files), default=0)
    if newest == cursor.get("hwm_ns") and cursor.get("pending") == 0:
        return dg.SensorResult(run_requests=[], cursor=context.cursor)  # nothing new, nothing owed
    per_batch, plant, hwm = plan_requests(lakehouse.landing_dir, lakehouse.lake(), files)
    ordered = list(context.instance.get_dynamic_partitions(batch_partitions.name or "batch"))
    existing = set(ordered)
    new_keys = sorted(k for k in per_batch if k not in existing)
    runs = batch_run_requests(per_batch, ordered + new_keys)
    if plant:
        runs.append(dg.RunRequest(run_key=_run_key("plant", plant), job_name=plant_events_job.name))
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)]
        if new_keys
        else [],
        cursor=json.dumps(
            {"hwm_ns": hwm, "pending": sum(map(len, per_batch.values())) + len(plant)}
        ),
    )


GOLD_INTERVAL_S = int(os.environ.get("PHARMA_GOLD_INTERVAL_S", str(2 * SENSOR_INTERVAL_S)))
GOLD_INPUTS = (("silver", "telemetry_log"), ("silver", "batches"), ("silver", "lab_results"),
               ("silver", "maintenance_events"))  # fmt: skip


@dg.sensor(
    name="gold_refresh_sensor",
    minimum_interval_seconds=GOLD_INTERVAL_S,
    jobs=[gold_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes gold when the silver tables it reads have new Delta versions "
    "(cursor: those versions). Coalesces any number of ingestion runs into one refresh.",
)
def gold_refresh_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SensorResult:
    lake = lakehouse.lake()
    versions = {f"{layer}/{name}": lake.version(layer, name) for layer, name in GOLD_INPUTS}
    if context.cursor == json.dumps(versions, sort_keys=True) or all(
        v is None for v in versions.values()
    ):
        return dg.SensorResult(run_requests=[], cursor=context.cursor)
    cur = json.dumps(versions, sort_keys=True)
    key = hashlib.sha1(cur.encode()).hexdigest()[:16]
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"gold:{key}")], cursor=cur)


@dg.op(
    description="Compact the small files of the append-only bronze/silver tables (Delta "
    "OPTIMIZE, bin-packing) and checkpoint them; nothing is deleted (see "
    "pharma_assets/lake/maintenance.py).",
)
def compact_tables(context: dg.OpExecutionContext, lakehouse: LakehouseResource) -> None:
    from pharma_assets.lake import maintenance

    results = maintenance.compact(lakehouse.lake())
    for r in results:
        context.log.info(
            f"{r.table}: {r.files_before} -> {r.files_after} files"
            + (f" ({r.skipped})" if r.skipped else f" in {r.seconds:.1f} s")
        )
    compacted = [r for r in results if not r.skipped]
    context.log.info(f"compacted {len(compacted)} of {len(results)} tables")


@dg.job(description="Nightly table maintenance: compact the append-only lake tables.")
def lake_maintenance_job() -> None:
    compact_tables()


lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_schedule",
    job=lake_maintenance_job,
    cron_schedule=os.environ.get("PHARMA_MAINTENANCE_CRON", "30 2 * * *"),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Compacts the small files chunk-by-chunk ingestion leaves (daily 02:30 UTC by "
    "default; PHARMA_MAINTENANCE_CRON). Compaction commits are compatible with concurrent "
    "appends, so ingestion need not stop.",
)
