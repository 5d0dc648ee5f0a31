"""Silver telemetry: bronze files of batch partitions -> the five telemetry tables, in groups."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import polars as pl

from .. import bronze
from ..contracts import accepted_contract, route, telemetry_contract, validate
from ..specs import CppSpec
from ..storage import UTC_US, Lake
from .batches import BATCH_SCHEMA, PHASE_SCHEMA
from .common import LAYER, SILVER_TELEMETRY_COLUMNS
from .derived import excursion_segments_of, file_stats, minute_timeline
from .large_files import process_large_file
from .phase_rules import crossing_phases, write_crossings
from .prepare import (
    ACCEPTED_COLUMNS,
    VALID_COLUMNS,
    SilverReport,
    derivation_columns,
    not_processed,
    pending_telemetry_files,
    prepare_batch,
    quarantine_frame,
)


def process_telemetry(
    lake: Lake,
    batch_ids: Sequence[str],
    spec: CppSpec,
    run_id: str,
    now: datetime | None = None,
    max_rows: int = 1_000_000,  # rows per validation group: bounds peak memory (docs/benchmarks.md)
    limits: bronze.IngestLimits | None = None,
) -> SilverReport:
    """Validate the not-yet-processed bronze telemetry of these batches into silver.

    Files are taken in groups of about ``max_rows`` readings, across batches when a run
    covers many (a backfill): each group is one read of bronze, one validation per batch
    and one commit per silver table, so a bulk load does not pay six commits per batch. The
    group holds the locks of all its batches (taken in sorted order: no deadlock between
    runs whose groups overlap). A file of more than ``limits.slice_rows`` rows is processed
    alone, slice by slice (``process_large_file``), so memory does not grow with a file's size.
    """
    limits = limits or bronze.IngestLimits.from_env()
    rep = SilverReport()
    now = now or datetime.now(UTC)
    # one read of both logs for all partitions; rechecked per group under its batches' locks
    todo = pending_telemetry_files(lake, list(batch_ids))
    if todo.height == 0:
        return rep
    # only the rows of the batches with work (the whole tables grow with the lake)
    todo_ids = todo["batch_id"].unique(maintain_order=True).to_list()
    in_todo = pl.col("batch_id").is_in(todo_ids)
    batches = lake.read(LAYER, "batches", filter_expr=in_todo)
    phases = lake.read(LAYER, "batch_phases", filter_expr=in_todo)
    if batches is None or phases is None:
        batches, phases = pl.DataFrame(schema=BATCH_SCHEMA), pl.DataFrame(schema=PHASE_SCHEMA)
    known = set(batches["batch_id"].to_list())
    deferred = todo.filter(~pl.col("batch_id").is_in(list(known)))
    rep.files_deferred += deferred.height  # they wait for their batch_start event
    group: list[tuple[str, str]] = []
    rows = 0
    for bid, f, n in (
        todo.filter(pl.col("batch_id").is_in(list(known)))
        .select("batch_id", "source_file", "rows")
        .iter_rows()
    ):
        if (n or 0) > limits.slice_rows:
            if group:
                process_group(lake, group, spec, batches, phases, run_id, now, rep)
                group, rows = [], 0
            process_large_file(lake, bid, f, spec, batches, phases, run_id, now, rep, limits)
            continue
        group.append((bid, f))
        rows += n or 0
        if rows >= max_rows:
            process_group(lake, group, spec, batches, phases, run_id, now, rep)
            group, rows = [], 0
    if group:
        process_group(lake, group, spec, batches, phases, run_id, now, rep)
    return rep


class GroupTails:
    """Each group's commits, in a background thread, while the next group is validated.

    A group's tail is its commits: ``silver/telemetry`` (the big write), then the quarantine
    and the three derived tables, the phase crossings, then ``silver/telemetry_log``. They
    run in one background thread, one tail at a time in group order, while the next group is
    read, prepared and checked. The next group needs the tail's rows only when it shares a
    batch with it (its check for readings repeated from earlier files reads its own
    batches' silver rows): then it waits for the tail first (``wait_for``). Bronze ends its
    groups with their batch once they are half full (``bronze.ingest_files``), so in a bulk
    load consecutive groups usually hold different batches and overlap.

    Locks. A tail keeps its group's batch locks until its log is written (another run that
    checks the log under the lock must see the group either not started or finished). A
    next group that shares a batch with the tail in flight takes that batch's lock over
    (``hold`` counts the holders in this run; the lock file is released when the last lets
    go). Its other batches' locks are only tried; when one is busy (another run), the group
    first waits for the tail, lets go of everything and takes its locks the synchronous way,
    in sorted order, so two runs never wait on each other. With phases by tag crossing the
    group also waits for the tail first (it reads the crossings the tail writes). Within a
    group the commits keep the synchronous path's order, the log last: exactly-once is the
    synchronous path's. At most one tail is in flight; a failed tail's error stops the next
    group.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silver-tail")
        self._last: Future[None] | None = None
        self._last_ids: frozenset[str] = frozenset()  # the batches of the tail in flight
        self._own: Lake | None = None  # the tails' Lake, with snapshots of its own
        self._mu = threading.Lock()
        self._held: dict[str, list[Any]] = {}  # batch -> [its lock's context manager, holders]

    def hold(self, lake: Lake, ids: Sequence[str]) -> Callable[[], None]:
        """Take the locks of ``ids`` for one group (module docstring); returns its release."""
        taken: list[str] = []

        def release() -> None:
            with self._mu:
                for bid in taken:
                    entry = self._held[bid]
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._held[bid]
                        entry[0].__exit__(None, None, None)
            taken.clear()

        try:
            for blocking in (False, True):
                busy = False
                for bid in sorted(ids):
                    with self._mu:
                        entry = self._held.get(bid)
                        if entry is not None:
                            entry[1] += 1
                            taken.append(bid)
                            continue
                    cm = lake.lock(
                        f"silver-telemetry-{bid}", **({} if blocking else {"timeout_s": 0})
                    )
                    try:
                        cm.__enter__()
                    except TimeoutError:
                        if blocking:
                            raise
                        busy = True
                        break
                    with self._mu:
                        self._held[bid] = [cm, 1]
                    taken.append(bid)
                if not busy:
                    return release
                # another run holds one: no waiting while holding (see the docstring)
                release()
                self.wait()
        except BaseException:
            release()
            raise
        raise AssertionError("unreachable")  # the blocking pass returns or raises

    def submit(
        self,
        finish: Callable[[Lake], None],
        held: contextlib.ExitStack,
        ids: Sequence[str],
        lake: Lake,
    ) -> None:
        """Run ``finish`` (the tail of a group of batches ``ids``) after the previous tail,
        then close ``held`` (the group's locks). The tail commits through a ``Lake`` of its
        own on the same root (``Lake.with_own_snapshots``): the next group reads
        ``silver/telemetry`` and its log while the tail commits to them."""
        try:
            self.wait()
        except BaseException:
            held.close()
            raise
        if self._own is None or self._own.root != lake.root:
            self._own = lake.with_own_snapshots()
        own = self._own

        def run() -> None:
            with held:
                finish(own)

        self._last = self._pool.submit(run)
        self._last_ids = frozenset(ids)

    def wait_for(self, ids: Sequence[str]) -> None:
        """Wait for the tail in flight if it writes any of these batches (their readings
        must be in silver before a group of theirs checks for repeated readings)."""
        if self._last is not None and not self._last_ids.isdisjoint(ids):
            self.wait()

    def wait(self) -> None:
        """Wait for the tail in flight; re-raise its error."""
        last, self._last = self._last, None
        self._last_ids = frozenset()
        if last is not None:
            last.result()

    def close(self) -> None:
        """Wait for the tail in flight (its error is not raised here: call ``wait`` first)."""
        self._pool.shutdown(wait=True)


