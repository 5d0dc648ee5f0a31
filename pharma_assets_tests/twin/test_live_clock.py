"""Live mode never writes the future: a clock started in the past runs accelerated until it
reaches the wall clock, then at real time (issue 17: the demo's 60x clock overtook the real
clock after ~42 minutes and silver quarantined every reading as ts_in_future)."""

from __future__ import annotations

import csv
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.live import catch_up, run_live

WALL0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class FakeWall:
    """A wall clock that moves only when the simulator sleeps; at every sleep it checks that
    nothing written so far carries a timestamp later than the wall clock."""

    def __init__(self, landing: Path) -> None:
        self.now = WALL0
        self.landing = landing
        self.seen: set[Path] = set()
        self.newest: datetime | None = None
        self.files = 0

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.check()
        self.now += timedelta(seconds=max(seconds, 0.0))

    def check(self) -> None:
        for p in sorted(self.landing.rglob("*")):
            if p in self.seen or not p.is_file() or p.name.startswith("."):
                continue
            self.seen.add(p)
            self.files += 1
            latest = _latest_ts(p)
            assert latest <= self.now, f"{p.name}: {latest} written at wall clock {self.now}"
            self.newest = latest if self.newest is None else max(self.newest, latest)


def _latest_ts(p: Path) -> datetime:
    if p.suffix == ".parquet":
        return pl.read_parquet(p)["ts"].max()  # type: ignore[return-value]
    if p.suffix == ".csv":
        with open(p) as f:
            rows = list(csv.DictReader(f))
        return max(datetime.fromisoformat(r["sample_ts"]) for r in rows)
    if p.suffix == ".jsonl":
        events = [json.loads(line) for line in p.read_text().splitlines()]
        return max(datetime.fromisoformat(e["event_ts"]) for e in events)
    raise AssertionError(f"unexpected landing file {p}")


@pytest.mark.parametrize("speed", [600.0, 0.0])
def test_live_clock_started_in_the_past_never_writes_the_future(
    tmp_path: Path, speed: float, caplog: pytest.LogCaptureFixture
) -> None:
    landing = tmp_path / "landing"
    wall = FakeWall(landing)
    start = WALL0 - timedelta(hours=2)
    with caplog.at_level(logging.INFO, logger="pharma_assets.twin.live"):
        stats = run_live(
            load_plant().with_units(2),
            load_recipes(),
            landing,
            seed=3,
            speed=speed,
            chunk_minutes=10,
            hours=5.0,
            start=start,
            sleep=wall.sleep,
            clock=wall,
        )
    wall.check()
    assert wall.files > 20 and wall.newest is not None  # telemetry, MES and LIMS were written
    assert {p.suffix for p in wall.seen} >= {".parquet", ".jsonl", ".csv"}
    # 5 process hours from 2 h behind: caught up, then held to real time (3 h of waiting)
    last_step = start + timedelta(hours=stats.process_hours) - timedelta(minutes=1)
    assert last_step <= wall.now <= last_step + timedelta(minutes=2)
    assert stats.waited_for_wall_clock_s > 3600  # held back for most of the last 3 h
    assert wall.newest > WALL0 + timedelta(hours=2.5)  # it kept producing after catching up
    if speed:
        assert "reaches the wall clock at about" in caplog.text
        assert "runs at real time from then on" in caplog.text


def test_catch_up_time() -> None:
    # 24 h behind at 60x: the process clock gains 59 s per second, so 24 h / 59 later
    meet = catch_up(WALL0 - timedelta(hours=24), WALL0, 60)
    assert meet is not None
    assert abs((meet - WALL0).total_seconds() - 24 * 3600 / 59) < 1e-6
    assert catch_up(WALL0 + timedelta(hours=1), WALL0, 60) is None  # ahead: it waits
    assert catch_up(WALL0 - timedelta(hours=1), WALL0, 1) is None  # real time never catches up
