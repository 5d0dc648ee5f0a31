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

Likewise the elastic net of a unit class on generic per-tag features (the imported sites of
``test_bring_your_own_data.py``) searches ``TEST_ENET_SEARCH`` (3 folds x 2 mixing ratios)
instead of the product's 5 x 4 (``PHARMA_QUALITY_ENET_SEARCH``): about a third of its
training time. ``test_generic_quality.py``, whose assertions read that model's figures,
trains with the product's search.
"""

from __future__ import annotations

import os
import tempfile

import pytest

#: the candidate quality model kinds of tests that do not test the choice itself
TEST_MODEL_KINDS = ("xgb", "ridge", "anchor_linear")
#: the elastic net's search (folds:l1 ratios) of tests that do not read its figures
TEST_ENET_SEARCH = "3:0.5,1.0"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PHARMA_GXP_HOME", tempfile.mkdtemp(prefix="pharma_gxp_test_"))
    os.environ.setdefault("PHARMA_QUALITY_MODEL_KINDS", ",".join(TEST_MODEL_KINDS))
    os.environ.setdefault("PHARMA_QUALITY_ENET_SEARCH", TEST_ENET_SEARCH)


#: session fixtures that build a plant or lake (simulated, ingested): the tests that use one
#: run in one xdist worker (``--dist loadgroup``, as ``make test`` runs), so it is built once
#: per run, not once per worker
SHARED_PLANTS = {
    "ml_plant": "ml_plant",
    "fixture_lake": "dashboard_lake",
    "gold_lake_template": "gxp_lake",
    "synthetic": "synthetic_batch",
}


def _group_of(item: pytest.Item) -> str | None:
    used = sorted({g for f, g in SHARED_PLANTS.items() if f in getattr(item, "fixturenames", ())})
    return "+".join(used) or None


def _uses_module_fixture(item: pytest.Item) -> bool:
    """Whether the test reads a module-scoped fixture of this test package."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(
        d[-1].scope == "module" and d[-1].func.__module__.startswith(__package__ or "pharma")
        for d in defs
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the modules with a ``slow`` test first (whole modules, in their own order, so module
    # fixtures are still built once): under xdist the long tests start early and the short
    # ones fill the end, instead of a long test starting last on one worker
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
    # xdist groups: the tests of a shared plant in one group; the tests of a module that
    # read one of its module-scoped fixtures in one group too (the module's shared-plant
    # group if it has one, else the module), so a module fixture is built once per run
    groups = {item.nodeid: _group_of(item) for item in items}
    by_module: dict[str, str] = {}
    for item in items:
        g = groups[item.nodeid]
        if g is not None:
            by_module.setdefault(str(item.path), g)
    for item in items:
        if groups[item.nodeid] is None and _uses_module_fixture(item):
            groups[item.nodeid] = by_module.get(str(item.path), item.nodeid.split("::")[0])
    for item in items:
        g = groups[item.nodeid]
        if g is not None:
            item.add_marker(pytest.mark.xdist_group(g))


@pytest.hookimpl(tryfirst=True)  # before xdist's, which sends the ids to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    """``--dist loadgroup`` on pytest 9.2: xdist 3.8 marks a grouped test by appending
    ``@<group>`` to ``item._nodeid``, which pytest 9.2 no longer reads (node ids are
    structured, ``item._id``), so every group was silently spread over the workers (each
    built the shared plants and module fixtures again; pytest-xdist issue #1386, fix not
    released). Put the suffix into the id pytest reports, as xdist did before; a no-op
    where xdist's own suffix already shows."""
    if not session.config.getoption("loadgroup", default=False):  # set on xdist workers
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest before 9.2: xdist's suffix works
        return
    for item in session.items:
        names = sorted({str(m.args[0]) for m in item.iter_markers("xdist_group") if m.args})
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


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
