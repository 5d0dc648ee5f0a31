"""Hourly refresh of the running-batch optimisation tables, one run at a time."""

import os

import dagster as dg

from pharma_assets.defs.lakehouse.automation import LANE_TAG, open_runs

from .assets import RECIPE_ASSETS, RUNNING_ASSETS

running_optimise_job = dg.define_asset_job(
    "running_optimise_job",
    selection=dg.AssetSelection.assets(*RUNNING_ASSETS),
    executor_def=dg.in_process_executor,
    description="Recalibrate the twin to every running batch and refresh its recommendations "
    "and harvest time (gold/twin_calibrated_state, batch_recommendations, "
    "harvest_recommendations).",
)
recipe_optimise_job = dg.define_asset_job(
    "recipe_optimise_job",
    selection=dg.AssetSelection.assets(*RECIPE_ASSETS),
    executor_def=dg.in_process_executor,
    description="Per recipe: surrogate training, sensitivity and design space, recipe "
    "optimisation with its verification. On demand (minutes).",
)


@dg.schedule(
    name="running_optimise_schedule",
    job=running_optimise_job,
    cron_schedule=os.environ.get("PHARMA_OPTIMISE_CRON", "7 * * * *"),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour (PHARMA_OPTIMISE_CRON): refresh the running batches' calibrated "
    "state, recommendations and harvest times. A tick is skipped while the previous run is "
    "queued or running, and the run carries the job's lane tag (one run per lane in "
    "dagster.yaml), so it can never pile up in the queue.",
)
def running_optimise_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    if open_runs(context.instance, running_optimise_job.name):
        return dg.SkipReason("the previous running_optimise_job run is still open")
    return dg.RunRequest(tags={LANE_TAG: running_optimise_job.name})
