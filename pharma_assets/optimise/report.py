"""One what-if on a lake batch, as text: what `pharma-twin whatif` prints."""

from __future__ import annotations

from datetime import datetime

from pharma_assets.lake.storage import Lake
from pharma_assets.twin.config import RecipeBook, load_recipes

from .calibration import CalibratedBatch, calibrate
from .observations import from_lake
from .whatif import Scenario, WhatIfResult, run_whatif

ROWS = (
    ("titer_g_l", "titer (g/L)", 3),
    ("product_mass_kg", "product mass (kg)", 3),
    ("viability_pct", "viability (%)", 1),
    ("harvest_volume_l", "harvest volume (L)", 0),
    ("peak_ammonia_mmol_l", "peak ammonia (mM)", 2),
    ("aggregates_hmw_pct", "aggregates HMW (%)", 2),
    ("g0f_pct", "G0F (%)", 1),
)


def whatif_for_batch(
    lake: Lake,
    batch_id: str,
    scenario: Scenario,
    as_of: datetime | None = None,
    as_of_day: float | None = None,
    recipes: RecipeBook | None = None,
    n_members: int = 50,
    seed: int = 0,
) -> tuple[CalibratedBatch, WhatIfResult]:
    """Calibrate ``batch_id`` at ``as_of`` (a time, or a day after inoculation) and run
    ``scenario`` on it."""
    obs = from_lake(lake, batch_id, as_of, as_of_h=None if as_of_day is None else as_of_day * 24)
    cal = calibrate(obs, (recipes or load_recipes()).get(obs.recipe_id), n_members, seed)
    return cal, run_whatif(cal, scenario)


def _cell(s: dict[str, float], nd: int) -> str:
    return f"{s['median']:.{nd}f} [{s['p05']:.{nd}f}, {s['p95']:.{nd}f}]"


def format_whatif(cal: CalibratedBatch, res: WhatIfResult) -> list[str]:
    """Baseline vs scenario at harvest: median [90 % interval] over the ensemble."""
    changes = res.scenario.changes()
    lines = [
        cal.message,
        "scenario: "
        + (", ".join(f"{k}={v:g}" for k, v in changes.items()) if changes else "no change"),
        *(f"warning: {w}" for w in res.warnings if w != cal.message),
        "",
        f"{'at harvest':<22}{'baseline':>26}{'scenario':>26}{'change (paired)':>26}",
    ]
    b, o = res.baseline.summary(), res.outcome.summary()
    for key, label, nd in ROWS:
        d = res.delta(key)
        lines.append(f"{label:<22}{_cell(b[key], nd):>26}{_cell(o[key], nd):>26}{_cell(d, nd):>26}")
    lines.append("")
    lines.append(
        "P(release spec met) baseline / scenario: "
        + ", ".join(
            f"{k} {res.baseline_in_spec[k]:.0%} / {res.outcome_in_spec[k]:.0%}"
            for k in res.baseline_in_spec
        )
    )
    lines.append(f"{cal.n_members} calibrated twins; intervals are 5-95 % of the ensemble")
    return lines
