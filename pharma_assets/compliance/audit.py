"""The GxP audit trail: an append-only Delta table whose entries are chained with a keyed hash.

Why: 21 CFR 11.10(e) asks for secure, computer-generated, time-stamped audit trails that
record who did what, when, why and what the value was before, and that cannot obscure
earlier entries. A row in a table is easy to edit; a chain of HMACs is not.

Design (docs/compliance.md has the full rationale):

- Table ``<lake>/gxp/audit_trail``, created with ``delta.appendOnly=true`` (delta-rs refuses
  deletes and overwrites) and explicit log/file retention.
- Entry ``seq`` n carries ``prev_hash`` = ``entry_hash`` of entry n-1 (64 zeros for n=0) and
  ``entry_hash`` = HMAC-SHA256(key, canonical(entry)), the canonical form covering every
  field including ``seq`` and ``prev_hash``. Without the key nobody can produce a valid entry,
  so editing, deleting, reordering or inserting entries breaks the chain at that position.
- The key is ``$PHARMA_AUDIT_KEY`` or a key file outside the repository
  (``$PHARMA_AUDIT_KEY_FILE``, default ``$PHARMA_GXP_HOME/audit.key`` with
  ``PHARMA_GXP_HOME`` defaulting to ``~/.config/pharma-twin``), created with mode 0600.
- The chain head (seq, hash) is anchored outside the lake in a SQLite database beside the key
  (``$PHARMA_AUDIT_ANCHOR``, default ``$PHARMA_GXP_HOME/audit_anchor.sqlite``), so removing
  the newest entries (truncation) is detected even though the remaining chain is intact.
- Appends are batched (one Delta commit for many entries) and serialised by a lock file under
  ``<lake>/_locks`` (``fcntl``: works across threads and processes), so concurrent writers keep
  one linear chain and lose nothing. The head is read from the last commit's metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pharma_assets.lake.storage import UTC_US, Lake

from . import GXP_LAYER

TABLE = "audit_trail"
GENESIS = "0" * 64
FORMAT_VERSION = "v1"
# GxP tables keep ten years of Delta history; appendOnly makes delta-rs refuse rewrites.
GXP_RETENTION = "interval 3650 days"
GXP_TABLE_CONFIGURATION = {
    "delta.logRetentionDuration": GXP_RETENTION,
    "delta.deletedFileRetentionDuration": GXP_RETENTION,
    "delta.appendOnly": "true",
}
_REPO_ROOT = Path(__file__).resolve().parents[2]

SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "entry_id": pl.String(),
    "ts_utc": UTC_US,
    "actor": pl.String(),
    "action": pl.String(),
    "table_name": pl.String(),
    "record_id": pl.String(),
    "field": pl.String(),
    "old_value": pl.String(),
    "new_value": pl.String(),
    "reason": pl.String(),
    "context_id": pl.String(),
    "prev_hash": pl.String(),
    "entry_hash": pl.String(),
}
# every field but entry_hash, in canonical order; prev_hash last (see _canonical_bodies)
HASHED_FIELDS = [c for c in SCHEMA if c not in ("prev_hash", "entry_hash")]


class AuditIntegrityError(RuntimeError):
    """The trail or its anchor is inconsistent: appending would hide the damage."""


class AuditKeyError(RuntimeError):
    """The audit key is missing, unsafe or malformed."""


# ---------------------------------------------------------------------------- key and anchor
def gxp_home() -> Path:
    """Folder for the key and the anchor: outside the repository and outside the lake."""
    return Path(os.environ.get("PHARMA_GXP_HOME") or Path.home() / ".config" / "pharma-twin")


def load_key() -> bytes:
    """The HMAC key: ``$PHARMA_AUDIT_KEY`` or the key file (created with mode 0600 if absent)."""
    env = os.environ.get("PHARMA_AUDIT_KEY")
    if env:
        if len(env) < 32:
            raise AuditKeyError(
                f"PHARMA_AUDIT_KEY is {len(env)} characters long; use at least 32 random "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        return env.encode()
    path = Path(os.environ.get("PHARMA_AUDIT_KEY_FILE") or gxp_home() / "audit.key").expanduser()
    resolved = path.resolve()
    if resolved.is_relative_to(_REPO_ROOT):
        raise AuditKeyError(
            f"audit key file {resolved} is inside the repository {_REPO_ROOT}; keep it outside "
            "(set PHARMA_AUDIT_KEY_FILE or PHARMA_GXP_HOME to a private folder)"
        )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        except FileExistsError:  # another process created it first
            pass
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise AuditKeyError(
            f"audit key file {path} has mode {oct(mode)}: others can read it; "
            f"run `chmod 600 {path}`"
        )
    key = path.read_text().strip()
    if len(key) < 32:
        raise AuditKeyError(f"audit key file {path} holds {len(key)} characters; need >= 32")
    return key.encode()


@dataclass(frozen=True)
class Anchor:
    seq: int
    entry_hash: str
    updated_at: str


class AnchorStore:
    """The chain head kept outside the lake (SQLite; one row per audit table plus a log).

    Whoever can rewrite the lake should not be able to rewrite this file: in production put
    it on another host or replace it with a PostgreSQL table owned by another account
    (docs/compliance.md, "Limits").
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(
            path or os.environ.get("PHARMA_AUDIT_ANCHOR") or gxp_home() / "audit_anchor.sqlite"
        ).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS anchor (table_uri TEXT PRIMARY KEY, seq INTEGER "
                "NOT NULL, entry_hash TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS anchor_log (table_uri TEXT NOT NULL, seq INTEGER "
                "NOT NULL, entry_hash TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60, isolation_level=None)

    def get(self, table_uri: str) -> Anchor | None:
        with contextlib.closing(self._connect()) as con:
            row = con.execute(
                "SELECT seq, entry_hash, updated_at FROM anchor WHERE table_uri = ?", (table_uri,)
            ).fetchone()
        return None if row is None else Anchor(int(row[0]), str(row[1]), str(row[2]))

    def advance(self, table_uri: str, seq: int, entry_hash: str) -> None:
        """Move the head forward (never backwards) and log the move."""
        now = datetime.now(UTC).isoformat()
        with contextlib.closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                "INSERT INTO anchor VALUES (?, ?, ?, ?) ON CONFLICT(table_uri) DO UPDATE SET "
                "seq = excluded.seq, entry_hash = excluded.entry_hash, updated_at = "
                "excluded.updated_at WHERE excluded.seq > anchor.seq",
                (table_uri, seq, entry_hash, now),
            )
            con.execute(
                "INSERT INTO anchor_log VALUES (?, ?, ?, ?)", (table_uri, seq, entry_hash, now)
            )
            con.execute("COMMIT")

    def retire(self, table_uri: str, reason: str) -> Anchor | None:
        """Drop the anchor of a trail that was deleted on purpose (a demo lake removed by
        `make clean`), so a new trail can start at that location. The retired head stays in
        the anchor log (seq -1 marks the retirement, with the reason)."""
        old = self.get(table_uri)
        now = datetime.now(UTC).isoformat()
        with contextlib.closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM anchor WHERE table_uri = ?", (table_uri,))
            con.execute(
                "INSERT INTO anchor_log VALUES (?, ?, ?, ?)",
                (table_uri, -1, f"retired head seq {old.seq if old else '-'}: {reason}", now),
            )
            con.execute("COMMIT")
        return old


