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
import re
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
        # written to a private temporary file, then linked into place: another process never
        # sees a half-written key, and only one key wins
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(tmp, path)
        finally:
            tmp.unlink()
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


@dataclass(frozen=True)
class Retirement:
    """A retired anchor, as the anchor log holds it.

    ``logged`` are the (seq, entry_hash) heads the anchor log recorded for the retired trail
    (its history since the previous retirement); ``first_hash`` is the hash of its entry 0.
    Both identify the retired trail: a trail that still holds one of them is the same trail
    and must still reach the retired head. ``signed`` is False for a retirement written
    without login by versions before the retirement became a signed GxP action."""

    retired_at: str
    reason: str
    head_seq: int | None
    head_hash: str | None
    actor: str | None = None
    signature_id: str | None = None
    first_hash: str | None = None
    logged: tuple[tuple[int, str], ...] = ()

    @property
    def signed(self) -> bool:
        return self.signature_id is not None

    def describe(self) -> str:
        who = (
            f"by {self.actor} (signature {self.signature_id})"
            if self.signed
            else "WITHOUT login or signature (older version)"
        )
        covered = f"seq 0..{self.head_seq}" if self.head_seq is not None else "an empty trail"
        head = f", head hash {self.head_hash[:16]}" if self.head_hash else ""
        return (
            f"anchor retired {self.retired_at[:19]} UTC {who}, reason {self.reason!r}: it "
            f"covered {covered}{head}"
        )


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 (like the key), or tighten an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError as e:
            raise AuditKeyError(
                f"anchor database {path} has mode {oct(mode)} (others can read or write it) "
                f"and cannot be tightened ({e}); run `chmod 600 {path}`"
            ) from e


