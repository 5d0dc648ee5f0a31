"""QA: deviations and CAPA workflow (open -> investigation -> capa -> closed with signature)."""

from __future__ import annotations

import sys
from pathlib import Path

PAGE_TITLE = "Deviations & CAPA"
PAGE_ICON = ":material/report:"
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboards import ui  # noqa: E402
from dashboards.auth import can, flash, lake, require, signature_dialog  # noqa: E402
from pharma_assets.compliance import deviations  # noqa: E402

st.title("Deviations and CAPA")
session = require("record.view")
flash()
ui.freshness("qa_deviations", (("gxp", "deviations"),))
lk = lake()

if can(session, "deviation.close") and st.button(
    "Open deviations from process events", key="dev_auto"
):
    new = deviations.auto_open(lk, context_id=session.session_id)
    st.info(f"opened {len(new)} deviations from major/critical excursions and contamination alarms")

devs = deviations.list_deviations(lk)
state = st.segmented_control("State", ["all", *deviations.STATES], default="all", key="dev_state")
shown = devs if state in (None, "all") else devs.filter(devs["state"] == state)
ui.dataframe(
    shown.select(
        "deviation_id",
        "batch_id",
        "severity",
        "state",
        "source",
        "title",
        "updated_by",
        "updated_at",
    )
)

if can(session, "deviation.open"):
    with st.expander("Open a deviation"), st.form("dev_open"):
        title = st.text_input("Title", key="dev_title")
        batch = st.text_input("Batch ID (optional)", key="dev_batch")
        sev = st.selectbox("Severity", ["minor", "major", "critical"], key="dev_sev")
        desc = st.text_area("Description", key="dev_desc")
        reason = st.text_input("Reason", key="dev_reason")
        if st.form_submit_button("Open"):
            try:
                d = deviations.open_deviation(
                    lk,
                    session.user_id,
                    title,
                    desc or title,
                    sev,
                    reason or "opened from dashboard",
                    batch_id=batch or None,
                    context_id=session.session_id,
                )
                st.success(f"opened {d.deviation_id}")
            except ValueError as e:
                st.error(str(e))

if devs.height:
    dev_id = st.selectbox("Deviation", devs["deviation_id"].to_list(), key="dev_pick")
    d = deviations.get_deviation(lk, dev_id)
    st.subheader(f"{d.deviation_id}: {d.title}")
    st.write(
        f"State **{d.state}**, severity {d.severity}, batch {d.batch_id or '-'}, source {d.source}"
    )
    st.write(d.description)
    ui.dataframe(
        deviations.history(lk, dev_id).select(
            "version",
            "state",
            "updated_by",
            "updated_at",
            "reason",
            "investigation",
            "root_cause",
            "capa",
            "signature_id",
        )
    )
    if d.state in ("open", "investigation") and can(session, "deviation.investigate"):
        with st.form("dev_advance"):
            inv = st.text_area("Investigation", value=d.investigation or "", key="dev_inv")
            rc = st.text_input("Root cause", value=d.root_cause or "", key="dev_rc")
            capa = st.text_input("CAPA", value=d.capa or "", key="dev_capa")
            reason = st.text_input("Reason", key="dev_adv_reason")
            label = "Start investigation" if d.state == "open" else "Move to CAPA"
            if st.form_submit_button(label):
                try:
                    deviations.advance(
                        lk,
                        dev_id,
                        session.user_id,
                        reason or label,
                        inv or None,
                        rc or None,
                        capa or None,
                        session.session_id,
                    )
                    st.rerun()
                except ValueError as e:
                    st.error(str(e))
    if d.state == "capa" and can(session, "deviation.close"):

        def _close(uid: str, pw: str, reason: str) -> str:
            closed = deviations.close(lk, dev_id, uid, pw, reason, session.session_id)
            return f"{dev_id} closed; signature {closed.signature_id}"

        signature_dialog(
            session,
            f"Close {dev_id} with signature",
            "approval",
            f"deviation {dev_id}",
            _close,
            f"close_{dev_id}",
        )
