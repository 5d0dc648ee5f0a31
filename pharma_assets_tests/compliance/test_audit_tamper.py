"""The audit chain detects every kind of tampering at the right entry (21 CFR 11.10(e), ALCOA+).

Each test edits the real Delta table the way an attacker with write access to the lake could
(switching off ``delta.appendOnly`` first, then overwriting the table with modified rows, or
changing bytes of a data file) and checks that verification names the first bad entry.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from pharma_assets.compliance import audit
from pharma_assets.compliance.audit import (
    GENESIS,
    AuditEvent,
    AuditIntegrityError,
    AuditKeyError,
    AuditTrail,
    _canonical_bodies,
)
from pharma_assets.lake.storage import Lake

N = 50


def _trail(lake: Lake) -> AuditTrail:
    t = AuditTrail(lake)
    for start in range(0, N, 10):  # five commits of ten entries
        t.append(
            [
                AuditEvent(
                    "value_changed",
                    f"user{i % 3}",
                    "silver/batches",
                    f"B{i:03d}",
                    "status",
                    "running",
                    f"complete-{i}",
                    f"reason {i}",
                    "run-1",
                )
                for i in range(start, start + 10)
            ]
        )
    assert t.verify().ok
    return t


def _rows(t: AuditTrail) -> pl.DataFrame:
    return t.read()


def _overwrite(t: AuditTrail, frame: pl.DataFrame) -> None:
    dt = DeltaTable(t.uri)
    dt.alter.set_table_properties({"delta.appendOnly": "false"})
    write_deltalake(t.uri, frame.select(list(audit.SCHEMA)).to_arrow(), mode="overwrite")


def _rehash(frame: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """What an attacker would do to hide an edit: recompute links and hashes with a key."""
    bodies = _canonical_bodies(frame).to_list()
    prev, prevs, hashes = GENESIS, [], []
    for b in bodies:
        prevs.append(prev)
        prev = hmac.digest(key, f"{b}|64:{prev}".encode(), "sha256").hex()
        hashes.append(prev)
    return frame.with_columns(prev_hash=pl.Series(prevs), entry_hash=pl.Series(hashes))


def test_intact_chain_verifies_and_names_head(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    r = t.verify()
    assert (r.ok, r.entries, r.head_seq, r.anchor_seq, r.first_bad_seq) == (
        True,
        N,
        N - 1,
        N - 1,
        None,
    )
    assert r.non_append_commits == []


def test_append_only_table_refuses_overwrite(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    with pytest.raises(Exception, match="append-only"):
        write_deltalake(t.uri, _rows(t).head(3).to_arrow(), mode="overwrite")


def test_flipped_byte_detected_at_entry(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    df = _rows(t).with_columns(
        new_value=pl.when(pl.col("seq") == 17).then(pl.lit("complete-X7")).otherwise("new_value")
    )
    _overwrite(t, df)
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, 17, "hash_mismatch")
    assert r.non_append_commits, "the rewrite shows in the Delta history"


def test_deleted_entry_detected(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    _overwrite(t, _rows(t).filter(pl.col("seq") != 23))
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, 23, "missing_entry")


def test_swapped_entries_detected(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    df = _rows(t)
    a, b = df.filter(pl.col("seq") == 30), df.filter(pl.col("seq") == 31)
    swapped = pl.concat(
        [
            df.filter(pl.col("seq") < 30),
            b.with_columns(seq=pl.lit(30, pl.Int64)),
            a.with_columns(seq=pl.lit(31, pl.Int64)),
            df.filter(pl.col("seq") > 31),
        ]
    )
    _overwrite(t, swapped)
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, 30, "hash_mismatch")


def test_forged_insert_detected(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    df = _rows(t)
    forged = df.filter(pl.col("seq") == 12).with_columns(
        actor=pl.lit("mallory"), new_value=pl.lit("approved"), entry_id=pl.lit("forged")
    )
    later = df.filter(pl.col("seq") >= 12).with_columns(seq=pl.col("seq") + 1)
    inserted = pl.concat([df.filter(pl.col("seq") < 12), forged, later])
    # the attacker relinks the whole chain with a guessed key
    _overwrite(t, _rehash(inserted, b"guessed-key-guessed-key-guessed-key"))
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, 0, "hash_mismatch")
    # without relinking: the inserted duplicate is caught at its position
    t2 = _trail(Lake.at(Path(empty_lake.root).parent / "lake2"))
    df2 = _rows(t2)
    dup = df2.filter(pl.col("seq") == 12).with_columns(new_value=pl.lit("approved"))
    _overwrite(t2, pl.concat([df2, dup]))
    r2 = t2.verify()
    assert not r2.ok and r2.first_bad_seq == 12 and r2.kind in ("duplicate_seq", "hash_mismatch")


def test_truncated_tail_detected_by_anchor(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    _overwrite(t, _rows(t).filter(pl.col("seq") < 45))
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, 45, "truncated")
    with pytest.raises(AuditIntegrityError, match=r"not written by the audit trail|removed"):
        t.record("after_truncation", "someone")


def test_chain_rebuilt_without_key_detected(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    df = _rows(t).with_columns(
        new_value=pl.when(pl.col("seq") == 40).then(pl.lit("rejected")).otherwise("new_value")
    )
    rebuilt = _rehash(df, b"an-attacker-who-does-not-have-the-key!")
    _overwrite(t, rebuilt)
    # even with the anchor moved to the rebuilt head
    t.anchor.advance(t.uri, N, rebuilt["entry_hash"][-1])
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, 0, "hash_mismatch")


def test_rebuilt_with_key_but_anchor_differs(empty_lake: Lake) -> None:
    """Even a key holder who rewrites history leaves the anchored head behind."""
    t = _trail(empty_lake)
    df = _rows(t).with_columns(
        reason=pl.when(pl.col("seq") == 5).then(pl.lit("edited")).otherwise("reason")
    )
    _overwrite(t, _rehash(df, t.key))
    r = t.verify()
    assert (r.ok, r.first_bad_seq, r.kind) == (False, N - 1, "anchor_mismatch")


def test_bytes_flipped_in_data_file_detected(empty_lake: Lake) -> None:
    t = _trail(empty_lake)
    files = sorted(Path(t.uri).glob("*.parquet"))
    target = files[2]
    data = bytearray(target.read_bytes())
    mid = len(data) // 2
    data[mid] ^= 0xFF
    target.write_bytes(bytes(data))
    r = t.verify()
    assert not r.ok
    assert r.kind in ("unreadable", "hash_mismatch")


def test_missing_anchor_is_a_failure(empty_lake: Lake, gxp_home: Path) -> None:
    _trail(empty_lake)
    other = audit.AnchorStore(gxp_home / "other_anchor.sqlite")
    r = AuditTrail(empty_lake, anchor=other).verify()
    assert (r.ok, r.kind) == (False, "missing_anchor")


def test_key_file_created_private_and_refused_inside_repo(
    gxp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = audit.load_key()
    path = gxp_home / "audit.key"
    assert len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert audit.load_key() == key  # stable
    os.chmod(path, 0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        audit.load_key()
    repo_key = Path(audit.__file__).resolve().parents[2] / "audit.key"
    monkeypatch.setenv("PHARMA_AUDIT_KEY_FILE", str(repo_key))
    with pytest.raises(AuditKeyError, match="inside the repository"):
        audit.load_key()
    assert not repo_key.exists()
    monkeypatch.setenv("PHARMA_AUDIT_KEY", "short")
    with pytest.raises(AuditKeyError, match="at least 32"):
        audit.load_key()


def test_entries_record_who_what_when_why(empty_lake: Lake) -> None:
    t = AuditTrail(empty_lake)
    t.record(
        "deviation_opened",
        "op.jones",
        "gxp/deviations",
        "DEV-00001",
        "state",
        None,
        {"state": "open"},
        "pH probe drift",
        "sess-1",
    )
    row = t.read().row(0, named=True)
    assert row["actor"] == "op.jones" and row["record_id"] == "DEV-00001"
    assert row["new_value"] == '{"state":"open"}' and row["reason"] == "pH probe drift"
    assert row["context_id"] == "sess-1" and row["ts_utc"].tzinfo is not None
    expected = hmac.digest(
        t.key, f"{_canonical_bodies(t.read())[0]}|64:{GENESIS}".encode(), "sha256"
    ).hex()
    assert row["entry_hash"] == expected and row["prev_hash"] == GENESIS
    assert hashlib.sha256(b"").hexdigest() != row["entry_hash"]


def test_deleted_trail_is_refused_and_cannot_be_retired_afterwards(empty_lake: Lake):
    """A deleted trail is refused (it looks like truncation) and stays reported: a retirement
    is signed and written into the trail it retires, so it must come before the deletion
    (test_hardening.py has the retire-then-delete flow `make clean` uses)."""
    import shutil

    t = _trail(empty_lake)
    shutil.rmtree(Path(t.uri))
    empty_lake.forget()
    with pytest.raises(AuditIntegrityError, match="anchor is at seq 49"):
        AuditTrail(empty_lake).append([AuditEvent("login", "u1", reason="after delete")])
    with pytest.raises(AuditIntegrityError, match="retire before deleting"):
        audit.retire_trail(empty_lake, "admin", "Root-pass-2026!", "demo lake removed")
    assert audit.AnchorStore().get(t.uri) is not None
    res = AuditTrail(empty_lake).verify()
    assert not res.ok and res.kind == "truncated" and res.first_bad_seq == 0
