"""MSPC limits from time-blocked out-of-fold statistics (issue 14 item 3).

Good batches of a real plant drift slowly (raw-material lots, sensor recalibrations): a
batch's neighbours in time resemble it more than batches of another period. Out-of-fold
folds that take every 5th batch keep each batch's neighbours in the fitting folds, so the
limits only see within-period scatter and later batches break them. Time-blocked folds
score each block with a model of the other periods.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pharma_assets.ml import alarm_rules
from pharma_assets.ml import mspc as M
from pharma_assets_tests.ml.test_mspc_alignment import FEED_H, SHIFT_H, _batch, _batches

DRIFT_TAG = "dissolved_co2_mmhg"


def _drifting_plant(n: int, seed: int, drift_per_batch: float) -> tuple[pl.DataFrame, list[str]]:
    """``n`` good batches in start order; ``DRIFT_TAG`` rises by ``drift_per_batch`` sd-floor
    units a batch (a slow drift between periods, small within one)."""
    rng = np.random.default_rng(seed)
    ids = [f"BR01-B{i:04d}" for i in range(n)]
    step = drift_per_batch * M.SD_FLOOR[DRIFT_TAG]
    frames = [
        _batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H + rng.normal(0, 1.5)).with_columns(
            pl.col(DRIFT_TAG) + i * step
        )
        for i, b in enumerate(ids)
    ]
    return pl.concat(frames), ids


@pytest.fixture(scope="module")
def drifting() -> tuple[pl.DataFrame, list[str]]:
    return _drifting_plant(60, 11, drift_per_batch=0.25)


def _later_share(model: M.MSPCModel, hourly: pl.DataFrame, ids: list[str]) -> float:
    """Share of raw alarmed hours of ``ids`` (batches after the training ones)."""
    sc = M.monitor(model, hourly.filter(pl.col("batch_id").is_in(ids)), _batches_all(hourly))
    return float(sc["alarm"].cast(pl.Float64).mean())  # type: ignore[arg-type]


def _batches_all(hourly: pl.DataFrame) -> pl.DataFrame:
    return _batches(sorted(set(hourly["batch_id"].to_list())))


def test_time_blocked_folds_are_contiguous_in_start_order(
    drifting: tuple[pl.DataFrame, list[str]],
) -> None:
    hourly, ids = drifting
    train = ids[:40]
    m = M.train(hourly, _batches(ids), train, time_blocked_folds=True)
    r = next(iter(m.recipes.values()))
    assert r.batch_ids == train  # start order (ids here are in start order too)
    assert m.params()["time_blocked_folds"] is True
    assert M.train(hourly, _batches(ids), train).params()["time_blocked_folds"] is False


def test_time_blocked_limits_hold_better_for_later_batches_under_drift(
    drifting: tuple[pl.DataFrame, list[str]],
) -> None:
    """Under a between-period drift the interleaved limits are too tight for the next
    batches; the time-blocked ones are wider and alarm fewer of the later good hours."""
    hourly, ids = drifting
    train, later = ids[:40], ids[40:50]
    inter = M.train(hourly, _batches(ids), train)
    block = M.train(hourly, _batches(ids), train, time_blocked_folds=True)
    ri, rb = next(iter(inter.recipes.values())), next(iter(block.recipes.values()))
    assert np.nanmedian(rb.spe_limit) > np.nanmedian(ri.spe_limit)
    assert _later_share(block, hourly, later) < _later_share(inter, hourly, later)


def test_without_drift_the_fold_scheme_barely_matters() -> None:
    """Control: with no drift both schemes give limits within a few tens of per cent."""
    hourly, ids = _drifting_plant(40, 5, drift_per_batch=0.0)
    inter = M.train(hourly, _batches(ids), ids)
    block = M.train(hourly, _batches(ids), ids, time_blocked_folds=True)
    ri, rb = next(iter(inter.recipes.values())), next(iter(block.recipes.values()))
    ratio = np.nanmedian(rb.spe_limit) / np.nanmedian(ri.spe_limit)
    assert 0.7 < ratio < 1.4


def test_rule_is_chosen_on_the_variant_s_own_out_of_fold_alarms(
    drifting: tuple[pl.DataFrame, list[str]],
) -> None:
    hourly, ids = drifting
    m = M.train(hourly, _batches(ids), ids[:40], time_blocked_folds=True)
    expect = alarm_rules.choose_rule(m.train_alarm_samples(), "hour", sample="hour").rule
    assert alarm_rules.rule_of(m, alarm_rules.MSPC_DEFAULT) == expect


def test_variant_choice_reads_the_training_period_only(
    drifting: tuple[pl.DataFrame, list[str]],
) -> None:
    """``bench_mspc_limits.choose_variant`` validates inside the training period: wrecking
    every held-out batch's data changes neither the choice nor the validation figures."""
    from benchmarks.bench_mspc_limits import VARIANTS, choose_variant

    hourly, ids = drifting
    batches = _batches(ids)
    summary = batches.with_columns(right_first_time=pl.lit(True))
    cutoff = batches["start_ts"][45]
    held = ids[45:]
    wrecked = hourly.with_columns(
        pl.when(pl.col("batch_id").is_in(held))
        .then(pl.col(DRIFT_TAG) * 50)
        .otherwise(pl.col(DRIFT_TAG))
        .alias(DRIFT_TAG)
    )
    two = {k: VARIANTS[k] for k in ("interleaved", "time_blocked")}
    a = choose_variant(hourly, batches, summary, cutoff, two)
    b = choose_variant(wrecked, batches, summary, cutoff, two)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a[1]]
    assert a[0] == b[0]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b[1]]
    assert all(r["n_validation_good"] > 0 for r in a[1])
