"""Jobs and sensors: the landing sensor, the gold refresh and the rebuild/backfill jobs."""

import hashlib
import json
import os
import time
from collections import defaultdict

import dagster as dg

from pharma_assets.lake import live_health, progress
from pharma_assets.lake.landing_scan import LandedFile, scan_landing
from pharma_assets.lake.storage import Lake

from .assets import (
    batch_partitions,
    bronze_cmms,
    bronze_lims,
    bronze_mes,
    gold_tables,
    silver_batches,
    silver_lab_results,
    silver_maintenance,
    telemetry_ingest,
)
from .material_assets import bronze_coa, silver_material_lots
from .resources import LakehouseResource

BATCH_ASSETS = [
    bronze_mes,
    bronze_lims,
    silver_batches,
    silver_lab_results,
    telemetry_ingest,  # bronze/telemetry and the silver telemetry tables, one step
]

# Dagster's run tags for ONE run over a range of partition keys (what a single-run backfill
# sets; the partition_key_range of a RunRequest is read from them). Dagster exports no
# public constant for them, so they are named here, once, instead of importing dagster._core.
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

TELEMETRY = dg.AssetKey(["silver", "telemetry"])
MAX_LAG_S = float(os.environ.get("PHARMA_FRESHNESS_MAX_LAG_S", "900"))
QUARANTINE_WINDOW_MIN = float(os.environ.get("PHARMA_QUARANTINE_WINDOW_MIN", "10"))


