"""Which engine runs the heavy transforms: ``PHARMA_ENGINE=polars`` (default) or ``spark``.

polars runs everything in the calling process (one machine, both cores). spark hands the
same work to a Spark cluster (``pharma_assets.engines.spark``): the bulk/backfill path
(landing -> bronze -> silver), the minute timeline and the ML feature tables. Nothing else
changes: the lake, its exactly-once commit rules and the tables are the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

Engine = Literal["polars", "spark"]
ENGINES: tuple[Engine, ...] = ("polars", "spark")


def engine_from_env(env: Mapping[str, str] | None = None) -> Engine:
    """``PHARMA_ENGINE`` (default ``polars``); anything else is a clear error."""
    env = os.environ if env is None else env
    raw = (env.get("PHARMA_ENGINE") or "polars").strip().lower()
    if raw == "polars":
        return "polars"
    if raw == "spark":
        return "spark"
    raise ValueError(f"PHARMA_ENGINE={raw!r} is not an engine; use one of {', '.join(ENGINES)}")
