"""The optimisation code location part: twin calibration of running batches, in-batch and
harvest recommendations, sensitivity, design space and recipe optimisation."""

import dagster as dg

from .assets import RECIPE_ASSETS, RUNNING_ASSETS
from .automation import recipe_optimise_job, running_optimise_job, running_optimise_schedule


@dg.definitions
def defs() -> dg.Definitions:
    # "lakehouse" and "ml" resources come from their own definitions (one per key)
    return dg.Definitions(
        assets=[*RUNNING_ASSETS, *RECIPE_ASSETS],
        jobs=[running_optimise_job, recipe_optimise_job],
        schedules=[running_optimise_schedule],
    )