def freshness_result(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    f = live_health.telemetry_freshness(lakehouse.lake(), MAX_LAG_S)
    return dg.AssetCheckResult(
        asset_key=TELEMETRY,
        check_name="live_telemetry_fresh",
        passed=f.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=f.as_metadata(),
        description=None
        if f.passed
        else f"silver has accepted no reading of {', '.join(f.stale_batches)} "
        f"for {f.max_lag_s / 60:.0f} min (limit {f.threshold_s / 60:.0f} min)",
    )


def quarantine_result(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    q = live_health.quarantine_alarm(lakehouse.lake(), QUARANTINE_WINDOW_MIN)
    return dg.AssetCheckResult(
        asset_key=TELEMETRY,
        check_name="quarantine_rate_alarm",
        passed=q.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=q.as_metadata(),
        description=None
        if q.passed
        else f"{q.window_quarantined:,} of {q.window_rows:,} readings "
        f"quarantined in the last {q.window_min:g} min ({q.ts_in_future_rows:,} from the future; "
        f"baseline share {q.baseline_share:.2%})",
    )


@dg.asset_check(
    asset=TELEMETRY,
    description="Live path freshness: every running batch had readings accepted by silver within "
    "PHARMA_FRESHNESS_MAX_LAG_S (default 15 min, wall clock). Evaluated every minute by "
    "live_health_sensor (ERROR when it fails), or on demand.",
)
def live_telemetry_fresh(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    return freshness_result(lakehouse)


@dg.asset_check(
    asset=TELEMETRY,
    description="Quarantine incident: fails when silver quarantined any reading as ts_in_future "
    "in the last PHARMA_QUARANTINE_WINDOW_MIN minutes (default 10), or when the window's "
    "quarantined share exceeds max(5 %, 3x the share before it). Evaluated every minute by "
    "live_health_sensor, or on demand.",
)
def quarantine_rate_alarm(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    return quarantine_result(lakehouse)


LIVE_CHECKS = [live_telemetry_fresh, quarantine_rate_alarm]

batch_ingest_job = dg.define_asset_job(
    "batch_ingest_job",
    # the assets with their own checks; the live-health checks run in their sensor instead
    selection=dg.AssetSelection.assets(*BATCH_ASSETS).without_checks()
    | dg.AssetSelection.checks(*(k for a in BATCH_ASSETS for k in a.check_keys)),
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    description="Ingest one batch partition (or a range, as a backfill): landing -> bronze -> silver.",
)
plant_events_job = dg.define_asset_job(
    "plant_events_job",
    selection=dg.AssetSelection.assets(
        bronze_cmms, silver_maintenance, bronze_coa, silver_material_lots
    ),
    executor_def=dg.in_process_executor,
    description="CMMS maintenance events, raw-material CoAs and files landed outside the layout.",
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


# a run of the job in one of these states holds the sensor back (one run at a time per job)
OPEN_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
ONLY_BATCHES_TAG = "pharma/batch_ids"  # a sparse range run processes only these partitions
LANE_TAG = "pharma/lane"  # dagster.yaml limits runs to one per lane (tag_concurrency_limits)


def open_runs(instance: dg.DagsterInstance, job_name: str) -> int:
    """Runs of ``job_name`` queued or in progress."""
    return instance.get_runs_count(dg.RunsFilter(job_name=job_name, statuses=OPEN_RUN_STATUSES))


def batch_run_requests(per_batch: dict[str, list[str]], ordered: list[str]) -> list[dg.RunRequest]:
    """ONE run for all batches with new files: the partition range from the first to the
    last of them (live batches of every unit are adjacent in partition order). When the
    range also spans batches without new files, the run's ``pharma/batch_ids`` tag lists
    the batches it processes, so a late file of an old batch does not rebuild every batch
    in between. Run key: a hash of the files."""
    if not per_batch:
        return []
    pos = {k: i for i, k in enumerate(ordered)}
    idx = sorted(pos[b] for b in per_batch)
    rels = [r for b in sorted(per_batch) for r in per_batch[b]]
    first, last = ordered[idx[0]], ordered[idx[-1]]
    tags = {
        LANE_TAG: batch_ingest_job.name,
        "pharma/files": str(len(rels)),
        "pharma/batches": str(len(idx)),
    }
    if len(idx) == 1:
        return [
            dg.RunRequest(
                run_key=_run_key(first, rels),
                partition_key=first,
                job_name=batch_ingest_job.name,
                tags=tags,
            )
        ]
    if idx[-1] - idx[0] + 1 > len(idx):
        tags[ONLY_BATCHES_TAG] = ",".join(ordered[i] for i in idx)
    return [
        dg.RunRequest(
            run_key=_run_key(f"{first}..{last}", rels),
            job_name=batch_ingest_job.name,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: first,
                ASSET_PARTITION_RANGE_END_TAG: last,
                **tags,
            },
        )
    ]


def _run_key(prefix: str, rels: list[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(rels)).encode()).hexdigest()[:16]
    return f"{prefix}:{digest}"


@dg.sensor(
    name="landing_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    jobs=[batch_ingest_job, plant_events_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the landing zone: adds a batch partition per new batch and requests "
    "ONE ingestion run for all batches with new files (a partition range; run key = hash of "
    "the files), and one plant_events_job run for CMMS files. While a run of a job is queued "
    "or in progress the sensor requests no other run of that job: the next tick after it "
    "ends takes everything that arrived meanwhile, so the run queue stays bounded however "
    "fast the plant writes. Files are pending until silver has them, so interrupted runs are "
    "completed. Cursor: the newest arrival (inode ctime, ns) and the number of files still "
    "pending; a tick with no newer arrival and nothing pending returns at once.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    files = scan_landing(lakehouse.landing_dir)
    newest = max((f.arrived_ns for f in files), default=0)
    if newest == cursor.get("hwm_ns") and cursor.get("pending") == 0:
        return dg.SensorResult(run_requests=[], cursor=context.cursor)  # nothing new, nothing owed
    busy = {
        j for j in (batch_ingest_job.name, plant_events_job.name) if open_runs(context.instance, j)
    }
    if busy == {batch_ingest_job.name, plant_events_job.name}:
        return dg.SensorResult(
            skip_reason=f"waiting for the open {' and '.join(sorted(busy))} runs",
            cursor=context.cursor,
        )
    per_batch, plant, hwm = plan_requests(lakehouse.landing_dir, lakehouse.lake(), files)
    ordered = list(context.instance.get_dynamic_partitions(batch_partitions.name or "batch"))
    existing = set(ordered)
    new_keys = sorted(k for k in per_batch if k not in existing)
    runs = (
        [] if batch_ingest_job.name in busy else batch_run_requests(per_batch, ordered + new_keys)
    )
    if plant and plant_events_job.name not in busy:
        runs.append(
            dg.RunRequest(
                run_key=_run_key("plant", plant),
                job_name=plant_events_job.name,
                tags={LANE_TAG: plant_events_job.name},
            )
        )
    if busy:
        context.log.info(
            f"{', '.join(sorted(busy))}: a run is open; its files wait for the next tick"
        )
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)]
        if new_keys
        else [],
        # a job held back leaves its files pending: the cursor never says "nothing owed" for them
        cursor=json.dumps(
            {"hwm_ns": hwm, "pending": sum(map(len, per_batch.values())) + len(plant)}
        ),
    )


GOLD_INTERVAL_S = int(os.environ.get("PHARMA_GOLD_INTERVAL_S", str(2 * SENSOR_INTERVAL_S)))
GOLD_INPUTS = (
    ("silver", "telemetry_log"),
    ("silver", "batches"),
    ("silver", "lab_results"),
    ("silver", "maintenance_events"),
    ("gxp", "batch_release"),
)


@dg.sensor(
    name="gold_refresh_sensor",
    minimum_interval_seconds=GOLD_INTERVAL_S,
    jobs=[gold_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes gold when the silver tables it reads (and QA's gxp/batch_release) "
    "have new Delta versions "
    "(cursor: those versions). Coalesces any number of ingestion runs into one refresh, and "
    "requests none while a gold_job run is queued or in progress (never more than one gold "
    "run open: the next refresh takes every silver change made meanwhile).",
)
def gold_refresh_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SensorResult:
    if open_runs(context.instance, gold_job.name):
        return dg.SensorResult(skip_reason="a gold_job run is open", cursor=context.cursor)
    lake = lakehouse.lake()
    versions = {f"{layer}/{name}": lake.version(layer, name) for layer, name in GOLD_INPUTS}
    if context.cursor == json.dumps(versions, sort_keys=True) or all(
        v is None for v in versions.values()
    ):
        return dg.SensorResult(run_requests=[], cursor=context.cursor)
    cur = json.dumps(versions, sort_keys=True)
    key = hashlib.sha1(cur.encode()).hexdigest()[:16]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"gold:{key}", tags={LANE_TAG: gold_job.name})],
        cursor=cur,
    )


HEALTH_INTERVAL_S = int(os.environ.get("PHARMA_HEALTH_INTERVAL_S", "60"))
HEALTH_REPEAT_S = 600  # an unchanged result is recorded again after this long


@dg.sensor(
    name="live_health_sensor",
    minimum_interval_seconds=HEALTH_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every minute, evaluates the live-path checks on silver/telemetry "
    "(live_telemetry_fresh, quarantine_rate_alarm) without launching a run, and records "
    "their results when they change (at least every 10 minutes). A failure shows as a "
    "failed ERROR check on the asset and in the sensor's log.",
)
def live_health_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SensorResult:
    results = [freshness_result(lakehouse), quarantine_result(lakehouse)]
    cursor = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    state = {r.check_name or "": r.passed for r in results}
    for r in results:
        if not r.passed:
            context.log.error(f"{r.check_name} FAILED: {r.description}")
    if state == cursor.get("state") and now - cursor.get("at", 0) < HEALTH_REPEAT_S:
        return dg.SensorResult(skip_reason="live path unchanged", cursor=context.cursor)
    evals = [
        dg.AssetCheckEvaluation(
            asset_key=TELEMETRY,
            check_name=r.check_name or "",
            passed=r.passed,
            metadata=r.metadata,
            severity=r.severity,
            description=r.description,
        )
        for r in results
    ]
    return dg.SensorResult(asset_events=evals, cursor=json.dumps({"state": state, "at": now}))


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
