"""Retraining: a job that trains and scores every model, and a sensor that requests it each
time another 50 batches have completed."""

import os

import dagster as dg
import polars as pl

from pharma_assets.defs.lakehouse.automation import LANE_TAG, open_runs
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake

from .resources import MlResource

RETRAIN_EVERY = 50
COMPLETED_TAG = "pharma/completed_batches"  # on every retrain run: completed batches it saw

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.groups("ml"),
    executor_def=dg.in_process_executor,
    description="Rebuild the feature tables, retrain every model (champion/challenger gate "
    "in MLflow) and rescore the gold ML tables. On demand, or from retrain_sensor.",
)


def completed_batches(lake: Lake) -> int:
    """Number of batches with status ``complete`` in silver/batches (0 if no table yet)."""
    df = lake.read("silver", "batches", columns=["batch_id", "status"])
    if df is None:
        return 0
    return df.filter(pl.col("status") == "complete")["batch_id"].n_unique()


def retrain_decision(n_complete: int, cursor: int) -> int | None:
    """The multiple of 50 to retrain for, or None. ``cursor`` is the last multiple
    requested. If several multiples were crossed since (e.g. a backfill), one run for the
    highest: retraining on each intermediate count would train on the same data."""
    m = (n_complete // RETRAIN_EVERY) * RETRAIN_EVERY
    return m if m >= RETRAIN_EVERY and m > cursor else None


def last_trained_multiple(instance: dg.DagsterInstance) -> int:
    """Where a sensor without a cursor starts counting: the multiple of 50 reached by the
    newest successful retrain_job run (made by `pharma-twin train`, the UI or an earlier
    sensor), so a model trained at 97 batches is next retrained at 100, not again at 50."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=retrain_job.name, statuses=[dg.DagsterRunStatus.SUCCESS]),
        limit=1,
    )
    if not runs or COMPLETED_TAG not in runs[0].tags:
        return 0
    return (int(runs[0].tags[COMPLETED_TAG]) // RETRAIN_EVERY) * RETRAIN_EVERY


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=int(os.environ.get("PHARMA_RETRAIN_SENSOR_INTERVAL_S", "60")),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one retrain_job run each time the number of completed batches "
    "reaches a new multiple of 50 (run key retrain-<n>); cursor = last multiple requested.",
)
def retrain_sensor(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = int(context.cursor) if context.cursor else last_trained_multiple(context.instance)
    n = completed_batches(lakehouse.lake())
    m = retrain_decision(n, cursor)
    if m is None:
        return dg.SkipReason(
            f"{n} completed batches; next retraining at "
            f"{max(cursor + RETRAIN_EVERY, RETRAIN_EVERY)}"
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"retrain-{m}", tags={COMPLETED_TAG: str(n), LANE_TAG: retrain_job.name}
            )
        ],
        cursor=str(m),
    )


# --------------------------------------------------------------- live contamination scoring


@dg.op(
    description="Score the newest complete 5-minute window of every running batch with the "
    "champion contamination model and append it to gold/contamination_live "
    "(pharma_assets/ml/live_scoring.py).",
)
def score_running_contamination(
    context: dg.OpExecutionContext, lakehouse: LakehouseResource, ml: MlResource
) -> None:
    from pharma_assets.ml import contamination, live_scoring, registry

    champ = registry.load_champion(contamination.MODEL_NAME, uri=ml.uri())
    if champ is None:
        context.log.warning("no champion contamination model yet (run retrain_job): nothing scored")
        return
    model, version = champ
    lake = lakehouse.lake()
    res = live_scoring.score_running(lake, model, version)
    context.log.info(
        f"{res.running_batches} running batches, {res.windows_scored} windows scored, "
        f"{res.alarms} alarms" + (f" ({res.skipped})" if res.skipped else "")
    )
    if res.windows_scored:
        context.log_event(
            dg.AssetMaterialization(
                asset_key=[live_scoring.LIVE_LAYER, live_scoring.LIVE_TABLE],
                metadata={
                    "running_batches": res.running_batches,
                    "windows_scored": res.windows_scored,
                    "alarms": res.alarms,
                    "model_version": version,
                    "delta_version": lake.version(live_scoring.LIVE_LAYER, live_scoring.LIVE_TABLE),
                    "table_uri": dg.MetadataValue.path(
                        lake.uri(live_scoring.LIVE_LAYER, live_scoring.LIVE_TABLE)
                    ),
                },
            )
        )


@dg.job(description="Score running batches for contamination (the 5-minute scoring path).")
def contamination_live_job() -> None:
    score_running_contamination()


@dg.schedule(
    name="contamination_live_schedule",
    job=contamination_live_job,
    cron_schedule=os.environ.get("PHARMA_CONTAMINATION_CRON", "*/5 * * * *"),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 5 minutes (PHARMA_CONTAMINATION_CRON): contamination risk of the newest "
    "window of each running batch, between retrainings. Its runs go ahead of ingestion in the "
    "queue (dagster/priority), and a tick is skipped while the previous run is still open.",
)
def contamination_live_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    if open_runs(context.instance, contamination_live_job.name):
        return dg.SkipReason("the previous contamination_live_job run is still open")
    return dg.RunRequest(
        tags={LANE_TAG: contamination_live_job.name, "dagster/priority": "10"},
    )
