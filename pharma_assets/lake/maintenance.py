"""Table maintenance: compact the small files that chunk-by-chunk ingestion leaves behind.

A live plant appends one small commit per delivered chunk and table (a few thousand rows
each): after a few months a silver table holds tens of thousands of files. Every snapshot
load, every "which files are already written" lookup (``Lake.sources_in``) and every scan
then costs in proportion to that number, so the cost of ingesting a chunk would creep up
with the age of the lake. ``compact`` bin-packs the small files of each append-only table
into files of about ``target_size`` bytes (Delta OPTIMIZE; large files are left alone, so a
run costs in proportion to what arrived since the last one) and writes a checkpoint.

Nothing is deleted: the replaced files stay referenced by the table's earlier versions
(time travel, GxP review) until a vacuum, which stays under the retention rules of
``pharma_assets.compliance.retention``. Content is unchanged: the test compares every row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from .storage import TABLE_CONFIGURATION, Lake, writer_properties

# The append-only tables that grow by one commit per delivered chunk.
APPEND_ONLY_TABLES: tuple[tuple[str, str], ...] = (
    ("bronze", "telemetry"),
    ("bronze", "mes"),
    ("bronze", "lims"),
    ("bronze", "cmms"),
    ("bronze", "ingest_log"),
    ("bronze", "quarantine"),
    ("silver", "telemetry"),
    ("silver", "telemetry_quarantine"),
    ("silver", "excursion_segments"),
    ("silver", "telemetry_stats"),
    ("silver", "batch_timeline"),
    ("silver", "telemetry_log"),
)
TARGET_SIZE = 128 * 1024 * 1024  # bytes per compacted file
MIN_FILES = 16  # a table with fewer data files is left as it is


@dataclass
class CompactionResult:
    table: str
    files_before: int
    files_after: int
    files_removed: int
    files_added: int
    version_before: int | None
    version_after: int | None
    seconds: float
    skipped: str | None = None


def compact(
    lake: Lake,
    tables: Sequence[tuple[str, str]] = APPEND_ONLY_TABLES,
    min_files: int = MIN_FILES,
    target_size: int = TARGET_SIZE,
) -> list[CompactionResult]:
    """Compact every listed table that has at least ``min_files`` data files."""
    out = []
    for layer, name in tables:
        t0 = time.perf_counter()
        dt = lake.table(layer, name)
        label = f"{layer}/{name}"
        if dt is None:
            out.append(CompactionResult(label, 0, 0, 0, 0, None, None, 0.0, "table does not exist"))
            continue
        before, v0 = len(dt.file_uris()), dt.version()
        if before < min_files:
            out.append(
                CompactionResult(
                    label, before, before, 0, 0, v0, v0, 0.0, f"fewer than {min_files} files"
                )
            )
            continue
        # the lake's table settings (checkpoint interval, statistics columns) on old tables too
        conf = dt.metadata().configuration
        missing = {k: v for k, v in TABLE_CONFIGURATION.items() if conf.get(k) != v}
        if missing:
            dt.alter.set_table_properties(missing)
        schema = pa.schema(dt.schema().to_arrow())  # (arro3 -> pyarrow, Arrow C interface)
        m = dt.optimize.compact(
            target_size=target_size, writer_properties=writer_properties(schema, layer)
        )
        dt.create_checkpoint()
        lake.forget()
        after = lake.table(layer, name)
        assert after is not None
        out.append(
            CompactionResult(
                label,
                before,
                len(after.file_uris()),
                int(m.get("numFilesRemoved", 0)),
                int(m.get("numFilesAdded", 0)),
                v0,
                after.version(),
                time.perf_counter() - t0,
            )
        )
    return out
