"""The feature build re-reads the timeline only for new or changed batches, and the result
equals the full recomputation."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import features
from pharma_assets.ml.features import incremental as inc_mod

from .conftest import MlPlant


def _store(lake: Lake, inc: features.IncrementalProducts) -> None:
    """What the feature_tables asset writes for the timeline products."""
    for attr, (table, _) in inc_mod.PRODUCT_TABLES.items():
        lake.overwrite("features", table, getattr(inc.products, attr))
    lake.overwrite("features", inc_mod.STATE_TABLE, inc.state())


def _assert_same(a: features.TimelineProducts, b: features.TimelineProducts) -> None:
    for attr in inc_mod.PRODUCT_TABLES:
        x, y = getattr(a, attr), getattr(b, attr)
        assert x.columns == y.columns, attr
        assert x.height == y.height, attr
        # floats to 1e-12 relative: summation order depends on the chunk a batch is read in
        assert_frame_equal(x, y.cast(x.schema), rel_tol=1e-12)  # type: ignore[arg-type]
    assert a.n_batches == b.n_batches


def test_incremental_equals_full(ml_plant: MlPlant, tmp_path: Path) -> None:
    shutil.copytree(ml_plant.lake_dir, tmp_path / "lake")
    lake = Lake.at(tmp_path / "lake")
    first = features.incremental_timeline_products(lake, features.stored_products(lake))
    assert first.full and len(first.recomputed) == len(first.fingerprints) > 3
    _store(lake, first)

    # nothing changed: nothing re-read, the same products
    again = features.incremental_timeline_products(lake, features.stored_products(lake))
    assert not again.full and again.recomputed == [] and again.removed == []
    assert again.reused == len(first.fingerprints)
    _assert_same(first.products, again.products)

    # one batch re-derived (its rows rewritten, shorter), one batch gone
    changed, gone = sorted(first.fingerprints)[1], sorted(first.fingerprints)[2]
    tl = lake.read("silver", "batch_timeline", partition=("batch_id", [changed]))
    assert tl is not None and tl.height > 100
    dt = lake.table("silver", "batch_timeline")
    assert dt is not None
    dt.delete(f"batch_id = '{changed}' OR batch_id = '{gone}'")
    lake.forget()
    lake.append("silver", "batch_timeline", tl.filter(pl.col("elapsed_min") < 3000))

    stored = features.stored_products(lake)
    inc = features.incremental_timeline_products(lake, stored)
    # the changed batch is re-read, the removed one dropped; batches that shared a rewritten
    # Delta file with them may be re-read too, the others are reused
    assert changed in inc.recomputed and gone not in inc.recomputed and inc.removed == [gone]
    assert 0 < inc.reused == len(first.fingerprints) - 1 - len(inc.recomputed)
    full = features.incremental_timeline_products(lake, None)
    assert full.full and gone not in full.fingerprints
    _assert_same(full.products, inc.products)
    assert inc.fingerprints == full.fingerprints
    hourly = inc.products.hourly
    assert hourly.filter(pl.col("batch_id") == gone).is_empty()
    assert hourly.filter(pl.col("batch_id") == changed)["elapsed_h"].max() <= 50  # type: ignore[operator]


def test_a_new_products_version_forces_a_full_build(ml_plant: MlPlant, tmp_path: Path) -> None:
    shutil.copytree(ml_plant.lake_dir, tmp_path / "lake")
    lake = Lake.at(tmp_path / "lake")
    first = features.incremental_timeline_products(lake, None)
    _store(lake, first)
    old = first.state().with_columns(products_version=pl.lit(inc_mod.PRODUCTS_VERSION - 1))
    lake.overwrite("features", inc_mod.STATE_TABLE, old)
    assert features.stored_products(lake) is None