class AnchorStore:
    """The chain head kept outside the lake (SQLite; one row per audit table plus a log).

    The database file is created with mode 0600 like the key (an existing one is tightened).
    Whoever can rewrite the lake should not be able to rewrite this file: in production put
    it on another host or replace it with a PostgreSQL table owned by another account
    (docs/compliance.md, "Limits").
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(
            path or os.environ.get("PHARMA_AUDIT_ANCHOR") or gxp_home() / "audit_anchor.sqlite"
        ).expanduser()
        _private_file(self.path)
        with contextlib.closing(self._connect()) as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS anchor (table_uri TEXT PRIMARY KEY, seq INTEGER "
                "NOT NULL, entry_hash TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS anchor_log (table_uri TEXT NOT NULL, seq INTEGER "
                "NOT NULL, entry_hash TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )
            con.execute(
                "CREATE INDEX IF NOT EXISTS anchor_log_uri_seq ON anchor_log (table_uri, seq)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS retirement (log_rowid INTEGER PRIMARY KEY, "
                "table_uri TEXT NOT NULL, retired_at TEXT NOT NULL, actor TEXT NOT NULL, "
                "signature_id TEXT NOT NULL, reason TEXT NOT NULL, head_seq INTEGER, "
                "head_hash TEXT, first_hash TEXT)"
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

    def retire(
        self,
        table_uri: str,
        reason: str,
        actor: str,
        signature_id: str,
        head_seq: int | None,
        head_hash: str | None,
        first_hash: str | None,
    ) -> Retirement:
        """Drop the anchor of a trail whose retirement was signed (``retire_trail``) and log
        the retirement (a row with seq -1 in the anchor log plus its details), so a new trail
        can start at that location while ``verify`` still reports what was retired."""
        now = datetime.now(UTC).isoformat()
        text = (
            f"retired head seq {head_seq if head_seq is not None else '-'} by {actor} "
            f"(signature {signature_id}): {reason}"
        )
        with contextlib.closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM anchor WHERE table_uri = ?", (table_uri,))
            cur = con.execute(
                "INSERT INTO anchor_log VALUES (?, ?, ?, ?)", (table_uri, -1, text, now)
            )
            con.execute(
                "INSERT INTO retirement VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cur.lastrowid,
                    table_uri,
                    now,
                    actor,
                    signature_id,
                    reason,
                    head_seq,
                    head_hash,
                    first_hash,
                ),
            )
            con.execute("COMMIT")
        return self.retirements(table_uri)[-1]

    def retirements(self, table_uri: str) -> list[Retirement]:
        """Every retirement of ``table_uri``'s anchor, oldest first, read from the anchor log
        (also the unsigned ones older versions wrote: seq -1 rows without details)."""
        with contextlib.closing(self._connect()) as con:
            last = con.execute(  # rows after the last retirement belong to no retirement
                "SELECT max(rowid) FROM anchor_log WHERE table_uri = ? AND seq = -1", (table_uri,)
            ).fetchone()[0]
            if last is None:
                return []
            log = con.execute(
                "SELECT rowid, seq, entry_hash, updated_at FROM anchor_log WHERE table_uri = ? "
                "AND rowid <= ? ORDER BY rowid",
                (table_uri, last),
            ).fetchall()
            details = {
                int(r[0]): r
                for r in con.execute(
                    "SELECT log_rowid, actor, signature_id, reason, head_seq, head_hash, "
                    "first_hash FROM retirement WHERE table_uri = ?",
                    (table_uri,),
                ).fetchall()
            }
        out: list[Retirement] = []
        since: list[tuple[int, str]] = []
        for rowid, seq, text, at in log:
            if seq >= 0:
                since.append((int(seq), str(text)))
                continue
            d = details.get(int(rowid))
            if d is not None:
                out.append(Retirement(at, d[3], d[4], d[5], d[1], d[2], d[6], tuple(since)))
            else:  # older versions: "retired head seq N: reason", no login, no details
                m = re.match(r"retired head seq (-|\d+): (.*)", str(text), re.S)
                head = int(m.group(1)) if m and m.group(1) != "-" else None
                hashes = {s: h for s, h in since}
                out.append(
                    Retirement(
                        at,
                        m.group(2) if m else str(text),
                        head,
                        hashes.get(head) if head is not None else None,
                        logged=tuple(since),
                    )
                )
            since = []
        return out


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
    ``duplicate_seq`` (inserted entry), ``truncated`` (the anchored or retired head is gone),
    ``anchor_mismatch``, ``missing_anchor``, ``unreadable`` (a data file or the table cannot
    be read; ``first_bad_seq`` is the first entry of the unreadable file when known).
    ``retirements`` describes every retirement of this trail's anchor (anchor log)."""

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
    retirements: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        retired = "".join(f"; {r}" for r in self.retirements)
        if self.ok:
            extra = (
                f"; {self.unanchored_entries} entries after the anchor (written, not yet anchored)"
                if self.unanchored_entries
                else ""
            )
            return (
                f"audit trail OK: {self.entries} entries, head seq {self.head_seq}, anchored at "
                f"{self.anchor_seq}{extra} ({self.seconds:.2f} s){retired}"
            )
        return (
            f"audit trail FAILED at seq {self.first_bad_seq}: {self.kind}: {self.detail} "
            f"({self.entries} entries read){retired}"
        )


def _same_trail(r: Retirement, hashes: Sequence[str]) -> bool:
    """Does the trail whose entry hashes are ``hashes`` (by seq) hold the retired trail?"""
    n = len(hashes)
    if r.first_hash is not None and n and hashes[0] == r.first_hash:
        return True
    return any(0 <= s < n and hashes[s] == h for s, h in r.logged)


def _check_retirements(
    res: VerificationResult, hashes: Sequence[str], retirements: Sequence[Retirement]
) -> Retirement | None:
    """Compare the trail with every retirement; returns the last retirement of this very
    trail (its head then stands in for the anchor). Marks ``res`` failed when the trail is
    the retired one but no longer reaches the retired head."""
    n = len(hashes)
    own: Retirement | None = None
    for r in retirements:
        same = _same_trail(r, hashes)
        res.retirements.append(("this trail's " if same else "an earlier trail's ") + r.describe())
        if not same or not res.ok:
            continue
        own = r
        if r.head_seq is None or r.head_hash is None:
            continue
        if r.head_seq >= n:
            res.ok, res.kind, res.first_bad_seq = False, "truncated", n
            res.detail = (
                f"the anchor of this trail was retired at head seq {r.head_seq} on "
                f"{r.retired_at[:19]} UTC, but the trail ends at seq {n - 1}: entries "
                f"{n}..{r.head_seq} were removed"
            )
        elif hashes[r.head_seq] != r.head_hash:
            res.ok, res.kind, res.first_bad_seq = False, "anchor_mismatch", r.head_seq
            res.detail = (
                f"entry {r.head_seq} differs from the head recorded when the anchor was retired"
                f" on {r.retired_at[:19]} UTC (chain rebuilt)"
            )
    return own


