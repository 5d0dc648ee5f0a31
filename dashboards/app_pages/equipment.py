"""Equipment health: predicted failure risk per critical item, its trend, and a proposed
maintenance schedule ordered by risk (gold/equipment_health, from the PdM model)."""

from __future__ import annotations

import math

import polars as pl
import streamlit as st

from dashboards import data, logic, ui

ui.header("Equipment health", "equipment", (("gold", "equipment_health"),))

latest = data.equipment_latest()
if latest is None:
    st.info(data.missing_hint("gold", "equipment_health"), icon=":material/info:")
    st.stop()
if latest.height == 0:
    caps = data.read("gold", "model_capabilities")
    pdm = None if caps is None else caps.filter(pl.col("capability") == "pdm").sort("assessed_at")
    if pdm is not None and pdm.height and not pdm["applies"][-1]:
        ui.empty(
            f"Predictive maintenance does not apply to this site's data: {pdm['reason'][-1]} "
            "(import CMMS work orders with failures: docs/bring_your_own_data.md)."
        )
        st.stop()
    ui.empty("gold/equipment_health is empty: the PdM model has scored no run hours yet.")
    st.stop()

sched = logic.maintenance_schedule(latest)
top = sched.row(0, named=True)
m = st.columns(4)
m[0].metric("Items monitored", sched.height)
m[1].metric("In alarm", int(sched["alarm"].sum()))
m[2].metric(
    "Highest risk",
    top["equipment_id"],
    help=f"latest score of the item, hour {logic.fmt_ts(top['hour_ts'])}",
)
m[3].metric("Its failure probability (72 h)", f"{top['failure_probability']:.1%}")

st.subheader("Latest score per item: failure probability within 72 h")
newest = latest["hour_ts"].max()
view = logic.equipment_now(sched, logic.EQUIPMENT_LAG_H)
colour = [
    ("#c62828" if a else "#1f4e79") if cur else "#9e9e9e"
    for a, cur in zip(view["alarm"], view["current"], strict=True)
]
hover = [
    f"{e}: {100 * p:.3g} % (threshold {100 * t:.4g} %), scored {logic.fmt_ts(h)}"
    for e, p, t, h in zip(
        view["equipment_id"],
        view["failure_probability"],
        view["threshold"],
        view["hour_ts"],
        strict=True,
    )
]
bars = {
    "type": "bar",
    "x": view["equipment_id"].to_numpy(),
    "y": view["plot_pct"].to_numpy(),
    "name": "failure probability within 72 h (%)",
    "marker": {"color": colour},
    "hovertext": hover,
    "hoverinfo": "text",
}
ticks = {
    "type": "scatter",
    "x": view["equipment_id"].to_numpy(),
    "y": (view["threshold"] * 100).to_numpy(),
    "mode": "markers",
    "name": "alarm threshold of the item (%)",
    "marker": {"symbol": "line-ew-open", "size": 26, "color": "#c62828", "line": {"width": 3}},
}
ui.chart(
    ui.figure(
        [bars, ticks],
        "equipment item",
        "failure probability within 72 h (%, log scale)",
        yaxis={**ui.LOG_AXIS, "range": [math.log10(logic.PROB_FLOOR_PCT), 2.05]},
    ),
    "eq_now",
)
st.caption(
    f"Each item's latest scored hour (newest: {logic.fmt_ts(newest)}); grey bars: items not "
    f"scored in the {logic.EQUIPMENT_LAG_H} h before the newest hour (their unit is idle or "
    f"no data came). Red tick: the item's own alarm threshold. Probabilities below "
    f"{logic.PROB_FLOOR_PCT:g} % are drawn at {logic.PROB_FLOOR_PCT:g} %."
)
for r in logic.unreachable_thresholds(sched).iter_rows(named=True):
    st.warning(
        f"{r['equipment_type']}: alarm threshold {100 * r['threshold']:.4g} % "
        f"({r['items']} items); above {100 * logic.UNREACHABLE_THRESHOLD:g} % the model can "
        "hardly ever alarm: review the threshold chosen at training (Models page).",
        icon=":material/warning:",
    )

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
        {
            "type": "scatter",
            "x": x,
            "y": trend["health_score"].to_numpy(),
            "mode": "lines",
            "name": "health score (0-100)",
        },
        {
            "type": "scatter",
            "x": x,
            "y": (trend["failure_probability"] * 100).to_numpy(),
            "mode": "lines",
            "name": "failure probability (%)",
            "line": {"color": "#c62828"},
        },
    ]
    thr_item = float(trend["threshold"][-1])
    lines = [
        ui.hline(100 * thr_item, f"alarm threshold {100 * thr_item:.4g} %", "#c62828", left=True)
    ]
    ui.chart(
        ui.figure(
            traces,
            "hour (UTC)",
            "health score (0-100) / failure probability (%)",
            lines,
            yaxis={"range": [0, 105]},
        ),
        "eq_trend",
    )
    note = (
        ""
        if trend.height == n_hours
        else (
            f" Shown in {trend.height} buckets of consecutive hours (mean health, max probability)."
        )
    )
    st.caption(
        f"{item}: {n_hours} scored hours, {int(trend.filter(pl.col('alarm'))['hours'].sum())} "
        f"in alarm buckets.{note}"
    )
    ui.table(trend, f"trend_{item}", "trend")
