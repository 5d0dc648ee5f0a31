"""The Dagster view of the live gateway: the observable source asset, its three checks and
the sensor that records them, against a real gateway API on 127.0.0.1 (and none)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator

import dagster as dg
import pytest
import uvicorn

from pharma_assets.defs.landing.gateway import (
    CHECKS,
    GATEWAY_KEY,
    gateway_checks,
    gateway_health_sensor,
    gateway_live,
)
from pharma_assets.gateway.api import make_app
from pharma_assets.gateway.core import Gateway
from pharma_assets.gateway.health import judge, summarize
from pharma_assets.gateway.hotstore import MemoryHotStore
from pharma_assets.gateway.mapping import SourceMap
from pharma_assets.gateway.records import GOOD, now_us

from ..dashboards.live_gateway import free_port


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    gw = Gateway("SITE01", MemoryHotStore())
    st = gw.stats("twin-opcua", "opcua")
    st.connected = True
    gw.stats("skids", "modbus").connected = False
    gw.ingest(
        "twin-opcua",
        SourceMap("twin-opcua", {}),
        "BR01",
        "BR01-B0001",
        [("ph", 7.0, None, now_us() - 200_000, GOOD)],
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(gw.hot, gw.health), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    monkeypatch.setenv("PHARMA_GATEWAY_URL", url)
    try:
        yield gw
    finally:
        server.should_exit = True


def test_definitions_hold_the_source_asset_checks_and_sensor() -> None:
    from pharma_assets.definitions import defs

    d = defs()
    assert GATEWAY_KEY in {a.key for a in d.resolve_all_asset_specs()}
    keys = {k.name for c in gateway_checks for k in c.check_keys}
    assert keys == set(CHECKS)
    assert d.resolve_sensor_def("gateway_health_sensor") is not None


def test_sensor_records_health_and_flags_the_disconnected_source(gateway: Gateway) -> None:
    with dg.instance_for_test() as inst:
        res = gateway_health_sensor(dg.build_sensor_context(instance=inst))
    assert isinstance(res, dg.SensorResult) and not res.run_requests
    obs = [e for e in res.asset_events if isinstance(e, dg.AssetObservation)]
    assert len(obs) == 1 and obs[0].asset_key == GATEWAY_KEY
    md = {k: v.value for k, v in obs[0].metadata.items()}
    assert (md["reachable"], md["sources_total"], md["sources_connected"]) == (True, 2, 1)
    assert md["disconnected"] == "skids" and md["units"] == 1
    assert 0 < md["lag_ms_max"] < 60_000
    checks = {e.check_name: e for e in res.asset_events if isinstance(e, dg.AssetCheckEvaluation)}
    assert set(checks) == set(CHECKS)
    assert not checks["gateway_sources_connected"].passed
    assert "disconnected: skids" in (checks["gateway_sources_connected"].description or "")
    assert checks["gateway_lag"].passed and checks["gateway_buffer"].passed


def test_observation_and_check_by_hand(gateway: Gateway) -> None:
    gateway.stats("skids").connected = True
    assert gateway_live.observe_fn is not None
    r = gateway_live.observe_fn()  # type: ignore[call-arg]
    assert isinstance(r, dg.ObserveResult) and r.metadata["reachable"] is True
    ok = dg.materialize(
        [gateway_live, *gateway_checks], selection=dg.AssetSelection.checks(*gateway_checks)
    )
    evals = {e.check_name: e.passed for e in ok.get_asset_check_evaluations()}
    assert evals == dict.fromkeys(CHECKS, True)


def test_unreachable_gateway_fails_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHARMA_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    with dg.instance_for_test() as inst:
        res = gateway_health_sensor(dg.build_sensor_context(instance=inst))
    assert isinstance(res, dg.SensorResult)
    checks = [e for e in res.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert len(checks) == 3 and not any(c.passed for c in checks)
    assert all("does not answer" in (c.description or "") for c in checks)


def test_judge_thresholds() -> None:
    h = {
        "sources": {
            "a": {"name": "a", "connected": True, "lag_ms": 6000, "silent_s": 1},
            "b": {"name": "b", "connected": True, "lag_ms": 10, "silent_s": 45},
        },
        "buffer_bytes": 600,
        "max_buffer_bytes": 1000,
        "flush_errors": 0,
    }
    got = {j.name: j.passed for j in judge(summarize(h))}
    assert got == {
        "gateway_sources_connected": False,
        "gateway_lag": False,
        "gateway_buffer": False,
    }
    got = {
        j.name: j.passed
        for j in judge(summarize(h), max_lag_s=10, max_silent_s=60, max_buffer_share=0.7)
    }
    assert got == dict.fromkeys(CHECKS, True)
