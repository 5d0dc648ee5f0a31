"""Small Streamlit building blocks shared by the pages (login + freshness header, tables
with readable headers and a CSV download, states, figures)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from dashboards import auth, data, logic
from pharma_assets.compliance import users

# colours shared by the trajectory-style charts
NOR_FILL = "rgba(46, 160, 67, 0.14)"
PAR_FILL = "rgba(255, 193, 7, 0.12)"
EXC_FILL = "rgba(220, 53, 69, 0.22)"
ENVELOPE_FILL = "rgba(57, 73, 171, 0.28)"
ENVELOPE_EDGE = "#3949ab"
#: a log axis labelled once per decade (plotly's default also labels 2 and 5: unreadable)
LOG_AXIS: dict[str, Any] = {"type": "log", "dtick": 1, "exponentformat": "none"}


#: minutes after which a running batch's newest reading makes a page show the stale banner
STALE_MINUTES_DEFAULT = 15.0
#: permission every page with plant data needs (all roles, including the read-only viewer)
VIEW = "record.view"


def column_config(df: pl.DataFrame, ts_format: str = "YYYY-MM-DD HH:mm") -> dict[str, Any]:
    """Readable headers with units for every column; timestamps as ``YYYY-MM-DD HH:mm``
    (UTC, said in the header), dates as ``YYYY-MM-DD``. The data (and the CSV) keep the
    column names."""
    cfg: dict[str, Any] = {}
    for name, dtype in df.schema.items():
        label = logic.column_label(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is None and not label.endswith("(UTC)"):
                label += " (UTC)"
            cfg[name] = st.column_config.DatetimeColumn(label, format=ts_format)
        elif isinstance(dtype, pl.Date):
            cfg[name] = st.column_config.DateColumn(label, format="YYYY-MM-DD")
        else:
            cfg[name] = st.column_config.Column(label)
    return cfg


def dataframe(
    df: pl.DataFrame,
    key: str | None = None,
    height: int | None = None,
    ts_format: str = "YYYY-MM-DD HH:mm",
) -> None:
    """``st.dataframe`` with readable headers (see ``column_config``)."""
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        height=height or "auto",
        column_config=column_config(df, ts_format),
        key=key,
    )


def table(df: pl.DataFrame, key: str, label: str, height: int | None = None) -> None:
    """A dataframe with an explicit CSV download button (the file is built on click)."""
    dataframe(df, key=f"df_{key}", height=height)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    st.download_button(
        f"Download {label} (CSV)",
        data=lambda: df.write_csv(),
        file_name=f"{safe}.csv",
        mime="text/csv",
        key=f"dl_{key}",
        on_click="ignore",
        icon=":material/download:",
    )


def require(layer: str, name: str, **kw: object) -> pl.DataFrame | None:
    """Read a table; when it is missing say exactly what to run and return None."""
    df = data.read(layer, name, **kw)  # type: ignore[arg-type]
    if df is None:
        st.info(data.missing_hint(layer, name), icon=":material/info:")
    return df


def empty(message: str) -> None:
    """A table exists but holds nothing for this view."""
    st.info(message, icon=":material/inbox:")


def chart(fig: go.Figure, key: str, height: int = 360) -> None:
    """Render a plotly figure with the shared layout (compact margins, legend on top)."""
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": 1.12, "x": 0},
        hovermode="x unified",
    )
    st.plotly_chart(fig, key=f"chart_{key}", width="stretch")


def hline(
    y: float, text: str, color: str = "grey", dash: str = "dash", left: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A horizontal reference line as a (shape, annotation) pair of plain dicts.

    Figures are built in one ``go.Figure(data=..., layout=...)`` call from dicts: plotly
    validates once, which is several times faster than ``add_hline``/``add_vline`` per line.
    """
    shape = {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "yref": "y",
        "y0": y,
        "y1": y,
        "line": {"color": color, "dash": dash, "width": 1.5},
    }
    note = {
        "xref": "paper",
        "x": 0 if left else 1,
        "yref": "y",
        "y": y,
        "text": text,
        "showarrow": False,
        "xanchor": "left" if left else "right",
        "yanchor": "bottom",
        "font": {"size": 10, "color": color},
    }
    return shape, note


def figure(
    traces: list[dict[str, Any]],
    x_title: str,
    y_title: str,
    lines: list[tuple[dict[str, Any], dict[str, Any]]] = (),  # type: ignore[assignment]
    **layout: Any,
) -> go.Figure:
    """A figure from trace dicts, axis titles (with units) and reference lines."""
    return go.Figure(
        data=traces,
        layout={
            "xaxis": {"title": {"text": x_title}, **layout.pop("xaxis", {})},
            "yaxis": {"title": {"text": y_title}, **layout.pop("yaxis", {})},
            "shapes": [s for s, _ in lines],
            "annotations": [a for _, a in lines],
            **layout,
        },
    )


# ----------------------------------------------------------------------------- page header
def stale_minutes(page: str) -> float:
    """The page's stale threshold: ``PHARMA_STALE_MINUTES_<PAGE>`` (page = url path, upper
    case, e.g. ``PHARMA_STALE_MINUTES_BIOREACTOR``), else ``PHARMA_STALE_MINUTES``, else
    ``STALE_MINUTES_DEFAULT``."""
    for var in (f"PHARMA_STALE_MINUTES_{page.upper()}", "PHARMA_STALE_MINUTES"):
        raw = os.environ.get(var)
        if raw:
            try:
                value = float(raw)
            except ValueError:
                st.error(f"{var}={raw!r} is not a number of minutes; using the default")
                continue
            return value
    return STALE_MINUTES_DEFAULT


def freshness(page: str, tables: tuple[tuple[str, str], ...]) -> logic.Freshness:
    """ "Data as of" line for the tables the page shows, and a warning banner when a running
    batch's newest reading (gold/unit_status) is older than the page's threshold."""
    us = data.read(
        "gold", "unit_status", columns=("unit_id", "state", "current_batch_id", "last_reading_ts")
    )
    now = datetime.now(UTC)
    fr = logic.freshness(data.committed(tables), us, now, stale_minutes(page))
    parts = [f"Data as of {logic.fmt_ts(fr.as_of)}"]
    if fr.as_of is not None:
        parts[0] += f" ({logic.fmt_age((now - fr.as_of).total_seconds())} ago; newest commit of "
        parts[0] += ", ".join(f"{layer}/{name}" for layer, name in tables) + ")"
    if fr.newest_reading is not None:
        parts.append(f"newest reading of a running batch {logic.fmt_ts(fr.newest_reading)}")
    st.caption(" · ".join(parts))
    if fr.stale.height:
        items = "; ".join(
            f"{r['unit_id']} {r['current_batch_id']}: "
            + (
                "no reading yet"
                if r["last_reading_ts"] is None
                else f"newest reading {logic.fmt_ts(r['last_reading_ts'])}, "
                f"{logic.fmt_age(60 * r['age_min'])} old"
            )
            for r in fr.stale.iter_rows(named=True)
        )
        st.warning(
            f"Stale data: {fr.stale.height} running batch(es) without a reading in the last "
            f"{fr.threshold_min:g} min ({items}). Check the live feed and the pipeline "
            "(Dagster sensors).",
            icon=":material/schedule:",
        )
    return fr


def header(title: str, page: str, tables: tuple[tuple[str, str], ...]) -> users.Session:
    """Every plant-data page starts here: login (any role with ``record.view``, the
    read-only ``viewer`` included), the title, and the freshness line/banner."""
    session = auth.require(VIEW)
    st.title(title)
    freshness(page, tables)
    return session
