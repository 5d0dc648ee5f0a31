"""Starting ``spawn`` processes from a test worker that has also run Streamlit AppTests.

A spawned child re-runs the parent's ``__main__`` module by path before it unpickles its
target. AppTest leaves the dashboard script (``dashboards/app.py``) as ``__main__`` in the
worker, so every child would run the app in bare mode and die before doing its work.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.process import BaseProcess


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
