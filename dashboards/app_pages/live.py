"""Live: every unit's current CPPs against NOR/PAR, a rolling trend of one unit and the open
alarms, pushed by the gateway's WebSocket (sub-second, no page reload); acknowledging and
shelving alarms for users with ``alarm.respond`` (audited by the gateway)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from dashboards import auth, data
from dashboards import live as gw
from pharma_assets.gateway.api import spec_bands

TEMPLATE = Path(__file__).resolve().parent.parent / "live_view.html"
MINUTES = 10

session = auth.require("record.view")
st.title("Live")
health = gw.get("/health")
if health is None:
    st.warning(
        f"The live gateway is not running at {gw.gateway_url()} (set PHARMA_GATEWAY_URL). "
        "Start it with `pharma-twin gateway --sources <sources.yaml>` next to a plant or "
        "`pharma-twin live --serve opcua` (`make demo` starts both). The other pages show the "
        "last pipeline run from gold."
    )
    st.stop()

spec = data.spec()
units = list(health.get("units") or [])
c1, c2 = st.columns([1, 3])
unit = c1.selectbox("Unit for the trend", units, key="live_unit") if units else None
minutes = c2.slider("Trend window (minutes)", 1, 60, MINUTES, key="live_minutes")
history: dict[str, Any] = {}
if unit:
    for tag in spec.cpp_tags:
        w = gw.get(f"/units/{unit}/tags/{tag}/window?seconds={minutes * 60}", timeout_s=3.0)
        if w:
            history[tag] = {"ts_us": w["ts_us"], "value": w["value"]}
cfg = {
    # only the CPPs the grid and trends draw; the gateway then sends only what changed
    "ws_url": gw.public_url().replace("http", "ws", 1) + "/ws/live?tags=" + ",".join(spec.cpp_tags),
    "cpp_tags": spec.cpp_tags,
    "bands": spec_bands(),
    "default_phase": "production",
    "unit": unit,
    "minutes": minutes,
    "history": history,
    "stale_after_s": 10,
}
html = TEMPLATE.read_text().replace("__CONFIG__", json.dumps(cfg))
st.iframe(html, height=560 + 150 * ((len(spec.cpp_tags) + 2) // 3))
st.caption(
    f"Pushed by the gateway at {gw.public_url()} (WebSocket /ws/live) as values change; the "
    "banner turns amber when values are stale and red when the gateway connection drops."
)


@st.fragment(run_every=5)
def respond() -> None:
    """The open alarms to act on (refreshed every 5 s; the view above is pushed)."""
    st.subheader("Respond to an alarm")
    alarms = gw.get("/alarms") or []
    if not alarms:
        st.success("No open alarm.")
        return
    if not auth.can(session, "alarm.respond"):
        st.info(
            f"{session.full_name} ({session.role}) may view alarms; acknowledging and shelving "
            "need the alarm.respond permission (operators, engineers, maintenance, QA)."
        )
        return
    labels = {
        a["alarm_id"]: f"{a['priority']} · {a['unit_id']} {a['tag']} · {a['state']}" for a in alarms
    }
    aid = st.selectbox("Alarm", list(labels), format_func=lambda a: labels[a], key="live_alarm")
    a = next(x for x in alarms if x["alarm_id"] == aid)
    ca, cs = st.columns(2)
    with ca.form("ack_form"):
        comment = st.text_input("Comment (optional)", key="ack_comment")
        if st.form_submit_button("Acknowledge", disabled=a["acked"] or a["state"] == "shelved"):
            try:
                gw.post_action(
                    aid,
                    "ack",
                    {
                        "user_id": session.user_id,
                        "comment": comment or None,
                        "context_id": session.session_id,
                    },
                )
                st.success(f"{aid} acknowledged by {session.user_id} (audited).")
            except gw.ActionError as e:
                st.error(str(e))
    with cs.form("shelve_form"):
        if a["state"] == "shelved":
            reason = st.text_input("Reason to unshelve", key="unshelve_reason")
            if st.form_submit_button("Unshelve"):
                try:
                    gw.post_action(
                        aid,
                        "unshelve",
                        {
                            "user_id": session.user_id,
                            "reason": reason or None,
                            "context_id": session.session_id,
                        },
                    )
                    st.success(f"{aid} unshelved (audited).")
                except gw.ActionError as e:
                    st.error(str(e))
        else:
            reason = st.text_input("Reason to shelve (required)", key="shelve_reason")
            mins = st.number_input("Shelve for (minutes)", 1, 480, 30, key="shelve_minutes")
            if st.form_submit_button("Shelve", disabled=not a["active"]):
                if not reason.strip():
                    st.error("Shelving needs a reason.")
                else:
                    try:
                        gw.post_action(
                            aid,
                            "shelve",
                            {
                                "user_id": session.user_id,
                                "reason": reason,
                                "duration_s": mins * 60,
                                "context_id": session.session_id,
                            },
                        )
                        st.success(f"{aid} shelved for {mins} min (audited).")
                    except gw.ActionError as e:
                        st.error(str(e))


respond()
