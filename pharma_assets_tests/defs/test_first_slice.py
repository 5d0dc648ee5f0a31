"""`pharma-twin pipeline --latest N` (make demo's first slice), then the rest of the history."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.pipeline import latest_batches, run_pipeline

from .conftest import lakehouse_for


def test_first_slice_then_the_rest(landing: Path, tmp_path: Path) -> None:
    per_unit: dict[str, set[str]] = {}
    for f in scan_landing(landing):
        if f.batch_id and f.unit_id:
            per_unit.setdefault(f.unit_id, set()).add(f.batch_id)
    newest = {max(ids) for ids in per_unit.values()}
    assert latest_batches(str(landing), 1) == newest and len(newest) == len(per_unit)
    assert latest_batches(str(landing), 99) == set().union(*per_unit.values())

    lakehouse = lakehouse_for(landing, tmp_path / "lake")
    lake = lakehouse.lake()
    with dg.instance_for_test() as instance:
        first = run_pipeline(lakehouse, instance, latest=1)
        assert first.ok and set(first.batches) == newest
        status = lake.read("gold", "unit_status")  # what the overview page needs
        assert status is not None and set(status["unit_id"].to_list()) == set(per_unit)
        summary = lake.read("gold", "batch_summary")
        assert summary is not None and set(summary["batch_id"].to_list()) == newest
        rest = run_pipeline(lakehouse, instance)
        assert rest.ok and set(rest.batches) == set().union(*per_unit.values()) - newest
        summary = lake.read("gold", "batch_summary")
        assert summary is not None
        assert set(summary["batch_id"].to_list()) == set().union(*per_unit.values())
