"""Login, sessions, role checks and the e-signature dialog for the Streamlit pages.

The session lives in ``st.session_state["gxp_session"]`` (a ``users.Session``) and is checked
on every page run against the lake (idle timeout, account disabled/locked/role changed);
every login, failed login and logout is audited by ``pharma_assets.compliance.users``.
Signatures always ask again for ID and password (21 CFR 11.200) and must be made with the
logged-in user's own ID.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from pharma_assets.compliance import users
from pharma_assets.lake.storage import Lake

SESSION_KEY = "gxp_session"
FLASH_KEY = "gxp_flash"


def lake() -> Lake:
    return Lake.from_env()


def current_session() -> users.Session | None:
    """The logged-in session, renewed; None (and a notice) when absent or expired."""
    s = st.session_state.get(SESSION_KEY)
    if s is None:
        return None
    try:
        s = users.check_session(lake(), s)
    except users.SessionExpiredError as e:
        st.session_state.pop(SESSION_KEY, None)
        st.warning(str(e))
        return None
    st.session_state[SESSION_KEY] = s
    return s


def login_form() -> None:
    """ID/password form; on success stores the session and reruns."""
    st.subheader("Log in")
    st.caption(
        "Plant and GMP data are shown to logged-in users only (read-only accounts: "
        "role `viewer`). Sessions end after 15 minutes without activity."
    )
    with st.form("gxp_login"):
        uid = st.text_input("User ID", key="login_user")
        pw = st.text_input("Password", type="password", key="login_password")
        if st.form_submit_button("Log in"):
            try:
                st.session_state[SESSION_KEY] = users.login(lake(), uid.strip(), pw)
                st.rerun()
            except users.AuthError as e:
                st.error(str(e))


def require(permission: str) -> users.Session:
    """Stop the page unless a logged-in user holds ``permission``."""
    s = current_session()
    if s is None:
        login_form()
        st.stop()
    assert s is not None
    if permission not in users.ROLES.get(s.role, frozenset()):
        st.error(f"{s.full_name} ({s.role}) is not allowed to use this page ({permission}).")
        st.stop()
    with st.sidebar:
        st.caption(
            f"Logged in: **{s.full_name}** ({s.user_id}, {s.role}); session expires "
            f"{s.expires_at:%H:%M} UTC if idle"
        )
        if st.button("Log out", key="gxp_logout"):
            users.logout(lake(), s)
            st.session_state.pop(SESSION_KEY, None)
            st.rerun()
    return s


def can(session: users.Session, permission: str) -> bool:
    return permission in users.ROLES.get(session.role, frozenset())


def flash() -> None:
    """Show (once) the message the last signing left."""
    msg = st.session_state.pop(FLASH_KEY, None)
    if msg:
        st.success(msg)


def signature_form(
    session: users.Session,
    meaning: str,
    record_label: str,
    on_sign: Callable[[str, str, str], str],
    key: str,
) -> None:
    """The signing form: ID, password and reason; ``on_sign(user, password, reason)`` returns
    the message to show (it raises on refusal)."""
    st.markdown(
        f"You are signing **{record_label}**. Meaning of this signature: "
        f"**{meaning}**. Enter your user ID and password again."
    )
    with st.form(f"sig_{key}"):
        uid = st.text_input("User ID", key=f"sig_user_{key}")
        pw = st.text_input("Password", type="password", key=f"sig_pw_{key}")
        reason = st.text_input("Reason", key=f"sig_reason_{key}")
        c1, c2 = st.columns(2)
        if c2.form_submit_button("Cancel"):
            st.session_state.pop(f"sign_open_{key}", None)
            st.rerun()
        if c1.form_submit_button("Sign"):
            if uid.strip() != session.user_id:
                st.error(f"sign with your own ID ({session.user_id})")
                return
            if not reason.strip():
                st.error("a reason is required")
                return
            try:
                st.session_state[FLASH_KEY] = on_sign(uid.strip(), pw, reason.strip())
                st.session_state.pop(f"sign_open_{key}", None)
                st.rerun()
            except (users.AuthError, users.PermissionDeniedError, ValueError) as e:
                st.error(str(e))


def signature_dialog(
    session: users.Session,
    title: str,
    meaning: str,
    record_label: str,
    on_sign: Callable[[str, str, str], str],
    key: str,
) -> None:
    """A "Sign" button that opens the signing form in a modal dialog (``st.dialog``); the
    dialog stays open across reruns until the signature is made or cancelled."""
    flag = f"sign_open_{key}"
    if st.button(title, key=f"open_{key}"):
        st.session_state[flag] = True
    if not st.session_state.get(flag):
        return

    @st.dialog(f"Electronic signature: {title}")
    def _dialog() -> None:
        signature_form(session, meaning, record_label, on_sign, key)

    _dialog()
