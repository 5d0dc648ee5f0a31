"""Where the lake lives and how we read and write its Delta tables.

A table is ``<root>/<layer>/<name>`` (the same layout dagster-deltalake uses). The root is
a local folder by default or an object-store URI (``s3://``, ``az://``, ``gs://``) with
storage options taken from the environment.

Exactly-once appends: every row of the ingestion tables carries the landed file it came
from (``source_file``) and a file's rows are committed in one commit, so "has this file
been written to this table?" is answered by the table's own rows (``Lake.sources_in``, a
read pruned by file statistics), and a crash between two commits can never leave half a
file. Tables rebuilt whole from their sources (silver batches, lab results, maintenance
events) mark the files they reflect with a Delta *application transaction* per file
(``app_id = "src:<sha1 of the file's landing path>"``), committed atomically with the
rows. The append-only tables no longer carry such markers: one per delivered file and
table made every snapshot load grow with the lake (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    PostCommitHookProperties,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

_REMOTE = ("s3://", "s3a://", "az://", "abfs://", "abfss://", "gs://", "gcs://")
# Environment variables passed to delta-rs as storage options when the lake is remote.
_STORAGE_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_")

# the one timestamp type of the lake: microseconds, UTC
UTC_US = pl.Datetime("us", "UTC")

WRITER_PROPERTIES = WriterProperties(compression="ZSTD", compression_level=1)
# Tables the lake creates write a checkpoint every 10 commits (Delta's default is 100). Each
# ingestion loads table snapshots many times, and a load replays every JSON commit since the
# last checkpoint: with one small commit per delivered file and 100, a load 87 commits after
# a checkpoint took 36 ms against 11 ms just after it (silver table of 287 batches; see
# docs/benchmarks.md).
#
# File statistics (min/max/null count per column, kept for every data file in the log) are
# collected only for the columns reads filter on: time, batch, unit and source file. With
# Delta's default (the first 32 columns) every snapshot load, checkpoint and scan parses the
# statistics of every column of every file: a silver table holds one file per batch and
# chunk, so that cost grew with the lake (1,000 files, 27 columns: 20 ms per load against
# 8-10 ms with these columns). Listed columns a table does not have are ignored.
STATS_COLUMNS = ("ts", "batch_id", "unit_id", "source_file", "start_ts", "event_ts", "sample_ts")
TABLE_CONFIGURATION = {
    "delta.checkpointInterval": "10",
    "delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS),
}
# Parquet encoding per column (what a write costs; the values written are the same).
# Dictionary encoding pays for text (a few distinct values: indexes and a tiny dictionary),
# not for measurements or hashes: the writer interns every float / row hash until the
# dictionary page is full (1 MB), then falls back to plain, so the hashing is wasted. Page
# statistics (min/max per page and row group) are kept only for ``STATS_COLUMNS``, the
# columns reads filter on; Delta's file statistics come from them. Measured on a 1 M-row
# bronze group: 0.29 -> 0.24 s of CPU per write, file 4 % smaller; a 39 k-row x 26-tag
# timeline write 0.12 -> 0.03 s (docs/benchmarks.md).
NO_DICTIONARY_COLUMNS = ("row_hash",)
_PLAIN = ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")
_NO_STATS = ColumnProperties(statistics_enabled="NONE")


def _plain_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_floating(t))


def writer_properties(
    schema: pa.Schema | pl.Schema | None, layer: str | None = None
) -> WriterProperties:
    """The lake's writer settings for a frame of this schema (see NO_DICTIONARY_COLUMNS).

    GxP tables (the audit trail, signatures, deviations, releases) keep the writer's
    defaults, statistics on every column: they are small, so the settings buy nothing
    there, and their files keep the layout the audit trail's tamper tests were written
    against (a byte flipped in the middle of a file lands in a column's data, which
    ``AuditTrail.verify`` reads and hashes)."""
    if schema is None or layer == GXP_LAYER:
        return WRITER_PROPERTIES
    if isinstance(schema, pl.Schema):
        kinds = {n: t.is_float() for n, t in schema.items()}
    else:
        kinds = {f.name: _plain_type(f.type) for f in schema}
    cols = {
        n: _PLAIN if plain or n in NO_DICTIONARY_COLUMNS else _NO_STATS
        for n, plain in kinds.items()
        if n not in STATS_COLUMNS
    }
    return WriterProperties(compression="ZSTD", compression_level=1, column_properties=cols)


def _schema_of(data: Any) -> pa.Schema | pl.Schema | None:
    if isinstance(data, pl.DataFrame):
        return data.schema
    schema = getattr(data, "schema", None)
    return schema if isinstance(schema, pa.Schema) else None


def post_commit_hooks(dt: DeltaTable | None) -> PostCommitHookProperties:
    """Checkpoint as configured, but clean up expired log files only on checkpoint commits.

    delta-rs runs its expired-log cleanup after every commit by default, and it lists the
    whole ``_delta_log`` folder each time: about 8 ms per commit for a table of 1,000
    commits against nothing for a young one (measured; a chunk makes 6-8 commits). Delta
    removes expired logs only up to the last checkpoint anyway, so doing it when a
    checkpoint is written keeps the log as tidy at a tenth of the cost.
    """
    if dt is None:
        return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)
    conf = dt.metadata().configuration
    interval = int(conf.get("delta.checkpointInterval") or 100)
    at_checkpoint = (dt.version() + 1) % max(interval, 1) == 0
    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=at_checkpoint)


# Rows per slice when one landed file is read, validated and written piece by piece (bronze and
# silver): what bounds the peak memory of ingesting a file of any size (docs/benchmarks.md,
# "One large file"). Override with PHARMA_INGEST_SLICE_ROWS.
DEFAULT_SLICE_ROWS = 250_000


def slice_rows(env: Mapping[str, str] | None = None) -> int:
    """Rows per slice (``PHARMA_INGEST_SLICE_ROWS``, default ``DEFAULT_SLICE_ROWS``)."""
    env = os.environ if env is None else env
    raw = env.get("PHARMA_INGEST_SLICE_ROWS", "")
    try:
        n = int(raw) if raw else DEFAULT_SLICE_ROWS
    except ValueError:
        raise ValueError(f"PHARMA_INGEST_SLICE_ROWS={raw!r} is not a whole number") from None
    if n < 1:
        raise ValueError(f"PHARMA_INGEST_SLICE_ROWS={raw!r} must be at least 1")
    return n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def scratch_dir(lake: Lake) -> Iterator[Path]:
    """A private scratch folder for spooling one file's slices, removed afterwards.

    Local lakes keep it under ``<root>/_spool`` (same disk as the tables); folders left by
    a killed process (its pid is in the name and no longer alive) are removed on the way
    in. Object-store lakes use the system temporary folder.
    """
    if lake.is_local:
        base = Path(lake.root) / "_spool"
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            pid = old.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        d = base / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        d.mkdir()
    else:
        d = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-pharma-spool-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Spool:
    """Rows written slice by slice to a scratch Arrow IPC file and read back as a stream.

    What lets a file of any size be committed in ONE Delta commit (``Lake.append`` with
    ``spool.reader``) while only one slice is in memory at a time. Every slice is cast to
    the first slice's Arrow schema and read back one record batch at a time (Arrow IPC with
    LZ4: writing and reading cost a fraction of Parquet's).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0 and self._writer is not None:
            return
        table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            self.schema = table.schema
            opts = pa.ipc.IpcWriteOptions(compression="lz4")
            self._writer = pa.ipc.new_file(str(self.path), table.schema, options=opts)
        else:
            assert self.schema is not None
            if set(table.schema.names) != set(self.schema.names):
                raise ValueError(
                    f"{self.path.name}: a slice has columns {sorted(table.schema.names)}, the "
                    f"first had {sorted(self.schema.names)}"
                )
            table = table.select(self.schema.names).cast(self.schema)
        self._writer.write_table(table, max_chunksize=65_536)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _batches(self) -> Iterator[pa.RecordBatch]:
        self.close()
        if self.schema is None:
            return
        with pa.OSFile(str(self.path)) as src:  # not mmap: mapped pages would count as RSS
            f = pa.ipc.open_file(src)
            for i in range(f.num_record_batches):
                yield f.get_batch(i)

    def reader(self) -> pa.RecordBatchReader:
        """A fresh stream over the spooled rows (one record batch in memory at a time)."""
        self.close()
        assert self.schema is not None, "nothing was spooled"
        return pa.RecordBatchReader.from_batches(self.schema, self._batches())

    def frames(self, where: pl.Expr | None = None) -> Iterator[pl.DataFrame]:
        """The spooled rows, a record batch at a time (optionally filtered)."""
        for b in self._batches():
            df = pl.from_arrow(b)
            assert isinstance(df, pl.DataFrame)
            yield df if where is None else df.filter(where)


