"""A recommended recipe becomes a recipe only through a signed request and QA's approval."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pharma_assets.compliance import recipe_requests as rr
from pharma_assets.compliance.changecontrol import history as cc_history
from pharma_assets.compliance.users import PermissionDeniedError
from pharma_assets.lake.storage import Lake
from pharma_assets.optimise.recipe import current_settings, recipe_with
from pharma_assets.twin import config
from pharma_assets.twin.config import load_recipes

from .conftest import add_users


@pytest.fixture
def setup(empty_lake: Lake, tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "recipes.yaml"
    shutil.copy(Path(config.__file__).parent / "config" / "recipes_default.yaml", path)
    pw = add_users(empty_lake)
    fb14 = load_recipes(path).get("MAB-A-FB14")
    new = recipe_with(fb14, current_settings(fb14) | {"shift_day": 6.4})
    return empty_lake, path, pw, new


def test_request_changes_nothing_until_qa_approves(setup) -> None:  # type: ignore[no-untyped-def]
    lake, path, pw, new = setup
    before = path.read_text()
    row = rr.request(
        lake,
        path,
        new,
        {"verified_gain": 0.063},
        "pe.smith",
        pw["pe.smith"],
        "twin recipe optimisation, verified +6.3 %",
    )
    assert path.read_text() == before
    assert rr.pending(lake)["request_id"].to_list() == [row["request_id"]]
    with pytest.raises(PermissionDeniedError):  # an engineer cannot approve
        rr.approve(lake, row["request_id"], "pe.smith", pw["pe.smith"], "self-approval")
    assert path.read_text() == before
    done = rr.approve(lake, row["request_id"], "qa.lead", pw["qa.lead"], "adopt as version 4")
    assert done["state"] == "approved" and done["change_id"].startswith("CC-")
    fb14 = load_recipes(path).get("MAB-A-FB14")
    assert fb14.version == new.version and fb14.setpoints.temperature_shift_day == 6.4
    assert cc_history(lake, "recipes")["change_id"].to_list() == [done["change_id"]]
    assert rr.pending(lake).height == 0
    with pytest.raises(rr.RequestError, match="already approved"):
        rr.approve(lake, row["request_id"], "qa.lead", pw["qa.lead"], "again")


def test_a_stale_request_is_refused_and_a_rejection_is_signed(setup) -> None:  # type: ignore[no-untyped-def]
    lake, path, pw, new = setup
    row = rr.request(lake, path, new, {}, "pe.smith", pw["pe.smith"], "proposal")
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(rr.RequestError, match="stale"):
        rr.approve(lake, row["request_id"], "qa.lead", pw["qa.lead"], "adopt")
    out = rr.reject(lake, row["request_id"], "qa.lead", pw["qa.lead"], "file changed")
    assert out["state"] == "rejected" and out["signature_id"].startswith("SIG-")
    with pytest.raises(rr.RequestError, match="must be version"):
        rr.request(
            lake,
            path,
            load_recipes(path).get("MAB-A-FB14"),
            {},
            "pe.smith",
            pw["pe.smith"],
            "same version",
        )
