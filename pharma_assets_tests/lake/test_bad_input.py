"""The bad-input catalogue: every kind of broken delivery through the real pipeline.

Each test corrupts or adds files in its copy of the simulated landing zone, runs the whole
pipeline (``ingest_all``) into a fresh Delta lake and asserts the clear quarantine reason
(``bronze/quarantine``, ``silver/telemetry_quarantine`` or ``silver/lab_quarantine``), that
every landed file has exactly one ledger row, and that the row counts reconcile.

To keep each test fast, the landing copy is first trimmed to the first telemetry chunk of
each batch (``small_landing``); MES, LIMS and CMMS files are kept whole.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pharma_assets.lake import bronze, silver
from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.lake.storage import Lake

from .conftest import ingest_all

B1 = ("BR01", "BR01-B0001")  # complete batch, first unit
B2 = ("BR02", "BR02-B0001")  # complete batch, second unit
B3 = ("BR01", "BR01-B0002")  # complete batch (running after test_timestamps_in_the_future)
BATCHES = sorted(b for _, b in (B1, B2, B3))
NEW = "20991231T000000Z_09999.parquet"
NEW2 = "20991231T000000Z_09998.parquet"


# ------------------------------------------------------------------------- helpers
def _folder(landing: Path, batch: tuple[str, str] = B1, source: str = "telemetry") -> Path:
    return landing / source / batch[0] / batch[1]


def _rel(landing: Path, path: Path) -> str:
    return path.relative_to(landing).as_posix()


def _trim(landing: Path, keep: int = 1) -> None:
    for d in (landing / "telemetry").glob("*/*"):
        for p in sorted(d.glob("*.parquet"))[keep:]:
            p.unlink()


@pytest.fixture
def small_landing(landing: Path) -> Path:
    _trim(landing, keep=1)
    return landing


def _first_chunk_path(landing: Path, batch: tuple[str, str] = B1) -> Path:
    return sorted(_folder(landing, batch).glob("*.parquet"))[0]


def _chunk(landing: Path, batch: tuple[str, str] = B1) -> pl.DataFrame:
    df = pl.read_parquet(_first_chunk_path(landing, batch))
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def _readings(src: pl.DataFrame, tag: str, values: list[Any], **cols: Any) -> pl.DataFrame:
    """New readings of ``tag``: timestamps of the chunk's first readings + 30 s (in the batch
    window, colliding with no landed reading), quality good, the given values."""
    rows = src.filter(pl.col("tag") == tag).sort("ts").head(len(values))
    assert rows.height == len(values)
    value_type = pl.String if any(isinstance(v, str) for v in values) else pl.Float64
    rows = rows.with_columns(
        ts=pl.col("ts") + pl.duration(seconds=30),
        quality=pl.lit("good"),
        value=pl.Series(values, dtype=value_type),
    )
    return rows.with_columns(**{k: pl.lit(v) for k, v in cols.items()})


def _write(landing: Path, df: pl.DataFrame, batch: tuple[str, str] = B1, name: str = NEW) -> str:
    path = _folder(landing, batch) / name
    df.write_parquet(path)
    return _rel(landing, path)


def _check_ledger(lake: Lake, landing: Path) -> pl.DataFrame:
    """Every landed file has exactly one row in bronze/ingest_log (and no other rows)."""
    log = bronze.read_log(lake)
    landed = sorted(f.rel for f in scan_landing(landing))
    assert sorted(log["source_file"].to_list()) == landed
    assert log["source_file"].n_unique() == log.height
    return log


def _check_reconciled(lake: Lake, landing: Path, pending: int = 0) -> dict[str, Any]:
    rec = silver.reconcile_telemetry(lake, str(landing), BATCHES)
    assert rec["reconciled"], rec
    assert rec["pending_rows"] == pending, rec
    assert rec["bronze_rows"] == rec["silver_rows"] + rec["quarantined_rows"] + pending, rec
    bronze_rows = lake.read("bronze", "telemetry").height
    silver_rows = lake.read("silver", "telemetry").height
    q_rows = lake.read("silver", "telemetry_quarantine").height
    assert bronze_rows == silver_rows + q_rows + pending
    _check_ledger(lake, landing)
    return rec


def _bronze_q(lake: Lake, rel: str) -> dict[str, Any]:
    q = lake.read("bronze", "quarantine", filter_expr=pl.col("source_file") == rel)
    assert q is not None and q.height == 1, q
    log = bronze.read_log(lake).filter(pl.col("source_file") == rel)
    assert log.height == 1 and log["status"].item() == "quarantined"
    assert log["reason"].item() == q["reason"].item()
    return q.row(0, named=True)


def _silver_q(lake: Lake, rel: str) -> pl.DataFrame:
    q = lake.read("silver", "telemetry_quarantine", filter_expr=pl.col("source_file") == rel)
    assert q is not None
    return q


def _silver(lake: Lake, rel: str) -> pl.DataFrame:
    out = lake.read("silver", "telemetry", filter_expr=pl.col("source_file") == rel)
    assert out is not None
    return out


def _num(values: pl.Series) -> list[float | None]:
    """Landed values as numbers (the quarantine keeps them as landed, text or number)."""
    return [None if v is None else float(v) for v in values.to_list()]


def _no_telemetry_of(lake: Lake, rel: str) -> None:
    for layer, name in (("bronze", "telemetry"), ("silver", "telemetry")):
        got = lake.read(layer, name, filter_expr=pl.col("source_file") == rel)
        assert got is None or got.height == 0


# ------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("kind", ["truncated_in_place", "garbage"])
def test_truncated_or_corrupt_parquet(lake, small_landing: Path, kind: str):
    landing = small_landing
    chunk = _first_chunk_path(landing)
    if kind == "truncated_in_place":  # a landed chunk cut short (half its bytes)
        data = chunk.read_bytes()
        chunk.write_bytes(data[: len(data) // 2])
        target = chunk
    else:  # Parquet magic bytes around garbage
        target = _folder(landing) / NEW
        target.write_bytes(b"PAR1" + b"\x00\x13garbage" * 100 + b"PAR1")
    rel = _rel(landing, target)
    out = ingest_all(lake, landing)
    q = _bronze_q(lake, rel)
    assert q["reason"] == "unreadable_parquet"
    assert q["detail"]
    assert out.bronze["telemetry"].reasons["unreadable_parquet"] == 1
    _no_telemetry_of(lake, rel)
    rec = _check_reconciled(lake, landing)
    assert rec["unreadable_files"] == 1


def test_empty_files(lake, small_landing: Path):
    landing = small_landing
    zero = _folder(landing) / NEW
    zero.write_bytes(b"")
    no_rows = _chunk(landing).clear()
    rel_no_rows = _write(landing, no_rows, name=NEW2)
    mes_zero = _folder(landing, B2, "mes") / "20991231T000000Z_09999.jsonl"
    mes_zero.write_bytes(b"")
    ingest_all(lake, landing)
    q = _bronze_q(lake, _rel(landing, zero))
    assert (q["reason"], q["detail"], q["rows"]) == ("empty_file", "0 bytes", 0)
    q = _bronze_q(lake, rel_no_rows)
    assert (q["reason"], q["detail"], q["rows"]) == ("empty_file", "no records", 0)
    q = _bronze_q(lake, _rel(landing, mes_zero))
    assert q["reason"] == "empty_file" and q["source"] == "mes"
    # the rest of the batch is unaffected
    assert lake.read("silver", "batches").height == 3
    _check_reconciled(lake, landing)


def test_file_outside_the_landing_layout(lake, small_landing: Path):
    landing = small_landing
    chunk = _first_chunk_path(landing)
    strays = [
        landing / "telemetry" / "stray.parquet",
        landing / "telemetry" / "BR01" / "stray.parquet",
        landing / "notes.txt",
    ]
    for p in strays[:2]:
        shutil.copyfile(chunk, p)
    strays[2].write_text("not data\n")
    out = ingest_all(lake, landing)
    assert out.bronze["unroutable"].files_quarantined == 3
    for p in strays:
        rel = _rel(landing, p)
        q = _bronze_q(lake, rel)
        assert (q["source"], q["reason"]) == ("unroutable", "unexpected_location")
        assert rel in q["detail"]
        _no_telemetry_of(lake, rel)
    # the stray copies are not counted as duplicates of the chunk nor as landed batch rows
    assert bronze.read_log(lake, source="telemetry")["status"].unique().to_list() == ["accepted"]
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- LIMS CSV
def _lims_csv(landing: Path) -> tuple[Path, list[str]]:
    path = sorted(_folder(landing, B1, "lims").glob("*.csv"))[0]
    return path, path.read_text().splitlines()


def _lab_counts(lake: Lake) -> tuple[int, int]:
    good = lake.read("silver", "lab_results")
    bad = lake.read("silver", "lab_quarantine")
    return good.height, bad.height


def test_lims_csv_wrong_delimiter(lake, small_landing: Path):
    landing = small_landing
    path, lines = _lims_csv(landing)
    new = path.with_name("20991231T000000Z_09999.csv")
    new.write_text("\n".join(line.replace(",", ";") for line in lines[:6]) + "\n")
    ingest_all(lake, landing)
    q = _bronze_q(lake, _rel(landing, new))
    assert q["reason"] == "missing_columns"
    assert "';'-delimited" in q["detail"]
    assert q["rows"] == 5
    lims_rows = lake.read("bronze", "lims")
    assert lims_rows.filter(pl.col("source_file") == _rel(landing, new)).height == 0
    good, bad = _lab_counts(lake)
    assert good + bad == lims_rows.height
    _check_ledger(lake, landing)


def test_lims_csv_wrong_header(lake, small_landing: Path):
    landing = small_landing
    path, lines = _lims_csv(landing)
    new = path.with_name("20991231T000000Z_09999.csv")
    header = lines[0].replace("analyte", "assay")
    new.write_text("\n".join([header, *lines[1:4]]) + "\n")
    ingest_all(lake, landing)
    q = _bronze_q(lake, _rel(landing, new))
    assert q["reason"] == "missing_columns"
    assert "missing ['analyte']" in q["detail"]
    assert q["rows"] == 3
    _check_ledger(lake, landing)


def test_lims_string_in_numeric_column(lake, small_landing: Path):
    landing = small_landing
    path, lines = _lims_csv(landing)
    new = path.with_name("20991231T000000Z_09999.csv")
    row = lines[1].split(",")
    row[0] = "BR01-B0001-S99"  # a new sample
    good_row = list(row)
    good_row[0] = "BR01-B0001-S98"
    row[7] = "abc"
    new.write_text("\n".join([lines[0], ",".join(row), ",".join(good_row)]) + "\n")
    ingest_all(lake, landing)
    rel = _rel(landing, new)
    b = lake.read("bronze", "lims", filter_expr=pl.col("source_file") == rel)
    assert b.height == 2
    assert b.filter(pl.col("raw").is_not_null())["raw"].to_list() == ["value=abc"]
    lq = lake.read("silver", "lab_quarantine", filter_expr=pl.col("source_file") == rel)
    assert lq.select("failed_check", "offending_value").rows() == [("type_error", "value=abc")]
    ok = lake.read("silver", "lab_results", filter_expr=pl.col("source_file") == rel)
    assert ok.height == 1 and ok["value"].item() == float(good_row[7])
    good, bad = _lab_counts(lake)
    assert good + bad == lake.read("bronze", "lims").height
    _check_ledger(lake, landing)


# ------------------------------------------------------------------------- columns
def test_missing_required_column(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = _readings(src, "ph", [7.0, 7.01, 7.02]).drop("quality")
    rel = _write(landing, df)
    ingest_all(lake, landing)
    q = _bronze_q(lake, rel)
    assert q["reason"] == "missing_columns"
    assert "quality" in q["detail"]
    assert q["rows"] == 3
    _no_telemetry_of(lake, rel)
    rec = _check_reconciled(lake, landing)
    assert rec["rows_in_quarantined_files"] == 3


def test_extra_unknown_column_is_kept(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = _readings(src, "ph", [7.0, 7.01, 7.02]).with_columns(
        operator_note=pl.Series(["calibrated", None, "ok"])
    )
    rel = _write(landing, df)
    ingest_all(lake, landing)
    b = lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel).sort("ts")
    assert b.height == 3
    assert b["extra"].to_list() == ["operator_note=calibrated", None, "operator_note=ok"]
    assert b["raw"].null_count() == 3
    assert "operator_note" not in b.columns
    assert _silver(lake, rel).height == 3
    assert _silver_q(lake, rel).height == 0
    log = bronze.read_log(lake).filter(pl.col("source_file") == rel)
    assert log.select("status", "rows").row(0) == ("accepted", 3)
    _check_reconciled(lake, landing)


def test_string_in_numeric_column(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = _readings(src, "ph", ["7.0", "abc", "7.02"])
    assert df.schema["value"] == pl.String
    rel = _write(landing, df)
    ingest_all(lake, landing)
    b = lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel).sort("ts")
    assert b.height == 3
    assert b["raw"].to_list() == [None, "value=abc", None]
    assert b["value"].to_list() == [7.0, None, 7.02]
    q = _silver_q(lake, rel)
    assert q.select("failed_check", "offending_value").rows() == [("type_error", "value=abc")]
    assert q["raw"].item() == "value=abc"
    assert _silver(lake, rel)["value"].sort().to_list() == [7.0, 7.02]
    _check_reconciled(lake, landing)


def test_batch_id_in_file_differs_from_folder(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = _readings(src, "ph", [7.0, 7.01]).with_columns(
        batch_id=pl.Series(["BR01-B0001", "BR02-B0001"])
    )
    rel = _write(landing, df)
    ingest_all(lake, landing)
    b = lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel)
    assert b["batch_id"].unique().to_list() == ["BR01-B0001"]  # the folder decides
    q = _silver_q(lake, rel)
    assert q.select("failed_check", "offending_value").rows() == [
        ("batch_id_mismatch", "batch_id=BR02-B0001")
    ]
    assert _silver(lake, rel).height == 1
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- values
def test_nan_and_infinity(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = _readings(src, "temperature_c", [float("nan"), float("inf"), float("-inf"), 36.5])
    rel = _write(landing, df)
    ingest_all(lake, landing)
    q = _silver_q(lake, rel).sort("ts")
    assert q["failed_check"].to_list() == ["value_not_finite"] * 3
    assert q["offending_value"].to_list() == ["NaN", "inf", "-inf"]
    ok = _silver(lake, rel)
    assert ok["value"].to_list() == [36.5]
    assert all(math.isfinite(v) for v in lake.read("silver", "telemetry")["value"])
    _check_reconciled(lake, landing)


def test_physically_impossible_values(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = pl.concat(
        [
            _readings(src, "ph", [15.0, 7.0]),
            _readings(src, "volume_l", [-20.0]),
            _readings(src, "dissolved_oxygen_pct", [250.0]),
        ]
    )
    rel = _write(landing, df)
    ingest_all(lake, landing)
    q = _silver_q(lake, rel)
    got = sorted(q.select("tag", "failed_check", "offending_value").rows())
    assert got == [
        ("dissolved_oxygen_pct", "physical_limits", "250.0"),
        ("ph", "physical_limits", "15.0"),
        ("volume_l", "physical_limits", "-20.0"),
    ]
    assert _silver(lake, rel).select("tag", "value").rows() == [("ph", 7.0)]
    _check_reconciled(lake, landing)


def test_unknown_tag(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = pl.concat(
        [
            _readings(src, "ph", [7.0, 7.1]).with_columns(tag=pl.lit("ph_probe_2")),
            _readings(src, "ph", [7.05]),
        ]
    )
    rel = _write(landing, df)
    ingest_all(lake, landing)
    q = _silver_q(lake, rel)
    assert q.select("failed_check", "offending_value").rows() == [("unknown_tag", "ph_probe_2")] * 2
    assert _silver(lake, rel).height == 1
    _check_reconciled(lake, landing)


def test_unknown_engineering_unit(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = pl.concat(
        [
            _readings(src, "temperature_c", [98.0], uom="degR"),
            _readings(src, "headspace_pressure_bar", [300.0], uom="mbar"),  # known: converted
        ]
    )
    rel = _write(landing, df)
    ingest_all(lake, landing)
    q = _silver_q(lake, rel)
    assert q.select("tag", "failed_check", "offending_value", "uom").rows() == [
        ("temperature_c", "unknown_uom", "degR", "degR")
    ]
    assert _num(q["value"]) == [98.0]  # the value as landed
    ok = _silver(lake, rel)
    assert ok.select("tag", "uom").rows() == [("headspace_pressure_bar", "bar")]
    assert ok["value"].item() == pytest.approx(0.3)
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- duplicates
def test_duplicate_readings_in_one_file(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    once = _readings(src, "ph", [7.0, 7.01, 7.02])
    again = once.head(2).with_columns(value=pl.Series([7.5, 7.6]))
    rel = _write(landing, pl.concat([once, again]))
    ingest_all(lake, landing)
    q = _silver_q(lake, rel).sort("ts")
    assert q["failed_check"].to_list() == ["duplicate_reading"] * 2
    assert _num(q["value"]) == [7.5, 7.6]  # the first reading is kept
    shown = once["ts"].head(2).dt.strftime("%Y-%m-%d %H:%M:%S").to_list()
    assert q["offending_value"].str.slice(0, 19).to_list() == shown
    assert _silver(lake, rel).sort("ts")["value"].to_list() == [7.0, 7.01, 7.02]
    assert silver.duplicate_readings(lake, BATCHES) == 0
    _check_reconciled(lake, landing)


def test_duplicate_readings_across_files(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    first = _readings(src, "ph", [7.0, 7.01, 7.02])
    rel_a = _write(landing, first, name="20991231T000000Z_09997.parquet")
    # the same readings with the same values in another file (other row order, so not the
    # same file content), same run: an exact re-delivery, so duplicates
    rel_b = _write(landing, first.reverse(), name=NEW2)
    ingest_all(lake, landing)
    a, b = _silver(lake, rel_a), _silver(lake, rel_b)
    qa, qb = _silver_q(lake, rel_a), _silver_q(lake, rel_b)
    assert a.height + b.height == 3 and qa.height + qb.height == 3
    assert (qa.height, qb.height) in ((0, 3), (3, 0))
    assert set(pl.concat([qa, qb])["failed_check"]) == {"duplicate_reading"}
    # a third file in a later run: its readings (same values) are already in silver
    rel_c = _write(landing, first.with_columns(note=pl.lit("resent")))
    # and a repeat of a landed chunk's readings
    landed = src.filter(pl.col("tag") == "temperature_c").head(4)
    rel_d = _write(landing, landed.reverse(), name="20991231T000000Z_09996.parquet")
    ingest_all(lake, landing, run_id="second")
    assert _silver(lake, rel_c).height == 0 and _silver(lake, rel_d).height == 0
    assert _silver_q(lake, rel_c)["failed_check"].to_list() == ["duplicate_reading"] * 3
    assert _silver_q(lake, rel_d)["failed_check"].to_list() == ["duplicate_reading"] * 4
    assert silver.duplicate_readings(lake, BATCHES) == 0
    _check_reconciled(lake, landing)
    # (the same readings with other values are corrections: test_amendments.py)


def test_same_file_delivered_twice(lake, small_landing: Path):
    landing = small_landing
    chunk = _first_chunk_path(landing)
    original = _rel(landing, chunk)
    n = pl.read_parquet(chunk).height
    copy1 = chunk.with_name(NEW)
    shutil.copyfile(chunk, copy1)  # second delivery in the same run
    out = ingest_all(lake, landing)
    assert out.bronze["telemetry"].reasons == {"duplicate_file": 1}
    q = _bronze_q(lake, _rel(landing, copy1))
    assert q["reason"] == "duplicate_file"
    assert q["detail"] == f"same content as {original}"
    assert q["rows"] == n
    _no_telemetry_of(lake, _rel(landing, copy1))
    _check_reconciled(lake, landing)
    bronze_rows = lake.read("bronze", "telemetry").height

    # a later run: another copy under a third name, and the same paths again
    copy2 = chunk.with_name(NEW2)
    shutil.copyfile(chunk, copy2)
    out = ingest_all(lake, landing, run_id="second")
    tel = out.bronze["telemetry"]
    assert tel.files_seen == tel.files_already_ingested + 1
    assert tel.reasons == {"duplicate_file": 1}
    assert _bronze_q(lake, _rel(landing, copy2))["reason"] == "duplicate_file"
    assert out.silver.files_processed == 0
    assert lake.read("bronze", "telemetry").height == bronze_rows
    _check_reconciled(lake, landing)

    # the same paths once more: everything skipped, nothing appended anywhere
    log_rows = bronze.read_log(lake).height
    out = ingest_all(lake, landing, run_id="third")
    for rep in out.bronze.values():
        assert rep.files_already_ingested == rep.files_seen
    assert bronze.read_log(lake).height == log_rows
    assert lake.read("bronze", "telemetry").height == bronze_rows
    assert lake.read("bronze", "quarantine").height == 2
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- timestamps
def test_timestamps_outside_the_batch_window(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    early = _readings(src, "ph", [7.0]).with_columns(ts=pl.col("ts") - pl.duration(days=2))
    ok = _readings(src, "ph", [7.0, 7.01]).tail(1)
    chunk_b3 = _chunk(landing, B3)
    # a reading of B1 at a time when the unit already ran B3 (after B1's end + grace)
    late = ok.with_columns(ts=pl.lit(chunk_b3["ts"][0]) + pl.duration(seconds=30))
    rel = _write(landing, pl.concat([early, ok, late]))
    ingest_all(lake, landing)
    q = _silver_q(lake, rel).sort("ts")
    assert q["failed_check"].to_list() == ["outside_batch_window"] * 2
    assert q["failed_checks"].to_list() == ["outside_batch_window"] * 2
    assert q["ts"].to_list() == [early["ts"][0], late["ts"][0]]
    assert _silver(lake, rel)["ts"].to_list() == ok["ts"].to_list()
    _check_reconciled(lake, landing)


def test_timestamps_in_the_future(lake, small_landing: Path):
    landing = small_landing
    # B3 is still running: drop its batch_end event
    mes = sorted(_folder(landing, B3, "mes").glob("*.jsonl"))[0]
    lines = [ln for ln in mes.read_text().splitlines() if '"batch_end"' not in ln]
    mes.write_text("\n".join(lines) + "\n")
    future = datetime.now(UTC) + timedelta(days=2)
    src = _chunk(landing, B3)
    df = pl.concat(
        [
            _readings(src, "ph", [7.0]).with_columns(ts=pl.lit(future, pl.Datetime("us", "UTC"))),
            _readings(src, "ph", [7.0, 7.01]).tail(1),
        ]
    )
    rel = _write(landing, df, batch=B3)
    # the same future reading in a completed batch: outside its window and in the future
    src1 = _chunk(landing)
    rel1 = _write(
        landing,
        _readings(src1, "ph", [7.0]).with_columns(ts=pl.lit(future, pl.Datetime("us", "UTC"))),
    )
    ingest_all(lake, landing)
    assert lake.read("silver", "batches").filter(pl.col("batch_id") == B3[1])["status"].item() == (
        "running"
    )
    q = _silver_q(lake, rel)
    assert q.select("failed_check", "failed_checks").rows() == [("ts_in_future", "ts_in_future")]
    assert q["offending_value"].item().startswith(future.strftime("%Y-%m-%d %H:%M:%S"))
    assert _silver(lake, rel).height == 1
    q1 = _silver_q(lake, rel1)
    assert q1.select("failed_check", "failed_checks").rows() == [
        ("outside_batch_window", "outside_batch_window,ts_in_future")
    ]
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- delivery order
def _tables(lake: Lake) -> dict[str, pl.DataFrame]:
    """The lake's content without run-dependent columns, in a canonical order."""
    volatile = {"ingested_at", "ingest_run_id", "processed_at", "run_id", "updated_at"}
    out = {}
    for layer, name in [
        ("bronze", "telemetry"),
        ("silver", "telemetry"),
        ("silver", "telemetry_quarantine"),
        ("silver", "telemetry_stats"),
        ("silver", "excursion_segments"),
        ("silver", "batch_timeline"),
        ("gold", "batch_summary"),
        ("gold", "cpp_excursions"),
        ("gold", "unit_status"),
    ]:
        df = lake.read(layer, name)
        df = df.drop([c for c in df.columns if c in volatile])
        out[f"{layer}/{name}"] = df.select(sorted(df.columns)).sort(sorted(df.columns))
    return out


