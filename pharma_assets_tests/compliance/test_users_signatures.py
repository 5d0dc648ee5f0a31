"""Accounts, roles, lockout, ageing, sessions and electronic signatures (11.10(d)(g), 11.50,
11.70, 11.100, 11.200, 11.300)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from pharma_assets.compliance import signatures, users
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.deviations import advance, close, open_deviation
from pharma_assets.compliance.users import (
    LOGIN_REFUSED,
    AuthError,
    PasswordExpiredError,
    PermissionDeniedError,
    SessionExpiredError,
)
from pharma_assets.lake.storage import Lake

from .conftest import add_users


@pytest.fixture
def lake_users(empty_lake: Lake) -> tuple[Lake, dict[str, str]]:
    return empty_lake, add_users(empty_lake)


def test_passwords_hashed_with_argon2_and_ids_never_reused(lake_users) -> None:
    lake, pw = lake_users
    raw = lake.read("gxp", "users")
    assert raw is not None
    assert all(h.startswith("$argon2id$") for h in raw["password_hash"])
    assert not any(p in h for h in raw["password_hash"] for p in pw.values())
    users.disable_user(lake, "op.jones", "admin", "left the company")
    with pytest.raises(ValueError, match="never reused"):
        users.create_user(
            lake, "op.jones", "Other Jones", "operator", "Another-pass-2026", "admin", "rehire"
        )
    with pytest.raises(AuthError) as refused:  # same message as a wrong password
        users.login(lake, "op.jones", pw["op.jones"])
    assert str(refused.value) == LOGIN_REFUSED
    with pytest.raises(PermissionDeniedError, match="bootstrap"):
        users.create_user(
            lake, "root2", "Second Root", "admin", "Second-admin-26", "x", "r", bootstrap=True
        )
    with pytest.raises(PermissionDeniedError, match=r"user\.manage"):
        users.create_user(
            lake, "newbie", "New Bie", "operator", "Fresh-start-2026", "qa.lead", "not an admin"
        )
    with pytest.raises(ValueError, match="at least 10"):
        users.create_user(lake, "shorty", "S", "operator", "short", "admin", "r")


def test_lockout_after_repeated_failures_and_every_attempt_audited(lake_users) -> None:
    lake, pw = lake_users
    for _ in range(users.POLICY.max_failed_attempts):
        with pytest.raises(AuthError):
            users.login(lake, "pe.smith", "wrong-password-123")
    with pytest.raises(AuthError, match="locked or disabled"):
        users.login(lake, "pe.smith", pw["pe.smith"])  # right password, but locked
    trail = AuditTrail(lake)
    failed = trail.read(action="login_failed")
    assert failed.filter(pl.col("record_id") == "pe.smith").height == 6
    assert trail.read(action="account_locked")["record_id"].to_list() == ["pe.smith"]
    users.reset_password(lake, "pe.smith", "Fresh-pass-2026x", "admin", "locked out")
    with pytest.raises(PasswordExpiredError):  # must change after a reset
        users.login(lake, "pe.smith", "Fresh-pass-2026x")
    users.change_password(lake, "pe.smith", "Fresh-pass-2026x", "Own-pass-2026-pe")
    s = users.login(lake, "pe.smith", "Own-pass-2026-pe")
    assert s.role == "process_engineer"
    assert trail.read(action="login").filter(pl.col("context_id") == s.session_id).height == 1
    assert trail.verify().ok


def test_password_ageing_and_session_expiry(lake_users) -> None:
    lake, pw = lake_users
    later = datetime.now(UTC) + timedelta(days=users.POLICY.password_max_age_days + 1)
    with pytest.raises(PasswordExpiredError):
        users.login(lake, "qa.lead", pw["qa.lead"], now=later)
    s = users.login(lake, "qa.lead", pw["qa.lead"])
    s2 = users.check_session(lake, s, now=s.started_at + timedelta(minutes=10))
    assert s2.expires_at > s.expires_at  # idle timeout renewed by activity
    with pytest.raises(SessionExpiredError):
        users.check_session(lake, s2, now=s2.expires_at + timedelta(seconds=1))
    users.disable_user(lake, "qa.lead", "admin", "test")
    with pytest.raises(SessionExpiredError):
        users.check_session(lake, s)


def test_signature_manifestation_and_binding(lake_users) -> None:
    lake, pw = lake_users
    rec_a = {"batch_id": "B1", "titer": 4.1}
    rec_b = {"batch_id": "B2", "titer": 4.1}
    sig = signatures.sign(
        lake, "qa.lead", pw["qa.lead"], "approval", "batch_record", "B1", rec_a, "reviewed"
    )
    text = sig.manifestation()
    assert "Quinn Assurance" in text and "UTC" in text and "meaning: approval" in text
    assert signatures.verify_signature(sig, rec_a, "B1").ok
    # shown next to another record: refused
    moved = signatures.verify_signature(sig, rec_b, "B2")
    assert not moved.ok and any("record hash" in p for p in moved.problems)
    # the record changed after signing
    assert not signatures.verify_signature(sig, {**rec_a, "titer": 4.2}).ok
    # the stored signature edited to point at B2 (table rewritten): HMAC fails
    uri = lake.uri("gxp", "signatures")
    df = pl.read_delta(uri).with_columns(record_id=pl.lit("B2"))
    DeltaTable(uri).alter.set_table_properties({"delta.appendOnly": "false"})
    write_deltalake(uri, df.to_arrow(), mode="overwrite")
    [edited] = signatures.signatures_for(lake, "batch_record", "B2")
    chk = signatures.verify_signature(edited, rec_a)
    assert not chk.ok and any("HMAC" in p for p in chk.problems)


def test_wrong_password_refused_and_audited(lake_users) -> None:
    lake, _pw = lake_users
    with pytest.raises(AuthError):
        signatures.sign(
            lake, "qa.lead", "not-my-password", "approval", "batch_record", "B1", {"x": 1}, "try"
        )
    assert signatures.signatures_for(lake) == []
    f = AuditTrail(lake).read(action="signature_reauth_failed")
    assert f["record_id"].to_list() == ["qa.lead"]


def test_roles_without_right_cannot_sign_or_close(lake_users) -> None:
    lake, pw = lake_users
    with pytest.raises(PermissionDeniedError, match=r"sign\.approval"):
        signatures.sign(
            lake,
            "op.jones",
            pw["op.jones"],
            "approval",
            "batch_record",
            "B1",
            {"x": 1},
            "not allowed",
        )
    with pytest.raises(PermissionDeniedError):  # admins cannot sign GMP records at all
        signatures.sign(lake, "admin", pw["admin"], "review", "batch_record", "B1", {"x": 1}, "r")
    assert AuditTrail(lake).read(action="signature_refused").height == 2
    d = open_deviation(lake, "op.jones", "foam", "foam over", "minor", "seen")
    advance(lake, d.deviation_id, "pe.smith", "start", investigation="look")
    advance(lake, d.deviation_id, "pe.smith", "found", root_cause="antifoam", capa="dose")
    for who in ("pe.smith", "mx.brown", "op.jones"):
        with pytest.raises(PermissionDeniedError, match=r"deviation\.close"):
            close(lake, d.deviation_id, who, pw[who], "closing")
    closed = close(lake, d.deviation_id, "qa.lead", pw["qa.lead"], "CAPA done")
    assert closed.state == "closed" and closed.signature_id
    assert AuditTrail(lake).read(action="deviation_close_refused").height == 3
    with pytest.raises(PermissionDeniedError):
        advance(lake, d.deviation_id, "op.jones", "operators cannot investigate")


def test_demo_users_can_log_in_and_are_created_once(empty_lake: Lake) -> None:
    created = users.create_demo_users(empty_lake, seed=1)
    assert {r for _, r, _ in created} == set(users.ROLES)
    for uid, _, password in created:
        assert users.login(empty_lake, uid, password).user_id == uid
    again = users.create_demo_users(empty_lake, seed=1)
    assert {p for _, _, p in again} == {"(unchanged)"}
