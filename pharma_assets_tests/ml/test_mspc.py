"""Batch MSPC (evolving multiway PCA) on a small simulated plant through the real lake.

Good batches (what the plant knows: complete and right first time) train the model; every
other batch is held out. Ground-truth fault labels are used only to evaluate.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import mspc as M
from pharma_assets_tests.ml._plant_b import PlantB, plant_b

N_TRAIN = 6


@pytest.fixture(scope="module")
def plant() -> PlantB:
    return plant_b()


@pytest.fixture(scope="module")
def split(plant: PlantB) -> tuple[list[str], list[str]]:
    good = M.good_batches(plant.batch_summary)
    starts = plant.batches.filter(pl.col("batch_id").is_in(good)).sort("start_ts")
    train_ids = starts["batch_id"].head(N_TRAIN).to_list()
    held = sorted(set(plant.batches["batch_id"].to_list()) - set(train_ids))
    return sorted(train_ids), held


@pytest.fixture(scope="module")
def model(plant: PlantB, split) -> M.MSPCModel:
    tl = plant.timeline.filter(pl.col("batch_id").is_in(split[0]))
    return M.train(tl, plant.batches, split[0])


@pytest.fixture(scope="module")
def monitored(plant: PlantB, model: M.MSPCModel, split) -> pl.DataFrame:
    tl = plant.timeline.filter(pl.col("batch_id").is_in(split[1]))
    return M.monitor(model, tl, plant.batches, model_version="1")


def _recipe(model: M.MSPCModel) -> M.RecipeModel:
    return next(iter(model.recipes.values()))


def _clean_held(plant: PlantB, split) -> list[str]:
    faulted = set(plant.fault_labels["batch_id"].drop_nulls().to_list())
    return [
        b
        for b in split[1]
        if b not in faulted
        and plant.batches.filter(pl.col("batch_id") == b)["status"][0] == "complete"
    ]


def _same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Equal monitoring rows (floats to 1e-9: polars' parallel means may differ in the last
    bits between runs)."""
    assert a["elapsed_h"].to_list() == b["elapsed_h"].to_list()
    for c in ("t2", "t2_limit", "spe", "spe_limit"):
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9, atol=1e-12)
    assert a["alarm"].to_list() == b["alarm"].to_list()
    ta = [x.split(",")[0].split(":")[0] for x in a["top_contributors"].to_list()]
    tb = [x.split(",")[0].split(":")[0] for x in b["top_contributors"].to_list()]
    assert ta == tb


def test_model_trained_on_good_batches_only(model: M.MSPCModel, split, plant: PlantB) -> None:
    r = _recipe(model)
    assert r.batch_ids == split[0]
    rft = plant.batch_summary.filter(pl.col("batch_id").is_in(split[0]))
    assert rft["right_first_time"].all() and (rft["status"] == "complete").all()
    assert r.n_comp.min() >= 1 and r.n_comp.max() <= model.max_components
    assert np.all(r.cev[r.n_comp < model.max_components] >= model.cev_target - 1e-9)


def test_limits_vary_with_maturity(model: M.MSPCModel) -> None:
    r = _recipe(model)
    assert r.spe_limit.shape == r.t2_limit.shape == (r.n_hours,)
    assert np.all(np.isfinite(r.spe_limit)) and np.all(r.spe_limit > 0)
    assert np.unique(np.round(r.spe_limit, 6)).size > r.n_hours // 4
    assert r.spe_limit.max() / r.spe_limit.min() > 1.5
    # T² limit is never below the F approximation for a new batch at the chosen alpha
    from scipy import stats

    n = len(r.batch_ids)
    a = r.n_comp
    f_lim = a * (n * n - 1) / (n * (n - a)) * stats.f.ppf(model.alpha, a, n - a)
    assert np.all(r.t2_limit >= f_lim - 1e-9)


def test_out_of_fold_false_alarm_rate_of_good_batches_is_small(model: M.MSPCModel) -> None:
    r = _recipe(model)
    alarm = (r.cv_t2 > r.t2_limit) | (r.cv_spe > r.spe_limit)
    assert float(np.mean(alarm)) < 0.05


def test_scores_contract(monitored: pl.DataFrame) -> None:
    table = M.scores_table(monitored)
    need = {
        "batch_id",
        "unit_id",
        "elapsed_h",
        "t2",
        "t2_limit",
        "spe",
        "spe_limit",
        "alarm",
        "top_contributors",
        "model_name",
        "model_version",
        "scored_at",
    }
    assert need <= set(table.columns)
    assert not any(c.startswith("_") for c in table.columns)
    assert table.select("batch_id", "elapsed_h").is_duplicated().sum() == 0
    a = table["alarm"]
    assert (a == ((table["t2"] > table["t2_limit"]) | (table["spe"] > table["spe_limit"]))).all()
    first = table["top_contributors"][0].split(",")
    assert len(first) == 3 and all(":" in x for x in first)