def test_chunks_arriving_out_of_order(lake, landing: Path, tmp_path: Path):
    _trim(landing, keep=3)
    for batch in (B2, B3):
        shutil.rmtree(_folder(landing, batch))  # one batch is enough here
    chunks = sorted(_folder(landing).glob("*.parquet"))
    assert len(chunks) == 3
    hold = tmp_path / "hold"
    hold.mkdir()

    def hold_back(paths: list[Path]) -> None:
        for p in paths:
            shutil.move(p, hold / p.name)

    def deliver(paths: list[Path]) -> None:
        for p in paths:
            shutil.move(hold / p.name, p)

    # in order: one chunk per run
    in_order = Lake.at(tmp_path / "lake_in_order")
    hold_back(chunks)
    for i, c in enumerate(chunks):
        deliver([c])
        ingest_all(in_order, landing, run_id=f"in-order-{i}")
    # out of order: the last chunk first, then the middle one, then the first
    hold_back(chunks[:2])
    ingest_all(lake, landing, run_id="ooo-0")
    rep = silver.reconcile_telemetry(lake, str(landing), [B1[1]])
    assert rep["reconciled"] and rep["bronze_rows"] == pl.read_parquet(chunks[2]).height
    deliver([chunks[1]])
    ingest_all(lake, landing, run_id="ooo-1")
    deliver([chunks[0]])
    ingest_all(lake, landing, run_id="ooo-2")

    got, want = _tables(lake), _tables(in_order)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].equals(want[name]), name
    assert got["silver/telemetry"].height > 0
    assert silver.duplicate_readings(lake, [B1[1]]) == 0
    for lk in (lake, in_order):
        rec = silver.reconcile_telemetry(lk, str(landing), [B1[1]])
        assert rec["reconciled"], rec
        assert rec["rows_landed"] == sum(pl.read_parquet(c).height for c in chunks)
        assert rec["bronze_rows"] == rec["silver_rows"] + rec["quarantined_rows"]
        _check_ledger(lk, landing)


