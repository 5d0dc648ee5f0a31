"""MES, LIMS and CMMS importers, inferred batch boundaries, the landing-gap report and the
spec draft (``pharma_assets/source_import.py``): real files in, landing files out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.errors import ConfigError
from pharma_assets.importer import import_file
from pharma_assets.lake.specs import CppSpec
from pharma_assets.source_import import (
    draft_spec,
    import_cmms,
    import_lims,
    import_mes,
    infer_batch_events,
    landing_gaps,
)


def _yaml(p: Path, d: dict) -> Path:
    p.write_text(yaml.safe_dump(d))
    return p


def _events(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(out.glob("mes/*/*/*.jsonl"))
        for line in p.read_text().splitlines()
    ]


MES_MAP = {
    "site_id": "S1",
    "columns": {
        "batch_id": "Order",
        "unit_id": "Unit",
        "start": "Begin",
        "end": "Finish",
        "timezone": "TZ",
        "recipe_id": "Recipe",
        "status": "Result",
        "planned_end": "Planned",
    },
    "lots": {"Lot": "api_lot"},
    "phases": {"Growth": "growth"},
    "status_values": {"OK": "complete", "NOK": "aborted", "RUN": "running"},
}


def test_mes_local_times_with_a_zone_column_become_utc_events(tmp_path: Path) -> None:
    src = tmp_path / "mes.csv"
    pl.DataFrame(
        {
            "Order": ["b1", "B2", "B3"],
            "Unit": ["fbd1", "FBD1", "FBD1"],
            "Begin": ["2025-03-30 01:30:00", "2025-06-02 08:00:00", "2025-06-03 08:00:00"],
            "Finish": ["2025-03-30 04:30:00", "2025-06-02 10:00:00", ""],
            "TZ": ["Europe/Berlin", "America/Chicago", "UTC"],
            "Recipe": ["R1", "R1", "R2"],
            "Result": ["OK", "NOK", "RUN"],
            "Lot": ["L1", "", "L3"],
            "Planned": ["", "", ""],
            # 03:00 CEST: the first wall time after the gap (02:00-03:00 did not happen)
            "Growth": ["2025-03-30 03:00:00", "", ""],
            "Note": ["x", "y", "z"],
        }
    ).write_csv(src)
    rep = import_mes(src, _yaml(tmp_path / "m.yaml", MES_MAP), tmp_path / "landing")
    assert rep.batches == ["B1", "B2", "B3"] and rep.unmapped_columns == ["Note"]
    ev = {(e["batch_id"], e["event_type"]): e for e in _events(tmp_path / "landing")}
    # 01:30 CET (UTC+1) on the night of the DST change = 00:30 UTC; 04:30 CEST = 02:30 UTC
    assert ev[("B1", "batch_start")]["event_ts"] == "2025-03-30T00:30:00Z"
    assert ev[("B1", "batch_end")]["event_ts"] == "2025-03-30T02:30:00Z"
    assert ev[("B1", "phase_start")]["phase"] == "growth"
    assert ev[("B1", "batch_start")]["material_lots"] == {"api_lot": "L1"}
    assert ev[("B2", "batch_start")]["event_ts"] == "2025-06-02T13:00:00Z"  # CDT = UTC-5
    assert ev[("B2", "batch_end")]["status"] == "aborted"
    assert ("B3", "batch_end") not in ev  # running: no end yet
    assert (tmp_path / "landing" / "mes" / "FBD1" / "B1").is_dir()
    # a second import of the same batches is reported, never a second set of events
    again = import_mes(src, _yaml(tmp_path / "m.yaml", MES_MAP), tmp_path / "landing")
    assert again.records_written == 0
    assert again.not_imported_counts == {"batch already has MES files in the landing zone": 3}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"TZ": ["Mars/Olympus"]}, "unknown time zone"),
        ({"Order": ["B1", "B1"]}, "listed more than once"),
        ({"Begin": ["yesterday"]}, "not ISO 8601 nor a known historian format"),
        # a wall time the clocks skipped is not moved to a neighbouring instant
        ({"Begin": ["2025-03-30 02:30:00"], "TZ": ["Europe/Berlin"]}, "DST gap"),
        ({"Begin": ["2025-10-26 02:30:00"], "TZ": ["Europe/Berlin"]}, "DST fold"),
    ],
)
def test_mes_structural_problems_stop_before_writing(tmp_path: Path, change, message) -> None:
    n = len(next(iter(change.values())))
    base = {
        "Order": [f"B{i}" for i in range(n)],
        "Unit": ["U1"] * n,
        "Begin": ["2025-06-02 08:00:00"] * n,
        "Finish": [""] * n,
        "TZ": ["UTC"] * n,
        "Recipe": ["R"] * n,
        "Result": ["OK"] * n,
        "Lot": [""] * n,
        "Planned": [""] * n,
        "Growth": [""] * n,
    }
    base.update(change)
    pl.DataFrame(base).write_csv(tmp_path / "mes.csv")
    with pytest.raises(ValueError, match=message):
        import_mes(tmp_path / "mes.csv", _yaml(tmp_path / "m.yaml", MES_MAP), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mes_map_errors_name_the_field(tmp_path: Path) -> None:
    bad = {**MES_MAP, "phases": {"Growth": "fermentation"}}
    with pytest.raises(ConfigError, match=r"phases\.Growth: unknown phase .fermentation."):
        import_mes(tmp_path / "x.csv", _yaml(tmp_path / "m.yaml", bad), tmp_path / "out")


def test_mes_phase_names_are_the_unit_class_of_the_spec_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MES phase columns name the phases of the spec's unit class: 'heating' is a phase of
    the tray dryer, not of the bioreactor."""
    from .foreign_sites import tray_dryer_spec

    tray = {**MES_MAP, "phases": {"Growth": "heating"}}
    with pytest.raises(ConfigError, match=r"unknown phase 'heating'.*'inoculation'"):
        import_mes(tmp_path / "x.csv", _yaml(tmp_path / "m.yaml", tray), tmp_path / "out")
    monkeypatch.setenv("PHARMA_CPP_SPEC", str(tray_dryer_spec(tmp_path / "vtd_spec.yaml")))
    pl.DataFrame(
        {
            "Order": ["VT1"],
            "Unit": ["VTD7"],
            "Begin": ["2025-06-02 08:00:00"],
            "Finish": ["2025-06-02 13:00:00"],
            "TZ": ["UTC"],
            "Recipe": ["R"],
            "Result": ["OK"],
            "Lot": [""],
            "Planned": [""],
            "Growth": ["2025-06-02 08:40:00"],
        }
    ).write_csv(tmp_path / "mes.csv")
    rep = import_mes(tmp_path / "mes.csv", _yaml(tmp_path / "m.yaml", tray), tmp_path / "out")
    assert rep.records_written == 3  # batch_start, phase_start heating, batch_end