# ---------------------------------------------------------------------------- entries
def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def canonical_json(v: Any) -> str:
    """Compact JSON with sorted keys; datetimes as UTC ISO text. The one serialisation used
    for stored values and for the record hashes that signatures bind to."""
    return json.dumps(v, sort_keys=True, default=_json_default, separators=(",", ":"))


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, datetime):
        return _json_default(v)  # type: ignore[no-any-return]
    return canonical_json(v)


@dataclass(frozen=True)
class AuditEvent:
    """One thing to record: who did what to which record, the before/after values and why.

    ``old_value``/``new_value`` may be text or anything JSON-serialisable (stored as compact
    JSON with sorted keys); ``context_id`` is the Dagster run id or the login session id.
    """

    action: str
    actor: str
    table_name: str = ""
    record_id: str = ""
    field: str | None = None
    old_value: Any = None
    new_value: Any = None
    reason: str | None = None
    context_id: str | None = None

    def __post_init__(self) -> None:
        if not self.action or not self.actor:
            raise ValueError(
                f"an audit event needs an action and an actor, got action={self.action!r} "
                f"actor={self.actor!r}"
            )


def _canonical_bodies(frame: pl.DataFrame) -> pl.Series:
    """Canonical text of every hashed field but ``prev_hash``: ``len:value`` per field, ``~``
    for null, ``|``-separated, prefixed with the format version. Length prefixes make the
    encoding unambiguous whatever the values contain."""
    parts: list[pl.Expr] = [pl.lit(FORMAT_VERSION)]
    for name in HASHED_FIELDS:
        c = pl.col(name)
        if name == "seq":
            s = c.cast(pl.String)
        elif name == "ts_utc":
            s = c.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        else:
            s = c
        parts.append(
            pl.when(s.is_null())
            .then(pl.lit("~"))
            .otherwise(pl.concat_str([s.str.len_bytes().cast(pl.String), pl.lit(":"), s]))
        )
    return frame.select(pl.concat_str(parts, separator="|").alias("body")).to_series()


