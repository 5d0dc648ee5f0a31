"""Fixtures for the dashboard tests: one small simulated lake per session, AppTest helpers.

``fixture_lake`` builds the plant of ``fixture_lake.py`` once (2 units, 3 history batches
each, one live batch still running on BR01, ML gold tables in the contract shape).
``app`` returns a function that runs the dashboards app on a page with
``PHARMA_LAKE_URI`` pointing at a given lake and MLflow at an empty SQLite store in the
test's temporary folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pharma_assets.lake.storage import Lake

from .fixture_lake import build_fixture_lake

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
ML_GOLD = (
    "equipment_health", "contamination_risk", "mspc_scores", "mspc_alarms", "golden_batch",
    "model_performance",
)  # fmt: skip


@pytest.fixture(scope="session")
def fixture_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_fixture_lake(tmp_path_factory.mktemp("dash_plant"))


@pytest.fixture
def lake_copy(fixture_lake: Lake, tmp_path: Path) -> Lake:
    """A private copy of the fixture lake that a test may change."""
    dst = tmp_path / "lake"
    shutil.copytree(fixture_lake.root, dst)
    return Lake.at(dst)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., AppTest]:
    monkeypatch.setenv("PHARMA_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")

    def run(lake_root: str | Path, page: str | None = None, timeout: float = 90) -> AppTest:
        monkeypatch.setenv("PHARMA_LAKE_URI", str(lake_root))
        at = AppTest.from_file(APP, default_timeout=timeout)
        at.run()
        if page is not None:
            at.switch_page(f"app_pages/{page}.py")
            at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return run
