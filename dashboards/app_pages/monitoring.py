"""Contamination and monitoring: contamination risk of running batches and multivariate
statistical process control (Hotelling T², SPE) with limits and contributing tags."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboards import data, logic, ui

ui.header(
    "Contamination & monitoring",
    "monitoring",
    (
        ("gold", "contamination_risk"),
        ("gold", "contamination_live"),
        ("gold", "mspc_scores"),
        ("gold", "mspc_alarms"),
    ),
)
batches = data.read("silver", "batches", columns=("batch_id", "unit_id", "status", "start_ts"))
running_ids = logic.running_batch_ids(batches)

# ------------------------------------------------------------------ contamination
st.subheader("Contamination risk (running batches)")
cl = data.contamination_latest()
if cl is None:
    st.info(data.missing_hint("gold", "contamination_risk"), icon=":material/info:")
elif not running_ids:
    ui.empty(
        "No batch is running: contamination risk is scored for running batches only "
        f"({cl['batch_id'].n_unique()} finished batches were scored while they ran)."
    )
else:
    now = cl.filter(pl.col("batch_id").is_in(running_ids))
    m = st.columns(4)
    m[0].metric("Running batches", len(running_ids))
    m[1].metric(
        "Running batches scored",
        now.height,
        help="running batches with at least one scored 5-minute window",
    )
    m[2].metric("In alarm now", int(now["alarm"].sum()))
    m[3].metric("Highest risk now", logic.fmt(logic.max_or_none(now["risk"]), 1, " %", scale=100))
    unscored = sorted(set(running_ids) - set(now["batch_id"].to_list()))
    if unscored:
        st.caption(f"Not scored yet (no complete window): {', '.join(unscored)}.")
    if now.height:
        cols = (
            "batch_id",
            "elapsed_h",
            "window_end_ts",
            "anomaly_score",
            "threshold",
            "risk",
            "alarm",
        )
        parts = [
            data.read("gold", t, columns=cols, where=(("batch_id", tuple(running_ids)),))
            for t in ("contamination_risk", "contamination_live")
        ]
        cr = logic.windows_of(parts)
        traces = []
        for b in sorted(now["batch_id"].to_list()):
            d = cr.filter(pl.col("batch_id") == b)
            traces.append(
                {
                    "type": "scatter",
                    "x": d["elapsed_h"].to_numpy(),
                    "y": d["anomaly_score"].to_numpy(),
                    "mode": "lines",
                    "name": b,
                }
            )
        thr = now["threshold"].max()
        lines = (
            [ui.hline(thr, f"alarm threshold {thr:.3g}", "#c62828")]
            if isinstance(thr, float)
            else []
        )
        ui.chart(
            ui.figure(
                traces,
                "time since inoculation (h)",
                "anomaly score (model units; higher = more anomalous)",
                lines,
                showlegend=True,
            ),
            "contamination",
        )
        ui.table(
            now.sort("risk", descending=True), "contamination_latest", "latest contamination scores"
        )

# ------------------------------------------------------------------ contamination history
st.subheader("Contamination risk history (any batch)")
hcols = ("batch_id", "elapsed_h", "window_end_ts", "anomaly_score", "threshold", "risk", "alarm")
hparts = {
    src: data.read("gold", t, columns=hcols)
    for src, t in (("retraining", "contamination_risk"), ("live", "contamination_live"))
}
hframes = [df.with_columns(source=pl.lit(src)) for src, df in hparts.items() if df is not None]
if not hframes:
    st.info(data.missing_hint("gold", "contamination_risk"), icon=":material/info:")
else:
    hist = logic.windows_of(hframes)  # one row per window; the live score wins
    scored = sorted(hist["batch_id"].unique().to_list(), reverse=True)
    if not scored:
        ui.empty("No contamination window has been scored yet.")
    else:
        hb = st.selectbox("Batch", scored, key="mon_contam_batch")
        d = hist.filter(pl.col("batch_id") == hb).sort("elapsed_h")
        al = d.filter(pl.col("alarm"))
        m = st.columns(4)
        m[0].metric("Windows scored", d.height)
        m[1].metric(
            "From the retraining (gold/contamination_risk)",
            int((d["source"] == "retraining").sum()),
        )
        m[2].metric(
            "From live scoring (gold/contamination_live)", int((d["source"] == "live").sum())
        )
        m[3].metric("Alarm windows", al.height)
        traces = [
            {
                "type": "scatter",
                "x": d["elapsed_h"].to_numpy(),
                "y": d["anomaly_score"].to_numpy(),
                "mode": "lines",
                "name": "anomaly score",
            },
            {
                "type": "scatter",
                "x": al["elapsed_h"].to_numpy(),
                "y": al["anomaly_score"].to_numpy(),
                "mode": "markers",
                "name": "alarm window",
                "marker": {"color": "#c62828", "size": 8},
            },
        ]
        thr = d["threshold"].max()
        lines = (
            [ui.hline(thr, f"alarm threshold {thr:.3g}", "#c62828")]
            if isinstance(thr, float)
            else []
        )
        ui.chart(
            ui.figure(
                traces,
                "time since inoculation (h)",
                "anomaly score (model units; higher = more anomalous)",
                lines,
                showlegend=True,
            ),
            "contamination_history",
        )

# ------------------------------------------------------------------ MSPC
st.subheader("MSPC: the alarm, Hotelling T² and SPE")
ms = data.mspc_latest()  # one row per monitored batch
if ms is None:
    st.info(data.missing_hint("gold", "mspc_scores"), icon=":material/info:")
    st.stop()
order = logic.mspc_batch_order(ms["batch_id"].to_list(), batches)
if not order:
    ui.empty("gold/mspc_scores is empty and no batch is running: no batch monitored yet.")
    st.stop()
labels = {b: f"{b} ({status})" for b, status in order}
batch_id = st.selectbox(
    "Batch (running first)", list(labels), format_func=lambda b: labels.get(b, b), key="mon_batch"
)
sc = data.read("gold", "mspc_scores", where=(("batch_id", batch_id),))
assert sc is not None
if sc.height == 0:
    ui.empty(
        f"{batch_id} has no MSPC score yet: its complete hours are scored at the next run "
        "of the `ml` group (gold/mspc_scores)."
    )
    st.stop()
sc = sc.sort("elapsed_h")
if "alarm_ratio" in sc.columns and sc["alarm_ratio"].drop_nulls().len():
    # the product's alarm: the deciding statistic over its alarm threshold (1 = alarm)
    on = sc.filter(pl.col("alarm"))
    ui.chart(
        ui.figure(
            [
                {
                    "type": "scatter",
                    "x": sc["elapsed_h"].to_numpy(),
                    "y": sc["alarm_ratio"].to_numpy(),
                    "mode": "lines",
                    "name": "alarm statistic / threshold",
                    "text": sc["alarm_by"].to_list(),
                    "hovertemplate": "%{x} h: %{y:.3g} (%{text})<extra></extra>",
                },
                {
                    "type": "scatter",
                    "x": on["elapsed_h"].to_numpy(),
                    "y": on["alarm_ratio"].to_numpy(),
                    "mode": "markers",
                    "name": "alarm",
                    "text": on["alarm_by"].to_list(),
                    "marker": {"color": "#c62828", "size": 8},
                },
            ],
            "time since inoculation (h)",
            "alarm statistic / alarm threshold (log scale)",
            [ui.hline(1.0, "alarm threshold", "#c62828")],
            yaxis=ui.LOG_AXIS,
        ),
        "mspc_alarm_ratio",
        height=280,
    )
    by = on["alarm_by"].drop_nulls().unique().sort().to_list()
    st.caption(
        "The alarm the model raises: each hour's deciding statistic (change from the "
        "batch's own recent hours, its drift, or T²/SPE, whichever the model alarms on) "
        "divided by its alarm threshold, chosen on the training period; above 1 is an "
        "alarm" + (f" (in this batch: {', '.join(by)})." if by else ".")
    )
for stat, limit, name in (("t2", "t2_limit", "Hotelling T²"), ("spe", "spe_limit", "SPE (Q)")):
    out = sc.filter(pl.col(stat) > pl.col(limit))
    x = sc["elapsed_h"].to_numpy()
    traces = [
        {"type": "scatter", "x": x, "y": sc[stat].to_numpy(), "mode": "lines", "name": name},
        {
            "type": "scatter",
            "x": x,
            "y": sc[limit].to_numpy(),
            "mode": "lines",
            "name": f"{name} limit",
            "line": {"dash": "dash", "color": "#c62828"},
        },
        {
            "type": "scatter",
            "x": out["elapsed_h"].to_numpy(),
            "y": out[stat].to_numpy(),
            "mode": "markers",
            "name": "beyond limit",
            "marker": {"color": "#c62828", "size": 8},
        },
    ]
    ui.chart(
        ui.figure(
            traces,
            "time since inoculation (h)",
            f"{name} (dimensionless, log scale)",
            yaxis=ui.LOG_AXIS,
        ),
        f"mspc_{stat}",
        height=280,
    )
st.caption(
    "Limits vary with batch maturity (one PCA model per hour of batch time, "
    "limits from the good batches' out-of-fold statistics); log scale so that the "
    "statistic stays readable where a limit is high. A point beyond its limit is not by "
    "itself an alarm: the alarm threshold is the model's (the first chart)."
)

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
    st.success(f"No MSPC alarm in {batch_id}.")
else:
    al = al.sort("elapsed_h").with_columns(
        top_tag=pl.col("contributions").map_elements(
            lambda s: (logic.parse_contributions_json(s) or [("", 0.0)])[0][0],
            return_dtype=pl.String,
        )
    )
    ui.table(al, f"mspc_alarms_{batch_id}", "MSPC alarms")
