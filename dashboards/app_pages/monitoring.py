"""Contamination and monitoring: contamination risk of running batches and multivariate
statistical process control (Hotelling T², SPE) with limits and contributing tags."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboards import data, logic, ui

st.title("Contamination & monitoring")

# ------------------------------------------------------------------ contamination
st.subheader("Contamination risk (running batches)")
cl = data.contamination_latest()
if cl is None:
    st.info(data.missing_hint("gold", "contamination_risk"), icon=":material/info:")
elif cl.height == 0:
    ui.empty("No running batch has been scored for contamination yet.")
else:
    m = st.columns(3)
    m[0].metric("Batches scored", cl.height)
    m[1].metric("In alarm now", int(cl["alarm"].sum()))
    m[2].metric("Highest risk now", logic.fmt(logic.max_or_none(cl["risk"]), 1, " %", scale=100))
    cr = data.read("gold", "contamination_risk",
                   columns=("batch_id", "elapsed_h", "anomaly_score", "threshold", "risk", "alarm"))  # fmt: skip
    assert cr is not None
    traces = []
    for b in sorted(cl["batch_id"].to_list()):
        d = cr.filter(pl.col("batch_id") == b).sort("elapsed_h")
        traces.append({"type": "scatter", "x": d["elapsed_h"].to_numpy(), "y": d["anomaly_score"].to_numpy(),
                       "mode": "lines", "name": b})  # fmt: skip
    thr = cl["threshold"].max()
    lines = [ui.hline(thr, f"threshold {thr:.3g}", "#c62828")] if isinstance(thr, float) else []
    ui.chart(ui.figure(traces, "time since inoculation (h)",
                       "anomaly score (model units; higher = more anomalous)", lines), "contamination")  # fmt: skip
    ui.table(
        cl.sort("risk", descending=True), "contamination_latest", "latest contamination scores"
    )

# ------------------------------------------------------------------ MSPC
st.subheader("MSPC: Hotelling T² and SPE")
ms = data.mspc_latest()  # one row per monitored batch
if ms is None:
    st.info(data.missing_hint("gold", "mspc_scores"), icon=":material/info:")
    st.stop()
if ms.height == 0:
    ui.empty("gold/mspc_scores is empty: no batch monitored yet.")
    st.stop()
batches = data.read("silver", "batches", columns=("batch_id", "status", "start_ts"))
order = ms.select("batch_id").unique()
if batches is not None:
    order = order.join(batches, on="batch_id", how="left").sort(
        [pl.col("status") == "running", "start_ts"], descending=True, nulls_last=True
    )
ids = order["batch_id"].to_list()
labels = {
    r["batch_id"]: f"{r['batch_id']} ({r.get('status') or '?'})"
    for r in order.iter_rows(named=True)
}
batch_id = st.selectbox("Batch", ids, format_func=lambda b: labels.get(b, b), key="mon_batch")
sc = data.read("gold", "mspc_scores", where=(("batch_id", batch_id),))
assert sc is not None
sc = sc.sort("elapsed_h")
for stat, limit, name in (("t2", "t2_limit", "Hotelling T²"), ("spe", "spe_limit", "SPE (Q)")):
    out = sc.filter(pl.col(stat) > pl.col(limit))
    x = sc["elapsed_h"].to_numpy()
    traces = [
        {"type": "scatter", "x": x, "y": sc[stat].to_numpy(), "mode": "lines", "name": name},
        {"type": "scatter", "x": x, "y": sc[limit].to_numpy(), "mode": "lines", "name": f"{name} limit",
         "line": {"dash": "dash", "color": "#c62828"}},
        {"type": "scatter", "x": out["elapsed_h"].to_numpy(), "y": out[stat].to_numpy(), "mode": "markers",
         "name": "beyond limit", "marker": {"color": "#c62828", "size": 8}},
    ]  # fmt: skip
    ui.chart(ui.figure(traces, "time since inoculation (h)", f"{name} (dimensionless)"),
             f"mspc_{stat}", height=280)  # fmt: skip

st.markdown("**Top contributing tags**")
top = logic.top_contributors(sc)
if top.height:
    bar = {"type": "bar", "x": top["tag"].to_numpy(), "y": (top["mean_share"] * 100).to_numpy()}
    ui.chart(ui.figure([bar], "tag", "mean contribution share (%)"), "contrib", height=260)
ui.table(top, f"top_contributors_{batch_id}", "top contributors")

st.markdown("**MSPC alarms**")
al = data.read("gold", "mspc_alarms", where=(("batch_id", batch_id),))
if al is None:
    st.info(data.missing_hint("gold", "mspc_alarms"))
elif al.height == 0:
    st.success(f"No T² or SPE alarm in {batch_id}.")
else:
    al = al.sort("elapsed_h").with_columns(
        top_tag=pl.col("contributions").map_elements(
            lambda s: (logic.parse_contributions_json(s) or [("", 0.0)])[0][0],
            return_dtype=pl.String,
        )
    )
    ui.table(al, f"mspc_alarms_{batch_id}", "MSPC alarms")
