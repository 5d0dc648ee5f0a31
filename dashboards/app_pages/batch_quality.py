"""Batch quality: release CQAs vs specification, control charts across batches, Cpk per
CPP, batches side by side with their trajectories, and their material lots."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboards import data, logic, ui

ui.header("Batch quality", "batch_quality", (("gold", "batch_summary"),))

summary = ui.require("gold", "batch_summary")
if summary is None:
    st.stop()
if summary.height == 0:
    ui.empty("No batches in gold/batch_summary yet: run `make demo` or `pharma-twin pipeline`.")
    st.stop()
spec = data.spec()
summary = summary.sort("start_ts")
done = summary.filter(pl.col("status") == "complete")

# ------------------------------------------------------------------ release CQAs
st.subheader("Release CQAs against specification")
cqas = list(spec.lab.release)
cqa = st.selectbox(
    "CQA",
    cqas,
    index=cqas.index("aggregates_hmw_pct") if "aggregates_hmw_pct" in cqas else 0,
    key="bq_cqa",
)
ls = spec.lab.release[cqa]
lo, hi = ls.spec if ls.spec else (None, None)
col = f"cqa_{cqa}"
pts = summary.filter(pl.col(col).is_not_null()).select("batch_id", "status", col)
if pts.height == 0:
    ui.empty(
        f"No release result for {cqa} yet (release assays land about 30 h after a batch ends)."
    )
else:
    ok = pl.lit(True)
    if lo is not None:
        ok = ok & (pl.col(col) >= lo)
    if hi is not None:
        ok = ok & (pl.col(col) <= hi)
    pts = pts.with_columns(within_spec=ok)
    traces = []
    for flag, colour, name in ((True, "#2e7d32", "within spec"), (False, "#c62828", "out of spec")):
        p = pts.filter(pl.col("within_spec") == flag)
        traces.append(
            {
                "type": "scatter",
                "x": p["batch_id"].to_numpy(),
                "y": p[col].to_numpy(),
                "mode": "markers",
                "marker": {"color": colour, "size": 8},
                "name": name,
            }
        )
    lines = [
        ui.hline(v, f"{name} {v:g}", "#c62828")
        for v, name in ((lo, "lower spec"), (hi, "upper spec"))
        if v is not None
    ]
    ui.chart(ui.figure(traces, "batch", f"{cqa} ({ls.uom})", lines), "cqa")
n_oos = int(summary["cqa_out_of_spec"].fill_null(0).sum())
st.caption(f"Out-of-specification release results over all batches: {n_oos}.")

# ------------------------------------------------------------------ control charts
st.subheader("Control chart across complete batches")
metrics = [
    "final_titer_g_l",
    "product_mass_kg",
    "duration_h",
    "peak_vcd_e6_cells_ml",
    "harvest_volume_l",
    *[f"cqa_{a}" for a in cqas],
]
# attributes the site has data for first (a dryer has no titer; its release assay leads)
metrics = [m for m in metrics if m in summary.columns]
has = [m for m in metrics if summary[m].drop_nulls().len() >= 2]
has.sort(key=lambda m: (m != "final_titer_g_l", not m.startswith("cqa_")))  # stable
metrics = has + [m for m in metrics if m not in has]
metric = st.selectbox("Attribute", metrics, key="bq_metric")
cc, lim = logic.control_chart(summary, metric)
if lim is None:
    ui.empty(f"Fewer than two complete batches with {metric}: no control limits yet.")
else:
    mean, lcl, ucl = lim
    m = st.columns(3)
    m[0].metric("Mean", f"{mean:.4g}")
    m[1].metric("LCL (mean − 3σ)", f"{lcl:.4g}")
    m[2].metric("UCL (mean + 3σ)", f"{ucl:.4g}")
    unit = {
        "final_titer_g_l": "g/L",
        "product_mass_kg": "kg",
        "duration_h": "h",
        "peak_vcd_e6_cells_ml": "1e6 cells/mL",
        "harvest_volume_l": "L",
    }.get(metric, spec.lab.release[metric[4:]].uom if metric.startswith("cqa_") else "")
    colours = pl.when(cc["out_of_control"]).then(pl.lit("#c62828")).otherwise(pl.lit("#1f4e79"))
    trace = {
        "type": "scatter",
        "x": cc["batch_id"].to_numpy(),
        "y": cc["value"].to_numpy(),
        "mode": "lines+markers",
        "name": metric,
        "marker": {"color": cc.select(colours.alias("c"))["c"].to_numpy()},
    }
    lines = [
        ui.hline(y, f"{name} {y:.4g}", "grey", dash)
        for y, name, dash in ((mean, "mean", "solid"), (lcl, "LCL", "dash"), (ucl, "UCL", "dash"))
    ]
    ui.chart(ui.figure([trace], "batch (by start)", f"{metric} ({unit})", lines), "control")
    ui.table(cc, f"control_{metric}", "control chart points")

# ------------------------------------------------------------------ Cpk
st.subheader("Process capability (Cpk) per CPP")
cpk = logic.cpk_per_cpp(summary, spec)
bars = logic.cpk_bars(cpk, logic.CPK_CAP)
bar = {
    "type": "bar",
    "orientation": "h",
    "y": bars["cpp"].to_numpy(),
    "x": bars["shown"].to_numpy(),
    "name": "mean Cpk",
    "text": bars["label"].to_numpy(),
    "textposition": "outside",
    "cliponaxis": False,
    "marker": {"color": bars["colour"].to_numpy()},
    "hovertext": bars["hover"].to_numpy(),
    "hoverinfo": "text",
}
ref = [
    (1.0, "1.0 (not capable below)", "#c62828", "right"),
    (1.33, "1.33 (capable)", "#2e7d32", "left"),
]
shapes = [
    {
        "type": "line",
        "xref": "x",
        "x0": x,
        "x1": x,
        "yref": "paper",
        "y0": 0,
        "y1": 1,
        "line": {"color": c, "dash": "dash", "width": 1.5},
    }
    for x, _, c, _ in ref
]
notes = [
    {
        "xref": "x",
        "x": x,
        "yref": "paper",
        "y": 1,
        "text": t,
        "showarrow": False,
        "xanchor": a,
        "yanchor": "bottom",
        "font": {"size": 10, "color": c},
    }
    for x, t, c, a in ref
]
lo = min(0.0, float(bars["shown"].min() or 0.0))  # type: ignore[arg-type]
ui.chart(
    ui.figure(
        [bar],
        f"mean Cpk (production phase vs PAR; axis capped at {logic.CPK_CAP:g})",
        "CPP",
        xaxis={"range": [lo, logic.CPK_CAP * 1.15]},
        yaxis={"autorange": "reversed"},
        shapes=shapes,
        annotations=notes,
    ),
    "cpk",
    height=max(260, 34 * bars.height + 90),
)
ui.table(cpk, "cpk_per_cpp", "Cpk per CPP")
st.caption(
    f"Cpk per batch from gold/batch_summary over complete batches ({done.height}): "
    "production-phase readings against the production PAR."
)

# ------------------------------------------------------------------ side by side
st.subheader("Batches side by side")
ids = summary["batch_id"].to_list()
default = done["batch_id"].to_list()[-2:] if done.height >= 2 else ids[-2:]
chosen = st.multiselect("Batches (two or more)", ids, default=default, key="bq_compare")
if len(chosen) < 2:
    st.warning("Choose at least two batches to compare.")
else:
    ui.table(logic.compare_batches(summary, chosen, spec), "compare", "comparison")
    tag = st.selectbox("Overlay a CPP", spec.cpp_tags, key="bq_overlay")
    traces = []
    for b in chosen:
        tl = data.timeline(b, (tag,), logic.MAX_TRACE_POINTS)
        if tl is not None and tl.height:
            traces.append(
                {
                    "type": "scatter",
                    "x": tl["elapsed_h"].to_numpy(),
                    "y": tl[tag].to_numpy(),
                    "mode": "lines",
                    "name": b,
                }
            )
    if not traces:
        ui.empty("None of the chosen batches has telemetry in silver/batch_timeline.")
    else:
        ui.chart(
            ui.figure(traces, "time since inoculation (h)", f"{tag} ({spec.tags[tag].uom})"),
            "overlay",
        )
    st.markdown("**Material lots**")
    ui.table(logic.material_lots(summary, chosen), "material_lots", "material lots")

# ------------------------------------------------------------------ forecasts vs actual
st.subheader("Quality forecasts against actual (gold/batch_forecasts)")
fc = data.read("gold", "batch_forecasts")
if fc is None:
    st.info(data.missing_hint("gold", "batch_forecasts"), icon=":material/info:")
elif fc.height == 0:
    ui.empty(
        "gold/batch_forecasts is empty: no batch has reached a forecast horizon with a "
        "champion model (docs/models.md)."
    )
else:
    from pharma_assets.ml.quality import targets_frame

    c1, c2 = st.columns(2)
    targets = sorted(fc["target"].unique().to_list())
    target = c1.selectbox("Forecast target", targets, key="bq_fc_target")
    # day3/day7 (bioreactor), frac50 (half the expected duration, other classes), harvest
    order_h = ("day3", "day7", "frac50", "harvest")
    horizons = [h for h in order_h if h in set(fc["horizon"].to_list())]
    horizon = c2.selectbox("Horizon", horizons, key="bq_fc_horizon")
    actual = targets_frame(summary).select("batch_id", pl.col(target).alias("actual"))
    order = summary.select("batch_id", "start_ts")
    f = (
        fc.filter((pl.col("target") == target) & (pl.col("horizon") == horizon))
        .join(actual, on="batch_id", how="left")
        .join(order, on="batch_id", how="left")
        .sort("start_ts", "batch_id")
    )
    unit = f["unit"][0] if f.height else ""
    known = f.filter(pl.col("actual").is_not_null())
    inside = known.filter(pl.col("actual").is_between(pl.col("lower"), pl.col("upper")))
    m = st.columns(3)
    m[0].metric("Batches forecast", f.height)
    m[1].metric("With an actual value", known.height)
    m[2].metric(
        "Actual inside the 80 % interval",
        f"{inside.height} / {known.height}" if known.height else "n/a",
    )
    x = f["batch_id"].to_list()
    traces = [
        {
            "type": "scatter",
            "x": x,
            "y": f["predicted"].to_numpy(),
            "mode": "markers",
            "name": "forecast (80 % interval)",
            "marker": {"color": "#1565c0"},
            "error_y": {
                "type": "data",
                "symmetric": False,
                "array": (f["upper"] - f["predicted"]).to_numpy(),
                "arrayminus": (f["predicted"] - f["lower"]).to_numpy(),
            },
        },
        {
            "type": "scatter",
            "x": x,
            "y": f["actual"].to_numpy(),
            "mode": "markers",
            "name": "actual (release LIMS)",
            "marker": {"color": "#2e7d32", "symbol": "x", "size": 9},
        },
    ]
    ui.chart(
        ui.figure(traces, "batch (by start)", f"{target} ({unit})", showlegend=True), "forecasts"
    )
    st.caption(
        "Each batch's forecast at the chosen horizon from the champion model of that "
        "horizon (model version in the table), its 80 % interval, and the value the "
        "release assays measured once the batch ended (blank while it runs)."
    )
    ui.table(f.drop("start_ts"), f"forecasts_{target}_{horizon}", "forecasts vs actual")

st.subheader("All batches")
ui.table(summary, "batch_summary", "batch summary", height=300)
