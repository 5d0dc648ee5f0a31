"""Fixtures for the GxP tests: a private key/anchor home per test, a small processed lake.

Every test gets its own ``PHARMA_GXP_HOME`` (audit key and anchor store) in its temporary
folder, so no test touches ``~/.config/pharma-twin``. ``gold_lake`` is a copy of a lake built
once per session from the lake tests' simulated plant (2 units, 3 batches) with
``ingest_all``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pharma_assets.compliance.users import create_user
from pharma_assets.lake.storage import Lake
from pharma_assets_tests.lake.conftest import ingest_all, landing_template  # noqa: F401

PASSWORDS = {
    "admin": "Root-pass-2026!",
    "qa.lead": "Quality-pass-2026",
    "pe.smith": "Engineer-pass-2026",
    "op.jones": "Operator-pass-2026",
    "mx.brown": "Maint-pass-2026",
}
ROLES = {
    "admin": "admin",
    "qa.lead": "qa",
    "pe.smith": "process_engineer",
    "op.jones": "operator",
    "mx.brown": "maintenance",
}


@pytest.fixture(autouse=True)
def gxp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "gxp_home"
    monkeypatch.setenv("PHARMA_GXP_HOME", str(home))
    for var in ("PHARMA_AUDIT_KEY", "PHARMA_AUDIT_KEY_FILE", "PHARMA_AUDIT_ANCHOR"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def empty_lake(tmp_path: Path) -> Lake:
    return Lake.at(tmp_path / "lake")


@pytest.fixture(scope="session")
def gold_lake_template(tmp_path_factory: pytest.TempPathFactory, landing_template: Path) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("gxp_lake") / "lake"
    ingest_all(Lake.at(root), landing_template)
    return root


@pytest.fixture
def gold_lake(gold_lake_template: Path, tmp_path: Path) -> Lake:
    dst = tmp_path / "lake"
    shutil.copytree(gold_lake_template, dst)
    return Lake.at(dst)


def add_users(lake: Lake) -> dict[str, str]:
    """The five role accounts; returns user -> password."""
    create_user(
        lake,
        "admin",
        "Ada Admin",
        "admin",
        PASSWORDS["admin"],
        "system:test",
        "test setup",
        bootstrap=True,
    )
    names = {
        "qa.lead": "Quinn Assurance",
        "pe.smith": "Pat Engineer",
        "op.jones": "Olive Operator",
        "mx.brown": "Max Maintenance",
    }
    for uid, name in names.items():
        create_user(lake, uid, name, ROLES[uid], PASSWORDS[uid], "admin", "test setup")
    return dict(PASSWORDS)


@pytest.fixture
def users_lake(gold_lake: Lake) -> tuple[Lake, dict[str, str]]:
    return gold_lake, add_users(gold_lake)
