"""Small Streamlit building blocks shared by the pages (tables with CSV download, states)."""

from __future__ import annotations

import re
from typing import Any

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from dashboards import data

# colours shared by the trajectory-style charts
NOR_FILL = "rgba(46, 160, 67, 0.14)"
PAR_FILL = "rgba(255, 193, 7, 0.12)"
EXC_FILL = "rgba(220, 53, 69, 0.22)"
ENVELOPE_FILL = "rgba(99, 110, 250, 0.15)"


def table(df: pl.DataFrame, key: str, label: str, height: int | None = None) -> None:
    """A dataframe with an explicit CSV download button (the file is built on click)."""
    st.dataframe(df, hide_index=True, width="stretch", height=height or "auto", key=f"df_{key}")
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
    y: float, text: str, color: str = "grey", dash: str = "dash"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A horizontal reference line as a (shape, annotation) pair of plain dicts.

    Figures are built in one ``go.Figure(data=..., layout=...)`` call from dicts: plotly
    validates once, which is several times faster than ``add_hline``/``add_vline`` per line.
    """
    shape = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
             "line": {"color": color, "dash": dash, "width": 1.5}}  # fmt: skip
    note = {"xref": "paper", "x": 1, "yref": "y", "y": y, "text": text, "showarrow": False,
            "xanchor": "right", "yanchor": "bottom", "font": {"size": 10, "color": color}}  # fmt: skip
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
