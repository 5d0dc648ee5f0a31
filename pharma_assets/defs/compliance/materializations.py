"""Read materialization events of governed tables from a Dagster instance for the audit trail.

Used by the ``materialization_audit`` sensor (daemon) and by ``audit_new_materializations``,
which ``pharma-twin pipeline`` calls at its end (it runs without the daemon).

Each event is tied to the Delta table its run wrote (``MaterializationInfo.table_uri``): the
asset's ``table_uri`` metadata, else the ``lake_uri`` of the run's ``lakehouse`` resource
configuration, else the lake another asset of the same run wrote (one run uses one
``lakehouse`` resource). The domain code then records only this lake's events.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.materialization import (
    GOVERNED_LAYERS,
    MaterializationAudit,
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


def _table_uri(md: dict[str, Any]) -> str | None:
    v = md.get("table_uri")
    val = getattr(v, "value", v)
    return str(val) if isinstance(val, str) and val else None


def instance_id(instance: dg.DagsterInstance) -> str:
    """The instance's storage folder: storage ids are unique only within one instance."""
    return str(instance.root_directory)


def _lake_root(table_uri: str, path: list[str]) -> str | None:
    """The lake root of a table URI ``<root>/<layer>/<name>`` (None if it is not of that form)."""
    suffix = "/" + "/".join(path[:2])
    return table_uri[: -len(suffix)] if len(path) >= 2 and table_uri.endswith(suffix) else None


def _run_lake(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The lake a run wrote: its ``lakehouse`` resource configuration, else the ``table_uri``
    of any asset it materialized."""
    run = instance.get_run_by_id(run_id)
    if run is not None:
        cfg: Any = run.run_config or {}
        for part in ("resources", "lakehouse", "config", "lake_uri"):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        if isinstance(cfg, str) and cfg:
            return Lake.at(cfg, {}).root
    for rec in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10_000
    ).records:
        m = rec.event_log_entry.asset_materialization
        uri = _table_uri(dict(m.metadata)) if m is not None else None
        root = _lake_root(uri, list(m.asset_key.path)) if uri and m is not None else None
        if root:
            return root
    return None


def materializations_since(
    instance: dg.DagsterInstance, after_storage_id: int
) -> list[MaterializationInfo]:
    """Materializations of bronze/silver/gold assets with a storage id above the cursor, each
    with the Delta table its run wrote (None when no source tells)."""
    out: list[MaterializationInfo] = []
    inst = instance_id(instance)
    run_lakes: dict[str, str | None] = {}
    for key in instance.get_asset_keys():
        if not key.path or key.path[0] not in GOVERNED_LAYERS:
            continue
        cursor = None
        while True:
            res = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after_storage_id),
                limit=PAGE,
                cursor=cursor,
                ascending=True,
            )
            for r in res.records:
                m = r.asset_materialization
                if m is None:
                    continue
                md = dict(m.metadata)
                uri = _table_uri(md)
                if uri is None:
                    if r.run_id not in run_lakes:
                        run_lakes[r.run_id] = _run_lake(instance, r.run_id)
                    root = run_lakes[r.run_id]
                    uri = f"{root}/{key.path[0]}/{key.path[1]}" if root else None
                out.append(
                    MaterializationInfo(
                        storage_id=r.storage_id,
                        table="/".join(key.path[:2]),
                        run_id=r.run_id,
                        delta_version=_delta_version(md),
                        partition=m.partition,
                        timestamp=r.timestamp,
                        instance=inst,
                        table_uri=uri,
                    )
                )
            if not res.has_more:
                break
            cursor = res.cursor
    return sorted(out, key=lambda m: m.storage_id)


def audit_materializations(
    lake: Lake, instance: dg.DagsterInstance, scanned_to: int = -1
) -> tuple[MaterializationAudit, int]:
    """Record every materialization of this lake not yet in its audit trail. Events up to
    ``scanned_to`` (a storage id the caller already examined, e.g. the sensor's cursor) are
    not read again. Returns what was recorded and the highest storage id examined."""
    trail = AuditTrail(lake)
    after = max(last_recorded(trail, instance_id(instance)).high_water, scanned_to)
    items = materializations_since(instance, after)
    top = max((m.storage_id for m in items), default=after)
    return record_materializations(lake, items, trail), top


def audit_new_materializations(lake: Lake, instance: dg.DagsterInstance) -> int:
    """Record every materialization of this lake not yet in its audit trail; returns how
    many were recorded."""
    return audit_materializations(lake, instance)[0].recorded
