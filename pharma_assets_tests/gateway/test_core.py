"""Gateway core: mapping through the importer's vocabulary, checks, numbering, rejects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import MappingError, SourceMap, TagMapping
from pharma_assets.gateway.records import BAD, GOOD, now_us

T0 = now_us() - 60_000_000


def _gw(tmp_path: Path) -> Gateway:
    return Gateway("SITE01", MemoryHotStore(), reject_log=tmp_path / "rejected.jsonl")


def _smap(**kw: object) -> SourceMap:
    tags = {
        "TT101": TagMapping(tag="temperature_c", from_uom="K"),
        "PT101": TagMapping(tag="headspace_pressure_bar", from_uom="mbar"),
    }
    return SourceMap("src", tags, **kw)  # type: ignore[arg-type]


def _rejects(tmp_path: Path) -> list[dict]:
    p = tmp_path / "rejected.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_site_names_and_units_map_through_the_importer_conversions(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    out = gw.ingest(
        "src",
        _smap(),
        "BR01",
        "BR01-B0001",
        [
            ("TT101", 310.15, None, T0, GOOD),
            ("PT101", "1013", None, T0, GOOD),
            ("ph", 7.01, "pH", T0, GOOD),
        ],
    )
    got = {r.tag: (r.value, r.uom) for r in out}
    assert got["temperature_c"][1] == "degC"
    assert got["temperature_c"][0] == pytest.approx(37.0)
    assert got["headspace_pressure_bar"] == (pytest.approx(1.013), "bar")
    assert got["ph"] == (7.01, "pH")  # canonical names pass through
    assert [r.seq for r in out] == [1, 2, 3]
    assert all(r.recv_ts_us >= r.source_ts_us for r in out)
    latest = {d["tag"]: d for d in gw.hot.latest("BR01")}
    assert latest["temperature_c"]["value"] == pytest.approx(37.0)


def test_nan_inf_and_non_numeric_payloads_are_bad_quality_not_dropped(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    items = [
        ("ph", v, None, T0 + i, GOOD)
        for i, v in enumerate([float("nan"), float("inf"), "7.0x", None, {"v": 1}, "7.05"])
    ]
    out = gw.ingest("src", _smap(), "BR01", "B", items)
    assert len(out) == 6
    assert [r.quality for r in out] == [BAD] * 5 + [GOOD]
    assert all(math.isnan(r.value) for r in out[:5]) and out[5].value == 7.05
    assert gw.sources["src"].bad_values == 5


def test_unknown_tag_and_unit_are_refused_counted_and_logged(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    out = gw.ingest(
        "src",
        _smap(canonical_names=False),
        "BR01",
        "B",
        [
            ("FOO_1", 1.0, None, T0, GOOD),
            ("ph", 7.0, None, T0, GOOD),
            ("TT101", 310.0, None, T0, GOOD),
        ],
    )
    assert [r.tag for r in out] == ["temperature_c"]
    assert gw.sources["src"].rejected["unknown_tag"] == 2
    smap = SourceMap("src", units={"reactor-1": "BR01"})
    assert gw.ingest("src", smap, "reactor-9", "B", [("ph", 7.0, None, T0, GOOD)]) == []
    assert gw.sources["src"].rejected["unknown_unit"] == 1
    rej = _rejects(tmp_path)
    assert [r["reason"] for r in rej] == ["unknown_tag", "unknown_tag", "unknown_unit"]
    assert rej[0]["name"] == "FOO_1" and "FOO_1" in rej[0]["error"]


def test_wrong_declared_unit_is_refused_with_both_units_named(tmp_path: Path) -> None:
    smap = _smap()
    with pytest.raises(MappingError, match=r"'degF' but the tag map says from_uom 'K'"):
        smap.resolve("TT101", "degF")
    with pytest.raises(MappingError, match=r"no unit conversion from 'furlong' to 'pH'"):
        smap.resolve("ph", "furlong")
    assert smap.resolve("temperature_c", "K").convert(273.15) == pytest.approx(0.0)
    gw = _gw(tmp_path)
    assert gw.ingest("src", smap, "BR01", "B", [("ph", 7.0, "furlong", T0, GOOD)]) == []
    assert gw.sources["src"].rejected["unit_mismatch"] == 1


def test_future_and_far_past_source_times_are_refused(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    now = now_us()
    out = gw.ingest(
        "src",
        _smap(),
        "BR01",
        "B",
        [
            ("ph", 7.0, None, now + 60_000_000, GOOD),  # a minute ahead
            ("ph", 7.0, None, now - 2 * 86_400_000_000, GOOD),  # two days old
            ("ph", 7.0, None, now + 1_000_000, GOOD),
        ],  # 1 s ahead: clock jitter, ok
        recv_us=now,
    )
    assert len(out) == 1
    rej = gw.sources["src"].rejected
    assert rej["future_ts"] == 1 and rej["too_old"] == 1


def test_duplicate_and_out_of_order_readings_are_refused_per_unit_and_tag(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    smap = _smap()
    assert len(gw.ingest("src", smap, "BR01", "B", [("ph", 7.0, None, T0 + 10, GOOD)])) == 1
    # the same message again (QoS 1 redelivery) and an older one
    assert gw.ingest("src", smap, "BR01", "B", [("ph", 7.0, None, T0 + 10, GOOD)]) == []
    assert gw.ingest("src", smap, "BR01", "B", [("ph", 7.1, None, T0 + 5, GOOD)]) == []
    # another tag or unit at the same time is fine
    assert len(gw.ingest("src", smap, "BR02", "B", [("ph", 7.0, None, T0 + 10, GOOD)])) == 1
    rej = gw.sources["src"].rejected
    assert (rej["duplicate"], rej["out_of_order"]) == (1, 1)
    assert gw.sources["src"].readings_in == 4 and gw.sources["src"].accepted == 2
