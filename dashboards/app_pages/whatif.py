"""What-if & optimisation: scenarios on a calibrated batch, sensitivity, design space, the
recipe recommendation (with its change request) and the running batches' advice."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import streamlit as st  # noqa: E402

from dashboards import data, ui  # noqa: E402
from dashboards.auth import can, flash, signature_dialog  # noqa: E402
from pharma_assets.compliance import recipe_requests  # noqa: E402
from pharma_assets.lake.specs import load_spec  # noqa: E402
from pharma_assets.optimise import calibration, observations, whatif  # noqa: E402
from pharma_assets.optimise.recipe import recipe_with  # noqa: E402
from pharma_assets.twin import config as twin_config  # noqa: E402

PAGE = "whatif"
RECIPES_PATH = os.environ.get(
    "PHARMA_RECIPES_PATH",
    str(Path(twin_config.__file__).parent / "config" / "recipes_default.yaml"),
)

session = ui.header(
    "What-if & optimisation", PAGE, (("silver", "batches"), ("gold", "recipe_recommendations"))
)
flash()
lk = data.lake()
spec = load_spec()
batches = data.read("silver", "batches")
if batches is None or batches.height == 0:
    ui.empty(data.missing_hint("silver", "batches"))
    st.stop()
site_class = data.spec().load_unit_class()
if site_class.name != "bioreactor":
    # the scenarios, the design space and the optimiser run the CHO fed-batch process model
    ui.empty(
        f"What-if and optimisation need a process model of the unit class; the platform has "
        f"one for the bioreactor only, not for {site_class.name!r} (the spec in force). Its "
        "batches are monitored on the other pages (trends, excursions, MSPC)."
    )
    st.stop()
batches = batches.sort(["status", "start_ts"], descending=[False, True])
ids = (
    batches.filter(pl.col("status") == "running")["batch_id"].to_list()
    + batches.filter(pl.col("status") != "running")["batch_id"].to_list()
)


@st.cache_resource(max_entries=16, show_spinner=False)
def _calibrated(
    root: str, batch_id: str, as_of_h: float, version: int | None
) -> calibration.CalibratedBatch:
    obs = observations.from_lake(lk, batch_id, as_of_h=as_of_h)
    return calibration.calibrate(obs, twin_config.load_recipes().get(obs.recipe_id), n_members=50)


# ---------------------------------------------------------------- scenario
st.subheader("Scenario on a calibrated batch")
c1, c2 = st.columns([2, 3])
batch_id = c1.selectbox("Batch (running first)", ids, key="wif_batch")
full = observations.from_lake(lk, batch_id)
max_day = max(round(full.as_of_h / 24, 2), 0.5)
as_of_day = c2.slider("As-of day", 0.5, float(max_day), float(max_day), 0.25, key="wif_asof")
try:
    cal = _calibrated(
        str(lk.root), batch_id, as_of_day * 24, data.version("silver", "batch_timeline")
    )
except observations.CalibrationDataError as e:
    st.error(str(e))
    st.stop()
(st.warning if cal.prior_only else st.caption)(cal.message)
u = cal.inputs
plan = {
    "shift": float(u.shift_h[0]) / 24,
    "temp": float(u.T_prod[0]),
    "ph": float(u.ph_sp[0]),
    "do": float(u.do_sp[0]),
    "harvest": float(u.end_h[0]) / 24,
}
t_par = spec.tags["temperature_c"].limits("production").par
ph_par = spec.tags["ph"].limits("production").par
do_par = spec.tags["dissolved_oxygen_pct"].limits("production").par
assert t_par and ph_par and do_par
s1, s2, s3 = st.columns(3)
shift_done = plan["shift"] <= as_of_day
shift = s1.slider(
    "Shift day",
    0.0,
    30.0,
    round(plan["shift"], 2),
    0.25,
    key="wif_shift",
    disabled=shift_done,
    help="fixed once the shift happened",
)
temp = s1.slider(
    "Production temperature °C (PAR)", t_par[0], t_par[1], plan["temp"], 0.1, key="wif_temp"
)
ph = s2.slider("pH set-point (PAR)", ph_par[0], ph_par[1], plan["ph"], 0.01, key="wif_ph")
do = s2.slider("DO set-point % (PAR)", do_par[0], do_par[1], plan["do"], 1.0, key="wif_do")
feed = s3.slider("Feed rate × recipe", 0.0, 2.0, 1.0, 0.05, key="wif_feed")
harvest = s3.slider("Harvest day", 1.0, 30.0, round(plan["harvest"], 2), 0.25, key="wif_harvest")


def _changed(v: float, p: float) -> float | None:
    return v if abs(v - p) > 1e-6 else None


scen = whatif.Scenario(
    shift_day=None if shift_done else _changed(shift, round(plan["shift"], 2)),
    production_temp_c=_changed(temp, plan["temp"]),
    ph=_changed(ph, plan["ph"]),
    do_pct=_changed(do, plan["do"]),
    feed_scale=_changed(feed, 1.0),
    harvest_day=_changed(harvest, round(plan["harvest"], 2)),
)
t0 = time.perf_counter()
try:
    res = whatif.run_whatif(cal, scen, spec)
except whatif.ScenarioRefused as e:
    st.error(str(e))
    st.stop()
elapsed = time.perf_counter() - t0
st.caption(f"Baseline and scenario, {cal.n_members} calibrated twins each: {elapsed:.2f} s")
for w in res.warnings:
    st.warning(w)


def _bands(name: str, title: str, unit: str, key: str) -> None:
    traces = []
    for arm, o, color in (
        ("baseline", res.baseline, "#7f7f7f"),
        ("scenario", res.outcome, "#1f77b4"),
    ):
        b = o.bands(name)
        days = o.t_h / 24
        traces += [
            {
                "x": np.concatenate([days, days[::-1]]),
                "y": np.concatenate([b[2], b[0][::-1]]),
                "fill": "toself",
                "line": {"width": 0},
                "fillcolor": color,
                "opacity": 0.2,
                "name": f"{arm} 5-95 %",
                "hoverinfo": "skip",
            },
            {"x": days, "y": b[1], "line": {"color": color}, "name": f"{arm} median"},
        ]
    asof: dict[str, object] = {
        "type": "line",
        "x0": cal.as_of_h / 24,
        "x1": cal.as_of_h / 24,
        "yref": "paper",
        "y0": 0,
        "y1": 1,
        "line": {"dash": "dot", "color": "black"},
    }
    fig = ui.figure(traces, "day", f"{title} ({unit})")
    fig.update_layout(shapes=[asof])
    ui.chart(fig, key)


g1, g2 = st.columns(2)
with g1:
    _bands("product_kg", "Product mass", "kg", "wif_product")
with g2:
    _bands("Xv", "Viable cell density", "1e6 cells/mL", "wif_vcd")
rows = []
for name, b in res.baseline.summary().items():
    o = res.outcome.summary()[name]
    lab = spec.lab.release.get(name)
    rows.append(
        {
            "cqa": name,
            "baseline_median": b["median"],
            "scenario_median": o["median"],
            "scenario_p05": o["p05"],
            "scenario_p95": o["p95"],
            "change_median": res.delta(name)["median"],
            "spec": "" if lab is None or lab.spec is None else f"{lab.spec[0]} – {lab.spec[1]}",
            "baseline_p_in_spec": res.baseline_in_spec.get(name),
            "scenario_p_in_spec": res.outcome_in_spec.get(name),
        }
    )
ui.table(pl.DataFrame(rows), "wif_cqas", "Harvest CQAs against the release specification")
if can(session, "deviation.open") and st.button("Save scenario", key="wif_save"):
    sid = whatif.save_scenario(lk, res, session.user_id, "dashboard what-if")
    st.success(f"saved as {sid} in gold/whatif_scenarios")

# ---------------------------------------------------------------- sensitivity and design space
st.subheader("Sensitivity and design space")
sens = data.read("gold", "twin_sensitivity")
dsp = data.read("gold", "design_space")
if sens is None or dsp is None:
    st.info(
        "Sensitivity and design space are not computed yet: materialize the optimise "
        "group (recipe_optimise_job) or run `make demo`."
    )
else:
    rid = st.selectbox("Recipe", sens["recipe_id"].unique().sort().to_list(), key="wif_recipe")
    out = st.selectbox("Output", sens["output"].unique().sort().to_list(), key="wif_output")
    t = sens.filter((pl.col("recipe_id") == rid) & (pl.col("output") == out)).sort("ST")
    h1, h2 = st.columns(2)
    with h1:
        ui.chart(
            ui.figure(
                [
                    {
                        "type": "bar",
                        "orientation": "h",
                        "x": t["ST"].to_list(),
                        "y": t["factor"].to_list(),
                        "name": "total (ST)",
                        "error_x": {
                            "type": "data",
                            "symmetric": False,
                            "array": (t["ST_hi"] - t["ST"]).to_list(),
                            "arrayminus": (t["ST"] - t["ST_lo"]).to_list(),
                        },
                    },
                    {
                        "type": "bar",
                        "orientation": "h",
                        "x": t["S1"].to_list(),
                        "y": t["factor"].to_list(),
                        "name": "first order (S1)",
                    },
                ],
                "Sobol index",
                "factor",
                barmode="group",
            ),
            "wif_tornado",
        )
    d = dsp.filter(pl.col("recipe_id") == rid)
    with h2:
        if d.height:
            xs, ys = d["x"].unique().sort(), d["y"].unique().sort()
            z = d.pivot(on="x", index="y", values="p_in_spec").sort("y").drop("y").to_numpy()
            ui.chart(
                ui.figure(
                    [
                        {
                            "type": "heatmap",
                            "x": xs.to_list(),
                            "y": ys.to_list(),
                            "z": z.tolist(),
                            "zmin": 0,
                            "zmax": 1,
                            "colorscale": "RdYlGn",
                            "colorbar": {"title": "P(in spec)"},
                        },
                        {
                            "type": "contour",
                            "x": xs.to_list(),
                            "y": ys.to_list(),
                            "z": z.tolist(),
                            "contours": {"start": 0.95, "end": 0.95, "coloring": "lines"},
                            "line": {"color": "black", "width": 2},
                            "showscale": False,
                            "name": "P = 95 %",
                        },
                    ],
                    d["factor_x"][0],
                    d["factor_y"][0],
                ),
                "wif_design_space",
            )
            st.caption(
                f"{int(d['in_design_space'].sum())} of {d.height} grid cells in the design "
                "space (every CQA in spec with P ≥ 95 %, black line)"
            )

# ---------------------------------------------------------------- recipe recommendation
st.subheader("Recipe recommendation")
recs = data.read("gold", "recipe_recommendations")
if recs is None or recs.height == 0:
    st.info(
        "No recipe recommendation yet: materialize gold/recipe_recommendations "
        "(recipe_optimise_job)."
    )
else:
    ui.table(
        recs, "wif_recipe_recs", "Recommended vs current recipe (verified on fresh plant batches)"
    )
    r = (
        recs.row(0, named=True)
        if recs.height == 1
        else recs.filter(
            pl.col("recipe_id")
            == st.selectbox("Recommendation for", recs["recipe_id"].to_list(), key="wif_rr")
        ).row(0, named=True)
    )
    if r.get("verified_gain") is not None:
        m1, m2, m3 = st.columns(3)
        m1.metric(
            "Verified gain in mean product mass",
            f"{100 * r['verified_gain']:+.1f} %",
            help=f"95 % CI {100 * r['verified_gain_lo']:+.1f} to {100 * r['verified_gain_hi']:+.1f} %",
        )
        m2.metric("Right-first-time, current", f"{100 * r['rft_current']:.0f} %")
        m3.metric("Right-first-time, recommended", f"{100 * r['rft_recommended']:.0f} %")
    if can(session, "spec.change"):
        book = twin_config.load_recipes(RECIPES_PATH)
        cur = book.get(r["recipe_id"])
        if cur.version == r["recipe_version"]:
            settings = {
                k.removeprefix("recommended_"): float(v)
                for k, v in r.items()
                if k.startswith("recommended_") and v is not None
            }
            new = recipe_with(cur, settings)

            def _request(uid: str, pw: str, reason: str) -> str:
                row = recipe_requests.request(lk, RECIPES_PATH, new, r, uid, pw, reason)
                return f"recipe change request {row['request_id']} recorded (awaits QA approval)"

            signature_dialog(
                session,
                f"Request change of {cur.recipe_id} to version {new.version}",
                "authorship",
                f"recipe {cur.recipe_id} v{new.version}",
                _request,
                "wif_request",
            )
        else:
            st.caption(
                f"{cur.recipe_id} is now version {cur.version}; the recommendation was for "
                f"version {r['recipe_version']}: optimise again"
            )
# ---------------------------------------------------------------- learning from history
st.subheader("Learning from history: the best batches vs the optimiser")
hist = data.read("gold", "history_patterns")
if hist is None or hist.height == 0 or "recipe_id" not in hist.columns:
    st.info(
        "No history comparison yet: materialize gold/history_patterns (recipe_optimise_job) "
        "once the lake holds completed batches."
    )
else:
    h_rid = st.selectbox(
        "Recipe", hist["recipe_id"].unique(maintain_order=True).to_list(), key="wif_hist"
    )
    h = hist.filter(pl.col("recipe_id") == h_rid)
    if "feature" not in h.columns or h["feature"].is_null().all():
        st.info(f"{h_rid}: " + str(h["note"][0] if "note" in h.columns else "no comparison"))
    else:
        h = h.filter(pl.col("feature").is_not_null())
        r0 = h.row(0, named=True)
        st.caption(
            f"{r0['batches']} completed batches; top quarter {r0['top_mean_product_kg']:.2f} kg "
            f"vs rest {r0['rest_mean_product_kg']:.2f} kg of product. Differences are "
            "associations in plant history (set-points barely vary between batches), not "
            "effects of changing them; the twin optimiser is the causal model."
        )
        show = [
            c
            for c in (
                "feature",
                "kind",
                "top_mean",
                "rest_mean",
                "diff",
                "diff_lo",
                "diff_hi",
                "hedges_g",
                "spearman_with_product",
                "significant",
                "current",
                "proposed",
                "proposed_pct_of_top",
                "proposed_within_history",
                "history_agrees",
                "history_contradicts",
            )
            if c in h.columns
        ]
        ui.table(
            h.select(show), "wif_history", "Top-quartile batches vs the rest, and the proposal"
        )
        hs = h.filter(pl.col("hedges_g").is_not_null()).sort("hedges_g")
        ui.chart(
            ui.figure(
                [
                    {
                        "type": "bar",
                        "orientation": "h",
                        "x": hs["hedges_g"].to_list(),
                        "y": hs["feature"].to_list(),
                        "marker": {
                            "color": [
                                "#2a9d8f" if s_ else "#bbbbbb" for s_ in hs["significant"].to_list()
                            ]
                        },
                        "name": "Hedges' g (coloured: 95 % CI of the difference excludes 0)",
                    }
                ],
                "effect size, top quarter vs rest (Hedges' g)",
                "feature",
            ),
            "wif_hist_fig",
        )
pend = recipe_requests.pending(lk)
if pend.height:
    ui.table(
        pend.select(
            "request_id", "recipe_id", "from_version", "to_version", "actor", "reason", "at"
        ),
        "wif_pending",
        "Recipe change requests awaiting QA approval",
    )
    if can(session, "sign.approval"):
        rid_ = st.selectbox("Request", pend["request_id"].to_list(), key="wif_pending_sel")

        def _approve(uid: str, pw: str, reason: str) -> str:
            row = recipe_requests.approve(lk, rid_, uid, pw, reason)
            return f"{rid_} approved: recipe changed under {row['change_id']}"

        signature_dialog(
            session, f"Approve {rid_}", "approval", f"recipe change {rid_}", _approve, "wif_approve"
        )

# ---------------------------------------------------------------- running batches
st.subheader("Running batches: recommendations and harvest times")
br = data.read("gold", "batch_recommendations")
hr = data.read("gold", "harvest_recommendations")
if br is None or hr is None:
    st.info(
        "No running-batch recommendations yet: materialize the optimise group "
        "(running_optimise_job, hourly by its schedule)."
    )
else:
    ui.table(br, "wif_batch_recs", "Adjustments for the rest of each running batch (within PAR)")
    ui.table(
        hr, "wif_harvest", "Harvest time with the most expected product (viability and CQA limits)"
    )
