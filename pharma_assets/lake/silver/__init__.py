"""Silver: typed, unit-normalised, contract-checked data, built incrementally.

Telemetry (per batch partition) is processed once per bronze source file: the files the
bronze ledger accepted and ``silver/telemetry_log`` has not recorded yet. One pass over
those rows only writes five tables. Files are taken in groups of about a million readings
(across batches in a backfill), one commit per table and group; every row carries its
``source_file``, so a rerun after a crash finds, per table, the files whose rows are
already there (``Lake.sources_in``) and completes exactly what was missing (an empty
output is not committed at all once its table exists: the rerun derives the same
nothing). The files are recorded in ``telemetry_log`` last:

- ``telemetry``: valid readings, canonical units, with phase and spec version;
- ``telemetry_quarantine``: rows that failed the contract, with the failed check(s) and
  the offending value;
- ``excursion_segments``: runs of valid CPP readings outside the normal operating range
  within one file (gold joins adjacent segments into excursions);
- ``telemetry_stats``: per file, tag and phase: count, sum, sum of squares, min, max,
  first/last reading (gold derives Cpk and last values without rereading history);
- ``batch_timeline``: one row per batch per elapsed minute, a column per tag, with phase.

MES events, LIMS results and CMMS records are small and rebuilt whole from bronze on each
run (``batches``, ``batch_phases``, ``event_quarantine``, ``lab_results``,
``lab_quarantine``, ``maintenance_events``).
"""

from .batches import BATCH_SCHEMA, EVENT_Q_SCHEMA, PHASE_SCHEMA, build_batches, derive_batches
from .checks import duplicate_readings, reconcile_telemetry
from .common import LAYER, MES_EVENT_TYPES, SILVER_TELEMETRY_COLUMNS, TELEMETRY_TABLES
from .derived import SEGMENT_SCHEMA
from .lab_results import build_lab_results, build_maintenance, derive_lab_results
from .prepare import SilverReport, pending_telemetry_files, prepare
from .telemetry import process_telemetry

__all__ = [
    "BATCH_SCHEMA",
    "EVENT_Q_SCHEMA",
    "LAYER",
    "MES_EVENT_TYPES",
    "PHASE_SCHEMA",
    "SEGMENT_SCHEMA",
    "SILVER_TELEMETRY_COLUMNS",
    "TELEMETRY_TABLES",
    "SilverReport",
    "build_batches",
    "build_lab_results",
    "build_maintenance",
    "derive_batches",
    "derive_lab_results",
    "duplicate_readings",
    "pending_telemetry_files",
    "prepare",
    "process_telemetry",
    "reconcile_telemetry",
]
