"""The production instance (deploy/production/dagster.yaml) on a real PostgreSQL server.

Each test that needs the server gets a fresh database ``pharma_twin_test_<random>``, dropped
afterwards. Without a reachable server (default 127.0.0.1:5432, user postgres; override with
PHARMA_TEST_PG_HOST/PORT/USER/PASSWORD) those tests are skipped with the reason; the local
SQLite instance never needs PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from pharma_assets.pipeline import run_pipeline

from .conftest import (
    BATCH_PARTITIONS,
    apply_partition_requests,
    cursor_of,
    lakehouse_for,
    landed_batches,
    landing_tick,
    requested_batches,
)

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_CONFIG = REPO / "deploy" / "production" / "dagster.yaml"
PG = {
    "host": os.environ.get("PHARMA_TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("PHARMA_TEST_PG_PORT", "5432")),
    "user": os.environ.get("PHARMA_TEST_PG_USER", "postgres"),
    "password": os.environ.get("PHARMA_TEST_PG_PASSWORD", ""),
}


def _connect(dbname: str) -> Any:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    except psycopg2.OperationalError as e:
        reason = " ".join(str(e).split())
        pytest.skip(f"PostgreSQL not reachable at {PG['host']}:{PG['port']}: {reason}")
    conn.autocommit = True
    return conn


def _query(dbname: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = _connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    admin = _connect("postgres")
    name = f"pharma_twin_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def pg_instance(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The production config as deployed: copied to a DAGSTER_HOME, settings from env vars."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PRODUCTION_CONFIG, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_HOST", PG["host"])
    monkeypatch.setenv("DAGSTER_PG_PORT", str(PG["port"]))
    monkeypatch.setenv("DAGSTER_PG_USER", PG["user"])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", PG["password"])
    monkeypatch.setenv("DAGSTER_PG_DB", pg_database)
    # entered, as the CLI does: the current DefsStateStorage is this instance's while the test
    # loads definitions (disposed on exit)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_production_config_keeps_the_local_run_and_sensor_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No server needed: the same retries/sensors/schedules as ./dagster.yaml, PostgreSQL
    settings from env vars (that Dagster accepts the file is shown by loading an instance
    from it in ``test_instance_from_production_config_uses_postgres``)."""
    prod = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    assert "postgres" in prod["storage"]
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    for section in ("run_retries", "run_monitoring", "sensors", "schedules", "telemetry"):
        assert prod[section] == local[section], section
    assert prod["run_coordinator"]["class"] == "QueuedRunCoordinator"
    # the lanes that keep the live queue bounded hold in production too (not sensor names,
    # which miss schedules and runs of the same job launched another way)
    prod_limits = prod["run_coordinator"]["config"]["tag_concurrency_limits"]
    for limit in local["run_coordinator"]["config"]["tag_concurrency_limits"]:
        assert limit in prod_limits, limit
    assert not [lim for lim in prod_limits if lim["key"] == "dagster/sensor_name"]
    db = prod["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"  # the driver dagster-postgres installs
    assert {k: v["env"] for k, v in db.items() if isinstance(v, dict)} == {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
        "db_name": "DAGSTER_PG_DB",
    }


def test_instance_from_production_config_uses_postgres(pg_instance: dg.DagsterInstance) -> None:
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(pg_instance.run_coordinator, dg.QueuedRunCoordinator)
    assert pg_instance.run_retries_enabled and pg_instance.run_retries_max_retries == 2
    limits = pg_instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
    lane = {"key": "pharma/lane", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert lane in limits


def test_run_pipeline_on_postgres_instance(
    pg_instance: dg.DagsterInstance, pg_database: str, landing: Path, tmp_path: Path
) -> None:
    lakehouse = lakehouse_for(landing, tmp_path / "lake")
    result = run_pipeline(lakehouse, pg_instance)
    batches = sorted(landed_batches(landing))
    assert result.ok, result.failed
    assert result.batches == batches
    runs = [pg_instance.get_run_by_id(rid) for rid in result.runs]
    assert [(r.job_name, r.status) for r in runs if r] == [
        ("batch_ingest_job", dg.DagsterRunStatus.SUCCESS),
        ("plant_events_job", dg.DagsterRunStatus.SUCCESS),
        ("gold_job", dg.DagsterRunStatus.SUCCESS),
    ]
    assert sorted(pg_instance.get_dynamic_partitions(BATCH_PARTITIONS)) == batches
    evaluations = [
        e.dagster_event.event_specific_data
        for rid in result.runs
        for e in pg_instance.all_logs(rid, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event is not None
    ]
    # 8 + no_held_amendments on the three bronze batch assets + batch_start_landed
    assert len(evaluations) == 12 and all(e.passed for e in evaluations)
    summary = lakehouse.lake().read("gold", "batch_summary")
    assert summary is not None and sorted(summary["batch_id"].to_list()) == batches

    # and it is all in PostgreSQL, not somewhere else
    assert sorted(r[0] for r in _query(pg_database, "SELECT run_id FROM runs")) == sorted(
        result.runs
    )
    checks = _query(
        pg_database,
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION'",
    )
    assert checks == [(12,)]
    keys = _query(
        pg_database,
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
        (BATCH_PARTITIONS,),
    )
    assert sorted(k[0] for k in keys) == batches

    # a sensor tick afterwards finds nothing left to ingest
    tick = landing_tick(pg_instance, lakehouse)
    assert list(tick.run_requests or []) == []
    assert list(tick.dynamic_partitions_requests or []) == []


def test_landing_sensor_on_postgres_instance(
    pg_instance: dg.DagsterInstance, pg_database: str, landing: Path, tmp_path: Path
) -> None:
    lakehouse = lakehouse_for(landing, tmp_path / "lake")
    batches = sorted(landed_batches(landing))
    first = landing_tick(pg_instance, lakehouse)
    assert first.dynamic_partitions_requests == [
        dg.AddDynamicPartitionsRequest(BATCH_PARTITIONS, batches)
    ]
    apply_partition_requests(pg_instance, first)
    assert list(pg_instance.get_dynamic_partitions(BATCH_PARTITIONS)) == batches
    requests = list(first.run_requests or [])
    assert sorted(r.job_name for r in requests) == ["batch_ingest_job", "plant_events_job"]
    covered = [
        b
        for r in requests
        if r.job_name == "batch_ingest_job"
        for b in requested_batches(r, pg_instance)
    ]
    assert covered == batches
    keys = _query(pg_database, "SELECT partition FROM dynamic_partitions")
    assert sorted(k[0] for k in keys) == batches

    # nothing ran yet: the same runs again, under the same run keys, and no new partitions
    second = landing_tick(pg_instance, lakehouse, first.cursor)
    assert sorted(r.run_key or "" for r in second.run_requests or []) == sorted(
        r.run_key or "" for r in requests
    )
    assert list(second.dynamic_partitions_requests or []) == []
    assert cursor_of(second) == cursor_of(first)
    assert cursor_of(first)["hwm_ns"] > 0 and cursor_of(first)["pending"] > 0
