"""Hot store: the in-process ring and Redis answer the same questions the same way."""

from __future__ import annotations

import math

import pytest

from pharma_assets.gateway.hotstore import HotStore, MemoryHotStore, open_hot_store
from pharma_assets.gateway.records import BAD, GOOD, Reading

S = 1_000_000
NOW = 1_800_000_000 * S


def _r(unit: str, tag: str, ts: int, v: float, q: int = GOOD, recv: int | None = None) -> Reading:
    return Reading("src", 1, "SITE01", unit, "B", tag, v, "pH", ts, ts if recv is None else recv, q)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> HotStore:
    if request.param == "memory":
        return MemoryHotStore(stale_after_s=10)
    s = request.getfixturevalue("redis_store")
    s.stale_after_s = 10
    return s


def test_latest_window_and_staleness(store: HotStore) -> None:
    # three hours at 1 Hz: the window keeps (at least) the last two
    start = NOW - 3 * 3600 * S
    batch = [_r("BR01", "ph", start + i * S, 7.0 + i * 1e-4) for i in range(3 * 3600)]
    for k in range(0, len(batch), 600):
        store.put(batch[k : k + 600])
    store.put([_r("BR02", "ph", NOW - 30 * S, float("nan"), BAD)])
    assert store.units() == ["BR01", "BR02"]
    w = store.window("BR01", "ph", 7200, now=NOW)
    assert len(w["ts_us"]) == 7200
    assert w["ts_us"] == sorted(w["ts_us"]) and w["ts_us"][-1] == NOW - S
    assert w["value"][-1] == pytest.approx(7.0 + (3 * 3600 - 1) * 1e-4)
    five = store.window("BR01", "ph", 300, now=NOW)
    assert len(five["ts_us"]) == 300
    (br1,) = store.latest("BR01", now=NOW)
    assert br1["value"] == pytest.approx(w["value"][-1]) and br1["quality"] == "good"
    assert br1["stale"] is False
    (br2,) = store.latest("BR02", now=NOW)
    assert br2["value"] is None and br2["quality"] == "bad"
    assert br2["stale"] is True  # nothing received for 30 s > stale_after_s
    assert store.latest("BR99", now=NOW) == []
    assert store.window("BR01", "temperature_c", 60, now=NOW)["ts_us"] == []


def test_nan_survives_the_store(store: HotStore) -> None:
    store.put([_r("BR01", "ph", NOW, float("nan"), BAD)])
    w = store.window("BR01", "ph", 10, now=NOW)
    assert w["value"] == [None] and w["quality"] == ["bad"]


def test_window_shorter_than_two_hours_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 7200"):
        MemoryHotStore(window_s=600)
    with pytest.raises(ValueError, match="'memcached'"):
        open_hot_store("memcached")
    assert math.isclose(MemoryHotStore().window_s, 7200)
