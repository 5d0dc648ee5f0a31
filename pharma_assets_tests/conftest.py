"""Session-wide test settings.

Tests that run `pharma-twin pipeline` or a Dagster job also write the GxP audit trail, whose
key and anchor live outside the lake (``PHARMA_GXP_HOME``, default ``~/.config/pharma-twin``).
The whole session gets a private folder so no test touches the user's real key or anchor;
the compliance tests narrow it further to one folder per test.

Quality models trained through the ``ml`` resource (``pharma-twin train``, Dagster jobs
built from ``MlResource.from_env``) choose among ``TEST_MODEL_KINDS`` here, not the
product's five kinds (``PHARMA_QUALITY_MODEL_KINDS``): still a choice among several kinds,
with one boosted-tree kind instead of three, i.e. about a third of the training time. The
choice among all five is tested in ``ml/test_quality.py``.
"""

from __future__ import annotations

import os
import tempfile

import pytest

#: the candidate quality model kinds of tests that do not test the choice itself
TEST_MODEL_KINDS = ("xgb", "ridge", "anchor_linear")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PHARMA_GXP_HOME", tempfile.mkdtemp(prefix="pharma_gxp_test_"))
    os.environ.setdefault("PHARMA_QUALITY_MODEL_KINDS", ",".join(TEST_MODEL_KINDS))


#: session fixtures that build a whole plant (simulated, ingested): the tests that use one
#: run in one xdist worker (``--dist loadgroup``, as ``make test`` runs), so it is built once
#: per run, not once per worker
SHARED_PLANTS = {"ml_plant": "ml_plant", "fixture_lake": "dashboard_lake"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the modules with a ``slow`` test first (whole modules, in their own order, so module
    # fixtures are still built once): under xdist the long tests start early and the short
    # ones fill the end, instead of a long test starting last on one worker
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
    for item in items:
        used = sorted(
            {g for f, g in SHARED_PLANTS.items() if f in getattr(item, "fixturenames", ())}
        )
        if used:
            item.add_marker(pytest.mark.xdist_group("+".join(used)))


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
