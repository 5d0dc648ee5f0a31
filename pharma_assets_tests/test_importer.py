"""Tests of the historical-data importer: round trips, unit conversion, bad values, errors."""

from __future__ import annotations

import csv
import logging
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from pharma_assets.importer import (
    ImportReport,
    TagMap,
    convert_values,
    import_file,
    load_tag_map,
)
from pharma_assets.twin.config import CANONICAL_TAGS, ConfigError

REPO = Path(__file__).resolve().parents[1]
STEP = timedelta(minutes=10)

WIDE_MAP = {
    "site_id": "SITE01",
    "columns": {"timestamp": "Time", "batch_id": "Batch", "unit_id": "Reactor"},
    "default_unit_id": "BR01",
    "timezone": "UTC",
    "tags": {
        "Temp_K": {"tag": "temperature_c", "from_uom": "K"},
        "pH": {"tag": "ph", "from_uom": "pH"},
        "Pressure_mbar": {"tag": "headspace_pressure_bar", "from_uom": "mbar"},
    },
}
# source column -> (canonical tag, conversion to the canonical unit)
EXPECTED_CONVERSION = {
    "Temp_K": ("temperature_c", lambda x: x - 273.15),
    "pH": ("ph", lambda x: x),
    "Pressure_mbar": ("headspace_pressure_bar", lambda x: x / 1000.0),
}


