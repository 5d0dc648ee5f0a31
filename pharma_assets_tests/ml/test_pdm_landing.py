"""The benchmark's landing-zone path to the PdM inputs (benchmarks/pdm_landing.py) gives the
same equipment-hour features as the lake path, so its 1,000-batch figures are the lake's."""

from __future__ import annotations

import numpy as np
import polars as pl

from benchmarks.pdm_landing import load_landing_inputs
from pharma_assets.ml import features, pdm
from pharma_assets_tests.ml.conftest import MlPlant


def test_landing_path_gives_the_lake_features(
    ml_plant: MlPlant, equipment_hours: pl.DataFrame
) -> None:
    inp = load_landing_inputs(ml_plant.landing)
    assert inp.readings > 0
    eq = features.equipment_hour_features(inp.hourly, inp.maintenance, inp.batches)
    key = ["equipment_id", "hour_ts"]
    cols = [c for c in pdm.PDM_FEATURES if c in equipment_hours.columns]
    assert len(cols) == len(pdm.PDM_FEATURES)
    lake = equipment_hours.select(*key, *cols, "failed_state").sort(key)
    land = eq.select(*key, *cols, "failed_state").sort(key)
    assert lake.height == land.height
    assert (lake["hour_ts"] == land["hour_ts"]).all()
    assert (lake["failed_state"] == land["failed_state"]).all()
    for c in cols:  # null and NaN (a one-reading std) alike on both sides
        a = lake[c].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        b = land[c].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=c)
    # and the CMMS failures the labels come from are the same
    f_lake = pdm.failure_events(features.load_inputs(ml_plant.lake()).maintenance)
    assert pdm.failure_events(inp.maintenance).equals(f_lake)
