"""Input rules at the landing -> bronze -> silver boundary, through the real pipeline.

Routing (content unit vs folder unit, a batch filed under another unit, ids outside the
documented pattern), symbolic links, naive timestamps (refused, or converted only with
PHARMA_SOURCE_TZ), a second batch_start, rows of unroutable files in the counts, and
telemetry waiting for its batch start reported by `pharma-twin pipeline`.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from pharma_assets.lake import bronze
from pharma_assets.lake.storage import Lake

from .conftest import ingest_all
from .test_bad_input import (
    B1,
    B2,
    NEW,
    _bronze_q,
    _check_ledger,
    _check_reconciled,
    _chunk,
    _first_chunk_path,
    _folder,
    _readings,
    _rel,
    _silver,
    _silver_q,
    _write,
)


@pytest.fixture
def small_landing(landing: Path) -> Path:
    for d in (landing / "telemetry").glob("*/*"):
        for p in sorted(d.glob("*.parquet"))[1:]:
            p.unlink()
    return landing


def _no_bronze_rows(lake: Lake, rel: str) -> None:
    for name in ("telemetry", "mes", "lims", "cmms"):
        got = lake.read("bronze", name, filter_expr=pl.col("source_file") == rel)
        assert got is None or got.height == 0


# ------------------------------------------------------------------------- routing
def test_reading_naming_another_unit_than_its_folder(lake, small_landing: Path):
    landing = small_landing
    src = _chunk(landing)
    df = _readings(src, "ph", [7.0, 7.01]).with_columns(unit_id=pl.Series(["BR01", "BR02"]))
    rel = _write(landing, df)
    # an MES event of the BR01 batch that says it ran on BR02
    mes = _folder(landing, B1, "mes") / "20991231T000000Z_09999.jsonl"
    ev = {
        "site_id": "SITE01",
        "area_id": "USP",
        "unit_id": "BR02",
        "batch_id": B1[1],
        "event_type": "phase_start",
        "event_ts": "2025-01-06T07:00:00Z",
        "phase": "growth",
        "event_id": f"{B1[1]}-E090",
    }
    mes.write_text(json.dumps(ev) + "\n")
    ingest_all(lake, landing)
    q = _silver_q(lake, rel)
    assert q.select("failed_check", "offending_value").rows() == [
        ("unit_id_mismatch", "unit_id=BR02")
    ]
    assert _silver(lake, rel).height == 1
    eq = lake.read("silver", "event_quarantine", filter_expr=pl.col("event_id") == ev["event_id"])
    assert eq.select("reason", "detail").rows() == [("unit_id_mismatch", "unit_id=BR02")]
    _check_reconciled(lake, landing)


def test_batch_filed_under_another_unit(lake, small_landing: Path):
    landing = small_landing
    chunk = _first_chunk_path(landing)
    wrong = landing / "telemetry" / "BR02" / B1[1] / NEW
    wrong.parent.mkdir(parents=True)
    df = _readings(_chunk(landing), "ph", [7.0, 7.01])
    df.write_parquet(wrong)
    mes = landing / "mes" / "BR02" / B1[1] / "20991231T000000Z_09999.jsonl"
    mes.parent.mkdir(parents=True)
    mes.write_text(sorted(_folder(landing, B1, "mes").glob("*.jsonl"))[0].read_text())
    out = ingest_all(lake, landing)
    for p, rows in ((wrong, 2), (mes, len(mes.read_text().splitlines()))):
        q = _bronze_q(lake, _rel(landing, p))
        assert (q["source"], q["reason"], q["rows"]) == ("unroutable", "misrouted_batch", rows)
        assert "belongs to unit BR01" in q["detail"]
        _no_bronze_rows(lake, _rel(landing, p))
    assert out.bronze["unroutable"].reasons == {"misrouted_batch": 2}
    assert out.bronze["unroutable"].rows_landed == 2 + rows
    _ = chunk
    _check_reconciled(lake, landing)


@pytest.mark.parametrize("bad", ["BR01-B0009\n", "BR01 B0009", "BR01-B0009\tx"])
def test_batch_ids_outside_the_documented_pattern(lake, small_landing: Path, bad: str):
    landing = small_landing
    d = landing / "telemetry" / "BR01" / bad
    d.mkdir()
    shutil.copyfile(_first_chunk_path(landing), d / NEW)
    n = pl.read_parquet(d / NEW).height
    out = ingest_all(lake, landing)
    rel = _rel(landing, d / NEW)
    q = _bronze_q(lake, rel)
    assert (q["reason"], q["rows"]) == ("invalid_batch_id", n)
    assert repr(bad) in q["detail"]
    assert bad not in out.silver.batches
    assert all(bad != b for b in bronze.read_log(lake)["batch_id"].drop_nulls().to_list())
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- symlinks
def test_symlinks_are_refused_never_followed(lake, small_landing: Path, tmp_path: Path):
    landing = small_landing
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "other.parquet"
    _readings(_chunk(landing), "ph", [7.0, 7.01]).write_parquet(secret)
    link = _folder(landing) / NEW
    link.symlink_to(secret)
    dir_link = landing / "telemetry" / "BR01" / "BR01-B0077"
    dir_link.symlink_to(outside, target_is_directory=True)
    out = ingest_all(lake, landing)
    for p in (link, dir_link):
        rel = _rel(landing, p)
        q = _bronze_q(lake, rel)
        assert (q["source"], q["reason"], q["sha256"], q["rows"]) == (
            "unroutable",
            "symlink",
            "",
            None,
        )
        assert "symbolic link" in q["detail"]
        _no_bronze_rows(lake, rel)
    assert out.bronze["unroutable"].reasons == {"symlink": 2}
    assert "BR01-B0077" not in out.silver.batches
    _check_reconciled(lake, landing)


# ------------------------------------------------------------------------- time zones
def _naive(landing: Path) -> tuple[pl.DataFrame, str]:
    df = _readings(_chunk(landing), "ph", [7.0, 7.01])
    naive = df.with_columns(pl.col("ts").dt.replace_time_zone(None))
    return df, _write(landing, naive)


def test_naive_timestamps_are_refused(lake, small_landing: Path, monkeypatch):
    monkeypatch.delenv("PHARMA_SOURCE_TZ", raising=False)
    landing = small_landing
    _, rel = _naive(landing)
    mes = _folder(landing, B1, "mes") / "20991231T000000Z_09999.jsonl"
    ev = {
        "site_id": "SITE01",
        "area_id": "USP",
        "unit_id": "BR01",
        "batch_id": B1[1],
        "event_type": "phase_start",
        "event_ts": "2025-01-06T07:00:00",
        "phase": "growth",
        "event_id": f"{B1[1]}-E090",
    }
    mes.write_text(json.dumps(ev) + "\n")
    ingest_all(lake, landing)
    q = _bronze_q(lake, rel)
    assert (q["reason"], q["rows"]) == ("naive_timestamp", 2)
    assert "PHARMA_SOURCE_TZ" in q["detail"]
    q = _bronze_q(lake, _rel(landing, mes))
    assert q["reason"] == "naive_timestamp" and "2025-01-06T07:00:00" in q["detail"]
    _check_reconciled(lake, landing)


def test_naive_timestamps_converted_with_declared_source_zone(
    lake, small_landing: Path, monkeypatch
):
    monkeypatch.setenv("PHARMA_SOURCE_TZ", "Europe/Berlin")
    landing = small_landing
    df, rel = _naive(landing)
    # times written as Berlin wall-clock: the same instants one hour later on the clock
    naive = df.with_columns(
        pl.col("ts").dt.convert_time_zone("Europe/Berlin").dt.replace_time_zone(None)
    )
    (landing / rel).unlink()
    naive.write_parquet(landing / rel)
    ingest_all(lake, landing)
    assert _silver(lake, rel).sort("ts")["ts"].to_list() == df["ts"].to_list()
    assert bronze.read_log(lake).filter(pl.col("source_file") == rel)["status"].item() == "accepted"
    monkeypatch.setenv("PHARMA_SOURCE_TZ", "Mars/Olympus")
    later = naive.with_columns(pl.col("ts") + timedelta(seconds=1))
    _write(landing, later, name="20991231T000000Z_09990.parquet")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        ingest_all(lake, landing, run_id="second")


# ------------------------------------------------------------------------- MES
def test_second_batch_start_is_quarantined(lake, small_landing: Path):
    landing = small_landing
    first = sorted(_folder(landing, B1, "mes").glob("*.jsonl"))[0]
    start = json.loads(first.read_text().splitlines()[0])
    assert start["event_type"] == "batch_start"
    again = {**start, "event_id": f"{B1[1]}-E099", "operator": "op99"}
    mes = _folder(landing, B1, "mes") / "20991231T000000Z_09999.jsonl"
    mes.write_text(json.dumps(again) + "\n")
    ingest_all(lake, landing)
    eq = lake.read(
        "silver", "event_quarantine", filter_expr=pl.col("event_id") == again["event_id"]
    )
    assert eq["reason"].to_list() == ["duplicate_batch_start"]
    assert start["event_id"] in eq["detail"].item()
    b = lake.read("silver", "batches", filter_expr=pl.col("batch_id") == B1[1])
    assert b["operator"].item() == start["operator"]


# ------------------------------------------------------------------------- counts
def test_rows_of_unroutable_files_are_counted(lake, small_landing: Path):
    landing = small_landing
    chunk = _first_chunk_path(landing)
    n = pl.read_parquet(chunk).height
    shutil.copyfile(chunk, landing / "telemetry" / "stray.parquet")
    (landing / "lims_export.csv").write_text("a,b\n1,2\n3,4\n")
    out = ingest_all(lake, landing)
    log = bronze.read_log(lake, source="unroutable").sort("source_file")
    assert log.select("source_file", "rows").rows() == [
        ("lims_export.csv", 2),
        ("telemetry/stray.parquet", n),
    ]
    assert out.bronze["unroutable"].rows_landed == n + 2
    _check_ledger(lake, landing)


# ------------------------------------------------------------------------- waiting
def test_telemetry_waiting_for_its_batch_start_is_reported(lake, small_landing: Path):
    landing = small_landing
    shutil.rmtree(_folder(landing, B2, "mes"))
    out = ingest_all(lake, landing)
    assert out.silver.files_deferred == 1
    from pharma_assets.lake.alarms import input_alarms

    alarms = input_alarms(lake)
    assert alarms.waiting == {B2[1]: 1}
    assert any(B2[1] in line and "batch_start" in line for line in alarms.lines())


def test_pipeline_cli_prints_waiting_batches(small_landing: Path, tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from pharma_assets.cli import app

    landing = small_landing
    shutil.rmtree(_folder(landing, B2, "mes"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PHARMA_GXP_HOME", str(tmp_path / "gxp"))
    r = CliRunner().invoke(
        app, ["pipeline", "--landing", str(landing), "--lake", str(tmp_path / "lake")]
    )
    assert r.exit_code == 0, r.output
    assert "wait for their batch_start" in r.output and f"{B2[1]} (1 files)" in r.output
    # and the WARN asset check of silver/telemetry says so in the Dagster UI
    import dagster as dg

    with dg.DagsterInstance.get() as inst:
        evs = [
            e.dagster_event.event_specific_data
            for run in inst.get_runs()
            for e in inst.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if e.dagster_event is not None
        ]
    got = [e for e in evs if e.check_name == "batch_start_landed"]
    assert [e.passed for e in got] == [False]
    assert got[0].metadata["batches_waiting"].value == B2[1]
