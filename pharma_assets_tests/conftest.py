"""Session-wide test settings.

Tests that run `pharma-twin pipeline` or a Dagster job also write the GxP audit trail, whose
key and anchor live outside the lake (``PHARMA_GXP_HOME``, default ``~/.config/pharma-twin``).
The whole session gets a private folder so no test touches the user's real key or anchor;
the compliance tests narrow it further to one folder per test.
"""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PHARMA_GXP_HOME", tempfile.mkdtemp(prefix="pharma_gxp_test_"))


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's script runner (AppTest included) puts the page script's module in
    ``sys.modules["__main__"]`` and leaves it there. A later test in the same worker that
    starts a process with multiprocessing's ``spawn`` (the gateway's flusher, its source
    workers, the twin's OPC UA shard servers) would then make the child re-run the page
    script as its main module, and the child dies (exit 1). Restore pytest's own
    ``__main__`` after every test so the order of tests in a worker does not matter."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main
