"""The live path holds up (issue 17): the run queue stays bounded, gold is coalesced, and a
stale or quarantining live path fails loud ERROR checks.

Real parts: ``dg.instance_for_test()`` (runs are added to its SQLite run storage as the
daemon would queue them), Delta tables in a temporary lake, landing zones written by the
simulator (history and live mode).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

# Private on purpose, tests only: Dagster has no public API to put a QUEUED run (which must
# carry a remote origin) into run storage without a daemon and a code server.
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from pharma_assets.defs.lakehouse.automation import (
    LANE_TAG,
    gold_refresh_sensor,
    live_health_sensor,
)
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.defs.ml.automation import contamination_live_schedule
from pharma_assets.lake import bronze, live_health, silver
from pharma_assets.lake.landing_scan import BATCH_SOURCES, files_for_batch
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.live import run_live

from .conftest import (
    apply_partition_requests,
    cursor_of,
    lakehouse_for,
    landed_batches,
    landing_tick,
    sensor_tick,
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def lakehouse(landing: Path, tmp_path: Path) -> LakehouseResource:
    return lakehouse_for(landing, tmp_path / "lake")


def open_run(
    instance: dg.DagsterInstance,
    job_name: str,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.QUEUED,
) -> dg.DagsterRun:
    """A run of ``job_name`` in the instance's run storage, as the daemon queues it."""
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=RegisteredCodeLocationOrigin("pharma_assets"),
            repository_name="__repository__",
        ),
        job_name=job_name,
    )
    return instance.add_run(
        dg.DagsterRun(
            job_name=job_name, run_id=str(uuid.uuid4()), status=status, remote_job_origin=origin
        )
    )


def finish(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    instance.report_run_canceled(run)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]


def _ingest(tick: object) -> list[dg.RunRequest]:
    return [
        r for r in getattr(tick, "run_requests", None) or [] if r.job_name == "batch_ingest_job"
    ]


# ------------------------------------------------------------------------- bounded run queue


