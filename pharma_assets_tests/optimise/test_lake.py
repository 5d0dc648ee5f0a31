"""Calibration and what-if read a batch from a real lake (landing -> bronze -> silver)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pharma_assets.lake.storage import Lake
from pharma_assets.optimise import calibration, observations, whatif
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history
from pharma_assets_tests.lake.conftest import ingest_all

START = datetime(2026, 3, 2, tzinfo=UTC)


def _plant(root: Path, drop_tags: tuple[str, ...] = (), days: float | None = None) -> Lake:
    plant = load_plant().with_units(1)
    tags = [
        t.model_copy(update={"sampling_period_s": 600})
        for t in plant.tags
        if t.tag not in drop_tags
    ]
    faults = plant.faults.model_copy(update={k: 0.0 for k in type(plant.faults).model_fields})
    plant = plant.model_copy(update={"tags": tags, "faults": faults})
    book = load_recipes()
    fb14 = book.get("MAB-A-FB14")
    if days is not None:
        fb14 = fb14.model_copy(update={"planned_duration_days": days})
    book = book.model_copy(update={"recipes": [fb14.model_copy(update={"share": 1.0})]})
    simulate_history(
        plant, book, 1, seed=21, out=root / "landing", truth_out=root / "truth", start=START
    )
    lake = Lake.at(root / "lake")
    ingest_all(lake, root / "landing")
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return _plant(tmp_path_factory.mktemp("optlake"))


def test_from_lake_keeps_only_what_was_known(lake: Lake) -> None:
    bid = "BR01-B0001"
    obs = observations.from_lake(lake, bid, as_of=START + timedelta(days=5, hours=3))
    assert obs.recipe_id == "MAB-A-FB14" and obs.as_of_h == pytest.approx(123.0)
    t_vcd, v_vcd = obs.lims["viable_cell_density_e6_cells_ml"]
    assert len(t_vcd) == 6 and t_vcd.max() <= 123.0 and t_vcd[0] == pytest.approx(0.25)
    assert v_vcd[-1] > 5 * v_vcd[0]
    assert {"volume_l", "feed_rate_ml_h", "capacitance_pf_cm"} <= obs.tags
    assert len(obs.hourly["volume_l"]) == 123
    assert np.isfinite(obs.hourly["volume_l"]).all()
    assert obs.hourly["feed_rate_ml_h"][:70].max() == 0 and obs.hourly["feed_rate_ml_h"][80] > 1000
    assert obs.shift_h == pytest.approx(120, abs=6)  # the production phase started (MES)
    assert obs.end_h is None  # still running at the as-of time
    full = observations.from_lake(lake, bid)  # default: the batch end
    assert full.end_h == pytest.approx(full.as_of_h) and full.end_h > 13 * 24


def test_calibrate_and_what_if_a_lake_batch(lake: Lake) -> None:
    bid = "BR01-B0001"
    truth = pl.read_parquet(Path(lake.root).parent / "truth" / "batches.parquet")
    final = float(truth.filter(truth["batch_id"] == bid)["final_titer_g_l"][0])
    obs = observations.from_lake(lake, bid, as_of=START + timedelta(days=7))
    cal = calibration.calibrate(obs, load_recipes().get("MAB-A-FB14"), n_members=40)
    assert not cal.prior_only and cal.as_of_h == 168.0
    res = whatif.run_whatif(cal, whatif.Scenario())
    s = res.baseline.summary()["titer_g_l"]
    assert s["p05"] * 0.9 <= final <= s["p95"] * 1.1  # a sensible forecast of this batch


def test_a_lake_batch_without_feed_and_volume_tags_is_refused_by_name(tmp_path: Path) -> None:
    lake = _plant(tmp_path, drop_tags=("feed_rate_ml_h", "volume_l"), days=2.5)
    obs = observations.from_lake(lake, "BR01-B0001")
    with pytest.raises(observations.CalibrationDataError) as e:
        calibration.calibrate(obs, load_recipes().get("MAB-A-FB14"))
    assert str(e.value) == (
        "batch BR01-B0001 lacks what calibration needs: tag volume_l, tag feed_rate_ml_h"
    )


def test_cli_whatif_prints_baseline_and_scenario(lake: Lake) -> None:
    from typer.testing import CliRunner

    from pharma_assets.cli import app

    args = ["whatif", "BR01-B0001", "--as-of", "7", "--lake", lake.root, "--members", "20"]
    r = CliRunner().invoke(app, [*args, "--production-temp", "32.5", "--harvest-day", "14.5"])
    assert r.exit_code == 0, r.output
    assert "calibrated batch BR01-B0001 at 168.0 h" in r.output
    assert "scenario: production_temp_c=32.5, harvest_day=14.5" in r.output
    assert "product mass (kg)" in r.output and "baseline" in r.output
    bad = CliRunner().invoke(app, [*args, "--ph", "15"])
    assert bad.exit_code == 1
    assert "pH set-point 15 is outside the physical limits [0, 14]" in bad.output
    missing = CliRunner().invoke(app, ["whatif", "BR09-B0001", "--lake", lake.root])
    assert missing.exit_code == 1 and "'BR09-B0001' is not in silver/batches" in missing.output
