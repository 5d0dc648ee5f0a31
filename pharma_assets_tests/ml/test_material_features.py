"""Raw-material CoA attributes as batch-quality features: present, equal to the accepted
CoA results of the batch's lots known by then, and never a label or ground-truth field."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pharma_assets.ml import features, material_features, quality


@pytest.fixture(scope="module")
def harvest(ml_inputs: features.MlInputs) -> pl.DataFrame:
    return features.batch_features(ml_inputs, "harvest")


def test_coa_features_present_and_equal_to_the_lots_results(
    ml_inputs: features.MlInputs, harvest: pl.DataFrame
) -> None:
    names = material_features.feature_names()
    assert names and set(names) <= set(features.batch_feature_columns(harvest))
    lots = ml_inputs.material_lots
    assert lots is not None and lots.height > 0
    b = ml_inputs.batches.select("batch_id", "media_lot", "feed_lot")
    for r in harvest.join(b, on="batch_id").head(12).iter_rows(named=True):
        for material, lot_col in material_features.LOT_COLUMNS.items():
            mine = lots.filter(
                (pl.col("lot_id") == r[lot_col]) & (pl.col("tested_ts") <= r["as_of_ts"])
            )
            for attr in mine["attribute"].unique().to_list():
                want = mine.filter(pl.col("attribute") == attr)["value"].mean()
                assert r[f"coa_{material}_{attr}"] == pytest.approx(want), (r["batch_id"], attr)
    # every batch has its lots' incoming QC results (tested before first use)
    assert harvest["coa_feed_productivity_use_test_pct"].null_count() == 0
    assert harvest["coa_media_growth_promotion_pct"].null_count() == 0


def test_results_not_known_yet_are_not_features(ml_inputs: features.MlInputs) -> None:
    lots = ml_inputs.material_lots
    assert lots is not None
    b = ml_inputs.batches.sort("start_ts").head(3)
    base = b.select("batch_id", "media_lot", "feed_lot", as_of_ts=pl.col("start_ts"))
    now = material_features.material_features(base, lots)
    # one second before the latest result of each batch's feed lot: that result is excluded
    feed = lots.filter(pl.col("material") == "feed")
    last = feed.group_by("lot_id").agg(pl.col("tested_ts").max().alias("last"))
    early = base.join(last, left_on="feed_lot", right_on="lot_id").with_columns(
        as_of_ts=pl.col("last") - timedelta(seconds=1)
    )
    before = material_features.material_features(early.drop("last"), lots)
    changed = [c for c in now.columns if c.startswith("coa_feed_") and not now[c].equals(before[c])]
    assert changed, "a result tested after the scoring time must not be a feature"
    far = material_features.material_features(
        base.with_columns(as_of_ts=pl.col("as_of_ts") - timedelta(days=400)), lots
    )
    assert all(far[c].null_count() == far.height for c in far.columns if c != "batch_id")


def test_no_label_or_ground_truth_field_is_a_feature(ml_plant, harvest: pl.DataFrame) -> None:
    cols = set(features.batch_feature_columns(harvest))
    truth = pl.read_parquet(ml_plant.truth / "batches.parquet").columns
    # the simulator's true lot attributes and outcomes (attr_*, final_titer_g_l, ...)
    assert not cols & set(truth)
    assert not [c for c in cols if c.startswith(("attr_", "hist_", "lot_media_lot", "true_"))]
    # nor a target or any release result
    assert not cols & set(quality.TARGETS)
    assert not [c for c in cols if "release" in c or c.startswith("cqa_")]


@pytest.mark.parametrize("horizon", ["day3", "harvest"])
def test_release_results_change_no_batch_s_own_features(
    ml_inputs: features.MlInputs, horizon: str
) -> None:
    """Value-level leakage check (the name check above cannot see a renamed label): scale
    every release result and every target of gold/batch_summary; no feature of any batch
    moves except the lot history (the mean release titer of EARLIER batches of the same lot,
    known by then), and a batch's own release result moves none of its features."""
    ids = ml_inputs.batches.filter(pl.col("status") == "complete")["batch_id"].to_list()
    a = features.batch_features(ml_inputs, horizon, batch_ids=ids)
    rel = pl.col("sample_type") == "release"
    labs = ml_inputs.lab_results.with_columns(
        value=pl.when(rel).then(pl.col("value") * 7.0 + 1.0).otherwise(pl.col("value"))
    )
    num = [c for c, t in ml_inputs.batch_summary.schema.items() if t.is_float()]
    summary = ml_inputs.batch_summary.with_columns([pl.col(c) * 7.0 for c in num])
    b = features.batch_features(
        dataclasses.replace(ml_inputs, lab_results=labs, batch_summary=summary),
        horizon,
        batch_ids=ids,
    )
    lot = [c for c in a.columns if c.startswith("lot_") and c.endswith("_prior_titer")]
    assert lot and a["titer_bal_harvest"].drop_nulls().len() > 0
    assert_frame_equal(a.drop(lot), b.drop(lot))
    assert not a.select(lot).equals(b.select(lot))  # the check can see a release result
    # one batch's own release result: none of its features moves (the lot history too)
    last = ids[-1]
    own = ml_inputs.lab_results.with_columns(
        value=pl.when(rel & (pl.col("batch_id") == last))
        .then(pl.col("value") * 7.0)
        .otherwise(pl.col("value"))
    )
    c = features.batch_features(
        dataclasses.replace(ml_inputs, lab_results=own), horizon, batch_ids=[last]
    )
    assert_frame_equal(a.filter(pl.col("batch_id") == last), c)
