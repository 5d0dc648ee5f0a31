"""Dagster side: every materialization of a governed table lands in the audit trail (sensor and
the plain function `pharma-twin pipeline` calls), and the audit_chain_valid check runs verify.
Real instance (``dg.instance_for_test``), real pipeline runs, real lake."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.defs.compliance.definitions import (
    audit_chain_valid,
    audit_trail_asset,
    audit_verify_job,
    materialization_audit_sensor,
)
from pharma_assets.defs.compliance.definitions import defs as compliance_defs
from pharma_assets.defs.compliance.materializations import audit_new_materializations
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import run_pipeline
from pharma_assets_tests.lake.conftest import landing  # noqa: F401


def _check_defs(res: LakehouseResource) -> dg.Definitions:
    return dg.Definitions(
        assets=[audit_trail_asset],
        asset_checks=[audit_chain_valid],
        jobs=[audit_verify_job],
        resources={"lakehouse": res},
    )


def test_materializations_audited_once_with_versions_rows_run_and_code(
    landing: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert compliance_defs().sensors  # the definitions load
    res = LakehouseResource(lake_uri=str(tmp_path / "lake"), landing_dir=str(landing))
    lake = Lake.at(res.lake_uri)
    with dg.instance_for_test() as instance:
        out = run_pipeline(res, instance)
        assert out.ok
        n_events = sum(
            len(instance.fetch_materializations(k, limit=10_000).records)
            for k in instance.get_asset_keys()
            if k.path[0] in ("bronze", "silver", "gold")
        )
        n = audit_new_materializations(lake, instance)
        assert n == n_events > 0
        assert audit_new_materializations(lake, instance) == 0  # idempotent
        ctx = dg.build_sensor_context(instance=instance, resources={"lakehouse": res})
        tick = materialization_audit_sensor(ctx)
        assert "recorded 0" in str(tick.skip_message)
        trail = AuditTrail(lake)
        mats = trail.read(action="materialization")
        assert mats.height == n_events
        gold = mats.filter(pl.col("table_name") == "gold/batch_summary").row(-1, named=True)
        new = pl.Series([gold["new_value"]]).str.json_decode().struct.unnest()
        assert new["rows"][0] == 3 and new["version"][0] == lake.version("gold", "batch_summary")
        assert len(new["code_version"][0]) >= 7 and gold["context_id"] in out.runs
        assert set(mats["table_name"]) >= {
            "bronze/telemetry",
            "silver/telemetry",
            "gold/cpp_excursions",
        }

        # the asset check passes on the intact chain and fails once an entry is removed
        job = _check_defs(res).resolve_job_def("audit_verify_job")
        r = job.execute_in_process(instance=instance)
        [ev] = r.get_asset_check_evaluations()
        assert ev.passed and ev.metadata["entries"].value == n_events
        from deltalake import DeltaTable, write_deltalake

        uri = lake.uri("gxp", "audit_trail")
        DeltaTable(uri).alter.set_table_properties({"delta.appendOnly": "false"})
        write_deltalake(
            uri, pl.read_delta(uri).filter(pl.col("seq") != 3).to_arrow(), mode="overwrite"
        )
        r2 = job.execute_in_process(instance=instance, raise_on_error=False)
        [ev2] = r2.get_asset_check_evaluations()
        assert not ev2.passed
        assert ev2.metadata["first_bad_seq"].value == 3
        assert ev2.metadata["failure_kind"].value == "missing_entry"


def test_a_second_instance_with_restarting_storage_ids_is_still_audited(
    landing: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Storage ids restart in every ephemeral instance (``pharma-twin pipeline`` without a
    DAGSTER_HOME): the second instance's events must not be mistaken for recorded ones."""
    res = LakehouseResource(lake_uri=str(tmp_path / "lake"), landing_dir=str(landing))
    lake = Lake.at(res.lake_uri)
    counts = []
    for _ in range(2):
        with dg.instance_for_test() as instance:
            assert run_pipeline(res, instance).ok
            n_events = sum(
                len(instance.fetch_materializations(k, limit=10_000).records)
                for k in instance.get_asset_keys()
                if k.path[0] in ("bronze", "silver", "gold")
            )
            assert audit_new_materializations(lake, instance) == n_events > 0
            counts.append(n_events)
    mats = AuditTrail(lake).read(action="materialization")
    assert mats.height == sum(counts)
    assert mats["context_id"].n_unique() >= 2  # runs of both instances
    assert AuditTrail(lake).verify().ok


