"""A `pharma-twin pipeline` killed mid-run leaves no run STARTED for ever (issue 18).

A real subprocess runs ``run_pipeline`` against an on-disk test instance and is SIGKILLed
while its first run is STARTED; the next ``run_pipeline`` in this process marks that run
failed (with the reason) and completes the work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from pharma_assets.pipeline import PID_TAG, fail_orphaned_runs, run_pipeline

from .conftest import lakehouse_for

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys
import dagster as dg
from pharma_assets.defs.lakehouse.resources import LakehouseResource
from pharma_assets.pipeline import run_pipeline
run_pipeline(LakehouseResource(lake_uri=sys.argv[1], landing_dir=sys.argv[2]), dg.DagsterInstance.get())
"""


def test_a_run_left_started_by_a_killed_pipeline_is_marked_failed_and_the_next_completes(
    landing: Path, tmp_path: Path
) -> None:
    home, lake_dir = tmp_path / "dagster_home", tmp_path / "lake"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        env = {**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home)}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(lake_dir), str(landing)], env=env)
        started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
        deadline = time.monotonic() + 300
        try:
            while not instance.get_runs(filters=started):
                assert proc.poll() is None, f"the pipeline ended (exit {proc.returncode}) first"
                assert time.monotonic() < deadline, "no run started in time"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        (killed,) = instance.get_runs(filters=started)
        assert killed.tags[PID_TAG] == str(proc.pid)

        result = run_pipeline(lakehouse_for(landing, lake_dir), instance)

        assert result.orphaned == [killed.run_id]
        run = instance.get_run_by_id(killed.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"pid {proc.pid}" in failure[-1].message
        assert result.ok and result.runs
        assert not instance.get_runs(filters=started)
        for rid in result.runs:
            r = instance.get_run_by_id(rid)
            assert r is not None and r.status == dg.DagsterRunStatus.SUCCESS
        # a live process's runs are left alone: this process has none in progress now
        assert fail_orphaned_runs(instance) == []