def test_lims_wide_converts_units_and_reports_what_it_leaves_out(tmp_path: Path) -> None:
    src = tmp_path / "lims.csv"
    pl.DataFrame(
        {
            "Run": ["C1", "C1", "C2"],
            "Sampled": ["2025-03-17T10:00:00Z"] * 2 + ["2025-03-18T10:00:00Z"],
            "Type": ["REL", "IPC", "REL"],
            "Titer_mgL": ["3624.3", "", "n/a"],
            "VCD": ["", "12e6", "9e6"],
            "Colour": ["white", "white", "grey"],
        }
    ).write_csv(src)
    m = _yaml(
        tmp_path / "l.yaml",
        {
            "site_id": "S1",
            "default_unit_id": "R1",
            "layout": "wide",
            "columns": {"batch_id": "Run", "sample_ts": "Sampled", "sample_type": "Type"},
            "sample_types": {"REL": "release", "IPC": "in_process"},
            "analytes": {
                "Titer_mgL": {"analyte": "titer_g_l", "from_uom": "mg/L"},
                "VCD": {"analyte": "viable_cell_density_e6_cells_ml", "from_uom": "cells/mL"},
            },
        },
    )
    rep = import_lims(src, m, tmp_path / "landing")
    assert rep.unmapped_columns == ["Colour"]
    assert rep.not_imported_counts == {"value empty or not a number": 1}
    assert any("empty cells" in n and ": 2" in n for n in rep.notes)
    rows = pl.concat(
        [pl.read_csv(p) for p in sorted((tmp_path / "landing").glob("lims/*/*/*.csv"))]
    )
    titer = rows.filter(pl.col("analyte") == "titer_g_l")
    assert titer["value"].to_list() == [pytest.approx(3.6243)] and titer["uom"][0] == "g/L"
    assert titer["sample_id"][0] == "C1-REL" and titer["sample_type"][0] == "release"
    vcd = rows.filter(pl.col("analyte") == "viable_cell_density_e6_cells_ml")
    assert sorted(vcd["value"].to_list()) == [9.0, 12.0]


def test_lims_long_row_units_and_future_results_warn(tmp_path: Path) -> None:
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    src = tmp_path / "lims.csv"
    pl.DataFrame(
        {
            "Batch": ["B1", "B1", "B2", "B2"],
            "When": ["2025-01-01T00:00:00Z"] * 3 + [future],
            "Test": ["LOD", "LOD", "LOD", "Colour"],
            "Result": ["1.2", "0.013", "1.1", "white"],
            "Units": ["%", "fraction", "%", ""],
        }
    ).write_csv(src)
    m = _yaml(
        tmp_path / "l.yaml",
        {
            "site_id": "S1",
            "default_unit_id": "D1",
            "default_sample_type": "release",
            "columns": {
                "batch_id": "Batch",
                "sample_ts": "When",
                "analyte": "Test",
                "value": "Result",
                "uom": "Units",
            },
            "analytes": {"LOD": {"analyte": "loss_on_drying_pct", "from_uom": "%", "uom": "%"}},
        },
    )
    rep = import_lims(src, m, tmp_path / "landing")
    assert rep.records_written == 3
    assert rep.not_imported_counts == {"analyte not in the mapping": 1}
    rows = pl.concat(
        [pl.read_csv(p) for p in sorted((tmp_path / "landing").glob("lims/*/*/*.csv"))]
    )
    assert sorted(rows["value"].to_list()) == [1.1, 1.2, 1.3]  # 0.013 fraction -> 1.3 %
    # a future-dated row that IS imported warns at import time
    src2 = tmp_path / "lims2.csv"
    pl.DataFrame(
        {"Batch": ["B3"], "When": [future], "Test": ["LOD"], "Result": ["1.0"], "Units": ["%"]}
    ).write_csv(src2)
    rep2 = import_lims(src2, m, tmp_path / "landing")
    assert rep2.future == 1 and "dated in the future" in rep2.warnings()[0]


