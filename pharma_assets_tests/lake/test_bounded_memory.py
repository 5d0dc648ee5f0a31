"""One landed file is ingested in bounded slices (issue 18): same rows, whole files only.

A batch's first four daily telemetry files are merged into ONE file (four days of every
tag, about 150,000 readings with today's tag list, with a temperature excursion and 100
readings repeated at its end, so duplicates span slices). With ``slice_rows=40_000`` that
file is read, checked and written in slices; every other file (one day, about 37,000
readings) stays on the whole-file path, which ``make_big_file`` checks. Everything is real: Delta tables in a
temporary folder, and crashes are real SIGKILLs of a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import files_for_batch, scan_landing
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SLICE = 40_000  # above one daily file (26 tags x 1,440 min), below a third of the big one
SLICED = bronze.IngestLimits(slice_rows=SLICE)
WHOLE = bronze.IngestLimits(slice_rows=10**9)
REPO = Path(__file__).resolve().parents[2]
SORT = {
    ("bronze", "telemetry"): ["source_file", "ts", "tag", "row_hash"],
    ("bronze", "ingest_log"): ["source_file"],
    ("silver", "telemetry"): ["source_file", "ts", "tag"],
    ("silver", "telemetry_quarantine"): ["source_file", "ts", "tag", "row_hash", "failed_check"],
    ("silver", "excursion_segments"): ["source_file", "tag", "start_ts"],
    ("silver", "telemetry_stats"): ["source_file", "tag", "phase"],
    ("silver", "batch_timeline"): ["source_file", "elapsed_min"],
    ("silver", "telemetry_log"): ["source_file"],
}


def make_big_file(landing: Path) -> tuple[str, Path, int]:
    """(batch id, path, rows) of one file merged from the first batch's first 4 files."""
    d = sorted((landing / "telemetry").glob("*/*"))[0]
    parts = sorted(d.glob("*.parquet"))[:4]
    df = pl.concat([pl.read_parquet(p) for p in parts])
    t0 = df["ts"].min()
    assert isinstance(t0, datetime)
    hot = (pl.col("tag") == "temperature_c") & pl.col("ts").is_between(
        t0 + timedelta(hours=30), t0 + timedelta(hours=33)
    )
    df = df.with_columns(value=pl.when(hot).then(37.2).otherwise(pl.col("value")))
    df = pl.concat([df, df.head(100)])  # readings repeated two slices later
    others = [
        pl.scan_parquet(p).select(pl.len()).collect().item()
        for p in sorted(d.glob("*.parquet"))[4:]
    ]
    assert max(others) < SLICE < df.height / 3, (max(others), SLICE, df.height)  # the premise
    for p in parts:
        p.unlink()
    df.write_parquet(parts[0])
    return d.name, parts[0], df.height


def ingest(lake: Lake, landing: Path, bid: str, limits: bronze.IngestLimits) -> None:
    spec = load_spec()
    mes = [f for f in scan_landing(landing) if f.source == "mes"]
    bronze.ingest_files(lake, landing, "mes", mes, "t", now=NOW, limits=limits)
    silver.build_batches(lake)
    tel = files_for_batch(landing, "telemetry", bid)
    bronze.ingest_files(lake, landing, "telemetry", tel, "t", now=NOW, limits=limits)
    silver.process_telemetry(lake, [bid], spec, "t", now=NOW, limits=limits)


def snapshot(lake: Lake) -> dict[tuple[str, str], pl.DataFrame]:
    out = {}
    for (layer, name), keys in SORT.items():
        df = lake.read(layer, name)
        assert df is not None, (layer, name)
        out[(layer, name)] = df.select(sorted(df.columns)).sort(keys, nulls_last=True)
    return out


def assert_same(
    a: dict[tuple[str, str], pl.DataFrame], b: dict[tuple[str, str], pl.DataFrame]
) -> None:
    for key in SORT:
        # sums of slices' partial sums may differ from one sum in the last bits
        try:
            assert_frame_equal(
                a[key], b[key], check_exact=False, rel_tol=1e-12, abs_tol=1e-9, check_dtypes=False
            )
        except AssertionError as e:
            raise AssertionError(f"{key}: {e}") from None


@pytest.fixture
def big(landing: Path) -> tuple[str, Path, int]:
    return make_big_file(landing)


@pytest.fixture
def whole(
    big: tuple[str, Path, int], landing: Path, tmp_path: Path
) -> dict[tuple[str, str], pl.DataFrame]:
    lake = Lake.at(tmp_path / "whole")
    ingest(lake, landing, big[0], WHOLE)
    return snapshot(lake)


