"""Wrong paths and bad input on the `pharma-twin` command line (issue 17, item 4): each is
refused with a non-zero exit and ONE line on stderr naming the offending value, creates no
lake and no audit trail; the traceback only with --debug or PHARMA_DEBUG=1."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pharma_assets.cli import app

MAP = {
    "site_id": "SITE01",
    "columns": {"timestamp": "Time", "batch_id": "Batch", "unit_id": "Reactor"},
    "timezone": "UTC",
    "tags": {
        "Temp_K": {"tag": "temperature_c", "from_uom": "K"},
        "pH": {"tag": "ph", "from_uom": "pH"},
    },
}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke the CLI in an empty working folder with no lake/landing environment."""
    monkeypatch.chdir(tmp_path)
    for var in ("PHARMA_LAKE_URI", "PHARMA_LANDING_DIR", "PHARMA_DEBUG", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(app, list(args), input=input)

    return invoke


def _one_line_naming(result, text: str) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def test_pipeline_refuses_a_missing_landing_zone(run, tmp_path: Path) -> None:
    landing, lake = tmp_path / "nonexistent", tmp_path / "lake"
    r = run("pipeline", "--landing", str(landing), "--lake", str(lake))
    assert r.exit_code == 2
    line = _one_line_naming(r, str(landing))
    assert "landing zone" in line and "does not exist" in line
    assert not lake.exists() and not landing.exists()


def test_pipeline_rebuild_refuses_a_missing_lake(run, tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    lake = tmp_path / "no_lake"
    r = run("pipeline", "--landing", str(tmp_path / "landing"), "--lake", str(lake), "--rebuild")
    assert r.exit_code == 2
    _one_line_naming(r, f"lake {lake} does not exist")
    assert not lake.exists()


@pytest.mark.parametrize(
    "cmd",
    [
        ["train"],
        ["compact"],
        ["ebr", "BR01-B0001"],
        ["sign", "BR01-B0001", "--user", "qa.lead", "--reason", "r"],
        ["release", "BR01-B0001", "--decision", "released", "--user", "qa.lead", "--reason", "r"],
        ["backup", "DEST"],
        ["users", "list"],
        ["users", "add", "admin", "--name", "A", "--role", "admin"],
        ["deviation", "list"],
        ["deviation", "auto"],
        ["spec", "check"],
        ["whatif", "BR01-B0001"],
        ["audit", "verify"],
        ["audit", "show"],
        ["audit", "record-materializations"],
        ["audit", "retire-anchor", "--admin", "admin", "--reason", "r", "--yes"],
    ],
)
def test_commands_refuse_a_missing_lake(run, tmp_path: Path, cmd: list[str]) -> None:
    lake = tmp_path / "nonexistent"
    args = [str(tmp_path / a) if a == "DEST" else a for a in cmd]
    r = run(*args, "--lake", str(lake), input="Secret-pass-2026!\n")
    assert r.exit_code == 2, r.output
    line = _one_line_naming(r, f"lake {lake} does not exist")
    assert "run the pipeline first" not in line
    assert not lake.exists(), "no lake (and no audit trail) may be created"
    assert not (tmp_path / "DEST").exists()


def _csv(path: Path, header: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(["2026-01-01T00:00:00Z", "b001", "br01", *(["1.0"] * (len(header) - 3))])
        w.writerow(["2026-01-01T00:10:00Z", "b001", "br01", *(["2.0"] * (len(header) - 3))])
    return path


def test_import_refuses_a_misspelled_mapped_column(run, tmp_path: Path) -> None:
    tag_map = tmp_path / "map.yaml"
    tag_map.write_text(yaml.safe_dump(MAP))
    src = _csv(tmp_path / "h.csv", ["Time", "Batch", "Reactor", "Temp_K", "PH"])  # pH misspelled
    out = tmp_path / "landing"
    r = run(
        "import",
        "--input",
        str(src),
        "--layout",
        "wide",
        "--tag-map",
        str(tag_map),
        "--out",
        str(out),
    )
    assert r.exit_code == 1
    line = _one_line_naming(r, "'pH' not found among the file's columns")
    assert "'PH'" in line and "misspelled" in line
    assert not list(out.rglob("*.parquet")), "nothing written"

    # told to go ahead: imported, with a warning naming what was left out
    r = run(
        "import",
        "--input",
        str(src),
        "--layout",
        "wide",
        "--tag-map",
        str(tag_map),
        "--out",
        str(out),
        "--allow-missing-tags",
    )
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "PH" in r.stderr and "pH" in r.stderr
    # unit and batch IDs are stored upper case whatever the file's case
    assert [p.relative_to(out).parts[:3] for p in out.rglob("*.parquet")] == [
        ("telemetry", "BR01", "B001")
    ]


def test_import_warns_about_unmapped_columns(run, tmp_path: Path) -> None:
    tag_map = tmp_path / "map.yaml"
    tag_map.write_text(yaml.safe_dump(MAP))
    src = _csv(tmp_path / "h.csv", ["Time", "Batch", "Reactor", "Temp_K", "pH", "Agit_rpm"])
    r = run(
        "import",
        "--input",
        str(src),
        "--layout",
        "wide",
        "--tag-map",
        str(tag_map),
        "--out",
        str(tmp_path / "landing"),
    )
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "Agit_rpm" in warn[0] and "NOT imported" in warn[0]


@pytest.mark.parametrize("which", ["input", "tag-map"])
def test_import_missing_file_is_one_line(run, tmp_path: Path, which: str) -> None:
    tag_map = tmp_path / "map.yaml"
    tag_map.write_text(yaml.safe_dump(MAP))
    src = _csv(tmp_path / "h.csv", ["Time", "Batch", "Reactor", "Temp_K", "pH"])
    missing = tmp_path / "missing.csv"
    args = {"input": str(src), "tag-map": str(tag_map), which: str(missing)}
    r = run(
        "import",
        "--input",
        args["input"],
        "--layout",
        "wide",
        "--tag-map",
        args["tag-map"],
        "--out",
        str(tmp_path / "landing"),
    )
    assert r.exit_code == 2
    _one_line_naming(r, f"{missing} does not exist")
    assert not (tmp_path / "landing").exists()


def test_bad_argument_is_one_line(run, tmp_path: Path) -> None:
    r = run("import", "--input", "x.csv", "--layout", "diagonal", "--tag-map", "m.yaml")
    assert r.exit_code == 2
    _one_line_naming(r, "--layout must be wide or long, got 'diagonal'")


def test_debug_shows_the_traceback(run, tmp_path: Path, monkeypatch) -> None:
    lake = str(tmp_path / "nonexistent")
    r = run("--debug", "train", "--lake", lake)
    assert r.exit_code != 0 and r.exception is not None
    assert f"lake {lake} does not exist" in str(r.exception)
    assert "PHARMA_DEBUG" not in os.environ  # --debug does not leak into later commands
    r = run("train", "--lake", lake)
    assert r.exit_code == 2 and r.exception is not None and "Traceback" not in r.output
    monkeypatch.setenv("PHARMA_DEBUG", "1")
    r = run("compact", "--lake", lake)
    assert r.exit_code != 0 and f"lake {lake} does not exist" in str(r.exception)


def test_real_process_prints_one_line_and_the_traceback_only_with_debug(tmp_path: Path) -> None:
    """The installed entry point (not the test runner): stderr is exactly one line."""
    # wide enough that rich does not wrap the path inside the --debug traceback
    env = {k: v for k, v in os.environ.items() if k != "PHARMA_DEBUG"} | {"COLUMNS": "1000"}
    missing = tmp_path / "missing.csv"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(MAP))
    cmd = [
        sys.executable,
        "-m",
        "pharma_assets.cli",
        "import",
        "--input",
        str(missing),
        "--layout",
        "wide",
        "--tag-map",
        str(tmp_path / "m.yaml"),
        "--out",
        str(tmp_path / "l"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: input file {missing} does not exist"]
    d = subprocess.run(
        [*cmd[:3], "--debug", *cmd[3:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert d.returncode != 0 and "Traceback" in d.stderr and str(missing) in d.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--batches", "1", "--period", "abc"],
        ["simulate", "--batches", "1", "--start", "yesterday-ish"],
        ["simulate", "--batches", "1", "--plant", "missing_plant.yaml"],
        ["live", "--hours", "1", "--plant", "missing_plant.yaml"],
    ],
)
def test_bad_simulator_arguments_are_one_line(run, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "landing"
    r = run(*args, "--out", str(out))
    assert r.exit_code != 0
    _one_line_naming(r, args[-1])
    assert not out.exists()


def test_train_on_a_lake_without_tables_is_one_line(run, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    r = run("train", "--lake", str(lake))
    assert r.exit_code == 2
    _one_line_naming(r, f"lake {lake} has no table silver/batches: run `pharma-twin pipeline`")
    assert list(lake.iterdir()) == []


def test_simulate_warns_when_the_history_runs_into_the_future(run, tmp_path: Path) -> None:
    """An explicit --start that puts batches past the wall clock: the files are written (a
    plant may be simulated ahead on purpose) but the CLI says what silver will do with them."""
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%MZ")
    r = run("simulate", "--batches", "2", "--units", "1", "--start", soon, "--out", "landing")
    assert r.exit_code == 0, r.output
    assert "2 of 2 batches run past now" in " ".join(r.output.split())
    past = run(
        "simulate",
        "--batches",
        "1",
        "--units",
        "1",
        "--start",
        "2025-01-05T00:00Z",
        "--out",
        "landing2",
    )
    assert past.exit_code == 0 and "run past now" not in past.output
