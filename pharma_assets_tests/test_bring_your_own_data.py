"""Bring your own plant (issue 15): foreign exports go from files to a trained, monitoring
platform with `pharma-twin import` + `pipeline` + `train`, and the tables say what a process
engineer would expect (excursions, Cpk, right first time, MSPC alarms on the disturbed
batches, models only where the data supports them, the skips with their reasons).

The plants are built by ``foreign_sites`` (not the twin's shapes): other tag names, units,
sampling, no MES, a titer-only release, local times with a time-zone column.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import yaml
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.compliance import promotions, users
from pharma_assets.compliance.changecontrol import apply_change
from pharma_assets.compliance.users import create_user
from pharma_assets.lake.specs import DEFAULT_SPEC
from pharma_assets.lake.storage import Lake

from .foreign_sites import dryer_site, dryer_spec, sparse_campaign, tray_dryer_site, tray_dryer_spec

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
pytestmark = pytest.mark.slow  # every test: import + pipeline + train of a whole site


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def _product_spec(path: Path, **changes: object) -> Path:
    """The site's own product spec: the built-in one with the site's changes, a new version."""
    spec = yaml.safe_load(DEFAULT_SPEC.read_text())
    spec.update(changes)
    spec["version"] += 1
    spec["change_log"].append(
        {
            "version": spec["version"],
            "date": "2026-12-03",
            "by": "site-process-engineering",
            "reason": "site product spec",
        }
    )
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _auto_promotion(lake: Lake) -> None:
    """Put the auto-promotion policy in force (as the demo does), so models that pass the
    gate become champions signed by the system and the scoring tables are written."""
    create_user(
        lake, "admin", "Ada Admin", "admin", "Root-pass-2026!", "system:test", "t", bootstrap=True
    )
    create_user(lake, "qa.lead", "Quinn Assurance", "qa", "Quality-pass-2026", "admin", "t")
    p = promotions.policy_path()
    apply_change(
        lake, p, p.read_text(), "qa.lead", "Quality-pass-2026", "baseline", promotions.POLICY_TARGET
    )


@pytest.fixture
def site_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no repository dagster.yaml: an ephemeral instance
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("PHARMA_GXP_HOME", str(tmp_path / "gxp_home"))
    monkeypatch.setenv("PHARMA_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PHARMA_GROUND_TRUTH_DIR", str(tmp_path / "no_ground_truth"))
    monkeypatch.delenv("PHARMA_REFERENCE_BATCHES", raising=False)
    return tmp_path


def test_sparse_campaign_without_mes_from_files_to_monitoring(site_env: Path, monkeypatch) -> None:
    """12-hourly samples, 5 tags in other units, no MES, titer-only release in a wide LIMS
    export: import + pipeline + train give excursions, Cpk, right first time on titer, MSPC
    with a golden batch that alarms on the two disturbed batches, and skip what cannot be
    trained with a reason each (no CMMS, no cell-culture off-gas, no aggregates assay)."""
    site = sparse_campaign(site_env / "exports")
    spec = _product_spec(
        site_env / "campaign_spec.yaml",
        phase_rule={"kind": "time_since_start", "starts_h": {"growth": 0, "production": 120}},
    )
    monkeypatch.setenv("PHARMA_CPP_SPEC", str(spec))

    code, out = _cli(
        "import",
        "--input",
        str(site.files["telemetry"]),
        "--layout",
        "wide",
        "--map",
        str(site.maps["telemetry"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "30 batches have telemetry but no batch start" in out
    assert "no CMMS maintenance records" in out
    code, out = _cli(
        "import",
        "--source",
        "lims",
        "--input",
        str(site.files["lims"]),
        "--layout",
        "wide",
        "--map",
        str(site.maps["lims"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "records written:  30" in out
    code, out = _cli("import", "--source", "infer-batches", "--out", "landing")
    assert code == 0, out
    assert "no batch start" not in out

    code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
    assert code == 0, out
    lake = Lake.at(str(site_env / "lake"))
    batches = lake.read("silver", "batches")
    assert batches is not None and batches.height == 30
    assert set(batches["status"]) == {"complete"}
    phases = lake.read("silver", "batch_phases")
    assert phases is not None and set(phases["phase_source"]) == {"rule:time_since_start"}
    summary = lake.read("gold", "batch_summary")
    assert summary is not None
    # the release titer arrives in g/L, converted from mg/L exactly
    assert summary.filter(pl.col("final_titer_g_l").is_null()).height == 0
    assert summary["final_titer_g_l"].median() == pytest.approx(3.8, abs=0.2)  # type: ignore[arg-type]
    bad = summary.filter(pl.col("batch_id").is_in(site.disturbed))
    good = summary.filter(~pl.col("batch_id").is_in(site.disturbed))
    assert (bad["excursions_major"] > 0).all() and (good["excursions_major"] == 0).all()
    assert summary["cpk_temperature_c"].null_count() == 0
    assert (good["cpk_temperature_c"] > 1.0).all() and (bad["cpk_temperature_c"] < 0).all()
    # right first time judged on the assays the site reports (titer only)
    assert good["right_first_time"].all() and not bad["right_first_time"].any()

    _auto_promotion(lake)
    code, out = _cli("train", "--lake", "lake")
    assert code == 0, out
    assert "skipped pdm: no CMMS maintenance records" in out
    assert "skipped contamination: no cell-culture unit" in out
    assert "skipped quality (aggregates_pct)" in out
    caps = lake.read("gold", "model_capabilities")
    assert caps is not None
    by = {(r["capability"], r["target"]): r["applies"] for r in caps.iter_rows(named=True)}
    assert by[("mspc", "")] and not by[("pdm", "")] and not by[("contamination", "")]
    assert by[("quality", "final_titer_g_l")] and not by[("quality", "aggregates_pct")]

    # no model trained on an absent target or a capability that does not apply
    uri = f"sqlite:///{site_env / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    names = {m.name for m in client.search_registered_models()}
    assert "pharma_mspc_pca" in names
    assert not any("aggregates" in n or "galactosylation" in n or "mass" in n for n in names)
    assert "pharma_pdm_failure_72h" not in names and "pharma_contamination_iforest" not in names
    assert lake.read("gold", "contamination_risk") is None
    eh = lake.read("gold", "equipment_health")
    assert eh is not None and eh.height == 0
    devs = lake.read("gxp", "deviations")
    assert devs is None or devs.filter(pl.col("source") == "contamination").height == 0

    # MSPC on 12-hourly data: the disturbed held-out batches alarm; nothing NaN/inf alarmed
    scores = lake.read("gold", "mspc_scores")
    alarms = lake.read("gold", "mspc_alarms")
    golden = lake.read("gold", "golden_batch")
    assert scores is not None and alarms is not None and golden is not None
    per_batch = scores.group_by("batch_id").agg(alarm_hours=pl.col("alarm").sum())
    held = set(per_batch["batch_id"])
    assert set(site.disturbed) <= held
    hours = dict(per_batch.iter_rows())
    assert all(hours[b] >= 24 for b in site.disturbed)  # the disturbance lasts 192 h
    assert all(
        math.isfinite(v) and math.isfinite(lim)
        for v, lim in alarms.select("value", "limit").iter_rows()
    )
    assert set(alarms["batch_id"]) >= set(site.disturbed)
    # golden batch: the five tags the site has, no hour without data stored as 0
    observed = golden.filter(pl.col("n_batches") > 0)
    assert set(observed["tag"]) == {
        "temperature_c",
        "ph",
        "dissolved_oxygen_pct",
        "agitation_rpm",
        "headspace_pressure_bar",
    }
    assert (
        golden.filter(pl.col("n_batches") == 0)["mean"].null_count()
        == golden.filter(pl.col("n_batches") == 0).height
    )
    temp = observed.filter(pl.col("tag") == "temperature_c")
    assert temp["mean"].min() > 30  # type: ignore[operator]


def test_dryer_a_unit_class_the_platform_never_saw(site_env: Path, monkeypatch) -> None:
    """A fluid-bed dryer: its own tags in other units (°F, kPa, a moisture fraction), no
    phases, 1.5-3 h batches at 1-minute samples, an MES list in local times with a time-zone
    column, a long LIMS export with a test the site does not map, CMMS with an unmapped code.
    Every source is imported and reported; the site spec judges its CPPs (one phase per
    batch); MSPC monitors the dryer's own tags on a minute-scale maturity grid; nothing of
    the bioreactor (PdM of a feed pump, contamination) is trained, scored or opens a deviation."""
    site = dryer_site(site_env / "exports")
    monkeypatch.setenv("PHARMA_CPP_SPEC", str(dryer_spec(site_env / "dryer_spec.yaml")))

    code, out = _cli(
        "import",
        "--input",
        str(site.files["telemetry"]),
        "--layout",
        "wide",
        "--map",
        str(site.maps["telemetry"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "NOT imported, not in tag map (1): Comment" in out
    assert "24 batches have telemetry but no batch start" in out
    code, out = _cli(
        "import",
        "--source",
        "mes",
        "--input",
        str(site.files["mes"]),
        "--map",
        str(site.maps["mes"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "records written:  48" in out and "no batch start" not in out
    code, out = _cli(
        "import",
        "--source",
        "lims",
        "--input",
        str(site.files["lims"]),
        "--map",
        str(site.maps["lims"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "NOT imported, analyte not in the mapping: 24" in out and "'Colour'" in out
    code, out = _cli(
        "import",
        "--source",
        "cmms",
        "--input",
        str(site.files["cmms"]),
        "--map",
        str(site.maps["cmms"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "NOT imported, event type not in event_types: 1" in out and "'INSP'" in out

    code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
    assert code == 0, out
    lake = Lake.at(str(site_env / "lake"))
    # local MES times (two zones) land on the telemetry's UTC instants: nothing outside the window
    q = lake.read("silver", "telemetry_quarantine")
    assert q is None or q.height == 0, q
    tele = lake.read("silver", "telemetry", ["tag", "value"])
    assert tele is not None and tele.height == 18630
    tags = set(tele["tag"])
    assert tags == {
        "inlet_air_temp_c",
        "outlet_air_temp_c",
        "product_temp_c",
        "chamber_pressure_mbar",
        "air_flow_m3_h",
        "moisture_pct",
    }
    inlet = tele.filter(pl.col("tag") == "inlet_air_temp_c")["value"]
    assert 75 < inlet.median() < 85  # type: ignore[operator]  # °F converted to °C
    batches = lake.read("silver", "batches")
    assert batches is not None and batches.height == 24
    assert batches["material_lots"].str.contains("API-").all()
    phases = lake.read("silver", "batch_phases")
    assert phases is not None and set(phases["phase_source"]) == {"rule:one_phase"}
    summary = lake.read("gold", "batch_summary")
    assert summary is not None
    bad = summary.filter(pl.col("batch_id").is_in(site.disturbed))
    good = summary.filter(~pl.col("batch_id").is_in(site.disturbed))
    assert (bad["excursions_major"] > 0).all() and (good["excursions_total"] == 0).all()
    assert summary["cpk_inlet_air_temp_c"].null_count() == 0
    assert good["right_first_time"].all() and not bad["right_first_time"].any()

    _auto_promotion(lake)
    code, out = _cli("train", "--lake", "lake")
    assert code == 0, out
    assert (
        "skipped pdm: unit class 'fluid_bed_dryer' declares no equipment with condition tags: no PdM"
        in out
    )
    assert "skipped contamination: unit class 'fluid_bed_dryer' is not a cell culture" in out
    assert "pharma_mspc_pca v1: PROMOTED" in out
    assert lake.read("gold", "contamination_risk") is None
    devs = lake.read("gxp", "deviations")
    assert devs is None or devs.filter(pl.col("source") != "cpp_excursion").height == 0
    golden = lake.read("gold", "golden_batch")
    scores = lake.read("gold", "mspc_scores")
    assert golden is not None and scores is not None
    assert set(golden["tag"]) == tags  # the dryer's own tags, nothing of the bioreactor
    assert golden["elapsed_h"].max() <= 3.0  # type: ignore[operator]  # minutes, not hours
    per_batch = dict(scores.group_by("batch_id").agg(pl.col("alarm").sum()).iter_rows())
    assert all(per_batch[b] > 0 for b in site.disturbed)

    # the pages for a unit of a class the dashboards were not written for
    monkeypatch.setenv("PHARMA_LAKE_URI", str(site_env / "lake"))
    pages = {}
    for page in ("bioreactor", "equipment", "models", "batch_quality"):
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.session_state["gxp_session"] = users.login(lake, "qa.lead", "Quality-pass-2026")
        at.run()
        at.switch_page(f"app_pages/{page}.py")
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        pages[page] = at
    br = pages["bioreactor"]
    assert br.multiselect[0].value == ["inlet_air_temp_c", "product_temp_c"]  # the dryer's CPPs
    assert set(br.multiselect[0].options) == tags
    eq_text = " ".join(x.value for x in pages["equipment"].info)
    assert "Predictive maintenance does not apply" in eq_text, eq_text
    warn = " ".join(w.value for w in pages["models"].warning)
    assert "**contamination** skipped: unit class 'fluid_bed_dryer' is not a cell culture" in warn
    assert pages["batch_quality"].selectbox(key="bq_metric").value == "cqa_loss_on_drying_pct"


def test_tray_dryer_own_phases_by_tag_crossing_and_site_tags(site_env: Path, monkeypatch) -> None:
    """A vacuum tray dryer at a site whose tag names and units all differ (°F, Pa, K, W,
    naive Berlin time, a batch column, no MES), with two tags of its own that neither the
    class nor the spec knows. The class's phases (loading, heating, drying, cooling) are
    found by tag crossings declared in the class file; silver indexes them, the spec judges
    the shelf temperature tighter while drying, Cpk is over drying. The site's own tags are
    kept in their unit, charted, and MSPC catches the failing vacuum pump that only they
    show. A tag nobody declared is quarantined with the reason."""
    import numpy as np

    from pharma_assets.twin.landing import chunk_path, write_telemetry_chunk

    from .foreign_sites import TRAY_SITE_TAGS

    site = tray_dryer_site(site_env / "exports")
    monkeypatch.setenv("PHARMA_CPP_SPEC", str(tray_dryer_spec(site_env / "vtd_spec.yaml")))
    code, out = _cli(
        "import",
        "--input",
        str(site.files["telemetry"]),
        "--layout",
        "wide",
        "--map",
        str(site.maps["telemetry"]),
        "--out",
        "landing",
        "--infer-batches",
    )
    assert code == 0, out
    assert "site tags (6," in out and "vacuum_pump_power_kw" in out  # none is a bioreactor tag
    declared = yaml.safe_load((site_env / "landing" / "site_tags" / "VTDSITE.yaml").read_text())
    assert {t: d["uom"] for t, d in declared["tags"].items()}["vacuum_pump_power_kw"] == "kW"
    code, out = _cli(
        "import",
        "--source",
        "lims",
        "--input",
        str(site.files["lims"]),
        "--layout",
        "wide",
        "--map",
        str(site.maps["lims"]),
        "--out",
        "landing",
    )
    assert code == 0, out
    # a tag in neither the class, the spec nor a site's tag map (written by another tool)
    t0 = site.crossings["VT002"]["drying"]
    ts = np.array([int(t0.timestamp() * 1e6) + k * 60_000_000 for k in range(5)], dtype=np.int64)
    write_telemetry_chunk(
        chunk_path(site_env / "landing", "telemetry", "VTD7", "VT002", t0, 900, "parquet"),
        ts,
        "VTDSITE",
        "VTD7",
        "VT002",
        ["stray_probe_x"],
        ["V"],
        np.full((5, 1), 1.5),
        np.zeros((5, 1), dtype=np.int8),
    )

    code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
    assert code == 0, out
    lake = Lake.at(str(site_env / "lake"))
    q = lake.read("silver", "telemetry_quarantine")
    assert q is not None and q.height == 5, q
    assert set(q["failed_check"]) == {"unknown_tag"} and set(q["offending_value"]) == {
        "stray_probe_x"
    }
    tele = lake.read("silver", "telemetry", ["tag", "value", "uom", "phase"])
    assert tele is not None
    class_tags = {"shelf_temp_c", "product_temp_c", "chamber_pressure_mbar", "condenser_temp_c"}
    assert set(tele["tag"]) == class_tags | set(TRAY_SITE_TAGS)
    uoms = dict(tele.select("tag", "uom").unique().iter_rows())
    assert {t: uoms[t] for t in TRAY_SITE_TAGS} == TRAY_SITE_TAGS
    power = tele.filter(pl.col("tag") == "vacuum_pump_power_kw")["value"]
    assert 2.9 < power.median() < 3.1  # type: ignore[operator]  # W converted to kW
    oil = tele.filter(pl.col("tag") == "pump_oil_temp_c")["value"]
    assert 54 < oil.median() < 56  # type: ignore[operator]  # °F converted to °C
    # the class's own phases, found by crossings, on every reading
    assert set(tele["phase"]) == {"loading", "heating", "drying", "cooling"}
    phases = lake.read("silver", "batch_phases")
    assert phases is not None and set(phases["phase_source"]) == {"rule:tag_crossing"}
    for b in site.batches:
        ph = phases.filter(pl.col("batch_id") == b).sort("start_ts")
        assert ph["phase"].to_list() == ["loading", "heating", "drying", "cooling"], b
        for name, start in ph.select("phase", "start_ts").iter_rows():
            if name in site.crossings[b]:
                assert abs((start - site.crossings[b][name]).total_seconds()) <= 120, (b, name)
    tl = lake.read("silver", "batch_timeline", ["phase", *TRAY_SITE_TAGS])
    assert tl is not None and set(tl["phase"].drop_nulls()) == {
        "loading",
        "heating",
        "drying",
        "cooling",
    }
    assert tl["vacuum_pump_power_kw"].is_not_null().sum() > 0

    # the spec judges per phase of the class: the shelf at 73 °C while drying breaks its PAR
    ex = lake.read("gold", "cpp_excursions")
    assert ex is not None
    shelf = ex.filter(pl.col("tag") == "shelf_temp_c")
    assert set(shelf["batch_id"]) == {"VT010"}
    assert set(shelf["phase"]) == {"drying"} and "major" in set(shelf["severity"])
    assert shelf["par_hi"].max() == 70  # the drying PAR, not the base one (75)
    summary = lake.read("gold", "batch_summary")
    assert summary is not None
    good = summary.filter(pl.col("batch_id") != "VT010")
    bad = summary.filter(pl.col("batch_id") == "VT010")
    assert (good["cpk_shelf_temp_c"] > 1.33).all() and (bad["cpk_shelf_temp_c"] < 1.0).all()
    assert good["right_first_time"].all() and not bad["right_first_time"].any()

    _auto_promotion(lake)
    code, out = _cli("train", "--lake", "lake")
    assert code == 0, out
    assert (
        "skipped pdm: unit class 'vacuum_tray_dryer' declares no equipment with condition tags: no PdM"
        in out
    )
    assert "pharma_mspc_pca v1: PROMOTED" in out
    # quality models on the assay the site reports; none on the bioreactor's absent targets
    caps = lake.read("gold", "model_capabilities")
    assert caps is not None
    by = {(r["capability"], r["target"]): r["applies"] for r in caps.iter_rows(named=True)}
    assert by[("quality", "residual_solvent_ppm")]
    assert not any(by[("quality", t)] for t in ("final_titer_g_l", "aggregates_pct"))
    uri = f"sqlite:///{site_env / 'mlflow.db'}"
    names = {
        m.name for m in MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    }
    assert "pharma_quality_residual_solvent_ppm_harvest" in names, names
    assert not any("titer" in n or "aggregates" in n or "pdm" in n for n in names), names
    assert "pharma_contamination_iforest" not in names
    # no bioreactor model scored this unit or opened a deviation on it
    assert lake.read("gold", "contamination_risk") is None
    eh = lake.read("gold", "equipment_health")
    assert eh is None or eh.height == 0
    devs = lake.read("gxp", "deviations")
    assert devs is None or set(devs["source"]) <= {"cpp_excursion"}
    golden = lake.read("gold", "golden_batch")
    scores = lake.read("gold", "mspc_scores")
    assert golden is not None and scores is not None
    assert set(golden["tag"]) == class_tags | set(TRAY_SITE_TAGS)
    # the failing pump shows only in the site's own tags: MSPC alarms on it, and names them
    pump = scores.filter((pl.col("batch_id") == "VT011") & pl.col("alarm").fill_null(False))
    assert pump.height > 0
    tops = " ".join(pump["top_contributors"].drop_nulls().to_list())
    assert "vacuum_pump_power_kw" in tops or "pump_oil_temp_c" in tops, tops

    monkeypatch.setenv("PHARMA_LAKE_URI", str(site_env / "lake"))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["gxp_session"] = users.login(lake, "qa.lead", "Quality-pass-2026")
    at.run()
    at.switch_page("app_pages/bioreactor.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect[0].value == ["shelf_temp_c", "product_temp_c"]
    assert set(at.multiselect[0].options) == class_tags | set(TRAY_SITE_TAGS)
    # a site tag charted with its unit (the dashboards read the site's declarations)
    monkeypatch.setenv("PHARMA_LANDING_DIR", str(site_env / "landing"))
    at.multiselect[0].set_value(["vacuum_pump_power_kw"]).run()
    assert not at.exception, [e.value for e in at.exception]
    charts = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "vacuum_pump_power_kw [kW]" in charts
    # every page works for a unit of this class (or says why it does not apply)
    broken = {}
    for page in sorted(p.stem for p in (APP.parent / "app_pages").glob("*.py")):
        if page in ("__init__", "bioreactor"):
            continue
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.session_state["gxp_session"] = users.login(lake, "qa.lead", "Quality-pass-2026")
        at.run()
        at.switch_page(f"app_pages/{page}.py")
        at.run()
        if at.exception:
            broken[page] = [e.value for e in at.exception]
        if page == "whatif":  # no process model of this class: said, not crashed
            assert "not for 'vacuum_tray_dryer'" in " ".join(i.value for i in at.info)
    assert not broken, broken


@pytest.mark.parametrize("slice_rows", [None, 100], ids=["grouped", "large-file slices"])
def test_tag_crossing_phases_follow_a_running_batch(
    site_env: Path, monkeypatch, slice_rows: int | None
) -> None:
    """A running tray-dryer batch delivered in two parts: the first pipeline run finds the
    crossings its readings hold (loading, heating), the second finds drying and cooling in
    the new readings and labels them so; a rerun of the pipeline keeps what was found
    (silver/batches is rebuilt from MES, batch_phases keeps the crossings). Also with every
    file read slice by slice (silver's bounded-memory path for large files)."""
    if slice_rows is not None:
        monkeypatch.setenv("PHARMA_INGEST_SLICE_ROWS", str(slice_rows))
    site = tray_dryer_site(site_env / "exports", n_batches=1)
    monkeypatch.setenv("PHARMA_CPP_SPEC", str(tray_dryer_spec(site_env / "vtd_spec.yaml")))
    hist = pl.read_csv(site.files["telemetry"])
    start = hist["Zeit"][0]
    mes = site_env / "mes.csv"
    pl.DataFrame({"Charge": ["VT001"], "Start": [start]}).write_csv(mes)
    mes_map = site_env / "mes_map.yaml"
    mes_map.write_text(
        yaml.safe_dump(
            {
                "site_id": "VTDSITE",
                "timezone": "Europe/Berlin",
                "default_unit_id": "VTD7",
                "columns": {"batch_id": "Charge", "start": "Start"},
            }
        )
    )
    code, out = _cli(
        "import", "--source", "mes", "--input", str(mes), "--map", str(mes_map), "--out", "landing"
    )
    assert code == 0, out
    cut = site.crossings["VT001"]["drying"] - timedelta(minutes=10)
    local_cut = cut.astimezone(ZoneInfo("Europe/Berlin")).strftime("%Y-%m-%d %H:%M:%S")
    parts = [hist.filter(pl.col("Zeit") < local_cut), hist.filter(pl.col("Zeit") >= local_cut)]
    lake = Lake.at(str(site_env / "lake"))
    seen = []
    for k, part in enumerate(parts):
        f = site_env / f"part{k}.csv"
        part.write_csv(f)
        code, out = _cli(
            "import",
            "--input",
            str(f),
            "--layout",
            "wide",
            "--map",
            str(site.maps["telemetry"]),
            "--out",
            "landing",
        )
        assert code == 0, out
        code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
        assert code == 0, out
        ph = lake.read("silver", "batch_phases")
        assert ph is not None
        seen.append(ph.sort("start_ts")["phase"].to_list())
    assert seen == [["loading", "heating"], ["loading", "heating", "drying", "cooling"]]
    ph = lake.read("silver", "batch_phases")
    assert ph is not None
    starts = dict(ph.select("phase", "start_ts").iter_rows())
    for name in ("heating", "drying", "cooling"):
        assert abs((starts[name] - site.crossings["VT001"][name]).total_seconds()) <= 120
    tele = lake.read("silver", "telemetry", ["ts", "phase"])
    assert tele is not None
    late = tele.filter((pl.col("ts") >= starts["drying"]) & (pl.col("ts") < starts["cooling"]))
    assert late.height > 0 and set(late["phase"]) == {"drying"}
    us = lake.read("gold", "unit_status")
    assert us is not None and us["phase"].to_list() == ["cooling"]  # the running batch's phase
    code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
    assert code == 0, out
    again = lake.read("silver", "batch_phases")
    assert again is not None and again.sort("start_ts").equals(ph.sort("start_ts"))


def test_pdm_for_a_declared_vacuum_pump_from_the_sites_cmms(site_env: Path, monkeypatch) -> None:
    """A vacuum tray dryer whose class declares its vacuum pump (type ``vacuum_pump``, condition
    tags power and oil temperature): without CMMS records PdM is skipped with the reason;
    after `import --source cmms` of the pump's breakdowns and repairs (site codes, local
    times), `pipeline` + `train` learn "fails within 72 h" for the pump from those tags
    (no bioreactor signal involved), score it into gold/equipment_health, and the reported
    held-out recall and false alarms are what the stored predictions give."""
    from mlflow import MlflowClient as Client

    from pharma_assets.ml import registry

    from .foreign_sites import PUMP_DRYER_CLASS, pump_dryer_site
    from .ml.test_pdm import _independent_recall_and_lead

    hist = pump_dryer_site(site_env / "exports")
    site = hist.site
    spec = tray_dryer_spec(site_env / "vtd_spec.yaml", PUMP_DRYER_CLASS)
    monkeypatch.setenv("PHARMA_CPP_SPEC", str(spec))
    for source, layout in (("telemetry", "wide"), ("lims", "wide")):
        extra = ["--infer-batches"] if source == "telemetry" else ["--source", "lims"]
        code, out = _cli(
            "import",
            "--input",
            str(site.files[source]),
            "--layout",
            layout,
            "--map",
            str(site.maps[source]),
            "--out",
            "landing",
            *extra,
        )
        assert code == 0, out
    code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
    assert code == 0, out
    lake = Lake.at(str(site_env / "lake"))
    _auto_promotion(lake)
    # equipment declared, no CMMS: skipped, with the reason
    code, out = _cli("train", "--lake", "lake")
    assert code == 0, out
    assert "skipped pdm: no CMMS maintenance records imported: no PdM" in out, out
    eh = lake.read("gold", "equipment_health")
    assert eh is None or eh.height == 0

    code, out = _cli(
        "import",
        "--source",
        "cmms",
        "--input",
        str(hist.cmms),
        "--map",
        str(hist.cmms_map),
        "--out",
        "landing",
    )
    assert code == 0, out
    assert "event type not in event_types" in out  # the inspections, reported
    code, out = _cli("pipeline", "--landing", "landing", "--lake", "lake")
    assert code == 0, out
    maint = lake.read("silver", "maintenance_events")
    assert maint is not None
    assert maint.filter(pl.col("event_type") == "failure").height == len(hist.failures)
    code, out = _cli("train", "--lake", "lake")
    assert code == 0, out
    assert "skipped pdm" not in out, out
    caps = lake.read("gold", "model_capabilities")
    assert caps is not None
    last = caps.filter(pl.col("capability") == "pdm").sort("assessed_at")
    assert last["applies"][-1] and "VP (vacuum_pump): 8" in last["reason"][-1], last
    assert "pharma_pdm_failure_72h v1: PROMOTED" in out, out

    uri = f"sqlite:///{site_env / 'mlflow.db'}"
    client = Client(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("pharma_pdm_failure_72h", "1")
    run_id = str(mv.run_id)
    run = client.get_run(run_id)
    pred = registry.load_artifact_table(run_id, "holdout_predictions", uri=uri)
    failures = registry.load_artifact_table(run_id, "failures", uri=uri)
    assert set(pred["equipment_id"]) == {"VTD7-VP"} and set(pred["equipment_type"]) == {
        "vacuum_pump"
    }
    # the CMMS breakdowns are the labels' failures, to the minute
    assert sorted(failures["failure_ts"].to_list()) == [
        f.replace(second=0, microsecond=0) for f in hist.failures
    ]
    start = datetime.fromisoformat(run.data.params["eval_start"])
    end = datetime.fromisoformat(run.data.params["eval_end"])
    recall, lead, far = _independent_recall_and_lead(pred, failures, start, end)
    m = run.data.metrics
    assert m["n_failures"] >= 2, m  # held-out breakdowns to catch
    assert m["recall_critical"] == pytest.approx(recall)
    assert m["recall_vacuum_pump"] == pytest.approx(recall)
    assert m["false_alarm_rate_per_equipment_day"] == pytest.approx(far)
    if not math.isnan(lead):
        assert m["median_lead_time_h"] == pytest.approx(lead)
    # the degradation the pump shows before a breakdown is learnt (well above chance)
    assert m["roc_auc"] > 0.8, m
    assert recall >= 0.5, m
    # learnt from the pump's condition tags, not from the time since its last repair alone
    model = registry.load_version("pharma_pdm_failure_72h", "1", uri=uri)
    imp = dict(zip(model.features, model.forests["vacuum_pump"].feature_importances_, strict=True))
    top = max(imp, key=imp.__getitem__)
    assert top.startswith(("s0_", "s1_", "h0_", "h1_")), sorted(imp.items(), key=lambda x: -x[1])

    eh = lake.read("gold", "equipment_health")
    assert eh is not None and eh.height > 0
    assert set(eh["equipment_id"]) == {"VTD7-VP"} and set(eh["equipment_type"]) == {"vacuum_pump"}
    assert eh["failure_probability"].is_between(0, 1).all()

    monkeypatch.setenv("PHARMA_LAKE_URI", str(site_env / "lake"))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["gxp_session"] = users.login(lake, "qa.lead", "Quality-pass-2026")
    at.run()
    at.switch_page("app_pages/equipment.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["Items monitored"] == "1" and metrics["Highest risk"] == "VTD7-VP", metrics
    assert at.selectbox(key="eq_item").options == ["VTD7-VP"]
