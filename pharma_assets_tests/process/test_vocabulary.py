"""The process vocabulary: unit class files, tag groups, CPPs from the spec, the gas balance."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from pharma_assets.errors import ConfigError
from pharma_assets.lake.specs import load_spec
from pharma_assets.ml import contamination, features, mspc
from pharma_assets.process import gas, vocabulary
from pharma_assets.twin import config


def test_builtin_bioreactor_class() -> None:
    uc = vocabulary.load_unit_class("bioreactor")
    assert vocabulary.builtin_unit_classes() == ["bioreactor"]
    assert uc.phases == ("inoculation", "growth", "production", "harvest")
    assert len(uc.tags) == 20
    assert set(uc.process_tags) | set(uc.condition_tags) == set(uc.tags)
    assert not set(uc.process_tags) & set(uc.condition_tags)
    assert uc.condition_tags == (
        "agitator_vibration_mm_s",
        "agitator_bearing_temp_c",
        "agitator_motor_current_a",
        "feed_pump_current_a",
    )


def test_one_process_tag_list_for_every_model() -> None:
    assert features.PROCESS_TAGS == mspc.PROCESS_TAGS == vocabulary.process_tags()
    assert len(mspc.PROCESS_TAGS) == 16
    assert set(contamination.INPUT_TAGS) <= set(vocabulary.process_tags())
    assert set(features.ROLLUP_TAGS) == set(vocabulary.BIOREACTOR.tags)


def test_cpp_tags_come_from_the_spec(tmp_path: Path) -> None:
    spec = load_spec()
    assert set(vocabulary.cpp_tags(spec)) == set(spec.cpp_tags)
    assert vocabulary.cpp_tags(spec) == features.CPP_TAGS
    raw = yaml.safe_load(Path(spec_path()).read_text())
    raw["tags"]["jacket_temperature_c"].update(cpp=True, nor=[2, 10], par=[0, 12])
    edited = tmp_path / "spec.yaml"
    edited.write_text(yaml.safe_dump(raw))
    assert "jacket_temperature_c" in vocabulary.cpp_tags(load_spec(edited))


def spec_path() -> str:
    from pharma_assets.lake.specs import DEFAULT_SPEC

    return str(DEFAULT_SPEC)


def test_a_unit_class_from_a_file(tmp_path: Path) -> None:
    p = tmp_path / "dryer.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "unit_class": "dryer",
                "phases": [],
                "tags": {
                    "product_temperature_c": {"uom": "degC", "group": "process"},
                    "fan_current_a": {"uom": "A", "group": "condition"},
                },
            }
        )
    )
    uc = vocabulary.load_unit_class(p)
    assert uc.name == "dryer" and uc.phases == ()
    assert vocabulary.process_tags(uc) == ("product_temperature_c",)
    assert vocabulary.condition_tags(p) == ("fan_current_a",)
    # a spec naming a CPP the class does not have is refused, naming the tag
    with pytest.raises(ConfigError, match="temperature_c"):
        vocabulary.cpp_tags(load_spec(), uc)


def test_bad_unit_class_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown unit class 'lyophiliser'"):
        vocabulary.load_unit_class("lyophiliser")
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"unit_class": "x", "tags": {"t": {"uom": "A", "group": "hot"}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml is invalid: tags.t.group"):
        vocabulary.load_unit_class(p)
    with pytest.raises(ConfigError, match="does not exist"):
        vocabulary.load_unit_class(tmp_path / "missing.yaml")


def test_old_names_still_importable() -> None:
    assert config.ConfigError is ConfigError
    assert config.PHASES == vocabulary.PHASES
    assert config.CANONICAL_TAGS == vocabulary.CANONICAL_TAGS


def test_dry_air_fractions_add_up_to_one() -> None:
    assert pytest.approx(1.0, abs=1e-12) == gas.Y_O2_AIR + gas.Y_CO2_AIR + gas.Y_INERT_AIR
    assert gas.Y_INERT_AIR == 0.7901


def test_both_models_compute_the_same_our_cer() -> None:
    tl = pl.DataFrame(
        {
            "batch_id": ["B1", "B1"],
            "unit_id": ["BR01", "BR01"],
            "elapsed_min": [0, 1],
            "minute_ts": pl.datetime_range(
                pl.datetime(2026, 1, 1), pl.datetime(2026, 1, 1, 0, 1), "1m", eager=True
            ),
            **{t: [1.0, 1.0] for t in contamination.INPUT_TAGS},
        }
    ).with_columns(
        air_flow_slpm=pl.lit(80.0),
        o2_flow_slpm=pl.lit(5.0),
        co2_flow_slpm=pl.lit(0.5),
        offgas_o2_pct=pl.lit(19.0),
        offgas_co2_pct=pl.lit(2.5),
        volume_l=pl.lit(1800.0),
    )
    a = contamination.minute_signals(tl)
    b = features.gas_rates(tl.lazy()).collect()
    for c in ("our_mmol_l_h", "cer_mmol_l_h"):
        assert a[c].to_list() == pytest.approx(b[c].to_list())
        assert a[c].is_not_null().all()
    # a culture volume at or below 1 L gives no rate rather than an inflated one
    tiny = gas_rates_at(volume=0.5)
    assert tiny["our_mmol_l_h"][0] is None


def gas_rates_at(volume: float) -> pl.DataFrame:
    row = pl.DataFrame(
        {
            "air_flow_slpm": [80.0],
            "o2_flow_slpm": [0.0],
            "co2_flow_slpm": [0.0],
            "offgas_o2_pct": [19.0],
            "offgas_co2_pct": [2.0],
            "volume_l": [volume],
        }
    )
    return row.with_columns(**gas.our_cer_columns())
