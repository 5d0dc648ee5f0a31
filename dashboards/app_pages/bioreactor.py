"""Bioreactor: one batch's CPP trajectories against NOR/PAR, with excursions, lab results
and the golden-batch envelope; a running batch refreshes itself."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from dashboards import data, live, logic, ui

REFRESH = timedelta(seconds=10)

ui.header(
    "Bioreactor",
    "bioreactor",
    (
        ("silver", "batches"),
        ("silver", "batch_timeline"),
        ("silver", "lab_results"),
        ("gold", "cpp_excursions"),
        ("gold", "golden_batch"),
    ),
)

batches = ui.require(
    "silver", "batches", columns=("batch_id", "unit_id", "status", "start_ts", "recipe_id")
)
if batches is None:
    st.stop()
if batches.height == 0:
    ui.empty("No batches in silver/batches yet: run `make demo` or `pharma-twin pipeline`.")
    st.stop()

spec = data.spec()
units = sorted(batches["unit_id"].unique().to_list())
c1, c2, c3 = st.columns([1, 2, 3])
unit = c1.selectbox("Unit", units, key="br_unit")
ub = batches.filter(pl.col("unit_id") == unit).sort("start_ts", descending=True)
labels = {r["batch_id"]: f"{r['batch_id']} ({r['status']})" for r in ub.iter_rows(named=True)}
batch_id = c2.selectbox(
    "Batch", list(labels), format_func=lambda b: labels.get(b, b), key="br_batch"
)
# any unit class: the spec's CPPs (with NOR/PAR bands) and every other tag the timeline holds
# (plain trends, with the golden batch where MSPC has one)
present = data.timeline_tags()
cpp_present = [t for t in spec.cpp_tags if t in present] or spec.cpp_tags
others = [t for t in present if t not in spec.cpp_tags]
cpps = c3.multiselect(
    "Tags (CPPs first)", [*cpp_present, *others], default=cpp_present or others[:4], key="br_cpps"
)
if batch_id is None:
    st.stop()
row = ub.filter(pl.col("batch_id") == batch_id).row(0, named=True)
running = row["status"] == "running"


@st.fragment(run_every=REFRESH if running else None)
def trajectories() -> None:
    """Everything that changes while the batch runs; reruns alone every REFRESH."""
    tl = data.timeline(batch_id, tuple(cpps), logic.MAX_TRACE_POINTS)
    if tl is None:
        st.info(data.missing_hint("silver", "batch_timeline"))
        return
    if tl.height == 0:
        ui.empty(
            f"No telemetry of {batch_id} in silver/batch_timeline yet: the pipeline has not "
            "processed its first chunk (run `pharma-twin pipeline` or wait for the sensor)."
        )
        return
    last_h = float(tl["last_h"][0])
    phases = data.read("silver", "batch_phases", where=(("batch_id", batch_id),))
    spans = logic.phase_spans(phases, row["start_ts"], last_h) if phases is not None else []
    exc_all = data.read("gold", "cpp_excursions", where=(("batch_id", batch_id),))
    labs = data.read("silver", "lab_results", where=(("batch_id", batch_id),))
    golden = data.read("gold", "golden_batch")
    state = f"running, {last_h / 24:.2f} days" if running else row["status"]
    n_exc = 0 if exc_all is None else exc_all.height
    m = st.columns(3)
    m[0].metric("Status", state)
    m[1].metric("Hours of data", f"{last_h:.1f} h")
    m[2].metric("CPP excursions", n_exc)
    if running:
        st.caption(f"Refreshes every {REFRESH.seconds} s.")
        now = live.unit_now(unit, list(cpps)) if cpps else None
        cols = st.columns(max(1, len(cpps)))
        for i, tag in enumerate(cpps):
            d = (now or {}).get(tag)
            if d is not None:
                flag = " (stale)" if d["stale"] else ""
                cols[i].metric(f"{tag} now{flag}", logic.fmt(d["value"], 3, f" {d['uom']}"))
            else:
                last = tl[tag].drop_nulls()
                cols[i].metric(
                    f"{tag} (last in silver)", logic.fmt(last[-1] if last.len() else None, 3)
                )
        st.caption(
            "Current values: "
            + (
                f"live from the gateway ({live.gateway_url()})"
                if now
                else "last processed reading in silver (the live gateway is not running)"
            )
        )
    if golden is None:
        st.caption("Golden-batch envelope: " + data.missing_hint("gold", "golden_batch"))
    for tag in cpps:
        uom = spec.tags[tag].uom if tag in spec.tags else ""
        # one Figure(...) call from plain dicts: plotly validates once instead of per add_*
        shapes: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        traces: list[dict[str, Any]] = []
        for seg in logic.band_segments(spec, tag, spans) if tag in spec.cpp_tags else []:
            for lo, hi, fill in (
                ("par_lo", "par_hi", ui.PAR_FILL),
                ("nor_lo", "nor_hi", ui.NOR_FILL),
            ):
                shapes.append(
                    {
                        "type": "rect",
                        "xref": "x",
                        "yref": "y",
                        "x0": seg["start_h"],
                        "x1": seg["end_h"],
                        "y0": seg[lo],
                        "y1": seg[hi],
                        "fillcolor": fill,
                        "line": {"width": 0},
                        "layer": "below",
                    }
                )
        for phase, s, _e in spans:
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": s,
                    "x1": s,
                    "y0": 0,
                    "y1": 1,
                    "line": {"dash": "dot", "color": "grey", "width": 1},
                }
            )
            annotations.append(
                {
                    "x": s,
                    "xref": "x",
                    "y": 1,
                    "yref": "paper",
                    "text": phase,
                    "showarrow": False,
                    "xanchor": "left",
                    "yanchor": "top",
                    "font": {"size": 10, "color": "grey"},
                }
            )
        if exc_all is not None:
            for e in logic.excursion_spans(exc_all, tag, row["start_ts"]).iter_rows(named=True):
                shapes.append(
                    {
                        "type": "rect",
                        "xref": "x",
                        "yref": "paper",
                        "x0": e["start_h"],
                        "x1": max(e["end_h"], e["start_h"] + 1 / 60),
                        "y0": 0,
                        "y1": 1,
                        "fillcolor": ui.EXC_FILL,
                        "line": {"width": 0},
                        "layer": "below",
                    }
                )
        if golden is not None:
            g = logic.golden_of(golden, tag, row.get("recipe_id"))
            if g.height:
                # a trace above the NOR/PAR shapes, with its own edges: visible inside the NOR
                edge = {"width": 1.5, "color": ui.ENVELOPE_EDGE, "dash": "dot"}
                traces.append(
                    {
                        "type": "scatter",
                        "x": g["elapsed_h"].to_numpy(),
                        "y": g["hi"].to_numpy(),
                        "mode": "lines",
                        "line": edge,
                        "showlegend": False,
                        "hoverinfo": "skip",
                    }
                )
                traces.append(
                    {
                        "type": "scatter",
                        "x": g["elapsed_h"].to_numpy(),
                        "y": g["lo"].to_numpy(),
                        "mode": "lines",
                        "line": edge,
                        "fill": "tonexty",
                        "fillcolor": ui.ENVELOPE_FILL,
                        "name": "golden batch (mean ± 3 sd)",
                    }
                )
        traces.append(
            {
                "type": "scatter",
                "x": tl["elapsed_h"].to_numpy(),
                "y": tl[tag].to_numpy(),
                "mode": "lines",
                "name": f"{tag} (online)",
                "line": {"color": "#1f4e79", "width": 1.5},
            }
        )
        lab = logic.LAB_ON_CPP.get(tag)
        if lab and labs is not None:
            p = logic.lab_points(labs, lab, row["start_ts"])
            if p.height:
                traces.append(
                    {
                        "type": "scatter",
                        "x": p["elapsed_h"].to_numpy(),
                        "y": p["value"].to_numpy(),
                        "mode": "markers",
                        "name": f"{lab} (LIMS)",
                        "marker": {"color": "#e65100", "size": 8},
                    }
                )
        xaxis: dict[str, Any] = {"title": {"text": "time since batch start (h)"}}
        if running:  # the envelope reaches to harvest: show the data so far (zoom out to see it)
            xaxis["range"] = [0, last_h + max(6.0, 0.15 * last_h)]
        fig = go.Figure(
            data=traces,
            layout={
                "title": {"text": f"{tag} [{uom}]"},
                "xaxis": xaxis,
                "yaxis": {"title": {"text": f"{tag} ({uom})"}},
                "shapes": shapes,
                "annotations": annotations,
            },
        )
        ui.chart(fig, f"traj_{tag}", height=300)
    st.caption(
        "Green band: NOR, yellow band: PAR of a CPP (per phase, from the CPP spec "
        f"v{spec.version}); blue dotted band: golden batch of the batch's recipe "
        "(gold/golden_batch); red spans: excursions (gold/cpp_excursions); orange points: "
        "offline LIMS results of the same quantity."
    )

    st.subheader("Offline lab results (LIMS, in-process)")
    if labs is None or labs.filter(pl.col("sample_type") == "in_process").height == 0:
        ui.empty(f"No in-process lab results for {batch_id} yet.")
    else:
        ip = labs.filter(pl.col("sample_type") == "in_process")
        analytes = sorted(ip["analyte"].unique().to_list())
        default = (
            "viable_cell_density_e6_cells_ml"
            if "viable_cell_density_e6_cells_ml" in analytes
            else analytes[0]
        )
        a = st.selectbox("Analyte", analytes, index=analytes.index(default), key="br_analyte")
        p = logic.lab_points(labs, a, row["start_ts"])
        uom = p["uom"][0] if p.height else ""
        fig = go.Figure(
            go.Scatter(
                x=p["elapsed_h"].to_numpy(), y=p["value"].to_numpy(), mode="lines+markers", name=a
            )
        )
        fig.update_layout(xaxis_title="time since inoculation (h)", yaxis_title=f"{a} ({uom})")
        ui.chart(fig, "lab", height=280)
        ui.table(labs.sort("sample_ts", "analyte"), f"lab_results_{batch_id}", "lab results")

    st.subheader("Excursions")
    if exc_all is None:
        st.info(data.missing_hint("gold", "cpp_excursions"))
    elif exc_all.height == 0:
        st.success(f"No CPP excursion in {batch_id}.")
    else:
        ui.table(exc_all, f"excursions_{batch_id}", "excursions")


trajectories()
