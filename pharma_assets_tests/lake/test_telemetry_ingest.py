"""The one-pass telemetry ingestion (landing -> bronze -> silver, each file read once).

Same lake as bronze then silver run one after the other; exactly once under SIGKILL and
with a competing process (the checks of test_reliability, on real processes and Delta
tables); files of a batch whose batch_start has not landed wait in bronze and are taken
by a later run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import files_for_batch, scan_landing
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake
from pharma_assets.lake.telemetry_ingest import ingest_telemetry
from pharma_assets_tests.lake.test_reliability import (
    HANG_GUARD_S,
    KILL_BATCH,
    LATE,
    REDELIVERY,
    _commits,
    _make_landing,
    _redeliver,
    _run_concurrently,
    assert_exactly_once,
)
from pharma_assets_tests.spawn import sigkill_when

REPO = Path(__file__).resolve().parents[2]
VOLATILE = {"processed_at", "ingested_at", "ingest_run_id", "run_id"}
TABLES = [
    ("bronze", "telemetry"),
    ("bronze", "ingest_log"),
    *(("silver", t) for t in (*silver.TELEMETRY_TABLES, "telemetry_log")),
]


def one_pass(
    lake_root: str, landing: str, batch_ids: Sequence[str], run_id: str, max_rows: int
) -> None:
    """A batch partition's run as the Dagster step does it: MES, batches, then one pass."""
    lake = Lake.at(lake_root)
    for bid in batch_ids:
        bronze.ingest_files(lake, landing, "mes", files_for_batch(landing, "mes", bid), run_id)
    silver.build_batches(lake, list(batch_ids))
    files = [f for bid in batch_ids for f in files_for_batch(landing, "telemetry", bid)]
    ingest_telemetry(lake, landing, files, load_spec(), run_id, max_rows=max_rows)


def _one_pass_after_barrier(
    lake_root: str, landing: str, batch_ids: Sequence[str], run_id: str, max_rows: int, barrier
) -> None:
    barrier.wait(HANG_GUARD_S)
    one_pass(lake_root, landing, batch_ids, run_id, max_rows)
    # (the reliability checks also look at LIMS: ingest it like the partition's run does)
    lake = Lake.at(lake_root)
    for bid in batch_ids:
        bronze.ingest_files(lake, landing, "lims", files_for_batch(landing, "lims", bid), run_id)


def _table(lake: Lake, layer: str, name: str) -> pl.DataFrame:
    df = lake.read(layer, name)
    assert df is not None, f"{layer}/{name} missing"
    cols = sorted(c for c in df.columns if c not in VOLATILE)
    key = [c for c in ("source_file", "ts", "tag", "elapsed_min", "start_ts", "phase") if c in cols]
    return df.select(cols).sort(key, nulls_last=True)


def test_one_pass_gives_the_lake_of_bronze_then_silver(landing: Path, tmp_path: Path) -> None:
    spec = load_spec()
    files = scan_landing(landing)
    mes = [f for f in files if f.source == "mes"]
    tel = [f for f in files if f.source == "telemetry"]
    ids = sorted({f.batch_id for f in tel if f.batch_id})
    two, one = Lake.at(tmp_path / "two"), Lake.at(tmp_path / "one")
    for lake in (two, one):
        bronze.ingest_files(lake, landing, "mes", mes, "r")
        silver.build_batches(lake)
    bronze.ingest_files(two, landing, "telemetry", tel, "r")
    srep = silver.process_telemetry(two, ids, spec, "r")
    # small groups: several hand-overs, bronze of one group beside silver of the one before
    rep = ingest_telemetry(one, landing, tel, spec, "r", max_rows=150_000)
    assert rep.handed_over_files == len(tel) > 0
    assert rep.bronze.files_accepted == len(tel)
    assert rep.silver.files_processed == srep.files_processed == len(tel)
    assert rep.silver.rows_valid == srep.rows_valid
    assert rep.silver.rows_quarantined == srep.rows_quarantined > 0
    for layer, name in TABLES:
        a, b = _table(two, layer, name), _table(one, layer, name)
        assert a.height > 0 or name in ("excursion_segments",), f"{layer}/{name} empty"
        assert a.equals(b), f"{layer}/{name} differs between one pass and two steps"
    rec = silver.reconcile_telemetry(one, str(landing), ids)
    assert rec["reconciled"] and rec["pending_rows"] == 0, rec
    # a second run finds nothing to do
    again = ingest_telemetry(one, landing, tel, spec, "r2")
    assert again.bronze.files_already_ingested == len(tel) and again.silver.files_processed == 0