# ------------------------------------------------------------------------- MES JSONL
def test_mes_jsonl_with_a_malformed_line(lake, small_landing: Path):
    landing = small_landing
    mes = sorted(_folder(landing, B1, "mes").glob("*.jsonl"))[0]
    first = mes.read_text().splitlines()[0]
    event = json.loads(first) | {
        "event_id": "BR01-B0001-E900",
        "event_type": "phase_start",
        "phase": "growth",
    }
    new = mes.with_name("20991231T000000Z_09999.jsonl")
    new.write_text(json.dumps(event) + "\n" + '{"event_id": "BR01-B0001-E901", "event_type"\n')
    ingest_all(lake, landing)
    q = _bronze_q(lake, _rel(landing, new))
    assert q["reason"] == "malformed_json"
    assert q["detail"].startswith("line 2:")
    # the valid first line of the file is not half-ingested either
    ev = lake.read("bronze", "mes")
    assert ev.filter(pl.col("source_file") == _rel(landing, new)).height == 0
    assert "BR01-B0001-E900" not in ev["event_id"].to_list()
    assert lake.read("silver", "batches").height == 3
    _check_reconciled(lake, landing)


def test_mes_file_of_a_batch_malformed_defers_its_telemetry(lake, small_landing: Path):
    landing = small_landing
    mes = sorted(_folder(landing, B2, "mes").glob("*.jsonl"))[0]
    good_text = mes.read_text()
    mes.write_text(good_text.replace("}\n", "\n", 1))  # first record loses its closing brace
    out = ingest_all(lake, landing)
    assert _bronze_q(lake, _rel(landing, mes))["reason"] == "malformed_json"
    assert B2[1] not in lake.read("silver", "batches")["batch_id"].to_list()
    n_b2 = pl.read_parquet(_first_chunk_path(landing, B2)).height
    assert out.silver.files_deferred == 1
    # nothing lost: the batch's telemetry waits in bronze (pending) and still reconciles
    _check_reconciled(lake, landing, pending=n_b2)
    # the corrected export arrives: the waiting telemetry is processed
    mes.with_name("20991231T000000Z_09999.jsonl").write_text(good_text)
    out = ingest_all(lake, landing, run_id="fixed")
    assert B2[1] in lake.read("silver", "batches")["batch_id"].to_list()
    assert out.silver.files_processed == 1 and out.silver.rows_in == n_b2
    _check_reconciled(lake, landing)


