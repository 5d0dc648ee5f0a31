"""Raw-material CoA attributes as batch-quality features: present, equal to the accepted
CoA results of the batch's lots known by then, and never a label or ground-truth field."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

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
