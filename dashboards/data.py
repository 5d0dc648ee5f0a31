"""Read-only access to the lake for the dashboards, cached per Delta table version.

The lake root comes from ``PHARMA_LAKE_URI`` (default ``lakehouse``; object-store URIs take
their credentials from ``AWS_*``/``AZURE_*``/``GOOGLE_*`` like the pipeline does, through
``pharma_assets.lake.storage.Lake``). Nothing here writes.

Caching: every rerun asks each table it needs for its current version (a cheap incremental
log check on a snapshot kept per process); the read itself is an ``st.cache_data`` entry
keyed by (root, table, version, columns, filter), so a new materialization is shown on the
next rerun without restarting the app, and an unchanged table is never read twice.
Derived frames (latest rows per item, ...) are cached the same way, keyed by the versions
of the tables they come from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import streamlit as st
from deltalake import DeltaTable

from dashboards import logic
from pharma_assets.lake.specs import CppSpec, load_spec
from pharma_assets.lake.storage import Lake, lake_uri_from_env

#: tables listed in the sidebar with their version and last refresh
SIDEBAR_TABLES = (
    ("gold", "unit_status"),
    ("gold", "batch_summary"),
    ("gold", "plant_kpis"),
    ("gold", "cpp_excursions"),
    ("gold", "equipment_health"),
    ("gold", "contamination_risk"),
    ("gold", "mspc_scores"),
    ("gold", "golden_batch"),
    ("gold", "model_performance"),
    ("silver", "batch_timeline"),
)

# what to run when a table is missing, by producing group
_PIPELINE_HINT = (
    "import the plant's exports (`pharma-twin import`: historian, MES batch list, LIMS, CMMS; "
    "docs/bring_your_own_data.md) and run `pharma-twin pipeline`, or `make demo` for the "
    "simulated plant"
)
_ML_HINT = (
    "not trained, or not supported by this site's data: after `pharma-twin import` and "
    "`pharma-twin pipeline`, run `pharma-twin train` (or `make demo`); the Models page says "
    "which models the data supports and what to import for the rest"
)
ML_TABLES = {
    "equipment_health",
    "contamination_risk",
    "batch_forecasts",
    "mspc_scores",
    "mspc_alarms",
    "golden_batch",
    "model_performance",
    "model_capabilities",
}

_lock = threading.Lock()


def lake_uri() -> str:
    """The configured lake root, as given (relative paths resolve against the CWD)."""
    return lake_uri_from_env()


@st.cache_resource(show_spinner=False)
def _lake(root: str) -> Lake:
    return Lake.at(root)


def lake() -> Lake:
    """The Lake for the configured root (one per process and root; keeps snapshots)."""
    return _lake(lake_uri())


def missing_hint(layer: str, name: str) -> str:
    """What a user must run to get a table that does not exist yet."""
    hint = _ML_HINT if layer == "gold" and name in ML_TABLES else _PIPELINE_HINT
    return f"`{layer}/{name}` does not exist in the lake at {lake().root}: {hint}."


def version(layer: str, name: str) -> int | None:
    """Current Delta version of a table (None when it does not exist)."""
    with _lock:  # a Lake's snapshot cache is shared by the sessions' threads
        try:
            return lake().version(layer, name)
        except FileNotFoundError:
            return None


Where = tuple[tuple[str, Any], ...]


def _snapshot(root: str, layer: str, name: str, ver: int) -> DeltaTable | None:
    """The table at ``ver``: the Lake's cached latest snapshot when it is that version (no
    second log replay), else a snapshot loaded at that version."""
    lk = _lake(root)
    with _lock:
        dt = lk.table(layer, name)
    if dt is not None and dt.version() == ver:
        return dt
    return lk.table(layer, name, version=ver)


@st.cache_data(show_spinner=False, max_entries=256)
def _read(
    root: str, layer: str, name: str, ver: int, columns: tuple[str, ...] | None, where: Where
) -> pl.DataFrame | None:
    dt = _snapshot(root, layer, name, ver)
    if dt is None:
        return None
    lf = pl.scan_delta(dt)
    for col, val in where:
        lf = lf.filter(
            pl.col(col).is_in(list(val)) if isinstance(val, tuple) else pl.col(col) == val
        )
    if columns is not None:
        lf = lf.select([c for c in columns if c in lf.collect_schema().names()])
    return lf.collect()


def scan(layer: str, name: str) -> pl.LazyFrame | None:
    """Uncached lazy scan of a table's current version, for derived frames that aggregate a
    large table (cache the small result with ``derived``, not the big input)."""
    ver = version(layer, name)
    if ver is None:
        return None
    dt = _snapshot(lake_uri(), layer, name, ver)
    return None if dt is None else pl.scan_delta(dt)


def read(
    layer: str, name: str, columns: tuple[str, ...] | None = None, where: Where = ()
) -> pl.DataFrame | None:
    """A table at its current version (None when missing), optionally columns and equality
    filters ``((column, value_or_tuple_of_values), ...)``; cached per version."""
    ver = version(layer, name)
    if ver is None:
        return None
    return _read(lake_uri(), layer, name, ver, columns, where)


@st.cache_data(show_spinner=False, max_entries=256)
def _derived(
    root: str, fn_name: str, versions: tuple[int | None, ...], args: tuple[Any, ...]
) -> Any:
    return _DERIVED[fn_name](*args)


def derived(fn: Callable[..., Any], tables: tuple[tuple[str, str], ...], *args: Any) -> Any:
    """``fn(*args)`` cached by the versions of ``tables`` (the tables ``fn`` reads)."""
    _DERIVED[fn.__name__] = fn
    versions = tuple(version(layer, name) for layer, name in tables)
    return _derived(lake_uri(), fn.__name__, versions, args)


_DERIVED: dict[str, Callable[..., Any]] = {}


# ----------------------------------------------------------------------------- derived frames
def equipment_latest() -> pl.DataFrame | None:
    """Latest row per equipment item of gold/equipment_health."""
    return derived(_equipment_latest, (("gold", "equipment_health"),))


def _equipment_latest() -> pl.DataFrame | None:
    eh = scan("gold", "equipment_health")
    return None if eh is None else logic.latest_per_lazy(eh, "equipment_id", "hour_ts")


def contamination_latest() -> pl.DataFrame | None:
    """Latest 5-minute window per batch: of gold/contamination_risk (rebuilt at each
    retraining) and gold/contamination_live (the 5-minute live scoring), the newer."""
    return derived(
        _contamination_latest, (("gold", "contamination_risk"), ("gold", "contamination_live"))
    )


def _contamination_latest() -> pl.DataFrame | None:
    frames = [
        lf
        for lf in (scan("gold", "contamination_risk"), scan("gold", "contamination_live"))
        if lf is not None
    ]
    if not frames:
        return None
    both = pl.concat(frames, how="diagonal_relaxed")
    return logic.latest_per_lazy(both, "batch_id", "window_end_ts")


def mspc_latest() -> pl.DataFrame | None:
    """Latest monitored hour per batch of gold/mspc_scores."""
    return derived(_mspc_latest, (("gold", "mspc_scores"),))


def _mspc_latest() -> pl.DataFrame | None:
    ms = scan("gold", "mspc_scores")
    if ms is None:
        return None
    ms = ms.select("batch_id", "unit_id", "elapsed_h", "alarm")
    return logic.latest_per_lazy(ms, "batch_id", "elapsed_h")


def equipment_trend(equipment_id: str, max_points: int) -> pl.DataFrame | None:
    """One item's scored hours (gold/equipment_health), reduced to ``max_points`` by taking,
    per bucket of hours, the mean health and the maximum failure probability."""
    return derived(_equipment_trend, (("gold", "equipment_health"),), equipment_id, max_points)


def _equipment_trend(equipment_id: str, max_points: int) -> pl.DataFrame | None:
    eh = scan("gold", "equipment_health")
    if eh is None:
        return None
    cols = (
        "equipment_id",
        "hour_ts",
        "batch_id",
        "health_score",
        "failure_probability",
        "threshold",
        "alarm",
    )
    df = eh.filter(pl.col("equipment_id") == equipment_id).select(cols).collect()
    return logic.reduce_trend(df, max_points)


def timeline_tags() -> list[str]:
    """The tag columns of silver/batch_timeline (any unit class: the site's own tags too)."""
    lf = scan("silver", "batch_timeline")
    if lf is None:
        return []
    keys = {"batch_id", "unit_id", "elapsed_min", "minute_ts", "phase", "source_file"}
    return [c for c, t in lf.collect_schema().items() if c not in keys and t.is_numeric()]


def timeline(batch_id: str, tags: tuple[str, ...], max_points: int) -> pl.DataFrame | None:
    """One batch's minute trajectories (silver/batch_timeline), averaged to ``max_points``
    (column ``last_h``: hours since inoculation of the batch's last minute of data)."""
    return derived(_timeline, (("silver", "batch_timeline"),), batch_id, tags, max_points)


def _timeline(batch_id: str, tags: tuple[str, ...], max_points: int) -> pl.DataFrame | None:
    tl = read(
        "silver",
        "batch_timeline",
        ("batch_id", "elapsed_min", "phase", *tags),
        where=(("batch_id", batch_id),),
    )
    if tl is None:
        return None
    present = [t for t in tags if t in tl.columns]
    last_h = None if tl.height == 0 else tl["elapsed_min"].max() / 60  # type: ignore[operator]
    return logic.downsample(tl, present, max_points).with_columns(last_h=pl.lit(last_h, pl.Float64))


# ----------------------------------------------------------------------------- spec and meta
@st.cache_resource(show_spinner=False)
def _spec(path: str | None, _mtime: int, landing: str, _site_mtime: int) -> CppSpec:
    # with the unit class's other tags and the site tags the importer declared (their units)
    return load_spec(path, landing=landing)


def spec() -> CppSpec:
    """The CPP spec (``PHARMA_CPP_SPEC`` or the packaged file) as silver applies it (with the
    site tags declared in ``PHARMA_LANDING_DIR``), reloaded when either changes."""
    path = os.environ.get("PHARMA_CPP_SPEC")
    p = Path(path) if path else None
    mtime = p.stat().st_mtime_ns if p is not None and p.exists() else 0
    landing = os.environ.get("PHARMA_LANDING_DIR", "landing")
    site = Path(landing) / "site_tags"
    site_mtime = max((f.stat().st_mtime_ns for f in site.glob("*.yaml")), default=0)
    return _spec(path, mtime, landing, site_mtime)


@dataclass(frozen=True)
class TableInfo:
    """Version and commit time of one table, for the sidebar."""

    table: str
    version: int | None
    refreshed: datetime | None


@st.cache_data(show_spinner=False, max_entries=512)
def _refreshed(root: str, layer: str, name: str, ver: int) -> datetime | None:
    dt = _snapshot(root, layer, name, ver)
    if dt is None:
        return None
    hist = dt.history(1)
    ts = hist[0].get("timestamp") if hist else None
    return None if ts is None else datetime.fromtimestamp(ts / 1000, UTC)


def committed(tables: tuple[tuple[str, str], ...]) -> list[datetime | None]:
    """Commit time (UTC) of the current version of each table (None when missing)."""
    out: list[datetime | None] = []
    for layer, name in tables:
        v = version(layer, name)
        out.append(None if v is None else _refreshed(lake_uri(), layer, name, v))
    return out


def table_infos() -> list[TableInfo]:
    """Version and last refresh of the tables the sidebar lists."""
    out = []
    for layer, name in SIDEBAR_TABLES:
        v = version(layer, name)
        out.append(
            TableInfo(
                f"{layer}/{name}", v, None if v is None else _refreshed(lake_uri(), layer, name, v)
            )
        )
    return out


# ----------------------------------------------------------------------------- MLflow registry
@st.cache_data(show_spinner=False, ttl=30)
def _registered_models(uri: str | None) -> tuple[pl.DataFrame | None, str]:
    try:
        from pharma_assets.ml import registry  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, (
            "MLflow registry not available (pharma_assets.ml.registry is not installed yet): "
            "versions and champions below come from gold/model_performance."
        )
    target = uri or registry.tracking_uri()
    db = target.removeprefix("sqlite:///") if target.startswith("sqlite:///") else None
    if db is not None and not Path(db).exists():  # reading must not create a store
        return None, (
            f"No MLflow store at {target} yet ({_ML_HINT}); versions and champions below "
            "come from gold/model_performance."
        )
    try:
        df = registry.list_models(target)
    except Exception as e:  # a missing or locked MLflow store must not break the page
        return None, (
            f"Could not read the MLflow registry at {target} ({type(e).__name__}: {e}); "
            "versions and champions below come from gold/model_performance."
        )
    if df is None or df.height == 0:
        return None, (
            f"No registered model in MLflow at {target} ({_ML_HINT}); versions and champions "
            "below come from gold/model_performance."
        )
    return df, f"From the MLflow model registry at {target} (refreshed every 30 s)."


def registered_models() -> tuple[pl.DataFrame | None, str]:
    """Registered model versions from MLflow (``PHARMA_MLFLOW_URI``) and a note on the source;
    None when the registry module or store is unavailable."""
    return _registered_models(os.environ.get("PHARMA_MLFLOW_URI"))
