"""Shared fixtures for the lakehouse tests: a small simulated landing zone and lake helpers.

``landing_template`` simulates a small plant once per test session (2 units, 3 batches,
seed 5); ``landing`` gives each test its own copy so tests may add, corrupt or delete files.
``lake`` is an empty Delta lake in the test's temporary folder. ``ingest_all`` runs the
whole pipeline (bronze, silver, gold) with the plain-Python lake functions, no Dagster.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pharma_assets.lake import bronze, gold, material_lots, silver
from pharma_assets.lake.landing_scan import SOURCES, files_for_source, scan_landing
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history


@pytest.fixture(scope="session")
def landing_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plant")
    plant = load_plant().with_units(2)
    simulate_history(
        plant, load_recipes(), 3, seed=5, out=root / "landing", truth_out=root / "truth"
    )
    return root / "landing"


@pytest.fixture
def landing(landing_template: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "landing"
    shutil.copytree(landing_template, dst)
    return dst


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.at(tmp_path / "lake")


@dataclass
class PipelineCounts:
    bronze: dict[str, bronze.IngestReport]
    silver: silver.SilverReport
    gold: dict[str, int]


def ingest_all(lake: Lake, landing: Path, run_id: str = "test") -> PipelineCounts:
    """Everything landed -> bronze -> silver -> gold, in dependency order."""
    spec = load_spec()
    files = scan_landing(landing)
    reps = {}
    for src in (*SOURCES, "unroutable"):
        fs = (
            files_for_source(landing, src)
            if src in ("cmms", "unroutable")
            else [f for f in files if f.source == src]
        )
        reps[src] = bronze.ingest_files(lake, landing, src, fs, run_id)
    silver.build_batches(lake)
    silver.build_lab_results(lake, spec)
    silver.build_maintenance(lake)
    material_lots.build_material_lots(lake)
    batch_ids = sorted({f.batch_id for f in files if f.batch_id})
    srep = silver.process_telemetry(lake, batch_ids, spec, run_id)
    g = gold.build_gold(lake, spec)
    return PipelineCounts(reps, srep, g)


@pytest.fixture
def run_pipeline():
    return ingest_all