def test_files_of_a_batch_not_started_wait_in_bronze(landing: Path, tmp_path: Path) -> None:
    spec = load_spec()
    lake = Lake.at(tmp_path / "lake")
    tel = files_for_batch(landing, "telemetry", KILL_BATCH)
    # no MES yet: the batch is unknown to silver
    first = ingest_telemetry(lake, landing, tel, spec, "early")
    assert first.bronze.files_accepted == len(tel) and first.handed_over_files == 0
    assert first.silver.files_processed == 0 and first.silver.files_deferred == len(tel)
    rec = silver.reconcile_telemetry(lake, str(landing), [KILL_BATCH])
    assert rec["reconciled"] and rec["pending_rows"] == rec["bronze_rows"] > 0, rec
    bronze.ingest_files(lake, landing, "mes", files_for_batch(landing, "mes", KILL_BATCH), "mes")
    silver.build_batches(lake, [KILL_BATCH])
    later = ingest_telemetry(lake, landing, tel, spec, "later")
    assert later.bronze.files_already_ingested == len(tel)
    assert later.silver.files_processed == len(tel) and later.handed_over_files == 0
    rec = silver.reconcile_telemetry(lake, str(landing), [KILL_BATCH])
    assert rec["reconciled"] and rec["pending_rows"] == 0, rec


CHILD = """
import sys
from pharma_assets_tests.lake.test_telemetry_ingest import one_pass
one_pass(sys.argv[1], sys.argv[2], sys.argv[3].split(","), "crashed-run", max_rows=1)
"""


@pytest.mark.parametrize(
    ("table", "commits"),
    [
        ("bronze/telemetry", 3),  # bronze ahead of silver
        ("silver/telemetry_stats", 2),  # inside silver's group: some tables written
        ("silver/telemetry_log", 4),  # after several complete groups
    ],
    ids=["bronze-commit-3", "silver-inside-group-2", "silver-after-group-4"],
)
def test_sigkill_mid_one_pass_then_rerun_is_exactly_once(
    landing_template: Path, tmp_path: Path, table: str, commits: int
) -> None:
    landing = _make_landing(landing_template, tmp_path / "landing", [KILL_BATCH])
    root = tmp_path / "lake"
    sigkill_when(
        CHILD,
        [str(root), str(landing), KILL_BATCH],
        cwd=REPO,
        stderr_path=tmp_path / "child.stderr",
        ready=lambda: _commits(root, table) >= commits,
        what=f"{table} has {commits} commits",
        hang_guard_s=HANG_GUARD_S,
    )
    lake = Lake.at(root)
    n_tel = len(files_for_batch(landing, "telemetry", KILL_BATCH))
    tlog = lake.read("silver", "telemetry_log")
    assert (0 if tlog is None else tlog.height) < n_tel, "the child finished before the kill"
    originals = [
        f for f in files_for_batch(landing, "telemetry", KILL_BATCH) if REDELIVERY not in f.rel
    ]
    _redeliver(landing, originals, LATE, first_row=40)
    one_pass(str(root), str(landing), [KILL_BATCH], "rerun", max_rows=200_000)
    bronze.ingest_files(lake, landing, "lims", files_for_batch(landing, "lims", KILL_BATCH), "l")
    assert_exactly_once(lake, landing, [KILL_BATCH])


def test_two_processes_one_pass_on_the_same_batch(landing_template: Path, tmp_path: Path) -> None:
    landing = _make_landing(landing_template, tmp_path / "landing", [KILL_BATCH])
    root = tmp_path / "lake"
    args = (str(root), str(landing), [KILL_BATCH])
    _run_concurrently(
        [
            (_one_pass_after_barrier, (*args, "run-a", 1)),
            (_one_pass_after_barrier, (*args, "run-b", 1)),
        ]
    )
    assert_exactly_once(Lake.at(root), landing, [KILL_BATCH])


def test_large_files_take_the_sliced_path(landing: Path, tmp_path: Path) -> None:
    """Files over the slice size are spooled by bronze and read back by silver slice by slice
    (bounded memory); the rest are handed over. Same lake as the two steps with those limits."""
    spec = load_spec()
    tel = files_for_batch(landing, "telemetry", KILL_BATCH)
    mes = files_for_batch(landing, "mes", KILL_BATCH)
    sizes = sorted(pq.ParquetFile(f.path(landing)).metadata.num_rows for f in tel)
    limits = bronze.IngestLimits(slice_rows=sizes[-1] - 1)  # the full days are "large"
    large = sum(n > limits.slice_rows for n in sizes)
    assert 0 < large < len(tel)
    two, one = Lake.at(tmp_path / "two"), Lake.at(tmp_path / "one")
    for lake in (two, one):
        bronze.ingest_files(lake, landing, "mes", mes, "r")
        silver.build_batches(lake)
    bronze.ingest_files(two, landing, "telemetry", tel, "r", limits=limits)
    silver.process_telemetry(two, [KILL_BATCH], spec, "r", limits=limits)
    rep = ingest_telemetry(one, landing, tel, spec, "r", limits=limits)
    assert rep.handed_over_files == len(tel) - large
    assert rep.silver.files_processed == len(tel)
    for layer, name in TABLES:
        assert _table(two, layer, name).equals(_table(one, layer, name)), f"{layer}/{name}"
    rec = silver.reconcile_telemetry(one, str(landing), [KILL_BATCH])
    assert rec["reconciled"] and rec["pending_rows"] == 0, rec


