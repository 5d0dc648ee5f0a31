"""Corrections of accepted data: held as amendments, applied only as a signed GxP action.

Through the real pipeline (``ingest_all``) into a temporary lake: a file re-delivered under
a new name with one value changed, and a landed file overwritten in place, are each held
(bronze quarantine reason ``amended_delivery`` with the differing key, ``bronze/amendments``,
the CLI's ``amendment list``); applying one through the CLI asks for the QA signature,
supersedes the old value in bronze and silver (the older Delta versions keep it) and records
old and new values in the audit trail.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.compliance import amendments as compliance_amendments
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.users import create_user
from pharma_assets.lake import amendments, bronze, progress, silver
from pharma_assets.lake.alarms import input_alarms
from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.lake.storage import Lake

from .conftest import ingest_all
from .test_bad_input import (
    B1,
    _bronze_q,
    _check_reconciled,
    _chunk,
    _first_chunk_path,
    _rel,
    _write,
)

QA_PW = "Quality-pass-2026"


@pytest.fixture(autouse=True)
def gxp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "gxp_home"
    monkeypatch.setenv("PHARMA_GXP_HOME", str(home))
    for var in ("PHARMA_AUDIT_KEY", "PHARMA_AUDIT_KEY_FILE", "PHARMA_AUDIT_ANCHOR"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def small_landing(landing: Path) -> Path:
    for d in (landing / "telemetry").glob("*/*"):
        for p in sorted(d.glob("*.parquet"))[1:]:
            p.unlink()
    return landing


def _users(lake: Lake) -> None:
    create_user(
        lake,
        "admin",
        "Ada Admin",
        "admin",
        "Root-pass-2026!",
        "system:test",
        "setup",
        bootstrap=True,
    )
    create_user(lake, "qa.lead", "Quinn Assurance", "qa", QA_PW, "admin", "setup")
    create_user(
        lake, "op.jones", "Olive Operator", "operator", "Operator-pass-2026", "admin", "setup"
    )


def _ph_reading(lake: Lake) -> dict:
    """The first accepted pH reading of B1 in silver."""
    s = lake.read(
        "silver", "telemetry", filter_expr=(pl.col("batch_id") == B1[1]) & (pl.col("tag") == "ph")
    )
    return s.sort("ts").row(0, named=True)


def _silver_value(lake: Lake, ts) -> list[float]:
    s = lake.read(
        "silver",
        "telemetry",
        filter_expr=(pl.col("batch_id") == B1[1]) & (pl.col("tag") == "ph") & (pl.col("ts") == ts),
    )
    return s["value"].to_list()


def _apply(lake: Lake, landing: Path, aid: str, user: str, pw: str) -> object:
    return CliRunner().invoke(
        app,
        [
            "amendment",
            "apply",
            aid,
            "--user",
            user,
            "--reason",
            "historian re-export after probe recalibration",
            "--lake",
            lake.root,
            "--landing",
            str(landing),
        ],
        input=pw + "\n",
    )


def test_correction_under_a_new_name_is_held_then_applied_with_signature(lake, small_landing: Path):
    landing = small_landing
    ingest_all(lake, landing)
    _users(lake)
    old = _ph_reading(lake)
    chunk = _chunk(landing)
    n = chunk.height
    # the whole chunk re-delivered under a new name, one pH value corrected
    fixed = chunk.with_columns(
        value=pl.when((pl.col("tag") == "ph") & (pl.col("ts") == old["ts"]))
        .then(pl.lit(old["value"] + 0.25))
        .otherwise(pl.col("value"))
    )
    rel = _write(landing, fixed)
    out = ingest_all(lake, landing, run_id="second")

    # held: quarantined with the reason and the differing key, nothing reaches silver
    assert out.bronze["telemetry"].reasons == {"amended_delivery": 1}
    q = _bronze_q(lake, rel)
    assert q["reason"] == "amended_delivery" and q["rows"] == n
    assert f"1 of {n} rows change accepted values" in q["detail"]
    assert '"tag": "ph"' in q["detail"] and str(old["value"] + 0.25) in q["detail"]
    assert _silver_value(lake, old["ts"]) == [old["value"]]
    sq = lake.read("silver", "telemetry_quarantine", filter_expr=pl.col("source_file") == rel)
    assert sq.height == 0  # not 28,798 duplicate_reading rows with the correction among them
    held = amendments.list_amendments(lake)
    assert held.select("state", "kind", "source_file", "keys_changed").rows() == [
        ("held", "new_file", rel, 1)
    ]
    aid = held["amendment_id"].item()
    ch = lake.read("bronze", "amendment_changes")
    assert ch.height == 1
    assert json.loads(ch["old_value"].item()) == {"value": old["value"]}
    assert json.loads(ch["new_value"].item()) == {"value": old["value"] + 0.25}
    assert [line for line in input_alarms(lake).lines() if aid in line]
    r = CliRunner().invoke(app, ["amendment", "list", "--lake", lake.root])
    assert r.exit_code == 0 and aid in r.output and "held" in r.output
    _check_reconciled(lake, landing)
    # a rerun does not register it twice
    ingest_all(lake, landing, run_id="third")
    assert amendments.list_amendments(lake).height == 1

    # applying needs the QA approval signature: an operator is refused, nothing changes
    v_before = lake.version("silver", "telemetry")
    r = _apply(lake, landing, aid, "op.jones", "Operator-pass-2026")
    assert r.exit_code == 1 and "sign.approval" in r.output
    r = _apply(lake, landing, aid, "qa.lead", "wrong-password")
    assert r.exit_code == 1
    assert lake.version("silver", "telemetry") == v_before
    assert _silver_value(lake, old["ts"]) == [old["value"]]

    r = _apply(lake, landing, aid, "qa.lead", QA_PW)
    assert r.exit_code == 0, r.output
    assert f"{aid} applied: 1 bronze rows superseded" in r.output
    assert _silver_value(lake, old["ts"]) == [old["value"] + 0.25]
    b = lake.read(
        "bronze", "telemetry", filter_expr=(pl.col("tag") == "ph") & (pl.col("ts") == old["ts"])
    )
    assert b["value"].to_list() == [old["value"] + 0.25]
    # the old value is kept in the Delta history
    prev = lake.table("silver", "telemetry", version=v_before)
    was = pl.read_delta(prev.table_uri, version=v_before).filter(
        (pl.col("tag") == "ph") & (pl.col("ts") == old["ts"]) & (pl.col("batch_id") == B1[1])
    )
    assert was["value"].to_list() == [old["value"]]
    # audit trail: old and new values, signed by QA
    ev = AuditTrail(lake).read(action="data_amendment_applied")
    assert ev.height == 1 and ev["actor"].item() == "qa.lead" and ev["record_id"].item() == aid
    assert str(old["value"]) in ev["old_value"].item()
    assert str(old["value"] + 0.25) in ev["new_value"].item()
    assert AuditTrail(lake).verify().ok
    assert amendments.list_amendments(lake)["state"].to_list() == ["applied"]
    assert not [line for line in input_alarms(lake).lines() if aid in line]
    r = _apply(lake, landing, aid, "qa.lead", QA_PW)
    assert r.exit_code == 1 and "not held" in r.output
    # counts still reconcile, no duplicate keys, gold rebuilt on the next run
    assert silver.duplicate_readings(lake, [B1[1]]) == 0
    ingest_all(lake, landing, run_id="fourth")
    _check_reconciled(lake, landing)


def _overwrite(path: Path, df: pl.DataFrame) -> None:
    time.sleep(0.01)
    tmp = path.with_name(".x.tmp")
    df.write_parquet(tmp)
    os.replace(tmp, path)  # what a re-export over the same name does


def test_file_overwritten_in_place_is_never_ignored(lake, small_landing: Path):
    landing = small_landing
    ingest_all(lake, landing)
    _users(lake)
    path = _first_chunk_path(landing)
    rel = _rel(landing, path)
    old = _ph_reading(lake)
    sha_before = bronze.read_log(lake).filter(pl.col("source_file") == rel)["sha256"].item()
    chunk = _chunk(landing)
    _overwrite(
        path,
        chunk.with_columns(
            value=pl.when((pl.col("tag") == "ph") & (pl.col("ts") == old["ts"]))
            .then(pl.lit(6.5))
            .otherwise(pl.col("value"))
        ),
    )
    # the landing sensor / pipeline see it as work to do
    assert [f.rel for f in progress.unfinished(lake, scan_landing(landing))] == [rel]
    out = ingest_all(lake, landing, run_id="second")
    assert out.bronze["telemetry"].reasons == {"amended_delivery": 1}
    held = amendments.list_amendments(lake)
    assert held.select("kind", "source_file", "keys_changed", "old_sha256").rows() == [
        ("overwritten", rel, 1, sha_before)
    ]
    q = lake.read("bronze", "quarantine", filter_expr=pl.col("source_file") == rel)
    assert q["reason"].to_list() == ["amended_delivery"]
    assert "overwritten in place" in q["detail"].item() and "6.5" in q["detail"].item()
    assert _silver_value(lake, old["ts"]) == [old["value"]]
    # recorded once: no more work, not registered again
    assert progress.unfinished(lake, scan_landing(landing)) == []
    ingest_all(lake, landing, run_id="third")
    assert amendments.list_amendments(lake).height == 1

    aid = held["amendment_id"].item()
    r = _apply(lake, landing, aid, "qa.lead", QA_PW)
    assert r.exit_code == 0, r.output
    assert _silver_value(lake, old["ts"]) == [6.5]
    assert (
        lake.read("bronze", "telemetry", filter_expr=pl.col("source_file") == rel).height
        == chunk.height
    )
    _check_reconciled(lake, landing)

    # touched without a content change: looked at once, not an amendment
    os.utime(path)
    os.chmod(path, 0o644)
    assert [f.rel for f in progress.unfinished(lake, scan_landing(landing))] == [rel]
    out = ingest_all(lake, landing, run_id="fourth")
    assert out.bronze["telemetry"].reasons == {}
    assert amendments.list_amendments(lake).height == 1
    assert progress.unfinished(lake, scan_landing(landing)) == []


def test_lims_correction_is_held(lake, small_landing: Path):
    landing = small_landing
    ingest_all(lake, landing)
    path = sorted((landing / "lims" / B1[0] / B1[1]).glob("*.csv"))[0]
    lines = path.read_text().splitlines()
    row = lines[1].split(",")
    row[7] = str(float(row[7]) + 1.0)
    new = path.with_name("20991231T000000Z_09999.csv")
    new.write_text("\n".join([lines[0], ",".join(row), *lines[2:4]]) + "\n")
    ingest_all(lake, landing, run_id="second")
    q = _bronze_q(lake, _rel(landing, new))
    assert q["reason"] == "amended_delivery" and row[0] in q["detail"]
    assert amendments.list_amendments(lake)["keys_changed"].to_list() == [1]
    # the exact copy of the other rows alone is not an amendment
    dup = path.with_name("20991231T000000Z_09998.csv")
    dup.write_text("\n".join([lines[0], *lines[2:4]]) + "\n")
    ingest_all(lake, landing, run_id="third")
    log = bronze.read_log(lake).filter(pl.col("source_file") == _rel(landing, dup))
    assert log["status"].item() == "accepted"
    # applied: silver/lab_results is rebuilt with the corrected value
    _users(lake)
    aid = amendments.held(lake)["amendment_id"].item()
    res = compliance_amendments.apply(lake, landing, aid, "qa.lead", QA_PW, "LIMS result corrected")
    assert res.bronze_rows_replaced == 1
    lab = lake.read(
        "silver",
        "lab_results",
        filter_expr=(pl.col("sample_id") == row[0]) & (pl.col("analyte") == row[6]),
    )
    assert lab["value"].to_list() == [float(row[7])]
    assert amendments.held(lake).height == 0


def test_pipeline_reports_a_file_overwritten_in_place(
    small_landing: Path, tmp_path: Path, monkeypatch
):
    """`pharma-twin pipeline` on a landing zone where an ingested file was overwritten: a
    batch run is made for it and the held amendment is printed (not "0 batch partitions")."""
    landing = small_landing
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    lake_dir = str(tmp_path / "lake")
    args = ["pipeline", "--landing", str(landing), "--lake", lake_dir]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    path = _first_chunk_path(landing)
    chunk = _chunk(landing)
    _overwrite(
        path,
        chunk.with_columns(
            value=pl.when(pl.col("tag") == "ph").then(pl.lit(6.5)).otherwise(pl.col("value"))
        ),
    )
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "pipeline: 1 batch partitions with new files" in r.output
    assert "amendment held" in r.output and _rel(landing, path) in r.output
    held = amendments.held(Lake.at(lake_dir))
    assert held["kind"].to_list() == ["overwritten"]
