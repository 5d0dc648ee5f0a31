"""The Spark backfill as a Dagster job (``PHARMA_ENGINE=spark``).

``pharma-twin pipeline`` runs it first for every batch with new files when the engine is
spark; the usual ingestion runs that follow find those files done (exactly once) and still
record the materializations and run every asset check (reconciliation, duplicates, pass
rate) on what Spark wrote. Sensor-driven increments (a few files a minute) stay on polars:
a Spark session costs 20-110 s to start here.
"""

import dagster as dg

from pharma_assets.engines.spark import backfill

from .resources import LakehouseResource


class SparkBackfillConfig(dg.Config):
    batch_ids: list[str]
    batches_per_task: int = 4


@dg.op(tags={"kind": "spark"})
def spark_backfill(
    context: dg.OpExecutionContext, config: SparkBackfillConfig, lakehouse: LakehouseResource
) -> dg.Output[None]:
    """Landing -> bronze -> silver for the configured batches, one Spark task per group."""
    lake = lakehouse.lake()
    rep = backfill.backfill(
        lakehouse.spark_session(),
        lake.root,
        lakehouse.landing_dir,
        config.batch_ids,
        context.run.run_id,
        spec_path=lakehouse.spec_path,
        storage_options=lake.storage_options,
        batches_per_task=config.batches_per_task,
    )
    context.log.info("spark backfill: %s", rep.as_metadata())
    return dg.Output(None, metadata=rep.as_metadata())


@dg.job(description="Bulk backfill of batches on Spark (PHARMA_ENGINE=spark).")
def spark_backfill_job() -> None:
    spark_backfill()


def run_spark_backfill(
    lakehouse: LakehouseResource,
    instance: dg.DagsterInstance,
    batch_ids: list[str],
    tags: dict[str, str],
    batches_per_task: int = 4,
) -> dg.ExecuteInProcessResult:
    """Execute ``spark_backfill_job`` in this process (the driver) for ``batch_ids``."""
    cfg = {
        "ops": {
            "spark_backfill": {
                "config": {"batch_ids": batch_ids, "batches_per_task": batches_per_task}
            }
        }
    }
    return spark_backfill_job.execute_in_process(
        run_config=cfg,
        instance=instance,
        resources={"lakehouse": lakehouse},
        raise_on_error=False,
        tags=tags,
    )
