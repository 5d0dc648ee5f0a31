"""A restarted live session closes the batches the last one left running and resumes after
the data already landed (issue 17: batches left 'running' when a demo stopped kept the
live_telemetry_fresh check failing for ever after a restart)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pharma_assets.lake.live_health import telemetry_freshness
from pharma_assets.lake.storage import Lake
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.live import RESTART_ABORT_REASON, open_batches, run_live
from pharma_assets_tests.lake.conftest import ingest_all

WALL = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _events(landing: Path, batch_id: str) -> list[dict]:
    unit = batch_id.split("-")[0]
    return [
        json.loads(line)
        for f in sorted((landing / "mes" / unit / batch_id).glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def _newest_ts(landing: Path, unit: str) -> datetime:
    return max(
        pl.read_parquet(p)["ts"].max() for p in (landing / "telemetry" / unit).rglob("*.parquet")
    )  # type: ignore[type-var]


def test_restart_closes_open_batches_and_resumes_after_landed_data(tmp_path: Path) -> None:
    landing, lake_dir = tmp_path / "landing", tmp_path / "lake"
    plant, recipes = load_plant().with_units(2), load_recipes()
    start = WALL - timedelta(days=3)

    def session(hours: float) -> None:  # the same request both times, as `make demo` makes it
        run_live(
            plant,
            recipes,
            landing,
            seed=3,
            speed=0.0,
            chunk_minutes=30,
            hours=hours,
            start=start,
            clock=lambda: WALL,
        )

    session(20.0)  # stopped mid-batch: each unit's first batch is still running
    left = {b.batch_id: b for u in ("BR01", "BR02") for b in open_batches(landing, u)}
    assert len(left) == 2, left
    newest_before = {u: _newest_ts(landing, u) for u in ("BR01", "BR02")}

    session(6.0)  # restarted with the same start time
    assert not [b for u in ("BR01", "BR02") for b in open_batches(landing, u) if b.batch_id in left]
    for batch_id, ob in left.items():
        end = [e for e in _events(landing, batch_id) if e["event_type"] == "batch_end"]
        assert len(end) == 1, end
        assert end[0]["status"] == "aborted" and end[0]["reason"] == RESTART_ABORT_REASON
        assert ob.newest is not None and datetime.fromisoformat(end[0]["event_ts"]) > ob.newest
        start_ev = next(e for e in _events(landing, batch_id) if e["event_type"] == "batch_start")
        assert (end[0]["site_id"], end[0]["area_id"]) == (start_ev["site_id"], start_ev["area_id"])
    # the new session's readings all come after the old ones: no two batches overlap on a unit
    for unit in ("BR01", "BR02"):
        new_batches = [p for p in (landing / "telemetry" / unit).iterdir() if p.name not in left]
        assert new_batches, unit
        first_new = min(
            pl.read_parquet(p)["ts"].min()  # type: ignore[type-var]
            for b in new_batches
            for p in b.glob("*.parquet")
        )
        assert first_new > newest_before[unit]

    lake = Lake.at(lake_dir)
    ingest_all(lake, landing)
    batches = lake.read("silver", "batches")
    status = dict(zip(batches["batch_id"], batches["status"], strict=True))
    assert all(status[b] == "aborted" for b in left), status
    # only the new session's batches are running, so freshness judges those, not the relics
    fresh = telemetry_freshness(lake, max_lag_s=1e9)
    assert fresh.running_batches == sum(s == "running" for s in status.values()) == 2
