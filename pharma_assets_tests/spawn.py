"""Starting ``spawn`` processes from a test worker that has also run Streamlit AppTests.

A spawned child re-runs the parent's ``__main__`` module by path before it unpickles its
target. AppTest leaves the dashboard script (``dashboards/app.py``) as ``__main__`` in the
worker, so every child would run the app in bare mode and die before doing its work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest


@contextmanager
def bare_main() -> Iterator[None]:
    """While active, children started with ``spawn`` see an empty ``__main__``."""
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def start_all(procs: Sequence[BaseProcess]) -> None:
    with bare_main():
        for p in procs:
            p.start()


def sigkill_when(
    code: str,
    args: Sequence[str],
    *,
    cwd: Path,
    stderr_path: Path,
    ready: Callable[[], bool],
    what: str,
    hang_guard_s: float,
) -> None:
    """Run ``python -c code args`` and SIGKILL it the moment ``ready()`` is true (polled
    every 2 ms), as a crash at that point would. Fails the test if the child ends first or
    ``ready`` never comes; returns once the child is dead by SIGKILL. ``what`` names the
    awaited state in the failure message."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")])),
    }
    with open(stderr_path, "wb") as err_fh:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_fh,
        )
        try:
            deadline = time.monotonic() + hang_guard_s
            while not ready():
                if child.poll() is not None:
                    pytest.fail(
                        f"child ended ({child.returncode}) before {what}:\n"
                        f"{stderr_path.read_text()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"never reached: {what}")
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(hang_guard_s)
    assert child.returncode == -signal.SIGKILL, stderr_path.read_text()
