"""Change control of the CPP spec, GxP retention settings, guarded vacuum and verified backup."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from pharma_assets.compliance import changecontrol, retention
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.users import PermissionDeniedError
from pharma_assets.lake.specs import DEFAULT_SPEC, load_spec
from pharma_assets.lake.storage import Lake


def _bump(text: str, v: int) -> str:
    """Next spec version with its change_log entry (the spec validator requires both)."""
    lines = text.splitlines(keepends=True)
    out, done_version = [], False
    for ln in lines:
        if not done_version and ln.startswith("version:"):
            ln, done_version = f"version: {v}\n", True
        if ln.startswith("settle_minutes:"):
            out.append(f'  - {{version: {v}, date: "2026-11-28", by: qa, reason: "test"}}\n')
        out.append(ln)
    return "".join(out)


def test_spec_change_signed_audited_and_in_use_check(users_lake, tmp_path: Path) -> None:
    lake, pw = users_lake
    spec = tmp_path / "cpp_spec.yaml"
    shutil.copy(DEFAULT_SPEC, spec)
    assert not changecontrol.check_in_use(lake, spec).ok  # no approved version yet
    current = load_spec(spec).version
    base = changecontrol.apply_change(
        lake, spec, spec.read_text(), "pe.smith", pw["pe.smith"], f"baseline of spec v{current}"
    )
    assert changecontrol.check_in_use(lake, spec).ok
    old = spec.read_text()
    new = _bump(old, current + 1)
    assert new != old
    row = changecontrol.apply_change(
        lake, spec, new, "pe.smith", pw["pe.smith"], "tighten after CAPA"
    )
    assert row["old_sha256"] == base["new_sha256"] and f"+version: {current + 1}" in row["diff"]
    assert load_spec(spec).version == current + 1
    assert changecontrol.check_in_use(lake, spec).ok
    # an edit outside change control is detected
    spec.write_text(_bump(new, 5))
    chk = changecontrol.check_in_use(lake, spec)
    assert not chk.ok and "outside change control" in chk.detail
    # invalid content is refused and the file stays as it was
    before = spec.read_text()
    with pytest.raises(ValueError, match="invalid"):
        changecontrol.apply_change(lake, spec, "version: [", "pe.smith", pw["pe.smith"], "bad")
    assert spec.read_text() == before
    with pytest.raises(PermissionDeniedError):
        changecontrol.apply_change(lake, spec, old, "op.jones", pw["op.jones"], "no right")
    changes = AuditTrail(lake).read(action="spec_change")
    assert changes.height == 2 and changes["new_value"][-1] == row["new_sha256"]


def test_gxp_tables_keep_history_and_vacuum_is_guarded(users_lake) -> None:
    lake, _ = users_lake
    conf = DeltaTable(lake.uri("gxp", "audit_trail")).metadata().configuration
    assert conf["delta.logRetentionDuration"] == "interval 3650 days"
    assert conf["delta.deletedFileRetentionDuration"] == "interval 3650 days"
    assert conf["delta.appendOnly"] == "true"
    with pytest.raises(retention.RetentionError, match="refusing"):
        retention.guarded_vacuum(lake, "gxp", "audit_trail", 0)
    with pytest.raises(retention.RetentionError, match="refusing"):
        retention.guarded_vacuum(lake, "gold", "batch_summary", 1)  # 7-day floor elsewhere
    assert retention.guarded_vacuum(lake, "gold", "batch_summary", 24 * 8) == []  # dry run
    # a GxP table created without the settings gets them
    lake.append("gxp", "legacy_notes", pl.DataFrame({"a": [1]}))
    assert (
        "delta.appendOnly"
        not in DeltaTable(lake.uri("gxp", "legacy_notes")).metadata().configuration
    )
    out = retention.enforce_retention(lake)
    assert out["users"]["delta.appendOnly"] == "true"


def test_backup_copies_and_verifies(users_lake, tmp_path: Path) -> None:
    lake, _ = users_lake
    rep = retention.backup(lake, tmp_path / "backup1")
    assert rep.ok, rep.summary()
    assert rep.files > 20 and rep.audit is not None and rep.audit.ok
    assert (tmp_path / "backup1" / "BACKUP_MANIFEST.json").exists()
    copy = Lake.at(tmp_path / "backup1")
    assert copy.read("gold", "batch_summary").height == lake.read("gold", "batch_summary").height
    with pytest.raises(ValueError, match="not empty"):
        retention.backup(lake, tmp_path / "backup1")
    assert AuditTrail(lake).read(action="backup").height == 1


def test_backup_reports_a_corrupted_copy(empty_lake: Lake, tmp_path: Path) -> None:
    """A copy whose audit trail lost its newest entries does not verify against the anchor."""
    t = AuditTrail(empty_lake)
    for i in range(3):
        t.record("x", "u", record_id=str(i))
    rep = retention.backup(empty_lake, tmp_path / "b")
    assert rep.ok
    copy = Lake.at(tmp_path / "b")
    log = Path(copy.uri("gxp", "audit_trail")) / "_delta_log"
    newest = sorted(log.glob("*.json"))[-1]
    newest.unlink()  # the copy lost its last commit
    res = AuditTrail(copy, key=t.key, anchor=t.anchor).verify(anchor_uri=t.uri)
    assert not res.ok and res.kind == "truncated"


def test_recipe_change_under_control(users_lake, tmp_path: Path) -> None:
    from pharma_assets.twin import config

    lake, pw = users_lake
    rec = tmp_path / "recipes.yaml"
    shutil.copy(Path(config.__file__).parent / "config" / "recipes_default.yaml", rec)
    new = rec.read_text() + "# feed start moved: CC approved\n"
    row = changecontrol.apply_change(
        lake, rec, new, "qa.lead", pw["qa.lead"], "recipe update", target="recipes"
    )
    assert row["old_sha256"] != row["new_sha256"] and rec.read_text() == new
    assert changecontrol.check_in_use(lake, rec, "recipes").ok
    assert not changecontrol.check_in_use(lake, rec, "cpp_spec").ok  # other target: none yet
    with pytest.raises(ValueError, match="invalid"):
        changecontrol.apply_change(
            lake, rec, "recipes: []\n", "qa.lead", pw["qa.lead"], "x", target="recipes"
        )
