"""Plant overview: every unit's state now, and the plant KPIs by week of batch start."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from dashboards import data, live, logic, ui

ui.header(
    "Plant overview",
    "overview",
    (
        ("gold", "unit_status"),
        ("gold", "batch_summary"),
        ("gold", "plant_kpis"),
        ("gold", "cpp_excursions"),
    ),
)

status = ui.require("gold", "unit_status")
summary = ui.require(
    "gold", "batch_summary", columns=("batch_id", "status", "right_first_time", "final_titer_g_l")
)
if status is None or summary is None:
    st.stop()

alarms = logic.unit_alarms(
    status, data.equipment_latest(), data.contamination_latest(), data.mspc_latest()
)
k = logic.plant_kpis(status, summary)
c = st.columns(6)
updated = status["updated_at"].max() if "updated_at" in status.columns else None
c[0].metric(
    "Running units",
    f"{k.running_units} / {k.units}",
    help="Units with a running batch in gold/unit_status, as of its last build "
    f"({logic.fmt_ts(updated)}): a batch started since then counts after the next pipeline run.",
)
c[1].metric("Batches", k.batches)
c[2].metric("Completed", k.completed)
c[3].metric("Aborted", k.aborted)
c[4].metric("Right first time", logic.fmt(k.right_first_time_pct, 1, " %"))
c[5].metric("Mean titer (complete)", logic.fmt(k.mean_titer_g_l, 2, " g/L"))

st.subheader("Units")
units = logic.overview_table(status, alarms)
ui.table(units, "units", "unit status")
if data.version("gold", "equipment_health") is None:
    st.caption(
        "Alarms count CPP/ML alarms once the `ml` group has run; "
        + data.missing_hint("gold", "equipment_health")
    )

st.subheader("Plant KPIs by week of batch start")
kpis = ui.require("gold", "plant_kpis")
if kpis is not None:
    if kpis.height == 0:
        ui.empty("No batches yet: run `make demo` or `pharma-twin pipeline`.")
    else:
        weeks = kpis["week_start"].cast(pl.String).to_list()
        fig = go.Figure()
        for col, name, colour in (
            ("batches_completed", "completed", "#2e7d32"),
            ("batches_aborted", "aborted", "#c62828"),
            ("batches_running", "running", "#1565c0"),
        ):
            fig.add_bar(x=weeks, y=kpis[col].to_list(), name=name, marker_color=colour)
        fig.add_scatter(
            x=weeks,
            y=kpis["right_first_time_pct"].to_list(),
            name="right first time (%)",
            yaxis="y2",
            mode="lines+markers",
            line={"color": "#6a1b9a"},
        )
        fig.update_layout(
            barmode="stack",
            xaxis_title="week of batch start (Monday, UTC)",
            yaxis_title="batches started (count)",
            yaxis2={
                "title": "right first time (%)",
                "overlaying": "y",
                "side": "right",
                "range": [0, 105],
            },
        )
        ui.chart(fig, "kpis")
        ui.table(kpis, "plant_kpis", "weekly KPIs")

cur, source = live.current_cpps(status, data.spec().cpp_tags)
st.subheader("Current CPP values")
st.caption(f"Source: {source}. The Live page shows them against NOR/PAR, updating every second.")
if cur is not None and cur.height:
    ui.table(cur, "current_cpps", "current CPP values")

exc = data.read("gold", "cpp_excursions")
if exc is not None:
    active = exc.filter(pl.col("active"))
    st.subheader(f"Active excursions ({active.height})")
    if active.height:
        ui.table(active, "active_excursions", "active excursions")
    else:
        st.success("No CPP of a running batch is outside its normal operating range.")