def test_many_new_files_give_one_ingestion_run(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    batches = landed_batches(landing)
    n_files = sum(map(len, batches.values()))
    assert len(batches) == 3 and n_files > 30
    tick = landing_tick(instance, lakehouse)
    (run,) = _ingest(tick)
    assert run.tags["pharma/files"] == str(n_files)
    assert run.tags["pharma/batches"] == "3"
    assert run.tags[LANE_TAG] == "batch_ingest_job"


def test_no_ingestion_request_while_a_run_of_the_job_is_open(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    """Issue 17: the sensor requested a new run each tick (a new file set, a new run key)
    while four slots could not finish them: 58 queued runs. Now, with one open, none."""
    first = landing_tick(instance, lakehouse)
    apply_partition_requests(instance, first)
    assert len(_ingest(first)) == 1
    for status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED):
        run = open_run(instance, "batch_ingest_job", status)
        # a new chunk lands while the run is open: nothing new is requested, nothing is lost
        batch = sorted(landed_batches(landing))[0]
        chunk = files_for_batch(landing, "telemetry", batch)[0].path(landing)
        chunk.with_name(f"20991231T00000{status.value[:1]}Z_9.parquet").write_bytes(
            chunk.read_bytes()
        )
        held = landing_tick(instance, lakehouse, first.cursor)
        assert _ingest(held) == []
        assert cursor_of(held)["pending"] > 0  # its files stay owed
        finish(instance, run)
        after = landing_tick(instance, lakehouse, held.cursor)
        (req,) = _ingest(after)  # one run for everything that arrived meanwhile
        assert int(req.tags["pharma/files"]) > int(_ingest(first)[0].tags["pharma/files"]) - 1


def _silver_with_batches(lakehouse: LakehouseResource, landing: Path) -> None:
    lake = lakehouse.lake()
    bid = sorted(landed_batches(landing))[0]
    bronze.ingest_files(lake, landing, "mes", files_for_batch(landing, "mes", bid), "test")
    silver.build_batches(lake, [bid])


def test_gold_refresh_is_coalesced(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, landing: Path
) -> None:
    _silver_with_batches(lakehouse, landing)
    first = sensor_tick(gold_refresh_sensor, instance, lakehouse)
    (req,) = first.run_requests or []
    assert req.tags[LANE_TAG] == "gold_job"
    run = open_run(instance, "gold_job")
    # silver changes again while the gold run is queued: no second gold run
    silver.build_batches(lakehouse.lake(), sorted(landed_batches(landing))[:1])
    held = sensor_tick(gold_refresh_sensor, instance, lakehouse, first.cursor)
    assert not held.run_requests
    assert held.cursor == first.cursor  # the change is still owed
    finish(instance, run)
    after = sensor_tick(gold_refresh_sensor, instance, lakehouse, held.cursor)
    assert len(after.run_requests or []) == 1  # one refresh for every change meanwhile
    again = sensor_tick(gold_refresh_sensor, instance, lakehouse, after.cursor)
    assert not again.run_requests


def test_contamination_schedule_skips_while_its_run_is_open(
    instance: dg.DagsterInstance,
) -> None:
    # closed at the end (see conftest.sensor_tick)
    with dg.build_schedule_context(instance=instance) as ctx:
        req = contamination_live_schedule.evaluate_tick(ctx).run_requests
        assert req and req[0].tags["dagster/priority"] == "10"  # ahead of ingestion in the queue
        run = open_run(instance, "contamination_live_job", dg.DagsterRunStatus.STARTED)
        skipped = contamination_live_schedule.evaluate_tick(ctx)
        assert not skipped.run_requests and skipped.skip_message
        finish(instance, run)
        assert contamination_live_schedule.evaluate_tick(ctx).run_requests


# ---------------------------------------------------------------------- live-path checks


@pytest.fixture
def live_landing(tmp_path: Path) -> tuple[Path, list[str]]:
    """Two running batches written by live mode (3 h ago until 1 h ago)."""
    landing = tmp_path / "live_landing"
    run_live(
        load_plant().with_units(2),
        load_recipes(),
        landing,
        seed=5,
        speed=0,
        chunk_minutes=20,
        hours=2.0,
        start=datetime.now(UTC) - timedelta(hours=3),
    )
    return landing, sorted(landed_batches(landing))


def _through_silver(lh: LakehouseResource, ids: list[str], now: datetime) -> silver.SilverReport:
    lake = lh.lake()
    for bid in ids:
        for source in BATCH_SOURCES:
            bronze.ingest_files(
                lake, lh.landing_dir, source, files_for_batch(lh.landing_dir, source, bid), "test"
            )
    silver.build_batches(lake, ids)
    return silver.process_telemetry(lake, ids, lh.spec(), "test", now=now)


def test_live_checks_pass_on_a_healthy_live_path(
    live_landing: tuple[Path, list[str]], tmp_path: Path
) -> None:
    landing, ids = live_landing
    lh = lakehouse_for(landing, tmp_path / "lake")
    now = datetime.now(UTC)
    rep = _through_silver(lh, ids, now)
    assert rep.rows_valid > 0
    fresh = live_health.telemetry_freshness(lh.lake(), 900, now=now + timedelta(minutes=1))
    assert fresh.passed and fresh.running_batches == 2 and fresh.stale_batches == []
    assert 50 < fresh.max_lag_s < 70
    assert 3600 <= fresh.max_reading_age_s < 3600 + 180  # newest reading: 1 h before now
    alarm = live_health.quarantine_alarm(lh.lake(), now=now + timedelta(minutes=1))
    assert alarm.passed and alarm.ts_in_future_rows == 0 and alarm.window_rows == rep.rows_in
    # 20 minutes without new accepted readings: the running batches are stale
    late = live_health.telemetry_freshness(lh.lake(), 900, now=now + timedelta(minutes=20))
    assert not late.passed and late.stale_batches == ids and late.max_lag_s > 1190


def test_quarantine_alarm_fires_on_readings_from_the_future(
    live_landing: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Issue 17's incident: silver quarantined every live reading as ts_in_future (the
    clock ran ahead of it) and nothing said so. Silver processing them 4 h 'early'
    reproduces it."""
    landing, ids = live_landing
    lh = lakehouse_for(landing, tmp_path / "lake")
    early = datetime.now(UTC) - timedelta(hours=4)
    rep = _through_silver(lh, ids, early)
    assert rep.rows_quarantined > 0.9 * rep.rows_in
    alarm = live_health.quarantine_alarm(lh.lake(), now=early + timedelta(minutes=1))
    assert not alarm.passed
    assert alarm.ts_in_future_rows > 0.9 * rep.rows_in
    assert alarm.reasons[live_health.FUTURE_CHECK] == alarm.ts_in_future_rows
    # all files quarantined: no accepted reading since the first file, so not fresh either
    fresh = live_health.telemetry_freshness(lh.lake(), 900, now=early + timedelta(minutes=20))
    assert not fresh.passed and fresh.stale_batches == ids


def test_live_health_sensor_reports_error_checks(
    live_landing: tuple[Path, list[str]], tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    landing, ids = live_landing
    lh = lakehouse_for(landing, tmp_path / "lake")
    _through_silver(lh, ids, datetime.now(UTC) - timedelta(hours=1))  # processed an hour ago
    tick = sensor_tick(live_health_sensor, instance, lh)
    evals = {e.check_name: e for e in tick.asset_events}  # type: ignore[union-attr]
    assert set(evals) == {"live_telemetry_fresh", "quarantine_rate_alarm"}
    fresh = evals["live_telemetry_fresh"]
    assert not fresh.passed and fresh.severity == dg.AssetCheckSeverity.ERROR
    assert fresh.asset_key == dg.AssetKey(["silver", "telemetry"])
    assert fresh.metadata["max_lag_s"].value > 3500  # type: ignore[attr-defined]
    assert evals["quarantine_rate_alarm"].passed
    # unchanged on the next tick: not recorded again (within 10 minutes)
    again = sensor_tick(live_health_sensor, instance, lh, tick.cursor)
    assert not again.asset_events
