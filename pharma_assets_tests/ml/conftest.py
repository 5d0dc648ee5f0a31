"""A small plant for the ML tests, simulated and pushed through the lake once per session.

2 units x 40 batches, seed 11. To get enough equipment failures in a few seconds of
simulation, THIS FIXTURE ONLY shortens the bearing, pump and motor-winding lives (failures
with a precursor), sets the sudden feed-pump trips to 3 % of batches and raises the
contamination rate; telemetry is sampled every 10 minutes (the
simulator still integrates at 60 s). The default plant configuration is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import features
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history
from pharma_assets_tests.lake.conftest import ingest_all

SAMPLING_S = 600


@dataclass
class MlPlant:
    root: Path
    landing: Path
    lake_dir: Path
    truth: Path

    def lake(self) -> Lake:
        return Lake.at(self.lake_dir)


def build_ml_plant(root: Path, n_batches: int = 40, units: int = 2, seed: int = 11) -> MlPlant:
    plant = load_plant().with_units(units)
    tags = [t.model_copy(update={"sampling_period_s": SAMPLING_S}) for t in plant.tags]
    rel = plant.reliability.model_copy(
        update={"bearing_life_weibull_scale_h": 900, "pump_life_weibull_scale_h": 1200}
    )
    faults = plant.faults.model_copy(update={"feed_pump_failure": 0.03, "contamination": 0.1})
    motors = plant.motors.model_copy(
        update={
            "winding_life_weibull_scale_h": 2500,
            "feed_pump_bearing_life_weibull_scale_h": 1500,
        }
    )
    plant = plant.model_copy(
        update={"tags": tags, "reliability": rel, "faults": faults, "motors": motors}
    )
    simulate_history(
        plant, load_recipes(), n_batches, seed=seed, out=root / "landing", truth_out=root / "truth"
    )
    ingest_all(Lake.at(root / "lake"), root / "landing")
    return MlPlant(root, root / "landing", root / "lake", root / "truth")


@pytest.fixture(scope="session")
def ml_plant(tmp_path_factory: pytest.TempPathFactory) -> MlPlant:
    return build_ml_plant(tmp_path_factory.mktemp("mlplant"))


@pytest.fixture(scope="session")
def ml_inputs(ml_plant: MlPlant) -> features.MlInputs:
    return features.load_inputs(ml_plant.lake())


@pytest.fixture(scope="session")
def equipment_hours(ml_inputs: features.MlInputs):
    return features.equipment_hour_features(
        ml_inputs.hourly, ml_inputs.maintenance, ml_inputs.batches
    )


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("PHARMA_MLFLOW_URI", uri)
    return uri
