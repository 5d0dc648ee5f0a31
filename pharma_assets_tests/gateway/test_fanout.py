"""The fan-out feed /ws/live over a hot store in the machine's Redis (as a separate
``gateway-api`` process serves it): the full state first, then only what changed, per unit
and per tag list; a client that missed a snapshot gets the full state again."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient

from pharma_assets.gateway.api import Broadcaster, make_app
from pharma_assets.gateway.hotstore import RedisHotStore
from pharma_assets.gateway.records import GOOD, Reading, now_us


def _put(store: RedisHotStore, unit: str, values: dict[str, float], ts: int) -> None:
    store.put(
        [Reading("src", 1, "SITE01", unit, "B", t, v, "x", ts, ts, GOOD) for t, v in values.items()]
    )


def test_latest_many_is_latest_of_each_unit(redis_store: RedisHotStore) -> None:
    ts = now_us()
    _put(redis_store, "U1", {"a": 1.0, "b": 2.0}, ts)
    _put(redis_store, "U2", {"a": 3.0}, ts)
    many = redis_store.latest_many(["U1", "U2", "U3"], ts)
    assert many == {u: redis_store.latest(u, ts) for u in ("U1", "U2", "U3")}
    assert many["U3"] == [] and [d["value"] for d in many["U1"]] == [1.0, 2.0]


def test_snapshots_give_full_state_then_only_changes(redis_store: RedisHotStore) -> None:
    bc = Broadcaster(redis_store)
    ts = now_us()
    _put(redis_store, "U1", {"a": 1.0, "b": 2.0}, ts)
    _put(redis_store, "U2", {"a": 3.0, "b": 4.0}, ts)
    assert bc._build()
    bc.seq = 1
    full = json.loads(bc.text(None, True))
    assert full["full"] and set(full["units"]) == {"U1", "U2"} and "health" in full
    assert not bc._build()  # nothing changed: no new snapshot
    _put(redis_store, "U2", {"b": 5.0}, ts + 1_000_000)
    assert bc._build()
    bc.seq, bc._texts = 2, {}
    delta = json.loads(bc.text(None, False))
    assert not delta["full"]
    assert list(delta["units"]) == ["U2"] and list(delta["units"]["U2"]) == ["b"]
    assert delta["units"]["U2"]["b"][0] == 5.0
    assert "alarms" not in delta and "health" not in delta  # unchanged documents are left out
    assert bc.text("U1", False) == ""  # nothing for U1's view: not sent at all
    only_a = json.loads(bc.text(None, True, ("a",)))
    assert {u: list(v) for u, v in only_a["units"].items()} == {"U1": ["a"], "U2": ["a"]}
    redis_store.set_doc("alarms", [{"unit_id": "U1", "alarm_id": "x"}])
    assert bc._build()
    bc.seq, bc._texts = 3, {}
    d3 = json.loads(bc.text("U1", False))
    assert d3["units"] == {} and d3["alarms"] == [{"unit_id": "U1", "alarm_id": "x"}]


def test_websocket_client_merges_deltas_to_the_hot_store_state(
    redis_store: RedisHotStore,
) -> None:
    ts = now_us()
    _put(redis_store, "U1", {"a": 1.0, "b": 2.0}, ts)
    _put(redis_store, "U2", {"a": 3.0}, ts)
    app = make_app(redis_store, interval_s=0.05)
    with TestClient(app) as c, c.websocket_connect("/ws/live?unit=U1") as ws:
        first = json.loads(ws.receive_text())
        assert first["full"] and list(first["units"]) == ["U1"]
        state = first["units"]["U1"]
        for k in range(1, 4):
            _put(redis_store, "U2", {"a": 10.0 + k}, ts + k * 1_000_000)  # not in this view
            _put(redis_store, "U1", {"b": 20.0 + k}, ts + k * 1_000_000)
            deadline = time.monotonic() + 10
            while state["b"][0] != 20.0 + k and time.monotonic() < deadline:
                m = json.loads(ws.receive_text())
                assert set(m["units"]) <= {"U1"}
                if m["full"]:
                    state = m["units"]["U1"]
                else:
                    state.update(m["units"].get("U1", {}))
            assert state["b"][0] == 20.0 + k
        assert state["a"][0] == 1.0
        assert state == {
            d["tag"]: [d["value"], d["source_ts_us"], d["recv_ts_us"], 0, d["stale"], d["uom"]]
            for d in redis_store.latest("U1")
        }
