"""One pass: landed telemetry -> bronze -> silver, each landed file read once.

``ingest_telemetry`` runs bronze's ingestion (``bronze.ingest_files``) in a worker thread;
after each of bronze's group commits (rows and ledger rows committed, ~1 M readings) the
group's in-memory frame is handed to silver, which validates it and writes the five
telemetry tables without reading bronze back; each group's commits (silver/telemetry, the
derived tables, the log) run in the background while the next group is validated, unless
the next group shares a batch with them (``silver.telemetry.GroupTails``; bronze ends a
group past half full with its batch). While silver works on group k, bronze writes
group k+1 and its read-ahead thread parses group k+2 (``bronze._Prefetch``): the writes, the
parsing and the validation overlap on both cores (delta-rs and polars release the GIL).

Exactly-once and reconciliation are those of the two steps run one after the other: silver
only sees rows bronze has committed with their ledger rows, takes its batch locks and
rechecks ``silver/telemetry_log`` under them, and writes the log last (``silver.telemetry``).
What the hand-over does not cover is finished by ``silver.process_telemetry`` afterwards,
reading bronze as before: files of batches whose ``batch_start`` has not landed yet, large
files (bronze spools them; silver reads them back slice by slice, bounded memory), and
files an earlier, interrupted run left in bronze.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from . import bronze, silver
from .landing_scan import LandedFile
from .silver.telemetry import GroupTails, process_group
from .specs import CppSpec
from .storage import Lake

_DONE = object()


class _Aborted(Exception):
    """Raised in the bronze thread when silver failed: stop handing over, stop ingesting."""


@dataclass
class TelemetryIngestReport:
    bronze: bronze.IngestReport
    silver: silver.SilverReport
    handed_over_files: int = 0  # files silver took from bronze's frames (not read back)


def _merge(into: silver.SilverReport, other: silver.SilverReport) -> None:
    for k in (
        "files_processed",
        "files_deferred",
        "rows_in",
        "rows_valid",
        "rows_quarantined",
        "segments",
    ):
        setattr(into, k, getattr(into, k) + getattr(other, k))
    into.failed_checks.update(other.failed_checks)
    into.batches |= other.batches
    into.files += other.files


def ingest_telemetry(
    lake: Lake,
    landing_root: str | Path,
    files: Sequence[LandedFile],
    spec: CppSpec,
    run_id: str,
    now: datetime | None = None,
    max_rows: int = 1_000_000,  # rows per bronze commit and silver group (bounds memory)
    limits: bronze.IngestLimits | None = None,
) -> TelemetryIngestReport:
    """Ingest landed telemetry files into bronze and silver in one pass (module docstring).

    Silver's batches must be built first (``silver.build_batches``): readings of a batch
    without its ``batch_start`` wait in bronze, as with ``silver.process_telemetry``.
    """
    limits = limits or bronze.IngestLimits.from_env()
    silver_now = now or datetime.now(UTC)
    srep = silver.SilverReport()
    batch_ids = sorted({f.batch_id for f in files if f.batch_id})
    in_ids = pl.col("batch_id").is_in(batch_ids)
    batches = lake.read(silver.LAYER, "batches", filter_expr=in_ids)
    phases = lake.read(silver.LAYER, "batch_phases", filter_expr=in_ids)
    if batches is None or phases is None:
        batches = pl.DataFrame(schema=silver.BATCH_SCHEMA)
        phases = pl.DataFrame(schema=silver.PHASE_SCHEMA)
    known = set(batches["batch_id"].to_list())
    handed = 0
    # one group in flight: bronze parses and writes group k+1 while silver works on group k
    hand_over: queue.Queue[object] = queue.Queue(maxsize=1)
    abort = threading.Event()

    def on_commit(committed: list[LandedFile], rows: pl.DataFrame) -> None:
        while not abort.is_set():
            try:
                hand_over.put((committed, rows), timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Aborted

    def run_bronze() -> bronze.IngestReport:
        try:
            return bronze.ingest_files(
                lake,
                landing_root,
                "telemetry",
                files,
                run_id,
                max_rows_per_commit=max_rows,
                now=now,
                limits=limits,
                on_commit=on_commit,
            )
        finally:
            while True:  # the end marker, unless silver has stopped listening
                try:
                    hand_over.put(_DONE, timeout=0.2)
                    break
                except queue.Full:
                    if abort.is_set():
                        break

    tails = GroupTails()  # each group's last commits overlap the next group (GroupTails)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bronze") as pool:
        bronze_run = pool.submit(run_bronze)
        try:
            while (item := hand_over.get()) is not _DONE:
                assert isinstance(item, tuple)
                committed: list[LandedFile] = item[0]
                rows: pl.DataFrame = item[1]
                ready = [f for f in committed if f.batch_id in known]  # others wait
                if not ready:
                    continue
                if len(ready) < len(committed):
                    names = [f.rel for f in ready]
                    rows = rows.filter(pl.col("source_file").is_in(names))
                group = [(f.batch_id or "", f.rel) for f in ready]
                process_group(
                    lake,
                    group,
                    spec,
                    batches,
                    phases,
                    run_id,
                    silver_now,
                    srep,
                    rows=rows,
                    tails=tails,
                )
                handed += len(ready)
                del rows, item
            tails.wait()
        except BaseException:
            abort.set()
            raise
        finally:
            tails.close()  # no tail runs (or holds locks) once this returns
        brep = bronze_run.result()
    # what was not handed over: deferred batches, large files, leftovers of crashed runs
    rest = silver.process_telemetry(lake, batch_ids, spec, run_id, silver_now, max_rows, limits)
    _merge(srep, rest)
    srep.files_deferred = rest.files_deferred
    return TelemetryIngestReport(brep, srep, handed)