PART_ROWS = 10_000_000  # rows per Parquet file of a streamed append
ROW_GROUP_ROWS = 262_144  # rows per row group (what a reader holds at a time)


def _stat(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return v


def _write_parts(folder: Path, reader: pa.RecordBatchReader) -> list[AddAction]:
    """Write a stream to Parquet files in a table's folder; their Delta add actions."""
    adds: list[AddAction] = []
    cols = [c for c in STATS_COLUMNS if c in reader.schema.names]
    writer: pq.ParquetWriter | None = None
    path: Path | None = None
    rows = 0
    lo: dict[str, Any] = {}
    hi: dict[str, Any] = {}
    nulls: dict[str, int] = {}

    def close() -> None:
        nonlocal writer, path, rows
        if writer is None or path is None:
            return
        writer.close()
        st = path.stat()
        stats = {
            "numRecords": rows,
            "minValues": {c: _stat(v) for c, v in lo.items()},
            "maxValues": {c: _stat(v) for c, v in hi.items()},
            "nullCount": nulls,
        }
        adds.append(
            AddAction(path.name, st.st_size, {}, int(st.st_mtime * 1000), True, json.dumps(stats))
        )
        writer, path, rows = None, None, 0
        lo.clear()
        hi.clear()
        nulls.clear()

    def flush(batches: list[pa.RecordBatch]) -> None:
        nonlocal writer, path, rows
        if not batches:
            return
        t = pa.Table.from_batches(batches, schema=reader.schema)
        if writer is None:
            path = folder / f"part-00000-{uuid.uuid4()}-c000.zstd.parquet"
            writer = pq.ParquetWriter(
                path,
                t.schema,
                compression="zstd",
                compression_level=1,
                # the encodings of ``writer_properties``: no dictionary for measurements and
                # hashes, page statistics only on the columns reads filter on
                use_dictionary=[
                    f.name
                    for f in t.schema
                    if not _plain_type(f.type) and f.name not in NO_DICTIONARY_COLUMNS
                ],
                write_statistics=[c for c in t.schema.names if c in STATS_COLUMNS],
            )
        writer.write_table(t, row_group_size=ROW_GROUP_ROWS)
        rows += t.num_rows
        for c in cols:
            mm = pc.min_max(t[c])
            nulls[c] = nulls.get(c, 0) + t[c].null_count
            a, b = mm["min"].as_py(), mm["max"].as_py()
            if a is not None:
                lo[c] = a if c not in lo else min(lo[c], a)
                hi[c] = b if c not in hi else max(hi[c], b)
        if rows >= PART_ROWS:
            close()

    buf: list[pa.RecordBatch] = []
    n = 0
    for b in reader:
        buf.append(b)
        n += b.num_rows
        if n >= ROW_GROUP_ROWS:
            flush(buf)
            buf, n = [], 0
    flush(buf)
    close()
    return adds


#: the layer of the GxP records (written by ``pharma_assets.compliance``)
GXP_LAYER = "gxp"

#: the environment variable naming the lake root, and its default (relative to the CWD)
LAKE_URI_ENV = "PHARMA_LAKE_URI"
DEFAULT_LAKE_URI = "lakehouse"


def lake_uri_from_env(env: Mapping[str, str] | None = None) -> str:
    """The configured lake root as given: ``$PHARMA_LAKE_URI``, else ``lakehouse``."""
    env = os.environ if env is None else env
    return env.get(LAKE_URI_ENV) or DEFAULT_LAKE_URI


def storage_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Object-store credentials and settings (``AWS_*``, ``AZURE_*``, ``GOOGLE_*``)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k.startswith(_STORAGE_ENV_PREFIXES)}


