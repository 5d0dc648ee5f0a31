"""Bronze: landed files become append-only Delta tables, each file exactly once.

Per source there is one table (``bronze/telemetry``, ``bronze/mes``, ``bronze/lims``,
``bronze/cmms``) holding the raw values plus ingestion metadata (``source_file``,
``ingested_at``, ``ingest_run_id``, ``row_hash``). Values that do not fit their column type
are kept verbatim in ``raw`` (and the typed cell is null) so that silver can quarantine the
row with the offending value; columns the contract does not know are kept in ``extra``.

A file that cannot be read at all (corrupt Parquet, wrong CSV delimiter, missing required
columns, malformed JSON, empty, a second delivery of the same content) goes to
``bronze/quarantine`` with its reason. Every file, accepted or not, gets one row in
``bronze/ingest_log``: that table is the reconciliation ledger (rows landed per file).

Exactly once: the rows of a file, its quarantine record and its ledger row each carry the
file's landing path (``source_file``) and are each committed whole; a writer holds the
source's lock from its final check of those rows (``Lake.sources_in``) to its commit. A
file whose rows committed but whose ledger row did not (a run killed in between) gets its
ledger row from the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .amendments import AmendmentGuard
from .input_rules import NaiveTimestamps, count_rows, refused_entry, resolve_naive_times
from .landing_scan import LandedFile
from .storage import DEFAULT_SLICE_ROWS, UTC_US, Lake, Spool, scratch_dir, slice_rows

LAYER = "bronze"

# The contract of each source: column -> type. Everything else in a file is "extra".
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "telemetry": {
        "ts": UTC_US,
        "site_id": pl.String(),
        "unit_id": pl.String(),
        "batch_id": pl.String(),
        "tag": pl.String(),
        "value": pl.Float64(),
        "uom": pl.String(),
        "quality": pl.String(),
    },
    "lims": {
        "sample_id": pl.String(),
        "site_id": pl.String(),
        "unit_id": pl.String(),
        "batch_id": pl.String(),
        "sample_ts": UTC_US,
        "sample_type": pl.String(),
        "analyte": pl.String(),
        "value": pl.Float64(),
        "uom": pl.String(),
    },
    "mes": {
        "event_id": pl.String(),
        "event_type": pl.String(),
        "event_ts": UTC_US,
        "site_id": pl.String(),
        "unit_id": pl.String(),
        "batch_id": pl.String(),
    },
    "cmms": {
        "work_order_id": pl.String(),
        "event_type": pl.String(),
        "event_ts": UTC_US,
        "site_id": pl.String(),
        "unit_id": pl.String(),
        "equipment_id": pl.String(),
    },
    "coa": {  # LIMS certificates of analysis of raw-material lots (lake/material_lots.py)
        "coa_id": pl.String(),
        "site_id": pl.String(),
        "lot_id": pl.String(),
        "material": pl.String(),
        "issuer": pl.String(),
        "tested_ts": UTC_US,
        "attribute": pl.String(),
        "value": pl.Float64(),
        "uom": pl.String(),
        "method": pl.String(),
    },
}
# Sources whose records keep their full original JSON in ``payload``.
JSON_SOURCES = ("mes", "cmms")

LOG_SCHEMA = {
    "source": pl.String(),
    "source_file": pl.String(),
    "unit_id": pl.String(),
    "batch_id": pl.String(),
    "bytes": pl.Int64(),
    "sha256": pl.String(),
    "arrived_at": UTC_US,
    "status": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
    "rows": pl.Int64(),
    "ingested_at": UTC_US,
    "ingest_run_id": pl.String(),
}
QUARANTINE_SCHEMA = {k: v for k, v in LOG_SCHEMA.items() if k != "status"}
# One row per started ingestion of a large (sliced) file: a file whose attempts keep dying
# (a killed run leaves no ledger row) is quarantined after ``IngestLimits.max_attempts``.
ATTEMPT_SCHEMA = {
    "source": pl.String(),
    "source_file": pl.String(),
    "batch_id": pl.String(),
    "run_id": pl.String(),
    "started_at": UTC_US,
}


@dataclass(frozen=True)
class IngestLimits:
    """What one landed file may cost before it is quarantined instead of ingested.

    ``slice_rows``: rows in memory at a time (a Parquet file with more rows is read, checked
    and spooled slice by slice, then committed whole in one commit); ``max_file_rows`` and
    ``max_text_bytes`` (CSV/JSON files are parsed whole): larger files are quarantined
    (``file_too_large``); ``max_attempts``: a sliced file whose ingestion was started that
    many times without finishing (a killed or crashed run) is quarantined
    (``repeated_failure``) instead of being retried for ever.
    """

    slice_rows: int = DEFAULT_SLICE_ROWS
    max_file_rows: int = 50_000_000
    max_text_bytes: int = 64 * 1024 * 1024
    max_attempts: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestLimits:
        """``PHARMA_INGEST_SLICE_ROWS``, ``PHARMA_MAX_FILE_ROWS``, ``PHARMA_MAX_TEXT_FILE_MB``,
        ``PHARMA_MAX_FILE_ATTEMPTS`` (defaults above)."""
        env = os.environ if env is None else env

        def num(key: str, default: int) -> int:
            raw = env.get(key, "")
            try:
                n = int(raw) if raw else default
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a whole number") from None
            if n < 1:
                raise ValueError(f"{key}={raw!r} must be at least 1")
            return n

        return cls(
            slice_rows=slice_rows(env),
            max_file_rows=num("PHARMA_MAX_FILE_ROWS", cls.max_file_rows),
            max_text_bytes=num("PHARMA_MAX_TEXT_FILE_MB", cls.max_text_bytes >> 20) << 20,
            max_attempts=num("PHARMA_MAX_FILE_ATTEMPTS", cls.max_attempts),
        )


class FileRejected(Exception):
    """A landed file that cannot become bronze rows; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str, rows: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.rows = reason, detail, rows