def _write_map(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _read_back(files: list[Path]) -> pl.DataFrame:
    return pl.read_parquet(files).with_columns(
        pl.col(c).cast(pl.String)
        for c in ("site_id", "unit_id", "batch_id", "tag", "uom", "quality")
    )


def _wide_source(tmp_path: Path) -> tuple[Path, dict[tuple[str, int, str], float], dict[str, set]]:
    """Two batches, 3 days at 10-min steps; B002 starts at 06:00 UTC and is written with a
    +02:00 offset, so it spans 4 UTC days. Returns file, expected readings, expected days."""
    header = ["Time", "Batch", "Reactor", "Temp_K", "pH", "Pressure_mbar", "Operator_Note"]
    batches = [
        ("B001", "BR01", datetime(2024, 3, 1, tzinfo=UTC), UTC),
        ("B002", "BR02", datetime(2024, 3, 4, 6, tzinfo=UTC), timezone(timedelta(hours=2))),
    ]
    rows: list[list[object]] = []
    expected: dict[tuple[str, int, str], float] = {}
    days: dict[str, set] = {}
    for b, (batch, unit, start, shown_tz) in enumerate(batches):
        for i in range(3 * 24 * 6):
            t = start + i * STEP
            src = {
                "Temp_K": 310.15 + 0.5 * math.sin(i / 20) + b,
                "pH": 7.0 + 0.01 * (i % 10),
                "Pressure_mbar": 200.0 + (i % 50) + 0.25 * b,
            }
            rows.append(
                [
                    t.astimezone(shown_tz).isoformat(),
                    batch,
                    unit,
                    *(repr(v) for v in src.values()),
                    "ok" if i % 7 else "checked",
                ]
            )
            for col, v in src.items():
                tag, conv = EXPECTED_CONVERSION[col]
                expected[(batch, _us(t), tag)] = conv(v)
            days.setdefault(batch, set()).add(t.date())
    return _write_csv(tmp_path / "history.csv", header, rows), expected, days


# ---------------------------------------------------------------- wide round trip


def test_wide_round_trip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, expected, days = _wide_source(tmp_path)
    tag_map = _write_map(tmp_path / "map.yaml", WIDE_MAP)
    out = tmp_path / "landing"
    with caplog.at_level(logging.WARNING, logger="pharma_assets.importer"):
        rep = import_file(src, "wide", tag_map, out)

    n_rows = 2 * 3 * 24 * 6
    assert isinstance(rep, ImportReport)
    assert rep.rows_read == n_rows
    assert rep.readings_written == n_rows * 3 == len(expected)  # every mapped non-id cell
    assert rep.bad_values == 0
    assert rep.batches == ["B001", "B002"]
    assert rep.unmapped_columns == ["Operator_Note"]
    assert "Operator_Note" in rep.summary()
    assert any("Operator_Note" in r.getMessage() for r in caplog.records)

    # one file per batch per UTC day, in that batch's landing folder, named by first reading
    assert len(rep.files_written) == len(days["B001"]) + len(days["B002"]) == 3 + 4
    seen: set[tuple[str, object]] = set()
    for f in rep.files_written:
        assert f.exists() and f.suffix == ".parquet"
        part = _read_back([f])
        (batch,) = part["batch_id"].unique().to_list()
        (unit,) = part["unit_id"].unique().to_list()
        assert f.parent == out / "telemetry" / unit / batch
        (day,) = part["ts"].dt.date().unique().to_list()
        assert (batch, day) not in seen
        seen.add((batch, day))
        assert f.name.startswith(part["ts"].min().strftime("%Y%m%dT%H%M%SZ"))
    assert seen == {(b, d) for b, ds in days.items() for d in ds}

    got = _read_back(rep.files_written)
    assert got.schema["ts"] == pl.Datetime("us", "UTC")
    assert got.schema["value"] == pl.Float64
    assert got.height == rep.readings_written
    assert set(got["site_id"]) == {"SITE01"}
    assert set(got["quality"]) == {"good"}
    assert dict(got.select("batch_id", "unit_id").unique().iter_rows()) == {
        "B001": "BR01",
        "B002": "BR02",
    }
    for tag, uom in got.select("tag", "uom").unique().iter_rows():
        assert CANONICAL_TAGS[tag] == uom
    keys = [(b, _us(ts), tag) for b, ts, tag in got.select("batch_id", "ts", "tag").iter_rows()]
    assert sorted(keys) == sorted(expected)  # no reading lost, invented or duplicated
    want = np.array([expected[k] for k in keys])
    np.testing.assert_allclose(got["value"].to_numpy(), want, rtol=0, atol=1e-9)
    # spot-check the conversions with literal numbers
    first = got.filter((pl.col("batch_id") == "B001") & (pl.col("ts") == pl.col("ts").min()))
    vals = dict(first.select("tag", "value").iter_rows())
    assert vals["temperature_c"] == pytest.approx(37.0)
    assert vals["headspace_pressure_bar"] == pytest.approx(0.2)
    assert vals["ph"] == pytest.approx(7.0)


def test_wide_parquet_input_and_tag_map_object(tmp_path: Path) -> None:
    """A Parquet source with a naive datetime column and a TagMap object instead of a path."""
    tm = TagMap.model_validate(
        {
            **WIDE_MAP,
            "columns": {"timestamp": "Time", "batch_id": "Batch"},
            "timezone": "America/New_York",
        }
    )
    t0 = datetime(2024, 7, 1, 22, 0)  # naive, New York summer time = 02:00 UTC next day
    src = tmp_path / "h.parquet"
    pl.DataFrame(
        {
            "Time": [t0, t0 + STEP],
            "Batch": [17, 17],
            "Temp_K": [310.15, 311.15],
            "pH": [7.1, 7.2],
            "Pressure_mbar": [150, 160],
        }
    ).write_parquet(src)
    rep = import_file(src, "wide", tm, tmp_path / "landing")
    assert rep.batches == ["17"] and rep.readings_written == 6 and rep.unmapped_columns == []
    got = _read_back(rep.files_written)
    assert set(got["unit_id"]) == {"BR01"}  # default_unit_id
    assert got["ts"].min() == datetime(2024, 7, 2, 2, 0, tzinfo=UTC)
    temps = got.filter(pl.col("tag") == "temperature_c").sort("ts")["value"].to_list()
    assert temps == pytest.approx([37.0, 38.0])


# ---------------------------------------------------------------- long round trip


LONG_MAP = {
    "site_id": "SITE02",
    "columns": {"timestamp": "Timestamp", "batch_id": "BatchID", "tag": "TagName", "value": "Val"},
    "default_unit_id": "BR07",
    "timezone": "Europe/Berlin",
    "tags": {
        "TIC101.PV": {"tag": "temperature_c", "from_uom": "degF"},
        "FIC-200/PV": {"tag": "feed_rate_ml_h", "from_uom": "L/h"},
        "AIC300": {"tag": "ph", "from_uom": "pH"},
    },
}


def test_long_round_trip(tmp_path: Path) -> None:
    """Naive Berlin times, tags on different grids (no fillers), an unmapped tag name and
    an unmapped extra column, unit conversions degF->degC and L/h->mL/h."""
    rows: list[list[object]] = []
    expected: dict[tuple[str, int, str], float] = {}
    start = datetime(2024, 1, 10, 23, 0)  # naive local (UTC+1): 22:00 UTC
    for batch in ("L-1", "L-2"):
        for i in range(2 * 24 * 6):  # 2 days at 10 min
            local = start + i * STEP
            t_us = _us(local.replace(tzinfo=UTC) - timedelta(hours=1))
            degf = 98.6 + 0.1 * (i % 13)
            rows.append([local.isoformat(sep=" "), batch, "TIC101.PV", repr(degf), "A"])
            expected[(batch, t_us, "temperature_c")] = (degf - 32) * 5 / 9
            if i % 3 == 0:  # every 30 min
                rows.append([local.isoformat(sep=" "), batch, "AIC300", repr(7.0 + i / 1000), "A"])
                expected[(batch, t_us, "ph")] = 7.0 + i / 1000
            if i % 6 == 0:  # hourly
                rows.append([local.isoformat(sep=" "), batch, "FIC-200/PV", repr(0.05 * i), "A"])
                expected[(batch, t_us, "feed_rate_ml_h")] = 50.0 * i
                rows.append([local.isoformat(sep=" "), batch, "SIC400.SPEED", "120", "A"])
    src = _write_csv(
        tmp_path / "long.csv", ["Timestamp", "BatchID", "TagName", "Val", "Status"], rows
    )
    rep = import_file(src, "long", _write_map(tmp_path / "map.yaml", LONG_MAP), tmp_path / "out")

    n_unmapped = sum(1 for r in rows if r[2] == "SIC400.SPEED")
    assert rep.rows_read == len(rows)
    assert rep.readings_written == len(expected) == len(rows) - n_unmapped
    assert rep.skipped_rows == n_unmapped
    assert set(rep.unmapped_columns) == {"Status", "SIC400.SPEED"}
    assert rep.bad_values == 0
    assert rep.batches == ["L-1", "L-2"]
    # local start 23:00 +01:00 over 2 days covers 3 UTC days per batch
    assert len(rep.files_written) == 6
    assert all(f.parent.parent.name == "BR07" for f in rep.files_written)

    got = _read_back(rep.files_written)
    assert got.height == rep.readings_written  # the sparse tags got no NaN fillers
    assert set(got["quality"]) == {"good"} and set(got["site_id"]) == {"SITE02"}
    keys = [(b, _us(ts), tag) for b, ts, tag in got.select("batch_id", "ts", "tag").iter_rows()]
    assert sorted(keys) == sorted(expected)
    want = np.array([expected[k] for k in keys])
    np.testing.assert_allclose(got["value"].to_numpy(), want, rtol=0, atol=1e-9)
    assert got["ts"].min() == datetime(2024, 1, 10, 22, 0, tzinfo=UTC)
    assert dict(got.select("tag", "uom").unique().iter_rows()) == {
        "temperature_c": "degC",
        "ph": "pH",
        "feed_rate_ml_h": "mL/h",
    }


def test_long_layout_needs_tag_and_value_columns(tmp_path: Path) -> None:
    src = _write_csv(
        tmp_path / "x.csv", ["Time", "Batch", "Temp_K"], [["2024-01-01T00:00Z", "B", "300"]]
    )
    with pytest.raises(ValueError, match=r"columns\.tag"):
        import_file(src, "long", _write_map(tmp_path / "m.yaml", WIDE_MAP), tmp_path / "out")


def test_hours_since_batch_start(tmp_path: Path) -> None:
    data = {**WIDE_MAP, "columns": {**WIDE_MAP["columns"], "batch_start": "Start"}}
    rows = [
        [h, "B9", "BR03", "2024-05-01T08:00:00+00:00", 310.15, 7.0, 100] for h in (0, 0.5, 1.25)
    ]
    src = _write_csv(
        tmp_path / "h.csv",
        ["Time", "Batch", "Reactor", "Start", "Temp_K", "pH", "Pressure_mbar"],
        rows,
    )
    rep = import_file(src, "wide", _write_map(tmp_path / "m.yaml", data), tmp_path / "out")
    got = _read_back(rep.files_written)
    t0 = datetime(2024, 5, 1, 8, tzinfo=UTC)
    assert sorted(set(got["ts"])) == [t0, t0 + timedelta(minutes=30), t0 + timedelta(minutes=75)]
    assert rep.unmapped_columns == []  # Start is an id/time column, not an unmapped tag


def test_numeric_times_without_batch_start_is_an_error(tmp_path: Path) -> None:
    src = _write_csv(
        tmp_path / "h.csv", ["Time", "Batch", "Reactor", "Temp_K"], [[1.5, "B", "R", 300]]
    )
    with pytest.raises(ValueError, match="batch_start"):
        import_file(src, "wide", _write_map(tmp_path / "m.yaml", WIDE_MAP), tmp_path / "out")


# ---------------------------------------------------------------- bad values


def test_non_numeric_cells_become_bad_nan_not_dropped(tmp_path: Path) -> None:
    t0 = datetime(2024, 2, 1, tzinfo=UTC)
    rows = [[(t0 + i * STEP).isoformat(), "B1", "BR01", 310.15, 7.0, 100.0, ""] for i in range(6)]
    rows[2][3] = "n/a"  # text in Temp_K
    rows[4][5] = ""  # empty Pressure_mbar
    rows[5][4] = "7,1"  # decimal comma is not a number here
    src = _write_csv(
        tmp_path / "bad.csv",
        ["Time", "Batch", "Reactor", "Temp_K", "pH", "Pressure_mbar", "Operator_Note"],
        rows,
    )
    rep = import_file(src, "wide", _write_map(tmp_path / "m.yaml", WIDE_MAP), tmp_path / "out")

    assert rep.bad_values == 3
    assert rep.readings_written == 6 * 3  # nothing dropped
    assert "3" in rep.summary() and "bad" in rep.summary()
    got = _read_back(rep.files_written)
    assert got.height == 18
    bad = got.filter(pl.col("quality") == "bad").sort("ts")
    assert bad.select("tag").to_series().to_list() == [
        "temperature_c",
        "headspace_pressure_bar",
        "ph",
    ]
    assert bad["ts"].to_list() == [t0 + 2 * STEP, t0 + 4 * STEP, t0 + 5 * STEP]
    assert bad["value"].is_nan().all()
    good = got.filter(pl.col("quality") == "good")
    assert good.height == 15 and not good["value"].is_nan().any()


def test_long_non_numeric_value_is_bad(tmp_path: Path) -> None:
    rows = [
        ["2024-01-01T00:00:00Z", "B", "AIC300", "7.0"],
        ["2024-01-01T00:10:00Z", "B", "AIC300", "ERR"],
    ]
    data = {**LONG_MAP, "timezone": "UTC"}
    src = _write_csv(tmp_path / "l.csv", ["Timestamp", "BatchID", "TagName", "Val"], rows)
    rep = import_file(src, "long", _write_map(tmp_path / "m.yaml", data), tmp_path / "out")
    got = _read_back(rep.files_written).sort("ts")
    assert rep.bad_values == 1 and rep.readings_written == 2
    assert got["quality"].to_list() == ["good", "bad"]
    assert got["value"][0] == 7.0 and math.isnan(got["value"][1])


# ---------------------------------------------------------------- tag-map and input errors


def test_site_tag_without_unit_is_a_load_error(tmp_path: Path) -> None:
    """A tag the platform does not know is a site tag; without its unit it is refused."""
    data = {
        **WIDE_MAP,
        "tags": {**WIDE_MAP["tags"], "Visc": {"tag": "viscosity_cp", "from_uom": "cP"}},
    }
    path = _write_map(tmp_path / "bad_map.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_tag_map(path)
    msg = str(e.value)
    assert "bad_map.yaml" in msg and "tags.Visc" in msg and "viscosity_cp" in msg
    assert "give its engineering unit (uom)" in msg
    with pytest.raises(ValueError, match="viscosity_cp"):  # also before reading any data
        import_file(tmp_path / "not_read.csv", "wide", path, tmp_path / "out")


def test_unknown_unit_conversion_is_an_error_naming_it(tmp_path: Path) -> None:
    data = {**WIDE_MAP, "tags": {"Temp_R": {"tag": "temperature_c", "from_uom": "degR"}}}
    with pytest.raises(ConfigError) as e:
        load_tag_map(_write_map(tmp_path / "m.yaml", data))
    msg = str(e.value)
    assert "m.yaml" in msg and "temperature_c" in msg and "'degR'" in msg and "'degC'" in msg
    with pytest.raises(ValueError, match=r"'psi' to 'L'.*volume_l"):
        TagMap.model_validate({**WIDE_MAP, "tags": {"V": {"tag": "volume_l", "from_uom": "psi"}}})
    with pytest.raises(ValueError, match=r"'kg' to 'bar'.*headspace_pressure_bar"):
        convert_values(np.array([1.0]), "headspace_pressure_bar", "kg")


@pytest.mark.parametrize(
    ("tag", "from_uom", "value", "expected"),
    [
        ("temperature_c", "K", 273.15, 0.0),
        ("temperature_c", "degF", 212.0, 100.0),
        ("temperature_c", "degC", 36.5, 36.5),
        ("headspace_pressure_bar", "mbar", 1013.25, 1.01325),
        ("headspace_pressure_bar", "kPa", 101.325, 1.01325),
        ("headspace_pressure_bar", "psi", 14.503773773, 1.0),
        ("feed_rate_ml_h", "L/h", 0.25, 250.0),
        ("volume_l", "m3", 0.002, 2.0),
        ("volume_l", "mL", 1500.0, 1.5),
    ],
)
def test_unit_conversions(tag: str, from_uom: str, value: float, expected: float) -> None:
    assert convert_values(np.array([value]), tag, from_uom)[0] == pytest.approx(expected, abs=1e-9)


def test_other_map_errors(tmp_path: Path) -> None:
    two_to_one = {
        **WIDE_MAP,
        "tags": {"T1": {"tag": "ph", "from_uom": "pH"}, "T2": {"tag": "ph", "from_uom": "pH"}},
    }
    with pytest.raises(ConfigError, match="same canonical tag"):
        load_tag_map(_write_map(tmp_path / "a.yaml", two_to_one))
    no_unit = {**WIDE_MAP, "columns": {"timestamp": "Time", "batch_id": "Batch"}}
    del no_unit["default_unit_id"]
    with pytest.raises(ConfigError, match="default_unit_id"):
        load_tag_map(_write_map(tmp_path / "b.yaml", no_unit))
    with pytest.raises(ConfigError, match="timezone"):
        load_tag_map(_write_map(tmp_path / "c.yaml", {**WIDE_MAP, "timezone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match=r"columns\.timestamp"):
        load_tag_map(_write_map(tmp_path / "d.yaml", {**WIDE_MAP, "columns": {"batch_id": "B"}}))


def test_missing_column_and_bad_timestamp_errors(tmp_path: Path) -> None:
    tag_map = _write_map(tmp_path / "m.yaml", WIDE_MAP)
    src = _write_csv(
        tmp_path / "a.csv", ["When", "Batch", "Reactor", "Temp_K"], [["2024-01-01", "B", "R", 1]]
    )
    with pytest.raises(ValueError, match=r"'Time' \(tag map columns\.timestamp\) not found"):
        import_file(src, "wide", tag_map, tmp_path / "out")
    src = _write_csv(
        tmp_path / "b.csv",
        ["Time", "Batch", "Reactor", "Temp_K"],
        [["2024-01-01T00:00Z", "B", "R", 1], ["yesterday", "B", "R", 2]],
    )
    # an unreadable timestamp is no structural error: the row is set aside with its reason
    rep = import_file(src, "wide", tag_map, tmp_path / "out", allow_missing_tags=True)
    assert rep.rows_imported == 1 and rep.readings_written == 1 and rep.reconciles
    assert rep.rejected_rows == {
        "not ISO 8601 nor a known historian format (declare timestamp_format)": 1
    }
    assert rep.rejects_file is not None
    rej = pl.read_csv(rep.rejects_file, infer_schema=False)
    assert rej.select("source_row", "Time").rows() == [("2", "yesterday")]


def test_duplicate_readings_are_an_error(tmp_path: Path) -> None:
    row = ["2024-01-01T00:00:00Z", "B", "R", 300, 7.0, 100]
    src = _write_csv(
        tmp_path / "d.csv",
        ["Time", "Batch", "Reactor", "Temp_K", "pH", "Pressure_mbar"],
        [row, row],
    )
    with pytest.raises(ValueError, match="duplicate"):
        import_file(src, "wide", _write_map(tmp_path / "m.yaml", WIDE_MAP), tmp_path / "out")


def test_reimport_adds_files_without_overwriting(tmp_path: Path) -> None:
    rows = [[f"2024-01-01T00:{m:02d}:00Z", "B", "R", 300, 7.0, 100] for m in (0, 10)]
    src = _write_csv(
        tmp_path / "r.csv", ["Time", "Batch", "Reactor", "Temp_K", "pH", "Pressure_mbar"], rows
    )
    tag_map = _write_map(tmp_path / "m.yaml", WIDE_MAP)
    first = import_file(src, "wide", tag_map, tmp_path / "out")
    second = import_file(src, "wide", tag_map, tmp_path / "out")
    assert [p.name for p in first.files_written] == ["20240101T000000Z_00001.parquet"]
    assert [p.name for p in second.files_written] == ["20240101T000000Z_00002.parquet"]
    assert first.files_written[0].exists()


def test_example_tag_map_is_valid() -> None:
    tm = load_tag_map(REPO / "docs" / "examples" / "tag_map_example.yaml")
    assert tm.columns.timestamp and tm.columns.batch_id
    assert all(m.tag in CANONICAL_TAGS for m in tm.tags.values())
