"""Models: registered versions and champions (MLflow registry when available), why the
newest version of a model is not champion (the promotion gate's reason), the promotions
waiting for a QA signature with approve / reject (e-signature bound to the version's
artifact hash), and every evaluated metric against its target (gold/model_performance)."""

from __future__ import annotations

import os
from collections.abc import Callable

import plotly.graph_objects as go
import polars as pl
import streamlit as st

from dashboards import auth, data, logic, ui
from pharma_assets.compliance import promotions

session = ui.header(
    "Models", "models", (("gold", "model_performance"), ("gold", "model_capabilities"))
)


def _signer(
    approve: bool, name: str, version: str, uri: str | None
) -> Callable[[str, str, str], str]:
    """What the signature dialog calls with (user, password, reason): the signed decision."""

    def on_sign(user: str, password: str, reason: str) -> str:
        decide = promotions.approve if approve else promotions.reject
        decide(auth.lake(), user, password, name, version, reason, uri)
        data._registered_models.clear()  # the registry table shows the new champion at once
        if approve:
            return f"{name} v{version} approved: now champion"
        return f"{name} v{version} rejected: the champion stays"

    return on_sign


def _pending_promotions() -> None:
    """Proposals of the promotion gate that wait for a signature (gxp/model_promotions)."""
    lake = auth.lake()
    pend = promotions.pending(lake)
    st.subheader("Pending promotions")
    auth.flash()
    if pend.height == 0:
        st.caption("No promotion waits for a signature.")
        return
    may_sign = auth.can(session, promotions.PERMISSION)
    if not may_sign:
        st.caption(
            f"{pend.height} proposal(s) wait for QA: a user whose role grants "
            f"`{promotions.PERMISSION}` approves or rejects them with an electronic "
            "signature."
        )
    uri = os.environ.get("PHARMA_MLFLOW_URI") or None
    for r in pend.iter_rows(named=True):
        name, version = r["model_name"], r["version"]
        champ = f"champion v{r['champion_version']}" if r["champion_version"] else "no champion"
        score = "" if r["challenger_score"] is None else f" {r['challenger_score']:.4g}"
        st.info(
            f"**{name}** v{version} proposed ({r['gate_metric']}{score}; {champ} when "
            f"proposed): {r['gate_reason']}  \nModel SHA-256 `{r['model_sha256'][:16]}...`, "
            f"proposal {r['promotion_id']}",
            icon=":material/pending_actions:",
        )
        if not may_sign:
            continue
        label = f"the promotion of {name} v{version} (model SHA-256 {r['model_sha256'][:16]}...)"
        key = f"{name}_{version}".replace(".", "_")
        c1, c2 = st.columns(2)
        with c1:
            auth.signature_dialog(
                session,
                f"Approve v{version}",
                "approval",
                label,
                _signer(True, name, version, uri),
                f"prm_ok_{key}",
            )
        with c2:
            auth.signature_dialog(
                session,
                f"Reject v{version}",
                "approval",
                "the rejection of " + label,
                _signer(False, name, version, uri),
                f"prm_no_{key}",
            )


def _capabilities() -> None:
    """What the site's data supports (gold/model_capabilities, latest training run): every
    model trained or skipped, with the one-line reason of each skip."""
    caps = data.read("gold", "model_capabilities")
    if caps is None or caps.height == 0:
        return
    latest = caps.filter(pl.col("assessed_at") == pl.col("assessed_at").max())
    st.subheader("What this site's data supports")
    skipped = latest.filter(~pl.col("applies"))
    st.caption(
        f"Latest training run: {latest.height - skipped.height} capabilities trained, "
        f"{skipped.height} skipped (docs/bring_your_own_data.md says what to import for each)."
    )
    for r in skipped.iter_rows(named=True):
        what = f"{r['capability']} ({r['target']})" if r["target"] else r["capability"]
        st.warning(f"**{what}** skipped: {r['reason']}", icon=":material/block:")
    ui.table(
        latest.select("capability", "target", "applies", "reason", "assessed_at"),
        "model_capabilities",
        "model capabilities",
    )


_capabilities()
perf = data.read("gold", "model_performance")
registry, registry_note = data.registered_models()

if perf is None and registry is None:
    st.info(data.missing_hint("gold", "model_performance"), icon=":material/info:")
    st.caption(registry_note)
    st.stop()

st.subheader("Registered versions and champions")
if registry is not None:
    st.caption(registry_note)
    ui.table(registry, "registered_models", "registered models")
    if "promotion_reason" in registry.columns:
        # the promotion gate (docs/models.md): why the newest version of a model is not champion
        latest = (
            registry.with_columns(v=pl.col("version").cast(pl.Int64))
            .sort("name", "v")
            .group_by("name", maintain_order=True)
            .last()
        )
        champions = dict(
            registry.filter(pl.col("is_champion")).select("name", "version").iter_rows()
        )
        held = latest.filter(~pl.col("is_champion"))
        st.subheader("Promotion gate")
        if held.height == 0:
            st.caption("The newest version of every model is its champion.")
        for r in held.iter_rows(named=True):
            champ = champions.get(r["name"])
            stays = f"champion stays v{champ}" if champ else "no champion: nothing is scored"
            if r["promotion_state"] in ("pending_approval", "superseded"):
                continue  # proposed by the gate: under "Pending promotions"
            if r["promotion_state"] == "rejected":
                st.warning(
                    f"**{r['name']}** v{r['version']} rejected ({stays})", icon=":material/block:"
                )
                continue
            st.warning(
                f"**{r['name']}** v{r['version']} not promoted ({stays}): "
                f"{r['promotion_reason'] or 'no reason recorded'}",
                icon=":material/block:",
            )
else:
    st.caption(registry_note)
    if perf is not None:
        ui.table(logic.model_overview(perf), "model_overview", "model overview")

_pending_promotions()

if perf is None:
    st.info(data.missing_hint("gold", "model_performance"), icon=":material/info:")
    st.stop()
if perf.height == 0:
    ui.empty("gold/model_performance is empty: no model has been evaluated yet.")
    st.stop()

champ = perf.filter(pl.col("is_champion"))
with_target = champ.filter(pl.col("target").is_not_null())
m = st.columns(3)
m[0].metric("Models", perf["model_name"].n_unique())
m[1].metric("Champion metrics with a target", with_target.height)
m[2].metric(
    "Targets met by champions",
    f"{int(with_target['target_met'].fill_null(False).sum())} / {with_target.height}",
)

st.subheader("Champion metrics against targets")
if with_target.height:
    labels = [
        f"{r['model_name']} v{r['model_version']}<br>{r['metric']}"
        for r in with_target.iter_rows(named=True)
    ]
    fig = go.Figure()
    fig.add_bar(
        x=labels,
        y=with_target["value"].to_list(),
        name="value",
        marker_color=[
            "#2e7d32" if ok else "#c62828" for ok in with_target["target_met"].fill_null(False)
        ],
    )
    fig.add_scatter(
        x=labels,
        y=with_target["target"].to_list(),
        mode="markers",
        name="target",
        marker={"symbol": "line-ew-open", "size": 30, "color": "black", "line": {"width": 3}},
    )
    fig.update_layout(
        xaxis_title="model version and metric", yaxis_title="value (unit in the metric name)"
    )
    ui.chart(fig, "targets", height=380)
ui.table(
    perf.sort("model_name", "model_version", "metric"), "model_performance", "model performance"
)
