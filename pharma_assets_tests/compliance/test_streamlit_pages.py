"""The QA Streamlit pages with a real lake and real logins (streamlit AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pharma_assets.compliance import deviations, release, users
from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.lake.storage import Lake

PAGES = Path(__file__).resolve().parents[2] / "dashboards" / "app_pages"


@pytest.fixture
def env_lake(users_lake, monkeypatch: pytest.MonkeyPatch) -> tuple[Lake, dict[str, str]]:
    lake, pw = users_lake
    monkeypatch.setenv("PHARMA_LAKE_URI", lake.root)
    return lake, pw


def _page(name: str, session: users.Session | None = None) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=60)
    if session is not None:
        at.session_state["gxp_session"] = session
    return at.run()


def test_audit_page_requires_login_and_role(env_lake) -> None:
    lake, pw = env_lake
    at = _page("qa_audit.py")
    assert not at.exception
    assert [s.value for s in at.subheader] == ["Log in"] and not at.dataframe
    at.text_input(key="login_user").input("qa.lead")
    at.text_input(key="login_password").input("wrong-password!")
    at.button[0].click().run()
    assert "wrong password" in at.error[0].value
    at.text_input(key="login_password").input(pw["qa.lead"])
    at.button[0].click().run()
    assert not at.exception
    assert at.success and "audit trail OK" in at.success[0].value
    assert at.dataframe[0].value.shape[0] > 5  # entries shown
    trail = AuditTrail(lake)
    assert trail.read(action="login_failed")["record_id"].to_list() == ["qa.lead"]
    op = users.login(lake, "op.jones", pw["op.jones"])
    at2 = _page("qa_audit.py", op)
    assert at2.error and "not allowed" in at2.error[0].value and not at2.dataframe


def test_release_page_signs_through_dialog(env_lake) -> None:
    lake, pw = env_lake
    s = users.login(lake, "qa.lead", pw["qa.lead"])
    at = _page("qa_release.py", s)
    assert not at.exception
    at.selectbox(key="rel_batch").select("BR01-B0002").run()
    assert "pending_review" in at.subheader[0].value
    at.radio(key="rel_decision_BR01-B0002").set_value("released").run()
    at.button(key="open_rel_BR01-B0002").click().run()
    at.text_input(key="sig_user_rel_BR01-B0002").input("qa.lead")
    at.text_input(key="sig_pw_rel_BR01-B0002").input(pw["qa.lead"])
    at.text_input(key="sig_reason_rel_BR01-B0002").input("record reviewed")
    sign = next(b for b in at.button if b.label == "Sign")
    sign.click().run()
    assert not at.exception
    st_frame = release.release_status_frame(lake)
    assert st_frame["batch_id"].to_list() == ["BR01-B0002"]
    assert at.success and "released by Quinn Assurance" in at.success[0].value
    assert "released" in at.subheader[0].value
    assert any("meaning: approval" in x.value for x in at.success)


def test_deviation_page_close_needs_qa_signature(env_lake) -> None:
    lake, pw = env_lake
    d = deviations.open_deviation(
        lake, "op.jones", "foam", "foam-over", "minor", "seen", batch_id="BR01-B0001"
    )
    deviations.advance(lake, d.deviation_id, "pe.smith", "go", investigation="check antifoam")
    deviations.advance(
        lake, d.deviation_id, "pe.smith", "done", root_cause="low antifoam", capa="raise dose"
    )
    pe = users.login(lake, "pe.smith", pw["pe.smith"])
    at = _page("qa_deviations.py", pe)
    assert not at.exception
    assert not [b for b in at.button if b.key == f"open_close_{d.deviation_id}"]  # no right
    qa = users.login(lake, "qa.lead", pw["qa.lead"])
    at = _page("qa_deviations.py", qa)
    key = f"close_{d.deviation_id}"
    at.button(key=f"open_{key}").click().run()
    at.text_input(key=f"sig_user_{key}").input("qa.lead")
    at.text_input(key=f"sig_pw_{key}").input("not-the-password")
    at.text_input(key=f"sig_reason_{key}").input("CAPA verified")
    next(b for b in at.button if b.label == "Sign").click().run()
    assert any("wrong password" in e.value for e in at.error)
    assert deviations.get_deviation(lake, d.deviation_id).state == "capa"
    at.text_input(key=f"sig_pw_{key}").input(pw["qa.lead"])
    next(b for b in at.button if b.label == "Sign").click().run()
    assert not at.exception
    assert deviations.get_deviation(lake, d.deviation_id).state == "closed"
    assert AuditTrail(lake).verify().ok


def test_release_decision_is_not_preselected(env_lake) -> None:
    lake, pw = env_lake
    at = _page("qa_release.py", users.login(lake, "qa.lead", pw["qa.lead"]))
    at.selectbox(key="rel_batch").select("BR01-B0002").run()
    radio = at.radio(key="rel_decision_BR01-B0002")
    assert radio.value is None and radio.index is None
    # no signature can be started before QA states the decision
    assert not [b for b in at.button if (b.key or "").startswith("open_rel_")]
    radio.set_value("rejected").run()
    assert at.button(key="open_rel_BR01-B0002").label == "Sign: rejected BR01-B0002"
    assert release.release_status_frame(lake).height == 0  # choosing alone decides nothing


def test_audit_page_shows_human_actions_first_and_machine_entries_on_request(env_lake) -> None:
    from pharma_assets.compliance.audit import AuditEvent

    lake, pw = env_lake
    trail = AuditTrail(lake)
    trail.append(
        [
            AuditEvent(
                "materialization",
                "dagster",
                f"silver/t{i}",
                "*",
                "delta_version",
                {"version": i},
                {"version": i + 1},
                "pipeline materialization",
                f"run-{i}",
            )
            for i in range(300)
        ]
    )
    s = users.login(lake, "qa.lead", pw["qa.lead"])
    at = _page("qa_audit.py", s)
    assert not at.exception
    shown = at.dataframe[0].value
    everything = trail.read()
    machine = everything.filter(everything["action"] == "materialization").height
    assert machine >= 300
    assert "materialization" not in set(shown["action"])
    assert "login" in set(shown["action"])
    assert len(shown) == everything.height - machine  # every human entry, none dropped
    view = at.segmented_control(key="audit_view")
    assert view.value == "People & QA records"
    view.set_value("Pipeline (materializations)").run()
    shown = at.dataframe[0].value
    assert set(shown["action"]) == {"materialization"} and len(shown) == min(machine, 1000)
    at.segmented_control(key="audit_view").set_value("All entries").run()
    assert any(f"of {trail.read().height:,} in the trail" in c.value for c in at.caption)
    at.segmented_control(key="audit_view").set_value("Logins & accounts").run()
    assert set(at.dataframe[0].value["action"]) <= {
        "login",
        "login_failed",
        "logout",
        "session_expired",
        "account_locked",
        "user_created",
    }
    assert "Data as of" in " ".join(c.value for c in at.caption)
