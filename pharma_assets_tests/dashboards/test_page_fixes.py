"""The fixes of issues 17 (pages) and 18 (login) on the fixture lake, one AppTest each:
what a new user saw wrong is checked on the rendered page."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from .test_pages import PAGES, metrics

ROOT = Path(__file__).resolve().parents[2]
CPK_CAP = 3.0  # dashboards.CPK_CAP


def chart(at, key: str) -> dict:
    """The plotly figure (data + layout) of the chart with key ``chart_<key>``."""
    for c in at.get("plotly_chart"):
        if c.proto.id.endswith(f"chart_{key}"):
            return json.loads(c.proto.spec)
    raise AssertionError(f"no chart {key}: {[c.proto.id for c in at.get('plotly_chart')]}")


def arr(v) -> list:
    """A plotly JSON array (plain list or plotly 6's typed ``{dtype, bdata}``) as a list."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


@pytest.mark.parametrize("page", PAGES)
def test_page_without_session_shows_login_and_no_data(app, fixture_lake, page):
    at = app(fixture_lake.root, page, user=None)
    assert [s.value for s in at.subheader] == ["Log in"]
    assert not at.dataframe and not at.get("plotly_chart") and not at.metric
    assert not at.title  # not even the page title before login
    # the sidebar shows no lake details either
    assert not [c for c in at.sidebar.caption if c.value == "Lake"]


def test_viewer_logs_in_through_the_form_and_sees_the_page(app, fixture_lake):
    at = app(fixture_lake.root, "overview", user=None)
    at.text_input(key="login_user").input("view.only")
    at.text_input(key="login_password").input("Viewer-pass-2026")
    at.button[0].click().run()
    assert not at.exception
    assert at.title[0].value == "Plant overview" and at.dataframe
    assert any("Vera Viewer" in c.value and "viewer" in c.value for c in at.sidebar.caption)


def test_data_as_of_and_stale_banner(app, fixture_lake, monkeypatch):
    us = fixture_lake.read("gold", "unit_status").filter(pl.col("state") == "running")
    newest = us["last_reading_ts"].max()
    at = app(fixture_lake.root, "overview")
    captions = " ".join(c.value for c in at.caption)
    assert "Data as of " in captions and "UTC" in captions
    assert f"newest reading of a running batch {newest:%Y-%m-%d %H:%M} UTC" in captions
    # the fixture's live batch stopped about a day ago: older than the default 15 min
    warn = " ".join(w.value for w in at.warning)
    assert "Stale data" in warn and "BR01 BR01-B0004" in warn and "15 min" in warn

    # per page: a high global threshold silences every page but the one set lower
    monkeypatch.setenv("PHARMA_STALE_MINUTES", str(10 * 24 * 60))
    monkeypatch.setenv("PHARMA_STALE_MINUTES_BIOREACTOR", "30")
    at = app(fixture_lake.root, "overview")
    assert not [w for w in at.warning if "Stale data" in w.value]
    at = app(fixture_lake.root, "bioreactor")
    assert [w for w in at.warning if "Stale data" in w.value and "30 min" in w.value]


def test_monitoring_draws_and_counts_only_running_batches(app, lake_copy):
    cr = lake_copy.read("gold", "contamination_risk")
    # a finished batch scored while it ran: history, not "running batches"
    lake_copy.append(
        "gold",
        "contamination_risk",
        cr.head(50).with_columns(batch_id=pl.lit("BR02-B0003"), alarm=pl.lit(True)),
    )
    at = app(lake_copy.root, "monitoring")
    m = metrics(at)
    assert m["Running batches"] == "1" and m["Running batches scored"] == "1"
    latest = cr.filter(pl.col("window_end_ts") == pl.col("window_end_ts").max())
    assert m["In alarm now"] == str(latest["alarm"].sum())
    names = [t.get("name") for t in chart(at, "contamination")["data"]]
    assert names == ["BR01-B0004"]
    assert list(at.dataframe[0].value["batch_id"]) == ["BR01-B0004"]


def test_mspc_picker_defaults_to_the_running_batch_before_its_first_score(app, lake_copy):
    ms = lake_copy.read("gold", "mspc_scores")
    lake_copy.overwrite("gold", "mspc_scores", ms.filter(pl.col("batch_id") != "BR01-B0004"))
    at = app(lake_copy.root, "monitoring")
    assert at.selectbox(key="mon_batch").value == "BR01-B0004"
    assert any("BR01-B0004 has no MSPC score yet" in i.value for i in at.info)


def test_mspc_axes_are_logarithmic(app, fixture_lake):
    at = app(fixture_lake.root, "monitoring")
    for stat in ("t2", "spe"):
        assert chart(at, f"mspc_{stat}")["layout"]["yaxis"]["type"] == "log"


def test_equipment_draws_each_items_own_threshold(app, lake_copy):
    eh = lake_copy.read("gold", "equipment_health")
    thr = {"agitator_motor": 0.9996, "feed_pump": 0.1}
    eh = eh.with_columns(
        threshold=pl.col("equipment_type").replace_strict(thr, return_dtype=pl.Float64)
    ).with_columns(alarm=pl.col("failure_probability") >= pl.col("threshold"))
    lake_copy.overwrite("gold", "equipment_health", eh)
    at = app(lake_copy.root, "equipment")
    fig = chart(at, "eq_now")
    ticks = next(t for t in fig["data"] if t.get("name") == "alarm threshold of the item (%)")
    shown = dict(zip(arr(ticks["x"]), arr(ticks["y"]), strict=True))
    items = eh.unique("equipment_id").select("equipment_id", "equipment_type")
    for r in items.iter_rows(named=True):
        assert shown[r["equipment_id"]] == pytest.approx(100 * thr[r["equipment_type"]])
    texts = [a.get("text", "") for a in fig["layout"].get("annotations", [])]
    assert not [t for t in texts if "100%" in t or "100 %" in t], texts
    assert fig["layout"]["yaxis"]["type"] == "log"  # small probabilities stay visible
    warn = " ".join(w.value for w in at.warning)
    assert "agitator_motor: alarm threshold 99.96 %" in warn
    # the idle unit's items were last scored long ago: not drawn as "now"
    bars = next(t for t in fig["data"] if t.get("type") == "bar")
    colours = dict(zip(arr(bars["x"]), bars["marker"]["color"], strict=True))
    assert colours["BR02-AGT"] == colours["BR02-FP"] == "#9e9e9e"
    assert colours["BR01-AGT"] != "#9e9e9e"


def test_cpk_axis_capped_and_true_value_labelled(app, lake_copy):
    bs = lake_copy.read("gold", "batch_summary")
    lake_copy.overwrite("gold", "batch_summary", bs.with_columns(cpk_ph=pl.lit(31.0)))
    at = app(lake_copy.root, "batch_quality")
    fig = chart(at, "cpk")
    bar = fig["data"][0]
    assert bar["orientation"] == "h"
    shown = dict(zip(arr(bar["y"]), arr(bar["x"]), strict=True))
    labels = dict(zip(arr(bar["y"]), arr(bar["text"]), strict=True))
    assert shown["ph"] == CPK_CAP and labels["ph"] == "31.0 ▶"
    assert fig["layout"]["xaxis"]["range"][1] <= CPK_CAP * 1.2
    # the table keeps the true value
    cpk = next(d.value for d in at.dataframe if "mean_cpk" in d.value.columns)
    assert float(cpk.loc[cpk["cpp"] == "ph", "mean_cpk"].iloc[0]) == 31.0


def test_golden_band_of_the_batchs_recipe_above_nor(app, lake_copy):
    g = lake_copy.read("gold", "golden_batch")
    other = g.with_columns(
        recipe_id=pl.lit("OTHER-RECIPE"), lo=pl.col("lo") + 1000.0, hi=pl.col("hi") + 1000.0
    )
    mine = g.with_columns(recipe_id=pl.lit("MAB-A-FB14"))
    lake_copy.overwrite("gold", "golden_batch", pl.concat([mine, other]))
    at = app(lake_copy.root, "bioreactor")  # BR01-B0004, recipe MAB-A-FB14
    fig = chart(at, "traj_temperature_c")
    band = [t for t in fig["data"] if t.get("fill") == "tonexty"]
    assert len(band) == 1 and band[0]["name"] == "golden batch (mean ± 3 sd)"
    assert max(arr(band[0]["y"])) < 1000  # only its own recipe's envelope
    assert band[0]["line"]["width"] > 0  # edges drawn: visible over the NOR band
    # the NOR/PAR bands are shapes below the traces
    assert all(s.get("layer") == "below" for s in fig["layout"]["shapes"] if s["type"] == "rect")


def test_tables_have_readable_headers_with_units(app, fixture_lake):
    at = app(fixture_lake.root, "batch_quality")
    summary = at.dataframe[-1]
    cfg = json.loads(summary.proto.columns)
    assert cfg["final_titer_g_l"]["label"] == "Final titer (g/L)"
    assert cfg["start_ts"]["label"] == "Start (UTC)"
    assert cfg["start_ts"]["type_config"]["format"] == "YYYY-MM-DD HH:mm"
    assert "final_titer_g_l" in summary.value.columns  # the data (and CSV) keep the names


def test_streamlit_config_binds_localhost_and_hides_deploy():
    out = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '\naddress = "127.0.0.1"' in out
    assert '\ntoolbarMode = "viewer"' in out


def test_mspc_alarm_chart_marks_exactly_the_alarm_hours(app, fixture_lake):
    """The first MSPC chart plots the model's own alarm statistic against its threshold (1):
    its red markers are the batch's alarm hours in gold/mspc_scores, all above 1, and every
    hour above 1 is one of them (the T²/SPE charts' limits are not the alarm threshold)."""
    at = app(fixture_lake.root, "monitoring")
    batch = at.selectbox(key="mon_batch").value
    sc = fixture_lake.read("gold", "mspc_scores").filter(pl.col("batch_id") == batch)
    fig = chart(at, "mspc_alarm_ratio")
    assert fig["layout"]["yaxis"]["type"] == "log"
    marks = next(t for t in fig["data"] if t.get("name") == "alarm")
    alarmed = sc.filter(pl.col("alarm"))
    assert sorted(arr(marks["x"])) == sorted(alarmed["elapsed_h"].to_list())
    assert all(y > 1 for y in arr(marks["y"]))
    over = sc.filter(pl.col("alarm_ratio") > 1)["elapsed_h"].to_list()
    assert sorted(over) == sorted(alarmed["elapsed_h"].to_list())


def test_mspc_scores_from_before_the_alarm_ratio_still_draw(app, lake_copy):
    """A lake scored before ``alarm_ratio`` existed: no alarm chart, the T²/SPE charts and
    no exception."""
    ms = lake_copy.read("gold", "mspc_scores").drop("alarm_ratio", "alarm_by")
    lake_copy.overwrite("gold", "mspc_scores", ms)
    at = app(lake_copy.root, "monitoring")
    assert not at.exception
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert any(i.endswith("chart_mspc_t2") for i in ids)
    assert not any(i.endswith("chart_mspc_alarm_ratio") for i in ids)
