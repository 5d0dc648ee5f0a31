"""The lakehouse code location on a real Dagster instance: jobs, checks, metadata, sensors.

Everything runs for real: ``dg.instance_for_test()`` (SQLite in a temporary DAGSTER_HOME),
Delta tables in a temporary lake, the session's simulated landing zone (3 batches).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest

from pharma_assets.compliance import release
from pharma_assets.defs.lakehouse.automation import (
    GOLD_INPUTS,
    ONLY_BATCHES_TAG,
    _run_key,
    gold_refresh_sensor,
)
from pharma_assets.defs.lakehouse.definitions import defs as lakehouse_defs
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.lake import bronze, material_lots, silver
from pharma_assets.lake.landing_scan import (
    BATCH_SOURCES,
    files_for_batch,
    files_for_source,
    scan_landing,
)
from pharma_assets.lake.storage import Lake
from pharma_assets.pipeline import PipelineResult, run_pipeline

from .conftest import (
    BATCH_PARTITIONS,
    SensorTick,
    apply_partition_requests,
    cursor_of,
    definitions_with,
    lakehouse_for,
    landed_batches,
    landing_tick,
    requested_batches,
    sensor_tick,
)

# ----------------------------------------------------------------------------- landing -> gold


@dataclass
class Materialized:
    instance: dg.DagsterInstance
    lakehouse: LakehouseResource
    landing: Path
    lake: Lake
    result: PipelineResult
    gold_tick_before: SensorTick  # gold_refresh_sensor on the still empty lake


@pytest.fixture
def materialized(landing: Path, tmp_path: Path) -> Iterator[Materialized]:
    """run_pipeline (landing -> gold) into a temporary lake on a real instance."""
    lakehouse = lakehouse_for(landing, tmp_path / "lake")
    with dg.instance_for_test() as instance:
        before = sensor_tick(gold_refresh_sensor, instance, lakehouse)
        result = run_pipeline(lakehouse, instance)
        yield Materialized(instance, lakehouse, landing, lakehouse.lake(), result, before)


def _check_evaluations(instance: dg.DagsterInstance, run_ids: list[str]) -> list[Any]:
    out = []
    for rid in run_ids:
        for entry in instance.all_logs(rid, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            assert entry.dagster_event is not None
            out.append(entry.dagster_event.event_specific_data)
    return out


def _metadata_by_partition(
    instance: dg.DagsterInstance, key: list[str]
) -> dict[str | None, dict[str, Any]]:
    """Latest materialization metadata (plain values) per partition of an asset."""
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
    out: dict[str | None, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r.storage_id):
        mat = rec.asset_materialization
        assert mat is not None
        out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


def _landed_rows(landing: Path, source: str) -> tuple[int, int]:
    """(files, rows) of one source as landed, counted from the files themselves."""
    files = [f for f in scan_landing(landing) if f.source == source]
    rows = 0
    for f in files:
        p = f.path(landing)
        if source == "telemetry":
            rows += pq.read_metadata(p).num_rows
        elif source == "lims":
            rows += pl.read_csv(p, infer_schema=False).height
        else:  # JSON lines
            rows += sum(1 for line in p.read_text().splitlines() if line.strip())
    return len(files), rows


def _pipeline_runs_succeed_and_register_batch_partitions(m: Materialized) -> None:
    batches = sorted(landed_batches(m.landing))
    assert len(batches) == 3
    assert m.result.ok, m.result.failed
    assert m.result.batches == batches
    runs = [m.instance.get_run_by_id(rid) for rid in m.result.runs]
    assert all(r is not None for r in runs)
    assert [r.job_name for r in runs if r] == ["batch_ingest_job", "plant_events_job", "gold_job"]
    assert [r.status for r in runs if r] == [dg.DagsterRunStatus.SUCCESS] * 3
    # the three batches are one ranged run (single-run backfill policy)
    batch_run = runs[0]
    assert batch_run is not None
    assert batch_run.tags["dagster/asset_partition_range_start"] == batches[0]
    assert batch_run.tags["dagster/asset_partition_range_end"] == batches[-1]
    assert sorted(m.instance.get_dynamic_partitions(BATCH_PARTITIONS)) == batches


def _every_asset_check_ran_and_passed(m: Materialized) -> None:
    evaluations = _check_evaluations(m.instance, m.result.runs)
    declared = {
        (ck.asset_key.path[0], ck.asset_key.path[1], ck.name)
        for a in lakehouse_defs().assets or []
        if isinstance(a, dg.AssetsDefinition)
        for ck in a.check_keys
    }
    seen = [(e.asset_key.path[0], e.asset_key.path[1], e.check_name) for e in evaluations]
    assert len(declared) == 12  # + no_held_amendments (3 bronze assets), batch_start_landed
    assert sorted(seen) == sorted(declared)  # each declared check evaluated exactly once
    failed = [
        (e.asset_key.to_user_string(), e.check_name, e.metadata)
        for e in evaluations
        if not e.passed
    ]
    assert failed == []


def _materialization_metadata_matches_the_landed_files(m: Materialized) -> None:
    batches = sorted(landed_batches(m.landing))
    # bronze, per batch source: one materialization per partition; a ranged run reports
    # the counts of the whole run on each partition it materialized
    for source in BATCH_SOURCES:
        n_files, n_rows = _landed_rows(m.landing, source)
        meta = _metadata_by_partition(m.instance, ["bronze", source])
        assert sorted(k for k in meta if k is not None) == batches, source
        table_rows = m.lake.read("bronze", source)
        assert table_rows is not None
        for bid in batches:
            md = meta[bid]
            assert md["files_seen"] == md["files_accepted"] == n_files, (source, md)
            assert md["files_quarantined"] == 0 and md["files_already_ingested"] == 0
            assert md["rows_landed"] == md["rows_accepted"] == n_rows > 0, (source, md)
            assert md["rows_accepted"] == table_rows.height
            assert md["delta_version"] == m.lake.version("bronze", source)
            assert md["table_uri"] == m.lake.uri("bronze", source)
    n_files, n_rows = _landed_rows(m.landing, "cmms")
    cmms = _metadata_by_partition(m.instance, ["bronze", "cmms"])[None]
    assert cmms["files_accepted"] == n_files > 0 and cmms["rows_accepted"] == n_rows > 0

    _, telemetry_rows = _landed_rows(m.landing, "telemetry")
    silver_meta = _metadata_by_partition(m.instance, ["silver", "telemetry"])
    silver = m.lake.read("silver", "telemetry")
    quarantined = m.lake.read("silver", "telemetry_quarantine")
    assert silver is not None and quarantined is not None
    for bid in batches:
        md = silver_meta[bid]
        assert md["rows_in"] == telemetry_rows
        assert md["rows_valid"] + md["rows_quarantined"] == md["rows_in"]
        assert md["rows_valid"] == silver.height
        assert md["rows_quarantined"] == quarantined.height
        assert md["contract_pass_rate"] >= 0.99

    gold_meta = _metadata_by_partition(m.instance, ["gold", "batch_summary"])[None]
    assert gold_meta["batches"] == len(batches)
    assert gold_meta["delta_version"] == m.lake.version("gold", "batch_summary")


def _gold_batch_summary_has_one_row_per_batch(m: Materialized) -> None:
    summary = m.lake.read("gold", "batch_summary")
    assert summary is not None
    assert summary.height == 3
    assert sorted(summary["batch_id"].to_list()) == sorted(landed_batches(m.landing))


def _gold_refresh_sensor_requests_gold_when_silver_changes(m: Materialized) -> None:
    assert gold_refresh_sensor.job_name == "gold_job"
    assert not m.gold_tick_before.run_requests  # nothing in silver yet
    versions = {f"{layer}/{name}": m.lake.version(layer, name) for layer, name in GOLD_INPUTS}
    # every silver input exists; gxp/batch_release only once QA has decided a batch
    assert all(v is not None for k, v in versions.items() if k.startswith("silver/")), versions
    assert versions["gxp/batch_release"] is None

    first = sensor_tick(gold_refresh_sensor, m.instance, m.lakehouse)
    assert len(first.run_requests or []) == 1  # for the sensor's only job, gold_job
    assert first.cursor is not None and json.loads(first.cursor) == versions
    again = sensor_tick(gold_refresh_sensor, m.instance, m.lakehouse, first.cursor)
    assert not again.run_requests  # silver unchanged: no refresh

    # a new plant-events run rewrites silver/maintenance_events: one more refresh
    plant = definitions_with(m.lakehouse).resolve_job_def("plant_events_job")
    assert plant.execute_in_process(instance=m.instance).success
    after = sensor_tick(gold_refresh_sensor, m.instance, m.lakehouse, first.cursor)
    assert len(after.run_requests or []) == 1
    assert after.run_requests[0].run_key != first.run_requests[0].run_key

    # a QA decision (a new version of gxp/batch_release) is a gold input too
    decided = pl.DataFrame(
        [
            {
                "batch_id": "BR01-B0001",
                "decision": "released",
                "signature_id": "SIG-test",
                "user_id": "qa.lead",
                "printed_name": "QA Lead",
                "decided_at": datetime.now(UTC),
                "reason": "test",
                "record_hash": "0" * 64,
            }
        ],
        schema=release.SCHEMA,
    )
    m.lake.append("gxp", release.TABLE, decided)
    m.lake.forget()
    qa = sensor_tick(gold_refresh_sensor, m.instance, m.lakehouse, after.cursor)
    assert len(qa.run_requests or []) == 1
    assert json.loads(qa.cursor or "{}")["gxp/batch_release"] is not None


def _landing_sensor_after_ingestion_requests_only_new_files(m: Materialized) -> None:
    newest = max(f.arrived_ns for f in scan_landing(m.landing))
    done = landing_tick(m.instance, m.lakehouse)
    assert list(done.run_requests or []) == []  # everything is through silver
    assert list(done.dynamic_partitions_requests or []) == []
    assert cursor_of(done) == {"hwm_ns": newest, "pending": 0}
    again = landing_tick(m.instance, m.lakehouse, done.cursor)
    assert list(again.run_requests or []) == [] and again.cursor == done.cursor

    # a new chunk lands in one batch folder: one run for that batch only, with a new key
    batch = sorted(landed_batches(m.landing))[1]
    chunk = files_for_batch(m.landing, "telemetry", batch)[0].path(m.landing)
    new = chunk.with_name("20991231T000000Z_99999.parquet")
    shutil.copyfile(chunk, new)  # a new file (new inode): it arrives now
    new_rel = new.relative_to(m.landing).as_posix()
    tick = landing_tick(m.instance, m.lakehouse, again.cursor)
    requests = list(tick.run_requests or [])
    assert [(r.job_name, r.partition_key) for r in requests] == [("batch_ingest_job", batch)]
    (req,) = requests
    assert req.run_key == _run_key(batch, [new_rel])
    assert req.tags["pharma/files"] == "1"
    assert list(tick.dynamic_partitions_requests or []) == []  # the partition exists
    assert cursor_of(tick) == {"hwm_ns": new.stat().st_ctime_ns, "pending": 1}
    assert new.stat().st_ctime_ns > newest
    same = landing_tick(m.instance, m.lakehouse, again.cursor)
    assert [r.run_key for r in same.run_requests or []] == [req.run_key]  # idempotent

    # run what the sensor asked for, as the daemon would: then nothing is owed any more
    job = definitions_with(m.lakehouse).resolve_job_def(req.job_name or "")
    run = job.execute_in_process(
        instance=m.instance, partition_key=req.partition_key, tags=req.tags
    )
    assert run.success
    log = bronze.read_log(m.lake).filter(pl.col("source_file") == new_rel)
    assert log["status"].to_list() == ["quarantined"]  # same content as the chunk it copies
    assert log["reason"].to_list() == ["duplicate_file"]
    after = landing_tick(m.instance, m.lakehouse, tick.cursor)
    assert list(after.run_requests or []) == []
    assert cursor_of(after)["pending"] == 0


def test_run_pipeline_materializes_landing_to_gold(materialized: Materialized) -> None:
    """One pipeline run (about 10 s), several properties of it.

    One test rather than five so that pytest-xdist does not run the pipeline once per worker.
    """
    _pipeline_runs_succeed_and_register_batch_partitions(materialized)
    _every_asset_check_ran_and_passed(materialized)
    _materialization_metadata_matches_the_landed_files(materialized)
    _gold_batch_summary_has_one_row_per_batch(materialized)
    _gold_refresh_sensor_requests_gold_when_silver_changes(materialized)
    _landing_sensor_after_ingestion_requests_only_new_files(materialized)


# ----------------------------------------------------------------------------- landing_sensor


@pytest.fixture
def lakehouse(landing: Path, tmp_path: Path) -> LakehouseResource:
    return lakehouse_for(landing, tmp_path / "lake")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _ingest_requests(tick: SensorTick) -> list[dg.RunRequest]:
    return [r for r in tick.run_requests or [] if r.job_name == "batch_ingest_job"]


def _covered(tick: SensorTick, instance: dg.DagsterInstance) -> list[str]:
    return [b for r in _ingest_requests(tick) for b in requested_batches(r, instance)]


def test_first_tick_requests_every_landed_batch_and_adds_partitions(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    batches = landed_batches(landing)
    ordered = sorted(batches)
    tick = landing_tick(instance, lakehouse)
    assert tick.dynamic_partitions_requests == [
        dg.AddDynamicPartitionsRequest(BATCH_PARTITIONS, ordered)
    ]
    apply_partition_requests(instance, tick)
    assert list(instance.get_dynamic_partitions(BATCH_PARTITIONS)) == ordered
    # the new batches are adjacent in partition order: one range run covers them all
    (ingest,) = _ingest_requests(tick)
    assert ingest.partition_key is None
    assert requested_batches(ingest, instance) == ordered
    files = [rel for b in ordered for rel in batches[b]]
    assert ingest.tags["pharma/batches"] == str(len(batches))
    assert ingest.tags["pharma/files"] == str(len(files))
    assert ingest.run_key == _run_key(f"{ordered[0]}..{ordered[-1]}", files)

    arrived = scan_landing(landing)
    plant_files = [f.rel for f in arrived if f.batch_id is None]
    # plant-level files: CMMS work orders and the raw-material CoA documents (LIMS)
    assert sorted(plant_files) == sorted(
        f.rel for src in ("cmms", "coa") for f in files_for_source(landing, src)
    )
    plant = [r for r in tick.run_requests or [] if r.job_name == "plant_events_job"]
    assert len(plant_files) > 0
    assert len(plant) == 1 and plant[0].partition_key is None
    assert plant[0].run_key == _run_key("plant", plant_files)
    assert len(tick.run_requests or []) == 2

    # cursor: the newest arrival and the number of files still owed
    assert cursor_of(tick) == {
        "hwm_ns": max(f.arrived_ns for f in arrived),
        "pending": len(arrived),
    }


def test_scattered_batches_get_one_run_that_processes_only_them(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    """Issue 17: one run per batch flooded the queue. Batches far apart in partition order
    still get ONE run: the range from the first to the last, with a tag naming the batches
    that have new files, so the batches in between are not rebuilt."""
    batches = landed_batches(landing)
    b0, b1, b2 = sorted(batches)
    fillers = [f"ZZ-OLD-{i:04d}" for i in range(10)]  # older batches, nothing new for them
    instance.add_dynamic_partitions(BATCH_PARTITIONS, [b0, *fillers, b1, b2])
    tick = landing_tick(instance, lakehouse)
    (ingest,) = _ingest_requests(tick)
    assert requested_batches(ingest, instance) == [b0, *fillers, b1, b2]
    assert ingest.tags[ONLY_BATCHES_TAG] == f"{b0},{b1},{b2}"
    files = [rel for b in (b0, b1, b2) for rel in batches[b]]
    assert ingest.run_key == _run_key(f"{b0}..{b2}", files)
    assert ingest.tags["pharma/files"] == str(len(files))
    assert list(tick.dynamic_partitions_requests or []) == []  # all three exist already

    # the run, as the daemon would launch it: the three batches go through silver
    job = definitions_with(lakehouse).resolve_job_def("batch_ingest_job")
    res = job.execute_in_process(instance=instance, tags=ingest.tags)
    assert res.success
    done = res.get_asset_materialization_events()
    assert {e.partition for e in done} == {b0, b1, b2, *fillers}  # (the range's bookkeeping)
    silver_batches = lakehouse.lake().read("silver", "batches", columns=["batch_id"])
    assert silver_batches is not None
    assert sorted(silver_batches["batch_id"].to_list()) == [b0, b1, b2]
    after = landing_tick(instance, lakehouse, tick.cursor)
    assert _ingest_requests(after) == []


def test_tick_without_new_files_requests_no_new_runs(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource
) -> None:
    """Before the requested runs have run, a tick asks for the same runs again, under the
    same run keys: the daemon launches a run key once, so nothing new starts."""
    first = landing_tick(instance, lakehouse)
    assert first.run_requests
    apply_partition_requests(instance, first)
    assert len(instance.get_dynamic_partitions(BATCH_PARTITIONS)) == 3
    second = landing_tick(instance, lakehouse, first.cursor)
    keys = sorted(r.run_key or "" for r in first.run_requests or [])
    assert sorted(r.run_key or "" for r in second.run_requests or []) == keys
    assert list(second.dynamic_partitions_requests or []) == []
    assert cursor_of(second) == cursor_of(first)


def test_new_chunk_changes_the_run_key_of_its_batch(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    """(After ingestion, see the pipeline test: a new chunk gives one run for its batch.)"""
    first = landing_tick(instance, lakehouse)
    apply_partition_requests(instance, first)
    batch = sorted(landed_batches(landing))[1]
    chunk = files_for_batch(landing, "telemetry", batch)[0].path(landing)
    shutil.copyfile(chunk, chunk.with_name("20991231T000000Z_99999.parquet"))
    second = landing_tick(instance, lakehouse, first.cursor)
    (before,), (after,) = _ingest_requests(first), _ingest_requests(second)
    assert requested_batches(after, instance) == requested_batches(before, instance)
    assert after.run_key != before.run_key
    assert int(after.tags["pharma/files"]) == int(before.tags["pharma/files"]) + 1
    assert cursor_of(second)["hwm_ns"] > cursor_of(first)["hwm_ns"]


def test_run_keys_are_idempotent(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource
) -> None:
    a = landing_tick(instance, lakehouse)
    b = landing_tick(instance, lakehouse)  # same files, nothing applied in between
    keys = [(r.job_name, r.run_key) for r in a.run_requests or []]
    assert len(keys) == 2 and all(k for _, k in keys)
    assert keys == [(r.job_name, r.run_key) for r in b.run_requests or []]
    assert _run_key("B1", ["x/1", "x/2"]) == _run_key("B1", ["x/2", "x/1"])
    assert _run_key("B1", ["x/1", "x/2"]) != _run_key("B1", ["x/1"])


def test_files_through_silver_are_not_requested_again(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    """Batch 0 through silver (done), batch 1 only in bronze (an interrupted run: still
    owed), batch 2 not ingested; CMMS and the CoA documents through silver."""
    b0, b1, b2 = sorted(landed_batches(landing))
    lake = lakehouse.lake()
    spec = lakehouse.spec()
    for bid in (b0, b1):
        for source in BATCH_SOURCES:
            files = files_for_batch(landing, source, bid)
            rep = bronze.ingest_files(lake, landing, source, files, "test")
            assert rep.files_accepted == len(files) > 0
    silver.build_batches(lake, [b0])
    silver.build_lab_results(lake, spec, [b0])
    assert silver.process_telemetry(lake, [b0], spec, "test").files_processed > 0
    bronze.ingest_files(lake, landing, "cmms", files_for_source(landing, "cmms"), "test")
    silver.build_maintenance(lake)
    bronze.ingest_files(lake, landing, "coa", files_for_source(landing, "coa"), "test")
    material_lots.build_material_lots(lake)

    tick = landing_tick(instance, lakehouse)
    # no plant_events_job: CMMS and CoA are done
    assert {r.job_name for r in tick.run_requests or []} == {"batch_ingest_job"}
    assert tick.dynamic_partitions_requests == [
        dg.AddDynamicPartitionsRequest(BATCH_PARTITIONS, [b1, b2])
    ]
    apply_partition_requests(instance, tick)
    assert _covered(tick, instance) == [b1, b2]
    owed = landed_batches(landing)
    assert cursor_of(tick)["pending"] == len(owed[b1]) + len(owed[b2])


def test_lake_maintenance_job_runs_on_a_real_instance(materialized: Materialized) -> None:
    """The nightly compaction job and its schedule are in the code location and run."""
    from pharma_assets.defs.lakehouse.automation import lake_maintenance_job

    d = lakehouse_defs()
    assert d.get_job_def("lake_maintenance_job") is not None
    sched = d.get_schedule_def("lake_maintenance_schedule")
    assert sched.cron_schedule == "30 2 * * *"
    before = materialized.lake.read("silver", "telemetry")
    res = lake_maintenance_job.execute_in_process(
        resources={"lakehouse": materialized.lakehouse}, instance=materialized.instance
    )
    assert res.success
    after = Lake.at(materialized.lake.root).read("silver", "telemetry")
    assert before is not None and after is not None and after.height == before.height