def test_a_file_read_in_slices_gives_the_same_rows_as_read_whole(
    big: tuple[str, Path, int],
    landing: Path,
    tmp_path: Path,
    whole: dict[tuple[str, str], pl.DataFrame],
) -> None:
    bid, path, rows = big
    lake = Lake.at(tmp_path / "sliced")
    ingest(lake, landing, bid, SLICED)
    sliced = snapshot(lake)
    assert_same(whole, sliced)
    rel = path.relative_to(landing).as_posix()
    # the big file really took the sliced path (an attempt recorded per layer), in one commit
    assert lake.read("bronze", "ingest_attempts")["source_file"].to_list() == [rel]
    assert lake.read("silver", "telemetry_attempts")["source_file"].to_list() == [rel]
    assert lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel).height == rows
    # what makes the comparison meaningful: cross-slice duplicates and an excursion
    q = sliced[("silver", "telemetry_quarantine")].filter(pl.col("source_file") == rel)
    assert q.filter(pl.col("failed_checks").str.contains("duplicate_reading")).height == 100
    seg = sliced[("silver", "excursion_segments")].filter(pl.col("source_file") == rel)
    assert seg.filter(pl.col("tag") == "temperature_c").height >= 1
    assert not any((Path(lake.root) / "_spool").iterdir())  # scratch removed


def _run_and_kill(
    lake_dir: Path,
    landing: Path,
    bid: str,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
) -> None:
    """Run ``ingest`` (sliced) in a subprocess and SIGKILL it once ``ready()`` holds."""
    code = (
        "import sys; from pathlib import Path\n"
        "from pharma_assets.lake.storage import Lake\n"
        "from pharma_assets_tests.lake.test_bounded_memory import ingest\n"
        "from pharma_assets.lake.bronze import IngestLimits\n"
        "ingest(Lake.at(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], IngestLimits.from_env())\n"
    )
    e = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PHARMA_INGEST_SLICE_ROWS": str(SLICE),
        **(env or {}),
    }
    proc = subprocess.Popen([sys.executable, "-c", code, str(lake_dir), str(landing), bid], env=e)
    deadline = time.monotonic() + 240
    try:
        while not ready():
            assert proc.poll() is None, (
                f"the ingestion finished (exit {proc.returncode}) before the kill"
            )
            assert time.monotonic() < deadline, "timed out waiting for the kill point"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def _spooled(lake_dir: Path, name: str) -> Callable[[], bool]:
    """True once a slice of the file has reached the spool ``name`` (mid-file)."""
    return lambda: any(p.stat().st_size > 8 for p in (lake_dir / "_spool").glob(f"*/{name}"))


def _silver_committed(lake_dir: Path) -> Callable[[], bool]:
    """True once the sliced file's valid readings are committed (the other tables follow)."""
    log = lake_dir / "silver" / "telemetry" / "_delta_log"
    return lambda: len(list(log.glob("*.json"))) >= 2


def _whole_files_only(
    lake: Lake, landing: Path, whole: dict[tuple[str, str], pl.DataFrame]
) -> None:
    """Every table holds each file's rows entirely or not at all."""
    for (layer, name), df in whole.items():
        got = lake.read(layer, name)
        if got is None:
            continue
        want = df.group_by("source_file").len()
        have = got.group_by("source_file").len()
        both = have.join(want, on="source_file", how="left", suffix="_want")
        assert (both["len"] == both["len_want"]).all(), (layer, name, both)


@pytest.mark.parametrize("kill_at", ["bronze_spool", "silver_spool", "silver_commits"])
def test_a_crash_in_the_middle_of_a_file_leaves_whole_files_and_the_rerun_completes(
    kill_at: str,
    big: tuple[str, Path, int],
    landing: Path,
    tmp_path: Path,
    whole: dict[tuple[str, str], pl.DataFrame],
) -> None:
    bid = big[0]
    lake_dir = tmp_path / "lake"
    ready = {
        "bronze_spool": _spooled(lake_dir, "bronze.arrow"),
        "silver_spool": _spooled(lake_dir, "valid.arrow"),
        "silver_commits": _silver_committed(lake_dir),
    }[kill_at]
    _run_and_kill(lake_dir, landing, bid, ready)
    lake = Lake.at(lake_dir)
    _whole_files_only(lake, landing, whole)
    assert any((lake_dir / "_spool").iterdir())  # the killed run's scratch is still there
    ingest(lake, landing, bid, SLICED)
    assert_same(whole, snapshot(lake))
    assert not any((lake_dir / "_spool").iterdir())  # and removed by the rerun


