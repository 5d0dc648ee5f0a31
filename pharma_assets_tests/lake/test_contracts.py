"""The silver telemetry contract, rule by rule, and the CPP spec file validation.

Each rule is exercised on a small hand-built frame through ``silver.prepare`` (unit
normalisation, batch window, duplicate flag) and ``contracts.route`` (pandera validation and
routing), asserting the quarantine reason, the full list of failed checks and the offending
value; unit normalisation is also checked through the whole pipeline.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from pandera.errors import SchemaErrors

from pharma_assets.lake import bronze, contracts, silver
from pharma_assets.lake.specs import DEFAULT_SPEC, load_spec
from pharma_assets.twin.config import ConfigError

from .conftest import ingest_all

UTC_US = pl.Datetime("us", "UTC")
SPEC = load_spec()
START = datetime(2026, 10, 1, tzinfo=UTC)
END = START + timedelta(days=14)
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
T1 = START + timedelta(hours=1)
BRONZE_SCHEMA = {
    **bronze.SCHEMAS["telemetry"],
    "raw": pl.String(),
    "extra": pl.String(),
    "source_file": pl.String(),
    "row_hash": pl.Int64(),
}


def _row(**kw: Any) -> dict[str, Any]:
    r = {
        "ts": T1,
        "site_id": "SITE01",
        "unit_id": "BR01",
        "batch_id": "B1",
        "tag": "ph",
        "value": 7.0,
        "uom": "pH",
        "quality": "good",
        "raw": None,
        "extra": None,
        "source_file": "telemetry/BR01/B1/f.parquet",
        "row_hash": 1,
    }
    r.update(kw)
    return r


def _batches(end: datetime | None = END) -> tuple[pl.DataFrame, pl.DataFrame]:
    batches = pl.DataFrame(
        {"batch_id": ["B1", "B2"], "start_ts": [START] * 2, "end_ts": [end] * 2},
        schema={"batch_id": pl.String, "start_ts": UTC_US, "end_ts": UTC_US},
    )
    phases = pl.DataFrame(
        {
            "batch_id": ["B1", "B1", "B2"],
            "phase": ["inoculation", "growth", "inoculation"],
            "start_ts": [START, START + timedelta(hours=6), START],
        },
        schema={"batch_id": pl.String, "phase": pl.String, "start_ts": UTC_US},
    )
    return batches, phases


def _route(
    rows: list[dict[str, Any]],
    end: datetime | None = END,
    existing: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    df = pl.DataFrame(rows, schema=BRONZE_SCHEMA)
    batches, phases = _batches(end)
    prepared = silver.prepare(df, SPEC, batches, phases, existing, NOW)
    good, bad = contracts.route(prepared, contracts.telemetry_contract(SPEC))
    assert good.height + bad.height == len(rows)  # nothing lost
    return good, bad


def _only_bad(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """Route ``rows`` (one valid reference row first) and return the single quarantined row."""
    good, bad = _route(rows, **kw)
    assert good.height == len(rows) - 1, bad
    assert bad.height == 1, bad
    return bad.row(0, named=True)


# ------------------------------------------------------------------------- baseline
def test_valid_reading_passes_with_phase_and_canonical_unit():
    good, bad = _route([_row(), _row(ts=START + timedelta(hours=7), value=7.05)])
    assert bad.height == 0
    assert good["uom"].to_list() == ["pH", "pH"]
    assert good["value"].to_list() == [7.0, 7.05]
    assert good["phase"].to_list() == ["inoculation", "growth"]


def test_reason_order_lists_every_contract_check():
    names = {c.name for c in contracts.telemetry_contract(SPEC).checks}
    assert names == set(contracts.REASON_ORDER) == set(contracts.OFFENDING)


# ------------------------------------------------------------------------- one test per rule
def test_type_error():
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), value=None, raw="value=abc")])
    assert bad["failed_check"] == "type_error"
    assert bad["offending_value"] == "value=abc"
    assert bad["failed_checks"].split(",")[0] == "type_error"


def test_type_error_with_batch_id_mismatch_lists_both():
    bad = _only_bad(
        [_row(), _row(ts=T1 + timedelta(minutes=1), value=None, raw="value=abc;batch_id=B9")]
    )
    assert bad["failed_check"] == "type_error"
    assert bad["failed_checks"].split(",")[:2] == ["type_error", "batch_id_mismatch"]


def test_batch_id_mismatch():
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), raw="batch_id=B9")])
    assert bad["failed_check"] == "batch_id_mismatch"
    assert bad["failed_checks"] == "batch_id_mismatch"
    assert bad["offending_value"] == "batch_id=B9"


def test_unknown_tag():
    bad = _only_bad([_row(), _row(tag="ph_probe_2", uom="pH")])
    assert bad["failed_check"] == "unknown_tag"
    assert bad["offending_value"] == "ph_probe_2"
    assert "unknown_uom" not in bad["failed_checks"]  # the unit of an unknown tag is moot


def test_unknown_uom():
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), uom="furlong")])
    assert bad["failed_check"] == "unknown_uom"
    assert bad["offending_value"] == "furlong"
    assert bad["uom_raw"] == "furlong" and bad["uom"] is None


def test_unknown_uom_when_unit_belongs_to_another_tag():
    # mbar converts to bar, but pH has no such conversion
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), uom="mbar")])
    assert bad["failed_check"] == "unknown_uom"
    assert bad["offending_value"] == "mbar"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "-inf"), (None, None)],
)
def test_value_not_finite(value: float | None, shown: str | None):
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), value=value)])
    assert bad["failed_check"] == "value_not_finite"
    assert bad["failed_checks"] == "value_not_finite"  # not also physical_limits
    assert bad["offending_value"] == shown


def test_quality_bad():
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), quality="bad")])
    assert bad["failed_check"] == "quality_bad"
    assert bad["offending_value"] == "bad"


def test_quality_uncertain_is_accepted():
    good, bad = _route([_row(), _row(ts=T1 + timedelta(minutes=1), quality="uncertain")])
    assert bad.height == 0 and good.height == 2


@pytest.mark.parametrize(
    ("tag", "uom", "value"),
    [("ph", "pH", 15.0), ("volume_l", "L", -5.0), ("dissolved_oxygen_pct", "%", 250.0)],
)
def test_physical_limits(tag: str, uom: str, value: float):
    lo, hi = SPEC.tags[tag].physical
    assert not lo <= value <= hi
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), tag=tag, uom=uom, value=value)])
    assert bad["failed_check"] == "physical_limits"
    assert float(bad["offending_value"]) == value


def test_physical_limits_apply_to_the_canonical_value():
    # 450 K = 176.85 degC: above the 150 degC limit of temperature_c
    bad = _only_bad([_row(), _row(tag="temperature_c", uom="K", value=450.0)])
    assert bad["failed_check"] == "physical_limits"
    assert math.isclose(float(bad["offending_value"]), 450.0 - 273.15)


def test_outside_batch_window_before_start():
    grace = timedelta(minutes=SPEC.batch_window_grace_minutes)
    early = START - grace - timedelta(minutes=1)
    inside = START - grace + timedelta(minutes=1)
    good, bad = _route([_row(), _row(ts=early), _row(ts=inside)])
    assert good.height == 2 and bad.height == 1
    r = bad.row(0, named=True)
    assert r["failed_check"] == "outside_batch_window"
    assert r["failed_checks"] == "outside_batch_window"
    assert r["offending_value"].startswith(early.strftime("%Y-%m-%d %H:%M:%S"))


def test_outside_batch_window_after_end():
    grace = timedelta(minutes=SPEC.batch_window_grace_minutes)
    late = END + grace + timedelta(minutes=1)
    good, bad = _route([_row(), _row(ts=late), _row(ts=END + grace - timedelta(minutes=1))])
    assert good.height == 2 and bad.height == 1
    assert bad["failed_check"].to_list() == ["outside_batch_window"]


def test_outside_batch_window_when_batch_unknown():
    bad = _only_bad([_row(), _row(batch_id="B404")])
    assert bad["failed_check"] == "outside_batch_window"


def test_ts_in_future():
    # a running batch (no end yet): a reading later than now + tolerance is in the future
    tol = timedelta(minutes=SPEC.future_tolerance_minutes)
    future = NOW + tol + timedelta(minutes=5)
    near = NOW + tol - timedelta(minutes=5)
    good, bad = _route([_row(), _row(ts=future), _row(ts=near)], end=None)
    assert good.height == 2 and bad.height == 1
    r = bad.row(0, named=True)
    assert r["failed_check"] == "ts_in_future"
    assert r["failed_checks"] == "ts_in_future"
    assert r["offending_value"].startswith(future.strftime("%Y-%m-%d %H:%M:%S"))


def test_ts_in_future_of_a_completed_batch_is_also_outside_its_window():
    future = NOW + timedelta(days=1)
    bad = _only_bad([_row(), _row(ts=future)])
    assert bad["failed_check"] == "outside_batch_window"
    assert bad["failed_checks"] == "outside_batch_window,ts_in_future"


def test_duplicate_reading_within_delivery_keeps_the_first():
    temp = _row(tag="temperature_c", uom="degC", value=36.5)
    good, bad = _route([_row(value=7.0), _row(value=7.02), temp])
    assert good.height == 2 and bad.height == 1
    r = bad.row(0, named=True)
    assert r["failed_check"] == "duplicate_reading"
    assert r["value"] == 7.02  # the later one is quarantined
    assert good.filter(pl.col("tag") == "ph")["value"].to_list() == [7.0]
    assert r["offending_value"].startswith(T1.strftime("%Y-%m-%d %H:%M:%S"))


def test_duplicate_reading_same_ts_other_unit_is_not_a_duplicate():
    # the other unit's batch, same tag and timestamp
    good, bad = _route([_row(), _row(unit_id="BR02", batch_id="B2")])
    assert bad.height == 0 and good.height == 2
    assert sorted(good["batch_id"]) == ["B1", "B2"]


def test_duplicate_reading_same_ts_other_tag_is_not_a_duplicate():
    good, bad = _route([_row(), _row(tag="agitation_rpm", uom="rpm", value=100.0)])
    assert bad.height == 0 and good.height == 2


def test_duplicate_reading_of_a_reading_already_in_silver():
    existing = pl.DataFrame(
        {"unit_id": ["BR01"], "tag": ["ph"], "ts": [T1]},
        schema={"unit_id": pl.String, "tag": pl.String, "ts": UTC_US},
    )
    good, bad = _route([_row(), _row(ts=T1 + timedelta(minutes=1))], existing=existing)
    assert good["ts"].to_list() == [T1 + timedelta(minutes=1)]
    assert bad["failed_check"].to_list() == ["duplicate_reading"]


def test_first_failed_check_follows_reason_order():
    # bad quality and outside physical limits: quality_bad comes first
    bad = _only_bad([_row(), _row(ts=T1 + timedelta(minutes=1), quality="bad", value=15.0)])
    assert bad["failed_check"] == "quality_bad"
    assert bad["failed_checks"] == "quality_bad,physical_limits"
    assert bad["offending_value"] == "bad"


def test_route_rejects_a_frame_without_the_contract_columns():
    df = pl.DataFrame(_row(), schema=BRONZE_SCHEMA)
    batches, phases = _batches()
    prepared = silver.prepare(df, SPEC, batches, phases, None, NOW).drop("quality")
    with pytest.raises(ValueError, match="columns/types"):
        contracts.route(prepared, contracts.telemetry_contract(SPEC))


# ------------------------------------------------------------------------- unit normalisation
def test_unit_normalisation_kelvin_and_mbar():
    rows = [
        _row(tag="temperature_c", uom="K", value=310.15),
        _row(tag="headspace_pressure_bar", uom="mbar", value=300.0),
        _row(tag="temperature_c", uom="degC", value=36.6, ts=T1 + timedelta(minutes=1)),
        _row(tag="jacket_temperature_c", uom="degF", value=98.6),
        _row(tag="volume_l", uom="m3", value=1.5),
    ]
    good, bad = _route(rows)
    assert bad.height == 0
    got = {(r["tag"], r["uom_raw"]): r for r in good.iter_rows(named=True)}
    k = got[("temperature_c", "K")]
    assert k["uom"] == "degC" and math.isclose(k["value"], 37.0)
    assert float(k["value_raw"]) == 310.15  # the landed value is kept
    mbar = got[("headspace_pressure_bar", "mbar")]
    assert mbar["uom"] == "bar" and math.isclose(mbar["value"], 0.3)
    assert got[("temperature_c", "degC")]["value"] == 36.6
    assert math.isclose(got[("jacket_temperature_c", "degF")]["value"], 37.0)
    assert got[("volume_l", "m3")]["uom"] == "L"
    assert math.isclose(got[("volume_l", "m3")]["value"], 1500.0)
    # valid rows satisfy the accepted-rows contract (canonical unit per tag)
    contracts.accepted_contract(SPEC).validate(
        good.select("ts", "unit_id", "batch_id", "tag", "value", "uom", "_key")
    )
    # ... and the accepted contract refuses a repeated (unit, tag, ts), also when a
    # reading reaches it without silver's duplicate flag
    twice = pl.concat([good.head(1), good.head(1)]).select(
        "ts", "unit_id", "batch_id", "tag", "value", "uom", "_key"
    )
    with pytest.raises(SchemaErrors, match="unique_reading"):
        contracts.accepted_contract(SPEC).validate(twice, lazy=True)
    # a later reading of the same tag is not a duplicate
    later = twice.with_columns(_key=pl.Series([twice["_key"][0], twice["_key"][0] + 1024]))
    contracts.accepted_contract(SPEC).validate(later)


def test_unit_normalisation_through_the_pipeline(lake, landing: Path):
    folder = landing / "telemetry" / "BR01" / "BR01-B0001"
    chunks = sorted(folder.glob("*.parquet"))
    for p in chunks[1:]:
        p.unlink()  # one chunk is enough (keeps the test fast)
    for d in (landing / "telemetry").glob("*/*"):
        if d != folder:
            for p in d.glob("*.parquet"):
                p.unlink()
    src = pl.read_parquet(chunks[0]).with_columns(pl.col(pl.Categorical).cast(pl.String))
    ts = src["ts"].unique().sort()
    k = src.filter(pl.col("tag") == "temperature_c").head(5)
    k = k.with_columns(
        ts=ts.slice(0, 5) + pl.duration(seconds=30), value=pl.col("value") + 273.15, uom=pl.lit("K")
    )
    p = src.filter(pl.col("tag") == "headspace_pressure_bar").head(5)
    p = p.with_columns(
        ts=ts.slice(0, 5) + pl.duration(seconds=30),
        value=pl.col("value") * 1000,
        uom=pl.lit("mbar"),
    )
    pl.concat([k, p]).write_parquet(folder / "20991231T000000Z_09999.parquet")
    ingest_all(lake, landing)
    rel = "telemetry/BR01/BR01-B0001/20991231T000000Z_09999.parquet"
    out = lake.read("silver", "telemetry", filter_expr=pl.col("source_file") == rel)
    assert out.height == 10
    q = lake.read("silver", "telemetry_quarantine")
    assert q.filter(pl.col("source_file") == rel).height == 0
    temp = out.filter(pl.col("tag") == "temperature_c").sort("ts")
    assert temp["uom"].unique().to_list() == ["degC"]
    assert temp["value"].to_list() == pytest.approx(k.sort("ts")["value"] - 273.15)
    pres = out.filter(pl.col("tag") == "headspace_pressure_bar").sort("ts")
    assert pres["uom"].unique().to_list() == ["bar"]
    assert pres["value"].to_list() == pytest.approx(p.sort("ts")["value"] / 1000)
    rec = silver.reconcile_telemetry(lake, str(landing), ["BR01-B0001"])
    assert rec["reconciled"], rec


# ------------------------------------------------------------------------- spec file
def _write_spec(tmp_path: Path, edit: Any) -> Path:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    edit(raw)
    path = tmp_path / "cpp_spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_default_spec_loads():
    assert SPEC.version >= 1
    assert "ph" in SPEC.cpp_tags
    assert SPEC.conversion("temperature_c", "K") == (1.0, -273.15)
    assert SPEC.conversion("ph", "mbar") is None


def test_spec_missing_field_names_the_field(tmp_path: Path):
    path = _write_spec(tmp_path, lambda r: r["tags"]["ph"].pop("uom"))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert "tags.ph.uom" in str(e.value) and str(path) in str(e.value)


def test_spec_wrong_type_names_the_field(tmp_path: Path):
    path = _write_spec(tmp_path, lambda r: r.update(settle_minutes="four hours"))
    with pytest.raises(ConfigError, match="settle_minutes"):
        load_spec(path)


def test_spec_unknown_field_rejected(tmp_path: Path):
    path = _write_spec(tmp_path, lambda r: r["tags"]["ph"].update(nominal=7.0))
    with pytest.raises(ConfigError, match=r"tags\.ph\.nominal"):
        load_spec(path)


def test_spec_nor_outside_par_rejected(tmp_path: Path):
    path = _write_spec(tmp_path, lambda r: r["tags"]["ph"].update(nor=[6.5, 7.1]))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert "tags.ph" in str(e.value) and "must lie inside PAR" in str(e.value)


def test_spec_phase_nor_outside_par_rejected(tmp_path: Path):
    def edit(r: dict[str, Any]) -> None:
        r["tags"]["temperature_c"]["phases"]["production"]["nor"] = [31.0, 33.5]

    with pytest.raises(ConfigError) as e:
        load_spec(_write_spec(tmp_path, edit))
    assert "tags.temperature_c.phases.production" in str(e.value)
    assert "must lie inside PAR" in str(e.value)


def test_spec_version_must_match_change_log(tmp_path: Path):
    path = _write_spec(tmp_path, lambda r: r.update(version=r["version"] + 1))
    with pytest.raises(ConfigError, match="change_log"):
        load_spec(path)


def test_spec_not_yaml(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 3\ntags: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(path)


def test_spec_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------- compiled contract
def _every_kind_of_bad_row() -> pl.DataFrame:
    """Prepared rows: valid ones and at least one row per reason, several with more than one
    failed check, a row failing a not-null rule, and a reading already in silver."""
    grace = timedelta(minutes=SPEC.batch_window_grace_minutes)
    m = [T1 + timedelta(minutes=i) for i in range(40)]
    rows = [
        _row(ts=m[0]),
        _row(ts=m[1], value=7.1),
        _row(ts=m[1], tag="temperature_c", uom="K", value=310.15),  # converted: valid
        _row(ts=m[2], value=None, raw="value=abc"),  # type_error
        _row(ts=m[3], value=None, raw="value=abc;batch_id=B9"),  # type_error + batch_id
        _row(ts=m[4], raw="batch_id=B9"),  # batch_id_mismatch
        _row(ts=m[5], raw="unit_id=BR07"),  # unit_id_mismatch
        _row(ts=m[6], tag="ph_probe_2"),  # unknown_tag
        _row(ts=m[7], tag=None, uom=None),  # unknown_tag (null)
        _row(ts=m[8], uom="furlong"),  # unknown_uom
        _row(ts=m[9], uom="mbar"),  # unknown_uom (another tag's unit)
        _row(ts=m[10], value=float("nan")),  # value_not_finite
        _row(ts=m[11], value=float("inf")),
        _row(ts=m[12], quality="bad"),  # quality_bad
        _row(ts=m[13], quality="bad", value=15.0),  # quality_bad + physical_limits
        _row(ts=m[14], quality="uncertain"),  # valid
        _row(ts=m[15], tag="volume_l", uom="L", value=-5.0),  # physical_limits
        _row(ts=m[16], tag="temperature_c", uom="K", value=450.0),  # limits, canonical
        _row(ts=START - grace - timedelta(minutes=1)),  # outside_batch_window
        _row(ts=NOW + timedelta(days=1)),  # outside window + ts_in_future
        _row(ts=m[17], batch_id="B404"),  # unknown batch: outside window
        _row(ts=m[0], value=7.3),  # duplicate_reading (in the delivery)
        _row(ts=m[18]),  # duplicate of a reading already in silver
        _row(ts=None, value=7.0),  # null ts: outside window
        _row(ts=m[19], value=None, quality="bad", raw="value=x;unit_id=BR09", tag="nope"),
        # B2 is running (no end yet): a reading beyond now + tolerance is only in the future
        _row(ts=NOW + timedelta(days=1), unit_id="BR02", batch_id="B2"),
        _row(ts=m[20], unit_id="BR02", batch_id="B2"),
    ]
    existing = pl.DataFrame(
        {"unit_id": ["BR01"], "tag": ["ph"], "ts": [m[18]]},
        schema={"unit_id": pl.String, "tag": pl.String, "ts": UTC_US},
    )
    df = pl.DataFrame(rows, schema=BRONZE_SCHEMA).with_columns(
        row_hash=pl.int_range(pl.len(), dtype=pl.Int64)
    )
    batches, phases = _batches()
    batches = batches.with_columns(
        end_ts=pl.when(pl.col("batch_id") == "B2").then(None).otherwise(pl.col("end_ts"))
    )
    prepared = silver.prepare(df, SPEC, batches, phases, existing, NOW)
    # a row whose batch id is null fails the contract's not-null rule (pandera's own check)
    return prepared.with_columns(
        batch_id=pl.when(pl.col("row_hash") == 1).then(None).otherwise(pl.col("batch_id"))
    )


def test_compiled_route_equals_pandera_on_every_kind_of_bad_row():
    prepared = _every_kind_of_bad_row()
    schema = contracts.telemetry_contract(SPEC)
    assert contracts.compile_contract(schema) is not None  # the fast path is the one taken
    good, bad = contracts.route(prepared, schema)
    ref_good, ref_bad = contracts.route_pandera(prepared, schema)
    assert good.height + bad.height == prepared.height
    # every reason is some row's first, and some rows fail several checks
    assert set(bad["failed_check"]) >= set(contracts.REASON_ORDER)
    assert set(contracts.REASON_ORDER) <= {
        c for cs in bad["failed_checks"].to_list() for c in cs.split(",")
    }
    assert "not_nullable" in ",".join(bad["failed_checks"].to_list())
    assert (bad["failed_checks"].str.count_matches(",") >= 1).sum() >= 4
    assert good.sort("row_hash").equals(ref_good.sort("row_hash"))
    assert bad.columns == ref_bad.columns
    assert bad.sort("row_hash").equals(ref_bad.sort("row_hash"))


def test_compiled_route_equals_pandera_on_valid_rows_only():
    prepared = _every_kind_of_bad_row()
    schema = contracts.telemetry_contract(SPEC)
    good, _ = contracts.route(prepared, schema)
    good2, bad2 = contracts.route(good, schema)
    ref_good, ref_bad = contracts.route_pandera(good, schema)
    assert good2.equals(ref_good) and good2.equals(good)
    assert bad2.height == ref_bad.height == 0
    assert bad2.schema == ref_bad.schema


def test_compiled_accepted_contract_raises_pandera_errors():
    good, _ = contracts.route(_every_kind_of_bad_row(), contracts.telemetry_contract(SPEC))
    cols = ["ts", "unit_id", "batch_id", "tag", "value", "uom", "_key"]
    accepted = contracts.accepted_contract(SPEC)
    assert contracts.compile_contract(accepted) is not None
    contracts.validate(good.select(cols), accepted)  # passes, like pandera
    accepted.validate(good.select(cols))
    broken = {
        "unique_reading": pl.concat([good.head(1), good.head(1)]),
        "canonical_uom": good.with_columns(uom=pl.lit("mbar")),
        "isin": good.with_columns(tag=pl.lit("ph_probe_2")),
        "not_nullable": good.with_columns(value=pl.lit(float("nan"))),
    }
    for check, frame in broken.items():
        with pytest.raises(SchemaErrors, match=check):
            contracts.validate(frame.select(cols), accepted, lazy=True)
        with pytest.raises(SchemaErrors, match=check):
            accepted.validate(frame.select(cols), lazy=True)


def test_a_schema_the_compiler_cannot_read_goes_to_pandera():
    import pandera.polars as pa

    schema = contracts.telemetry_contract(SPEC)
    custom = schema.add_columns({"value": pa.Column(pl.Float64, pa.Check.ge(-1e9), nullable=True)})
    assert contracts.compile_contract(custom) is None
    prepared = _every_kind_of_bad_row()
    good, bad = contracts.route(prepared, custom)
    ref_good, ref_bad = contracts.route_pandera(prepared, custom)
    assert good.sort("row_hash").equals(ref_good.sort("row_hash"))
    assert bad.sort("row_hash").equals(ref_bad.sort("row_hash"))


def test_coa_contract_compiles():
    from pharma_assets.lake import material_lots

    schema = material_lots.coa_contract(material_lots.load_material_spec())
    assert contracts.compile_contract(schema) is not None