def _mac(key: bytes, body: str, prev_hash: str) -> str:
    return hmac.digest(key, f"{body}|64:{prev_hash}".encode(), "sha256").hex()


def entry_hashes(key: bytes, frame: pl.DataFrame) -> list[str]:
    """The HMAC each row should carry given its own ``prev_hash`` (used by verify)."""
    bodies = _canonical_bodies(frame).to_list()
    prevs = frame["prev_hash"].to_list()
    return [_mac(key, b, p) for b, p in zip(bodies, prevs, strict=True)]


# ---------------------------------------------------------------------------- verification
@dataclass
class VerificationResult:
    """Outcome of a chain verification. ``first_bad_seq`` is the first entry that fails and
    ``kind`` says how: ``hash_mismatch`` (entry altered, forged, moved or rebuilt without the
    key), ``broken_link``, ``missing_entry`` (a sequence number is absent: deleted entry),
    ``duplicate_seq`` (inserted entry), ``truncated`` (the anchored head is gone),
    ``anchor_mismatch``, ``missing_anchor``, ``unreadable``."""

    ok: bool
    entries: int
    table_uri: str
    first_bad_seq: int | None = None
    kind: str | None = None
    detail: str = ""
    head_seq: int | None = None
    head_hash: str | None = None
    anchor_seq: int | None = None
    unanchored_entries: int = 0
    non_append_commits: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        if self.ok:
            extra = (
                f"; {self.unanchored_entries} entries after the anchor (written, not yet anchored)"
                if self.unanchored_entries
                else ""
            )
            return (
                f"audit trail OK: {self.entries} entries, head seq {self.head_seq}, anchored at "
                f"{self.anchor_seq}{extra} ({self.seconds:.2f} s)"
            )
        return (
            f"audit trail FAILED at seq {self.first_bad_seq}: {self.kind}: {self.detail} "
            f"({self.entries} entries read)"
        )


def verify_frame(
    frame: pl.DataFrame, key: bytes, anchor: Anchor | None, table_uri: str = ""
) -> VerificationResult:
    """Verify entries (any order) against the key and the anchor; see VerificationResult."""
    t0 = time.perf_counter()
    df = frame.sort("seq", maintain_order=True)
    n = df.height
    res = VerificationResult(ok=True, entries=n, table_uri=table_uri)
    res.anchor_seq = anchor.seq if anchor else None
    if n:
        seqs = df["seq"].to_numpy()
        hashes = df["entry_hash"].to_list()
        prevs = df["prev_hash"].to_list()
        expected = np.arange(n)
        bad_seq = seqs != expected
        expected_prev = [GENESIS, *hashes[:-1]]
        bad_link = np.fromiter((p != e for p, e in zip(prevs, expected_prev, strict=True)), bool, n)
        macs = entry_hashes(key, df)
        bad_mac = np.fromiter((m != h for m, h in zip(macs, hashes, strict=True)), bool, n)
        any_bad = bad_seq | bad_link | bad_mac
        if any_bad.any():
            i = int(np.argmax(any_bad))
            res.ok = False
            if bad_seq[i]:
                if i > 0 and seqs[i] == seqs[i - 1]:
                    res.kind, res.first_bad_seq = "duplicate_seq", int(seqs[i])
                    res.detail = f"two entries carry seq {seqs[i]} (an entry was inserted)"
                elif seqs[i] > i:
                    res.kind, res.first_bad_seq = "missing_entry", i
                    res.detail = f"entry seq {i} is missing; the next entry is seq {seqs[i]}"
                else:
                    res.kind, res.first_bad_seq = "sequence_error", i
                    res.detail = f"position {i} holds seq {seqs[i]}"
            elif bad_mac[i]:
                res.kind, res.first_bad_seq = "hash_mismatch", i
                res.detail = (
                    f"entry {df['entry_id'][i]} does not match its HMAC: it was altered, moved, "
                    "forged or written with another key"
                )
            else:
                res.kind, res.first_bad_seq = "broken_link", i
                res.detail = "prev_hash does not equal the previous entry's hash"
        res.head_seq = int(seqs[-1])
        res.head_hash = hashes[-1]
    if res.ok:
        if anchor is None and n:
            res.ok, res.kind, res.first_bad_seq = False, "missing_anchor", None
            res.detail = (
                "the trail has entries but no anchor: its tail cannot be checked (wrong "
                "PHARMA_AUDIT_ANCHOR / PHARMA_GXP_HOME, or the anchor store was lost)"
            )
        elif anchor is not None and anchor.seq >= n:
            res.ok, res.kind, res.first_bad_seq = False, "truncated", n
            res.detail = (
                f"the anchor says the head is seq {anchor.seq} but the trail ends at seq {n - 1}:"
                f" entries {n}..{anchor.seq} were removed"
            )
        elif anchor is not None and df["entry_hash"][anchor.seq] != anchor.entry_hash:
            res.ok, res.kind, res.first_bad_seq = False, "anchor_mismatch", anchor.seq
            res.detail = "the anchored entry's hash differs from the anchor (chain rebuilt)"
        elif anchor is not None:
            res.unanchored_entries = n - 1 - anchor.seq
    res.seconds = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------------------- the trail
