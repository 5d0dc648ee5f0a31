"""pharma-twin dashboards: one Streamlit app over the lakehouse gold tables.

Run with ``streamlit run dashboards/app.py`` (``make demo`` serves it on :8501). The lake
root comes from ``PHARMA_LAKE_URI`` (default ``lakehouse``). Pages are listed in
``dashboards/app_pages/__init__.py`` (operations pages) and any ``app_pages/qa_*.py`` file
appears under "Quality & compliance". What each page shows: docs/dashboards.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboards/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboards import auth, data, logic  # noqa: E402
from dashboards.app_pages import OPERATIONS_SECTION, PAGES, QA_SECTION, qa_pages  # noqa: E402

st.set_page_config(page_title="pharma-twin", page_icon=":material/biotech:", layout="wide")

sections: dict[str, list[st.Page]] = {
    OPERATIONS_SECTION: [
        st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path, default=i == 0)
        for i, p in enumerate(PAGES)
    ]
}
qa = qa_pages()
if qa:
    sections[QA_SECTION] = [
        st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path) for p in qa
    ]
page = st.navigation(sections)

if auth.SESSION_KEY in st.session_state:  # lake details only for a logged-in user
    with st.sidebar:
        st.caption("Lake")
        st.code(data.lake().root, language=None, wrap_lines=True)
        with st.expander("Table versions", expanded=False):
            for info in data.table_infos():
                when = "missing" if info.version is None else f"v{info.version}"
                if info.refreshed is not None:
                    when += f" · {logic.fmt_ts(info.refreshed)}"
                st.markdown(f"`{info.table}` {when}")
        if st.button("Refresh now", icon=":material/refresh:", key="refresh"):
            st.rerun()

with st.spinner(f"Loading {page.title}…", show_time=True):
    page.run()
