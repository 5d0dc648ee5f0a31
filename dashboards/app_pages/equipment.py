"""Equipment health: predicted failure risk per critical item, its trend, and a proposed
maintenance schedule ordered by risk (gold/equipment_health, from the PdM model)."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboards import data, logic, ui

st.title("Equipment health")

latest = data.equipment_latest()
if latest is None:
    st.info(data.missing_hint("gold", "equipment_health"), icon=":material/info:")
    st.stop()
if latest.height == 0:
    ui.empty("gold/equipment_health is empty: the PdM model has scored no run hours yet.")
    st.stop()

sched = logic.maintenance_schedule(latest)
top = sched.row(0, named=True)
m = st.columns(4)
m[0].metric("Items monitored", sched.height)
m[1].metric("In alarm", int(sched["alarm"].sum()))
m[2].metric("Highest risk", top["equipment_id"])
m[3].metric("Its failure probability (72 h)", f"{top['failure_probability']:.1%}")

st.subheader("Now: health score and failure probability per item")
bar = {"type": "bar", "x": sched["equipment_id"].to_numpy(),
       "y": (sched["failure_probability"] * 100).to_numpy(), "name": "failure probability within 72 h",
       "marker": {"color": ["#c62828" if a else "#1f4e79" for a in sched["alarm"]]}}  # fmt: skip
thr = sched["threshold"].max()
lines = (
    [ui.hline(thr * 100, f"alarm threshold {thr:.0%}", "#c62828")] if isinstance(thr, float) else []
)
ui.chart(ui.figure([bar], "equipment item", "failure probability within 72 h (%)", lines,
                   yaxis={"range": [0, 100]}), "eq_now")  # fmt: skip

st.subheader("Proposed maintenance schedule (highest risk first)")
ui.table(sched, "maintenance_schedule", "maintenance schedule")

st.subheader("Trend")
item = st.selectbox("Equipment item", sched["equipment_id"].to_list(), key="eq_item")
trend = data.equipment_trend(item, 1000)
if trend is None or trend.height == 0:
    ui.empty(f"No scored hours for {item}.")
else:
    n_hours = int(trend["hours"].sum())
    x = trend["hour_ts"].to_list()
    traces = [
        {"type": "scatter", "x": x, "y": trend["health_score"].to_numpy(), "mode": "lines",
         "name": "health score (0-100)"},
        {"type": "scatter", "x": x, "y": (trend["failure_probability"] * 100).to_numpy(), "mode": "lines",
         "name": "failure probability (%)", "line": {"color": "#c62828"}},
    ]  # fmt: skip
    ui.chart(ui.figure(traces, "hour (UTC)", "health score (0-100) / failure probability (%)",
                       yaxis={"range": [0, 100]}), "eq_trend")  # fmt: skip
    note = "" if trend.height == n_hours else (
        f" Shown in {trend.height} buckets of consecutive hours (mean health, max probability)."
    )  # fmt: skip
    st.caption(f"{item}: {n_hours} scored hours, {int(trend.filter(pl.col('alarm'))['hours'].sum())} "
               f"in alarm buckets.{note}")  # fmt: skip
    ui.table(trend, f"trend_{item}", "trend")