def source_app_id(source_file: str) -> str:
    return "src:" + hashlib.sha1(source_file.encode()).hexdigest()


class WriteConflictError(RuntimeError):
    pass


@dataclass
class Lake:
    """A lake root plus the options needed to reach it."""

    root: str
    storage_options: dict[str, str] = field(default_factory=dict)
    commit_retries: int = 8
    _snapshots: dict[str, DeltaTable] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def at(cls, root: str | Path, storage_options: Mapping[str, str] | None = None) -> Lake:
        root = str(root)
        if root.startswith(_REMOTE):
            opts = dict(
                storage_options if storage_options is not None else storage_options_from_env()
            )
            return cls(root.rstrip("/"), opts)
        return cls(str(Path(root).resolve()), dict(storage_options or {}))

    @classmethod
    def from_env(cls, root: str | Path | None = None, env: Mapping[str, str] | None = None) -> Lake:
        """The lake at ``root``, or at the configured root (:func:`lake_uri_from_env`), with
        the object-store options of the environment: the one place both are read."""
        return cls.at(root or lake_uri_from_env(env), storage_options_from_env(env))

    def with_own_snapshots(self) -> Lake:
        """The same lake with a snapshot cache of its own, for work in another thread.

        A cached snapshot (``table``) is updated in place by a commit through it and by
        ``update_incremental``, so a thread that scans a table while another commits to it
        through the same object can read a half-updated snapshot (seen: a polars panic on
        a file count one off, reading ``silver/telemetry`` while a background thread
        appended to it). Two objects on one table are as safe as two processes.
        """
        return dataclasses.replace(self, storage_options=dict(self.storage_options), _snapshots={})

    @property
    def is_local(self) -> bool:
        return not self.root.startswith(_REMOTE)

    def uri(self, layer: str, name: str) -> str:
        return f"{self.root}/{layer}/{name}"

    # ------------------------------------------------------------------ reading
    def table(self, layer: str, name: str, version: int | None = None) -> DeltaTable | None:
        """The table's latest snapshot (or ``version``), None if the table does not exist.

        Latest snapshots are cached per Lake object and brought up to date with
        ``update_incremental`` (reads only the commits since), so the many lookups of one
        ingestion cost one full log load per table instead of one each: what keeps the cost
        of a new chunk from growing with the size of the lake.
        """
        uri = self.uri(layer, name)
        if version is not None:
            try:
                return DeltaTable(
                    uri, version=version, storage_options=self.storage_options or None
                )
            except TableNotFoundError:
                return None
        dt = self._snapshots.get(uri)
        if dt is not None:
            try:
                dt.update_incremental()
                return dt
            except Exception:  # table moved away or recreated: load it afresh
                self._snapshots.pop(uri, None)
        try:
            dt = DeltaTable(uri, storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None
        self._snapshots[uri] = dt
        return dt

    def exists(self, layer: str, name: str) -> bool:
        """Whether the table exists, without loading its snapshot (a local lake looks for its
        first commit; an object-store lake asks delta-rs)."""
        uri = self.uri(layer, name)
        if self.is_local:
            log = Path(uri) / "_delta_log"
            return (log / f"{0:020d}.json").exists() or any(log.glob("*.checkpoint.parquet"))
        if uri in self._snapshots:
            return True
        return DeltaTable.is_deltatable(uri, storage_options=self.storage_options or None)

    def forget(self) -> None:
        """Drop cached snapshots (after tables were moved or deleted outside the Lake)."""
        self._snapshots.clear()

    def version(self, layer: str, name: str) -> int | None:
        dt = self.table(layer, name)
        return None if dt is None else dt.version()

    def scan(self, layer: str, name: str) -> pl.LazyFrame | None:
        """Lazy scan of a table, or None when the table does not exist yet."""
        dt = self.table(layer, name)
        if dt is None:
            return None
        return pl.scan_delta(dt)

    def read(
        self,
        layer: str,
        name: str,
        columns: Sequence[str] | None = None,
        partition: tuple[str, Sequence[str]] | None = None,
        filter_expr: pl.Expr | None = None,
    ) -> pl.DataFrame | None:
        """Read a table (optionally some partitions, columns and a row filter)."""
        dt = self.table(layer, name)
        if dt is None:
            return None
        lf = pl.scan_delta(dt)
        if partition is not None:
            col, values = partition
            lf = lf.filter(pl.col(col).is_in(list(values)))
        if filter_expr is not None:
            lf = lf.filter(filter_expr)
        if columns is not None:
            lf = lf.select(columns)
        return lf.collect()

    def sources_in(
        self,
        layer: str,
        name: str,
        source_files: Iterable[str],
        batch_ids: Iterable[str] | None = None,
    ) -> set[str]:
        """The subset of ``source_files`` that have rows in the table (``source_file`` column).

        The ingestion tables record "this file is written" by the file's rows themselves:
        a file's rows are committed in one commit, so they are all there or none is. The
        read is pruned by the file statistics kept on ``source_file`` and ``batch_id``
        (``STATS_COLUMNS``; pass ``batch_ids`` when the files' batches are known), so it
        reads the few data files that can hold them. Unlike transaction markers, nothing
        accumulates in the table's log: a snapshot of a table of 1,000 batches loads as
        fast as one of 10 (docs/benchmarks.md).
        """
        files = list(dict.fromkeys(source_files))
        if not files:
            return set()
        lf = self.scan(layer, name)
        if lf is None:
            return set()
        where = pl.col("source_file").is_in(files)
        ids = sorted(set(batch_ids)) if batch_ids is not None else []
        if ids:
            where = pl.col("batch_id").is_in(ids) & where
        got = lf.filter(where).select(pl.col("source_file").unique()).collect()
        return set(got["source_file"].to_list())

    def file_slices(
        self, layer: str, name: str, batch_id: str, source_file: str, rows: int
    ) -> Iterator[pl.DataFrame]:
        """The rows of one source file (of one batch), at most ``rows`` at a time.

        Reads one Parquet row group at a time (pruned by the files' and row groups'
        statistics on ``batch_id`` and ``source_file``), so memory stays flat however many
        rows the file has. Rows come in the table's file order, then row order.
        """
        dt = self.table(layer, name)
        if dt is None:
            return
        flt = (pads.field("batch_id") == batch_id) & (pads.field("source_file") == source_file)
        ds = dt.to_pyarrow_dataset()
        for frag in ds.get_fragments(filter=flt):
            for rg in frag.split_by_row_group(filter=flt):  # type: ignore[attr-defined]
                t = rg.to_table(filter=flt, use_threads=False)
                for k in range(0, t.num_rows, rows):
                    df = pl.from_arrow(t.slice(k, rows))
                    assert isinstance(df, pl.DataFrame)
                    yield df

    def written_sources(self, layer: str, name: str, source_files: Iterable[str]) -> set[str]:
        """The subset of ``source_files`` marked written by an application transaction.

        Used by the tables rebuilt from their sources (``overwrite(..., source_files=)``:
        silver batches, lab results, maintenance events); the append-only ingestion tables
        use ``sources_in``.
        """
        dt = self.table(layer, name)
        if dt is None:
            return set()
        return {f for f in source_files if dt.transaction_version(source_app_id(f)) is not None}

    # ------------------------------------------------------------------ writing
    def append(
        self,
        layer: str,
        name: str,
        data: pl.DataFrame | pa.Table | Callable[[], pa.RecordBatchReader],
        source_files: Sequence[str] = (),
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        configuration: Mapping[str, str] | None = None,
    ) -> int:
        """Append rows (maybe none) and mark ``source_files`` as written, in one commit.

        ``data`` may be a function returning a fresh stream of record batches (for example
        ``Spool.reader``): the rows are then written as they are read, in one commit,
        without holding them all in memory. Returns the new table version. Retries commit
        conflicts with other writers.
        """
        props = CommitProperties(
            custom_metadata={k: str(v) for k, v in (metadata or {}).items()},
            app_transactions=[Transaction(source_app_id(f), 1) for f in source_files] or None,
            max_commit_retries=50,
        )
        uri = self.uri(layer, name)
        if self.is_local:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        if callable(data) and self.is_local and not partition_by:
            return self._append_stream(layer, name, data, props, configuration)
        return self._append_delta_rs(layer, name, data, partition_by, props, configuration)

    def _append_delta_rs(
        self,
        layer: str,
        name: str,
        data: pl.DataFrame | pa.Table | Callable[[], pa.RecordBatchReader],
        partition_by: Sequence[str] | None,
        props: CommitProperties,
        configuration: Mapping[str, str] | None,
    ) -> int:
        uri = self.uri(layer, name)
        last: Exception | None = None
        for attempt in range(self.commit_retries):
            # polars frames go through the Arrow C stream interface: no to_arrow() copy of
            # string-view columns (measured 2-3x faster for a 1.5M-row append)
            table = data() if callable(data) else data
            try:
                # load the snapshot once: write_deltalake commits against it and updates it in
                # place, so its version is this commit's (no second load of the log)
                dt = self.table(layer, name)
                write_deltalake(
                    uri if dt is None else dt,
                    table,
                    mode="append",
                    partition_by=list(partition_by) if partition_by else None,
                    storage_options=self.storage_options or None,
                    writer_properties=writer_properties(_schema_of(table), layer),
                    commit_properties=props,
                    configuration={**TABLE_CONFIGURATION, **(configuration or {})},
                    schema_mode="merge",
                    post_commithook_properties=post_commit_hooks(dt),
                )
                if dt is not None:
                    return dt.version()
                created = self.table(layer, name)
                assert created is not None
                return created.version()
            except (CommitFailedError, OSError) as e:  # concurrent creators / writers
                last = e
                time.sleep(0.05 * (2**attempt))
        raise WriteConflictError(f"could not commit to {uri}: {last}") from last

    def _append_stream(
        self,
        layer: str,
        name: str,
        data: Callable[[], pa.RecordBatchReader],
        props: CommitProperties,
        configuration: Mapping[str, str] | None,
    ) -> int:
        """Append a stream of rows in one commit with flat memory (local lakes).

        delta-rs's writer keeps growing while it consumes a stream (about 80 bytes per
        bronze row: 1 M rows +270 MB, 5 M rows +590 MB, measured), so the rows are written
        here, one row group at a time, to Parquet files in the table's folder, and committed
        with one ``create_write_transaction`` of their add actions (statistics of
        ``STATS_COLUMNS`` included). A crash before the commit leaves only unreferenced
        files, which readers never see (vacuum removes them). A table that does not exist
        yet is created empty first; an older partitioned table takes the delta-rs path.
        """
        reader = data()
        uri = self.uri(layer, name)
        dt = self.table(layer, name)
        if dt is None:
            empty = pa.Table.from_batches([], schema=reader.schema)
            self.append(layer, name, empty, configuration=configuration)
            dt = self.table(layer, name)
            assert dt is not None
        known = {f.name for f in dt.schema().fields}
        if dt.metadata().partition_columns or set(reader.schema.names) - known:
            reader.close()
            return self._append_delta_rs(layer, name, data, None, props, configuration)
        adds = _write_parts(Path(uri), reader)
        actions: list[AddAction | RemoveAction] = list(adds)
        last: Exception | None = None
        for attempt in range(self.commit_retries):
            try:
                dt = self.table(layer, name)
                assert dt is not None
                dt.create_write_transaction(
                    actions,
                    mode="append",
                    schema=dt.schema(),
                    commit_properties=props,
                    post_commithook_properties=post_commit_hooks(dt),
                )
                dt.update_incremental()
                return dt.version()
            except (CommitFailedError, OSError) as e:
                last = e
                time.sleep(0.05 * (2**attempt))
        for a in adds:
            (Path(uri) / a.path).unlink(missing_ok=True)
        raise WriteConflictError(f"could not commit to {uri}: {last}") from last

    def overwrite(
        self,
        layer: str,
        name: str,
        data: pl.DataFrame | pa.Table,
        predicate: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        partition_by: Sequence[str] | None = None,
        source_files: Sequence[str] = (),
    ) -> int:
        """Replace the table (or the rows matching ``predicate``) with ``data``.

        ``source_files`` are marked as written (as in ``append``): for tables rebuilt from
        their sources, the marker says "this file's content is reflected here".
        """
        table = data
        uri = self.uri(layer, name)
        if self.is_local:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        dt = self.table(layer, name)
        write_deltalake(
            uri if dt is None else dt,
            table,
            mode="overwrite",
            predicate=predicate if dt is not None else None,
            partition_by=list(partition_by) if partition_by else None,
            storage_options=self.storage_options or None,
            writer_properties=writer_properties(_schema_of(table), layer),
            commit_properties=CommitProperties(
                custom_metadata={k: str(v) for k, v in (metadata or {}).items()},
                app_transactions=[Transaction(source_app_id(f), 1) for f in source_files] or None,
            ),
            configuration=TABLE_CONFIGURATION,
            schema_mode="overwrite" if predicate is None else None,
            post_commithook_properties=post_commit_hooks(dt),
        )
        written = self.table(layer, name)
        assert written is not None
        return written.version()

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float = 600.0) -> Iterator[None]:
        """Serialise writers of one logical unit of work (for example one batch partition).

        Local lakes use an ``fcntl`` lock file under ``<root>/_locks``; it is released by the
        kernel when a process dies, so a SIGKILLed run never leaves a stale lock. Object-store
        lakes rely on Dagster concurrency pools instead (docs/deployment_guide.md) and on the
        per-source transaction markers, which make a repeated append a no-op.
        """
        if not self.is_local:
            yield
            return
        folder = Path(self.root) / "_locks"
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        with open(folder / f"{safe}.lock", "w") as fh:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"lock {name!r} held for more than {timeout_s} s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