def test_cmms_codes_units_and_generated_ids(tmp_path: Path) -> None:
    src = tmp_path / "wo.csv"
    pl.DataFrame(
        {
            "Date": ["2025-06-03T10:00:00Z", "2025-06-04T10:00:00Z", "2025-06-05T10:00:00Z"],
            "Asset": ["fbd1-fan", "FBD1-FAN", "FBD1-FILTER"],
            "Type": ["PM", "BRK", "INSP"],
            "Down_min": ["45", "", "10"],
        }
    ).write_csv(src)
    m = _yaml(
        tmp_path / "c.yaml",
        {
            "site_id": "S1",
            "default_unit_id": "FBD1",
            "downtime_uom": "min",
            "columns": {
                "event_ts": "Date",
                "equipment_id": "Asset",
                "event_type": "Type",
                "downtime_h": "Down_min",
            },
            "event_types": {"PM": "preventive_maintenance", "BRK": "failure"},
        },
    )
    rep = import_cmms(src, m, tmp_path / "landing")
    recs = [
        json.loads(line)
        for p in (tmp_path / "landing").glob("cmms/FBD1/*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert [r["event_type"] for r in recs] == ["preventive_maintenance", "failure"]
    assert recs[0]["downtime_h"] == pytest.approx(0.75) and recs[1]["downtime_h"] is None
    assert recs[0]["equipment_id"] == "FBD1-FAN" and recs[0]["work_order_id"].startswith("WO-IMP-")
    assert rep.not_imported_counts == {"event type not in event_types": 1}
    import_cmms(src, m, tmp_path / "landing2")
    ids = [
        json.loads(x)["work_order_id"]
        for p in (tmp_path / "landing2").glob("cmms/*/*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert ids == [r["work_order_id"] for r in recs]  # stable on re-import


def test_inferred_batches_gaps_and_spec_draft(tmp_path: Path) -> None:
    src = tmp_path / "h.csv"
    pl.DataFrame(
        {
            "Run": ["A", "A", "B"],
            "T": ["2025-01-01T00:00:00Z", "2025-01-01T12:00:00Z", "2025-01-02T00:00:00Z"],
            "Moist": ["0.3", "0.2", "0.25"],
        }
    ).write_csv(src)
    tm = _yaml(
        tmp_path / "t.yaml",
        {
            "site_id": "S1",
            "default_unit_id": "D1",
            "columns": {"timestamp": "T", "batch_id": "Run"},
            "tags": {"Moist": {"tag": "moisture_pct", "from_uom": "fraction", "uom": "%"}},
        },
    )
    land = tmp_path / "landing"
    rep = import_file(src, "wide", tm, land)
    assert rep.readings_written == 3
    gaps = landing_gaps(land).lines()
    assert gaps[0].startswith("2 batches have telemetry but no batch start")
    inf = infer_batch_events(land)
    assert inf.batches == ["A", "B"]
    ev = {(e["batch_id"], e["event_type"]): e for e in _events(land)}
    assert ev[("A", "batch_start")]["event_ts"] == "2025-01-01T00:00:00Z"
    assert ev[("A", "batch_end")]["event_ts"] == "2025-01-01T12:00:00Z"
    assert ev[("A", "batch_start")]["inferred_from"] == "telemetry"
    assert not any("no batch start" in g for g in landing_gaps(land).lines())
    assert any("no LIMS results" in g for g in landing_gaps(land).lines())
    spec = draft_spec(land, "bioreactor", "P1")
    CppSpec.model_validate(spec)
    assert spec["tags"]["moisture_pct"]["uom"] == "%"
    lo, hi = spec["tags"]["moisture_pct"]["physical"]
    assert lo < 20 and hi > 30


def test_cli_says_what_is_missing_and_refuses_bad_arguments(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["import", "--source", "lims", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--source lims needs --input FILE" in r.output
    r = CliRunner().invoke(app, ["import", "--source", "erp", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--source must be one of" in r.output
    r = CliRunner().invoke(
        app, ["import", "--source", "infer-batches", "--out", str(tmp_path / "nothing")]
    )
    assert r.exit_code == 2 and "does not exist" in r.output
