"""A small simulated plant for the contamination and MSPC tests (helper ML-B's fixture).

Built once per test process with the real simulator and the plain-Python lake pipeline
(``ingest_all`` of the lakehouse tests). The fault rates and the recipe mix are raised /
narrowed in a modified COPY of the default configuration (the shipped config is unchanged):
one recipe, so that enough good batches of it exist, and more faults, so that a handful of
batches contains some to detect.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.twin.config import load_plant, load_recipes
from pharma_assets.twin.history import simulate_history
from pharma_assets_tests.lake.conftest import ingest_all

N_UNITS = 3
N_BATCHES = 14
SEED = 23
FAULT_RATES = {
    "contamination": 0.2,
    "ph_probe_drift": 0.08,
    "do_probe_failure": 0.08,
    "feed_pump_failure": 0.04,
    "chiller_fault": 0.08,
}


@dataclass(frozen=True)
class PlantB:
    """Paths and frames of the simulated plant (frames are read once, treat as read-only)."""

    root: Path
    lake: Lake
    timeline: pl.DataFrame
    batches: pl.DataFrame
    batch_summary: pl.DataFrame
    fault_labels: pl.DataFrame


@functools.cache
def plant_b() -> PlantB:
    """Simulate and ingest the plant (about a minute), once per process."""
    root = Path(tempfile.mkdtemp(prefix="plant_b_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    plant = load_plant().with_units(N_UNITS)
    plant = plant.model_copy(update={"faults": plant.faults.model_copy(update=FAULT_RATES)})
    book = load_recipes()
    first = book.recipes[0].model_copy(update={"share": 1.0})
    book = book.model_copy(update={"recipes": [first]})
    simulate_history(
        plant, book, N_BATCHES, seed=SEED, out=root / "landing", truth_out=root / "truth"
    )
    lake = Lake.at(root / "lake")
    ingest_all(lake, root / "landing")
    tl = lake.read("silver", "batch_timeline")
    b = lake.read("silver", "batches")
    g = lake.read("gold", "batch_summary")
    assert tl is not None and b is not None and g is not None
    return PlantB(root, lake, tl, b, g, pl.read_parquet(root / "truth" / "fault_labels.parquet"))
