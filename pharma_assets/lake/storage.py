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
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import (
    CommitProperties,
    DeltaTable,
    PostCommitHookProperties,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, TableNotFoundError

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
DEFAULT_SLICE_ROWS = 500_000


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
    """Rows written slice by slice to a scratch Parquet file and read back as a stream.

    What lets a file of any size be committed in ONE Delta commit (``Lake.append`` with
    ``spool.reader``) while only one slice is in memory at a time. Every slice is cast to
    the first slice's Arrow schema; each slice is one row group, read back one at a time
    (``ParquetFile.iter_batches`` kept growing: 115 MB per 10 M rows, measured).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0 and self._writer is not None:
            return
        table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="lz4")
        else:
            assert self.schema is not None
            table = table.select(self.schema.names).cast(self.schema)
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def reader(self) -> pa.RecordBatchReader:
        """A fresh stream over the spooled rows (one row group in memory at a time)."""
        self.close()
        f = pq.ParquetFile(self.path)

        def batches() -> Iterator[pa.RecordBatch]:
            for i in range(f.metadata.num_row_groups):
                yield from f.read_row_group(i).to_batches()

        return pa.RecordBatchReader.from_batches(f.schema_arrow, batches())

    def frames(self, where: pl.Expr | None = None) -> Iterator[pl.DataFrame]:
        """The spooled rows, one slice at a time (optionally filtered)."""
        self.close()
        if self.schema is None:
            return
        f = pq.ParquetFile(self.path)
        for i in range(f.metadata.num_row_groups):
            df = pl.from_arrow(f.read_row_group(i))
            assert isinstance(df, pl.DataFrame)
            yield df if where is None else df.filter(where)


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
                    writer_properties=WRITER_PROPERTIES,
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
            writer_properties=WRITER_PROPERTIES,
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
