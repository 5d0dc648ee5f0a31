"""Learning from history on a small real lake (landing -> bronze -> silver -> gold): the
top-quartile batches against the rest, the proposal placed against them, and the asset."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.defs.optimise.assets import history_patterns
from pharma_assets.lake.storage import Lake
from pharma_assets.optimise import history
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history
from pharma_assets_tests.lake.conftest import ingest_all

N = 10  # FB14 batches on 2 units, no faults, 10-minute sampling


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    root = tmp_path_factory.mktemp("histlake")
    plant = load_plant().with_units(2)
    tags = [t.model_copy(update={"sampling_period_s": 600}) for t in plant.tags]
    faults = plant.faults.model_copy(update={k: 0.0 for k in type(plant.faults).model_fields})
    plant = plant.model_copy(update={"tags": tags, "faults": faults})
    book = load_recipes()
    fb14 = book.get("MAB-A-FB14").model_copy(update={"share": 1.0})
    book = book.model_copy(update={"recipes": [fb14]})
    start = datetime(2026, 3, 2, tzinfo=UTC)
    simulate_history(
        plant, book, N, seed=31, out=root / "landing", truth_out=root / "t", start=start
    )
    lk = Lake.at(root / "lake")
    ingest_all(lk, root / "landing")
    return lk


def _features(lake: Lake) -> pl.DataFrame:
    s = lake.read("gold", "batch_summary")
    assert s is not None
    return history.batch_features(
        s,
        lake.read("silver", "telemetry_stats"),
        lake.read("silver", "batch_phases"),
        lake.read("silver", "lab_results"),
        lake.read("silver", "material_lots"),
    )


def test_features_come_from_the_lake_tables(lake: Lake) -> None:
    f = _features(lake)
    s = lake.read("gold", "batch_summary")
    assert s is not None
    done = s.filter(pl.col("status") == "complete")
    assert f.height == done.height and f.height >= history.MIN_BATCHES
    # the realised set-points are the production-phase means of the control tags
    assert f["T_prod"].is_between(32.5, 33.5).all() and f["ph_sp"].is_between(6.9, 7.1).all()
    assert f["shift_day"].is_between(4.8, 5.2).all()  # FB14 shifts on day 5 (± plan noise)
    assert (f["seed_vcd_e6_cells_ml"] > 0).all()
    # a lot attribute is the site's CoA result of that batch's lot
    lots = lake.read("silver", "material_lots")
    assert lots is not None
    row = f.row(0, named=True)
    coa = lots.filter(
        (pl.col("lot_id") == row["media_lot"]) & (pl.col("attribute") == "manganese_ppb")
    )
    assert row["media_manganese_ppb"] in coa["value"].to_list()


def test_top_quartile_against_the_rest_with_intervals_and_the_proposal(lake: Lake) -> None:
    f = _features(lake)
    prop = {"MAB-A-FB14": {"shift_day": 6.43, "T_prod": 32.88, "ph_sp": 7.0}}
    cur = {"MAB-A-FB14": {"shift_day": 5.0, "T_prod": 33.0, "ph_sp": 7.0}}
    out = history.compare(f, prop, cur)
    assert set(out["feature"]) >= {"T_prod", "shift_day", "seed_vcd_e6_cells_ml"}
    n_top = math.ceil(0.25 * f.height)
    top = f.sort("product_mass_kg", descending=True).head(n_top)
    rest = f.sort("product_mass_kg", descending=True).tail(f.height - n_top)
    r = out.filter(pl.col("feature") == "seed_vcd_e6_cells_ml").row(0, named=True)
    assert r["n_top"] == n_top and r["n_rest"] == f.height - n_top
    assert r["top_mean"] == pytest.approx(top["seed_vcd_e6_cells_ml"].mean())
    seed_top = top["seed_vcd_e6_cells_ml"].to_numpy()
    seed_rest = rest["seed_vcd_e6_cells_ml"].to_numpy()
    assert r["diff"] == pytest.approx(seed_top.mean() - seed_rest.mean())
    stats = out.filter(pl.col("diff").is_not_null())
    assert (stats["diff_lo"] <= stats["diff"]).all() and (stats["diff"] <= stats["diff_hi"]).all()
    assert stats["significant"].to_list() == [
        lo > 0 or hi < 0 for lo, hi in zip(stats["diff_lo"], stats["diff_hi"], strict=True)
    ]
    # the proposed shift (day 6.43) is beyond anything this plant ever ran
    sh = out.filter(pl.col("feature") == "shift_day").row(0, named=True)
    assert sh["proposed"] == 6.43 and sh["proposed_within_history"] is False
    assert sh["proposed_pct_of_top"] == 100.0
    # an unchanged decision is placed but neither agrees nor contradicts
    ph = out.filter(pl.col("feature") == "ph_sp").row(0, named=True)
    assert ph["history_agrees"] is None and ph["current"] == 7.0


def test_too_few_batches_is_a_row_with_the_reason() -> None:
    f = pl.DataFrame(
        {"batch_id": ["A", "B"], "recipe_id": ["R", "R"], "product_mass_kg": [7.0, 8.0]}
    )
    out = history.compare(f)
    assert out.height == 1 and "need 8" in out["note"][0]
    with pytest.raises(ValueError, match="top_share"):
        history.compare(f, top_share=1.0)
    with pytest.raises(ValueError, match="lacks"):
        history.batch_features(f)


def test_welch_interval_matches_scipy() -> None:
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 6), rng.normal(0, 2, 15)
    d, lo, hi = history._welch(a, b)
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    assert d == pytest.approx(a.mean() - b.mean())


def test_asset_writes_the_table_and_passes_its_check(lake: Lake, tmp_path: Path) -> None:
    res = {"lakehouse": LakehouseResource(lake_uri=str(lake.root))}
    with dg.instance_for_test() as inst:
        out = dg.materialize([history_patterns], resources=res, instance=inst)
    assert out.success
    (check,) = out.get_asset_check_evaluations()
    assert check.check_name == "intervals_ordered" and check.passed
    t = lake.read("gold", "history_patterns")
    assert t is not None and t.height > 0 and set(t["recipe_id"]) == {"MAB-A-FB14"}
    assert "proposed" not in t.columns  # no recipe recommendation in this lake yet
