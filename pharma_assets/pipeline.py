"""Materialize everything pending for the landing zone in one process (``pharma-twin pipeline``).

It runs the same jobs the sensors run, against the same Dagster instance the UI shows
(``$DAGSTER_HOME``, else the repository's ``dagster.yaml``), so every run, materialization
and asset check it makes is visible in the Dagster UI afterwards.

Its runs execute in this process and carry the process's host, pid and start time as tags.
A run left STARTED by a process that no longer exists (killed by SIGKILL or the OOM killer)
is marked failed, with the reason, by the next invocation before it starts new runs
(``fail_orphaned_runs``). Runs the daemon launches are covered by the instance's run
monitoring (``run_monitoring`` in dagster.yaml).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from pharma_assets.defs.lakehouse.assets import batch_partitions
from pharma_assets.defs.lakehouse.automation import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    batch_ingest_job,
    gold_job,
    plan_requests,
    plant_events_job,
)
from pharma_assets.defs.lakehouse.definitions import defs as lakehouse_defs
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.lake.storage import Lake

# the run's console logger at WARNING: the progress bar is the display, the UI has the logs
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# who executes a run in process: host, pid and the pid's start time (pids are reused)
HOST_TAG, PID_TAG, PID_START_TAG = "pharma/host", "pharma/pid", "pharma/pid_start"


@dataclass
class PipelineResult:
    batches: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # runs an earlier, killed invocation left STARTED, marked failed by this one
    orphaned: list[str] = field(default_factory=list)
    # stopped by Ctrl-C / SIGTERM: the interrupted run failed, later ones were not started
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """True when the in-process run failed because the process was interrupted (Ctrl-C, or
    SIGTERM under :func:`stop_on_sigterm`): Dagster then fails only that run and returns."""
    if result.success:
        return False
    ev = result.get_run_failure_event()
    err = getattr(ev.event_specific_data, "error", None)
    return err is not None and err.cls_name == "DagsterExecutionInterruptedError"


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While active, SIGTERM interrupts like Ctrl-C (a KeyboardInterrupt in the main thread),
    so a stopped pipeline fails its current run cleanly instead of dying mid-commit."""

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def default_instance() -> dg.DagsterInstance:
    """$DAGSTER_HOME if set, else ./dagster.yaml (what `dagster dev` uses here), else ephemeral."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    if Path("dagster.yaml").exists():
        return dg.DagsterInstance.from_config(str(Path.cwd()))
    return dg.DagsterInstance.ephemeral()


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming this process, put on every run it executes in process."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _pid_start(pid) or ""}


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the in-progress runs whose executing process (on this host) is gone.

    Only runs tagged by ``process_tags`` are judged (their process is known); a run whose
    pid is alive with the same start time is still running and left alone. Returns the run
    ids marked failed.
    """
    host = socket.gethostname()
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={HOST_TAG: host},
        )
    )
    out = []
    for rec in records:
        run = rec.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if not pid.isdigit():
            continue
        started = _pid_start(int(pid))
        if started is not None and started == run.tags.get(PID_START_TAG, started):
            continue  # still running
        instance.report_run_failed(
            run,
            f"The process that executed this run (pid {pid} on {host}) no longer exists: it "
            "was killed (SIGKILL, out of memory) before the run finished. Marked failed by "
            "the next `pharma-twin pipeline`; its work is redone by the next run.",
        )
        out.append(run.run_id)
    return out


