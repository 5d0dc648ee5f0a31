"""MSPC change statistic with a drift term and the level in its alarm (issue 14 item 3).

The change statistic (a tag's value at hour k minus the batch's own mean over recent hours)
sees a step for a few hours but a slow ramp only as its slope: a pH probe drifting 0.1-0.2
pH/day (docs/process_model.md §16) changes the reading by a few thousandths per hour.
``train(change_drift_h=...)`` adds each tag's signed standardised change averaged over
the last hours (``mspc.drift_means``), which does not cancel for a ramp; and
``change_level`` puts the level statistic in the change alarm at its own robust factor (a
feed that never starts has no change to see). Trajectories and
hidden faults as in ``test_mspc_robust`` (hourly means like the simulator's, 8 of 60
"good" batches hold a 3 K temperature step the plant does not know about).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pharma_assets.ml import alarm_rules
from pharma_assets.ml import mspc as M
from pharma_assets_tests.ml.test_mspc_alignment import FEED_H, SHIFT_H, _batch, _batches
from pharma_assets_tests.ml.test_mspc_robust import _step

RAMP_TAG = "ph"
#: the twin's pH-probe drift: 0.10-0.20 pH/day; here 0.18 pH/day for 40 h from hour 60
RAMP_RATE_H, RAMP_AT, RAMP_H = 0.0075, 60, 40
FIT = {
    "statistic": "change",
    "change_lag_h": 3,
    "change_window_h": 3,
    "change_combine": "max",
    "max_confirm_samples": 1,
    "threshold": "robust",
}


def _ramp(df: pl.DataFrame, at: int, rate: float, hours: int, tag: str = RAMP_TAG) -> pl.DataFrame:
    h = pl.col("hour")
    return df.with_columns(pl.col(tag) + rate * (pl.min_horizontal(h, at + hours) - at).clip(0))


@pytest.fixture(scope="module")
def plant() -> tuple[pl.DataFrame, list[str], np.random.Generator]:
    rng = np.random.default_rng(21)
    ids = [f"BR01-B{i:04d}" for i in range(60)]
    hidden = ids[3::8]
    frames = [
        _batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H + rng.normal(0, 1.5)) for b in ids
    ]
    frames = [
        _step(f, 90 + i, 3.0) if b in hidden else f
        for i, (b, f) in enumerate(zip(ids, frames, strict=True))
    ]
    return pl.concat(frames), ids, rng


@pytest.fixture(scope="module")
def models(
    plant: tuple[pl.DataFrame, list[str], np.random.Generator],
) -> tuple[M.MSPCModel, M.MSPCModel]:
    hourly, ids, _ = plant
    old = M.train(hourly, _batches(ids), ids, **FIT)
    new = M.train(hourly, _batches(ids), ids, change_drift_h=24, **FIT)
    return old, new


def test_drift_means_is_the_causal_mean_of_the_signed_z_score() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(0, 1, (2, 30, 3))
    d[0, 5, 1] = np.nan
    mu, sd = rng.normal(0, 0.1, (30, 3)), rng.uniform(0.5, 2, (30, 3))
    got = M.drift_means(d, mu, sd, 6)
    z = (d - mu[None]) / sd[None]
    for b, k, j in ((0, 0, 0), (0, 7, 1), (1, 29, 2), (0, 5, 1)):
        want = np.nanmean(z[b, max(0, k - 5) : k + 1, j])
        assert got[b, k, j] == pytest.approx(want)
    # causal: the future does not change the past
    d2 = d.copy()
    d2[:, 20:] += 100.0
    assert np.allclose(M.drift_means(d2, mu, sd, 6)[:, :20], got[:, :20], equal_nan=True)
    with pytest.raises(M.MSPCInputError, match="change_drift_h"):
        M.drift_means(d, mu, sd, 0)


def test_a_slow_ramp_is_caught_by_the_drift_term_and_missed_by_the_change_alone(
    plant: tuple[pl.DataFrame, list[str], np.random.Generator],
    models: tuple[M.MSPCModel, M.MSPCModel],
) -> None:
    """Ten new batches whose pH reading ramps like the twin's drifting probe, thirty new good
    batches: the drift term confirms (nearly) every ramp, the change statistic alone none,
    and good batches are not alarmed more."""
    _, ids, rng = plant
    old, new = models
    ramps = [f"BR01-B90{i:02d}" for i in range(10)]
    goods = [f"BR01-B91{i:02d}" for i in range(30)]
    frames = [
        _ramp(_batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H), RAMP_AT, RAMP_RATE_H, RAMP_H)
        for b in ramps
    ] + [_batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H + rng.normal(0, 1.5)) for b in goods]
    new_h, bs = pl.concat(frames), _batches([*ids, *ramps, *goods])
    got = {}
    for name, m in (("old", old), ("new", new)):
        c = alarm_rules.confirm_mspc(m, M.monitor(m, new_h, bs))
        per = c.group_by("batch_id").agg(
            after=(pl.col("confirmed_alarm") & (pl.col("elapsed_h") > RAMP_AT + 1)).any(),
            first=pl.col("elapsed_h").filter(pl.col("confirmed_alarm")).min(),
        )
        got[name] = {
            "ramps": int(per.filter(pl.col("batch_id").is_in(ramps))["after"].sum()),
            "good": int(per.filter(pl.col("batch_id").is_in(goods))["first"].is_not_null().sum()),
        }
    assert got["old"]["ramps"] <= 1, got
    assert got["new"]["ramps"] >= 8, got
    assert got["new"]["good"] <= got["old"]["good"] + 1, got
    assert got["new"]["good"] <= 3, got  # at most 10 % of 30 new good batches
    # the drift alarms are the pH tag's: it leads the contributions where the drift alarms
    mon = M.monitor(new, new_h.filter(pl.col("batch_id") == ramps[0]), bs)
    hot = mon.filter(pl.col("drf") > new.drift_factor() * pl.col("drf_limit"))
    assert hot.height > 0
    assert hot["top_contributors"].str.starts_with(f"{RAMP_TAG}:").all()
    al = M.alarms(mon, new.stat(), new.factor(), drift_factor=new.drift_factor())
    assert set(al["statistic"].to_list()) <= {"change", "drift"} and "drift" in set(
        al["statistic"].to_list()
    )
    # re-alarming stored rows gives what monitoring gives, also from the rows of the base
    # fit (drift weight 1) re-alarmed under the derived weight (how the bench scores)
    re = M.rescore(mon, new)
    assert re["alarm"].to_list() == mon["alarm"].to_list()
    hourly, _, _ = plant
    kw = {k: v for k, v in FIT.items() if k not in ("max_confirm_samples", "threshold")}
    base = M.train(hourly, _batches(ids), ids, change_drift_h=24, **kw)
    assert base.weight() == 1.0 and abs(np.log(new.weight())) > 0.05
    derived = M.with_threshold(base, 1, "robust")
    assert derived.weight() == new.weight() and derived.factor() == new.factor()
    mon_base, mon_new = M.monitor(base, new_h, bs), M.monitor(new, new_h, bs)
    re = M.rescore(mon_base, derived)
    assert re["alarm"].sum() > 0
    for c in ("alarm", "change_alarm"):
        assert re[c].to_list() == mon_new[c].to_list(), c


def test_drift_threshold_comes_from_the_training_batches_out_of_fold_peaks(
    models: tuple[M.MSPCModel, M.MSPCModel],
    plant: tuple[pl.DataFrame, list[str], np.random.Generator],
) -> None:
    """No ground truth: the drift weight is the change's robust factor over the drift's,
    each from the good training batches' out-of-fold peaks alone, and the factor the
    robust factor of the weighted union; deriving it again from the fit gives the same."""
    old, new = models
    rule = alarm_rules.rule_of(new, alarm_rules.MSPC_DEFAULT)
    _, rc = M.train_ratios(new, part="change")
    _, rd = M.train_ratios(new, part="drift", weight=1.0)
    f_c, _ = M.robust_factor(M.rule_peaks(rc, rule.k, rule.n), 0.025)
    f_d, _ = M.robust_factor(M.rule_peaks(rd, rule.k, rule.n), 0.025)
    assert new.weight() == pytest.approx(f_c / f_d)
    _, both = M.train_ratios(new)
    assert new.factor() == pytest.approx(
        M.robust_factor(M.rule_peaks(both, rule.k, rule.n), 0.025)[0]
    )
    assert new.factor() >= f_c * (1 - 1e-9)  # the union never alarms below the change's tail
    # the change part of the fit is the old model's (same limits): only the drift is added
    for r in old.recipes:
        assert np.allclose(old.recipes[r].chg_limit, new.recipes[r].chg_limit, equal_nan=True)  # type: ignore[arg-type]
        assert old.recipes[r].cv_drf is None and new.recipes[r].cv_drf is not None
    again = M.with_threshold(new, 1, "robust")
    assert again.factor() == new.factor() and again.weight() == new.weight()
    p = new.params()
    assert p["change_drift_h"] == 24 and p["drift_weight"] == new.weight()
    assert old.params()["change_drift_h"] == 0 and old.weight() == 1.0
    # the share method does not weight the drift; bad values are refused
    hourly, ids, _ = plant
    share = M.with_threshold(new, 3, "share")
    assert share.weight() == 1.0
    with pytest.raises(M.MSPCInputError, match="change_drift_h"):
        M.train(hourly, _batches(ids), ids, statistic="change", change_drift_h=-1)
    with pytest.raises(M.MSPCInputError, match="no drift term"):
        M.train_ratios(old, part="drift")


def test_the_level_in_the_change_alarm_sees_a_feed_that_never_starts(
    plant: tuple[pl.DataFrame, list[str], np.random.Generator],
    models: tuple[M.MSPCModel, M.MSPCModel],
) -> None:
    """``change_level``: a batch whose feed never starts (the twin's feed pump failing as
    the feed is due) has no change from its own baseline; the level statistic, in the
    change alarm at its own robust factor, confirms it soon after the good batches' feeds
    start, and good batches are not alarmed more."""
    _, ids, rng = plant
    old, _ = models
    uni = M.with_threshold(old, 1, "robust", change_level=True)
    assert uni.with_level() and not old.with_level() and old.level_factor() is None
    # the level's weight from the training batches' out-of-fold level peaks alone
    rule = alarm_rules.rule_of(uni, alarm_rules.MSPC_DEFAULT)
    _, rl = M.train_ratios(uni, part="level", level_weight=1.0)
    f_l, _ = M.robust_factor(M.rule_peaks(rl, rule.k, rule.n), 0.025)
    assert uni.level_factor() == pytest.approx(uni.factor() / (old.factor() / f_l))
    never = [f"BR01-B92{i:02d}" for i in range(5)]
    goods = [f"BR01-B93{i:02d}" for i in range(30)]
    frames = [_batch(rng, b, FEED_H + 500, SHIFT_H) for b in never] + [
        _batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H + rng.normal(0, 1.5)) for b in goods
    ]
    new_h, bs = pl.concat(frames), _batches([*ids, *never, *goods])
    first = {}
    for name, m in (("change", old), ("union", uni)):
        mon = M.monitor(m, new_h, bs)
        c = alarm_rules.confirm_mspc(m, mon)
        first[name] = dict(
            c.group_by("batch_id")
            .agg(pl.col("elapsed_h").filter(pl.col("confirmed_alarm")).min())
            .iter_rows()
        )
        assert M.rescore(mon, m)["alarm"].to_list() == mon["alarm"].to_list()
    assert all(first["change"][b] is None for b in never), first["change"]
    assert all(first["union"][b] is not None and first["union"][b] < FEED_H + 12 for b in never)
    n_good = {k: sum(v[b] is not None for b in goods) for k, v in first.items()}
    assert n_good["union"] <= n_good["change"] + 1 and n_good["union"] <= 3, n_good
    # gold/mspc_alarms: the level rows of the union at the level factor, change rows as before
    mon = M.monitor(uni, new_h.filter(pl.col("batch_id") == never[0]), bs)
    al = M.alarms(mon, uni.stat(), uni.factor(), uni.level_factor())
    lvl = al.filter(pl.col("statistic").is_in(["t2", "spe"]))
    assert lvl.height > 0
    assert (lvl["value"] > uni.level_factor() * lvl["limit"]).all()  # type: ignore[operator]
    assert set(al["statistic"].to_list()) <= {"change", "drift", "t2", "spe"}


def test_alarm_ratio_is_the_alarm_an_operator_reads(
    plant: tuple[pl.DataFrame, list[str], np.random.Generator],
    models: tuple[M.MSPCModel, M.MSPCModel],
) -> None:
    """``gold/mspc_scores.alarm_ratio``: the deciding statistic over its alarm threshold,
    so the alarm is exactly ``alarm_ratio > 1`` (the page plots it against 1), for a change
    model with the level in its alarm, one without, and a level model; ``alarm_by`` names a
    statistic the model alarms on, and the alarmed hours are named by it."""
    _, ids, rng = plant
    old, new = models
    uni = M.with_threshold(old, 1, "robust", change_level=True)
    never = [f"BR01-B94{i:02d}" for i in range(3)]
    goods = [f"BR01-B95{i:02d}" for i in range(10)]
    frames = [_batch(rng, b, FEED_H + 500, SHIFT_H) for b in never] + [
        _batch(rng, b, FEED_H + rng.normal(0, 1.0), SHIFT_H + rng.normal(0, 1.5)) for b in goods
    ]
    new_h, bs = pl.concat(frames), _batches([*ids, *never, *goods])
    level = M.with_threshold(old, 1, "robust")  # the same fit's factor ...
    level.statistic = "level"  # ... read as a level model
    for name, m, allowed in (
        ("union", uni, {"change", "drift", "T²", "SPE"}),
        ("change", new, {"change", "drift"}),
        ("level", level, {"T²", "SPE"}),
    ):
        mon = M.monitor(m, new_h, bs).filter(pl.col("alarm_ratio").is_not_null())
        assert mon.height > 0, name
        assert (mon["alarm"] == (mon["alarm_ratio"] > 1)).all(), name
        assert set(mon["alarm_by"].drop_nulls().to_list()) <= allowed, name
        if name == "union":
            assert mon["alarm"].any()  # the never-fed batches alarm (by the level)
            assert set(mon.filter("alarm")["alarm_by"].to_list()) & {"T²", "SPE"}