@dataclass
class IngestReport:
    source: str
    files_seen: int = 0
    files_already_ingested: int = 0
    files_accepted: int = 0
    files_quarantined: int = 0
    rows_landed: int = 0
    rows_accepted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    batches: set[str] = field(default_factory=set)

    def merge(self, other: IngestReport) -> None:
        for k in (
            "files_seen",
            "files_already_ingested",
            "files_accepted",
            "files_quarantined",
            "rows_landed",
            "rows_accepted",
        ):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.reasons.update(other.reasons)
        self.batches |= other.batches

    def as_metadata(self) -> dict[str, Any]:
        return {
            "files_seen": self.files_seen,
            "files_already_ingested": self.files_already_ingested,
            "files_accepted": self.files_accepted,
            "files_quarantined": self.files_quarantined,
            "rows_landed": self.rows_landed,
            "rows_accepted": self.rows_accepted,
            "quarantine_reasons": dict(self.reasons),
        }


# ---------------------------------------------------------------------------- readers
def _read_parquet(data: bytes) -> pl.DataFrame:
    try:
        # one file, one thread: the lake's other work has the other core (the dataset
        # machinery behind pq.read_table costs 30 % more CPU here)
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except Exception as e:
        raise FileRejected("unreadable_parquet", f"{type(e).__name__}: {e}") from None
    return _from_arrow(table)


def _read_csv(data: bytes, expected: Sequence[str]) -> pl.DataFrame:
    text = data.decode("utf-8", errors="replace")
    header = text.splitlines()[0] if text.strip() else ""
    try:
        df = pl.read_csv(io.BytesIO(data), infer_schema=False, truncate_ragged_lines=False)
    except Exception as e:
        raise FileRejected("unreadable_csv", f"{type(e).__name__}: {e}") from None
    missing = [c for c in expected if c not in df.columns]
    if missing:
        hint = ""
        for delim in (";", "\t", "|"):
            if delim in header and all(c in header.split(delim) for c in expected):
                hint = f" (the header is {delim!r}-delimited; expected ',')"
        raise FileRejected("missing_columns", f"missing {missing}{hint}", rows=df.height)
    return df


def _read_jsonl(data: bytes) -> pl.DataFrame:
    records = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise FileRejected("malformed_json", f"line {n}: {e.msg}") from None
        if not isinstance(rec, dict):
            raise FileRejected("malformed_json", f"line {n} is not a JSON object")
        records.append(rec)
    if not records:
        return pl.DataFrame()
    keys = list(dict.fromkeys(k for r in records for k in r))
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    for r in records:
        for k in keys:
            v = r.get(k)
            cols[k].append(v if v is None or isinstance(v, str) else json.dumps(v))
    df = pl.DataFrame(cols, schema={k: pl.String for k in keys})
    return df.with_columns(payload=pl.Series([json.dumps(r) for r in records], dtype=pl.String))


