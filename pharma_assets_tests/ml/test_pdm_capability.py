"""Which equipment PdM applies to: the items the unit class declares, with their condition
tags recorded and enough CMMS failures of them; otherwise skipped with the numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pharma_assets.lake.storage import Lake
from pharma_assets.ml import capabilities
from pharma_assets.process.vocabulary import UnitClass
from pharma_assets_tests.foreign_sites import PUMP_DRYER_CLASS, TRAY_DRYER_CLASS


def _lake(tmp_path: Path, tags: list[str], events: list[tuple[str, str]]) -> Lake:
    lake = Lake.at(str(tmp_path / "lake"))
    lake.overwrite("silver", "telemetry_stats", pl.DataFrame({"tag": tags, "n": [100] * len(tags)}))
    if events:
        ts = datetime(2025, 9, 1, tzinfo=UTC)
        lake.overwrite(
            "silver",
            "maintenance_events",
            pl.DataFrame(
                {
                    "equipment_id": [e for e, _ in events],
                    "event_type": [t for _, t in events],
                    "event_ts": [ts] * len(events),
                }
            ),
        )
    return lake


def _pdm(lake: Lake, cls: dict) -> capabilities.Capability:
    return capabilities.find(capabilities.assess(lake, {}, None, UnitClass(**cls)), "pdm")


def test_pdm_skips_say_why_with_the_numbers(tmp_path: Path) -> None:
    pump_tags = ["shelf_temp_c", "vacuum_pump_power_kw", "pump_oil_temp_c"]
    # the class's vacuum pump has no condition tags
    c = _pdm(_lake(tmp_path / "a", pump_tags, [("VTD7-VP", "failure")] * 3), TRAY_DRYER_CLASS)
    assert not c.applies and "declares no equipment with condition tags" in c.reason
    # declared with tags, no CMMS
    c = _pdm(_lake(tmp_path / "b", pump_tags, []), PUMP_DRYER_CLASS)
    assert not c.applies and c.reason == "no CMMS maintenance records imported: no PdM"
    # CMMS, but the site records none of the pump's tags
    c = _pdm(
        _lake(tmp_path / "c", ["shelf_temp_c"], [("VTD7-VP", "failure")] * 3), PUMP_DRYER_CLASS
    )
    assert not c.applies and "no telemetry of the declared equipment's condition tags" in c.reason
    # one failure of the pump (and others of an item the class does not declare)
    events = [("VTD7-VP", "failure"), ("VTD7-VP", "corrective_maintenance")]
    events += [("VTD7-FAN", "failure")] * 4
    c = _pdm(_lake(tmp_path / "d", pump_tags, events), PUMP_DRYER_CLASS)
    assert not c.applies
    assert c.reason == (
        "1 CMMS failures of the declared items (VP (vacuum_pump): 1), fewer than 2: no PdM"
    )
    # no failure of a declared item at all
    c = _pdm(_lake(tmp_path / "e", pump_tags, events[1:]), PUMP_DRYER_CLASS)
    assert not c.applies and "5 CMMS records but no failure of a declared item" in c.reason
    # enough
    events = [("VTD7-VP", "failure")] * 2
    c = _pdm(_lake(tmp_path / "f", pump_tags, events), PUMP_DRYER_CLASS)
    assert c.applies and c.reason == "CMMS failures (VP (vacuum_pump): 2) and condition tags"