_THREAD_LOCK = threading.Lock()


class AuditTrail:
    """Append to, read and verify one lake's audit trail."""

    def __init__(
        self, lake: Lake, key: bytes | None = None, anchor: AnchorStore | None = None
    ) -> None:
        # a private Lake: its cached snapshot is only touched under the append lock
        self.lake = Lake(lake.root, dict(lake.storage_options))
        self.key = key if key is not None else load_key()
        self.anchor = anchor if anchor is not None else AnchorStore()
        self.uri = self.lake.uri(GXP_LAYER, TABLE)

    # -- writing
    def _head(self) -> tuple[int, str]:
        """(next seq, prev hash) from the last commit's metadata, checked against the anchor."""
        dt = self.lake.table(GXP_LAYER, TABLE)
        anchor = self.anchor.get(self.uri)
        if dt is None:
            if anchor is not None:
                raise AuditIntegrityError(
                    f"audit trail {self.uri} is missing but its anchor is at seq {anchor.seq}: "
                    "the trail was deleted. Restore it from backup; run `pharma-twin audit verify`"
                )
            return 0, GENESIS
        last = dt.history(1)[0]
        if "audit_head_seq" not in last or "audit_head_hash" not in last:
            raise AuditIntegrityError(
                f"the last commit (version {last.get('version')}, {last.get('operation')}) of "
                f"{self.uri} was not written by the audit trail; run `pharma-twin audit verify`"
            )
        seq, h = int(last["audit_head_seq"]), str(last["audit_head_hash"])
        if anchor is not None and anchor.seq > seq:
            raise AuditIntegrityError(
                f"audit trail {self.uri} ends at seq {seq} but its anchor is at seq {anchor.seq}:"
                " entries were removed. Run `pharma-twin audit verify`"
            )
        return seq + 1, h

    def append(self, events: Sequence[AuditEvent]) -> list[tuple[int, str]]:
        """Append events as one Delta commit; returns their (seq, entry_hash)."""
        if not events:
            return []
        local = self.lake.is_local
        with (
            contextlib.nullcontext() if local else _THREAD_LOCK,
            self.lake.lock("gxp_audit_trail"),
        ):
            seq0, prev = self._head()
            now = datetime.now(UTC)
            rows = {
                "seq": list(range(seq0, seq0 + len(events))),
                "entry_id": [str(uuid.uuid4()) for _ in events],
                "ts_utc": [now] * len(events),
                "actor": [e.actor for e in events],
                "action": [e.action for e in events],
                "table_name": [e.table_name for e in events],
                "record_id": [e.record_id for e in events],
                "field": [e.field for e in events],
                "old_value": [_text(e.old_value) for e in events],
                "new_value": [_text(e.new_value) for e in events],
                "reason": [e.reason for e in events],
                "context_id": [e.context_id for e in events],
            }
            frame = pl.DataFrame(rows, schema={k: SCHEMA[k] for k in rows})
            bodies = _canonical_bodies(frame).to_list()
            prevs, hashes = [], []
            for b in bodies:
                prevs.append(prev)
                prev = _mac(self.key, b, prev)
                hashes.append(prev)
            frame = frame.with_columns(
                prev_hash=pl.Series(prevs, dtype=pl.String),
                entry_hash=pl.Series(hashes, dtype=pl.String),
            )
            last_seq = seq0 + len(events) - 1
            self.lake.append(
                GXP_LAYER,
                TABLE,
                frame,
                metadata={"audit_head_seq": last_seq, "audit_head_hash": hashes[-1]},
                configuration=GXP_TABLE_CONFIGURATION,
            )
            self.anchor.advance(self.uri, last_seq, hashes[-1])
        return list(zip(frame["seq"].to_list(), hashes, strict=True))

    def record(
        self, action: str, actor: str, table_name: str = "", record_id: str = "",
        field: str | None = None, old_value: Any = None, new_value: Any = None,
        reason: str | None = None, context_id: str | None = None,
    ) -> int:  # fmt: skip
        """Append one event; returns its seq."""
        ev = AuditEvent(action, actor, table_name, record_id, field, old_value, new_value,
                        reason, context_id)  # fmt: skip
        return self.append([ev])[0][0]

    @contextlib.contextmanager
    def batch(self) -> Iterator[list[AuditEvent]]:
        """Collect events in a list and append them as one commit when the block ends."""
        buf: list[AuditEvent] = []
        yield buf
        self.append(buf)

    # -- reading
    def read(
        self,
        action: str | None = None,
        record_ids: Sequence[str] | None = None,
        table_name: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """Entries (newest last), optionally filtered; empty frame when there is no trail."""
        lf = self.lake.scan(GXP_LAYER, TABLE)
        if lf is None:
            return pl.DataFrame(schema=SCHEMA)
        if action is not None:
            lf = lf.filter(pl.col("action") == action)
        if record_ids is not None:
            lf = lf.filter(pl.col("record_id").is_in(list(record_ids)))
        if table_name is not None:
            lf = lf.filter(pl.col("table_name") == table_name)
        if actor is not None:
            lf = lf.filter(pl.col("actor") == actor)
        df = lf.sort("seq").collect()
        return df.tail(limit) if limit else df

    def verify(self, anchor_uri: str | None = None) -> VerificationResult:
        """Check every entry's HMAC, the links, the sequence and the anchored head.

        ``anchor_uri``: whose anchor to compare with (a backup copy is checked against the
        anchor of the table it was copied from)."""
        t0 = time.perf_counter()
        uri = anchor_uri or self.uri
        anchor = self.anchor.get(uri)
        self.lake.forget()
        try:
            dt = self.lake.table(GXP_LAYER, TABLE)
            frame = (
                pl.DataFrame(schema=SCHEMA)
                if dt is None
                else pl.scan_delta(dt).select(list(SCHEMA)).collect()
            )
        except Exception as e:  # corrupt files: report instead of crashing the verifier
            return VerificationResult(
                ok=False,
                entries=0,
                table_uri=self.uri,
                kind="unreadable",
                detail=f"{type(e).__name__}: {e}",
                anchor_seq=anchor.seq if anchor else None,
                seconds=time.perf_counter() - t0,
            )
        res = verify_frame(frame, self.key, anchor, self.uri)
        if dt is not None:
            for h in dt.history():
                op, mode = h.get("operation"), (h.get("operationParameters") or {}).get("mode")
                appended = op in ("WRITE", "CREATE TABLE") and mode in (
                    None,
                    "Append",
                    "ErrorIfExists",
                )
                if not appended and op != "SET TBLPROPERTIES":
                    res.non_append_commits.append(int(h["version"]))
            res.non_append_commits.sort()
        res.seconds = time.perf_counter() - t0
        return res


def verify(lake: Lake, anchor_uri: str | None = None) -> VerificationResult:
    """Verify a lake's audit trail with the configured key and anchor store."""
    return AuditTrail(lake).verify(anchor_uri)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, compact, UTC ISO timestamps)."""
    return hashlib.sha256(canonical_json(dict(record)).encode()).hexdigest()