def process_group(
    lake: Lake,
    group: list[tuple[str, str]],
    spec: CppSpec,
    batches: pl.DataFrame,
    phases: pl.DataFrame,
    run_id: str,
    now: datetime,
    rep: SilverReport,
    rows: pl.DataFrame | None = None,
    tails: GroupTails | None = None,
) -> None:
    """One group of files into silver; with ``tails``, its last commits run in the background
    (``GroupTails``), else before this returns."""
    ids = sorted({b for b, _ in group})
    with contextlib.ExitStack() as stack:
        if tails is None:
            for bid in ids:
                stack.enter_context(lake.lock(f"silver-telemetry-{bid}"))
        else:
            if spec.rule.kind == "tag_crossing":
                tails.wait()  # its crossings are read below
            else:
                tails.wait_for(ids)  # a batch shared with the tail: its readings first
            stack.callback(tails.hold(lake, ids))
        # recheck under the locks: another run may have processed some of them meanwhile
        # (files accepted by bronze since the first read wait for the next run)
        pending = not_processed(
            lake, pl.DataFrame(group, schema=["batch_id", "source_file"], orient="row"), ids
        )
        if pending.height and spec.rule.kind == "tag_crossing":
            # phases by tag crossing: the crossings earlier groups recorded
            fresh = lake.read(LAYER, "batch_phases", filter_expr=pl.col("batch_id").is_in(ids))
            if fresh is not None:
                phases = pl.concat([phases.filter(~pl.col("batch_id").is_in(ids)), fresh])
        if pending.height:
            finish = _process_files(
                lake,
                pending.sort("batch_id", "source_file"),
                spec,
                batches,
                phases,
                run_id,
                now,
                rep,
                rows,
            )
            if tails is None:
                finish(lake)
            else:
                tails.submit(finish, stack.pop_all(), ids, lake)  # it releases the locks