def archive_derived(lake: Lake) -> list[str]:
    """Move silver and gold aside (``<lake>/_archive/<layer>-<UTC stamp>``) so that the next
    run derives them again from bronze; nothing is deleted. Local lakes only."""
    if not lake.is_local:
        raise ValueError(
            "--rebuild works on local lakes only; on an object store, move the "
            "silver/ and gold/ prefixes aside with the store's tools"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for layer in ("silver", "gold"):
        src = Path(lake.root) / layer
        if src.exists():
            dst = Path(lake.root) / "_archive" / f"{layer}-{stamp}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), dst)
            moved.append(str(dst))
    lake.forget()
    return moved


def segments(ordered: list[str], pending: set[str], max_len: int) -> list[tuple[str, str, int]]:
    """Contiguous runs of pending keys in partition order, at most max_len keys each."""
    out: list[tuple[str, str, int]] = []
    start = None
    n = 0
    prev = None
    for k in ordered:
        if k in pending:
            if start is None:
                start, n = k, 0
            n += 1
            prev = k
            if n == max_len:
                out.append((start, k, n))
                start = None
        elif start is not None:
            assert prev is not None
            out.append((start, prev, n))
            start = None
    if start is not None and prev is not None:
        out.append((start, prev, n))
    return out


def latest_batches(landing_dir: str, n: int) -> set[str]:
    """The ``n`` most recent landed batches of each unit (batch ids number a unit's batches)."""
    per_unit: dict[str, set[str]] = {}
    for f in scan_landing(landing_dir):
        if f.batch_id is not None and f.unit_id is not None:
            per_unit.setdefault(f.unit_id, set()).add(f.batch_id)
    return {b for ids in per_unit.values() for b in sorted(ids)[-n:]}


def run_pipeline(
    lakehouse: LakehouseResource,
    instance: dg.DagsterInstance,
    batches_per_run: int = 20,
    on_progress: Callable[[str, int, int], None] | None = None,
    latest: int | None = None,
) -> PipelineResult:
    """Ingest every pending landed file, then refresh gold. Returns the runs made.

    ``latest``: only the ``latest`` most recent batches of each unit (the demo's first
    slice, so the dashboards show the plant within minutes; a later call without it fills
    in the rest). Runs an earlier invocation left STARTED when it was killed are marked
    failed first.
    """
    res = PipelineResult()
    res.orphaned = fail_orphaned_runs(instance)
    tags = process_tags()
    defs = lakehouse_defs()
    resources = {"lakehouse": lakehouse}
    per_batch, _plant, _ = plan_requests(lakehouse.landing_dir, lakehouse.lake())
    pending = set(per_batch)
    if latest is not None:
        pending &= latest_batches(lakehouse.landing_dir, latest)
    res.batches = sorted(pending)
    name = batch_partitions.name or "batch"
    existing = set(instance.get_dynamic_partitions(name))
    new = [k for k in sorted(pending) if k not in existing]
    if new:
        instance.add_dynamic_partitions(name, new)
    ordered = instance.get_dynamic_partitions(name)
    segs = segments(list(ordered), pending, batches_per_run)
    total = sum(n for *_, n in segs)
    done = 0
    if lakehouse.uses_spark and pending:  # PHARMA_ENGINE=spark: the bulk work on Spark first
        from pharma_assets.defs.lakehouse.engine import run_spark_backfill

        if on_progress:
            on_progress(f"spark backfill of {len(pending)} batches", done, total)
        r = run_spark_backfill(lakehouse, instance, sorted(pending), tags)
        res.runs.append(r.run_id)
        if not r.success:
            res.failed.append(r.run_id)
        if was_interrupted(r):
            res.interrupted = True
            return res
    job = defs.resolve_job_def(batch_ingest_job.name)
    for first, last, n in segs:
        if on_progress:
            on_progress(f"ingesting {first}..{last}", done, total)
        r = job.execute_in_process(
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=QUIET,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: first,
                ASSET_PARTITION_RANGE_END_TAG: last,
                **tags,
            },
        )
        res.runs.append(r.run_id)
        if not r.success:
            res.failed.append(r.run_id)
        if was_interrupted(r):
            res.interrupted = True
            return res
        done += n
    if on_progress:
        on_progress("plant events and gold", done, total)
    for j in (plant_events_job, gold_job):
        r = defs.resolve_job_def(j.name).execute_in_process(
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=QUIET,
            tags=tags,
        )
        res.runs.append(r.run_id)
        if not r.success:
            res.failed.append(r.run_id)
        if was_interrupted(r):
            res.interrupted = True
            return res
    if on_progress:
        on_progress("done", total, total)
    return res


def run_training(
    lakehouse: LakehouseResource, instance: dg.DagsterInstance
) -> tuple[dg.ExecuteInProcessResult, int]:
    """Run ``retrain_job`` (features, every model with its champion/challenger gate, the gold
    scoring tables) in process, tagged with the number of completed batches it trained on,
    so the retrain sensor counts the next 50 from there. Returns (result, completed)."""
    from pharma_assets.defs.ml.automation import COMPLETED_TAG, completed_batches, retrain_job
    from pharma_assets.defs.ml.definitions import defs as ml_defs
    from pharma_assets.defs.ml.resources import MlResource

    n = completed_batches(lakehouse.lake())
    job = dg.Definitions.merge(lakehouse_defs(), ml_defs()).resolve_job_def(retrain_job.name)
    r = job.execute_in_process(
        instance=instance,
        resources={"lakehouse": lakehouse, "ml": MlResource.from_env()},
        raise_on_error=False,
        run_config=QUIET,
        tags={COMPLETED_TAG: str(n), "pharma/trigger": "cli", **process_tags()},
    )
    return r, n
