"""Timestamps as historians export them (issue 15): epoch seconds and milliseconds, day-first
and US 12-hour formats, Excel serial dates, a declared format, local time with a zone per
file or per row, DST gaps and folds rejected with the reason (or resolved as the mapping
says, and counted), unreadable rows set aside in import_rejects/ with counts that reconcile.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.importer import import_file

HEADER = ["When", "Batch", "Temp"]


def _map(tmp: Path, **extra: object) -> Path:
    data = {
        "site_id": "HIST",
        "default_unit_id": "R1",
        "columns": {"timestamp": "When", "batch_id": "Batch"},
        "tags": {"Temp": {"tag": "temperature_c", "from_uom": "degC"}},
        **extra,
    }
    p = tmp / f"map_{len(list(tmp.glob('map_*')))}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _csv(tmp: Path, times: list[str], extra: dict[str, list[str]] | None = None) -> Path:
    p = tmp / f"hist_{len(list(tmp.glob('hist_*')))}.csv"
    cols = [*HEADER, *(extra or {})]
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, t in enumerate(times):
            w.writerow([t, "B1", 30 + i, *[v[i] for v in (extra or {}).values()]])
    return p


def _utc(files: list[Path]) -> list[datetime]:
    return sorted(pl.read_parquet(files)["ts"].to_list())


def _u(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fmt", "times", "zone", "expected"),
    [
        ("epoch_s", ["1717236000", "1717236060.5"], "Asia/Tokyo", [(2024, 6, 1, 10, 0, 0)]),
        ("epoch_ms", ["1717236000000", "1717236060500"], "UTC", [(2024, 6, 1, 10, 0, 0)]),
        # Excel serial dates are local wall times: 45444.5 = 2024-06-01 12:00 in Berlin (CEST)
        ("excel", ["45444.5", "45444.5006944444"], "Europe/Berlin", [(2024, 6, 1, 10, 0, 0)]),
        (
            "%d/%m/%Y %H:%M:%S",
            ["01/06/2024 12:00:00", "01/06/2024 12:01:00"],
            "Europe/Berlin",
            [(2024, 6, 1, 10, 0, 0)],
        ),
        # undeclared: a US 12-hour historian export, recognised (the only format reading it)
        (
            None,
            ["06/01/2024 06:00:00 AM", "06/01/2024 06:01:00 AM"],
            "America/New_York",
            [(2024, 6, 1, 10, 0, 0)],
        ),
        # undeclared, day first: 13/06 cannot be a month
        (None, ["13/06/2024 12:00:00", "13/06/2024 12:01:00"], "UTC", [(2024, 6, 13, 12, 0, 0)]),
    ],
)
def test_timestamp_formats(
    tmp_path: Path, fmt: str | None, times: list[str], zone: str, expected: list[tuple]
) -> None:
    extra = {"timezone": zone} | ({"timestamp_format": fmt} if fmt else {})
    rep = import_file(_csv(tmp_path, times), "wide", _map(tmp_path, **extra), tmp_path / "out")
    assert rep.readings_written == 2 and rep.reconciles and not rep.rejected_rows
    got = _utc(rep.files_written)
    assert got[0] == _u(*expected[0])
    assert 59 <= (got[1] - got[0]).total_seconds() <= 61
    assert rep.timestamp_format == (fmt or rep.timestamp_format)


def test_day_month_order_that_cannot_be_told_stops_and_asks_for_the_format(tmp_path: Path) -> None:
    src = _csv(tmp_path, ["03/04/2024 10:00:00", "03/04/2024 10:01:00"])
    with pytest.raises(ValueError, match="declare timestamp_format"):
        import_file(src, "wide", _map(tmp_path), tmp_path / "out")
    rep = import_file(
        src, "wide", _map(tmp_path, timestamp_format="%m/%d/%Y %H:%M:%S"), tmp_path / "out"
    )
    assert _utc(rep.files_written)[0] == _u(2024, 3, 4, 10)


def test_dst_gap_and_fold_are_rejected_with_the_reason_and_counts_reconcile(
    tmp_path: Path,
) -> None:
    """Berlin local times: 02:30 on 2024-03-31 never happened (gap), 02:30 on 2024-10-27
    happened twice (fold); neither is shifted silently. Plus an empty and a garbled time."""
    times = [
        "2024-03-31 01:30:00",
        "2024-03-31 02:30:00",  # gap
        "2024-03-31 03:30:00",
        "2024-10-27 02:30:00",  # fold
        "2024-10-27 03:30:00",
        "",
        "31.02.2024 25:61",
    ]
    m = _map(tmp_path, timezone="Europe/Berlin")
    src = _csv(tmp_path, times)
    rep = import_file(src, "wide", m, tmp_path / "out")
    assert rep.rows_read == 7 and rep.rows_imported == 3 and rep.reconciles
    assert rep.rejected_rows == {
        "non-existent local time in Europe/Berlin (DST gap)": 1,
        "ambiguous local time in Europe/Berlin (DST fold; set dst_ambiguous: earliest or "
        "latest in the mapping)": 1,
        "empty timestamp": 1,
        "not ISO 8601 nor a known historian format (declare timestamp_format)": 1,
    }
    assert _utc(rep.files_written) == [
        _u(2024, 3, 31, 0, 30),
        _u(2024, 3, 31, 1, 30),
        _u(2024, 10, 27, 2, 30),
    ]
    assert rep.rejects_file is not None
    rej = pl.read_csv(rep.rejects_file, infer_schema=False)
    assert rej["source_row"].to_list() == ["2", "4", "6", "7"]
    assert rej.filter(pl.col("source_row") == "2")["When"][0] == "2024-03-31 02:30:00"
    assert "rows NOT imported, timestamp rejected (4" in rep.summary()
    assert "7 read = 3 imported + 4 rejected + 0 skipped" in rep.summary()
    # the mapping may say which of the two 02:30 it means: then it is read, and counted
    for policy, hour in (("earliest", 0), ("latest", 1)):
        r2 = import_file(
            _csv(tmp_path, ["2024-10-27 02:30:00"]),
            "wide",
            _map(tmp_path, timezone="Europe/Berlin", dst_ambiguous=policy),
            tmp_path / f"out_{policy}",
        )
        assert r2.dst_resolved == 1 and _utc(r2.files_written) == [_u(2024, 10, 27, hour, 30)]


def test_time_zone_column_and_cli_report(tmp_path: Path) -> None:
    """Local times with a zone per row (two sites in one export), through the CLI."""
    src = _csv(
        tmp_path,
        ["2024-06-01 12:00:00", "2024-06-01 06:00:00", "2024-06-01 12:02:00", "bad"],
        {"TZ": ["Europe/Berlin", "America/Chicago", "Europe/Berlin", "UTC"]},
    )
    m = _map(tmp_path, columns={"timestamp": "When", "batch_id": "Batch", "timezone": "TZ"})
    r = CliRunner().invoke(
        app,
        [
            "import",
            "--input",
            str(src),
            "--layout",
            "wide",
            "--map",
            str(m),
            "--out",
            str(tmp_path / "landing"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "4 read = 3 imported + 1 rejected + 0 skipped" in r.output
    files = sorted((tmp_path / "landing" / "telemetry").rglob("*.parquet"))
    assert _utc(files) == [_u(2024, 6, 1, 10, 0), _u(2024, 6, 1, 10, 2), _u(2024, 6, 1, 11, 0)]
    bad_zone = _csv(tmp_path, ["2024-06-01 12:00:00"], {"TZ": ["Mars/Olympus"]})
    with pytest.raises(ValueError, match="unknown time zone"):
        import_file(bad_zone, "wide", m, tmp_path / "out2")


def test_mes_and_lims_maps_take_the_same_formats(tmp_path: Path) -> None:
    """MES with US 12-hour local times declared in its map, in Chicago."""
    from pharma_assets.source_import import import_mes

    from .test_source_import import MES_MAP, _events, _yaml

    src = tmp_path / "mes.csv"
    pl.DataFrame(
        {
            "Order": ["B1"],
            "Unit": ["U1"],
            "Begin": ["06/02/2025 08:00:00 AM"],
            "Finish": ["06/02/2025 02:30:00 PM"],
            "TZ": ["America/Chicago"],
            "Recipe": ["R"],
            "Result": ["OK"],
            "Lot": [""],
            "Planned": [""],
            "Growth": [""],
        }
    ).write_csv(src)
    m = _yaml(tmp_path / "m.yaml", {**MES_MAP, "timestamp_format": "%m/%d/%Y %I:%M:%S %p"})
    import_mes(src, m, tmp_path / "landing")
    ev = {e["event_type"]: e["event_ts"] for e in _events(tmp_path / "landing")}
    assert ev["batch_start"] == "2025-06-02T13:00:00Z" and ev["batch_end"] == "2025-06-02T19:30:00Z"