def test_a_file_whose_bronze_ingestion_keeps_dying_is_quarantined(
    big: tuple[str, Path, int], landing: Path, tmp_path: Path
) -> None:
    bid, path, rows = big
    lake_dir = tmp_path / "lake"
    limits = bronze.IngestLimits(slice_rows=SLICE, max_attempts=1)
    _run_and_kill(lake_dir, landing, bid, _spooled(lake_dir, "bronze.arrow"))
    lake = Lake.at(lake_dir)
    ingest(lake, landing, bid, limits)
    log = bronze.read_log(lake, [bid], "telemetry")
    rel = path.relative_to(landing).as_posix()
    row = log.filter(pl.col("source_file") == rel).row(0, named=True)
    assert (row["status"], row["reason"], row["rows"]) == ("quarantined", "repeated_failure", rows)
    assert "1 earlier ingestions" in row["detail"]
    assert log.filter(pl.col("status") == "accepted").height == log.height - 1 > 0
    rec = silver.reconcile_telemetry(lake, str(landing), [bid])
    assert rec["reconciled"], rec


def test_a_file_whose_silver_processing_keeps_dying_is_quarantined_row_by_row(
    big: tuple[str, Path, int], landing: Path, tmp_path: Path
) -> None:
    bid, path, rows = big
    lake_dir = tmp_path / "lake"
    limits = bronze.IngestLimits(slice_rows=SLICE, max_attempts=1)
    _run_and_kill(lake_dir, landing, bid, _spooled(lake_dir, "valid.arrow"))
    lake = Lake.at(lake_dir)
    ingest(lake, landing, bid, limits)
    rel = path.relative_to(landing).as_posix()
    tl = lake.read("silver", "telemetry_log", filter_expr=pl.col("source_file") == rel)
    assert tl is not None and tl.select("rows_in", "rows_valid", "rows_quarantined").row(0) == (
        rows,
        0,
        rows,
    )
    q = lake.read("silver", "telemetry_quarantine", filter_expr=pl.col("source_file") == rel)
    assert q is not None and q.height == rows
    assert set(q["failed_check"]) == {"processing_failed"}
    assert silver.pending_telemetry_files(lake, [bid]).height == 0  # never retried again
    rec = silver.reconcile_telemetry(lake, str(landing), [bid])
    assert rec["reconciled"], rec


def test_files_over_the_size_caps_are_quarantined_and_others_go_on(
    big: tuple[str, Path, int], landing: Path, tmp_path: Path
) -> None:
    bid, path, rows = big
    lake = Lake.at(tmp_path / "lake")
    limits = bronze.IngestLimits(slice_rows=SLICE, max_file_rows=100_000, max_text_bytes=100)
    ingest(lake, landing, bid, limits)
    log = bronze.read_log(lake, [bid])
    rel = path.relative_to(landing).as_posix()
    row = log.filter(pl.col("source_file") == rel).row(0, named=True)
    assert (row["status"], row["reason"], row["rows"]) == ("quarantined", "file_too_large", rows)
    assert f"{rows:,} rows; the limit is 100,000" in row["detail"]
    tel = log.filter(pl.col("source") == "telemetry")
    assert tel.filter(pl.col("status") == "accepted").height == tel.height - 1 > 0
    # MES files are parsed whole: over the byte cap they are quarantined too (and the batch
    # has no batch_start, so its telemetry waits: nothing is dropped)
    mes = log.filter(pl.col("source") == "mes")
    assert mes.height > 0 and set(mes["reason"]) == {"file_too_large"}
    assert lake.read("bronze", "ingest_attempts") is None  # refused before any attempt


def test_a_large_correction_under_a_new_name_is_held_as_an_amendment(
    big: tuple[str, Path, int], landing: Path, tmp_path: Path
) -> None:
    """The sliced path checks every slice against accepted values, as the whole-file path
    does: a re-delivery of the large file with ONE changed reading in its last slice is held
    whole (amended_delivery, the file's row count), and bronze keeps only the old rows."""
    bid, path, rows = big
    lake = Lake.at(tmp_path / "lake")
    ingest(lake, landing, bid, SLICED)
    df = pl.read_parquet(path).head(rows - 100)  # the repeated tail would be a duplicate key
    i = df.height - 10  # in the last slice
    df = df.with_columns(
        value=pl.when(pl.int_range(pl.len()) == i)
        .then(pl.col("value") + 1.0)
        .otherwise(pl.col("value"))
    )
    corrected = path.with_name("z_" + path.name)
    df.write_parquet(corrected)
    tel = files_for_batch(landing, "telemetry", bid)
    bronze.ingest_files(lake, landing, "telemetry", tel, "t2", now=NOW, limits=SLICED)
    rel = corrected.relative_to(landing).as_posix()
    row = bronze.read_log(lake, [bid]).filter(pl.col("source_file") == rel).row(0, named=True)
    assert (row["status"], row["reason"], row["rows"]) == (
        "quarantined",
        "amended_delivery",
        df.height,
    )
    changes = lake.read("bronze", "amendment_changes")
    assert changes is not None and changes.height == 1
    assert lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel) is None or (
        lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel).height == 0
    )
