"""Materialize everything pending for the landing zone in one process (``pharma-twin pipeline``).

It runs the same jobs the sensors run, against the same Dagster instance the UI shows
(``$DAGSTER_HOME``, else the repository's ``dagster.yaml``), so every run, materialization
and asset check it makes is visible in the Dagster UI afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pharma_assets.defs.lakehouse.assets import batch_partitions
from pharma_assets.defs.lakehouse.automation import (
    batch_ingest_job,
    gold_job,
    plan_requests,
    plant_events_job,
)
from pharma_assets.defs.lakehouse.definitions import defs as lakehouse_defs
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake

# the run's console logger at WARNING: the progress bar is the display, the UI has the logs
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class PipelineResult:
    batches: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def default_instance() -> dg.DagsterInstance:
    """$DAGSTER_HOME if set, else ./dagster.yaml (what `dagster dev` uses here), else ephemeral."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    if Path("dagster.yaml").exists():
        return dg.DagsterInstance.from_config(str(Path.cwd()))
    return dg.DagsterInstance.ephemeral()


def archive_derived(lake: Lake) -> list[str]:
    """Move silver and gold aside (``<lake>/_archive/<layer>-<UTC stamp>``) so that the next
    run derives them again from bronze; nothing is deleted. Local lakes only."""
    if not lake.is_local:
        raise ValueError("--rebuild works on local lakes only; on an object store, move the "
                         "silver/ and gold/ prefixes aside with the store's tools")  # fmt: skip
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


def run_pipeline(
    lakehouse: LakehouseResource,
    instance: dg.DagsterInstance,
    batches_per_run: int = 20,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> PipelineResult:
    """Ingest every pending landed file, then refresh gold. Returns the runs made."""
    res = PipelineResult()
    defs = lakehouse_defs()
    resources = {"lakehouse": lakehouse}
    per_batch, _plant, _ = plan_requests(lakehouse.landing_dir, lakehouse.lake())
    pending = set(per_batch)
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
    job = defs.resolve_job_def(batch_ingest_job.name)
    for first, last, n in segs:
        if on_progress:
            on_progress(f"ingesting {first}..{last}", done, total)
        r = job.execute_in_process(
            instance=instance, resources=resources, raise_on_error=False, run_config=QUIET,
            tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        )  # fmt: skip
        res.runs.append(r.run_id)
        if not r.success:
            res.failed.append(r.run_id)
        done += n
    if on_progress:
        on_progress("plant events and gold", done, total)
    for j in (plant_events_job, gold_job):
        r = defs.resolve_job_def(j.name).execute_in_process(
            instance=instance, resources=resources, raise_on_error=False, run_config=QUIET
        )
        res.runs.append(r.run_id)
        if not r.success:
            res.failed.append(r.run_id)
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
        instance=instance, resources={"lakehouse": lakehouse, "ml": MlResource.from_env()},
        raise_on_error=False, run_config=QUIET, tags={COMPLETED_TAG: str(n), "pharma/trigger": "cli"},
    )  # fmt: skip
    return r, n
