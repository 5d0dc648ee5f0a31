"""Audit entries for materializations of governed tables (bronze, silver, gold).

Why: an inspector asks which run changed a table, from which version to which, with what
code. Every materialization becomes one audit entry: ``table_name`` = ``layer/name``,
``field`` = ``delta_version``, ``old_value`` / ``new_value`` = JSON with the Delta version and
row count before/after, ``context_id`` = the Dagster run id, plus the partition, the code
version (git SHA or package version), the Dagster instance (its storage folder) and the
event storage id. Storage ids are only unique within one instance (an ephemeral instance
starts again at 1), so the high-water mark is kept per instance and an event is identified
by (run id, storage id): an event already in the trail is never recorded twice.

Lake scoping: several lakes may share one Dagster instance (a test lake and the demo lake, two
sites). A trail records only materializations that wrote *its* lake: ``table_uri`` names the
Delta table the run wrote (the asset's ``table_uri`` metadata, else the lake of the run's
``lakehouse`` resource configuration, else the lake another asset of the same run wrote) and
must be this lake's table. Others are counted as ``other_lakes``; events whose lake cannot be
told are counted as ``unattributed`` (neither is recorded in this trail). Row counts are read
from this lake's table at the Delta version the run reported.

This module knows nothing about Dagster: pharma_assets/defs/compliance/ turns instance events
into ``MaterializationInfo`` and calls ``record_materializations``.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from pharma_assets.lake.storage import Lake

from .audit import AuditEvent, AuditTrail

GOVERNED_LAYERS = ("bronze", "silver", "gold")
ACTION = "materialization"


@dataclass(frozen=True)
class MaterializationInfo:
    storage_id: int
    table: str  # layer/name
    run_id: str
    delta_version: int | None
    partition: str | None = None
    timestamp: float | None = None
    instance: str = ""
    table_uri: str | None = None  # the Delta table the run wrote; None when it cannot be told


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Git commit of the checkout (``+dirty`` when modified), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "pharma-twin " + version("pharma-twin")
        except PackageNotFoundError:
            return "unknown"


class _RowCounts:
    """Rows of a table at a version, for the audit entries of one pass.

    One pass records thousands of materializations (a 1,000-batch build: about 10,000),
    each with the rows before and after. Each count used to load the table's snapshot at
    that version afresh (two loads per entry, each from the last checkpoint); here a table's
    snapshot is loaded once and moved forward (``load_as_version`` reads only the commits
    since), and each count is kept (an entry's "before" is usually the previous entry's
    "after"). A version behind the loaded one is loaded afresh."""

    def __init__(self, storage_options: dict[str, str]) -> None:
        self._opts = storage_options or None
        self._tables: dict[str, DeltaTable] = {}
        self._known: dict[tuple[str, int], int | None] = {}

    def __call__(self, uri: str, version: int | None) -> int | None:
        if version is None or version < 0:
            return None
        if (uri, version) not in self._known:
            self._known[(uri, version)] = self._count(uri, version)
        return self._known[(uri, version)]

    def _count(self, uri: str, version: int) -> int | None:
        try:
            dt = self._tables.get(uri)
            if dt is None or dt.version() > version:
                dt = DeltaTable(uri, version=version, storage_options=self._opts)
                self._tables[uri] = dt
            elif dt.version() < version:
                dt.load_as_version(version)
            actions = pl.DataFrame(dt.get_add_actions(flatten=True))
            return int(actions["num_records"].sum()) if "num_records" in actions.columns else None
        except Exception:
            self._tables.pop(uri, None)
            return None


def same_location(a: str, b: str) -> bool:
    """Do two table URIs name the same table (local paths compared after resolving)?"""

    def norm(u: str) -> str:
        u = u.rstrip("/")
        if "://" in u and not u.startswith("file://"):
            return u
        return os.path.realpath(u.removeprefix("file://"))

    return norm(a) == norm(b)


@dataclass(frozen=True)
class MaterializationAudit:
    """What one pass recorded: ``recorded`` entries written; ``other_lakes`` and
    ``unattributed`` events seen but not this lake's (see the module docstring);
    ``already`` events already in the trail."""

    recorded: int = 0
    other_lakes: int = 0
    unattributed: int = 0
    already: int = 0

    def summary(self) -> str:
        return (
            f"recorded {self.recorded} materializations in the audit trail ({self.already} "
            f"already there, {self.other_lakes} of other lakes, {self.unattributed} of no "
            "known lake: not recorded here)"
        )


@dataclass(frozen=True)
class Recorded:
    high_water: int  # highest storage id recorded for the instance asked about
    versions: dict[str, int]  # last recorded Delta version per table
    keys: frozenset[tuple[str, int]]  # (run id, storage id) already recorded


def last_recorded(trail: AuditTrail, instance: str = "") -> Recorded:
    """What the trail already holds about materializations (see ``Recorded``)."""
    df = trail.read(action=ACTION)
    if df.height == 0:
        return Recorded(-1, {}, frozenset())
    df = df.with_columns(
        sid=pl.col("new_value").str.json_path_match("$.event_storage_id").cast(pl.Int64),
        ver=pl.col("new_value").str.json_path_match("$.version").cast(pl.Int64),
        inst=pl.col("new_value").str.json_path_match("$.instance").fill_null(""),
    )
    sid = df.filter(pl.col("inst") == instance)["sid"].max()
    versions = df.drop_nulls("ver").group_by("table_name").agg(pl.col("ver").max())
    keys = frozenset(
        (r or "", int(k)) for r, k in zip(df["context_id"], df["sid"], strict=True) if k is not None
    )
    return Recorded(int(sid) if isinstance(sid, int) else -1, dict(versions.iter_rows()), keys)


def record_materializations(
    lake: Lake, items: Sequence[MaterializationInfo], trail: AuditTrail | None = None
) -> MaterializationAudit:
    """Append one audit entry per new materialization of a governed table of this lake."""
    trail = trail or AuditTrail(lake)
    with lake.lock("gxp_materialization_audit"):  # the sensor and the CLI may race
        return _record(lake, items, trail)


def _record(
    lake: Lake, items: Sequence[MaterializationInfo], trail: AuditTrail
) -> MaterializationAudit:
    rec = last_recorded(trail)
    last_version = dict(rec.versions)
    rows = _RowCounts(lake.storage_options)
    events = []
    cv = code_version()
    other = unknown = already = 0
    for m in sorted(items, key=lambda m: m.storage_id):
        if m.table.split("/")[0] not in GOVERNED_LAYERS:
            continue
        if (m.run_id, m.storage_id) in rec.keys:
            already += 1
            continue
        layer, name = m.table.split("/", 1)
        uri = lake.uri(layer, name)
        if m.table_uri is None:
            unknown += 1
            continue
        if not same_location(m.table_uri, uri):
            other += 1
            continue
        after = m.delta_version if m.delta_version is not None else lake.version(layer, name)
        before = last_version.get(m.table)
        if before is None and after is not None:
            before = after - 1 if after > 0 else None
        old: dict[str, Any] = {"version": before, "rows": rows(uri, before)}
        new: dict[str, Any] = {
            "version": after,
            "rows": rows(uri, after),
            "partition": m.partition,
            "code_version": cv,
            "event_storage_id": m.storage_id,
            "instance": m.instance,
        }
        events.append(
            AuditEvent(
                ACTION,
                "dagster",
                m.table,
                m.partition or "*",
                "delta_version",
                old,
                new,
                "pipeline materialization",
                m.run_id,
            )
        )
        if after is not None:
            last_version[m.table] = after
    trail.append(events)
    return MaterializationAudit(len(events), other, unknown, already)