def _process_files(
    lake: Lake,
    pending: pl.DataFrame,
    spec: CppSpec,
    batches: pl.DataFrame,
    phases: pl.DataFrame,
    run_id: str,
    now: datetime,
    rep: SilverReport,
    rows: pl.DataFrame | None = None,
) -> Callable[[Lake], None]:
    """One group of files (columns batch_id, source_file) -> one commit per silver table.

    Validates the rows and computes the derived tables; returns the group's tail, to be
    called next (``GroupTails``): the commits of ``silver/telemetry``, then of the other
    tables, the crossings, then the log.
    ``rows``: the files' bronze rows as bronze committed them (the one-pass ingestion hands
    over its in-memory frame); without it they are read back from bronze/telemetry.
    """
    all_files = pending["source_file"].to_list()
    ids = pending["batch_id"].unique(maintain_order=True).to_list()
    if rows is None:
        raw_all = lake.read(
            bronze.LAYER,
            "telemetry",
            filter_expr=pl.col("batch_id").is_in(ids) & pl.col("source_file").is_in(all_files),
        )
    elif rows["source_file"].n_unique() == len(all_files):
        raw_all = rows
    else:  # some of the frame's files were processed by another run meanwhile
        raw_all = rows.filter(pl.col("source_file").is_in(all_files))
    assert raw_all is not None
    # after a crash inside this group, files whose readings are already in silver/telemetry
    # go first: a reading repeated by another file then keeps the copy silver already holds
    written = lake.sources_in(LAYER, "telemetry", all_files, ids)
    per_batch: dict[str, list[str]] = {bid: [] for bid in ids}
    for b, f in pending.select("batch_id", "source_file").iter_rows():
        per_batch[b].append(f)
    files: list[str] = []
    for bid in ids:
        fs = per_batch[bid]
        files += [f for f in fs if f in written] + [f for f in fs if f not in written]
    order = {f: i for i, f in enumerate(files)}
    # a file's rows are contiguous in bronze (one file is one slice of one commit): number
    # the runs of equal names (adjacent comparisons) and map the few runs to file order,
    # instead of hashing the name of every row
    runs = raw_all["source_file"].rle_id()
    run_file = (
        pl.DataFrame({"run": runs, "source_file": raw_all["source_file"]})
        .unique("run", keep="first")
        .with_columns(pl.col("source_file").replace_strict(order, return_dtype=pl.UInt32))
        .sort("run")["source_file"]
    )
    raw_all = raw_all.with_columns(_file=run_file.gather(runs))
    # rows in file order (an earlier file's reading wins a duplicate); a stable sort keeps
    # each file's own row order, and is skipped when the scan already returned that order
    if not raw_all["_file"].is_sorted():
        raw_all = raw_all.sort("_file", maintain_order=True)
    crossed: list[str] = []  # batches whose phases by tag crossing moved on in this group
    # files are in batch order, so each batch is a contiguous (zero-copy) slice
    counts = raw_all.select("_file").group_by("_file").len()
    file_rows = dict(zip(counts["_file"], counts["len"], strict=True))
    slices, offset = [], 0
    for bid in ids:
        n = sum(file_rows.get(order[f], 0) for f in per_batch[bid])
        slices.append(raw_all.slice(offset, n))
        offset += n
    # each batch's readings already in silver (one read each, before the threads start)
    work = []
    for raw in (r for r in slices if r.height):
        bid = raw["batch_id"][0]
        existing = lake.read(
            LAYER,
            "telemetry",
            ["unit_id", "tag", "ts"],
            filter_expr=(pl.col("batch_id") == bid)
            & pl.col("ts").is_between(raw["ts"].min(), raw["ts"].max())
            & ~pl.col("source_file").is_in(per_batch[bid]),
        )
        # (sequential: a batch's phases by tag crossing may move on with its readings)
        phases, moved = crossing_phases(raw, spec, batches, phases)
        if moved:
            crossed.append(bid)
        work.append((raw, existing))
    contract, accepted = telemetry_contract(spec), accepted_contract(spec)

    def validate_batch(item: tuple[pl.DataFrame, pl.DataFrame | None]) -> tuple[pl.DataFrame, ...]:
        """Prepare, route and check one batch's rows (polars releases the GIL: the batches
        of a group run on both cores)."""
        df = prepare_batch(item[0], spec, batches, phases, item[1], now)
        good, bad = route(df, contract, keep=VALID_COLUMNS)
        validate(good.select(ACCEPTED_COLUMNS), accepted)
        return good, bad

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="silver-validate") as pool:
        routed = list(pool.map(validate_batch, work))  # every batch checked before any write
    del work
    good = pl.concat([g for g, _ in routed], how="vertical_relaxed")
    bad = pl.concat([b for _, b in routed], how="vertical_relaxed")
    del routed
    processed_at = pl.lit(now, UTC_US)
    # the derived tables are each computed in their own thread (polars releases the GIL);
    # silver/telemetry (the big write) is the tail's first commit (below)
    derivations: dict[str, Callable[[pl.DataFrame], pl.DataFrame]] = {
        "excursion_segments": lambda v: excursion_segments_of(v, spec),
        "telemetry_stats": lambda v: file_stats(v, files, spec),
        "batch_timeline": lambda v: minute_timeline(v, files, spec),
    }
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="silver-derive") as pool:
        slim = derivation_columns(good)
        derived = {name: pool.submit(fn, slim) for name, fn in derivations.items()}
        del slim
        outputs = {"telemetry_quarantine": quarantine_frame(bad, spec, now)}
        outputs.update({name: d.result() for name, d in derived.items()})
    valid = good.with_columns(spec_version=pl.lit(spec.version), processed_at=processed_at)
    valid = valid.select(SILVER_TELEMETRY_COLUMNS)
    per_file = (
        pl.DataFrame({"_file": pl.Series(range(len(files)), dtype=pl.UInt32), "source_file": files})
        .join(pending.select("source_file", "batch_id"), on="source_file", how="left")
        # (select the key first: an eager group_by of the wide frames costs 50x more)
        .join(raw_all.select("_file").group_by("_file").len("rows_in"), on="_file", how="left")
        .join(good.select("_file").group_by("_file").len("rows_valid"), on="_file", how="left")
        .join(bad.select("_file").group_by("_file").len("rows_quarantined"), on="_file", how="left")
        .fill_null(0)
        .drop("_file")
        .with_columns(
            processed_at=processed_at,
            spec_version=pl.lit(spec.version),
            run_id=pl.lit(run_id),
        )
    )
    # what each table already holds of these files (after a crash): the segments, stats and
    # timeline are of valid readings, committed only after silver/telemetry's, so a file
    # not in silver/telemetry before this group is in none of them (no read needed); the
    # quarantine is looked up (a file may have no valid reading)
    held: dict[str, set[str] | None] = {
        name: None if written or name == "telemetry_quarantine" else set() for name in outputs
    }
    rows_in, rows_valid, rows_quarantined = raw_all.height, good.height, bad.height
    failed_checks = bad["failed_check"].to_list()
    del raw_all, good, bad  # the tail keeps the rows it writes, not the group's other frames

    def finish(dest: Lake) -> None:  # (in the background, the tail's own Lake: GroupTails)
        # silver/telemetry first; the quarantine and the derived tables are committed only
        # once it is: after a crash in between, the rerun finds the group's files in
        # silver/telemetry, takes them first and routes them as before, so the tables it
        # completes agree with the rows already there
        _append_new(dest, "telemetry", valid, files, ids, run_id, written)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="silver-write") as pool:
            writes = [
                pool.submit(_append_new, dest, name, out, files, ids, run_id, held[name])
                for name, out in outputs.items()
            ]
            for w in writes:
                w.result()  # (re-raises a failed write: the files are then not logged)
        write_crossings(dest, phases, crossed)  # before the log: a rerun finds them again
        # the log's rows are the record (pending_telemetry_files reads them, under the
        # batches' locks); it is written last, so a file is logged only once every table
        # holds its rows
        dest.append(LAYER, "telemetry_log", per_file)
        rep.files_processed += len(files)
        rep.files += files
        rep.rows_in += rows_in
        rep.rows_valid += rows_valid
        rep.rows_quarantined += rows_quarantined
        rep.segments += outputs["excursion_segments"].height
        rep.failed_checks.update(failed_checks)
        rep.batches.update(ids)

    return finish


def _append_new(
    lake: Lake,
    name: str,
    out: pl.DataFrame,
    files: Sequence[str],
    ids: Sequence[str],
    run_id: str,
    already: set[str] | None = None,
) -> None:
    """Append one group's rows to a silver table, less the files it already holds."""
    if out.height == 0 and lake.exists(LAYER, name):
        # nothing to add (no quarantined row, no excursion): no commit, and no snapshot
        # load of a table that grows with the lake. A rerun derives the same empty output
        # again; the table is created (empty) the first time.
        return
    # after a crash, the files whose rows this table already holds (one commit per
    # table and group: a file's rows are all there or none is)
    if already is None:
        already = lake.sources_in(LAYER, name, files, ids)
    part = out.filter(~pl.col("source_file").is_in(list(already))) if already else out
    if part.height == 0 and lake.exists(LAYER, name):
        return
    lake.append(LAYER, name, part, metadata={"run_id": run_id})
