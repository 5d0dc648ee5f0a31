"""Issue 18 (an independent attack on the GxP records): the audit trail's own life cycle
(anchor retirement), lake-scoped materialization entries, a verifier that never crashes, and
accounts (password policy, session revocation, uniform refusals, no secrets in the trail).
Real lakes, real SQLite anchor store, real Dagster instance, real Streamlit AppTest."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.compliance import users
from pharma_assets.compliance.audit import AnchorStore, AuditEvent, AuditTrail
from pharma_assets.compliance.signatures import signatures_for
from pharma_assets.defs.compliance.definitions import (
    audit_chain_valid,
    audit_trail_asset,
    audit_verify_job,
)
from pharma_assets.defs.compliance.materializations import audit_new_materializations
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import run_pipeline
from pharma_assets_tests.lake.conftest import landing  # noqa: F401

from .conftest import PASSWORDS, add_users

PAGES = Path(__file__).resolve().parents[2] / "dashboards" / "app_pages"


@pytest.fixture
def lake_users(empty_lake: Lake) -> tuple[Lake, dict[str, str]]:
    return empty_lake, add_users(empty_lake)


def _retire_cli(lake: Lake, *extra: str, password: str | None = None) -> object:
    args = ["audit", "retire-anchor", "--lake", lake.root, "--yes", "--reason", "cleanup", *extra]
    return CliRunner().invoke(app, args, input=None if password is None else password + "\n")


def _drop_last_commits(lake: Lake, n: int) -> None:
    """What the attacker did: delete the newest Delta commits of the trail."""
    log = Path(lake.uri("gxp", "audit_trail")) / "_delta_log"
    for f in sorted(log.glob("*.json"))[-n:]:
        f.unlink()


# ---------------------------------------------------------------------------- item 2
def test_retire_anchor_needs_admin_signature_and_is_written_to_the_trail(lake_users) -> None:
    lake, pw = lake_users
    trail = AuditTrail(lake)
    uri = trail.uri
    # no login: refused, the anchor stays
    r = _retire_cli(lake)
    assert r.exit_code != 0
    assert AnchorStore().get(uri) is not None
    # wrong password, or a role without audit.retire: refused, the anchor stays
    assert _retire_cli(lake, "--admin", "admin", password="not-the-password").exit_code == 1
    r = _retire_cli(lake, "--admin", "qa.lead", password=pw["qa.lead"])
    assert r.exit_code == 1 and "audit.retire" in r.output
    assert AnchorStore().get(uri) is not None
    head_before = trail.verify().head_seq
    # the admin signs: the retirement is the trail's last entry and in the anchor log
    r = _retire_cli(lake, "--admin", "admin", password=pw["admin"])
    assert r.exit_code == 0, r.output
    assert AnchorStore().get(uri) is None
    [entry] = trail.read(action="audit_anchor_retired").iter_rows(named=True)
    assert entry["actor"] == "admin" and entry["reason"] == "cleanup"
    assert entry["seq"] == trail.read()["seq"].max() > (head_before or 0)
    [sig] = signatures_for(lake, "audit_trail", uri)
    assert sig.user_id == "admin" and sig.meaning == "responsibility"
    assert sig.signature_id in entry["new_value"]
    [ret] = AnchorStore().retirements(uri)
    assert (ret.actor, ret.signature_id, ret.head_seq) == ("admin", sig.signature_id, entry["seq"])
    res = trail.verify()
    assert res.ok, res.summary()
    assert res.retirements and "this trail's anchor retired" in res.retirements[0]
    assert sig.signature_id in res.summary()


def test_shortening_after_a_retirement_is_detected(lake_users) -> None:
    """The attack: retire, delete the last commits, do any audited action; verify must not
    say OK. The retirement here is the unsigned kind older versions wrote (a seq -1 row in
    the anchor log), so verify also reads what an attacker left with the old command."""
    lake, pw = lake_users
    trail = AuditTrail(lake)
    for i in range(3):
        trail.record("note", "op.jones", record_id=f"n{i}")
    head = trail.verify().head_seq
    store = AnchorStore()
    with sqlite3.connect(store.path) as con:  # exactly what `retire-anchor` wrote before
        con.execute("DELETE FROM anchor WHERE table_uri = ?", (trail.uri,))
        con.execute(
            "INSERT INTO anchor_log VALUES (?, ?, ?, ?)",
            (trail.uri, -1, f"retired head seq {head}: cleanup", datetime.now(UTC).isoformat()),
        )
    _drop_last_commits(lake, 2)
    users.login(lake, "qa.lead", pw["qa.lead"])  # any audited action: a new anchor
    res = AuditTrail(lake).verify()
    assert not res.ok
    assert res.kind == "truncated" and "retired" in res.detail
    assert any("WITHOUT login" in r for r in res.retirements)
    r = CliRunner().invoke(app, ["audit", "verify", "--lake", lake.root])
    assert r.exit_code == 1 and "truncated" in r.output


def test_signed_retirement_then_truncation_detected_new_trail_reported(
    lake_users, tmp_path: Path
) -> None:
    lake, pw = lake_users
    from pharma_assets.compliance.audit import retire_trail

    ret = retire_trail(lake, "admin", pw["admin"], "demo lake removed")
    _drop_last_commits(lake, 3)
    users.login(lake, "qa.lead", pw["qa.lead"])
    bad = AuditTrail(lake).verify()
    assert not bad.ok and bad.kind == "truncated", bad.summary()
    assert f"head seq {ret.head_seq}" in bad.detail
    # the honest use: the lake is deleted and a new one starts at the same place
    other = Lake.at(tmp_path / "demo_lake")
    add_users(other)
    retire_trail(other, "admin", pw["admin"], "demo lake removed")
    shutil.rmtree(other.root)
    add_users(other)
    res = AuditTrail(other).verify()
    assert res.ok, res.summary()
    assert any(
        "an earlier trail's anchor retired" in r and "by admin" in r for r in res.retirements
    )
    assert "demo lake removed" in res.summary()


def test_anchor_database_is_private(empty_lake: Lake, gxp_home: Path) -> None:
    AuditTrail(empty_lake).record("x", "someone")
    db = gxp_home / "audit_anchor.sqlite"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    db.chmod(0o644)  # an existing world-readable database is tightened on first use
    AuditTrail(empty_lake).record("y", "someone")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- item 6
def _replace_middle_file(lake: Lake) -> None:
    trail = AuditTrail(lake)
    for b in range(3):
        trail.append([AuditEvent("note", "op", record_id=f"{b}-{i}") for i in range(10)])
    folder = Path(lake.uri("gxp", "audit_trail"))
    files = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # a shorter file; the log is untouched


def test_verify_names_the_entry_of_a_replaced_data_file(empty_lake: Lake) -> None:
    _replace_middle_file(empty_lake)
    res = AuditTrail(empty_lake).verify()  # today: a pyo3 PanicException escapes
    assert not res.ok and res.kind == "unreadable"
    assert res.first_bad_seq == 10 and "seq 10..19" in res.detail
    r = CliRunner().invoke(app, ["audit", "verify", "--lake", empty_lake.root])
    assert r.exit_code == 1 and "unreadable" in r.output and "seq 10" in r.output
    # the Dagster asset check goes through the same verify
    res_ = LakehouseResource(lake_uri=empty_lake.root)
    defs = dg.Definitions(
        assets=[audit_trail_asset],
        asset_checks=[audit_chain_valid],
        jobs=[audit_verify_job],
        resources={"lakehouse": res_},
    )
    with dg.instance_for_test() as instance:
        out = defs.resolve_job_def("audit_verify_job").execute_in_process(
            instance=instance, raise_on_error=False
        )
    [ev] = out.get_asset_check_evaluations()
    assert not ev.passed and ev.metadata["failure_kind"].value == "unreadable"
    assert ev.metadata["first_bad_seq"].value == 10


def test_audit_page_survives_a_replaced_data_file(
    lake_users, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, pw = lake_users
    s = users.login(lake, "qa.lead", pw["qa.lead"])
    _replace_middle_file(lake)
    monkeypatch.setenv("PHARMA_LAKE_URI", lake.root)
    at = AppTest.from_file(str(PAGES / "qa_audit.py"), default_timeout=60)
    at.session_state["gxp_session"] = s
    at.run()
    assert not at.exception
    assert at.error and "unreadable" in at.error[0].value


# ---------------------------------------------------------------------------- item 3
def test_two_lakes_on_one_instance_keep_their_own_materializations(
    landing: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    res_a = LakehouseResource(lake_uri=str(tmp_path / "lake_a"), landing_dir=str(landing))
    res_b = LakehouseResource(lake_uri=str(tmp_path / "lake_b"), landing_dir=str(landing))
    lake_a, lake_b = Lake.at(res_a.lake_uri), Lake.at(res_b.lake_uri)
    with dg.instance_for_test() as instance:
        out_a = run_pipeline(res_a, instance)
        out_b = run_pipeline(res_b, instance)
        assert out_a.ok and out_b.ok
        assert not set(out_a.runs) & set(out_b.runs)
        n_a = audit_new_materializations(lake_a, instance)
        n_b = audit_new_materializations(lake_b, instance)
    mats_a = AuditTrail(lake_a).read(action="materialization")
    mats_b = AuditTrail(lake_b).read(action="materialization")
    assert mats_a.height == n_a > 0 and mats_b.height == n_b > 0
    assert set(mats_a["context_id"]) <= set(out_a.runs)  # today: b's runs are in a's trail
    assert set(mats_b["context_id"]) <= set(out_b.runs)
    # row counts come from this lake's table at the version the run wrote
    row = mats_a.filter(pl.col("table_name") == "gold/batch_summary").row(-1, named=True)
    new = pl.Series([row["new_value"]]).str.json_decode().struct.unnest()
    assert new["rows"][0] == lake_a.read("gold", "batch_summary").height  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- items 9, 10
def test_password_typed_as_user_id_is_never_stored(lake_users) -> None:
    lake, pw = lake_users
    secret = pw["qa.lead"]
    for fn in (
        lambda: users.login(lake, secret, secret),
        lambda: users.authenticate(lake, secret, "x", purpose="signature_reauth"),
    ):
        with pytest.raises(users.AuthError):
            fn()
    trail = AuditTrail(lake).read()
    for col in trail.columns:
        if trail[col].dtype == pl.String:
            assert not trail[col].str.contains(secret, literal=True).any(), col
    failed = trail.filter(pl.col("action").str.ends_with("_failed"))
    assert set(failed["actor"]) == {"unknown-user"} and set(failed["record_id"]) == {""}


def test_refusals_do_not_tell_wrong_password_locked_and_disabled_apart(lake_users) -> None:
    lake, pw = lake_users
    msgs = {}
    with pytest.raises(users.AuthError) as e:
        users.login(lake, "pe.smith", "Wrong-pass-2026x")
    msgs["wrong"] = (type(e.value), str(e.value))
    with pytest.raises(users.AuthError) as e:
        users.login(lake, "nobody", "Wrong-pass-2026x")
    msgs["unknown"] = (type(e.value), str(e.value))
    users.disable_user(lake, "op.jones", "admin", "left")
    with pytest.raises(users.AuthError) as e:
        users.login(lake, "op.jones", pw["op.jones"])
    msgs["disabled"] = (type(e.value), str(e.value))
    for _ in range(users.POLICY.max_failed_attempts):
        with pytest.raises(users.AuthError):
            users.login(lake, "mx.brown", "Wrong-pass-2026x")
    with pytest.raises(users.AuthError) as e:
        users.login(lake, "mx.brown", pw["mx.brown"])
    msgs["locked"] = (type(e.value), str(e.value))
    assert len(set(msgs.values())) == 1, msgs
    # the reason is in the audit trail for the administrator
    outcomes = set(AuditTrail(lake).read(action="login_failed")["new_value"])
    assert {"account disabled", "account locked", "unknown user ID"} <= outcomes


@pytest.mark.parametrize("weak", ["aaaaaaaaaa", "password12", "qwertyuiop", "Summer2024!"])
def test_weak_passwords_are_refused(lake_users, weak: str) -> None:
    lake, _ = lake_users
    with pytest.raises(ValueError, match="too easy to guess") as e:
        users.create_user(lake, "new.user", "New User", "operator", weak, "admin", "r")
    assert weak not in str(e.value)
    with pytest.raises(ValueError, match="too easy to guess"):
        users.reset_password(lake, "op.jones", weak, "admin", "r")


def test_admin_reset_ends_live_sessions(lake_users) -> None:
    lake, pw = lake_users
    s = users.login(lake, "pe.smith", pw["pe.smith"])
    assert users.check_session(lake, s).user_id == "pe.smith"
    users.reset_password(lake, "pe.smith", "Fresh-pass-2026x", "admin", "suspected compromise")
    with pytest.raises(users.SessionExpiredError, match="password reset"):
        users.check_session(lake, s)  # today: the session lives on
    s2 = users.login(lake, "qa.lead", PASSWORDS["qa.lead"])
    users.disable_user(lake, "qa.lead", "admin", "left")
    with pytest.raises(users.SessionExpiredError, match="disabled"):
        users.check_session(lake, s2)
    revoked = AuditTrail(lake).read(action="session_revoked")
    assert set(revoked["context_id"]) == {s.session_id, s2.session_id}


def test_viewer_role_only_reads(lake_users) -> None:
    assert users.ROLES["viewer"] == frozenset({"record.view"})
