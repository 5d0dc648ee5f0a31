"""Fixtures and helpers for the Dagster code-location tests.

``landing_template`` (the session's simulated plant: 2 units, 3 batches) and ``landing``
(a per-test copy) are the lake tests' fixtures, reused here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

from pharma_assets.defs.lakehouse.automation import landing_sensor
from pharma_assets.defs.lakehouse.definitions import defs as lakehouse_defs
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets_tests.lake.conftest import landing, landing_template  # noqa: F401

BATCH_PARTITIONS = "batch"
# the run tags a ranged backfill request carries (Dagster's documented tag names)
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


class SensorTick(Protocol):
    """What the tests read of ``SensorDefinition.evaluate_tick``'s result (public fields)."""

    @property
    def run_requests(self) -> Sequence[dg.RunRequest] | None: ...
    @property
    def skip_message(self) -> str | None: ...
    @property
    def cursor(self) -> str | None: ...
    @property
    def dynamic_partitions_requests(self) -> Sequence[Any] | None: ...


def lakehouse_for(landing_dir: Path, lake_dir: Path) -> LakehouseResource:
    return LakehouseResource(lake_uri=str(lake_dir), landing_dir=str(landing_dir))


def definitions_with(lakehouse: LakehouseResource) -> dg.Definitions:
    """The lakehouse code location, with the given lake instead of the environment's."""
    d = lakehouse_defs()
    return dg.Definitions(
        assets=d.assets,
        asset_checks=d.asset_checks,
        jobs=d.jobs,
        sensors=d.sensors,
        resources={"lakehouse": lakehouse},
    )


def sensor_tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    lakehouse: LakehouseResource,
    cursor: str | None = None,
) -> SensorTick:
    """One evaluation of a sensor, as the daemon makes it (its requests are not applied)."""
    # closed after the tick: a context left open keeps the instance it opened from the ref
    # as the current DefsStateStorage of every later Definitions load in this process
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        definitions=definitions_with(lakehouse),
        resources={"lakehouse": lakehouse},
        cursor=cursor,
    ) as ctx:
        return sensor.evaluate_tick(ctx)


def landing_tick(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, cursor: str | None = None
) -> SensorTick:
    return sensor_tick(landing_sensor, instance, lakehouse, cursor)


def requested_batches(req: dg.RunRequest, instance: dg.DagsterInstance) -> list[str]:
    """The batch partitions a batch_ingest_job request covers (one key or a key range)."""
    if req.partition_key is not None:
        return [req.partition_key]
    start = req.tags[ASSET_PARTITION_RANGE_START_TAG]
    end = req.tags[ASSET_PARTITION_RANGE_END_TAG]
    ordered = list(instance.get_dynamic_partitions(BATCH_PARTITIONS))
    return ordered[ordered.index(start) : ordered.index(end) + 1]


def apply_partition_requests(instance: dg.DagsterInstance, tick: SensorTick) -> None:
    """What the daemon does with the tick's dynamic partitions requests."""
    for req in tick.dynamic_partitions_requests or []:
        assert isinstance(req, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def cursor_of(tick: SensorTick) -> dict[str, Any]:
    assert tick.cursor is not None
    return json.loads(tick.cursor)


def landed_batches(landing_dir: Path) -> dict[str, list[str]]:
    """Batch id -> landed files of that batch (telemetry, MES, LIMS), from the filesystem."""
    out: dict[str, list[str]] = {}
    for f in scan_landing(landing_dir):
        if f.batch_id is not None:
            out.setdefault(f.batch_id, []).append(f.rel)
    return out
