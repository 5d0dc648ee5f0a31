"""pharma-twin: a digital twin platform for biopharmaceutical manufacturing."""

import os

# polars' allocator (its own jemalloc, read once when polars is first imported, hence here,
# before any module of the package imports polars). polars ships with dirty pages purged
# after 0.5 s and muzzy ones after 1 s: an ingestion group (about 1 M readings, a few
# seconds) frees its frames and the next group faults the same amount back in, zeroed by the
# kernel. Measured on the ingestion benchmark's 8.2 M readings (docs/benchmarks.md, "Where
# the time goes"): page faults and purging were about 30 % of the process CPU. Freed pages
# are now kept for 10 s (decayed by polars' background purging thread), so the next group
# reuses them, and a process that goes idle (a dashboard, the gateway, the Dagster code
# server between runs) gives them back to the OS about 10 s later: with decay disabled
# (-1, stop 23) an idle process held its high-water mark until it exited. Two arenas (one per
# core) keep the high-water mark down. An operator's own _RJEM_MALLOC_CONF wins;
# PHARMA_ALLOCATOR_DEFAULTS=1 keeps polars' defaults.
ALLOCATOR_CONF = "narenas:2,dirty_decay_ms:10000,muzzy_decay_ms:10000"


def allocator_defaults_requested() -> bool:
    """Whether ``PHARMA_ALLOCATOR_DEFAULTS`` asks for polars' own allocator settings."""
    return os.environ.get("PHARMA_ALLOCATOR_DEFAULTS", "") in ("1", "true", "yes")


if not allocator_defaults_requested():
    os.environ.setdefault("_RJEM_MALLOC_CONF", ALLOCATOR_CONF)
