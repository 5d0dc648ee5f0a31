"""QA: audit trail browser with the chain's verification status (21 CFR 11.10(e))."""

from __future__ import annotations

import sys
from pathlib import Path

PAGE_TITLE = "Audit trail"
PAGE_ICON = ":material/history:"
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import streamlit as st  # noqa: E402

from dashboards import logic, ui  # noqa: E402
from dashboards.auth import lake, require  # noqa: E402
from pharma_assets.compliance.audit import (  # noqa: E402
    AuditIntegrityError,
    AuditTrail,
    VerificationResult,
)


@st.cache_data(ttl=600, show_spinner="verifying the audit chain")
def _verify(root: str, version: int | None) -> VerificationResult:
    """Verification of one table version (a new entry gives a new version: recomputed)."""
    return AuditTrail(lake()).verify()


st.title("Audit trail")
session = require("audit.view")
trail = AuditTrail(lake())
res = _verify(trail.lake.root, trail.lake.version("gxp", "audit_trail"))
if res.ok:
    st.success(res.summary())
else:
    st.error(res.summary())
    st.metric("First bad entry (seq)", res.first_bad_seq if res.first_bad_seq is not None else "-")

ui.freshness("qa_audit", (("gxp", "audit_trail"),))
try:
    everything = trail.read()
except AuditIntegrityError as e:  # a damaged data file: verify above names the entries
    st.error(str(e))
    st.stop()
counts = logic.audit_view_counts(everything)
view = (
    st.segmented_control(
        "Show",
        list(logic.AUDIT_VIEWS),
        default=logic.DEFAULT_AUDIT_VIEW,
        key="audit_view",
        format_func=lambda v: f"{v} ({counts[v]:,})",
    )
    or logic.DEFAULT_AUDIT_VIEW
)
df = logic.audit_view(everything, view)
c1, c2, c3 = st.columns(3)
actions = sorted(df["action"].unique().to_list()) if df.height else []
action = c1.selectbox("Action", ["(all)", *actions], key="audit_action")
actor = c2.text_input("Actor", key="audit_actor")
record = c3.text_input("Record ID", key="audit_record")
if action != "(all)":
    df = df.filter(pl.col("action") == action)
if actor:
    df = df.filter(pl.col("actor") == actor)
if record:
    df = df.filter(pl.col("record_id").str.contains(record, literal=True))
st.caption(
    f"{df.height:,} entries match (view and filters) of {everything.height:,} in the trail "
    "(newest first, up to 1,000 shown); times are UTC server time. Pipeline materializations are kept in "
    "full: choose **Pipeline (materializations)** or **All entries** to see them."
)
ui.dataframe(
    df.sort("seq", descending=True)
    .head(1000)
    .select(
        "seq",
        "ts_utc",
        "actor",
        "action",
        "table_name",
        "record_id",
        "field",
        "old_value",
        "new_value",
        "reason",
        "context_id",
        "entry_hash",
    ),
    key="audit_table",
    height=620,
    ts_format="YYYY-MM-DD HH:mm:ss",
)
