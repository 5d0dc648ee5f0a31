"""Fixtures for the dashboard tests: one small simulated lake per session, AppTest helpers.

``fixture_lake`` builds the plant of ``fixture_lake.py`` once (2 units, 3 history batches
each, one live batch still running on BR01, ML gold tables in the contract shape) with two
accounts: ``admin`` and the read-only ``view.only`` (role ``viewer``); the audit key and
anchor live in a session-wide ``PHARMA_GXP_HOME``. ``app`` returns a function that runs the
dashboards app on a page with ``PHARMA_LAKE_URI`` pointing at a given lake, MLflow at an
empty SQLite store in the test's temporary folder, and a session logged in as ``user``
(``None``: not logged in).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pharma_assets.compliance import users
from pharma_assets.lake.storage import Lake

from .fixture_lake import build_fixture_lake

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
ML_GOLD = (
    "equipment_health",
    "contamination_risk",
    "mspc_scores",
    "mspc_alarms",
    "golden_batch",
    "model_performance",
)


PASSWORDS = {
    "admin": "Root-pass-2026!",
    "view.only": "Viewer-pass-2026",
    "qa.lead": "Quality-pass-2026",
}


@pytest.fixture(scope="session", autouse=True)
def gxp_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One audit key/anchor home for the whole session (the fixture lake is shared)."""
    home = tmp_path_factory.mktemp("gxp_home")
    saved = {
        v: os.environ.get(v)
        for v in (
            "PHARMA_GXP_HOME",
            "PHARMA_AUDIT_KEY",
            "PHARMA_AUDIT_KEY_FILE",
            "PHARMA_AUDIT_ANCHOR",
        )
    }
    for v in saved:
        os.environ.pop(v, None)
    os.environ["PHARMA_GXP_HOME"] = str(home)
    yield home
    for v, val in saved.items():
        if val is None:
            os.environ.pop(v, None)
        else:
            os.environ[v] = val


def add_users(lake: Lake) -> dict[str, str]:
    """The admin, a read-only viewer and a QA lead; returns user -> password."""
    users.create_user(
        lake,
        "admin",
        "Ada Admin",
        "admin",
        PASSWORDS["admin"],
        "system:test",
        "test setup",
        bootstrap=True,
    )
    users.create_user(
        lake, "view.only", "Vera Viewer", "viewer", PASSWORDS["view.only"], "admin", "test setup"
    )
    users.create_user(
        lake, "qa.lead", "Quinn Assurance", "qa", PASSWORDS["qa.lead"], "admin", "test setup"
    )
    return dict(PASSWORDS)


@pytest.fixture(scope="session")
def fixture_lake(tmp_path_factory: pytest.TempPathFactory, gxp_home: Path) -> Lake:
    lake = build_fixture_lake(tmp_path_factory.mktemp("dash_plant"))
    add_users(lake)
    return lake


@pytest.fixture
def lake_copy(fixture_lake: Lake, tmp_path: Path) -> Lake:
    """A private copy of the fixture lake that a test may change."""
    dst = tmp_path / "lake"
    shutil.copytree(fixture_lake.root, dst)
    return Lake.at(dst)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., AppTest]:
    monkeypatch.setenv("PHARMA_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")

    def run(
        lake_root: str | Path,
        page: str | None = None,
        timeout: float = 90,
        user: str | None = "view.only",
    ) -> AppTest:
        monkeypatch.setenv("PHARMA_LAKE_URI", str(lake_root))
        at = AppTest.from_file(APP, default_timeout=timeout)
        if user is not None:
            at.session_state["gxp_session"] = users.login(Lake.at(lake_root), user, PASSWORDS[user])
        at.run()
        if page is not None:
            at.switch_page(f"app_pages/{page}.py")
            at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return run