def _reference(landing: Path, root: Path) -> Lake:
    """The lake of bronze then silver, one step after the other (no background tails)."""
    spec, files = load_spec(), scan_landing(landing)
    tel = [f for f in files if f.source == "telemetry"]
    ref = Lake.at(root)
    bronze.ingest_files(ref, landing, "mes", [f for f in files if f.source == "mes"], "r")
    silver.build_batches(ref)
    bronze.ingest_files(ref, landing, "telemetry", tel, "r")
    silver.process_telemetry(ref, sorted({f.batch_id for f in tel if f.batch_id}), spec, "r")
    return ref


def _with_batches(landing: Path, root: Path) -> tuple[Lake, list, list[str]]:
    """A lake with the landing's MES events and silver batches; its telemetry files and ids."""
    files = scan_landing(landing)
    tel = [f for f in files if f.source == "telemetry"]
    lake = Lake.at(root)
    bronze.ingest_files(lake, landing, "mes", [f for f in files if f.source == "mes"], "r")
    silver.build_batches(lake)
    return lake, tel, sorted({f.batch_id for f in tel if f.batch_id})


def test_a_failed_tail_stops_the_run_and_the_rerun_completes(
    landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's background tail (GroupTails) fails on its second group: the run raises, the
    failed group's files are not logged, no batch lock stays held, and a rerun gives the lake
    of the synchronous path."""
    from pharma_assets.lake.silver import telemetry as silver_telemetry

    lake, tel, ids = _with_batches(landing, tmp_path / "one")
    spec = load_spec()
    real, calls = silver_telemetry._append_new, []

    def failing(lake_: Lake, name: str, *a: object, **k: object) -> None:
        if name == "batch_timeline":
            calls.append(name)
            if len(calls) == 2:
                raise RuntimeError("disk full (injected)")
        real(lake_, name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(silver_telemetry, "_append_new", failing)
    with pytest.raises(RuntimeError, match="injected"):
        ingest_telemetry(lake, landing, tel, spec, "r", max_rows=150_000)
    monkeypatch.setattr(silver_telemetry, "_append_new", real)
    logged = lake.read("silver", "telemetry_log")
    assert logged is not None and 0 < logged.height < len(tel)  # group 1 logged, not all
    for bid in ids:  # every lock released (another run could take it at once)
        with lake.lock(f"silver-telemetry-{bid}", timeout_s=0):
            pass
    rep = ingest_telemetry(lake, landing, tel, spec, "rerun")
    assert rep.silver.files_processed == len(tel) - logged.height
    ref = _reference(landing, tmp_path / "ref")
    for layer, name in TABLES:
        a, b = _table(ref, layer, name), _table(lake, layer, name)
        assert a.equals(b), f"{layer}/{name} differs from the synchronous path after the rerun"


def test_a_batch_locked_by_another_run_waits_without_deadlock(
    landing: Path, tmp_path: Path
) -> None:
    """Another run holds one batch's lock for a while: the one pass (whose groups take over
    the locks of the tail in flight) waits for it the synchronous way and ends with the lake
    of the synchronous path."""
    import threading
    import time

    lake, tel, ids = _with_batches(landing, tmp_path / "one")
    spec = load_spec()
    taken, released = threading.Event(), []

    def other_run() -> None:
        with Lake.at(tmp_path / "one").lock(f"silver-telemetry-{ids[-1]}"):
            taken.set()
            time.sleep(3)
            released.append(time.monotonic())

    t = threading.Thread(target=other_run)
    t.start()
    assert taken.wait(60)
    ingest_telemetry(lake, landing, tel, spec, "r", max_rows=150_000)
    t.join()
    assert released  # the other run finished its hold before ours could write that batch
    ref = _reference(landing, tmp_path / "ref")
    for layer, name in TABLES:
        a, b = _table(ref, layer, name), _table(lake, layer, name)
        assert a.equals(b), f"{layer}/{name} differs from the synchronous path"


def test_bronze_groups_end_with_their_batch_once_half_full(landing: Path, tmp_path: Path) -> None:
    """A group past half its rows ends where its batch ends (silver then prepares and checks
    whole batches, and the next group's batch differs from the tail in flight); a batch is
    split only when the group reaches its full size."""
    tel = [f for f in scan_landing(landing) if f.source == "telemetry"]
    per_batch: dict[str, int] = {}
    for f in tel:
        assert f.batch_id is not None
        rows = pq.ParquetFile(f.path(landing)).metadata.num_rows
        per_batch[f.batch_id] = per_batch.get(f.batch_id, 0) + rows
    assert len(per_batch) >= 3
    # at twice the largest batch, a group reaches half full only with whole batches in it
    max_rows = 2 * max(per_batch.values())
    groups: list[list[str]] = []

    def seen(files: list, rows: pl.DataFrame) -> None:
        groups.append([f.batch_id for f in files])
        assert rows.height <= max_rows + max(per_batch.values())

    lake = Lake.at(tmp_path / "lake")
    rep = bronze.ingest_files(
        lake, landing, "telemetry", tel, "r", max_rows_per_commit=max_rows, on_commit=seen
    )
    assert rep.files_accepted == len(tel) and len(groups) >= 2, groups
    where = [{bid for bid in g} for g in groups]
    for bid in per_batch:  # every batch in exactly one group: none split across two
        assert sum(bid in w for w in where) == 1, (bid, groups)
    # and the lake holds every landed row once
    got = lake.read("bronze", "telemetry", ["batch_id"])
    assert got is not None and got.height == sum(per_batch.values())


def test_a_group_waits_for_the_tail_only_when_it_shares_a_batch(tmp_path: Path) -> None:
    """GroupTails.wait_for: a group of other batches goes on while the tail in flight is still
    writing (its duplicate check reads only its own batches); a group sharing a batch waits
    until the tail has written that batch's readings."""
    import contextlib
    import threading
    import time

    from pharma_assets.lake.silver.telemetry import GroupTails

    tails, go, done = GroupTails(), threading.Event(), threading.Event()

    def finish(_: Lake) -> None:
        assert go.wait(60)
        done.set()

    try:
        tails.submit(finish, contextlib.ExitStack(), ["B1"], Lake.at(tmp_path / "lake"))
        t0 = time.monotonic()
        tails.wait_for(["B2", "B3"])  # other batches: no waiting
        assert not done.is_set() and time.monotonic() - t0 < 30
        waited: list[bool] = []
        waiter = threading.Thread(
            target=lambda: (tails.wait_for(["B2", "B1"]), waited.append(done.is_set()))
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not waited  # shares B1: still waiting for the tail
        go.set()
        waiter.join(60)
        assert waited == [True]  # returned only once the tail had finished
    finally:
        go.set()
        tails.close()


def test_the_tail_commits_through_snapshots_of_its_own(
    landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next group reads silver/telemetry and its log while the tail commits to them: the
    tail goes through a Lake of its own (a shared DeltaTable is updated in place by a commit,
    and a scan of it from another thread then failed in a 1,000-batch build: a polars panic
    on a file count one off)."""
    from pharma_assets.lake.silver import telemetry as silver_telemetry

    lake, tel, _ = _with_batches(landing, tmp_path / "one")
    real, used = silver_telemetry._append_new, []

    def recording(lake_: Lake, name: str, *a: object, **k: object) -> None:
        used.append((name, lake_))
        real(lake_, name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(silver_telemetry, "_append_new", recording)
    ingest_telemetry(lake, landing, tel, load_spec(), "r", max_rows=150_000)
    tails = [lk for name, lk in used if name == "telemetry"]
    assert len(tails) >= 2
    for lk in tails:
        assert lk.root == lake.root and lk._snapshots is not lake._snapshots
    # the caller's snapshots see the tail's commits
    assert lake.read("silver", "telemetry_log") is not None
    ref = _reference(landing, tmp_path / "ref")
    for layer, name in TABLES:
        assert _table(ref, layer, name).equals(_table(lake, layer, name)), f"{layer}/{name}"


def test_a_lake_with_its_own_snapshots_sees_the_others_commits(tmp_path: Path) -> None:
    lake = Lake.at(tmp_path / "lake")
    df = pl.DataFrame({"batch_id": ["B"], "source_file": ["f1"], "v": [1]})
    lake.append("silver", "t", df)
    other = lake.with_own_snapshots()
    assert other.root == lake.root and other._snapshots is not lake._snapshots
    assert lake.table("silver", "t") is not other.table("silver", "t")  # two objects
    other.append("silver", "t", df.with_columns(source_file=pl.lit("f2")))
    assert lake.sources_in("silver", "t", ["f1", "f2"], ["B"]) == {"f1", "f2"}
    assert lake.version("silver", "t") == other.version("silver", "t") == 1
