"""Foreign plants for the bring-your-own-data tests: exports shaped like other sites' systems,
not like the twin's landing zone (other tag names, units, sampling, local times, no MES).

Every generator is seeded and writes plain files plus the mapping YAMLs a process engineer
would write for them; the ground truth (which batches were disturbed) is returned, never
written next to the exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import yaml


@dataclass
class Site:
    folder: Path
    files: dict[str, Path]
    maps: dict[str, Path]
    disturbed: list[str]
    batches: list[str]
    crossings: dict[str, dict[str, datetime]] = field(default_factory=dict)  # ground truth


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


#: disturbance kinds of the sparse campaign (0-based batch index -> kind)
SPARSE_DISTURBANCES = ("temp_do", "ph_drift", "pressure_step", "slow_stirrer")


def sparse_campaign(
    folder: Path,
    n_batches: int = 30,
    seed: int = 3,
    disturbed: tuple[int, ...] = (24, 27),
    kinds: dict[int, str] | None = None,
) -> Site:
    """A CHO fed-batch campaign from another simulator: 14-day batches sampled every 12 h,
    five tags (temperature in kelvin, pH, DO, agitation, pressure in mbar), batch ids in a
    column, no MES, a release titer only (LIMS export, wide, mg/L). Batches ``disturbed``
    (0-based) run at 29 °C and DO 16 % from day 6 (the kind of fault MSPC must tell apart);
    ``kinds`` gives other disturbances per batch index: ``ph_drift`` (pH falls 0.002/h from
    day 4), ``pressure_step`` (+60 mbar from day 8), ``slow_stirrer`` (agitation -15 rpm
    from day 3)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = datetime(2025, 3, 3, 8, tzinfo=UTC)
    rows, lims = [], []
    ids = [f"CHO{i + 1:03d}" for i in range(n_batches)]
    for i, b in enumerate(ids):
        start = t0 + timedelta(days=15 * i)
        kind = (kinds or {}).get(i, "temp_do" if i in disturbed else None)
        bad = kind == "temp_do"
        t_h = np.arange(0, 14 * 24 + 1, 12.0)
        temp = 36.8 - 3.5 * (t_h >= 120) + rng.normal(0, 0.08, t_h.size)
        do = 42 + rng.normal(0, 1.5, t_h.size)
        if bad:
            temp = np.where(t_h >= 144, 29.0 + rng.normal(0, 0.1, t_h.size), temp)
            do = np.where(t_h >= 144, 16.0 + rng.normal(0, 0.5, t_h.size), do)
        ph = 7.02 - 0.0002 * t_h + rng.normal(0, 0.01, t_h.size)
        rpm = 95 + 0.1 * t_h + rng.normal(0, 0.5, t_h.size)
        p_mbar = 300 + rng.normal(0, 5, t_h.size)
        if kind == "ph_drift":
            ph = ph - 0.002 * np.clip(t_h - 96, 0, None)
        elif kind == "pressure_step":
            p_mbar = p_mbar + 60 * (t_h >= 192)
        elif kind == "slow_stirrer":
            rpm = rpm - 15 * (t_h >= 72)
        for k, h in enumerate(t_h):
            rows.append(
                {
                    "Run": b,
                    "Timestamp": (start + timedelta(hours=float(h))).strftime("%Y-%m-%d %H:%M:%S"),
                    "Temp_K": round(temp[k] + 273.15, 3),
                    "pH_online": round(ph[k], 4),
                    "DO_sat": round(do[k], 2),
                    "Stirrer": round(rpm[k], 1),
                    "Press_mbar": round(p_mbar[k], 1),
                }
            )
        titer = 3800 + rng.normal(0, 150) - (1900 if bad else 0) - (400 if kind and not bad else 0)
        lims.append(
            {
                "Run": b,
                "Sampled": (start + timedelta(days=14, hours=2)).isoformat(),
                "Titer_mgL": round(titer, 1),
            }
        )
    tele = folder / "historian.csv"
    pl.DataFrame(rows).write_csv(tele)
    lab = folder / "lims_release.csv"
    pl.DataFrame(lims).write_csv(lab)
    tag_map = _yaml(
        folder / "tag_map.yaml",
        {
            "site_id": "CAMPAIGN",
            "default_unit_id": "R2000",
            "columns": {"timestamp": "Timestamp", "batch_id": "Run"},
            "timezone": "UTC",
            "tags": {
                "Temp_K": {"tag": "temperature_c", "from_uom": "K"},
                "pH_online": {"tag": "ph", "from_uom": "pH"},
                "DO_sat": {"tag": "dissolved_oxygen_pct", "from_uom": "%"},
                "Stirrer": {"tag": "agitation_rpm", "from_uom": "rpm"},
                "Press_mbar": {"tag": "headspace_pressure_bar", "from_uom": "mbar"},
            },
        },
    )
    lims_map = _yaml(
        folder / "lims_map.yaml",
        {
            "site_id": "CAMPAIGN",
            "default_unit_id": "R2000",
            "layout": "wide",
            "default_sample_type": "release",
            "columns": {"batch_id": "Run", "sample_ts": "Sampled"},
            "analytes": {"Titer_mgL": {"analyte": "titer_g_l", "from_uom": "mg/L"}},
        },
    )
    hit = sorted({*disturbed, *(kinds or {})})
    return Site(
        folder,
        {"telemetry": tele, "lims": lab},
        {"telemetry": tag_map, "lims": lims_map},
        [ids[i] for i in hit],
        ids,
    )


