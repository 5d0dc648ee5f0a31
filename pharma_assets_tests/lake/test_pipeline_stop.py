"""Stopping `pharma-twin pipeline` (Ctrl-C or SIGTERM) stops the command, not just its current
Dagster run: it exits 130 with one message, starts no later run, and a second invocation
finishes the lake exactly once.

Real parts: the installed CLI in a child process, a simulated landing zone, a Delta lake and
a SQLite Dagster instance in temporary folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pharma_assets.lake.landing_scan import scan_landing
from pharma_assets.lake.storage import Lake
from pharma_assets_tests.lake.test_reliability import HANG_GUARD_S, _commits, assert_exactly_once

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stopped_pipeline_stops_and_a_rerun_finishes(
    landing: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    lake_dir, home = tmp_path / "lake", tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "COLUMNS": "300",
    }
    cmd = [sys.executable, "-m", "pharma_assets.cli", "pipeline", "--landing", str(landing)]
    cmd += ["--lake", str(lake_dir), "--batches-per-run", "1"]
    child = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        # stop it inside its first ingestion run (bronze written, more batches to go)
        while _commits(lake_dir, "bronze/telemetry") < 1:
            assert child.poll() is None, "the pipeline ended before it was stopped"
            assert time.monotonic() < deadline, "no bronze commit within the guard time"
            time.sleep(0.01)
        child.send_signal(sig)
        out, _ = child.communicate(timeout=HANG_GUARD_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, out
    assert "pipeline interrupted" in out, out
    assert "batch partitions with new files" not in out, "it went on after the stop"
    # nothing of gold: the stop came before the gold run
    assert _commits(lake_dir, "gold/batch_summary") == 0

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 failed" in again.stdout + again.stderr, again.stdout + again.stderr
    batches = sorted({f.batch_id for f in scan_landing(landing) if f.batch_id})
    assert_exactly_once(Lake.at(lake_dir), landing, batches, redelivered=False)