def test_no_peeking_monitor_unchanged_by_truncation(
    plant: PlantB, model: M.MSPCModel, monitored: pl.DataFrame
) -> None:
    bid = plant.fault_labels.filter(pl.col("fault_type") == "contamination")["batch_id"][0]
    tl = plant.timeline.filter(pl.col("batch_id") == bid)
    k = int(tl["elapsed_min"].max() // 60 * 0.7)
    trunc = M.monitor(model, tl.filter(pl.col("elapsed_min") < 60 * k + 37), plant.batches)
    full = monitored.filter((pl.col("batch_id") == bid) & (pl.col("elapsed_h") <= k))
    assert trunc.height == k == full.height
    _same(trunc, full)


def test_contributions_sum_to_one_and_name_the_perturbed_tag(
    plant: PlantB, model: M.MSPCModel, split
) -> None:
    bid = _clean_held(plant, split)[0]
    tl = plant.timeline.filter(pl.col("batch_id") == bid)
    base = M.monitor(model, tl, plant.batches)
    hit = tl.with_columns(
        pl.when(pl.col("elapsed_min") >= 100 * 60)
        .then(pl.col("temperature_c") + 2.5)
        .otherwise(pl.col("temperature_c"))
        .alias("temperature_c")
    )
    mon = M.monitor(model, hit, plant.batches)
    before = mon.filter(pl.col("elapsed_h") <= 100)
    after = mon.filter(pl.col("elapsed_h") > 100)
    _same(before, base.filter(pl.col("elapsed_h") <= 100))
    # 6 good batches give wide limits; a 2.5 K step (30 sd) still alarms most hours
    assert after["alarm"].mean() > 0.6  # type: ignore[operator]
    assert base.filter(pl.col("elapsed_h") > 100)["alarm"].mean() < 0.1  # type: ignore[operator]
    for r in after.filter(pl.col("alarm")).iter_rows(named=True):
        assert r["top_contributors"].split(",")[0].startswith("temperature_c:")
        for col in ("_t2_contrib", "_spe_contrib"):
            assert sum(json.loads(r[col]).values()) == pytest.approx(1.0, abs=1e-3)
    al = M.alarms(mon)
    assert al.height > 0
    for r in al.iter_rows(named=True):
        c = json.loads(r["contributions"])
        assert sum(c.values()) == pytest.approx(1.0, abs=1e-3)
        if r["statistic"] == "spe":
            assert max(c, key=c.get) == "temperature_c"  # type: ignore[arg-type]


def test_alarms_one_row_per_statistic_beyond_limit(monitored: pl.DataFrame) -> None:
    al = M.alarms(monitored)
    n = int((monitored["t2"] > monitored["t2_limit"]).sum()) + int(
        (monitored["spe"] > monitored["spe_limit"]).sum()
    )
    assert al.height == n
    assert set(al["statistic"].unique().to_list()) <= {"t2", "spe"}
    assert (al["value"] > al["limit"]).all()
    assert set(al.columns) >= {
        "batch_id",
        "unit_id",
        "elapsed_h",
        "statistic",
        "value",
        "limit",
        "contributions",
        "model_version",
    }


def test_golden_batch_envelope(plant: PlantB, model: M.MSPCModel, split) -> None:
    env = M.envelope(model, "1")
    r = _recipe(model)
    assert env.height == r.n_hours * len(r.tags)
    assert (env["lo"] <= env["mean"]).all() and (env["mean"] <= env["hi"]).all()
    assert env["n_batches"].max() == len(split[0])
    # independently: mean and sd of temperature at hour 200 over the training batches
    tl = plant.timeline.filter(
        pl.col("batch_id").is_in(split[0]) & (pl.col("elapsed_min") // 60 == 199)
    )
    per = tl.group_by("batch_id", "elapsed_min").agg(pl.col("temperature_c").mean())
    hourly = per.group_by("batch_id").agg(pl.col("temperature_c").mean())["temperature_c"]
    row = env.filter((pl.col("tag") == "temperature_c") & (pl.col("elapsed_h") == 200.0))
    assert row["mean"][0] == pytest.approx(hourly.mean())
    assert row["hi"][0] - row["mean"][0] == pytest.approx(3 * hourly.std())  # type: ignore[operator]


def test_detects_faults_and_few_false_alarms_on_held_out(
    plant: PlantB, monitored: pl.DataFrame
) -> None:
    ev = M.evaluate(monitored, plant.fault_labels, plant.batches, consecutive=3)
    assert ev["n_faults"] >= 3
    assert ev["detection_rate"] >= 0.5
    assert ev["detection_rate.contamination"] == 1.0
    assert ev["n_clean_batches"] >= 1
    assert ev["hour_false_alarm_rate"] < 0.05


def _plain_eval(stored: pl.DataFrame, labels: pl.DataFrame, batches: pl.DataFrame) -> dict:
    """Detection and false-alarm figures recomputed with plain Python (3 consecutive hours of
    an alarm run that starts after onset, 6 h grace after the fault end)."""
    start = {r["batch_id"]: r["start_ts"] for r in batches.iter_rows(named=True)}
    rows: dict[str, list[tuple[float, bool]]] = {}
    for r in stored.iter_rows(named=True):
        rows.setdefault(r["batch_id"], []).append((r["elapsed_h"], r["alarm"]))
    confirmed: dict[str, list[tuple[object, bool, object]]] = {}
    for b, lst in rows.items():
        lst.sort()
        out, run, run_start = [], 0, None
        for h, a in lst:
            ts = start[b] + timedelta(hours=h)
            if a and run == 0:
                run_start = ts
            run = run + 1 if a else 0
            out.append((ts, run >= 3, run_start))
        confirmed[b] = out
    faulted = set(labels["batch_id"].drop_nulls().to_list())
    det, n = 0, 0
    for f in labels.iter_rows(named=True):
        b = f["batch_id"]
        if b not in confirmed:
            continue
        if not any(ts > f["onset_ts"] for ts, _, _ in confirmed[b]):  # type: ignore[operator]
            continue
        n += 1
        hi = None if f["end_ts"] is None else f["end_ts"] + timedelta(hours=6)
        det += any(
            c and rs > f["onset_ts"] and (hi is None or ts <= hi)  # type: ignore[operator]
            for ts, c, rs in confirmed[b]
        )
    clean = [b for b in rows if b not in faulted]
    alarms = sum(a for b in clean for _, a in rows[b])
    hours = sum(len(rows[b]) for b in clean)
    return {
        "detection_rate": det / n,
        "hour_false_alarm_rate": alarms / hours,
        "batch_false_alarm_share": sum(any(c for _, c, _ in confirmed[b]) for b in clean)
        / len(clean),
    }


def test_metrics_recomputed_independently_from_stored_scores(
    plant: PlantB, monitored: pl.DataFrame, tmp_path: Path
) -> None:
    lake = Lake.at(tmp_path / "lake")
    lake.overwrite("gold", "mspc_scores", M.scores_table(monitored))
    stored = lake.read("gold", "mspc_scores")
    assert stored is not None and stored.height == monitored.height
    ev = M.evaluate(stored, plant.fault_labels, plant.batches, consecutive=3)
    for k, v in _plain_eval(stored, plant.fault_labels, plant.batches).items():
        assert ev[k] == pytest.approx(v), k


def test_shuffled_labels_give_no_skill(plant: PlantB, monitored: pl.DataFrame, split) -> None:
    """Fault labels moved to clean held-out batches (same onset offset and duration) are
    'detected' no more often than a confirmed alarm occurs in clean batches by chance."""
    real = M.evaluate(monitored, plant.fault_labels, plant.batches)
    clean = _clean_held(plant, split)
    lab = plant.fault_labels.filter(pl.col("batch_id").is_in(split[1])).join(
        plant.batches.select("batch_id", "start_ts"), on="batch_id"
    )
    rng = random.Random(11)
    rows = []
    for r in lab.iter_rows(named=True):
        tgt = rng.choice(clean)
        s = plant.batches.filter(pl.col("batch_id") == tgt)["start_ts"][0]
        rows.append(
            {
                "fault_id": r["fault_id"],
                "fault_type": r["fault_type"],
                "batch_id": tgt,
                "onset_ts": s + (r["onset_ts"] - r["start_ts"]),
                "end_ts": None if r["end_ts"] is None else s + (r["end_ts"] - r["start_ts"]),
            }
        )
    fake_labels = pl.DataFrame(
        rows,
        schema=plant.fault_labels.select(
            "fault_id", "fault_type", "batch_id", "onset_ts", "end_ts"
        ).schema,
    )
    # evaluate only on the clean batches, now carrying the fake labels
    sub = monitored.filter(pl.col("batch_id").is_in(clean))
    fake = M.evaluate(sub, fake_labels, plant.batches)
    chance = M.evaluate(sub, fake_labels.head(0), plant.batches)["batch_false_alarm_share"]
    n = fake["n_faults"]
    assert n >= 1
    bound = chance + 2 * math.sqrt(max(chance * (1 - chance), 0.25 / n) / n)
    assert fake["detection_rate"] <= bound
    assert real["detection_rate"] > fake["detection_rate"]


def test_pickle_roundtrip_and_summaries(model: M.MSPCModel, plant: PlantB, split) -> None:
    m2 = pickle.loads(pickle.dumps(model))
    tl = plant.timeline.filter(pl.col("batch_id") == split[1][0])
    _same(M.monitor(model, tl, plant.batches), M.monitor(m2, tl, plant.batches))
    s = model.train_summary()
    assert any(k.endswith(".n_batches") and v == len(split[0]) for k, v in s.items())
    assert model.params()["alpha"] == 0.99


def test_clear_errors_on_bad_input(plant: PlantB, split) -> None:
    with pytest.raises(M.MSPCInputError, match="ph"):
        M.hourly_means(plant.timeline.head(10).drop("ph"))
    with pytest.raises(M.MSPCInputError, match="good batches"):
        M.train(plant.timeline.head(10), plant.batches, [])
    few = split[0][:2]
    with pytest.raises(M.MSPCInputError, match=">= 5 good batches"):
        M.train(plant.timeline.filter(pl.col("batch_id").is_in(few)), plant.batches, few)
    with pytest.raises(M.MSPCInputError, match="not in the batches frame"):
        M.train(plant.timeline.head(10), plant.batches, ["NOPE-B0001"])
