"""The demo's plant when an MQTT broker answers: the built-in plant with its units split
between OPC UA and MQTT, so both protocol paths feed the Live page and no unit is
subscribed twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pharma_assets.demo import demo_mixed_plant, gateway_sources
from pharma_assets.gateway.serve import plan_serving
from pharma_assets.twin.config import load_plant


def _without_protocols(plant_dump: dict) -> dict:
    for a in plant_dump["areas"]:
        a.pop("protocol", None)
        for u in a["units"]:
            u.pop("protocol", None)
    return plant_dump


@pytest.mark.parametrize(("units", "on_opc"), [(6, 3), (5, 3), (1, 1), (8, 4)])
def test_demo_plant_splits_units_between_opcua_and_mqtt(
    tmp_path: Path, units: int, on_opc: int
) -> None:
    path = demo_mixed_plant(tmp_path / "plant.yaml", units)
    plant = load_plant(path)
    # the built-in plant otherwise: same site, tags, equipment, units
    assert _without_protocols(plant.model_dump(mode="json")) == _without_protocols(
        load_plant(None).with_units(units).model_dump(mode="json")
    )
    plan = plan_serving(plant.with_units(units), ["opcua", "mqtt"])
    ids = [f"BR{i:02d}" for i in range(1, units + 1)]
    assert plan.units_over("opcua") == ids[:on_opc]
    assert plan.units_over("mqtt") == ids[on_opc:]
    # the gateway's sources follow the plan: one OPC UA source, and MQTT when a unit is on it
    src = gateway_sources(
        tmp_path / "gw.yaml",
        tmp_path / "landing",
        str(tmp_path / "lake"),
        units,
        "opcua,mqtt",
        str(path),
    )
    kinds = [s["kind"] for s in yaml.safe_load(src.read_text())["sources"]]
    assert kinds == (["opcua", "mqtt_sparkplug"] if units > 1 else ["opcua"])


def test_demo_plant_refuses_no_units(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1 unit"):
        demo_mixed_plant(tmp_path / "plant.yaml", 0)