def verify_frame(
    frame: pl.DataFrame,
    key: bytes,
    anchor: Anchor | None,
    table_uri: str = "",
    retirements: Sequence[Retirement] = (),
) -> VerificationResult:
    """Verify entries (any order) against the key, the anchor and the retired anchors; see
    VerificationResult."""
    t0 = time.perf_counter()
    df = frame.sort("seq", maintain_order=True)
    n = df.height
    res = VerificationResult(ok=True, entries=n, table_uri=table_uri)
    res.anchor_seq = anchor.seq if anchor else None
    hashes: list[str] = []
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
    own = _check_retirements(res, hashes, retirements)
    if res.ok:
        if anchor is None and n:
            if own is not None and own.head_seq == n - 1:
                res.anchor_seq = own.head_seq  # the retired head still anchors this trail
            else:
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


def _is_fatal(e: BaseException) -> bool:
    """Exceptions a verifier must let through; everything else (including pyo3's
    PanicException, a BaseException) is a finding about the data."""
    return isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


@dataclass(frozen=True)
class UnreadableFile:
    path: str
    first_seq: int | None
    last_seq: int | None
    problem: str

    def describe(self) -> str:
        where = (
            f"entries seq {self.first_seq}..{self.last_seq}"
            if self.first_seq is not None
            else "entries of unknown seq"
        )
        return f"data file {self.path} ({where}) cannot be read: {self.problem}"


def _file_size_problem(root: str, path: str, size: int | None) -> str | None:
    """For a local table: is the file there with the size the Delta log says?"""
    full = Path(root) / path
    try:
        actual = full.stat().st_size
    except OSError as e:
        return _first_line(e)
    if size is not None and actual != size:
        return f"the file has {actual} bytes but the Delta log says {size} (replaced)"
    return None


def _col(actions: pl.DataFrame, name: str, n: int) -> list[Any]:
    return actions[name].to_list() if name in actions.columns else [None] * n


def read_entries(
    dt: Any, table_uri: str, storage_options: Mapping[str, str]
) -> tuple[pl.DataFrame, list[UnreadableFile]]:
    """Every readable entry of the trail's snapshot ``dt`` and the data files that cannot be
    read (missing, replaced by another size, corrupt). Never raises for bad data: a panic
    inside the Parquet reader is caught too. Each unreadable file gets the seq range it
    held: from the Delta log's statistics when written, else from the gaps its absence
    leaves (the log's row counts say how many entries each file held)."""
    cols = list(SCHEMA)
    local = "://" not in table_uri or table_uri.startswith("file://")
    actions = pl.DataFrame(dt.get_add_actions(flatten=True))
    n = actions.height
    paths = _col(actions, "path", n)
    sizes, rows = _col(actions, "size_bytes", n), _col(actions, "num_records", n)
    lo, hi = _col(actions, "min.seq", n), _col(actions, "max.seq", n)
    mtimes = _col(actions, "modification_time", n)
    suspect = (
        [
            _file_size_problem(table_uri.removeprefix("file://"), p, sz)
            for p, sz in zip(paths, sizes, strict=True)
        ]
        if local
        else [None] * n
    )
    if not any(suspect):
        try:
            return pl.scan_delta(dt).select(cols).collect(), []
        except BaseException as e:  # a PanicException is a finding, not a crash
            if _is_fatal(e):
                raise
    frames: list[pl.DataFrame] = []
    bad: list[tuple[int, str]] = []  # (action index, problem)
    for i, (p, problem) in enumerate(zip(paths, suspect, strict=True)):
        if problem is None:
            try:
                frames.append(
                    pl.read_parquet(
                        f"{table_uri}/{p}",
                        columns=cols,
                        storage_options=None if local else dict(storage_options),
                    ).select(cols)
                )
                continue
            except BaseException as e:  # see above
                if _is_fatal(e):
                    raise
                problem = _first_line(e)
        bad.append((i, problem))
    frame = (
        pl.concat([f.cast({k: SCHEMA[k] for k in cols}) for f in frames], how="vertical")
        if frames
        else pl.DataFrame(schema=SCHEMA)
    )
    # seq ranges of the unreadable files: statistics, else the gaps in commit order
    present = set(frame["seq"].to_list())
    total = sum(int(r) for r in rows if r is not None)
    gaps: list[tuple[int, int]] = []
    for q in range(total):
        if q not in present:
            if gaps and gaps[-1][1] == q - 1:
                gaps[-1] = (gaps[-1][0], q)
            else:
                gaps.append((q, q))
    ordered = sorted(bad, key=lambda b: (mtimes[b[0]] is None, mtimes[b[0]] or 0, b[0]))
    by_gap = len(gaps) == len(ordered) and all(
        rows[i] is not None and g[1] - g[0] + 1 == int(rows[i])
        for (i, _), g in zip(ordered, gaps, strict=True)
    )
    out = []
    for k, (i, problem) in enumerate(ordered):
        first, last = lo[i], hi[i]
        if first is None and by_gap:
            first, last = gaps[k]
        out.append(
            UnreadableFile(
                paths[i],
                None if first is None else int(first),
                None if last is None else int(last),
                problem,
            )
        )
    return frame, out


