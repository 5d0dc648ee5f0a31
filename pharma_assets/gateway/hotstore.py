"""Hot store: the latest value and a rolling window of every (unit, tag).

Two implementations share one interface (``HotStore``):

* ``MemoryHotStore`` (embedded default): a numpy ring buffer per (unit, tag) inside the
  gateway process; "last 5 minutes of a unit" costs well under a millisecond.
* ``RedisHotStore`` (production option): the same data in Redis, so several gateway and
  API/dashboard processes share it. Per unit a hash of latest values; per (unit, tag) a
  sorted set scored by source time, trimmed to the window.

Staleness is judged when asked: a value whose gateway receive time is older than
``stale_after_s`` is reported with ``stale: true`` (its source stopped sending or is
disconnected), whatever its quality code was.
"""

from __future__ import annotations

import json
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..twin.landing import QUALITY_CODES
from .records import Reading, now_us

_US = 1_000_000


def _latest_dict(
    unit: str, tag: str, value: float, uom: str, ts: int, recv: int, q: int, stale_us: int, now: int
) -> dict[str, Any]:
    return {
        "unit_id": unit,
        "tag": tag,
        "value": None if math.isnan(value) else value,
        "uom": uom,
        "source_ts_us": ts,
        "recv_ts_us": recv,
        "quality": QUALITY_CODES[q],
        "stale": now - recv > stale_us,
    }


