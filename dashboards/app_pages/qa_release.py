"""QA: batch record review and release/rejection with an electronic signature."""

from __future__ import annotations

import sys
from pathlib import Path

PAGE_TITLE = "Batch release"
PAGE_ICON = ":material/verified:"
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import streamlit as st  # noqa: E402

from dashboards import ui  # noqa: E402
from dashboards.auth import can, flash, lake, require, signature_dialog  # noqa: E402
from pharma_assets.compliance import ebr, release  # noqa: E402
from pharma_assets.compliance.audit import AuditTrail  # noqa: E402

st.title("Batch review and release")
session = require("record.view")
flash()
ui.freshness("qa_release", (("gold", "batch_summary"), ("gxp", "batch_release")))
lk = lake()
summary = lk.read("gold", "batch_summary")
if summary is None or summary.height == 0:
    st.info("No batches in gold/batch_summary yet: run the pipeline.")
    st.stop()
summary = release.apply_release_status(summary, lk)
ui.dataframe(
    summary.select(
        "batch_id",
        "unit_id",
        "status",
        "final_titer_g_l",
        "excursions_major",
        "right_first_time",
        "release_status",
        "released_by",
        "released_at",
    )
)
batch = st.selectbox("Batch", summary["batch_id"].to_list(), key="rel_batch")
content = ebr.collect(lk, batch)
row = summary.filter(pl.col("batch_id") == batch).row(0, named=True)
st.subheader(f"{batch}: {row['release_status']}")
c1, c2, c3 = st.columns(3)
c1.metric("Status", row["status"])
c2.metric("Major excursions", row["excursions_major"])
c3.metric("CQAs out of spec", row.get("cqa_out_of_spec") or 0)
st.markdown("**Deviations**")
ui.dataframe(pl.DataFrame(content.deviations) if content.deviations else pl.DataFrame())
st.markdown("**Critical quality attributes**")
ui.dataframe(pl.DataFrame(content.cqas) if content.cqas else pl.DataFrame())
st.markdown("**Signatures**")
for s, ok, note in content.signatures:
    (st.success if ok else st.error)(f"{s.manifestation()} ({s.record_type}) - {note}")
if not content.signatures:
    st.caption("no signatures yet")

html = ebr.render_html(content)
if st.download_button(
    "Download batch record (HTML)",
    html,
    file_name=f"{batch}_ebr.html",
    mime="text/html",
    key="rel_html",
):
    AuditTrail(lk).record(
        "ebr_downloaded",
        session.user_id,
        "ebr",
        batch,
        "content_hash",
        None,
        content.content_hash,
        "review",
        session.session_id,
    )
with st.expander("Batch record preview"):
    st.html(html)

if row["release_status"] == release.PENDING and can(session, "batch.release"):
    # no preselected decision: QA states it before the signature dialog can open
    decision = st.radio(
        "Decision",
        list(release.DECISIONS),
        index=None,
        horizontal=True,
        key=f"rel_decision_{batch}",
    )
    if decision is None:
        st.caption("Choose **released** or **rejected** to sign the decision.")
    else:

        def _decide(uid: str, pw: str, reason: str) -> str:
            r = release.decide(lk, batch, decision, uid, pw, reason, session.session_id)
            return f"{batch} {r['decision']} by {r['printed_name']}; signature {r['signature_id']}"

        signature_dialog(
            session,
            f"Sign: {decision} {batch}",
            "approval",
            f"batch {batch} ({decision})",
            _decide,
            f"rel_{batch}",
        )
