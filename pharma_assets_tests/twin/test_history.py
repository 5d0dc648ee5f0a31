"""History mode end to end: landing files, reproducibility, counts, what-if and live mode."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from importlib import resources

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.twin.config import ConfigError, load_plant, load_recipes
from pharma_assets.twin.engine import BatchInputs, Engine
from pharma_assets.twin.history import simulate_history
from pharma_assets.twin.landing import TELEMETRY_COLUMNS
from pharma_assets.twin.live import next_sequence, run_live
from pharma_assets.twin.plant import nominal_inputs

START = datetime(2026, 1, 5, tzinfo=UTC)


def _sim(tmp, seed=3, batches=4, units=2):
    plant = load_plant().with_units(units)
    return simulate_history(
        plant, load_recipes(), batches, seed, tmp / "landing", tmp / "truth", start=START
    )


@pytest.fixture(scope="module")
def small_history(tmp_path_factory):
    return _sim(tmp_path_factory.mktemp("hist"))


def test_landing_layout_and_counts_reconcile(small_history):
    res = small_history
    files = sorted((res.landing / "telemetry").rglob("*.parquet"))
    assert files
    df = pl.read_parquet(files)
    assert tuple(df.columns) == TELEMETRY_COLUMNS
    assert df.height == res.readings_written  # every reading written is in the files
    assert set(df["tag"].unique()) == {t.tag for t in load_plant().tags}
    assert df["ts"].dtype == pl.Datetime("us", "UTC")
    assert set(df["quality"].unique()) <= {"good", "uncertain", "bad"}
    assert df.filter(pl.col("quality") == "good").height / df.height > 0.99
    # one row per (batch, tag, ts); each batch's chunks in order and inside its window
    assert df.select(["batch_id", "tag", "ts"]).is_duplicated().sum() == 0
    for b in res.plan.batches:
        bf = sorted((res.landing / "telemetry" / b.unit_id / b.batch_id).glob("*.parquet"))
        assert [p.name for p in bf] == sorted(p.name for p in bf)
        got = df.filter(pl.col("batch_id") == b.batch_id)
        assert got["ts"].min() == b.start.replace(microsecond=got["ts"].min().microsecond)
        assert got["ts"].max() < b.end
    # MES: start, phases and end for every batch; LIMS: daily samples and release
    for b in res.plan.batches:
        (mes,) = (res.landing / "mes" / b.unit_id / b.batch_id).glob("*.jsonl")
        events = [json.loads(line) for line in mes.read_text().splitlines()]
        assert events[0]["event_type"] == "batch_start" and events[-1]["event_type"] == "batch_end"
        assert events[0]["recipe_id"] == b.recipe.recipe_id and events[-1]["status"] == b.status
        assert set(events[0]["material_lots"]) == {
            "media_lot",
            "feed_lot",
            "inoculum_lot",
            "base_lot",
        }
        (lims,) = (res.landing / "lims" / b.unit_id / b.batch_id).glob("*.csv")
        lab = pl.read_csv(lims)
        assert lab.filter(pl.col("sample_type") == "in_process")["sample_id"].n_unique() >= int(
            b.end_h // 24
        )
        assert (
            "aggregates_hmw_pct"
            in lab.filter(pl.col("sample_type") == "release")["analyte"].to_list()
        )
    cmms = [
        json.loads(x)
        for p in (res.landing / "cmms").rglob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert len(cmms) == len(res.plan.maintenance)
    truth = pl.read_parquet(res.ground_truth / "batches.parquet")
    assert truth.height == len(res.plan.batches)
    assert (res.ground_truth / "fault_labels.parquet").exists()


def test_same_seed_same_plant_and_other_seed_differs(small_history, tmp_path):
    again = _sim(tmp_path / "a")
    other = _sim(tmp_path / "b", seed=4)

    def tele(res):
        return pl.read_parquet(sorted((res.landing / "telemetry").rglob("*.parquet"))).sort(
            ["batch_id", "tag", "ts"]
        )

    first = tele(small_history)
    assert first.equals(tele(again))
    assert not first.equals(tele(other))
    for sub in ("mes", "lims", "cmms"):
        a = sorted(
            p.relative_to(small_history.landing) for p in (small_history.landing / sub).rglob("*.*")
        )
        b = sorted(p.relative_to(again.landing) for p in (again.landing / sub).rglob("*.*"))
        assert a == b
        for p in a:
            assert (small_history.landing / p).read_bytes() == (again.landing / p).read_bytes()


def test_sampling_period_must_divide_tag_periods(tmp_path):
    with pytest.raises(ValueError, match="not a multiple"):
        simulate_history(
            load_plant().with_units(1), load_recipes(), 1, 0, tmp_path, period_s=7.0, start=START
        )


def test_what_if_continues_a_batch_from_its_state():
    recipe = load_recipes().recipes[0]
    row = nominal_inputs(recipe)
    u = Engine(BatchInputs(**{k: np.array([v]) for k, v in row.items()}), seed=0)
    u.run(4 * 1440)  # day 4, before the temperature shift
    snap = u.snapshot(0)
    base = Engine.from_snapshot(snap, seed=1)
    no_shift = Engine.from_snapshot(snap, seed=1, T_prod=recipe.setpoints.temperature_c)
    assert base.state.k == no_shift.state.k == 4 * 1440
    assert float(base.state.Xv[0]) == float(snap.state.Xv[0])
    ra, rb = base.run(6 * 1440), no_shift.run(6 * 1440)
    assert abs(float(ra["T"][-1, 0]) - 33.0) < 0.2 and abs(float(rb["T"][-1, 0]) - 36.5) < 0.2
    # without the shift cells keep growing faster but make less antibody per cell
    assert float(rb["Xv"][: 2 * 1440, 0].max()) > float(ra["Xv"][: 2 * 1440, 0].max())
    assert snap.state.k == 4 * 1440  # the snapshot itself is untouched


def test_live_mode_writes_chunks_and_continues_batch_numbering(small_history, tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(small_history.landing, landing)
    plant = load_plant().with_units(2)
    expected = {u.unit_id: next_sequence(landing, u.unit_id) for u in plant.units}
    assert expected["BR01"] == 3  # 4 batches over 2 units already landed
    seen = []
    stats = run_live(
        plant,
        load_recipes(),
        landing,
        seed=1,
        speed=0,
        chunk_minutes=30,
        hours=2.0,
        on_chunk=seen.append,
        start=datetime.now(UTC) - timedelta(hours=3),  # in the past: live never writes the future
    )
    assert stats.batches_started == 2
    new = pl.read_parquet(seen)
    assert set(new["batch_id"].unique()) == {
        f"BR01-B{expected['BR01']:04d}",
        f"BR02-B{expected['BR02']:04d}",
    }
    assert len(seen) >= 4  # 30-min chunks over ~2 h per unit
    assert new.select(["batch_id", "tag", "ts"]).is_duplicated().sum() == 0
    (labels,) = (tmp_path / "ground_truth").glob("live_fault_labels_*.parquet")
    assert set(pl.read_parquet(labels)["batch_id"].to_list()) <= set(new["batch_id"].unique())
    starts = list((landing / "mes" / "BR01" / f"BR01-B{expected['BR01']:04d}").glob("*.jsonl"))
    assert (
        starts and json.loads(starts[0].read_text().splitlines()[0])["event_type"] == "batch_start"
    )


def test_cli_simulate(tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "simulate",
            "--units",
            "2",
            "--batches",
            "2",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "landing"),
            "--start",
            "2026-02-01T00:00Z",
        ],
    )
    assert r.exit_code == 0, r.output
    batch_dirs = [p for p in (tmp_path / "landing" / "telemetry").glob("*/*") if p.is_dir()]
    assert len(batch_dirs) == 2 and all(any(d.glob("*.parquet")) for d in batch_dirs)
    assert (tmp_path / "ground_truth" / "fault_labels.parquet").exists()
    bad = CliRunner().invoke(
        app, ["simulate", "--batches", "1", "--out", str(tmp_path / "x"), "--period", "abc"]
    )
    assert bad.exit_code != 0 and "not a duration" in bad.output


def test_invalid_plant_file_names_the_field(tmp_path):
    text = (resources.files("pharma_assets.twin") / "config" / "plant_default.yaml").read_text()
    p = tmp_path / "plant.yaml"
    p.write_text(text.replace("tag: ph,", "tag: ph_typo,"))
    with pytest.raises(ConfigError, match="unknown tag 'ph_typo'"):
        load_plant(p)
    p.write_text(text.replace("working_volume_l: 2000}", "working_volume_l: -5}", 1))
    with pytest.raises(ConfigError, match="working_volume_l"):
        load_plant(p)