def _mark_unreadable(
    res: VerificationResult, bad: Sequence[UnreadableFile], seqs: Sequence[int]
) -> None:
    """Report the first unreadable file at the first entry it holds (from the Delta log's
    statistics, else the first seq missing from what could be read)."""
    present = set(seqs)
    first = None
    for f in bad:
        s = f.first_seq
        if s is None:
            s = next((i for i in range(len(present) + 1) if i not in present), None)
        if first is None or (s is not None and (first[0] is None or s < first[0])):
            first = (s, f)
    assert first is not None
    seq, f = first
    if (
        not res.ok
        and res.first_bad_seq is not None
        and seq is not None
        and (res.first_bad_seq < seq)
    ):
        return  # an earlier entry already fails on its own
    res.ok, res.kind, res.first_bad_seq = False, "unreadable", seq
    others = f"; {len(bad) - 1} more unreadable file(s)" if len(bad) > 1 else ""
    res.detail = f"{f.describe()}{others}"


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
        self,
        action: str,
        actor: str,
        table_name: str = "",
        record_id: str = "",
        field: str | None = None,
        old_value: Any = None,
        new_value: Any = None,
        reason: str | None = None,
        context_id: str | None = None,
    ) -> int:
        """Append one event; returns its seq."""
        ev = AuditEvent(
            action, actor, table_name, record_id, field, old_value, new_value, reason, context_id
        )
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
        """Entries (newest last), optionally filtered; empty frame when there is no trail.
        Raises AuditIntegrityError (an Exception) when a data file cannot be read."""
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
        try:
            df = lf.sort("seq").collect()
        except BaseException as e:  # a reader panic is damage, not a crash
            if _is_fatal(e):
                raise
            raise AuditIntegrityError(
                f"the audit trail {self.uri} cannot be read ({_first_line(e)}); "
                "`pharma-twin audit verify` names the entries affected"
            ) from e
        return df.tail(limit) if limit else df

    def verify(self, anchor_uri: str | None = None) -> VerificationResult:
        """Check every entry's HMAC, the links, the sequence, the anchored head and every
        retirement of the anchor. Never raises for damaged data: whatever fails to read
        (including a panic inside the Parquet reader) is reported as ``unreadable``.

        ``anchor_uri``: whose anchor to compare with (a backup copy is checked against the
        anchor of the table it was copied from)."""
        t0 = time.perf_counter()
        uri = anchor_uri or self.uri
        anchor: Anchor | None = None
        try:
            anchor = self.anchor.get(uri)
            retirements = self.anchor.retirements(uri)
            self.lake.forget()
            dt = self.lake.table(GXP_LAYER, TABLE)
            frame, bad = (
                (pl.DataFrame(schema=SCHEMA), [])
                if dt is None
                else read_entries(dt, self.uri, self.lake.storage_options)
            )
            res = verify_frame(frame, self.key, anchor, self.uri, retirements)
            if bad:
                _mark_unreadable(res, bad, frame["seq"].to_list())
            if dt is not None:
                for h in dt.history():
                    op = h.get("operation")
                    mode = (h.get("operationParameters") or {}).get("mode")
                    appended = op in ("WRITE", "CREATE TABLE") and mode in (
                        None,
                        "Append",
                        "ErrorIfExists",
                    )
                    if not appended and op != "SET TBLPROPERTIES":
                        res.non_append_commits.append(int(h["version"]))
                res.non_append_commits.sort()
        except BaseException as e:  # the verifier reports, it never crashes
            if _is_fatal(e):
                raise
            res = VerificationResult(
                ok=False,
                entries=0,
                table_uri=self.uri,
                kind="unreadable",
                detail=f"the trail cannot be read: {_first_line(e)}",
                anchor_seq=anchor.seq if anchor else None,
            )
        res.seconds = time.perf_counter() - t0
        return res


