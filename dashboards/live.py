"""Access to the live gateway (``pharma-twin gateway``) for the dashboard pages.

The gateway's HTTP API serves the hot store (latest values, windows, open alarms, health);
the Live page's browser code opens its WebSocket (``/ws/live``) directly for sub-second
push. Where it runs: ``PHARMA_GATEWAY_URL`` (as the Streamlit server reaches it, default
``http://127.0.0.1:8765``) and ``PHARMA_GATEWAY_PUBLIC_URL`` (as the user's browser reaches
it, default the same). Alarm actions are sent by the Streamlit server with the bearer
token ``PHARMA_GATEWAY_TOKEN`` and the logged-in user's ID; the gateway checks the user's
permission and writes the audit trail.

Every call has a short timeout and returns None when the gateway is not running, so the
pages fall back to the gold tables.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import polars as pl

DEFAULT_URL = "http://127.0.0.1:8765"


def gateway_url() -> str:
    return os.environ.get("PHARMA_GATEWAY_URL", DEFAULT_URL).rstrip("/")


def public_url() -> str:
    return os.environ.get("PHARMA_GATEWAY_PUBLIC_URL", gateway_url()).rstrip("/")


def get(path: str, timeout_s: float = 1.0) -> Any:
    """GET ``path`` from the gateway as JSON; None when it is unreachable or answers an error."""
    try:
        with urllib.request.urlopen(gateway_url() + path, timeout=timeout_s) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


class ActionError(RuntimeError):
    """The gateway refused an alarm action (its message says why)."""


def post_action(alarm_id: str, action: str, body: dict[str, Any], timeout_s: float = 10.0) -> Any:
    """POST an alarm action (ack, shelve, unshelve) for the logged-in user."""
    token = os.environ.get("PHARMA_GATEWAY_TOKEN", "")
    url = f"{gateway_url()}/alarms/{urllib.parse.quote(alarm_id, safe='')}/{action}"
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", str(e))
        except ValueError:
            detail = str(e)
        raise ActionError(f"gateway refused {action} of {alarm_id}: {detail}") from None
    except OSError as e:
        raise ActionError(f"gateway at {gateway_url()} unreachable: {e}") from None


def current_values(cpp_tags: list[str]) -> pl.DataFrame | None:
    """Latest value of every CPP of every unit from the hot store (one row per unit and
    tag: value, uom, source time, quality, stale), or None when the gateway is not running."""
    units = get("/units")
    if units is None:
        return None
    rows = []
    for u in units:
        for d in get(f"/units/{urllib.parse.quote(u, safe='')}/latest") or []:
            if d["tag"] in cpp_tags:
                rows.append(d)
    schema = {
        "unit_id": pl.String,
        "tag": pl.String,
        "value": pl.Float64,
        "uom": pl.String,
        "source_ts_us": pl.Int64,
        "recv_ts_us": pl.Int64,
        "quality": pl.String,
        "stale": pl.Boolean,
    }
    df = pl.DataFrame(rows, schema=schema)
    return df.with_columns(
        source_ts=pl.from_epoch("source_ts_us", time_unit="us").dt.replace_time_zone("UTC")
    )


def wide(values: pl.DataFrame) -> pl.DataFrame:
    """One row per unit, one column per CPP (``<tag>``), plus ``live_as_of`` and ``stale_tags``."""
    if values.height == 0:
        return pl.DataFrame(schema={"unit_id": pl.String})
    w = values.pivot(on="tag", index="unit_id", values="value", aggregate_function="last")
    meta = values.group_by("unit_id").agg(
        live_as_of=pl.col("source_ts").max(), stale_tags=pl.col("stale").sum()
    )
    return w.join(meta, on="unit_id").sort("unit_id")


def unit_now(unit_id: str, tags: list[str]) -> dict[str, dict[str, Any]] | None:
    """Latest hot-store value of ``tags`` of one unit, or None when the gateway is not
    running or has nothing for the unit."""
    got = get(f"/units/{urllib.parse.quote(unit_id, safe='')}/latest")
    if not got:
        return None
    return {d["tag"]: d for d in got if d["tag"] in tags}


def current_cpps(
    unit_status: pl.DataFrame | None, cpp_tags: list[str]
) -> tuple[pl.DataFrame | None, str]:
    """Each unit's current CPP values and where they come from: the hot store when the
    gateway runs (``live``), else the last values in ``gold/unit_status`` (``gold``)."""
    v = current_values(cpp_tags)
    if v is not None and v.height:
        return wide(v), f"live from the gateway at {gateway_url()}"
    if unit_status is None:
        return None, "gold"
    cols = ["unit_id", *[t for t in cpp_tags if t in unit_status.columns]]
    cols += [c for c in ("updated_at",) if c in unit_status.columns]
    return unit_status.select(cols).sort("unit_id"), "gold/unit_status (last pipeline run)"


__all__ = [
    "ActionError",
    "current_cpps",
    "current_values",
    "gateway_url",
    "get",
    "post_action",
    "public_url",
    "unit_now",
    "wide",
]
