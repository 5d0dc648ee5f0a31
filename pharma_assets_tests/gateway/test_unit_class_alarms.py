"""Live CPP alarms for units of other classes (issue 15): each unit is judged by its own
product spec and its class's phase rule (no phases: one phase for the batch; phases by tag
crossings or by time since start), through the gateway's in-process ingest path and the
alarm service built from a gateway config; a bioreactor spec is never applied to a dryer."""

from __future__ import annotations

from pathlib import Path

import pytest

from pharma_assets.gateway.alarms import MesPhases
from pharma_assets.gateway.config import AlarmConfig
from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap, TagMapping
from pharma_assets.gateway.records import GOOD, Reading
from pharma_assets.gateway.service import start_alarms
from pharma_assets.gateway.unit_phases import ClassPhases, UnitSpecs
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake

from ..foreign_sites import dryer_spec, moisture_dryer_site

S = 1_000_000
T0 = 1_750_000_000 * S  # source time of the batches' first readings


@pytest.fixture
def specs(tmp_path: Path) -> dict[str, Path]:
    return {
        "FBD1": dryer_spec(tmp_path / "fbd_spec.yaml"),  # no phases: one_phase
        "VD1": moisture_dryer_site(tmp_path / "vd", n_batches=1).spec,  # tag crossings
    }


def test_dryers_judged_by_their_own_spec_and_phase_rule_on_the_live_path(
    tmp_path: Path, specs: dict[str, Path]
) -> None:
    lake = Lake.at(tmp_path / "lake")
    cfg = AlarmConfig(
        lake_dir=tmp_path / "lake",
        unit_specs=specs,
        on_delay_s=5,
        open_deviations=False,
        flush_interval_s=3600,
    )
    svc = start_alarms(cfg, MesPhases(tmp_path / "landing", rescan_s=0))
    gw = Gateway("SITE01", MemoryHotStore(), max_age_s=1e12)
    gw.alarms = svc.engine
    # the dryers' tags are not bioreactor tags: the source's tag map declares them (site tags)
    smap = SourceMap(
        "src",
        {
            t: TagMapping.model_validate({"tag": t, "from_uom": "degC", "uom": "degC"})
            for t in ("inlet_air_temp_c", "shelf_temp_c")
        },
    )

    def send(unit: str, batch: str, tag: str, values: list[float], t0: int, uom: str) -> int:
        for i, v in enumerate(values):
            gw.ingest("src", smap, unit, batch, [(tag, v, uom, t0 + i * 10 * S, GOOD)])
        return t0 + len(values) * 10 * S

    try:
        # fluid-bed dryer, no phases: the whole batch is phase "batch", the base limits
        t = send("FBD1", "DRY-0001", "inlet_air_temp_c", [80.0] * 90, T0, "degC")  # 15 min
        assert svc.engine.open_alarms() == []
        # a bioreactor CPP tag name on the dryer is not a CPP of its spec: never judged
        t = send("FBD1", "DRY-0001", "temperature_c", [55.0] * 12, t, "degC")
        assert svc.engine.open_alarms() == []
        send("FBD1", "DRY-0001", "inlet_air_temp_c", [90.0] * 3, t, "degC")
        (a,) = svc.engine.open_alarms()
        assert (a["unit_id"], a["tag"], a["phase"], a["severity"]) == (
            "FBD1",
            "inlet_air_temp_c",
            "batch",
            "major",
        )
        assert (a["par_lo"], a["par_hi"]) == (72, 88)  # the dryer spec's, no bioreactor limit

        # vacuum dryer, phases by shelf-temperature crossings: 44 °C is fine while loading
        # (base limits) and a PAR break once drying began (drying PAR 45-75)
        t = send("VD1", "VD001", "shelf_temp_c", [44.0] * 60, T0, "degC")
        assert [x["unit_id"] for x in svc.engine.open_alarms()] == ["FBD1"]
        t = send("VD1", "VD001", "shelf_temp_c", [60.0] * 40, t, "degC")  # crosses 45: drying
        phases = svc.engine.phases
        assert isinstance(phases, ClassPhases)
        assert phases.phase_at("VD1", "VD001", t)[0] == "drying"  # type: ignore[index]
        send("VD1", "VD001", "shelf_temp_c", [44.0] * 3, t, "degC")
        vd = [x for x in svc.engine.open_alarms() if x["unit_id"] == "VD1"]
        assert [(x["tag"], x["phase"], x["severity"], x["par_lo"]) for x in vd] == [
            ("shelf_temp_c", "drying", "major", 45)
        ]
    finally:
        svc.close()
    del lake


def test_phase_rules_without_mes(tmp_path: Path, specs: dict[str, Path]) -> None:
    """time_since_start and none, the batch start from MES when it exists, and MES phase
    events winning over the rule."""
    import json

    base = load_spec(specs["VD1"])
    tss = base.model_copy(
        update={
            "phase_rule": base.rule.model_copy(
                update={
                    "kind": "time_since_start",
                    "starts_h": {"loading": 0, "drying": 1.0, "cooling": 3.0},
                    "crossings": (),
                    "first_phase": None,
                }
            )
        }
    )
    none = base.model_copy(update={"phase_rule": base.rule.model_copy(update={"kind": "none"})})
    mes = MesPhases(tmp_path / "landing", rescan_s=0)
    p = ClassPhases(UnitSpecs(load_spec(), {"D1": tss, "D2": none}), mes)

    def r(unit: str, batch: str, ts: int, tag: str = "shelf_temp_c", v: float = 20.0) -> Reading:
        return Reading("s", 0, "X", unit, batch, tag, v, "degC", ts, ts)

    p.observe(r("D1", "B1", T0))
    assert p.phase_at("D1", "B1", T0 + 30 * 60 * S) == ("loading", T0)
    assert p.phase_at("D1", "B1", T0 + 90 * 60 * S) == ("drying", T0 + 3600 * S)
    p.observe(r("D2", "B2", T0))
    assert p.phase_at("D2", "B2", T0 + 60 * S) is None  # rule "none": not judged
    # MES: batch_start an hour before the first reading, and a phase event that wins
    folder = tmp_path / "landing" / "mes" / "D1" / "B3"
    folder.mkdir(parents=True)
    start = "2025-06-15T14:06:40+00:00"  # T0 - 1 h
    events = [
        {"event_type": "batch_start", "event_ts": start, "batch_id": "B3"},
    ]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    p.observe(r("D1", "B3", T0))
    assert p.phase_at("D1", "B3", T0) == ("drying", T0)  # 1 h after the MES start
    (folder / "b.jsonl").write_text(
        json.dumps({"event_type": "phase_start", "event_ts": start, "phase": "cooling"})
    )
    assert p.phase_at("D1", "B3", T0)[0] == "cooling"  # type: ignore[index]
