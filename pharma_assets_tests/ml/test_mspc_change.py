"""MSPC change statistic (issue 14 item 3): faults are onsets, good batches are offsets.

On the simulated plant, good batches that alarm the level statistic (T² / SPE) do so for
days: they differ from the good population all along (another media lot, a faster seed
train), while the twin's faults start at an onset (a pump stops, a probe fails, cooling is
lost). ``train(statistic="change")`` monitors each tag's change from the batch's own recent
baseline instead. The trajectories are the hourly means of ``test_mspc_alignment`` (feed
step, temperature shift, sensor-sized noise).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from pharma_assets.ml import alarm_rules
from pharma_assets.ml import mspc as M
from pharma_assets_tests.ml.test_mspc_alignment import FEED_H, SHIFT_H, _batch, _batches

TAG = "temperature_c"


@pytest.fixture(scope="module")
def good() -> tuple[pl.DataFrame, list[str], np.random.Generator]:
    rng = np.random.default_rng(21)
    ids = [f"BR01-B{i:04d}" for i in range(40)]
    frames = [
        _batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H + rng.normal(0, 1.5)) for b in ids
    ]
    return pl.concat(frames), ids, rng


@pytest.fixture(scope="module")
def change_model(good: tuple[pl.DataFrame, list[str], np.random.Generator]) -> M.MSPCModel:
    hourly, ids, _ = good
    return M.train(hourly, _batches(ids), ids, statistic="change")


def _confirmed(model: M.MSPCModel, mon: pl.DataFrame, col: str) -> pl.DataFrame:
    rule = alarm_rules.rule_of(model, alarm_rules.MSPC_DEFAULT)
    return rule.apply(mon.select("batch_id", "elapsed_h", alarm=pl.col(col)), "elapsed_h")


def test_change_residuals_cancel_a_constant_offset_and_use_no_future() -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(0, 1, (1, 50, 3))
    d = M.change_residuals(raw, 4, 5)
    d_off = M.change_residuals(raw + np.array([5.0, -2.0, 0.3]), 4, 5)
    assert np.all(np.isnan(d[:, :4]))  # no baseline before the lag
    np.testing.assert_allclose(d_off[:, 4:], d[:, 4:])  # an offset all along cancels
    # hour 20 is the value minus the mean of hours 12..16 (lag 4, window 5)
    np.testing.assert_allclose(d[0, 20], raw[0, 20] - raw[0, 12:17].mean(axis=0))
    later = raw.copy()
    later[:, 30:] += 100.0
    np.testing.assert_allclose(M.change_residuals(later, 4, 5)[:, :30], d[:, :30])
    with pytest.raises(M.MSPCInputError, match=">= 1 hour"):
        M.change_residuals(raw, 0, 5)


def test_step_onset_is_flagged_and_constant_offset_is_not(
    good: tuple[pl.DataFrame, list[str], np.random.Generator],
    change_model: M.MSPCModel,
) -> None:
    """The same +0.5 K temperature deviation: from hour 100 on (an onset) it is confirmed
    within a few hours; all along (an offset) the change statistic confirms nothing, while
    the level statistic (the control) confirms the offset batch as well."""
    _, ids, rng = good
    onset_h = 100
    step = _batch(rng, "BR01-B9001", FEED_H, SHIFT_H).with_columns(
        pl.when(pl.col("hour") >= onset_h).then(pl.col(TAG) + 0.5).otherwise(pl.col(TAG))
    )
    offsets = [
        _batch(rng, "BR01-B9002", FEED_H, SHIFT_H).with_columns(pl.col(TAG) + 0.5),
        _batch(rng, "BR01-B9003", FEED_H, SHIFT_H).with_columns(pl.col("ph") + 0.05),
        _batch(rng, "BR01-B9004", FEED_H, SHIFT_H).with_columns(pl.col("dissolved_co2_mmhg") + 8),
    ]
    new = ["BR01-B9001", "BR01-B9002", "BR01-B9003", "BR01-B9004"]
    mon = M.monitor(change_model, pl.concat([step, *offsets]), _batches(ids + new))
    assert (mon["alarm"] == mon["change_alarm"]).all()
    conf = _confirmed(change_model, mon, "change_alarm")
    s = conf.filter(pl.col("batch_id") == "BR01-B9001")
    first = s.filter(pl.col("confirmed_alarm") & (pl.col("elapsed_h") > onset_h))["elapsed_h"]
    assert first.len() > 0 and first.min() <= onset_h + 6  # type: ignore[operator]
    top = mon.filter((pl.col("batch_id") == "BR01-B9001") & pl.col("change_alarm"))
    # the changed tag drives the alarms while the baseline still predates the onset
    top = top.filter(pl.col("elapsed_h").is_between(onset_h + 1, onset_h + 6))["top_contributors"]
    assert top.len() > 0 and all(t.startswith(f"{TAG}:") for t in top.to_list())
    off = conf.filter(pl.col("batch_id").is_in(new[1:]))
    assert not off["confirmed_alarm"].any()
    # control: the level statistic confirms every offset batch (the alarm operators saw)
    lev = _confirmed(change_model, mon, "level_alarm").filter(pl.col("batch_id").is_in(new[1:]))
    assert lev.group_by("batch_id").agg(pl.col("confirmed_alarm").any())["confirmed_alarm"].all()


def test_feed_stop_is_flagged(
    good: tuple[pl.DataFrame, list[str], np.random.Generator],
    change_model: M.MSPCModel,
) -> None:
    """A feed pump that stops for 10 h during the feed (the twin's feed_pump_failure)."""
    _, ids, rng = good
    b = _batch(rng, "BR01-B9101", FEED_H, SHIFT_H).with_columns(
        pl.when(pl.col("hour").is_between(100, 109))
        .then(0.0)
        .otherwise(pl.col("feed_rate_ml_h"))
        .alias("feed_rate_ml_h")
    )
    mon = M.monitor(change_model, b, _batches([*ids, "BR01-B9101"]))
    conf = _confirmed(change_model, mon, "alarm")
    hit = conf.filter(pl.col("confirmed_alarm") & pl.col("elapsed_h").is_between(101, 110))
    assert hit.height > 0


def test_rule_and_limits_come_from_the_change_statistic(change_model: M.MSPCModel) -> None:
    samples = change_model.train_alarm_samples()
    expect = alarm_rules.choose_rule(samples, "hour", sample="hour").rule
    assert alarm_rules.rule_of(change_model, alarm_rules.MSPC_DEFAULT) == expect
    r = next(iter(change_model.recipes.values()))
    assert r.cv_chg is not None and r.chg_limit is not None
    lag, _, _ = change_model.change_window()
    assert np.all(np.isnan(r.chg_limit[:lag])) and np.all(np.isfinite(r.chg_limit[lag:]))
    assert change_model.params()["statistic"] == "change"
    # the out-of-fold alarm rate of the good training hours is near the nominal 1 %
    assert change_model.train_summary()["R1.cv_change_alarm_rate"] < 0.05
    # the level rule of the same fit is chosen on the level alarms: a different sample set
    lev = change_model.train_alarm_samples("level")
    assert lev.height == samples.height and not lev["alarm"].equals(samples["alarm"])


def test_alarm_table_and_option_checks(
    good: tuple[pl.DataFrame, list[str], np.random.Generator],
    change_model: M.MSPCModel,
) -> None:
    hourly, ids, _ = good
    mon = M.monitor(change_model, hourly.filter(pl.col("batch_id").is_in(ids[:5])), _batches(ids))
    al = M.alarms(mon, "change")
    expect = mon.filter(pl.col("chg") > pl.col("chg_limit"))
    assert al.height == expect.height and set(al["statistic"].to_list()) <= {"change"}
    assert set(M.alarms(mon)["statistic"].to_list()) <= {"t2", "spe"}
    with pytest.raises(M.MSPCInputError, match="statistic must be one of"):
        M.train(hourly, _batches(ids), ids, statistic="slope")


def test_level_default_unchanged_and_old_models_score(
    good: tuple[pl.DataFrame, list[str], np.random.Generator],
    change_model: M.MSPCModel,
) -> None:
    """The default statistic stays "level"; a model pickled before the change statistic
    existed (no change fields) still monitors, with null change columns."""
    hourly, ids, _ = good
    lev = M.train(hourly, _batches(ids), ids)
    assert lev.stat() == "level"
    one = hourly.filter(pl.col("batch_id") == ids[0])
    mon = M.monitor(lev, one, _batches(ids))
    assert (mon["alarm"] == mon["level_alarm"]).all()
    old = M.MSPCModel(
        {
            k: M.RecipeModel(
                **{
                    f: getattr(r, f)
                    for f in r.__dataclass_fields__
                    if f not in ("chg_mu", "chg_sd", "chg_limit", "cv_chg")
                }
            )
            for k, r in lev.recipes.items()
        },
        lev.alpha,
        lev.cev_target,
        lev.max_components,
        lev.n_folds,
    )
    mo = M.monitor(old, one, _batches(ids))
    assert mo["chg"].null_count() == mo.height and not mo["change_alarm"].any()
    assert mo["alarm"].to_list() == mon["alarm"].to_list()


def test_change_choice_reads_the_training_period_only(
    good: tuple[pl.DataFrame, list[str], np.random.Generator],
) -> None:
    """``bench_mspc_limits.choose_change`` validates inside the training period: wrecking
    every held-out batch (and its labels) changes neither the choice nor the figures."""
    from benchmarks.bench_mspc_limits import CHANGE_VARIANTS, choose_change

    hourly, ids, _ = good
    batches = _batches(ids).with_columns(end_ts=pl.col("start_ts") + pl.duration(hours=160))
    summary = batches.with_columns(right_first_time=pl.lit(True))
    cutoff = batches["start_ts"][32]
    held = ids[32:]
    labels = pl.DataFrame(
        {
            "fault_id": ["F1", "F2"],
            "fault_type": ["chiller_fault", "chiller_fault"],
            "batch_id": [ids[28], ids[35]],
            "onset_ts": [
                batches["start_ts"][28] + timedelta(hours=100),
                batches["start_ts"][35] + timedelta(hours=100),
            ],
            "end_ts": [None, None],
        },
        schema_overrides={"end_ts": pl.Datetime("us", "UTC")},
    )
    # a chiller-like step in the validation period's faulty batch, from hour 100
    fault = (pl.col("batch_id") == ids[28]) & (pl.col("hour") >= 100)
    hourly = hourly.with_columns(pl.when(fault).then(pl.col(TAG) + 3).otherwise(pl.col(TAG)))
    wrecked = hourly.with_columns(
        pl.when(pl.col("batch_id").is_in(held)).then(pl.col(TAG) * 3).otherwise(pl.col(TAG))
    )
    two = {k: CHANGE_VARIANTS[k] for k in ("change_3_3", "change_6_6")}
    a = choose_change(hourly, batches, summary, cutoff, labels, two)
    b = choose_change(wrecked, batches, summary, cutoff, labels.head(1), two)

    def strip(rows: list[dict[str, object]]) -> list[dict[str, object]]:
        # NaN (no delay) compared as None; the timing is not a figure
        return [{k: (None if v != v else v) for k, v in r.items() if k != "seconds"} for r in rows]

    assert a[0] == b[0]
    assert strip(a[1]) == strip(b[1])
    assert all(r["validation_faulty"] == 1 for r in a[1])
    assert all(r["validation_detected"] == 1 for r in a[1] if "+" not in str(r["variant"]))


@pytest.mark.parametrize("statistic", ["level", "change"])
def test_threshold_factor_chosen_with_a_short_rule_on_training_only(
    good: tuple[pl.DataFrame, list[str], np.random.Generator], statistic: str
) -> None:
    """``max_confirm_samples=3``: the smallest factor under which a rule of at most 3 hours
    keeps the good training batches' out-of-fold share within 5 %; the raw alarm is the
    statistic over factor x limit, in ``monitor`` and in the alarm table alike."""
    hourly, ids, rng = good
    m = M.train(hourly, _batches(ids), ids, statistic=statistic, max_confirm_samples=3)
    rule = alarm_rules.rule_of(m, alarm_rules.MSPC_DEFAULT)
    f = m.factor()
    assert rule.k <= 3 and f in M.ALARM_FACTORS and m.params()["alarm_factor"] == f
    ks = [k for k in alarm_rules.K_CANDIDATES if k <= 3]
    again = alarm_rules.choose_rule(m.train_alarm_samples(factor=f), "hour", ks=ks)
    assert again.met and again.rule.k == rule.k
    i = M.ALARM_FACTORS.index(f)
    if i > 0:  # the next smaller factor meets the target with no rule of <= 3 hours
        below = M.ALARM_FACTORS[i - 1]
        assert not alarm_rules.choose_rule(m.train_alarm_samples(factor=below), "hour", ks=ks).met
    b = _batch(rng, "BR01-B9201", FEED_H, SHIFT_H).with_columns(
        pl.when(pl.col("hour") >= 100).then(pl.col(TAG) + 3.0).otherwise(pl.col(TAG))
    )
    mon = M.monitor(
        m,
        pl.concat([hourly.filter(pl.col("batch_id") == ids[0]), b]),
        _batches([*ids, "BR01-B9201"]),
    )
    if statistic == "change":
        want = (pl.col("chg") > f * pl.col("chg_limit")).fill_null(False)
    else:
        want = (
            (pl.col("t2") > f * pl.col("t2_limit")) | (pl.col("spe") > f * pl.col("spe_limit"))
        ).fill_null(False)
    assert mon.select((pl.col("alarm") == want).all()).item()
    assert (
        M.alarms(mon, statistic, f).select(["batch_id", "elapsed_h"]).unique().height
        == mon["alarm"].sum()
    )
    # a 3 K step is confirmed within the rule's hours
    conf = _confirmed(m, mon, "alarm").filter(pl.col("batch_id") == "BR01-B9201")
    assert (
        conf.filter(
            pl.col("confirmed_alarm") & pl.col("elapsed_h").is_between(101, 100 + 3 + rule.k)
        ).height
        > 0
    )
