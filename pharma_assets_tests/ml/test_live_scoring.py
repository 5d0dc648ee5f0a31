"""Live contamination scoring of running batches (``ml.live_scoring``) on a real lake.

A completed batch of the simulated plant is replayed as a running one: its timeline is
written up to a given minute into a fresh lake, with a ``running`` batch row. The live path
must score exactly the newest complete 5-minute window, with the same features and score
as the full-history path, once per window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import contamination as C
from pharma_assets.ml import live_scoring as L
from pharma_assets_tests.ml._plant_b import PlantB, plant_b


@pytest.fixture(scope="module")
def plant() -> PlantB:
    return plant_b()


@pytest.fixture(scope="module")
def model(plant: PlantB) -> C.ContaminationModel:
    feats = C.window_features(plant.timeline)
    cutoff, _ = C.split_by_start(plant.batches, holdout_frac=0.4)
    train_ids = C.clean_training_batches(plant.batches, before=cutoff)
    return C.train(feats.filter(pl.col("batch_id").is_in(train_ids)), seed=3)


def _running_lake(plant: PlantB, root: Path, upto_min: int) -> tuple[Lake, str]:
    bid = plant.batches.filter(pl.col("status") == "complete")["batch_id"][-1]
    lake = Lake.at(root)
    b = plant.batches.filter(pl.col("batch_id") == bid).with_columns(
        status=pl.lit("running"), end_ts=pl.lit(None, pl.Datetime("us", "UTC"))
    )
    lake.overwrite("silver", "batches", b)
    tl = plant.timeline.filter((pl.col("batch_id") == bid) & (pl.col("elapsed_min") < upto_min))
    lake.append("silver", "batch_timeline", tl)
    return lake, bid


def test_live_scoring_scores_the_newest_window_once(plant: PlantB, model, tmp_path: Path) -> None:
    lake, bid = _running_lake(plant, tmp_path / "lake", upto_min=4500)
    res = L.score_running(lake, model, "7")
    assert res.running_batches == 1 and res.windows_scored == 1 and res.skipped is None
    live = lake.read("gold", "contamination_live")
    assert live is not None and live.height == 1
    # the same window scored from the full history (training path) gives the same score
    full = C.window_features(plant.timeline.filter(pl.col("batch_id") == bid))
    ref = C.score(model, full.filter(pl.col("window") == 899), "7")
    assert live["window_end_ts"][0] == ref["window_end_ts"][0]
    np.testing.assert_allclose(live["anomaly_score"][0], ref["anomaly_score"][0], rtol=1e-9)
    assert live["alarm"][0] == ref["alarm"][0] and live["model_version"][0] == "7"
    # nothing new: nothing appended
    again = L.score_running(Lake.at(lake.root), model, "7")
    assert again.windows_scored == 0 and again.skipped == "newest windows already scored"
    assert lake.read("gold", "contamination_live").height == 1  # type: ignore[union-attr]
    # five more minutes of data: the next window is scored
    more = plant.timeline.filter(
        (pl.col("batch_id") == bid) & pl.col("elapsed_min").is_between(4500, 4504)
    )
    lake.append("silver", "batch_timeline", more)
    nxt = L.score_running(Lake.at(lake.root), model, "7")
    assert nxt.windows_scored == 1
    live = Lake.at(lake.root).read("gold", "contamination_live")
    assert live is not None and live.height == 2
    assert live["window_end_ts"].is_unique().all()


def test_live_scoring_reads_only_the_tail(plant: PlantB, tmp_path: Path) -> None:
    lake, bid = _running_lake(plant, tmp_path / "lake", upto_min=4500)
    tail = L.timeline_tail(lake, [bid])
    assert tail["elapsed_min"].min() >= 4499 - (L.BASELINE_MIN + 2 * L.WINDOW_MIN)
    assert tail["elapsed_min"].max() == 4499


def test_no_running_batch_is_a_clear_skip(plant: PlantB, model, tmp_path: Path) -> None:
    lake = Lake.at(tmp_path / "lake")
    lake.overwrite("silver", "batches", plant.batches)  # all complete
    res = L.score_running(lake, model, "1")
    assert res.skipped == "no running batch" and res.windows_scored == 0
