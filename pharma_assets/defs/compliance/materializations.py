"""Read materialization events of governed tables from a Dagster instance for the audit trail.

Used by the ``materialization_audit`` sensor (daemon) and by ``audit_new_materializations``,
which ``pharma-twin pipeline`` calls at its end (it runs without the daemon).
"""

from __future__ import annotations

import dagster as dg

from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.materialization import (
    GOVERNED_LAYERS,
    MaterializationInfo,
    last_recorded,
    record_materializations,
)
from pharma_assets.lake.storage import Lake

PAGE = 1000


def _delta_version(md: dict[str, dg.MetadataValue]) -> int | None:
    v = md.get("delta_version")
    val = getattr(v, "value", v)
    return int(val) if isinstance(val, int | float) else None


def instance_id(instance: dg.DagsterInstance) -> str:
    """The instance's storage folder: storage ids are unique only within one instance."""
    return str(instance.root_directory)


def materializations_since(
    instance: dg.DagsterInstance, after_storage_id: int
) -> list[MaterializationInfo]:
    """Materializations of bronze/silver/gold assets with a storage id above the cursor."""
    out: list[MaterializationInfo] = []
    inst = instance_id(instance)
    for key in instance.get_asset_keys():
        if not key.path or key.path[0] not in GOVERNED_LAYERS:
            continue
        cursor = None
        while True:
            res = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after_storage_id),
                limit=PAGE, cursor=cursor, ascending=True,
            )  # fmt: skip
            for r in res.records:
                m = r.asset_materialization
                if m is None:
                    continue
                out.append(MaterializationInfo(
                    storage_id=r.storage_id, table="/".join(key.path[:2]), run_id=r.run_id,
                    delta_version=_delta_version(dict(m.metadata)), partition=m.partition,
                    timestamp=r.timestamp, instance=inst,
                ))  # fmt: skip
            if not res.has_more:
                break
            cursor = res.cursor
    return sorted(out, key=lambda m: m.storage_id)


def audit_new_materializations(lake: Lake, instance: dg.DagsterInstance) -> int:
    """Record every materialization not yet in the lake's audit trail; returns how many."""
    trail = AuditTrail(lake)
    hwm = last_recorded(trail, instance_id(instance)).high_water
    return record_materializations(lake, materializations_since(instance, hwm), trail)