class HotStore(ABC):
    """Latest values and rolling windows, shared by the gateway, the API and dashboards."""

    def __init__(self, window_s: float = 7200.0, stale_after_s: float = 10.0) -> None:
        if window_s < 7200:
            raise ValueError(f"hot store window_s must be at least 7200 (2 h), got {window_s}")
        self.window_s = float(window_s)
        self.stale_after_s = float(stale_after_s)

    @abstractmethod
    def put(self, readings: Sequence[Reading]) -> None:
        """Add readings (each newer than the last of its unit and tag; the gateway checks)."""

    @abstractmethod
    def units(self) -> list[str]:
        """Units that have at least one value."""

    @abstractmethod
    def latest(self, unit_id: str, now: int | None = None) -> list[dict[str, Any]]:
        """Latest value of every tag of ``unit_id`` (empty when unknown)."""

    def latest_many(
        self, unit_ids: Sequence[str], now: int | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """``latest`` of several units at once (one round trip for Redis)."""
        now = now_us() if now is None else now
        return {u: self.latest(u, now) for u in unit_ids}

    @abstractmethod
    def window(
        self, unit_id: str, tag: str, seconds: float, now: int | None = None
    ) -> dict[str, list[Any]]:
        """Readings of the last ``seconds`` (by source time): ``ts_us``, ``value``, ``quality``."""

    @abstractmethod
    def set_doc(self, name: str, doc: Any) -> None:
        """Publish a small JSON document (open alarms, gateway health) to every reader."""

    @abstractmethod
    def get_doc(self, name: str) -> Any:
        """The document last published under ``name``, or None."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (nothing to do for the in-process store)."""


class _Ring:
    __slots__ = ("cap", "head", "n", "q", "recv", "ts", "uom", "val")

    def __init__(self, cap: int, uom: str) -> None:
        self.cap, self.n, self.head, self.uom = cap, 0, 0, uom
        self.ts = np.zeros(cap, dtype=np.int64)
        self.val = np.zeros(cap, dtype=np.float64)
        self.q = np.zeros(cap, dtype=np.int8)
        self.recv = 0

    def add(self, ts: int, val: float, q: int, recv: int) -> None:
        i = self.head
        self.ts[i], self.val[i], self.q[i] = ts, val, q
        self.head = (i + 1) % self.cap
        self.n = min(self.n + 1, self.cap)
        self.recv = recv

    def last(self) -> int:
        return (self.head - 1) % self.cap

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.n < self.cap:
            sl = slice(0, self.n)
            return self.ts[sl], self.val[sl], self.q[sl]
        idx = np.r_[self.head : self.cap, 0 : self.head]
        return self.ts[idx], self.val[idx], self.q[idx]


class MemoryHotStore(HotStore):
    """In-process ring buffers; capacity per tag = window / min_period_s (+10 %)."""

    def __init__(
        self, window_s: float = 7200.0, stale_after_s: float = 10.0, min_period_s: float = 1.0
    ) -> None:
        super().__init__(window_s, stale_after_s)
        self.capacity = math.ceil(self.window_s / min_period_s * 1.1) + 16
        self._rings: dict[str, dict[str, _Ring]] = {}
        self._docs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def set_doc(self, name: str, doc: Any) -> None:
        self._docs[name] = doc

    def get_doc(self, name: str) -> Any:
        return self._docs.get(name)

    def put(self, readings: Sequence[Reading]) -> None:
        with self._lock:
            for r in readings:
                unit = self._rings.setdefault(r.unit_id, {})
                ring = unit.get(r.tag)
                if ring is None:
                    ring = unit[r.tag] = _Ring(self.capacity, r.uom)
                ring.add(r.source_ts_us, r.value, r.quality, r.recv_ts_us)

    def units(self) -> list[str]:
        with self._lock:
            return sorted(self._rings)

    def latest(self, unit_id: str, now: int | None = None) -> list[dict[str, Any]]:
        now = now_us() if now is None else now
        stale_us = int(self.stale_after_s * _US)
        with self._lock:
            out = []
            for tag, ring in self._rings.get(unit_id, {}).items():
                i = ring.last()
                out.append(
                    _latest_dict(
                        unit_id,
                        tag,
                        float(ring.val[i]),
                        ring.uom,
                        int(ring.ts[i]),
                        ring.recv,
                        int(ring.q[i]),
                        stale_us,
                        now,
                    )
                )
        return out

    def window(
        self, unit_id: str, tag: str, seconds: float, now: int | None = None
    ) -> dict[str, list[Any]]:
        now = now_us() if now is None else now
        since = now - int(seconds * _US)
        with self._lock:
            ring = self._rings.get(unit_id, {}).get(tag)
            if ring is None:
                return {"ts_us": [], "value": [], "quality": []}
            ts, val, q = ring.ordered()
            k = int(np.searchsorted(ts, since, side="left"))
            ts, val, q = ts[k:].copy(), val[k:].copy(), q[k:].copy()
        return {
            "ts_us": ts.tolist(),
            "value": [None if math.isnan(v) else v for v in val.tolist()],
            "quality": [QUALITY_CODES[int(x)] for x in q],
        }


class RedisHotStore(HotStore):
    """The hot store in Redis (``redis://host:port/db``), shared between processes.

    Keys (``prefix`` default ``pharma:hot``): ``<prefix>:units`` (set),
    ``<prefix>:latest:<unit>`` (hash tag -> JSON [value, uom, ts_us, recv_us, quality]),
    ``<prefix>:win:<unit>:<tag>`` (sorted set, score = source time in µs).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        window_s: float = 7200.0,
        stale_after_s: float = 10.0,
        prefix: str = "pharma:hot",
    ) -> None:
        super().__init__(window_s, stale_after_s)
        import redis

        self.prefix = prefix
        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.r.ping()
        self._trimmed: dict[str, int] = {}

    def put(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        p = self.prefix
        pipe = self.r.pipeline(transaction=False)
        latest: dict[str, dict[str, str]] = {}
        win_us = int(self.window_s * _US)
        for r in readings:
            v = None if math.isnan(r.value) else r.value
            latest.setdefault(r.unit_id, {})[r.tag] = json.dumps(
                [v, r.uom, r.source_ts_us, r.recv_ts_us, r.quality]
            )
            key = f"{p}:win:{r.unit_id}:{r.tag}"
            pipe.zadd(key, {f"{r.source_ts_us}|{v}|{r.quality}": r.source_ts_us})
            # trim about once a minute per key, not on every reading
            if r.source_ts_us - self._trimmed.get(key, 0) > 60 * _US:
                pipe.zremrangebyscore(key, "-inf", f"({r.source_ts_us - win_us}")
                self._trimmed[key] = r.source_ts_us
        for unit, fields in latest.items():
            pipe.hset(f"{p}:latest:{unit}", mapping=fields)  # type: ignore[arg-type]
        pipe.sadd(f"{p}:units", *latest)
        pipe.execute()

    def set_doc(self, name: str, doc: Any) -> None:
        self.r.set(f"{self.prefix}:doc:{name}", json.dumps(doc, default=str))

    def get_doc(self, name: str) -> Any:
        raw = self.r.get(f"{self.prefix}:doc:{name}")
        return None if raw is None else json.loads(raw)  # type: ignore[arg-type]

    def units(self) -> list[str]:
        return sorted(u.decode() for u in self.r.smembers(f"{self.prefix}:units"))  # type: ignore[union-attr]

    def latest(self, unit_id: str, now: int | None = None) -> list[dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(f"{self.prefix}:latest:{unit_id}")  # type: ignore[assignment]
        return self._decode_latest(unit_id, raw, now)

    def latest_many(
        self, unit_ids: Sequence[str], now: int | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        pipe = self.r.pipeline(transaction=False)
        for u in unit_ids:
            pipe.hgetall(f"{self.prefix}:latest:{u}")
        raws = pipe.execute()
        return {u: self._decode_latest(u, raw, now) for u, raw in zip(unit_ids, raws, strict=True)}

    def _decode_latest(
        self, unit_id: str, raw: dict[bytes, bytes], now: int | None
    ) -> list[dict[str, Any]]:
        now = now_us() if now is None else now
        stale_us = int(self.stale_after_s * _US)
        out = []
        for tag, blob in sorted(raw.items()):
            v, uom, ts, recv, q = json.loads(blob)
            out.append(
                _latest_dict(
                    unit_id,
                    tag.decode(),
                    float("nan") if v is None else v,
                    uom,
                    ts,
                    recv,
                    q,
                    stale_us,
                    now,
                )
            )
        return out

    def window(
        self, unit_id: str, tag: str, seconds: float, now: int | None = None
    ) -> dict[str, list[Any]]:
        now = now_us() if now is None else now
        since = now - int(seconds * _US)
        members: list[bytes] = self.r.zrangebyscore(  # type: ignore[assignment]
            f"{self.prefix}:win:{unit_id}:{tag}", since, "+inf"
        )
        ts, val, q = [], [], []
        for m in members:
            a, b, c = m.decode().split("|")
            ts.append(int(a))
            val.append(None if b == "None" else float(b))
            q.append(QUALITY_CODES[int(c)])
        return {"ts_us": ts, "value": val, "quality": q}

    def clear(self) -> None:
        """Delete every key under the prefix (tests and re-initialisation)."""
        for k in self.r.scan_iter(f"{self.prefix}:*"):
            self.r.delete(k)

    def close(self) -> None:
        self.r.close()


def open_hot_store(
    spec: str, window_s: float = 7200.0, stale_after_s: float = 10.0, prefix: str = "pharma:hot"
) -> HotStore:
    """``memory`` or a ``redis://`` URL."""
    if spec == "memory":
        return MemoryHotStore(window_s, stale_after_s)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisHotStore(spec, window_s, stale_after_s, prefix)
    raise ValueError(f"hot_store {spec!r} is neither 'memory' nor a redis:// URL")


__all__ = ["HotStore", "MemoryHotStore", "RedisHotStore", "open_hot_store"]