def dryer_site(
    folder: Path, n_batches: int = 24, seed: int = 11, disturbed: tuple[int, ...] = (20,)
) -> Site:
    """An industrial batch dryer (a unit class the platform has never seen): 1.5-3 h batches at
    1-minute samples, its own tags (inlet/outlet air temperature in °F, product temperature,
    chamber pressure in kPa, air flow, a moisture probe as a fraction), an MES batch list with
    local times and a time-zone column, a LIMS export (long) of residual moisture, a CMMS
    list with the site's own event-type codes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    zones = ["America/Chicago", "Europe/Berlin"]
    rows, mes, lims, cmms = [], [], [], []
    ids = [f"DRY-{i + 1:04d}" for i in range(n_batches)]
    t = datetime(2025, 6, 2, 6, tzinfo=UTC)
    for i, b in enumerate(ids):
        dur_min = int(rng.integers(90, 180))
        bad = i in disturbed
        m = np.arange(dur_min + 1)
        frac = m / dur_min
        inlet_c = 80 + rng.normal(0, 0.3, m.size) - (12 if bad else 0) * (frac > 0.3)
        outlet_c = 35 + 25 * frac + rng.normal(0, 0.4, m.size)
        prod_c = 25 + 30 * frac**0.8 + rng.normal(0, 0.3, m.size)
        press = 95 + rng.normal(0, 0.2, m.size)
        flow = 1200 + rng.normal(0, 10, m.size)
        moist = 0.30 * np.exp(-3.2 * frac * (0.7 if bad else 1.0)) + rng.normal(0, 0.003, m.size)
        for k in range(m.size):
            ts = t + timedelta(minutes=int(m[k]))
            rows.append(
                {
                    "BatchNo": b,
                    "Time": ts.isoformat().replace("+00:00", "Z"),
                    "TI101_F": round(inlet_c[k] * 9 / 5 + 32, 2),
                    "TI102_F": round(outlet_c[k] * 9 / 5 + 32, 2),
                    "TI103": round(prod_c[k], 2),
                    "PI201_kPa": round(press[k], 2),
                    "FI301": round(flow[k], 1),
                    "MI401": round(moist[k], 4),
                    "Comment": "" if k else "start",
                }
            )
        z = zones[i % 2]
        loc = ZoneInfo(z)
        end = t + timedelta(minutes=dur_min)
        mes.append(
            {
                "Order": b,
                "Dryer": "FBD1",
                "Begin": t.astimezone(loc).strftime("%Y-%m-%d %H:%M:%S"),
                "Finish": end.astimezone(loc).strftime("%Y-%m-%d %H:%M:%S"),
                "TZ": z,
                "Recipe": "DRY-STD",
                "Product": "granulate-X",
                "Lot_API": f"API-{1000 + i}",
                "Result": "OK",
            }
        )
        lod = float(0.30 * np.exp(-3.2 * (0.7 if bad else 1.0)) * 100 + rng.normal(0, 0.1))
        lims.append(
            {
                "Batch": b,
                "When": (end + timedelta(hours=1)).isoformat(),
                "Test": "LOD",
                "Result": round(lod, 3),
                "Units": "%",
                "Kind": "FINAL",
            }
        )
        lims.append(
            {
                "Batch": b,
                "When": (end + timedelta(hours=1)).isoformat(),
                "Test": "Colour",
                "Result": "white",
                "Units": "",
                "Kind": "FINAL",
            }
        )
        t = end + timedelta(hours=int(rng.integers(2, 6)))
    cmms.append(
        {
            "WO": "77001",
            "Date": "2025-06-03T10:00:00Z",
            "Asset": "FBD1-FAN",
            "Type": "PM",
            "Text": "fan belt check",
            "Down_min": 45,
        }
    )
    cmms.append(
        {
            "WO": "77002",
            "Date": "2025-06-04T10:00:00Z",
            "Asset": "FBD1-FILTER",
            "Type": "INSP",
            "Text": "filter sock visual check",
            "Down_min": 10,
        }
    )
    tele = folder / "dryer_historian.csv"
    pl.DataFrame(rows).write_csv(tele)
    mes_f = folder / "mes_batches.csv"
    pl.DataFrame(mes).write_csv(mes_f)
    lims_f = folder / "lims_results.csv"
    pl.DataFrame(lims).write_csv(lims_f)
    cmms_f = folder / "work_orders.csv"
    pl.DataFrame(cmms).write_csv(cmms_f)
    maps = {
        "telemetry": _yaml(
            folder / "tag_map.yaml",
            {
                "site_id": "DRYSITE",
                "default_unit_id": "FBD1",
                "columns": {"timestamp": "Time", "batch_id": "BatchNo"},
                "tags": {
                    "TI101_F": {"tag": "inlet_air_temp_c", "from_uom": "degF", "uom": "degC"},
                    "TI102_F": {"tag": "outlet_air_temp_c", "from_uom": "degF", "uom": "degC"},
                    "TI103": {"tag": "product_temp_c", "from_uom": "degC", "uom": "degC"},
                    "PI201_kPa": {"tag": "chamber_pressure_mbar", "from_uom": "kPa", "uom": "mbar"},
                    "FI301": {"tag": "air_flow_m3_h", "from_uom": "m3/h", "uom": "m3/h"},
                    "MI401": {"tag": "moisture_pct", "from_uom": "fraction", "uom": "%"},
                },
            },
        ),
        "mes": _yaml(
            folder / "mes_map.yaml",
            {
                "site_id": "DRYSITE",
                "columns": {
                    "batch_id": "Order",
                    "unit_id": "Dryer",
                    "start": "Begin",
                    "end": "Finish",
                    "timezone": "TZ",
                    "recipe_id": "Recipe",
                    "product": "Product",
                    "status": "Result",
                },
                "lots": {"Lot_API": "api_lot"},
                "status_values": {"OK": "complete", "NOK": "aborted"},
            },
        ),
        "lims": _yaml(
            folder / "lims_map.yaml",
            {
                "site_id": "DRYSITE",
                "default_unit_id": "FBD1",
                "layout": "long",
                "columns": {
                    "batch_id": "Batch",
                    "sample_ts": "When",
                    "analyte": "Test",
                    "value": "Result",
                    "uom": "Units",
                    "sample_type": "Kind",
                },
                "sample_types": {"FINAL": "release", "IPC": "in_process"},
                "analytes": {"LOD": {"analyte": "loss_on_drying_pct", "from_uom": "%", "uom": "%"}},
            },
        ),
        "cmms": _yaml(
            folder / "cmms_map.yaml",
            {
                "site_id": "DRYSITE",
                "default_unit_id": "FBD1",
                "downtime_uom": "min",
                "columns": {
                    "work_order_id": "WO",
                    "event_ts": "Date",
                    "equipment_id": "Asset",
                    "event_type": "Type",
                    "description": "Text",
                    "downtime_h": "Down_min",
                },
                "event_types": {
                    "PM": "preventive_maintenance",
                    "CM": "corrective_maintenance",
                    "BRK": "failure",
                    "CAL": "calibration",
                },
            },
        ),
    }

    files = {"telemetry": tele, "mes": mes_f, "lims": lims_f, "cmms": cmms_f}
    return Site(folder, files, maps, [ids[i] for i in disturbed], ids)


DRYER_CLASS = {
    "unit_class": "fluid_bed_dryer",
    "description": "Batch fluid-bed dryer (granulate)",
    "phases": [],
    "tags": {
        "inlet_air_temp_c": {"uom": "degC", "group": "process"},
        "outlet_air_temp_c": {"uom": "degC", "group": "process"},
        "product_temp_c": {"uom": "degC", "group": "process"},
        "chamber_pressure_mbar": {"uom": "mbar", "group": "process"},
        "air_flow_m3_h": {"uom": "m3/h", "group": "process"},
        "moisture_pct": {"uom": "%", "group": "process"},
    },
    "cell_culture": False,
    "equipment": {"FAN": {"type": "process_air_fan", "tags": []}},
    "capabilities": [
        "cpp_contracts",
        "excursions",
        "mspc",
        "golden_batch",
        "quality_models",
        "pdm",
    ],
}


def dryer_spec(path: Path) -> Path:
    """The dryer site's own product spec (the one file a site writes for its product and unit
    class), with its unit class file beside it: its tags with units, physical limits and CPP
    ranges, no phases (one phase per batch), loss on drying as the release assay."""
    (path.parent / "fluid_bed_dryer.yaml").write_text(yaml.safe_dump(DRYER_CLASS, sort_keys=False))
    spec = {
        "version": 1,
        "effective_from": "2025-06-01",
        "product": "granulate-X",
        "unit_class": "fluid_bed_dryer.yaml",
        "change_log": [
            {
                "version": 1,
                "date": "2025-06-01",
                "by": "drysite-pe",
                "reason": "granulate-X fluid-bed drying spec",
            }
        ],
        "settle_minutes": 10,
        "future_tolerance_minutes": 60,
        "batch_window_grace_minutes": 5,
        "right_first_time": {"required_assays": "reported", "max_major_excursions": 0},
        "phase_rule": {"kind": "one_phase"},
        "tags": {
            "inlet_air_temp_c": {
                "uom": "degC",
                "cpp": True,
                "physical": [-20, 250],
                "target": 80,
                "nor": [76, 84],
                "par": [72, 88],
            },
            "outlet_air_temp_c": {"uom": "degC", "physical": [-20, 250]},
            "product_temp_c": {
                "uom": "degC",
                "cpp": True,
                "physical": [-20, 200],
                "target": 40,
                "nor": [15, 62],
                "par": [10, 65],
            },
            "chamber_pressure_mbar": {"uom": "mbar", "physical": [0, 2000]},
            "air_flow_m3_h": {"uom": "m3/h", "physical": [0, 10000]},
            "moisture_pct": {"uom": "%", "physical": [0, 100]},
        },
        "unit_conversions": {},
        "lab": {
            "in_process": {},
            "release": {
                "loss_on_drying_pct": {"uom": "%", "physical": [0, 100], "spec": [None, 2.0]}
            },
        },
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


#: a vacuum tray dryer: a class with its own tags and its own phases, found by tag crossings
TRAY_DRYER_CLASS: dict[str, Any] = {
    "unit_class": "vacuum_tray_dryer",
    "description": "Vacuum tray dryer (API cake), phases by shelf and product temperature",
    "phases": ["loading", "heating", "drying", "cooling"],
    "tags": {
        "shelf_temp_c": {"uom": "degC", "group": "process"},
        "product_temp_c": {"uom": "degC", "group": "process"},
        "chamber_pressure_mbar": {"uom": "mbar", "group": "process"},
        "condenser_temp_c": {"uom": "degC", "group": "process"},
    },
    "cell_culture": False,
    "equipment": {"VP": {"type": "vacuum_pump", "tags": []}},
    "capabilities": ["cpp_contracts", "excursions", "mspc", "golden_batch", "quality_models"],
    "phase_rule": {
        "kind": "tag_crossing",
        "first_phase": "loading",
        "crossings": [
            {"phase": "heating", "tag": "shelf_temp_c", "above": 30},
            {"phase": "drying", "tag": "product_temp_c", "above": 40},
            {"phase": "cooling", "tag": "shelf_temp_c", "below": 57},
        ],
    },
}
#: the tray-dryer site's tags that neither the class nor the spec knows (tag map only)
TRAY_SITE_TAGS = {"vacuum_pump_power_kw": "kW", "pump_oil_temp_c": "degC"}


def tray_dryer_site(
    folder: Path,
    n_batches: int = 12,
    seed: int = 5,
    faults: bool = True,
    pump_wear: np.ndarray | None = None,
    spacing_h: float = 8.0,
) -> Site:
    """A vacuum tray dryer at a site whose tag names and units all differ from the class's
    (°F, Pa, K, W; naive local times in Europe/Berlin; a batch column, no MES) and which
    records two tags of its own (vacuum pump power and oil temperature) that the class does
    not know. Batch 9 (0-based) overheats its shelf to 73 °C during drying (a PAR break);
    batch 10 runs with a failing vacuum pump (power +40 %, oil +13 °C) while every class tag
    stays normal: only the site's own tags show it. ``disturbed`` lists both; the phase
    starts each batch crosses into are returned in ``crossings`` (ground truth, UTC).
    ``faults=False``: neither disturbance. ``pump_wear`` (per batch, 0 = healthy, 1 = about
    to fail): a vacuum pump wearing out, its power up to +30 % and its oil up to +14 °C,
    with a per-batch spread of a healthy pump's level."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    berlin = ZoneInfo("Europe/Berlin")
    rows, lims = [], []
    ids = [f"VT{i + 1:03d}" for i in range(n_batches)]
    crossings: dict[str, dict[str, datetime]] = {}
    t0 = datetime(2025, 9, 1, 4, tzinfo=UTC)
    f = 1 - np.exp(-2.0 / 35.0)  # product temperature: first-order lag of the shelf (τ 35 min)
    for i, b in enumerate(ids):
        dur = int(rng.integers(135, 166)) * 2
        m = np.arange(0, dur + 1, 2)
        load = int(rng.integers(10, 16)) * 2
        cool = dur - 40
        shelf = 22 + 38 * np.clip((m - load) / 30, 0, 1)
        shelf = np.where(m >= cool, 60 - 35 * np.clip((m - cool) / 30, 0, 1), shelf)
        if i == 9 and faults:
            shelf = np.where((m >= 150) & (m < 180), 73.0, shelf)
        shelf = shelf + rng.normal(0, 0.25, m.size)
        prod = np.empty(m.size)
        prod[0] = 20.0
        for k in range(1, m.size):
            prod[k] = prod[k - 1] + (shelf[k] - prod[k - 1]) * f
        prod = prod + rng.normal(0, 0.2, m.size)
        press = np.where(m < load, 1013.0, 0.6 + 1012.4 * np.exp(-(m - load) / 3.0))
        press = np.where(m >= dur - 6, 1013.0, press) + rng.normal(0, 0.02, m.size)
        cond = -45 + rng.normal(0, 0.3, m.size)
        power = np.where(m < load, 0.5, 3.0) + rng.normal(0, 0.05, m.size)
        oil = 55 + rng.normal(0, 0.3, m.size)
        if i == 10 and faults:
            power = np.where(m >= load + 60, power * 1.4, power)
            oil = np.where(m >= load + 60, oil + 13, oil)
        if pump_wear is not None:
            w = float(pump_wear[i])
            power = power * (1 + 0.3 * w + rng.normal(0, 0.02))
            oil = oil + 14 * w + rng.normal(0, 0.8)
        start = t0 + timedelta(hours=spacing_h * i)
        heat = int(np.argmax(shelf > 30))
        dry = heat + int(np.argmax(prod[heat:] > 40))
        cl = dry + int(np.argmax(shelf[dry:] < 57))
        crossings[b] = {
            "heating": start + timedelta(minutes=int(m[heat])),
            "drying": start + timedelta(minutes=int(m[dry])),
            "cooling": start + timedelta(minutes=int(m[cl])),
        }
        for k in range(m.size):
            ts = (start + timedelta(minutes=int(m[k]))).astimezone(berlin)
            rows.append(
                {
                    "Charge": b,
                    "Zeit": ts.strftime("%Y-%m-%d %H:%M:%S"),
                    "TT-101.PV": round(shelf[k] * 9 / 5 + 32, 3),
                    "TT-102.PV": round(prod[k] * 9 / 5 + 32, 3),
                    "PT-201.PV": round(press[k] * 100, 1),
                    "TT-301.PV": round(cond[k] + 273.15, 3),
                    "JI-501.PV": round(power[k] * 1000, 1),
                    "TT-502.PV": round(oil[k] * 9 / 5 + 32, 3),
                }
            )
        drying_min = (crossings[b]["cooling"] - crossings[b]["drying"]).total_seconds() / 60
        rs = 2600 - 8.0 * drying_min + rng.normal(0, 40) + (4000 if i == 9 and faults else 0)
        lims.append(
            {
                "Charge": b,
                "Probenahme": (start + timedelta(minutes=dur + 30)).isoformat(),
                "RS_ppm": round(rs, 1),
            }
        )
    tele = folder / "vtd_historian.csv"
    pl.DataFrame(rows).write_csv(tele)
    lab = folder / "lims_wide.csv"
    pl.DataFrame(lims).write_csv(lab)
    tag_map = _yaml(
        folder / "tag_map.yaml",
        {
            "site_id": "VTDSITE",
            "default_unit_id": "VTD7",
            "timezone": "Europe/Berlin",
            "columns": {"timestamp": "Zeit", "batch_id": "Charge"},
            "tags": {
                "TT-101.PV": {"tag": "shelf_temp_c", "from_uom": "degF", "uom": "degC"},
                "TT-102.PV": {"tag": "product_temp_c", "from_uom": "degF", "uom": "degC"},
                "PT-201.PV": {"tag": "chamber_pressure_mbar", "from_uom": "Pa", "uom": "mbar"},
                "TT-301.PV": {"tag": "condenser_temp_c", "from_uom": "K", "uom": "degC"},
                # the site's own tags: not in the unit class, not in the spec
                "JI-501.PV": {"tag": "vacuum_pump_power_kw", "from_uom": "W", "uom": "kW"},
                "TT-502.PV": {"tag": "pump_oil_temp_c", "from_uom": "degF", "uom": "degC"},
            },
        },
    )
    lims_map = _yaml(
        folder / "lims_map.yaml",
        {
            "site_id": "VTDSITE",
            "default_unit_id": "VTD7",
            "layout": "wide",
            "default_sample_type": "release",
            "columns": {"batch_id": "Charge", "sample_ts": "Probenahme"},
            "analytes": {"RS_ppm": {"analyte": "residual_solvent_ppm", "from_uom": "ppm"}},
        },
    )
    return Site(
        folder,
        {"telemetry": tele, "lims": lab},
        {"telemetry": tag_map, "lims": lims_map},
        [ids[i] for i in (9, 10) if i < n_batches and faults],
        ids,
        crossings,
    )


