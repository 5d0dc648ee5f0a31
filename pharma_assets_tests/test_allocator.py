"""polars' allocator settings chosen by the package (pharma_assets/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pharma_assets

# appended after the package's setting and before polars starts: jemalloc prints its options
_PROBE = (
    "import os, pharma_assets; "
    "conf = [os.environ.get('_RJEM_MALLOC_CONF', ''), 'stats_print:true,stats_print_opts:mdablxe']; "
    "os.environ['_RJEM_MALLOC_CONF'] = ','.join(c for c in conf if c); "
    "import polars as pl; pl.DataFrame({'a': [1]})"
)


def _jemalloc_options(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF",)}
    base.pop("PHARMA_ALLOCATOR_DEFAULTS", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    opts = {}
    for line in out.stderr.splitlines():
        line = line.strip()
        if line.startswith("opt.") and ":" in line:
            k, v = line.split(":", 1)
            opts[k[4:]] = v.split("(")[0].strip()
    assert opts, out.stderr[-2000:]
    return opts


def test_polars_allocator_keeps_its_pages() -> None:
    opts = _jemalloc_options({})
    assert opts["narenas"] == "2"
    assert opts["dirty_decay_ms"] == "10000"
    assert opts["muzzy_decay_ms"] == "10000"
    assert opts["background_thread"] == "true"  # polars' own: purges while the process idles
    assert "narenas:2" in pharma_assets.ALLOCATOR_CONF


# a process that freed a large frame and then idles (as a dashboard or the gateway does
# between bursts): its RSS, sampled every 0.5 s for up to 60 s, in MB
_IDLE_PROBE = """
import time, pharma_assets, polars as pl
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
df = pl.DataFrame({"a": pl.int_range(0, 30_000_000, eager=True)})
df = df.with_columns(b=pl.col("a").cast(pl.String))
peak = rss()
del df
t0 = time.monotonic()
while time.monotonic() - t0 < 60 and rss() > peak / 4:
    time.sleep(0.5)
print(round(peak), round(rss()), round(time.monotonic() - t0, 1))
"""


def test_idle_process_gives_freed_memory_back() -> None:
    base = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    base.pop("PHARMA_ALLOCATOR_DEFAULTS", None)
    out = subprocess.run(
        [sys.executable, "-c", _IDLE_PROBE],
        env=base,
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )
    peak, after, waited = (float(x) for x in out.stdout.split())
    assert peak > 400, out.stdout  # the frame was really allocated
    # the freed pages went back to the OS (with decay disabled they never do: RSS stays at peak)
    assert after < peak / 4, (peak, after, waited)


def test_operator_settings_win() -> None:
    opts = _jemalloc_options({"_RJEM_MALLOC_CONF": "dirty_decay_ms:700"})
    assert opts["dirty_decay_ms"] == "700"
    assert opts["muzzy_decay_ms"] == "1000"  # polars' own default, ours not applied
    opts = _jemalloc_options({"PHARMA_ALLOCATOR_DEFAULTS": "1"})
    assert (opts["dirty_decay_ms"], opts["muzzy_decay_ms"]) == ("500", "1000")
