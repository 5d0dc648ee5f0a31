"""IDs on the command line are case-insensitive (issue 17): user IDs are lower case, batch
IDs upper case, whatever the operator types."""

from __future__ import annotations

from typer.testing import CliRunner

from pharma_assets.cli import app
from pharma_assets.compliance.users import get_user
from pharma_assets.lake.storage import Lake


def test_user_and_batch_ids_are_normalised(gold_lake: Lake) -> None:
    runner = CliRunner()
    root = gold_lake.root
    r = runner.invoke(
        app,
        ["users", "add", "Boss", "--name", "Bo Boss", "--role", "admin", "--lake", root],
        input="Chief-pass-2026!\n",
    )
    assert r.exit_code == 0, r.output
    assert "created boss" in r.output and get_user(gold_lake, "boss") is not None
    r = runner.invoke(
        app,
        [
            "users",
            "add",
            " QA.Lead ",
            "--name",
            "Quinn QA",
            "--role",
            "qa",
            "--admin",
            "BOSS",
            "--lake",
            root,
        ],
        input="Chief-pass-2026!\nQuality-2026-x\n",
    )
    assert r.exit_code == 0, r.output
    assert get_user(gold_lake, "qa.lead") is not None
    r = runner.invoke(
        app,
        [
            "release",
            "br01-b0001",
            "--decision",
            "released",
            "--user",
            "Qa.Lead",
            "--reason",
            "ok",
            "--lake",
            root,
        ],
        input="Quality-2026-x\n",
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("BR01-B0001 released by Quinn QA")
