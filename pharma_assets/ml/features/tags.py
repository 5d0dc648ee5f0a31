"""The vocabulary of the feature tables: tag lists (from the unit class and the CPP spec),
equipment signals, LIMS analytes and forecast horizons."""

from __future__ import annotations

from datetime import datetime

from pharma_assets.lake.specs import load_spec
from pharma_assets.process.vocabulary import BIOREACTOR, cpp_tags

#: CPPs per the CPP spec (``cpp: true``), in the unit class's canonical tag order
CPP_TAGS: tuple[str, ...] = cpp_tags(load_spec(), BIOREACTOR)
#: process tags of the unit class (the same list MSPC monitors): hourly mean of each
PROCESS_TAGS: tuple[str, ...] = BIOREACTOR.process_tags
#: equipment-condition tags (predictive maintenance): hourly mean, max and std of each
CONDITION_TAGS: tuple[str, ...] = BIOREACTOR.condition_tags
#: levels and totalisers also summarised by their last value of the hour
LAST_TAGS = ("volume_l", "base_addition_ml", "capacitance_pf_cm")
#: every timeline tag the hourly rollup reads (a superset of the contamination and MSPC tags)
ROLLUP_TAGS: tuple[str, ...] = (*PROCESS_TAGS, *CONDITION_TAGS)

EQUIPMENT_TYPES = {"AGT": "agitator_motor", "FP": "feed_pump"}
#: feed-pump motor condition tags, read only over the minutes the pump delivers (idle, the
#: motor is off: ambient winding temperature, no current to unbalance, no vibration)
FEED_PUMP_MOTOR_TAGS = (
    "feed_pump_bearing_defect_ge",
    "feed_pump_winding_temp_c",
    "feed_pump_current_imbalance_pct",
)
# per equipment type: the hourly condition columns whose level and trend describe its health
EQUIPMENT_SIGNALS: dict[str, tuple[str, ...]] = {
    "agitator_motor": (
        "agitator_vibration_mm_s",
        "agitator_bearing_temp_c",
        "agitator_motor_current_a",
        "agitator_bearing_defect_ge",
        "agitator_winding_temp_c",
        "agitator_current_imbalance_pct",
    ),
    "feed_pump": (
        "feed_pump_current_a",
        "feed_rate_ml_h",
        "pump_current_per_flow",
        *FEED_PUMP_MOTOR_TAGS,
    ),
}
N_SIGNALS = 6
MAINTENANCE_RESETS = ("preventive_maintenance", "corrective_maintenance")

LIMS_ANALYTES = (
    "viable_cell_density_e6_cells_ml",
    "viability_pct",
    "glucose_g_l",
    "glutamine_mmol_l",
    "lactate_g_l",
    "ammonia_mmol_l",
    "osmolality_mosm_kg",
    "titer_g_l",
    "ph_offline",
    "pco2_mmhg",
)
HORIZONS_H: dict[str, float | None] = {"day3": 72.0, "day7": 168.0, "harvest": None}
TREND_WINDOW = "24h"

EPOCH = datetime(2020, 1, 1)
