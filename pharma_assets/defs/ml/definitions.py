"""The ML code location part: feature tables, models, gold scoring tables, retraining."""

import dagster as dg

from . import assets
from .automation import (
    contamination_live_job,
    contamination_live_schedule,
    retrain_job,
    retrain_sensor,
)
from .monitoring import MONITORING_ASSETS, MONITORING_TRAINING_KEYS
from .resources import MlResource


@dg.definitions
def defs() -> dg.Definitions:
    ml_assets: list[dg.AssetsDefinition] = [
        assets.feature_tables,
        assets.pdm_failure_72h,
        assets.quality_models,
        assets.equipment_health,
        assets.batch_forecasts,
        assets.model_capabilities,
    ]
    training = list(assets.TRAINING_ASSETS)
    ml_assets += MONITORING_ASSETS  # contamination detection and MSPC batch monitoring
    training += MONITORING_TRAINING_KEYS
    ml_assets.append(assets.model_performance_asset(training))
    return dg.Definitions(
        assets=ml_assets,
        jobs=[retrain_job, contamination_live_job],
        sensors=[retrain_sensor],
        schedules=[contamination_live_schedule],
        # "lakehouse" comes from the lakehouse definitions (one resource per key)
        resources={"ml": MlResource.from_env()},
    )
