"""Is live data flowing? The gateway's health (``GET /health``) summarised and judged, for
the Dagster view (``defs/landing/gateway.py``) and anyone polling the gateway.

Plain Python: fetch the health document, reduce it to a few numbers (sources connected,
readings/s, lag, buffer depth, open alarms) and judge three checks with thresholds.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8765"


def gateway_url() -> str:
    return os.environ.get("PHARMA_GATEWAY_URL", DEFAULT_URL).rstrip("/")


def fetch_health(url: str | None = None, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The gateway's health document, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{url or gateway_url()}/health", timeout=timeout_s) as r:
            data = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summarize(h: dict[str, Any]) -> dict[str, Any]:
    """The numbers a data engineer looks at first."""
    src = h.get("sources") or {}
    alarms = h.get("alarms") or {}
    return {
        "sources_total": len(src),
        "sources_connected": sum(1 for s in src.values() if s.get("connected")),
        "disconnected": sorted(n for n, s in src.items() if not s.get("connected")),
        "readings_per_s": float(h.get("readings_per_s") or 0.0),
        "lag_ms_max": max((float(s.get("lag_ms") or 0.0) for s in src.values()), default=0.0),
        "silent_s_max": max((float(s.get("silent_s") or 0.0) for s in src.values()), default=0.0),
        "buffer_bytes": int(h.get("buffer_bytes") or 0),
        "max_buffer_bytes": int(h.get("max_buffer_bytes") or 0),
        "landed": int(h.get("landed") or 0),
        "flush_errors": int(h.get("flush_errors") or 0),
        "rejected": sum(sum((s.get("rejected") or {}).values()) for s in src.values()),
        "open_alarms": int(alarms.get("open") or 0),
        "units": len(h.get("units") or []),
    }


@dataclass(frozen=True)
class Judgement:
    name: str
    passed: bool
    description: str


def judge(
    s: dict[str, Any] | None,
    max_lag_s: float = 5.0,
    max_silent_s: float = 30.0,
    max_buffer_share: float = 0.5,
) -> list[Judgement]:
    """Three checks: every source connected and sending; lag below ``max_lag_s``; the disk
    buffer below ``max_buffer_share`` of its limit with no flush error."""
    if s is None:
        msg = f"the gateway at {gateway_url()} does not answer"
        return [
            Judgement(n, False, msg)
            for n in ("gateway_sources_connected", "gateway_lag", "gateway_buffer")
        ]
    conn_ok = s["sources_total"] > 0 and not s["disconnected"] and s["silent_s_max"] <= max_silent_s
    lag_ok = s["lag_ms_max"] <= max_lag_s * 1000
    share = s["buffer_bytes"] / s["max_buffer_bytes"] if s["max_buffer_bytes"] else 0.0
    buf_ok = share <= max_buffer_share and s["flush_errors"] == 0
    return [
        Judgement(
            "gateway_sources_connected",
            conn_ok,
            f"{s['sources_connected']}/{s['sources_total']} sources connected"
            + (f"; disconnected: {', '.join(s['disconnected'])}" if s["disconnected"] else "")
            + f"; longest silence {s['silent_s_max']:.0f} s (limit {max_silent_s:g} s)",
        ),
        Judgement(
            "gateway_lag",
            lag_ok,
            f"largest source->gateway lag {s['lag_ms_max']:.0f} ms (limit {max_lag_s:g} s)",
        ),
        Judgement(
            "gateway_buffer",
            buf_ok,
            f"disk buffer {s['buffer_bytes']} bytes ({share:.0%} of the limit), "
            f"{s['flush_errors']} flush errors",
        ),
    ]


__all__ = ["Judgement", "fetch_health", "gateway_url", "judge", "summarize"]
