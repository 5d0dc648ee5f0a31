"""Cold path: landing chunks in the existing format, exactly once through crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pharma_assets.gateway.coldpath import ColdPath
from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.gateway.records import GOOD, Reading, now_us
from pharma_assets.twin.config import CANONICAL_TAGS
from pharma_assets.twin.landing import TELEMETRY_COLUMNS

from .brokers import wait_for

S = 1_000_000
REPO = Path(__file__).resolve().parents[2]
T0 = now_us() // S * S - 3600 * S


def _landing(root: Path) -> pl.DataFrame:
    files = sorted((root / "telemetry").rglob("*.parquet"))
    if not files:
        return pl.DataFrame()
    return pl.concat(
        [pl.read_parquet(f).with_columns(pl.lit(str(f)).alias("file")) for f in files],
        how="vertical_relaxed",
    )


def _feed(gw: Gateway, steps: range, units: int = 2, batch: str | None = "B0001") -> None:
    smap = SourceMap("s")
    for k in steps:
        for u in range(units):
            unit = f"BR{u + 1:02d}"
            items = [(t, float(k), None, T0 + k * S, GOOD) for t in ("ph", "temperature_c")]
            gw.ingest("s", smap, unit, f"{unit}-{batch}" if batch else None, items)


def test_flush_writes_existing_chunk_format_per_unit_and_batch(tmp_path: Path) -> None:
    gw = Gateway("SITE01", MemoryHotStore(), ColdPath(tmp_path / "buf", tmp_path / "landing"))
    _feed(gw, range(10))
    _feed(gw, range(10, 12), units=1, batch=None)  # idle unit: hot store only, counted
    res = gw.flush()
    assert res is not None and len(res.files) == 2 and res.readings_landed == 40
    assert res.no_batch == 4 and gw.cold is not None and gw.cold.state["no_batch"] == 4
    f = tmp_path / "landing/telemetry/BR01/BR01-B0001"
    (path,) = sorted(f.glob("*.parquet"))
    assert path.name == time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(T0 / S)) + "_00001.parquet"
    t = pq.read_table(path)
    assert tuple(t.column_names) == TELEMETRY_COLUMNS
    assert str(t.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    df = pl.from_arrow(t)
    assert isinstance(df, pl.DataFrame)
    assert df["tag"].cast(pl.String).to_list()[:2] == ["temperature_c", "ph"]  # dictionary order
    assert set(df["uom"].cast(pl.String)) == {CANONICAL_TAGS["ph"], "degC"}
    assert df.height == 20 and set(df["quality"].cast(pl.String)) == {"good"}
    # the next flush continues the folder's sequence
    _feed(gw, range(12, 14))
    gw.flush()
    assert sorted(p.name[-13:] for p in f.glob("*.parquet")) == ["00001.parquet", "00002.parquet"]


class _CrashAfterFirstFile(ColdPath):
    def _write_group(self, path: Path, rs: list[Reading]) -> None:
        super()._write_group(path, rs)
        raise SystemExit("simulated crash after the first chunk file")


def test_crash_between_files_then_restart_lands_everything_once(tmp_path: Path) -> None:
    buf, landing = tmp_path / "buf", tmp_path / "landing"
    gw = Gateway("SITE01", MemoryHotStore(), _CrashAfterFirstFile(buf, landing))
    _feed(gw, range(30), units=3)
    with pytest.raises(SystemExit):
        gw.flush()
    assert (buf / "flush.json").exists()
    assert len(list(landing.rglob("*.parquet"))) == 1
    # restart: the interrupted plan is finished with the same paths
    gw2 = Gateway("SITE01", MemoryHotStore(), ColdPath(buf, landing))
    assert not (buf / "flush.json").exists()
    _feed(gw2, range(30), units=3)  # the source replays everything: all duplicates
    rej = gw2.sources["s"].rejected
    assert rej["duplicate"] + rej["out_of_order"] == 180 and gw2.sources["s"].accepted == 0
    _feed(gw2, range(30, 35), units=3)
    gw2.flush()
    df = _landing(landing)
    assert df.height == 35 * 3 * 2
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
    assert len(list(landing.rglob("*.parquet"))) == 6


def test_landing_unavailable_buffers_on_disk_and_drains_in_order(tmp_path: Path) -> None:
    buf, landing = tmp_path / "buf", tmp_path / "landing"
    landing.write_text("not a folder (an unmounted share, say)")
    gw = Gateway("SITE01", MemoryHotStore(), ColdPath(buf, landing))
    for k in range(3):
        _feed(gw, range(k * 10, k * 10 + 10), units=1)
        assert gw.flush() is None
    assert gw.flush_errors == 3 and gw.cold is not None and gw.cold.buffer_bytes > 0
    assert len(list((buf / "wal").glob("*.jsonl"))) == 3  # one sealed segment per attempt, kept
    landing.unlink()
    res = gw.flush()
    assert res is not None and res.readings_landed == 60 and gw.cold.buffer_bytes == 0
    files = sorted((landing / "telemetry/BR01/BR01-B0001").glob("*.parquet"))
    firsts = [pl.read_parquet(p)["ts"].min() for p in files]
    assert firsts == sorted(firsts)  # drained in order: sequence numbers follow time
    assert _landing(landing).height == 60


def test_disk_buffer_full_refuses_new_readings_keeps_oldest(tmp_path: Path) -> None:
    buf, landing = tmp_path / "buf", tmp_path / "landing"
    landing.write_text("unavailable")
    gw = Gateway("SITE01", MemoryHotStore(), ColdPath(buf, landing, max_buffer_bytes=2_000))
    _feed(gw, range(40), units=1)
    st = gw.sources["s"]
    assert st.rejected["buffer_full"] > 0
    assert st.accepted + st.rejected["buffer_full"] == 80
    landing.unlink()
    gw.flush()
    df = _landing(landing)
    assert df.height == st.accepted
    assert df["ts"].min() == pl.Series([T0], dtype=pl.Datetime("us", "UTC")).cast(df["ts"].dtype)[0]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_sigkill_mid_stream_then_restart_lands_each_reading_once(tmp_path: Path, mode: str) -> None:
    """``process``: the SIGKILL orphans the flusher process mid-flush; it finishes its
    segment and exits, the restarted gateway recovers the rest (flush.lock between them)."""
    buf, landing = tmp_path / "buf", tmp_path / "landing"
    steps, units = 400, 3
    cmd = [
        sys.executable,
        "-m",
        "pharma_assets_tests.gateway.replay_gateway",
        str(buf),
        str(landing),
        str(T0),
        str(steps),
        str(units),
        mode,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(12)
    kills = 0
    for _ in range(3):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # wait until it has landed something, then kill it at a random moment
        deadline = time.monotonic() + 60
        while not list(landing.rglob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.6))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(30)
    assert kills >= 1
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.startswith("done")
    df = _landing(landing)
    n_tags = len(CANONICAL_TAGS)
    assert df.height == steps * units * n_tags  # nothing lost
    assert df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0  # nothing twice
    k = ((df["ts"].dt.epoch("us") - T0) // S).cast(pl.Int64)
    u = df["unit_id"].cast(pl.String).str.slice(2).cast(pl.Int64) - 1
    j = (
        df["tag"]
        .cast(pl.String)
        .replace_strict({t: i for i, t in enumerate(CANONICAL_TAGS)}, return_dtype=pl.Int64)
    )
    assert (df["value"] == k * 1000.0 + u * 100.0 + j).all()
    assert not list((buf / "wal").glob("*.jsonl")) and not (buf / "flush.json").exists()


def test_flusher_process_lands_what_the_gateway_seals(tmp_path: Path) -> None:
    """The flusher process lands every sealed segment, keeps the counters and the marks in
    state.json (a restart rebuilds the same marks), and drains the rest on stop."""
    buf, landing = tmp_path / "buf", tmp_path / "landing"
    gw = Gateway("SITE01", MemoryHotStore(), ColdPath(buf, landing))
    gw.start_flusher(0.1, process=True)
    assert gw._flush_proc is not None and gw._flush_proc.is_alive()
    _feed(gw, range(30), units=2)
    assert gw.cold is not None
    wait_for(lambda: gw.health()["landed"] == 120, 60, "the flusher process to land 120")
    _feed(gw, range(30, 40), units=2)
    marks = dict(gw._hwm)
    gw.stop()  # seals the last readings; the process lands them and exits
    assert gw._flush_proc is None and gw.cold.state["landed"] == 160
    df = _landing(landing)
    assert df.height == 160 and df.select("unit_id", "tag", "ts").is_duplicated().sum() == 0
    assert not list((buf / "wal").glob("*.jsonl"))
    again = Gateway("SITE01", MemoryHotStore(), ColdPath(buf, landing))
    assert again._hwm == marks and again.cold is not None and again.cold.state["landed"] == 160
