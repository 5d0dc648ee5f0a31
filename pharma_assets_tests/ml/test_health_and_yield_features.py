"""Health residuals (predictive maintenance) and yield-trajectory features (batch quality):
no value at time t changes when every record after t is removed; the arithmetic is the
documented one on hand-made data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pharma_assets.ml import features
from pharma_assets_tests.ml.conftest import MlPlant


def _inputs_known_at(ml_plant: MlPlant, t: datetime) -> features.MlInputs:
    """The lake as it stood at wall-clock time ``t``: telemetry before t, LIMS and CMMS
    records by t, CoA results tested by t, MES without the ends of batches still running at
    t."""
    lake = ml_plant.lake()
    full = features.load_inputs(lake, with_hourly=False)
    tl = lake.read("silver", "batch_timeline")
    assert tl is not None and full.material_lots is not None
    b = full.batches.filter(pl.col("start_ts") <= t)
    running = pl.col("end_ts").is_null() | (pl.col("end_ts") > t)
    b = b.with_columns(
        end_ts=pl.when(running).then(None).otherwise(pl.col("end_ts")),
        status=pl.when(running).then(pl.lit("running")).otherwise(pl.col("status")),
    )
    return features.MlInputs(
        hourly=features.hourly_rollup(tl.filter(pl.col("minute_ts") < t)),
        batches=b,
        lab_results=full.lab_results.filter(pl.col("sample_ts") <= t),
        maintenance=full.maintenance.filter(pl.col("event_ts") <= t),
        batch_summary=full.batch_summary,
        material_lots=full.material_lots.filter(pl.col("tested_ts") <= t),
    )


def _mid_history(ml_inputs: features.MlInputs, frac: float) -> datetime:
    ts = ml_inputs.hourly["hour_ts"].sort()
    return ts[int(frac * (len(ts) - 1))] + timedelta(minutes=23)  # mid-hour


@pytest.mark.parametrize("frac", [0.45, 0.8])
def test_equipment_features_at_t_ignore_every_record_after_t(
    ml_plant: MlPlant, ml_inputs: features.MlInputs, equipment_hours: pl.DataFrame, frac: float
) -> None:
    t = _mid_history(ml_inputs, frac)
    cut = _inputs_known_at(ml_plant, t)
    eq_cut = features.equipment_hour_features(cut.hourly, cut.maintenance, cut.batches)
    a = equipment_hours.filter(pl.col("hour_ts") <= t)
    b = eq_cut.filter(pl.col("hour_ts") <= t)
    assert a.height > 100
    # the new residuals are exercised, not all null
    for c in ("h0_resid", "h1_resid", "h0_slope_72h", "h1_mean_24h"):
        for etype in ("agitator_motor", "feed_pump"):
            assert a.filter(pl.col("equipment_type") == etype)[c].drop_nulls().len() > 0, (c, etype)
    assert_frame_equal(a, b)


@pytest.mark.parametrize("horizon", ["day3", "day7", "harvest"])
def test_batch_features_at_t_ignore_every_record_after_t(
    ml_plant: MlPlant, ml_inputs: features.MlInputs, horizon: str
) -> None:
    t = _mid_history(ml_inputs, 0.6)
    cut = _inputs_known_at(ml_plant, t)
    ids = cut.batches["batch_id"].to_list()
    a = features.batch_features(ml_inputs, horizon, batch_ids=ids, as_of=t)
    b = features.batch_features(cut, horizon, batch_ids=ids, as_of=t)
    assert a.height == len(ids)
    assert a["titer_fit_harvest"].drop_nulls().len() > 0
    assert a["ivcd_cap"].drop_nulls().len() > 0
    assert_frame_equal(a, b)


def test_yield_trajectory_arithmetic_on_a_hand_made_batch() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    # one completed batch of the recipe (240 h), then the batch under test, at day 7
    batches = pl.DataFrame(
        {
            "batch_id": ["B0", "B1"],
            "unit_id": ["U1", "U1"],
            "start_ts": [t0, t0 + timedelta(days=12)],
            "end_ts": [t0 + timedelta(hours=240), None],
            "status": ["complete", "running"],
            "recipe_id": ["R", "R"],
            "recipe_version": [1, 1],
            "media_lot": ["M0", "M1"],
            "feed_lot": ["F0", "F1"],
        },
        schema_overrides={"start_ts": pl.Datetime("us", "UTC"), "end_ts": pl.Datetime("us", "UTC")},
    )
    start = t0 + timedelta(days=12)
    hours = np.arange(1, 169, dtype=float)
    hourly = pl.DataFrame(
        {
            "batch_id": "B1",
            "unit_id": "U1",
            "elapsed_h": hours,
            "hour_ts": [start + timedelta(hours=float(h)) for h in hours],
            "capacitance_pf_cm_mean": 2.0,  # constant biovolume: IVCD = 2 x days
            "capacitance_pf_cm_last": 2.0,
            "volume_l_last": 1500.0,
        },
        schema_overrides={"hour_ts": pl.Datetime("us", "UTC")},
    )
    other = [
        *[f"{t}_mean" for t in features.PROCESS_TAGS],
        *[f"{t}_std" for t in features.CPP_TAGS],
        *["our_mmol_l_h_mean", "cer_mmol_l_h_mean", "rq_mean", "q_o2"],
        *["cum_feed_l", "base_addition_ml_last"],
    ]
    hourly = hourly.with_columns([pl.lit(0.0).alias(c) for c in other if c not in hourly.columns])
    days = np.arange(0, 8, dtype=float)  # daily samples, day 0..7
    rows = []
    for d in days:
        ts = start + timedelta(days=float(d))
        rows.append(("B1", ts, "in_process", "titer_g_l", 0.2 * d))
        rows.append(("B1", ts, "in_process", "viable_cell_density_e6_cells_ml", 5.0))
    lab = pl.DataFrame(
        rows,
        schema={
            "batch_id": pl.String,
            "sample_ts": pl.Datetime("us", "UTC"),
            "sample_type": pl.String,
            "analyte": pl.String,
            "value": pl.Float64,
        },
        orient="row",
    )
    inp = features.MlInputs(
        hourly=hourly,
        batches=batches,
        lab_results=lab,
        maintenance=pl.DataFrame(),
        batch_summary=pl.DataFrame(),
    )
    bf = features.batch_features(inp, "day7", batch_ids=["B1"], as_of=start + timedelta(hours=168))
    r = bf.row(0, named=True)
    assert r["expected_duration_h"] == pytest.approx(240.0)  # the recipe's completed batch
    assert r["ivcd_lims"] == pytest.approx(5.0 * 7)  # trapezoid of a constant VCD
    assert r["ivcd_cap"] == pytest.approx(2.0 * 7)
    assert r["titer_fit_slope_d"] == pytest.approx(0.2)  # the line through the last samples
    assert r["titer_fit_now"] == pytest.approx(0.2 * 7)
    assert r["titer_fit_harvest"] == pytest.approx(0.2 * 10)  # extrapolated to day 10
    assert r["qp_lims"] == pytest.approx(0.2 * 7 / 35.0)
    # titer = 0.1 x capacitance IVCD; 3 more days at 2 pF/cm to the expected harvest
    assert r["qp_cap_fit"] == pytest.approx(0.1)
    assert r["titer_cap_harvest"] == pytest.approx(0.1 * 2.0 * 10)
    assert r["mass_fit_harvest_kg"] == pytest.approx(0.2 * 10 * 1500 / 1000)


def test_health_residuals_on_a_hand_made_history() -> None:
    """An agitator whose vibration follows a power law of speed has a zero residual; a
    step added later shows as the step. A feed pump's current over its earliest level."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    n = 200
    rng = np.random.default_rng(0)
    rpm = rng.uniform(80, 140, n)
    vib = 1.1 * (rpm / 100.0) ** 1.3
    vib[150:] *= np.exp(0.2)  # +0.2 in log vibration from hour 150
    current = np.full(n, 1.1)
    current[100:] += 0.05
    hourly = pl.DataFrame(
        {
            "batch_id": "B1",
            "unit_id": "U1",
            "hour_ts": [t0 + timedelta(hours=i + 1) for i in range(n)],
            "elapsed_h": np.arange(1, n + 1, dtype=float),
            "n_readings": 60,
            "agitation_rpm_mean": rpm,
            "volume_l_last": 1500.0,
            "feed_rate_ml_h_mean": 1000.0,
            "feeding_readings": 60,
            "feed_pump_current_feeding": current,
            "feed_rate_feeding": 1000.0,
            **{
                f"{t}_{k}": (vib if t == "agitator_vibration_mm_s" else current)
                for t in features.CONDITION_TAGS
                for k in ("mean", "max", "std")
            },
            # the rollup's feed-pump motor tags over the minutes the pump delivered
            **{f"{t}_feeding": current for t in features.FEED_PUMP_MOTOR_TAGS},
            **{f"{t}_feeding_std": 0.0 for t in features.FEED_PUMP_MOTOR_TAGS},
        },
        schema_overrides={"hour_ts": pl.Datetime("us", "UTC")},
    )
    maint = pl.DataFrame(
        schema={
            "equipment_id": pl.String,
            "event_type": pl.String,
            "event_ts": pl.Datetime("us", "UTC"),
        }
    )
    eq = features.equipment_hour_features(hourly, maint)
    agt = eq.filter(pl.col("equipment_type") == "agitator_motor").sort("hour_ts")
    r = agt["h0_resid"].to_numpy()
    assert np.isnan(r[: features.RESID_MIN_HOURS].astype(float)).all()  # no baseline yet
    assert np.abs(r[features.RESID_MIN_HOURS : 150]).max() < 1e-9
    assert r[150] == pytest.approx(0.2, abs=1e-9)  # baseline fitted on earlier hours only
    fp = eq.filter(pl.col("equipment_type") == "feed_pump").sort("hour_ts")
    c = fp["h0_resid"].to_numpy().astype(float)
    assert c[60] == pytest.approx(0.0) and c[120] == pytest.approx(0.05)
    # a pump motor tag (read while feeding) over its lowest earlier level, likewise
    m = fp["h3_resid"].to_numpy().astype(float)
    assert m[60] == pytest.approx(0.0) and m[120] == pytest.approx(0.05)
    # delivered flow against the best earlier flow (no MES given: one reference for all)
    assert fp["h1_resid"][0] is None and fp["h1_resid"][1:].abs().max() == pytest.approx(0.0)
    assert fp["h2_resid"][120] == pytest.approx(1.15)
    # the 72 h slope of a flat residual is zero, of a step it is positive while it passes
    assert fp["h0_slope_72h"][90] == pytest.approx(0.0, abs=1e-9)
    assert fp["h0_slope_72h"][130] > 0