def verify(lake: Lake, anchor_uri: str | None = None) -> VerificationResult:
    """Verify a lake's audit trail with the configured key and anchor store."""
    try:
        trail = AuditTrail(lake)
    except AuditKeyError:
        raise
    except BaseException as e:  # e.g. an unreadable anchor database
        if _is_fatal(e):
            raise
        return VerificationResult(
            ok=False,
            entries=0,
            table_uri=lake.uri(GXP_LAYER, TABLE),
            kind="unreadable",
            detail=f"the anchor store cannot be opened: {_first_line(e)}",
        )
    return trail.verify(anchor_uri)


RETIRE_ACTION = "audit_anchor_retired"


def retire_trail(
    lake: Lake, admin_id: str, password: str, reason: str, trail: AuditTrail | None = None
) -> Retirement:
    """Retire the anchor of a lake's audit trail that is going to be deleted on purpose (the
    demo lake `make clean` removes), so a new trail can start at that location.

    A GxP action: the administrator re-authenticates and signs (meaning ``responsibility``,
    permission ``audit.retire``) the trail's head; the retirement is written to the trail it
    retires (the last entry, its head) and to the anchor log, with the signature, the head
    and the hash of entry 0, so ``verify`` can tell later whether a trail at that location is
    a new one or the retired one cut short."""
    from .signatures import sign

    if not reason.strip():
        raise ValueError("retiring an audit trail needs a reason")
    trail = trail or AuditTrail(lake)
    if lake.table(GXP_LAYER, TABLE) is None:
        raise AuditIntegrityError(
            f"there is no audit trail at {trail.uri}: a retirement is signed and written into "
            "the trail it retires, so retire before deleting the lake (or restore it first)"
        )
    next_seq, head_hash = trail._head()
    record = {"table_uri": trail.uri, "head_seq": next_seq - 1, "head_hash": head_hash}
    sig = sign(
        lake,
        admin_id,
        password,
        "responsibility",
        "audit_trail",
        trail.uri,
        record,
        reason,
        trail=trail,
        permission="audit.retire",
    )
    [(seq, h)] = trail.append(
        [
            AuditEvent(
                RETIRE_ACTION,
                admin_id,
                f"{GXP_LAYER}/{TABLE}",
                trail.uri,
                "anchor",
                old_value={"head_seq": next_seq - 1, "head_hash": head_hash},
                new_value={"retired": True, "signature_id": sig.signature_id},
                reason=reason,
            )
        ]
    )
    lf = trail.lake.scan(GXP_LAYER, TABLE)
    first = [] if lf is None else lf.filter(pl.col("seq") == 0).collect()["entry_hash"].to_list()
    return trail.anchor.retire(
        trail.uri, reason, admin_id, sig.signature_id, seq, h, first[0] if first else None
    )


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, compact, UTC ISO timestamps)."""
    return hashlib.sha256(canonical_json(dict(record)).encode()).hexdigest()