def test_the_duplicate_check_counts_what_one_grouping_of_every_key_counts(tmp_path: Path):
    """``duplicate_readings`` works cluster by cluster (batches of one unit whose windows
    overlap): on a silver/telemetry written directly, with repeats inside a batch, across
    two overlapping batches of one unit, the same times on another unit (not repeats) and a
    batch apart in time, it counts what one group-by of every (unit, tag, ts) counts."""
    from datetime import UTC, datetime, timedelta

    lake = Lake.at(tmp_path / "lake")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def rows(bid: str, unit: str, start_min: int, n: int, tags=("ph", "do"), f: str = "a"):
        ts = [t0 + timedelta(minutes=start_min + i) for i in range(n)]
        return pl.DataFrame(
            {
                "batch_id": bid,
                "unit_id": unit,
                "tag": [t for t in tags for _ in ts],
                "ts": ts * len(tags),
                "value": 1.0,
                "source_file": f"{bid}/{f}.parquet",
            },
            schema_overrides={"ts": pl.Datetime("us", "UTC")},
        )

    parts = [
        rows("B1", "U1", 0, 100),
        rows("B2", "U1", 60, 100),  # overlaps B1 on U1 for 40 minutes x 2 tags
        rows("B3", "U2", 0, 100),  # B1's times on another unit: not repeats
        rows("B4", "U1", 500, 50),
        rows("B4", "U1", 510, 5, tags=("ph",), f="b"),  # 5 repeats inside B4
        rows("B5", "U2", 300, 10),
    ]
    for p in parts:
        lake.append("silver", "telemetry", p)
    everything = pl.concat(parts)
    ids = ["B1", "B2", "B3", "B4", "B5"]

    def reference(df: pl.DataFrame) -> int:
        return df.group_by("unit_id", "tag", "ts").len().filter(pl.col("len") > 1).height

    assert reference(everything) == 85
    assert silver.duplicate_readings(lake, ids) == 85
    assert silver.duplicate_readings(lake, ["B1", "B3"]) == 0
    assert silver.duplicate_readings(lake, ["B2", "B1"]) == 80

    # with files: the rows of those files' batches inside each batch's window of them,
    # grouped at once (what the check did before it worked cluster by cluster)
    def in_windows(files: list[str]) -> pl.DataFrame:
        win = (
            everything.filter(pl.col("source_file").is_in(files))
            .group_by("batch_id")
            .agg(lo=pl.col("ts").min(), hi=pl.col("ts").max())
        )
        return everything.join(win, on="batch_id").filter(pl.col("ts").is_between("lo", "hi"))

    for files, want in (
        (["B4/b.parquet"], 5),
        (["B2/a.parquet"], 0),  # B1's rows are outside the files' batches
        (["B2/a.parquet", "B1/a.parquet"], 80),
        (["B1/a.parquet", "B3/a.parquet", "B5/a.parquet"], 0),
    ):
        assert reference(in_windows(files)) == want
        assert silver.duplicate_readings(lake, ids, files) == want, files
    assert silver.duplicate_readings(lake, ids, []) == 0
