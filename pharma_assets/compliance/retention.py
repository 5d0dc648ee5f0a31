"""Record retention and backup for the GxP tables.

Why: records must stay readable for their retention period (11.10(c)) and the data behind
them must be recoverable. Delta keeps old versions only as long as its log and removed
files are kept, and ``VACUUM`` deletes them: so GxP tables carry explicit
``delta.logRetentionDuration`` / ``delta.deletedFileRetentionDuration`` (10 years, plus
``delta.appendOnly``), ``guarded_vacuum`` refuses any vacuum below a table's configured
retention, and ``backup`` copies the lake and proves the copy (SHA-256 of every file, every
Delta table loadable with all its files, audit chain verified against the live anchor).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from pharma_assets.lake.storage import Lake

from . import GXP_LAYER
from .audit import GXP_TABLE_CONFIGURATION, AuditTrail, VerificationResult

GXP_TABLES = ("audit_trail", "users", "signatures", "deviations", "batch_release", "spec_changes")


class RetentionError(RuntimeError):
    pass


def _hours(interval: str | None) -> float | None:
    if not interval:
        return None
    m = re.fullmatch(r"\s*interval\s+(\d+)\s+(day|days|hour|hours)\s*", interval.lower())
    if not m:
        return None
    n = float(m.group(1))
    return n * 24 if m.group(2).startswith("day") else n


def enforce_retention(lake: Lake) -> dict[str, dict[str, str]]:
    """Set the GxP retention properties on every existing GxP table that lacks them."""
    out = {}
    for name in GXP_TABLES:
        dt = lake.table(GXP_LAYER, name)
        if dt is None:
            continue
        conf = dt.metadata().configuration
        missing = {k: v for k, v in GXP_TABLE_CONFIGURATION.items() if conf.get(k) != v}
        if missing:
            dt.alter.set_table_properties(missing)
        out[name] = dict(DeltaTable(lake.uri(GXP_LAYER, name)).metadata().configuration)
    return out


def guarded_vacuum(
    lake: Lake, layer: str, name: str, retention_hours: float, dry_run: bool = True
) -> list[str]:
    """VACUUM that refuses to go below the table's configured file retention (and below
    7 days on any table); returns the files it (would) delete."""
    dt = lake.table(layer, name)
    if dt is None:
        raise ValueError(f"table {layer}/{name} does not exist in {lake.root}")
    conf = dt.metadata().configuration
    floor = _hours(conf.get("delta.deletedFileRetentionDuration")) or 168.0
    if layer == GXP_LAYER and "delta.deletedFileRetentionDuration" not in conf:
        raise RetentionError(f"{layer}/{name} has no explicit retention; run enforce_retention")
    if retention_hours < floor:
        raise RetentionError(
            f"refusing to vacuum {layer}/{name} with retention {retention_hours} h: the table "
            f"keeps removed files for {floor:g} h (delta.deletedFileRetentionDuration)"
        )
    return list(
        dt.vacuum(
            retention_hours=int(retention_hours), dry_run=dry_run, enforce_retention_duration=True
        )
    )


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class BackupReport:
    dest: str
    files: int = 0
    bytes: int = 0
    mismatched: list[str] = field(default_factory=list)
    broken_tables: list[str] = field(default_factory=list)
    audit: VerificationResult | None = None

    @property
    def ok(self) -> bool:
        return (
            not self.mismatched and not self.broken_tables and (self.audit is None or self.audit.ok)
        )

    def summary(self) -> str:
        a = self.audit.summary() if self.audit else "no audit trail"
        return (
            f"backup {'OK' if self.ok else 'FAILED'}: {self.files} files, "
            f"{self.bytes / 1e6:.1f} MB to {self.dest}; {len(self.mismatched)} hash "
            f"mismatches, {len(self.broken_tables)} unreadable tables; copy's {a}"
        )


def backup(lake: Lake, dest: str | Path, actor: str = "system") -> BackupReport:
    """Copy a local lake to ``dest`` (must not exist) and verify the copy; writes
    ``BACKUP_MANIFEST.json`` (file hashes) into the copy. The audit trail's lock is held
    during the copy so its chain is copied at a consistent head."""
    if not lake.is_local:
        raise ValueError(
            "backup copies local lakes; for object stores use bucket versioning "
            "and replication (docs/compliance.md)"
        )
    src, dst = Path(lake.root), Path(dest).resolve()
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"backup destination {dst} exists and is not empty; choose a new folder")
    if dst.is_relative_to(src):
        raise ValueError(f"backup destination {dst} is inside the lake {src}")
    trail = AuditTrail(lake)
    rep = BackupReport(str(dst))
    manifest: dict[str, Any] = {
        "source": str(src),
        "created_at": datetime.now(UTC).isoformat(),
        "files": {},
    }
    with lake.lock("gxp_audit_trail"):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_locks"), dirs_exist_ok=True)
        for f in sorted(p for p in src.rglob("*") if p.is_file() and "_locks" not in p.parts):
            rel = f.relative_to(src)
            h = _sha256(f)
            manifest["files"][str(rel)] = h
            c = dst / rel
            if not c.exists() or _sha256(c) != h:
                rep.mismatched.append(str(rel))
            rep.files += 1
            rep.bytes += f.stat().st_size
    (dst / "BACKUP_MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    for log in dst.rglob("_delta_log"):
        table = log.parent
        try:
            dt = DeltaTable(str(table))
            missing = [f for f in dt.file_uris() if not Path(f).exists()]
            if missing:
                rep.broken_tables.append(f"{table.relative_to(dst)}: {len(missing)} files missing")
        except Exception as e:
            rep.broken_tables.append(f"{table.relative_to(dst)}: {e}")
    if (dst / GXP_LAYER / "audit_trail").exists():
        rep.audit = AuditTrail(Lake.at(dst), key=trail.key, anchor=trail.anchor).verify(
            anchor_uri=trail.uri
        )
    trail.record("backup", actor, "lake", str(src), "destination", None, str(dst), rep.summary())
    return rep
