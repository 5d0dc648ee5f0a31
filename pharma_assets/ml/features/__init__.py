"""Feature tables (the "feature store") shared by training and scoring.

A package with one module per job: ``tags`` (tag lists and horizons), ``inputs`` (the lake
tables read), ``rollup`` (hourly rollup, OUR/CER), ``timeline`` (the one pass over the
timeline), ``incremental`` (that pass only for new or changed batches), ``equipment`` (a), ``batch_hour`` (b), ``batch`` (c), ``common``. Every public
name is importable from ``pharma_assets.ml.features`` as before.

Three tables, all computed from what a real plant has in its lake (historian telemetry via
``silver/batch_timeline``, MES ``silver/batches``, LIMS ``silver/lab_results``, CMMS
``silver/maintenance_events``). The simulator's ground truth (fault labels, hidden
raw-material attributes ``attr_*``) is never read here.

* :func:`equipment_hour_features`: one row per critical equipment item (agitator AGT, feed
  pump FP) per hour of run time, for predictive maintenance.
* :func:`batch_hour_features`: one row per batch per elapsed hour: CPP statistics, OUR/CER
  from the off-gas balance, specific rates, cumulative feed.
* :func:`batch_features`: one row per batch at a forecast horizon (day 3, day 7, harvest):
  recipe, lot history, early-phase summaries and in-process LIMS results known by then.

No feature looks past its scoring time. Hourly rows are stamped with the END of their hour
(``hour_ts`` / ``elapsed_h``): a row with ``hour_ts = T`` uses readings with timestamps
``< T`` only, so it can be scored at ``T``. Rolling trends look back, never forward.

OUR/CER come from the inert-gas balance of :mod:`pharma_assets.process.gas` (the one
implementation, shared with the contamination detector; formula and air composition there),
with a missing sparge flow read as 0 slpm (a plant without that gas line); RQ = CER / OUR.

Specific rates are per unit of viable biovolume (capacitance, pF/cm): ``q_o2 = OUR /
capacitance``. Cumulative feed is the time integral of ``feed_rate_ml_h`` (L).
"""

from .batch import (
    TITER_FIT_SAMPLES,
    YIELD_TRAJECTORY_FEATURES,
    batch_feature_columns,
    batch_features,
)
from .batch_hour import batch_hour_features
from .common import is_finite, nan_to_null
from .equipment import (
    EQUIPMENT_FEATURES,
    HEALTH_FEATURES,
    N_RESIDUALS,
    RESID_MIN_HOURS,
    declared_equipment,
    equipment_hour_features,
    signal_names,
)
from .incremental import (
    IncrementalProducts,
    incremental_timeline_products,
    stored_products,
    timeline_fingerprints,
)
from .inputs import MlInputs, load_inputs
from .rollup import gas_rates, hourly_rollup
from .tags import (
    CONDITION_TAGS,
    CPP_TAGS,
    EQUIPMENT_SIGNALS,
    EQUIPMENT_TYPES,
    FEED_PUMP_MOTOR_TAGS,
    HORIZONS_H,
    LAST_TAGS,
    LIMS_ANALYTES,
    MAINTENANCE_RESETS,
    N_SIGNALS,
    PROCESS_TAGS,
    ROLLUP_TAGS,
    TREND_WINDOW,
)
from .timeline import (
    TimelineProducts,
    products_from_timeline,
    timeline_batch_ids,
    timeline_products,
)

__all__ = [
    "CONDITION_TAGS",
    "CPP_TAGS",
    "EQUIPMENT_FEATURES",
    "EQUIPMENT_SIGNALS",
    "EQUIPMENT_TYPES",
    "FEED_PUMP_MOTOR_TAGS",
    "HEALTH_FEATURES",
    "HORIZONS_H",
    "LAST_TAGS",
    "LIMS_ANALYTES",
    "MAINTENANCE_RESETS",
    "N_RESIDUALS",
    "N_SIGNALS",
    "PROCESS_TAGS",
    "RESID_MIN_HOURS",
    "ROLLUP_TAGS",
    "TITER_FIT_SAMPLES",
    "TREND_WINDOW",
    "YIELD_TRAJECTORY_FEATURES",
    "IncrementalProducts",
    "MlInputs",
    "TimelineProducts",
    "batch_feature_columns",
    "batch_features",
    "batch_hour_features",
    "declared_equipment",
    "equipment_hour_features",
    "gas_rates",
    "hourly_rollup",
    "incremental_timeline_products",
    "is_finite",
    "load_inputs",
    "nan_to_null",
    "products_from_timeline",
    "signal_names",
    "stored_products",
    "timeline_batch_ids",
    "timeline_fingerprints",
    "timeline_products",
]
