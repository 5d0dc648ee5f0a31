"""The Live page in AppTest against a real gateway API: without a gateway it says how to start
one; with one it renders the push view, lets a user with alarm.respond acknowledge and
shelve (audited by the gateway) and refuses the read-only viewer; the Plant overview and
Bioreactor pages take current values from the hot store."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.lake.storage import Lake

from .live_gateway import SPEC, TOKEN, LiveGateway, free_port

TAG = "temperature_c"


@pytest.fixture
def gateway(lake_copy: Lake, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveGateway]:
    g = LiveGateway(lake_copy).start()
    monkeypatch.setenv("PHARMA_GATEWAY_URL", g.url)
    monkeypatch.setenv("PHARMA_GATEWAY_TOKEN", TOKEN)
    try:
        yield g
    finally:
        g.stop()


def _html(at: AppTest) -> str:
    frames = list(at.get("iframe"))
    assert frames, "no iframe on the page"
    return str(frames[0].proto.srcdoc)


def test_without_gateway_the_page_says_how_to_start_it(
    app: Callable[..., AppTest], fixture_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMA_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    at = app(fixture_lake.root, "live")
    assert "Live" in [t.value for t in at.title]
    assert any("not running" in w.value and "pharma-twin gateway" in w.value for w in at.warning)


def test_login_required(app: Callable[..., AppTest], fixture_lake: Lake) -> None:
    at = app(fixture_lake.root, "live", user=None)
    assert [t.label for t in at.text_input][:2] == ["User ID", "Password"]
    assert not at.get("iframe")


def test_live_view_and_viewer_cannot_act(app: Callable[..., AppTest], gateway: LiveGateway) -> None:
    lim = SPEC.tags[TAG].limits("production")
    assert lim.par is not None
    gateway.put("BR01", {TAG: lim.par[1] + 1.0})
    at = app(gateway.lake.root, "live")
    html = _html(at)
    assert f"{gateway.url.replace('http', 'ws')}/ws/live" in html and '"unit": "BR01"' in html
    assert '"par": [' in html  # the bands travel with the page
    assert any("alarm.respond" in i.value for i in at.info)
    assert not [b for b in at.button if b.label in ("Acknowledge", "Shelve")]


def test_acknowledge_and_shelve_by_a_named_user_audited(
    app: Callable[..., AppTest], gateway: LiveGateway
) -> None:
    lim = SPEC.tags[TAG].limits("production")
    assert lim.par is not None
    gateway.put("BR01", {TAG: lim.par[1] + 1.0})
    aid = next(iter(gateway.svc.engine.alarms))
    at = app(gateway.lake.root, "live", user="qa.lead")
    at.text_input(key="ack_comment").set_value("called the operator")
    at.button[0].click()  # the ack form's submit
    at.run()
    assert not at.exception and any("acknowledged by qa.lead" in s.value for s in at.success)
    assert gateway.svc.engine.alarms[aid].state == "ack_active"
    at.text_input(key="shelve_reason").set_value("probe being replaced")
    at.number_input(key="shelve_minutes").set_value(15)
    shelve = next(b for b in at.button if b.label == "Shelve")
    shelve.click()
    at.run()
    assert any("shelved for 15 min" in s.value for s in at.success), [e.value for e in at.error]
    a = gateway.svc.engine.alarms[aid]
    assert a.state == "shelved" and a.shelved_by == "qa.lead"
    trail = AuditTrail(gateway.lake).read().filter(pl.col("record_id") == aid)
    assert trail["action"].to_list() == ["alarm_acknowledged", "alarm_shelved"]
    assert trail["actor"].to_list() == ["qa.lead", "qa.lead"]
    assert trail["reason"].to_list() == ["called the operator", "probe being replaced"]


def test_overview_and_bioreactor_take_current_values_from_the_hot_store(
    app: Callable[..., AppTest], gateway: LiveGateway
) -> None:
    gateway.put("BR01", {TAG: 36.125})
    at = app(gateway.lake.root, "overview")
    assert any("live from the gateway" in c.value for c in at.caption)
    tables = [d.value for d in at.dataframe]
    cur = next(t for t in tables if "temperature_c" in t.columns and "live_as_of" in t.columns)
    assert 36.125 in cur["temperature_c"].to_list()
    at = app(gateway.lake.root, "bioreactor")
    assert any("live from the gateway" in c.value for c in at.caption)
    assert any(m.label.startswith("temperature_c now") and "36.125" in m.value for m in at.metric)


def test_overview_falls_back_to_gold_without_gateway(
    app: Callable[..., AppTest], fixture_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHARMA_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    at = app(fixture_lake.root, "overview")
    assert any("gold/unit_status" in c.value for c in at.caption)
