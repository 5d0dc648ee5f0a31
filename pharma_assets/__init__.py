"""pharma-twin: a digital twin platform for biopharmaceutical manufacturing."""

import os
import sys
from collections.abc import Sequence

# polars' allocator (its own jemalloc, read once when polars is first imported, hence here,
# before any module of the package imports polars). polars ships with dirty pages purged
# after 0.5 s and muzzy ones after 1 s: an ingestion group (about 1 M readings, a few
# seconds) frees its frames and the next group faults the same amount back in, zeroed by the
# kernel. Measured on the ingestion benchmark's 8.2 M readings (docs/benchmarks.md, "Where
# the time goes"): page faults and purging were about 30 % of the process CPU. Kept pages
# are reused instead; two arenas (one per core) keep the high-water mark down. Kept pages are
# never given back, so only batch processes (``batch_process``: they work through data and
# exit) get this setting, and their child processes inherit it; long-running services
# (Streamlit, the gateway, ``pharma-twin live``, Dagster's webserver, daemon and code server)
# keep polars' defaults and give memory back when idle. A 10 s decay for all was measured
# and not taken: same CPU, slower wall (background purging during the writes). An
# operator's own _RJEM_MALLOC_CONF wins; PHARMA_ALLOCATOR=batch|defaults forces either.
ALLOCATOR_CONF = "narenas:2,dirty_decay_ms:-1,muzzy_decay_ms:-1"
# the CLI's commands that work through data and exit (``live`` serves until stopped)
BATCH_COMMANDS = frozenset({"simulate", "import", "pipeline", "compact", "train", "whatif"})
# Dagster's run and step workers (``dagster api execute_run`` / ``execute_step``)
_DAGSTER_WORKERS = frozenset({"execute_run", "resume_run", "execute_step"})


def allocator_defaults_requested() -> bool:
    """Whether polars' own allocator settings are asked for (``PHARMA_ALLOCATOR=defaults``,
    or the older ``PHARMA_ALLOCATOR_DEFAULTS=1``)."""
    return os.environ.get("PHARMA_ALLOCATOR", "") == "defaults" or os.environ.get(
        "PHARMA_ALLOCATOR_DEFAULTS", ""
    ) in ("1", "true", "yes")


def batch_process(argv: Sequence[str]) -> bool:
    """Whether this command line is a batch process (a Dagster run or step worker, or one of
    the CLI's ``BATCH_COMMANDS``) rather than a service or a tool."""
    if not argv:
        return False
    words = [a for a in argv[1:] if not a.startswith("-")]
    prog = os.path.basename(argv[0])
    if prog in ("dagster", "__main__.py") and len(words) >= 2 and words[0] == "api":
        return words[1] in _DAGSTER_WORKERS
    cli = prog == "pharma-twin" or argv[0].replace(os.sep, "/").endswith("pharma_assets/cli.py")
    return cli and bool(words) and words[0] in BATCH_COMMANDS


def _allocator_for_this_process() -> None:
    choice = os.environ.get("PHARMA_ALLOCATOR", "")
    if choice not in ("", "batch", "defaults"):
        raise ValueError(f"PHARMA_ALLOCATOR={choice!r}: use batch or defaults (or leave unset)")
    if allocator_defaults_requested():
        return
    if choice == "batch" or batch_process(sys.argv):
        os.environ.setdefault("_RJEM_MALLOC_CONF", ALLOCATOR_CONF)


_allocator_for_this_process()
