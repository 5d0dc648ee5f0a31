"""Exactly-once under failure: a SIGKILLed ingestion, concurrent ingestions, concurrent appends.

Every test runs real processes against real Delta tables in the test's temporary folder and
then checks the lake against the landing zone itself: each landed file is in the bronze
ledger once, bronze holds each landed row once, silver holds each bronze row once (valid or
quarantined), no reading is in silver twice, and the reconciliation check passes.

The ingestion mirrors the Dagster assets (per batch partition): bronze MES, LIMS and
telemetry via ``files_for_batch``, then ``build_batches`` and ``process_telemetry`` for the
batches. Small commit sizes give many commits, so a crash or a competing writer can land
between any two of them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import BATCH_SOURCES, LandedFile, files_for_batch
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake
from pharma_assets_tests.spawn import sigkill_when, start_all

REPO = Path(__file__).resolve().parents[2]
KILL_BATCH = "BR01-B0002"
TWO_BATCHES = ("BR01-B0002", "BR02-B0001")
REDELIVERY = "20991231T000000Z_99999.parquet"  # sorts (and so is ingested) last
LATE = "20991231T000000Z_99998.parquet"  # lands while the crashed pipeline is down
HANG_GUARD_S = 180.0  # only there to turn a hang into a failure; never an assertion on speed


# ------------------------------------------------------------------------------ helpers
def run_ingestion(
    lake_root: str, landing: str, batch_ids: Sequence[str], run_id: str, max_rows: int
) -> None:
    """Bronze (per batch partition, every batch source) then silver telemetry of the batches."""
    lake = Lake.at(lake_root)
    for source in ("mes", "lims", "telemetry"):
        for bid in batch_ids:
            files = files_for_batch(landing, source, bid)
            bronze.ingest_files(lake, landing, source, files, run_id, max_rows_per_commit=max_rows)
    silver.build_batches(lake, list(batch_ids))
    silver.process_telemetry(lake, list(batch_ids), load_spec(), run_id, max_rows=max_rows)


def _ingest_after_barrier(
    lake_root: str, landing: str, batch_ids: Sequence[str], run_id: str, max_rows: int, barrier
) -> None:
    barrier.wait(HANG_GUARD_S)  # start together, after the (slow) imports
    run_ingestion(lake_root, landing, batch_ids, run_id, max_rows)


def _append_after_barrier(lake_root: str, writer: int, n_appends: int, rows: int, barrier) -> None:
    lake = Lake.at(lake_root)
    barrier.wait(HANG_GUARD_S)
    for j in range(n_appends):
        src = f"writer{writer}/file{j}.parquet"
        df = pl.DataFrame(
            {
                "source_file": [src] * rows,
                "i": list(range(rows)),
                "part": [f"p{(writer + j) % 2}"] * rows,
            }
        )
        lake.append("bronze", "concurrent", df, [src], partition_by=["part"])


def _make_landing(
    template: Path, dst: Path, batch_ids: Sequence[str], telemetry_files: int = 9
) -> Path:
    """Some batches' landed files (the first days of telemetry), plus a late re-delivery.

    The re-delivery holds the first rows of every telemetry file of the batch, so whatever
    file a crash interrupts, some of its readings arrive twice and silver must keep one.
    """
    for source in BATCH_SOURCES:
        for bid in batch_ids:
            files = files_for_batch(template, source, bid)
            for f in files[:telemetry_files] if source == "telemetry" else files:
                target = f.path(dst)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.path(template), target)
    for bid in batch_ids:
        files = files_for_batch(dst, "telemetry", bid)
        assert len(files) == telemetry_files, "the simulated batch is shorter than assumed"
        _redeliver(dst, files, REDELIVERY, first_row=0)
    return dst


def _redeliver(landing: Path, files: Sequence[LandedFile], name: str, first_row: int) -> None:
    """Land a file repeating 40 readings (from ``first_row`` on) of each of ``files``."""
    again = pa.concat_tables(pq.read_table(f.path(landing)).slice(first_row, 40) for f in files)
    tmp = files[0].path(landing).parent / f".{name}.tmp"
    pq.write_table(again, tmp)
    tmp.rename(tmp.parent / name)


def _commits(lake_root: Path, table: str) -> int:
    try:
        names = os.listdir(lake_root / table / "_delta_log")
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if n.endswith(".json") and n[:-5].isdigit())


def _landed(landing: Path, batch_ids: Sequence[str]) -> dict[str, list[LandedFile]]:
    return {
        s: [f for b in batch_ids for f in files_for_batch(landing, s, b)] for s in BATCH_SOURCES
    }


def _expected_bronze_keys(landing: Path, files: Sequence[LandedFile], source: str) -> pl.DataFrame:
    """(source_file, row_hash) -> count, straight from the landed bytes."""
    now = datetime.now(UTC)
    frames = []
    for f in files:
        parsed = bronze.read_source_file(source, f.path(landing).read_bytes())
        # the same row hash bronze computes (bronze._finish is what ingest_files applies)
        frames.append(bronze._finish(parsed, f, now, "x", source).select("source_file", "row_hash"))
    return pl.concat(frames).group_by("source_file", "row_hash").len().sort(pl.all())


def _per_file(df: pl.DataFrame | None, name: str) -> pl.DataFrame:
    if df is None:
        return pl.DataFrame(schema={"source_file": pl.String, name: pl.UInt32})
    return df.group_by("source_file").len(name)


def assert_exactly_once(
    lake: Lake, landing: Path, batch_ids: Sequence[str], redelivered: bool = True
) -> dict:
    """Lake == landing: every file once in the ledger, every row once in bronze and silver
    (``redelivered``: the landing holds re-delivered copies, which silver quarantines)."""
    landed = _landed(landing, batch_ids)
    all_rels = sorted(f.rel for fs in landed.values() for f in fs)

    # bronze ledger: each landed file exactly once, all accepted
    log = bronze.read_log(lake, batch_ids)
    assert sorted(log["source_file"].to_list()) == all_rels
    assert log["status"].unique().to_list() == ["accepted"], log.filter(
        pl.col("status") != "accepted"
    )
    q = lake.read("bronze", "quarantine")
    assert q is None or q.filter(pl.col("source_file").is_in(all_rels)).height == 0

    # bronze data: the multiset of (source_file, row_hash) is exactly the landed one
    for source, files in landed.items():
        expected = _expected_bronze_keys(landing, files, source)
        got = lake.read("bronze", source, ["source_file", "row_hash", "batch_id"])
        assert got is not None
        got = got.filter(pl.col("batch_id").is_in(list(batch_ids)))
        got = got.group_by("source_file", "row_hash").len().sort(pl.all())
        assert got.height == expected.height and got["len"].sum() == expected["len"].sum(), source
        assert got.equals(expected), f"bronze/{source} rows differ from the landed files"
        n_log = log.filter(pl.col("source") == source).select("source_file", "rows")
        n_got = got.group_by("source_file").agg(pl.col("len").sum().cast(pl.Int64).alias("rows"))
        assert n_log.sort("source_file").equals(n_got.sort("source_file")), source

    # silver: bronze rows = valid + quarantined, per file; no reading twice
    tel_files = sorted(f.rel for f in landed["telemetry"])
    part = ("batch_id", list(batch_ids))
    b_rows = lake.read("bronze", "telemetry", ["source_file"], partition=part)
    s_rows = lake.read(
        "silver", "telemetry", ["source_file", "unit_id", "tag", "ts"], partition=part
    )
    sq_rows = lake.read("silver", "telemetry_quarantine", ["source_file"], partition=part)
    assert s_rows is not None
    dups = s_rows.group_by("unit_id", "tag", "ts").len().filter(pl.col("len") > 1)
    assert dups.height == 0, f"{dups.height} readings twice in silver/telemetry: {dups.head()}"
    assert silver.duplicate_readings(lake, batch_ids) == 0
    counts = (
        _per_file(b_rows, "bronze")
        .join(_per_file(s_rows, "valid"), on="source_file", how="full", coalesce=True)
        .join(_per_file(sq_rows, "quarantined"), on="source_file", how="full", coalesce=True)
        .fill_null(0)
        .sort("source_file")
    )
    assert counts["source_file"].to_list() == tel_files
    off = counts.filter(pl.col("bronze") != pl.col("valid") + pl.col("quarantined"))
    assert off.height == 0, f"silver rows != bronze rows for some files:\n{off}"

    # silver side tables: each file's output once
    tlog = lake.read("silver", "telemetry_log", partition=part)
    assert tlog is not None
    assert sorted(tlog["source_file"].to_list()) == tel_files, "telemetry_log: a file not once"
    chk = tlog.select("source_file", "rows_in", "rows_valid").join(counts, on="source_file")
    assert (chk["rows_in"] == chk["bronze"]).all() and (chk["rows_valid"] == chk["valid"]).all()
    stats = lake.read("silver", "telemetry_stats", ["source_file", "n"], partition=part)
    assert stats is not None
    n_stats = stats.group_by("source_file").agg(pl.col("n").sum()).join(counts, on="source_file")
    assert (n_stats["n"] == n_stats["valid"]).all(), "telemetry_stats counts a file twice"
    tl = lake.read("silver", "batch_timeline", partition=part)
    assert tl is not None and tl.height > 0
    assert tl.select("source_file", "unit_id", "elapsed_min").is_duplicated().sum() == 0
    seg = lake.read("silver", "excursion_segments", partition=part)
    if seg is not None:
        assert seg.select("source_file", "tag", "start_ts").is_duplicated().sum() == 0

    rec = silver.reconcile_telemetry(lake, str(landing), list(batch_ids))
    assert rec["reconciled"] and rec["pending_rows"] == 0, rec
    assert rec["rows_landed"] == rec["bronze_rows"] == rec["silver_rows"] + rec["quarantined_rows"]
    if not redelivered:
        return rec
    # the re-delivered readings are in silver once: the second copies are quarantined
    n_again = sum(
        pq.ParquetFile(f.path(landing)).metadata.num_rows
        for f in landed["telemetry"]
        if f.rel.endswith((REDELIVERY, LATE))
    )
    assert n_again > 0 and sq_rows is not None and sq_rows.height >= n_again
    return rec


def _lake_state(root: Path) -> dict[str, int]:
    silver_tables = (*silver.TELEMETRY_TABLES, "telemetry_log")
    tables = ["bronze/telemetry", "bronze/ingest_log", *(f"silver/{t}" for t in silver_tables)]
    return {t: _commits(root, t) for t in tables}


# ------------------------------------------------------------------------------ 1. SIGKILL
CHILD = """
import sys
from pharma_assets_tests.lake.test_reliability import run_ingestion
run_ingestion(sys.argv[1], sys.argv[2], sys.argv[3].split(","), "crashed-run", max_rows=1)
"""


@pytest.mark.parametrize(
    ("table", "commits"),
    [
        # bronze: right after the 4th data commit, usually before that group's ledger row
        ("bronze/telemetry", 4),
        # silver: inside a file group, after telemetry/quarantine/segments/stats committed
        # and before batch_timeline and telemetry_log did
        ("silver/telemetry_stats", 3),
        # silver: after several complete file groups
        ("silver/telemetry_log", 6),
    ],
    ids=["bronze-data-commit-4", "silver-inside-group-3", "silver-after-group-6"],
)
def test_sigkill_mid_ingestion_then_rerun_is_exactly_once(
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
    at_kill = _lake_state(root)
    n_tel = len(files_for_batch(landing, "telemetry", KILL_BATCH))
    tlog = lake.read("silver", "telemetry_log")
    processed = 0 if tlog is None else tlog.height
    assert processed < n_tel, "the child finished before it was killed; nothing was tested"
    print(f"\n[{table}>={commits}] commits at kill: {at_kill}; silver done {processed}/{n_tel}")

    # while the pipeline is down, a late delivery repeats readings of every earlier file,
    # including the ones the crash interrupted
    originals = [
        f for f in files_for_batch(landing, "telemetry", KILL_BATCH) if REDELIVERY not in f.rel
    ]
    _redeliver(landing, originals, LATE, first_row=40)
    run_ingestion(str(root), str(landing), [KILL_BATCH], "rerun", max_rows=200_000)
    rec = assert_exactly_once(lake, landing, [KILL_BATCH])
    print(f"[{table}>={commits}] after rerun: {rec}")


# ------------------------------------------------------------------------------ 2. concurrent runs
def _run_concurrently(jobs: list[tuple]) -> None:
    ctx = mp.get_context("spawn")  # forking after deltalake/polars started threads can hang
    barrier = ctx.Barrier(len(jobs))
    procs = [ctx.Process(target=target, args=(*args, barrier)) for target, args in jobs]
    start_all(procs)
    try:
        for p in procs:
            p.join(HANG_GUARD_S)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs), "a concurrent writer failed"


def test_two_processes_ingesting_the_same_batch(landing_template: Path, tmp_path: Path) -> None:
    landing = _make_landing(landing_template, tmp_path / "landing", [KILL_BATCH])
    root = tmp_path / "lake"
    args = (str(root), str(landing), [KILL_BATCH])
    _run_concurrently(
        [(_ingest_after_barrier, (*args, "run-a", 1)), (_ingest_after_barrier, (*args, "run-b", 1))]
    )
    assert_exactly_once(Lake.at(root), landing, [KILL_BATCH])
    runs = Lake.at(root).read("bronze", "ingest_log")["ingest_run_id"].unique().sort().to_list()
    assert set(runs) <= {"run-a", "run-b"}


def test_two_processes_ingesting_different_batches(landing_template: Path, tmp_path: Path) -> None:
    landing = _make_landing(landing_template, tmp_path / "landing", TWO_BATCHES, 7)
    root = tmp_path / "lake"
    # ~2 files per commit: both processes append to (and first create) the same tables
    _run_concurrently(
        [
            (_ingest_after_barrier, (str(root), str(landing), [bid], f"run-{bid}", 50_000))
            for bid in TWO_BATCHES
        ]
    )
    lake = Lake.at(root)
    assert_exactly_once(lake, landing, TWO_BATCHES)
    assert sorted(lake.read("silver", "batches")["batch_id"].to_list()) == sorted(TWO_BATCHES)


# ------------------------------------------------------------------------------ 3. appends
def test_concurrent_appends_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """Four processes create and append to one table at once; commit conflicts are retried."""
    root = tmp_path / "lake"
    writers, appends, rows = 4, 6, 250
    _run_concurrently(
        [(_append_after_barrier, (str(root), w, appends, rows)) for w in range(writers)]
    )
    lake = Lake.at(root)
    df = lake.read("bronze", "concurrent")
    assert df is not None
    assert df.height == writers * appends * rows
    assert df.select("source_file", "i").is_duplicated().sum() == 0
    per_file = df.group_by("source_file").len()
    assert per_file.height == writers * appends and (per_file["len"] == rows).all()
    expected = [f"writer{w}/file{j}.parquet" for w in range(writers) for j in range(appends)]
    assert lake.written_sources("bronze", "concurrent", expected) == set(expected)
    # one commit per append: a retried commit never landed twice
    assert lake.version("bronze", "concurrent") == writers * appends - 1