def test_cli_audit_verify_exit_codes(empty_lake: Lake) -> None:
    trail = AuditTrail(empty_lake)
    trail.record("x", "someone", record_id="r1")
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--lake", empty_lake.root])
    assert ok.exit_code == 0 and "OK" in ok.output
    from deltalake import DeltaTable, write_deltalake

    uri = empty_lake.uri("gxp", "audit_trail")
    DeltaTable(uri).alter.set_table_properties({"delta.appendOnly": "false"})
    df = pl.read_delta(uri).with_columns(actor=pl.lit("mallory"))
    write_deltalake(uri, df.to_arrow(), mode="overwrite")
    bad = runner.invoke(app, ["audit", "verify", "--lake", empty_lake.root])
    assert bad.exit_code == 1 and "seq 0" in bad.output and "hash_mismatch" in bad.output


def test_cli_user_admin_and_release_flow(gold_lake: Lake) -> None:
    runner = CliRunner()
    root = gold_lake.root
    r = runner.invoke(
        app,
        ["users", "add", "boss", "--name", "Bo Boss", "--role", "admin", "--lake", root],
        input="Chief-pass-2026!\n",
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "users",
            "add",
            "qa1",
            "--name",
            "Quincy QA",
            "--role",
            "qa",
            "--admin",
            "boss",
            "--lake",
            root,
        ],
        input="Chief-pass-2026!\nQuality-2026-x\n",
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["users", "list", "--lake", root])
    assert "Quincy QA" in r.output
    r = runner.invoke(
        app,
        ["release", "BR01-B0001", "--user", "qa1", "--reason", "ok", "--lake", root],
        input="Quality-2026-x\n",
    )
    assert r.exit_code == 2 and "--decision" in r.output  # no default decision
    assert gold_lake.read("gxp", "batch_release") is None
    r = runner.invoke(
        app,
        [
            "release",
            "BR01-B0001",
            "--user",
            "qa1",
            "--reason",
            "ok",
            "--decision",
            "released",
            "--lake",
            root,
        ],
        input="Quality-2026-x\n",
    )
    assert r.exit_code == 0, r.output
    assert "released by Quincy QA" in r.output
    r = runner.invoke(
        app,
        [
            "release",
            "BR01-B0002",
            "--user",
            "qa1",
            "--reason",
            "ok",
            "--decision",
            "rejected",
            "--lake",
            root,
        ],
        input="wrong-password\n",
    )
    assert r.exit_code == 1
    r = runner.invoke(
        app, ["ebr", "BR01-B0001", "--out", str(Path(root).parent / "ebr"), "--lake", root]
    )
    assert r.exit_code == 0 and (Path(root).parent / "ebr" / "BR01-B0001_ebr.pdf").exists()
    r = runner.invoke(app, ["audit", "verify", "--lake", root])
    assert r.exit_code == 0, r.output


def test_row_counts_of_one_pass_load_each_table_once_moving_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows before/after of each audited materialization: a table's snapshot is loaded
    once and moved forward (a 1,000-batch build audits about 10,000 materializations; each
    count loaded the snapshot afresh), a version behind is loaded afresh, and every count is
    the table's rows at that version."""
    from deltalake import DeltaTable

    from pharma_assets.compliance import materialization

    lake = Lake.at(tmp_path / "lake")
    sizes = [3, 5, 0, 7, 2]
    for n in sizes:
        lake.append("silver", "t", pl.DataFrame({"x": list(range(n))}, schema={"x": pl.Int64}))
    uri = lake.uri("silver", "t")
    loads: list[int | None] = []

    class Counting(DeltaTable):
        def __init__(self, *a: object, **k: object) -> None:
            loads.append(k.get("version"))  # type: ignore[arg-type]
            super().__init__(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(materialization, "DeltaTable", Counting)
    rows = materialization._RowCounts({})
    order = [None, 0, 1, 1, 2, 4, 3, 4, -1]
    got = [rows(uri, v) for v in order]
    want = [None, *(sum(sizes[: v + 1]) for v in (0, 1, 1, 2, 4, 3, 4)), None]
    assert got == want
    assert loads == [0, 3]  # once at the start, once to go back to version 3