def tray_dryer_spec(path: Path, unit_class: dict | None = None) -> Path:
    """The tray-dryer site's product spec: CPPs with limits per phase of the class (shelf
    temperature tighter while drying), Cpk over drying, residual solvent as the release
    assay; no phase rule of its own (the class's tag crossings apply). ``unit_class``:
    another class file than ``TRAY_DRYER_CLASS`` (its extra tags get physical ranges)."""
    uc = TRAY_DRYER_CLASS if unit_class is None else unit_class
    (path.parent / "vacuum_tray_dryer.yaml").write_text(yaml.safe_dump(uc, sort_keys=False))
    spec = {
        "version": 1,
        "effective_from": "2025-08-01",
        "product": "API-cake-7",
        "unit_class": "vacuum_tray_dryer.yaml",
        "change_log": [{"version": 1, "date": "2025-08-01", "by": "vtd-pe", "reason": "API-7"}],
        "settle_minutes": 6,
        "future_tolerance_minutes": 60,
        "batch_window_grace_minutes": 5,
        "right_first_time": {"required_assays": "reported", "max_major_excursions": 0},
        "cpk_phases": ["drying"],
        "tags": {
            "shelf_temp_c": {
                "uom": "degC",
                "cpp": True,
                "physical": [-60, 150],
                "nor": [15, 68],
                "par": [10, 75],
                "phases": {"drying": {"target": 60, "nor": [55, 65], "par": [50, 70]}},
            },
            "product_temp_c": {
                "uom": "degC",
                "cpp": True,
                "physical": [-60, 150],
                "nor": [10, 64],
                "par": [5, 70],
            },
            "chamber_pressure_mbar": {"uom": "mbar", "physical": [0, 1100]},
            "condenser_temp_c": {"uom": "degC", "physical": [-90, 40]},
            **{
                t: {"uom": d["uom"], "physical": [-100, 10000]}
                for t, d in uc["tags"].items()
                if t not in TRAY_DRYER_CLASS["tags"]
            },
        },
        "unit_conversions": {},
        "lab": {
            "in_process": {},
            "release": {
                "residual_solvent_ppm": {
                    "uom": "ppm",
                    "physical": [0, 100000],
                    "spec": [None, 5000],
                }
            },
        },
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


#: the tray dryer's class with its vacuum pump declared for PdM: the pump's power and oil
#: temperature are condition tags of the class, and ``pdm`` is one of its capabilities
PUMP_DRYER_CLASS: dict[str, Any] = {
    **TRAY_DRYER_CLASS,
    "tags": {
        **TRAY_DRYER_CLASS["tags"],
        "vacuum_pump_power_kw": {"uom": "kW", "group": "condition"},
        "pump_oil_temp_c": {"uom": "degC", "group": "condition"},
    },
    "equipment": {
        "VP": {"type": "vacuum_pump", "tags": ["vacuum_pump_power_kw", "pump_oil_temp_c"]}
    },
    "capabilities": [*TRAY_DRYER_CLASS["capabilities"], "pdm"],
}


@dataclass
class PumpHistory:
    site: Site
    cmms: Path  # the CMMS export (work orders of the vacuum pump)
    cmms_map: Path
    failures: list[datetime]  # UTC, ground truth (the CMMS's breakdown times)


def pump_dryer_site(
    folder: Path, n_batches: int = 100, seed: int = 11, every: int = 12
) -> PumpHistory:
    """The tray dryer (no shelf or pump disturbance) whose vacuum pump wears out and is
    repaired about every ``every`` batches (one a day): over the 3 to 5 batches before a
    breakdown its
    power and oil temperature creep up (a seeded degradation, worst just before it), it
    breaks down just after the batch, and a corrective repair 90 min later (before the next
    batch) makes it new.
    The CMMS export has the site's own codes ("STOER" breakdown, "INST" repair, "WART"
    inspection), asset names and local times."""
    rng = np.random.default_rng(seed + 1)
    fail_at = []
    k = every - 1
    while k < n_batches:
        fail_at.append(k)
        k += every + int(rng.integers(-2, 3))
    wear = np.zeros(n_batches)
    for f in fail_at:
        onset = f - int(rng.integers(3, 6))
        for i in range(max(onset, 0), f + 1):
            wear[i] = ((i - onset) / (f - onset)) ** 1.5
    spacing = 24.0  # one batch a day: the 72 h horizon spans the 3 batches before a breakdown
    site = tray_dryer_site(folder, n_batches, seed, faults=False, pump_wear=wear, spacing_h=spacing)
    t0 = datetime(2025, 9, 1, 4, tzinfo=UTC)
    berlin = ZoneInfo("Europe/Berlin")
    rows, failures = [], []
    for f in fail_at:
        b = site.batches[f]
        end = site.crossings[b]["cooling"] + timedelta(minutes=60)  # the batch is over by then
        failures.append(end)
        for ts, code in ((end, "STOER"), (end + timedelta(minutes=90), "INST")):
            rows.append(
                {
                    "Datum": ts.astimezone(berlin).strftime("%Y-%m-%d %H:%M:%S"),
                    "Anlage": "VTD7-VP",
                    "Art": code,
                    "Stillstand_min": "90" if code == "STOER" else "",
                }
            )
    for i in range(3, n_batches, 10):  # routine inspections: not repairs, not failures
        ts = t0 + timedelta(hours=spacing * i - 1)
        rows.append(
            {
                "Datum": ts.astimezone(berlin).strftime("%Y-%m-%d %H:%M:%S"),
                "Anlage": "VTD7-VP",
                "Art": "WART",
                "Stillstand_min": "",
            }
        )
    cmms = folder / "cmms_auftraege.csv"
    pl.DataFrame(rows).sort("Datum").write_csv(cmms)
    cmap = _yaml(
        folder / "cmms_map.yaml",
        {
            "site_id": "VTDSITE",
            "default_unit_id": "VTD7",
            "timezone": "Europe/Berlin",
            "downtime_uom": "min",
            "columns": {
                "event_ts": "Datum",
                "equipment_id": "Anlage",
                "event_type": "Art",
                "downtime_h": "Stillstand_min",
            },
            # inspections ("WART") are no maintenance event of the lake: reported, not imported
            "event_types": {"STOER": "failure", "INST": "corrective_maintenance"},
        },
    )
    return PumpHistory(site, cmms, cmap, failures)


#: a batch vacuum dryer (API wet cake): phases by shelf-temperature crossings
VACUUM_DRYER_CLASS: dict[str, Any] = {
    "unit_class": "batch_vacuum_dryer",
    "description": "Batch vacuum shelf dryer (API wet cake)",
    "phases": ["loading", "drying", "cooling"],
    "tags": {
        "shelf_temp_c": {"uom": "degC", "group": "process"},
        "product_temp_c": {"uom": "degC", "group": "process"},
        "chamber_pressure_mbar": {"uom": "mbar", "group": "process"},
        "condenser_temp_c": {"uom": "degC", "group": "process"},
    },
    "cell_culture": False,
    "capabilities": ["cpp_contracts", "excursions", "mspc", "golden_batch", "quality_models"],
    "phase_rule": {
        "kind": "tag_crossing",
        "first_phase": "loading",
        "crossings": [
            {"phase": "drying", "tag": "shelf_temp_c", "above": 45},
            {"phase": "cooling", "tag": "shelf_temp_c", "below": 40},
        ],
    },
}


@dataclass
class DryerRecipes:
    site: Site
    spec: Path
    settings: pl.DataFrame  # per batch: shelf setpoint, hold minutes, vacuum, initial moisture
    lod: dict[str, float]  # released loss on drying (%), as in the LIMS export


def moisture_dryer_site(folder: Path, n_batches: int = 64, seed: int = 21) -> DryerRecipes:
    """A batch vacuum dryer whose product moisture at release follows drying physics: every
    batch is dried at its own shelf temperature (50-70 °C), hold time (90-240 min) and
    vacuum (20-150 mbar), from a wet cake of varying initial moisture (12 ± 0.8 %, not
    measured); the moisture falls as ``M_eq + (M0 - M_eq) exp(-k t)`` with a rate ``k`` that
    grows with temperature (Arrhenius-like, x1.57 per +10 °C) and with a deeper vacuum
    (``(50 / P)^0.35``), integrated over the product temperature minute by minute (the
    product lags the shelf). Loss on drying is assayed with 0.12 % (absolute) noise. Tags
    in the site's own names and units (°F, Pa), UTC times, a batch column, no MES; LIMS
    wide. Its spec: shelf and product temperature are CPPs, no release limit is binding."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, lims, sets = [], [], []
    ids = [f"VD{i + 1:03d}" for i in range(n_batches)]
    lod: dict[str, float] = {}
    t0 = datetime(2025, 5, 5, 6, tzinfo=UTC)
    f = 1 - np.exp(-2.0 / 20.0)  # product temperature: first-order lag of the shelf (τ 20 min)
    for i, b in enumerate(ids):
        t_set = float(rng.uniform(50, 70))
        hold = int(rng.integers(45, 121)) * 2
        p_set = float(rng.uniform(20, 150))
        m0 = float(rng.normal(12.0, 0.8))
        load = int(rng.integers(8, 13)) * 2
        ramp_end = load + 30
        cool = ramp_end + hold
        dur = cool + 30
        m = np.arange(0, dur + 1, 2)
        shelf = 22 + (t_set - 22) * np.clip((m - load) / 30, 0, 1)
        shelf = np.where(m >= cool, t_set - (t_set - 25) * np.clip((m - cool) / 30, 0, 1), shelf)
        shelf = shelf + rng.normal(0, 0.25, m.size)
        prod = np.empty(m.size)
        prod[0] = 20.0
        for k in range(1, m.size):
            prod[k] = prod[k - 1] + (shelf[k] - prod[k - 1]) * f
        press = np.where(m < load, 1013.0, p_set + (1013.0 - p_set) * np.exp(-(m - load) / 3.0))
        press = np.where(m >= dur - 6, 1013.0, press) * (1 + rng.normal(0, 0.003, m.size))
        cond = -45 + rng.normal(0, 0.3, m.size)
        # drying: the rate follows the product temperature and the vacuum, minute by minute
        under_vac = (m >= load) & (m < dur - 6)
        rate = 0.012 * np.exp(0.045 * (prod - 60.0)) * (50.0 / p_set) ** 0.35 * under_vac
        moist = 0.3 + (m0 - 0.3) * np.exp(-np.sum(rate[1:] * np.diff(m)))
        value = float(moist + rng.normal(0, 0.12))
        lod[b] = round(value, 3)
        start = t0 + timedelta(hours=8 * i)
        sets.append(
            {
                "batch_id": b,
                "shelf_set_c": t_set,
                "hold_min": hold,
                "vacuum_mbar": p_set,
                "m0_pct": m0,
                "moisture_true_pct": moist,
            }
        )
        prod = prod + rng.normal(0, 0.2, m.size)
        for k in range(m.size):
            rows.append(
                {
                    "Lot": b,
                    "Time": (start + timedelta(minutes=int(m[k]))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "TIC-110": round(shelf[k] * 9 / 5 + 32, 3),
                    "TI-120": round(prod[k] * 9 / 5 + 32, 3),
                    "PI-130": round(press[k] * 100, 1),
                    "TI-140": round(cond[k], 2),
                }
            )
        lims.append(
            {
                "Lot": b,
                "Sampled": (start + timedelta(minutes=dur + 45)).isoformat(),
                "LOD_pct": lod[b],
            }
        )
    tele = folder / "vd_historian.csv"
    pl.DataFrame(rows).write_csv(tele)
    lab = folder / "vd_lims.csv"
    pl.DataFrame(lims).write_csv(lab)
    tag_map = _yaml(
        folder / "tag_map.yaml",
        {
            "site_id": "VDSITE",
            "default_unit_id": "VD1",
            "columns": {"timestamp": "Time", "batch_id": "Lot"},
            "tags": {
                "TIC-110": {"tag": "shelf_temp_c", "from_uom": "degF", "uom": "degC"},
                "TI-120": {"tag": "product_temp_c", "from_uom": "degF", "uom": "degC"},
                "PI-130": {"tag": "chamber_pressure_mbar", "from_uom": "Pa", "uom": "mbar"},
                "TI-140": {"tag": "condenser_temp_c", "from_uom": "degC", "uom": "degC"},
            },
        },
    )
    lims_map = _yaml(
        folder / "lims_map.yaml",
        {
            "site_id": "VDSITE",
            "default_unit_id": "VD1",
            "layout": "wide",
            "default_sample_type": "release",
            "columns": {"batch_id": "Lot", "sample_ts": "Sampled"},
            "analytes": {"LOD_pct": {"analyte": "loss_on_drying_pct", "from_uom": "%", "uom": "%"}},
        },
    )
    (folder / "batch_vacuum_dryer.yaml").write_text(
        yaml.safe_dump(VACUUM_DRYER_CLASS, sort_keys=False)
    )
    spec = {
        "version": 1,
        "effective_from": "2025-05-01",
        "product": "API-9",
        "unit_class": "batch_vacuum_dryer.yaml",
        "change_log": [{"version": 1, "date": "2025-05-01", "by": "vd-pe", "reason": "API-9"}],
        "settle_minutes": 6,
        "future_tolerance_minutes": 60,
        "batch_window_grace_minutes": 5,
        "right_first_time": {"required_assays": "reported", "max_major_excursions": 0},
        "cpk_phases": ["drying"],
        "tags": {
            "shelf_temp_c": {
                "uom": "degC",
                "cpp": True,
                "physical": [-60, 150],
                "nor": [15, 72],
                "par": [10, 75],
                "phases": {"drying": {"target": 60, "nor": [48, 72], "par": [45, 75]}},
            },
            "product_temp_c": {
                "uom": "degC",
                "cpp": True,
                "physical": [-60, 150],
                "nor": [10, 72],
                "par": [5, 75],
            },
            "chamber_pressure_mbar": {"uom": "mbar", "physical": [0, 1100]},
            "condenser_temp_c": {"uom": "degC", "physical": [-90, 40]},
        },
        "unit_conversions": {},
        "lab": {
            "in_process": {},
            "release": {
                "loss_on_drying_pct": {"uom": "%", "physical": [0, 100], "spec": [None, 15.0]}
            },
        },
    }
    spec_path = folder / "vd_spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    site = Site(
        folder, {"telemetry": tele, "lims": lab}, {"telemetry": tag_map, "lims": lims_map}, [], ids
    )
    return DryerRecipes(site, spec_path, pl.DataFrame(sets), lod)
