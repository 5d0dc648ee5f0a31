"""The page registry (QA section) and the plain helpers behind the pages' numbers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from dashboards import logic
from dashboards.app_pages import PAGES, qa_pages
from pharma_assets.lake.specs import load_spec


def test_operations_pages_exist_and_have_unique_urls():
    assert all(p.path.exists() for p in PAGES)
    assert len({p.url_path for p in PAGES}) == len(PAGES)
    assert not any(p.file.startswith("qa_") for p in PAGES)


def test_qa_pages_are_discovered_with_optional_title(tmp_path):
    (tmp_path / "qa_audit_trail.py").write_text('PAGE_TITLE = "Audit trail (Part 11)"\n')
    (tmp_path / "qa_batch_release.py").write_text("import streamlit as st\n")
    (tmp_path / "overview.py").write_text("")
    (tmp_path / "qa_broken.py").write_text("def (:\n")
    got = qa_pages(tmp_path)
    assert [p.file for p in got] == ["qa_audit_trail.py", "qa_batch_release.py", "qa_broken.py"]
    assert got[0].title == "Audit trail (Part 11)" and got[0].url_path == "qa_audit_trail"
    assert got[1].title == "Batch release"
    assert got[2].title == "Broken"
    assert all(p.path.parent == tmp_path for p in got)


def test_control_limits_are_mean_plus_minus_three_sample_sd():
    v = pl.Series([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    mean, lcl, ucl = logic.control_limits(v)
    sd = math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3)
    assert mean == 2.5 and lcl == pytest.approx(2.5 - 3 * sd) and ucl == pytest.approx(2.5 + 3 * sd)
    assert logic.control_limits(pl.Series([1.0])) is None


def test_maintenance_schedule_orders_by_risk_and_proposes_actions():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    eq = pl.DataFrame(
        {
            "equipment_id": ["A", "B", "C"],
            "unit_id": ["U1", "U1", "U2"],
            "equipment_type": ["feed_pump", "agitator_motor", "feed_pump"],
            "failure_probability": [0.1, 0.7, 0.3],
            "health_score": [90.0, 30.0, 70.0],
            "threshold": [0.5, 0.5, 0.5],
            "alarm": [False, True, False],
            "hours_since_maintenance": [1.0, 2.0, 3.0],
            "hour_ts": [t, t, t],
            "model_version": ["1"] * 3,
        }
    )
    s = logic.maintenance_schedule(eq)
    assert s["equipment_id"].to_list() == ["B", "C", "A"]
    assert s["priority"].to_list() == [1, 2, 3]
    assert s["action"].to_list() == [
        "now: stop before next batch",
        "next turnaround",
        "routine (per plan)",
    ]


def test_parse_contributors_tolerates_bad_parts():
    assert logic.parse_contributors("ph:0.2,temperature_c:0.5,bad,x:y") == [
        ("temperature_c", 0.5),
        ("ph", 0.2),
    ]
    assert logic.parse_contributors(None) == []
    assert logic.parse_contributions_json('{"a": 0.1, "b": 0.9}') == [("b", 0.9), ("a", 0.1)]
    assert logic.parse_contributions_json("not json") == []


def test_reduce_trend_keeps_every_hour():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    n = 2500
    tr = pl.DataFrame(
        {
            "equipment_id": ["A"] * n,
            "hour_ts": [t0 + timedelta(hours=i) for i in range(n)],
            "batch_id": ["B"] * n,
            "health_score": [100.0 - i / 50 for i in range(n)],
            "failure_probability": [i / n for i in range(n)],
            "threshold": [0.5] * n,
            "alarm": [i / n >= 0.5 for i in range(n)],
        }
    )
    r = logic.reduce_trend(tr, 1000)
    assert r.height <= 1000 and r["hours"].sum() == n
    assert r["failure_probability"].max() == tr["failure_probability"].max()
    assert logic.reduce_trend(tr.head(10), 1000)["hours"].to_list() == [1] * 10


def test_band_segments_follow_phase_limits():
    spec = load_spec()
    spans = [("growth", 0.0, 100.0), ("production", 100.0, 300.0)]
    seg = logic.band_segments(spec, "temperature_c", spans)
    assert seg[0]["nor_lo"] == spec.tags["temperature_c"].limits("growth").nor[0]
    assert seg[1]["par_hi"] == spec.tags["temperature_c"].limits("production").par[1]
    assert seg[1]["nor_lo"] != seg[0]["nor_lo"]  # the temperature shift has its own NOR


def test_column_labels_and_time_formats():
    from datetime import timezone

    assert logic.column_label("final_titer_g_l") == "Final titer (g/L)"
    assert logic.column_label("peak_vcd_e6_cells_ml") == "Peak VCD (10⁶ cells/mL)"
    assert logic.column_label("start_ts") == "Start (UTC)"
    assert logic.column_label("released_at") == "Released at (UTC)"
    assert logic.column_label("ph") == "pH" and logic.column_label("cpk_ph") == "Cpk pH"
    assert logic.column_label("uom") == "Unit of measure"
    ts = datetime(2026, 2, 23, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert logic.fmt_ts(ts) == "2026-02-23 00:00 UTC" and logic.fmt_ts(None) == "—"
    assert logic.fmt_age(45) == "45 s" and logic.fmt_age(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert logic.fmt_age(2 * 86400 + 4 * 3600) == "2 d 4 h"


def test_freshness_flags_running_batches_older_than_the_threshold():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    us = pl.DataFrame(
        {
            "unit_id": ["BR01", "BR02", "BR03", "BR04"],
            "state": ["running", "running", "idle", "running"],
            "current_batch_id": ["A", "B", None, "D"],
            "last_reading_ts": [
                now - timedelta(minutes=5),
                now - timedelta(minutes=40),
                now - timedelta(days=3),
                None,
            ],
        },
        schema_overrides={"last_reading_ts": pl.Datetime("us", "UTC")},
    )
    fr = logic.freshness([now - timedelta(minutes=2), None], us, now, 15)
    assert fr.as_of == now - timedelta(minutes=2)
    assert fr.newest_reading == now - timedelta(minutes=5)
    assert fr.stale["unit_id"].to_list() == ["BR02", "BR04"]  # no reading at all is stale
    assert fr.stale["age_min"][0] == pytest.approx(40)
    assert logic.freshness([], None, now, 15).stale.height == 0


def test_audit_views_reconcile_and_mspc_order_puts_running_first():
    trail = pl.DataFrame(
        {
            "action": [
                "login",
                "materialization",
                "e_signature",
                "deviation_opened",
                "materialization",
                "batch_released",
                "spec_change",
            ],
            "actor": ["qa", "dagster", "qa", "system", "dagster", "qa", "pe"],
        }
    )
    n = logic.audit_view_counts(trail)
    assert n["People & QA records"] + n["Pipeline (materializations)"] == n["All entries"] == 7
    assert (n["Signatures"], n["Deviations"], n["Logins & accounts"]) == (1, 1, 1)
    assert logic.audit_view(trail, logic.DEFAULT_AUDIT_VIEW)["action"].to_list() == [
        "login",
        "e_signature",
        "deviation_opened",
        "batch_released",
        "spec_change",
    ]
    batches = pl.DataFrame(
        {
            "batch_id": ["X1", "X2", "X3"],
            "status": ["complete", "running", "complete"],
            "start_ts": [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3)],
        }
    )
    assert logic.mspc_batch_order(["X1", "X3"], batches) == [
        ("X2", "running"),
        ("X3", "complete"),
        ("X1", "complete"),
    ]
