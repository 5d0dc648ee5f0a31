"""pharma-twin dashboards (placeholder until the dashboards issue lands).

Run with `streamlit run dashboards/app.py`. It only reports what the landing zone holds;
the pages on the gold tables come with the pipeline and dashboards issues.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

landing = Path(os.environ.get("PHARMA_LANDING_DIR", "landing"))
st.set_page_config(page_title="pharma-twin", layout="wide")
st.title("pharma-twin")
st.caption(
    "Digital twin of a biopharmaceutical plant. Dashboards on the gold tables are not built yet."
)
if not (landing / "telemetry").exists():
    st.info(f"No plant history in {landing.resolve()}: run `make demo` or `pharma-twin simulate`.")
else:
    batches = sorted(p.name for p in (landing / "telemetry").glob("*/*") if p.is_dir())
    st.metric("Batches in the landing zone", len(batches))
    st.write(batches)