def _coerce(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Cast to the contract's types; cells that do not cast are null with text in ``raw``."""
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise FileRejected("missing_columns", f"missing {missing}", rows=df.height)
    exprs, fails = [], []
    for c, t in schema.items():
        src = df.schema[c]
        if src == t:
            exprs.append(pl.col(c))
            continue
        as_text = pl.col(c).cast(pl.String)
        if t == UTC_US:
            if isinstance(src, pl.Datetime):
                cast = (
                    pl.col(c).dt.convert_time_zone("UTC")
                    if src.time_zone
                    else pl.col(c).dt.replace_time_zone("UTC")
                )  # type: ignore[union-attr]
                cast = cast.dt.cast_time_unit("us")
            else:
                cast = as_text.str.to_datetime(time_zone="UTC", time_unit="us", strict=False)
        else:
            cast = pl.col(c).cast(t, strict=False)
        exprs.append(cast.alias(c))
        fails.append(
            pl.when(pl.col(c).is_not_null() & cast.is_null()).then(
                pl.format("{}={}", pl.lit(c), as_text)
            )
        )
    # JSON records keep everything in `payload`; tabular files keep unknown columns in `extra`
    extra_cols = [] if "payload" in df.columns else [c for c in df.columns if c not in schema]
    out = df.select(
        *exprs,
        *([pl.col("payload")] if "payload" in df.columns else []),
        raw=pl.concat_str(fails, separator=";", ignore_nulls=True)
        if fails
        else pl.lit(None, pl.String),
        extra=(
            pl.concat_str(
                [pl.format("{}={}", pl.lit(c), pl.col(c).cast(pl.String)) for c in extra_cols],
                separator=";",
                ignore_nulls=True,
            )
            if extra_cols
            else pl.lit(None, pl.String)
        ),
    )
    return out.with_columns(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in ("raw", "extra")
    )


def read_source_file(source: str, data: bytes) -> pl.DataFrame:
    """Parse one landed file into the source's typed columns plus ``raw``/``extra``."""
    if not data:
        raise FileRejected("empty_file", "0 bytes", rows=0)
    if source == "telemetry":
        df = _read_parquet(data)
    elif source in ("lims", "coa"):
        df = _read_csv(data, list(SCHEMAS[source]))
    elif source in JSON_SOURCES:
        df = _read_jsonl(data)
    else:
        raise FileRejected("unexpected_location", f"no source reads {source!r} files")
    if df.height == 0:
        raise FileRejected("empty_file", "no records", rows=0)
    try:  # times must say their zone (input_rules)
        df = resolve_naive_times(df, [c for c, t in SCHEMAS[source].items() if t == UTC_US])
    except NaiveTimestamps as e:
        raise FileRejected("naive_timestamp", str(e), rows=df.height) from None
    return _coerce(df, SCHEMAS[source])


# ---------------------------------------------------------------------------- ingestion
def _ts(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _kept_in_raw(df: pl.DataFrame, differs: pl.Expr, col: str, value: str) -> pl.DataFrame:
    """``col`` set to ``value`` (the landing path's), the content's other values kept in
    ``raw`` as ``col=...``. The usual file agrees with its path: then only the column is set
    (the conditional text would be built for every row and thrown away: 0.25 s of CPU per
    8 M readings)."""
    if not df.select(differs.any()).item():
        return df.with_columns(pl.lit(value, pl.String).alias(col))
    return df.with_columns(
        pl.when(differs)
        .then(
            pl.concat_str(
                [pl.col("raw"), pl.format(col + "={}", pl.col(col))],
                separator=";",
                ignore_nulls=True,
            )
        )
        .otherwise(pl.col("raw"))
        .alias("raw"),
        pl.lit(value, pl.String).alias(col),
    )


def _finish(
    df: pl.DataFrame, f: LandedFile, now: datetime, run_id: str, source: str
) -> pl.DataFrame:
    cols = list(SCHEMAS[source])
    if f.batch_id is not None and "batch_id" in df.columns:
        # the landing path decides the partition; a different batch_id in the content is
        # kept verbatim in `raw` for silver to quarantine
        mismatch = pl.col("batch_id").is_not_null() & (pl.col("batch_id") != f.batch_id)
        df = _kept_in_raw(df, mismatch, "batch_id", f.batch_id)
    if f.unit_id is not None and "unit_id" in df.columns:
        # likewise the unit: content naming another unit than its folder is kept in `raw`
        other = pl.col("unit_id").is_not_null() & (pl.col("unit_id") != f.unit_id)
        df = _kept_in_raw(df, other, "unit_id", f.unit_id)
    hashed = df.select(cols).hash_rows(seed=20261128).reinterpret(signed=True)
    return df.with_columns(
        source_file=pl.lit(f.rel, pl.String),
        ingested_at=pl.lit(now, UTC_US),
        ingest_run_id=pl.lit(run_id, pl.String),
        row_hash=hashed,
    )


def _log_row(
    f: LandedFile,
    sha: str,
    status: str,
    reason: str | None,
    detail: str | None,
    rows: int | None,
    now: datetime,
    run_id: str,
) -> dict[str, Any]:
    return {
        "source": f.source,
        "source_file": f.rel,
        "unit_id": f.unit_id,
        "batch_id": f.batch_id,
        "bytes": f.size,
        "sha256": sha,
        "arrived_at": _ts(f.arrived_ns),
        "status": status,
        "reason": reason,
        "detail": detail,
        "rows": rows,
        "ingested_at": now,
        "ingest_run_id": run_id,
    }


def read_log(
    lake: Lake, batch_ids: Sequence[str] | None = None, source: str | None = None
) -> pl.DataFrame:
    lf = lake.scan(LAYER, "ingest_log")
    if lf is None:
        return pl.DataFrame(schema=LOG_SCHEMA)
    if batch_ids is not None:
        lf = lf.filter(pl.col("batch_id").is_in(list(batch_ids)))
    if source is not None:
        lf = lf.filter(pl.col("source") == source)
    return lf.collect()


def _append_log(lake: Lake, rows: list[dict[str, Any]]) -> None:
    """Ledger rows (a rerun checks the ledger's rows first, so it never logs a file twice)."""
    if rows:
        lake.append(LAYER, "ingest_log", pl.DataFrame(rows, schema=LOG_SCHEMA))


def _batches_of(files: Sequence[LandedFile]) -> list[str] | None:
    """The files' batch ids for pruning reads, or None when some file has no batch."""
    ids = [f.batch_id for f in files]
    return None if any(b is None for b in ids) else sorted({b for b in ids if b})


def _repair_log(
    lake: Lake, source: str, files: Sequence[LandedFile], run_id: str, logged: set[str]
) -> list[dict[str, Any]]:
    """Ledger rows for files whose data committed but whose ledger row did not (a crash).

    ``logged`` are the files the ledger already holds (read from its rows: a ledger row and
    its file's marker are one commit). Only the others are looked up, one marker lookup per
    file and table (a lookup costs in proportion to the table's log), under the source's
    lock so that a run committing them right now is not taken for a crashed one. Returns the
    rows it appended.
    """
    rest = [f.rel for f in files if f.rel not in logged]
    if not rest:
        return []
    ids = _batches_of([f for f in files if f.rel in rest])
    logged = lake.sources_in(LAYER, "ingest_log", rest, ids)  # recheck under the lock
    todo = [f for f in files if f.rel in rest and f.rel not in logged]
    if not todo:
        return []
    rels = [f.rel for f in todo]
    in_data = lake.sources_in(LAYER, source, rels, ids) if source in SCHEMAS else set()
    in_q = lake.sources_in(LAYER, "quarantine", rels, ids)
    rows = []
    now = datetime.now(UTC)
    if in_data:
        counts = lake.read(
            LAYER, source, ["source_file"], filter_expr=pl.col("source_file").is_in(list(in_data))
        )
        n = counts["source_file"].value_counts() if counts is not None else None
        got = dict(zip(n["source_file"], n["count"], strict=True)) if n is not None else {}
        for f in todo:
            if f.rel in in_data:
                rows.append(
                    _log_row(
                        f,
                        "",
                        "accepted",
                        None,
                        "ledger row recovered after an interrupted run",
                        int(got.get(f.rel, 0)),
                        now,
                        run_id,
                    )
                )
    if in_q:
        q = lake.read(LAYER, "quarantine", filter_expr=pl.col("source_file").is_in(list(in_q)))
        assert q is not None
        for r in q.iter_rows(named=True):
            f = next(x for x in todo if x.rel == r["source_file"])
            rows.append(
                _log_row(
                    f, r["sha256"], "quarantined", r["reason"], r["detail"], r["rows"], now, run_id
                )
            )
    _append_log(lake, rows)
    return rows


def ingest_files(
    lake: Lake,
    landing_root: str | Path,
    source: str,
    files: Sequence[LandedFile],
    run_id: str,
    max_rows_per_commit: int = 1_000_000,  # bounds peak memory (docs/benchmarks.md)
    now: datetime | None = None,
    limits: IngestLimits | None = None,
    on_commit: OnCommit | None = None,
) -> IngestReport:
    """Ingest landed files of one source (those not ingested yet) into bronze.

    Small files are parsed whole and committed in groups of about ``max_rows_per_commit``
    rows (a group past half full ends with its batch: the one pass then hands silver whole
    batches); a Parquet file of more than ``limits.slice_rows`` rows is read slice by slice
    and committed alone (``_ingest_large``), so memory does not grow with a file's size.

    ``on_commit`` (the one-pass ingestion, ``lake.telemetry_ingest``) is called after each
    group's rows and ledger rows are committed, with the group's accepted files and the
    in-memory frame that was written, so silver validates the same rows without reading
    bronze back. Large (spooled) files are not handed over: silver reads them back slice by
    slice.
    """
    limits = limits or IngestLimits.from_env()
    rep = IngestReport(source)
    rep.files_seen = len(files)
    if not files:
        return rep
    # the ledger rows of these files' batches (of the whole source for files without a
    # batch): one read, used both for "already ingested" and for duplicate content
    batch_ids = sorted({f.batch_id for f in files if f.batch_id})
    no_batch = any(f.batch_id is None for f in files)
    known = read_log(lake, None if no_batch else batch_ids, source)
    with lake.lock(f"bronze-{source}"):
        repaired = _repair_log(lake, source, files, run_id, set(known["source_file"].to_list()))
    if repaired:
        known = pl.concat([known, pl.DataFrame(repaired, schema=LOG_SCHEMA)], how="vertical")
    done = set(known["source_file"].to_list())
    # in batch and landing-name order (names start with the first timestamp): silver then
    # finds each batch's files contiguous and in its own order, and reads need no sort
    todo = sorted((f for f in files if f.rel not in done), key=lambda f: (f.batch_id or "", f.rel))
    rep.files_already_ingested = len(files) - len(todo)
    seen_sha = dict(zip(known["sha256"], known["source_file"], strict=True))
    # rows of each known content, so that a second delivery still reconciles (rows landed)
    seen_rows = dict(zip(known["sha256"], known["rows"], strict=True))
    guard = AmendmentGuard(lake, source, known, run_id)  # corrections of accepted values
    with lake.lock(f"bronze-{source}"):  # accepted files changed in place: never ignored
        for f in guard.overwritten_files([f for f in files if f.rel in done]):
            if guard.check_overwritten(f, f.path(landing_root).read_bytes(), now):
                rep.reasons["amended_delivery"] += 1
    refused = [f for f in todo if f.issue]  # landing_scan's routing rules; links never read
    if refused:
        todo = [f for f in todo if not f.issue]
        _commit(
            lake,
            source,
            [(f, None, refused_entry(f, landing_root, now, run_id)) for f in refused],
            rep,
        )

    group: list[tuple[LandedFile, pl.DataFrame | Spool | None, dict[str, Any]]] = []
    group_rows = 0
    # files are read and parsed one group ahead in a thread (_Prefetch) while this one checks
    # them in order and commits: the same steps in the same order as reading them here
    read_ahead = _Prefetch(
        todo,
        lambda f: _read_landed(f, landing_root, source, now, run_id, limits),
        max_rows_per_commit,
    )
    try:
        for item in read_ahead:
            group, group_rows = _take(
                item,
                lake,
                landing_root,
                source,
                run_id,
                limits,
                seen_sha,
                seen_rows,
                guard,
                rep,
                group,
                group_rows,
                max_rows_per_commit,
                on_commit,
            )
    finally:
        read_ahead.close()
    if group:
        _commit(lake, source, group, rep, on_commit)
    return rep


@dataclass
class _Landed:
    """One landed file as read ahead (``_read_landed``): what the ingestion loop needs."""

    f: LandedFile
    now: datetime
    big: int | None = None  # rows of a file too large to parse whole
    too_large: bool = False  # a text file over the size limit (not read)
    data: bytes | None = None  # kept only for files outside the landing layout
    sha: str = ""
    parsed: pl.DataFrame | BaseException | None = None  # the frame, or why it failed
    error: BaseException | None = None  # raised when the loop reaches the file

    @property
    def rows(self) -> int:
        return self.parsed.height if isinstance(self.parsed, pl.DataFrame) else 0


def _read_landed(
    f: LandedFile,
    landing_root: str | Path,
    source: str,
    now: datetime | None,
    run_id: str,
    limits: IngestLimits,
) -> _Landed:
    """Read, hash and parse one landed file; whatever fails is kept for the loop to raise
    or quarantine in its turn (a file's duplicate content is only known there)."""
    item = _Landed(f, now or datetime.now(UTC))
    try:
        item.big = _sliced_rows(f, landing_root, source, limits)
        if item.big is not None:
            return item
        if source in SCHEMAS and source != "telemetry" and f.size > limits.max_text_bytes:
            item.too_large = True
            return item
        try:
            data = f.path(landing_root).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"landed file {f.rel} disappeared before ingestion") from None
        item.sha = hashlib.sha256(data).hexdigest()
        if source not in SCHEMAS:
            item.data = data
            return item
        try:
            item.parsed = _finish(read_source_file(source, data), f, item.now, run_id, source)
        except Exception as e:  # FileRejected quarantines the file; anything else is raised
            item.parsed = e
    except Exception as e:
        item.error = e
    return item


class _Prefetch:
    """``read(f)`` for each file in order, in a worker thread, at most ``max_rows`` parsed
    rows ahead of the consumer (plus the file being read): bronze parses the next group
    while it writes this one (docs/benchmarks.md, "Where the time goes")."""

    def __init__(
        self, files: Sequence[LandedFile], read: Callable[[LandedFile], _Landed], max_rows: int
    ) -> None:
        self._files, self._read, self._max = list(files), read, max(max_rows, 1)
        self._ready: deque[_Landed] = deque()
        self._ahead, self._stop, self._done = 0, False, False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="bronze-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for f in self._files:
                with self._cond:
                    while self._ahead >= self._max and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                item = self._read(f)
                with self._cond:
                    self._ready.append(item)
                    self._ahead += item.rows
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[_Landed]:
        for _ in self._files:
            with self._cond:
                while not self._ready and not self._done:
                    self._cond.wait()
                if not self._ready:  # (the reader stopped: close() was called)
                    return
                item = self._ready.popleft()
                self._ahead -= item.rows
                self._cond.notify_all()
            yield item

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()


def _take(
    item: _Landed,
    lake: Lake,
    landing_root: str | Path,
    source: str,
    run_id: str,
    limits: IngestLimits,
    seen_sha: dict[str, str],
    seen_rows: dict[str, int],
    guard: AmendmentGuard,
    rep: IngestReport,
    group: list[tuple[LandedFile, pl.DataFrame | Spool | None, dict[str, Any]]],
    group_rows: int,
    max_rows_per_commit: int,
    on_commit: OnCommit | None,
) -> tuple[list[tuple[LandedFile, pl.DataFrame | Spool | None, dict[str, Any]]], int]:
    """One landed file, in landing order, into the group being built (committed when full)."""
    f, now_f, big = item.f, item.now, item.big
    if item.error is not None:
        raise item.error
    if group and group_rows >= max_rows_per_commit // 2 and f.batch_id != group[-1][0].batch_id:
        # a group past half full ends with its batch: silver then prepares and checks
        # whole batches, instead of a batch's two halves in two groups
        _commit(lake, source, group, rep, on_commit)
        group, group_rows = [], 0
    if big is not None:
        if group:
            _commit(lake, source, group, rep)
            group, group_rows = [], 0
        _ingest_large(
            lake,
            landing_root,
            source,
            f,
            big,
            run_id,
            now_f,
            limits,
            seen_sha,
            seen_rows,
            rep,
            guard,
        )
        return group, group_rows
    if item.too_large:
        detail = (
            f"{f.size:,} bytes; the limit for {source} files is "
            f"{limits.max_text_bytes:,} (PHARMA_MAX_TEXT_FILE_MB)"
        )
        sha = _sha256_file(f.path(landing_root))
        group.append(
            (
                f,
                None,
                _log_row(f, sha, "quarantined", "file_too_large", detail, None, now_f, run_id),
            )
        )
        return group, group_rows
    sha = item.sha
    try:
        if source not in SCHEMAS:
            assert item.data is not None
            raise FileRejected(
                "unexpected_location",
                f"{f.rel} is outside the landing layout",
                rows=count_rows(f.rel, item.data),
            )
        if sha in seen_sha:
            raise FileRejected(
                "duplicate_file", f"same content as {seen_sha[sha]}", rows=seen_rows.get(sha)
            )
        if isinstance(item.parsed, BaseException):
            raise item.parsed
        df = item.parsed
        assert df is not None
        guard.check(f, df, sha, group, rep.batches)
        seen_sha[sha], seen_rows[sha] = f.rel, df.height
        log = _log_row(f, sha, "accepted", None, None, df.height, now_f, run_id)
        group.append((f, df, log))
        group_rows += df.height
    except FileRejected as e:
        group.append(
            (
                f,
                None,
                _log_row(f, sha, "quarantined", e.reason, e.detail, e.rows, now_f, run_id),
            )
        )
    if group_rows >= max_rows_per_commit:
        _commit(lake, source, group, rep, on_commit)
        group, group_rows = [], 0
    return group, group_rows


# what the one-pass ingestion receives after each bronze commit: (files, rows written)
OnCommit = Callable[[list[LandedFile], pl.DataFrame], None]


def _commit(
    lake: Lake,
    source: str,
    group: list[tuple[LandedFile, pl.DataFrame | Spool | None, dict[str, Any]]],
    rep: IngestReport,
    on_commit: OnCommit | None = None,
) -> None:
    with lake.lock(f"bronze-{source}"):
        # final check under the lock: another run may have ingested some of these meanwhile
        rels = [f.rel for f, _, _ in group]
        ids = _batches_of([f for f, _, _ in group])
        done = lake.sources_in(LAYER, "ingest_log", rels, ids)
        if source in SCHEMAS:
            done |= lake.sources_in(LAYER, source, rels, ids)
        done |= lake.sources_in(LAYER, "quarantine", rels, ids)
        group = [g for g in group if g[0].rel not in done]
        rep.files_already_ingested += len(rels) - len(group)
        accepted = [(f, df) for f, df, _ in group if df is not None]
        rejected = [log for _, df, log in group if df is None]
        spooled = [df for _, df in accepted if isinstance(df, Spool)]
        for sp in spooled:  # a large file: streamed from its spool, still one commit
            lake.append(LAYER, source, sp.reader, metadata={"files": 1, "rows": sp.rows})
        frames: pl.DataFrame | None = None
        if accepted and not spooled:
            frames = pl.concat(
                [df for _, df in accepted if isinstance(df, pl.DataFrame)], how="diagonal_relaxed"
            )
            lake.append(
                LAYER, source, frames, metadata={"files": len(accepted), "rows": frames.height}
            )
        if rejected:
            q = pl.DataFrame(
                [{k: r[k] for k in QUARANTINE_SCHEMA} for r in rejected], schema=QUARANTINE_SCHEMA
            )
            lake.append(LAYER, "quarantine", q)
        _append_log(lake, [log for _, _, log in group])
    if on_commit is not None and frames is not None:  # committed: silver may take the rows
        on_commit([f for f, df in accepted if isinstance(df, pl.DataFrame)], frames)
    for f, df, log in group:
        rep.rows_landed += log["rows"] or 0
        if f.batch_id:
            rep.batches.add(f.batch_id)
        if df is not None:
            rep.files_accepted += 1
            rep.rows_accepted += log["rows"] or 0
        else:
            rep.files_quarantined += 1
            rep.reasons[log["reason"]] += 1


# ---------------------------------------------------------------------------- large files
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(8 << 20):
                h.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(f"landed file {path} disappeared before ingestion") from None
    return h.hexdigest()


def _sliced_rows(
    f: LandedFile, landing_root: str | Path, source: str, limits: IngestLimits
) -> int | None:
    """The row count of a telemetry file too large to parse whole, else None."""
    if source != "telemetry":
        return None
    try:
        rows = pq.ParquetFile(f.path(landing_root)).metadata.num_rows
    except FileNotFoundError:
        raise FileNotFoundError(f"landed file {f.rel} disappeared before ingestion") from None
    except Exception:  # unreadable: the whole-file path quarantines it with the reason
        return None
    return rows if rows > limits.slice_rows else None


def _parquet_parts(pf: pq.ParquetFile, rows: int) -> Iterator[pa.Table]:
    for i in range(pf.metadata.num_row_groups):
        if pf.metadata.row_group(i).num_rows <= 2 * rows:
            t = pf.read_row_group(i)
            yield from (t.slice(k, rows) for k in range(0, t.num_rows, rows))
        else:  # a huge row group: read it in batches
            for b in pf.iter_batches(batch_size=rows, row_groups=[i]):
                yield pa.Table.from_batches([b])


def _parquet_slices(path: Path, rows: int) -> Iterator[pl.DataFrame]:
    """A Parquet file's rows, at most ``rows`` at a time (one row group read at once)."""
    try:
        parts = _parquet_parts(pq.ParquetFile(path), rows)
        while (t := next(parts, None)) is not None:
            yield _from_arrow(t)
    except Exception as e:
        raise FileRejected("unreadable_parquet", f"{type(e).__name__}: {e}") from None


def _decoded(name: str, col: pa.ChunkedArray) -> pl.Series:
    """A dictionary-encoded text column as String: each chunk's few dictionary values
    gathered by its indexes (copies of string views), instead of polars' Categorical and a
    cast of every row to text (0.15 instead of 0.22 s of CPU per million readings parsed)."""
    parts = [_decoded_chunk(name, ch) for ch in col.chunks]
    if not parts:
        return pl.Series(name, [], dtype=pl.String)
    return parts[0] if len(parts) == 1 else pl.concat(parts)


def _decoded_chunk(name: str, ch: pa.DictionaryArray) -> pl.Series:
    values = pl.Series(name, ch.dictionary.cast(pa.large_string()))
    if len(values) == 1 and ch.null_count == 0 and len(ch):
        # one value in every row (a file's site, unit or batch): repeated, not gathered
        # (0.006 instead of 0.07 s per 8 M rows)
        return values.new_from_index(0, len(ch))
    return values.gather(pl.Series(ch.indices))


def _is_text_dictionary(t: pa.DataType) -> bool:
    return pa.types.is_dictionary(t) and (
        pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
    )


def _from_arrow(t: pa.Table) -> pl.DataFrame:
    """The table as polars, text columns as String (dictionary-encoded ones decoded)."""
    coded = [
        n for n, c in zip(t.column_names, t.columns, strict=True) if _is_text_dictionary(c.type)
    ]
    df = pl.from_arrow(t.drop_columns(coded) if coded else t)
    assert isinstance(df, pl.DataFrame)
    if coded:
        df = df.with_columns(_decoded(n, t[n]) for n in coded).select(t.column_names)
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def _attempts(lake: Lake, f: LandedFile) -> int:
    """Earlier started ingestions of this file (it has no ledger row: none finished)."""
    where = pl.col("source_file") == f.rel
    if f.batch_id is not None:
        where = (pl.col("batch_id") == f.batch_id) & where
    got = lake.read(LAYER, "ingest_attempts", ["source_file"], filter_expr=where)
    return 0 if got is None else got.height


def _record_attempt(lake: Lake, f: LandedFile, run_id: str, now: datetime) -> None:
    row = {
        "source": f.source,
        "source_file": f.rel,
        "batch_id": f.batch_id,
        "run_id": run_id,
        "started_at": now,
    }
    lake.append(LAYER, "ingest_attempts", pl.DataFrame([row], schema=ATTEMPT_SCHEMA))


def _ingest_large(
    lake: Lake,
    landing_root: str | Path,
    source: str,
    f: LandedFile,
    rows: int,
    run_id: str,
    now: datetime,
    limits: IngestLimits,
    seen_sha: dict[str, str],
    seen_rows: dict[str, int],
    rep: IngestReport,
    guard: AmendmentGuard | None = None,
) -> None:
    """One large Parquet file: slices parsed and spooled, then ONE commit of all its rows.

    The spool (a scratch Parquet file) holds the typed rows while the file is read, so a
    file rejected half-way (a corrupt row group, missing columns) leaves nothing in the
    table, and the commit streams the spool: the rows of the file are still committed
    whole or not at all. Each start is recorded in ``bronze/ingest_attempts`` first: a file
    whose ingestion keeps getting killed is quarantined after ``limits.max_attempts``.
    """
    path = f.path(landing_root)
    sha = _sha256_file(path)
    reject: FileRejected | None = None
    if sha in seen_sha:
        reject = FileRejected(
            "duplicate_file", f"same content as {seen_sha[sha]}", rows=seen_rows.get(sha)
        )
    elif rows > limits.max_file_rows:
        reject = FileRejected(
            "file_too_large",
            f"{rows:,} rows; the limit is {limits.max_file_rows:,} (PHARMA_MAX_FILE_ROWS)",
            rows=rows,
        )
    elif (n := _attempts(lake, f)) >= limits.max_attempts:
        reject = FileRejected(
            "repeated_failure",
            f"{n} earlier ingestions of this file did not "
            f"finish (killed or crashed runs); the limit is "
            f"{limits.max_attempts} (PHARMA_MAX_FILE_ATTEMPTS)",
            rows=rows,
        )
    if reject is None:
        _record_attempt(lake, f, run_id, now)
        with scratch_dir(lake) as d:
            spool = Spool(d / "bronze.arrow")
            try:
                for part in _parquet_slices(path, limits.slice_rows):
                    typed = _finish(_coerce(part, SCHEMAS[source]), f, now, run_id, source)
                    if guard is not None:  # a slice that changes accepted values: held whole
                        guard.check(f, typed, sha, [], rep.batches)
                    spool.write(typed)
                if spool.rows == 0:
                    raise FileRejected("empty_file", "no records", rows=0)
            except FileRejected as e:
                reject = FileRejected(e.reason, e.detail, rows=rows)  # the whole file's rows
            if reject is None:
                seen_sha[sha], seen_rows[sha] = f.rel, spool.rows
                log = _log_row(f, sha, "accepted", None, None, spool.rows, now, run_id)
                _commit(lake, source, [(f, spool, log)], rep)
                return
    log = _log_row(f, sha, "quarantined", reject.reason, reject.detail, reject.rows, now, run_id)
    _commit(lake, source, [(f, None, log)], rep)
