"""Feature tables: no feature looks past its scoring time; the gas balance is the documented
formula."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pharma_assets.ml import features
from pharma_assets_tests.ml.conftest import MlPlant


def _truncated_inputs(
    ml_plant: MlPlant, batch_id: str, cut_elapsed_min: int
) -> tuple[features.MlInputs, pl.DataFrame]:
    """Inputs where one batch's timeline (and LIMS) stop at ``cut_elapsed_min``, with the
    CoA results (silver/material_lots) tested by then."""
    lake = ml_plant.lake()
    tl = lake.read("silver", "batch_timeline")
    assert tl is not None
    start = tl.filter(pl.col("batch_id") == batch_id)["minute_ts"].min()
    cut_ts = start + timedelta(minutes=cut_elapsed_min)
    tl_cut = tl.filter((pl.col("batch_id") != batch_id) | (pl.col("elapsed_min") < cut_elapsed_min))
    full = features.load_inputs(lake)
    lab = full.lab_results.filter((pl.col("batch_id") != batch_id) | (pl.col("sample_ts") < cut_ts))
    assert full.material_lots is not None and full.material_lots.height > 0
    cut = features.MlInputs(
        hourly=features.hourly_rollup(tl_cut),
        batches=full.batches,
        lab_results=lab,
        maintenance=full.maintenance,
        batch_summary=full.batch_summary,
        material_lots=full.material_lots.filter(pl.col("tested_ts") < cut_ts),
    )
    return cut, tl


def _long_batch(ml_plant: MlPlant) -> str:
    b = ml_plant.lake().read("silver", "batches")
    assert b is not None
    done = b.filter(pl.col("status") == "complete").sort("start_ts")
    return str(done["batch_id"][len(done) // 2])


@pytest.mark.parametrize("cut_h", [50, 100])
def test_hourly_features_unchanged_when_future_is_removed(
    ml_plant: MlPlant, ml_inputs: features.MlInputs, cut_h: int
) -> None:
    bid = _long_batch(ml_plant)
    cut, _ = _truncated_inputs(ml_plant, bid, cut_h * 60 + 7)  # cut mid-hour
    # batch x hour: every hour that ended by the cut is identical
    full_bh = features.batch_hour_features(ml_inputs.hourly).filter(
        (pl.col("batch_id") == bid) & (pl.col("elapsed_h") <= cut_h)
    )
    cut_bh = features.batch_hour_features(cut.hourly).filter(
        (pl.col("batch_id") == bid) & (pl.col("elapsed_h") <= cut_h)
    )
    assert full_bh.height >= cut_h - 1
    assert_frame_equal(full_bh, cut_bh)
    # equipment x hour: every row scored by the cut time is identical (trends included)
    cut_ts = full_bh["hour_ts"].max()
    unit = bid.split("-")[0]
    eq_full = features.equipment_hour_features(
        ml_inputs.hourly, ml_inputs.maintenance, ml_inputs.batches
    )
    eq_cut = features.equipment_hour_features(cut.hourly, cut.maintenance, cut.batches)
    sel = (pl.col("unit_id") == unit) & (pl.col("hour_ts") <= cut_ts)
    a, b = eq_full.filter(sel), eq_cut.filter(sel)
    assert a.height > 0
    assert_frame_equal(a, b)


def test_batch_features_at_day3_ignore_data_after_day3(ml_plant: MlPlant) -> None:
    bid = _long_batch(ml_plant)
    full = features.load_inputs(ml_plant.lake())
    cut, _ = _truncated_inputs(ml_plant, bid, 72 * 60 + 1)
    a = features.batch_features(full, "day3", batch_ids=[bid])
    b = features.batch_features(cut, "day3", batch_ids=[bid])
    assert a.height == 1
    assert a["elapsed_h"][0] == pytest.approx(72.0)
    assert a["lims_last_viable_cell_density_e6_cells_ml"][0] is not None
    assert_frame_equal(a, b)
    # and the day-7 features do see the later data
    c = features.batch_features(full, "day7", batch_ids=[bid])
    assert c["n_hours"][0] > a["n_hours"][0]


def test_lot_history_uses_only_results_known_by_the_horizon(
    ml_inputs: features.MlInputs,
) -> None:
    bf = features.batch_features(ml_inputs, "day3")
    titer = ml_inputs.lab_results.filter(
        (pl.col("sample_type") == "release") & (pl.col("analyte") == "titer_g_l")
    ).select("batch_id", pl.col("sample_ts").alias("rel_ts"))
    # lot history counts completed batches only (an aborted batch's titer is no outcome)
    b = (
        ml_inputs.batches.filter(pl.col("status") == "complete")
        .select("batch_id", "media_lot")
        .join(titer, on="batch_id")
    )
    checked = 0
    for row in bf.select("batch_id", "as_of_ts", "lot_media_n_prior").iter_rows(named=True):
        lot = ml_inputs.batches.filter(pl.col("batch_id") == row["batch_id"])["media_lot"][0]
        known = b.filter(
            (pl.col("media_lot") == lot)
            & (pl.col("rel_ts") <= row["as_of_ts"])
            & (pl.col("batch_id") != row["batch_id"])
        )
        assert row["lot_media_n_prior"] == known.height
        checked += known.height
    assert checked > 0  # some lots are shared, so the feature is exercised


def test_our_cer_follow_the_documented_gas_balance() -> None:
    row = pl.DataFrame(
        {
            "air_flow_slpm": [100.0],
            "o2_flow_slpm": [10.0],
            "co2_flow_slpm": [0.0],
            "offgas_o2_pct": [22.0],
            "offgas_co2_pct": [3.0],
            "volume_l": [1500.0],
        }
    )
    out = features.gas_rates(row.lazy()).collect()
    n_air, n_o2 = 100 * 60 / 22.414, 10 * 60 / 22.414
    n_out = 0.7901 * n_air / (1 - 0.22 - 0.03)  # N2 + Ar of dry air (process/gas.py)
    our = (0.2095 * n_air + n_o2 - 0.22 * n_out) * 1000 / 1500
    cer = (0.03 * n_out - 0.0004 * n_air) * 1000 / 1500
    assert out["our_mmol_l_h"][0] == pytest.approx(our)
    assert out["cer_mmol_l_h"][0] == pytest.approx(cer)
    assert out["rq"][0] == pytest.approx(cer / our)


def test_feature_tables_shape(ml_inputs: features.MlInputs, equipment_hours: pl.DataFrame) -> None:
    assert set(equipment_hours["equipment_type"].unique()) == {"agitator_motor", "feed_pump"}
    assert equipment_hours.select(pl.struct("equipment_id", "hour_ts").is_unique().all()).item()
    assert equipment_hours["hours_since_maintenance"].drop_nulls().min() >= 0  # type: ignore[operator]
    bh = features.batch_hour_features(ml_inputs.hourly)
    assert bh["cum_feed_l"].max() > 10  # type: ignore[operator]
    assert bh["our_mmol_l_h_mean"].drop_nulls().median() > 0  # type: ignore[operator]
    with pytest.raises(ValueError, match="horizon 'day5' unknown"):
        features.batch_features(ml_inputs, "day5")


def _assert_products_match(p: features.TimelineProducts, tl: pl.DataFrame) -> None:
    """The one-pass products equal the three functions they replace (floats to rounding:
    a group's sum may be accumulated in another order)."""
    from pharma_assets.ml import contamination, mspc

    assert_frame_equal(p.hourly, features.hourly_rollup(tl.lazy()), rel_tol=1e-12)
    assert_frame_equal(p.windows, contamination.window_features(tl), rel_tol=1e-12)
    assert_frame_equal(p.mspc_hourly, mspc.hourly_means(tl), rel_tol=1e-12)


def test_one_timeline_pass_equals_the_three_scans(ml_plant: MlPlant) -> None:
    lake = ml_plant.lake()
    ids = features.timeline_batch_ids(lake)
    assert len(ids) >= 10
    tl = lake.read("silver", "batch_timeline")
    assert tl is not None
    # chunked by partition (3 batches at a time): every product is per batch
    p = features.timeline_products(lake, chunk_batches=3)
    assert p.n_batches == len(ids)
    assert p.windows.height > 0 and p.mspc_hourly.height > 0
    _assert_products_match(p, tl)
    # a subset of batches gives exactly their rows
    sub = features.timeline_products(lake, batch_ids=ids[:2])
    assert sorted(sub.hourly["batch_id"].unique().to_list()) == ids[:2]
    with pytest.raises(ValueError, match="chunk_batches"):
        features.timeline_products(lake, chunk_batches=0)


def test_one_pass_with_minutes_split_across_files(ml_plant: MlPlant) -> None:
    """Minutes split over two rows with complementary tags, rows shuffled: the slow path
    (group by minute) still matches each consumer's own handling of split minutes."""
    lake = ml_plant.lake()
    ids = features.timeline_batch_ids(lake)[:2]
    tl = lake.read("silver", "batch_timeline", partition=("batch_id", ids))
    assert tl is not None
    tags = list(features.ROLLUP_TAGS)
    half_a = tl.with_columns([pl.lit(None, pl.Float64).alias(t) for t in tags[::2]])
    half_b = tl.with_columns([pl.lit(None, pl.Float64).alias(t) for t in tags[1::2]])
    split = pl.concat([half_a, half_b]).sample(fraction=1.0, shuffle=True, seed=3)
    assert not features.timeline.sorted_unique(split)
    _assert_products_match(features.products_from_timeline(split), split)
    # shuffled but one row per minute: sorted, then the fast path
    shuffled = tl.sample(fraction=1.0, shuffle=True, seed=4)
    _assert_products_match(features.products_from_timeline(shuffled), shuffled)
