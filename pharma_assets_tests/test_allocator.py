"""polars' allocator settings chosen by the package (pharma_assets/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pharma_assets

# appended after the package's setting and before polars starts: jemalloc prints its options
_PROBE = (
    "import os, sys; sys.argv = os.environ['PROBE_ARGV'].split(); import pharma_assets; "
    "conf = [os.environ.get('_RJEM_MALLOC_CONF', ''), 'stats_print:true,stats_print_opts:mdablxe']; "
    "os.environ['_RJEM_MALLOC_CONF'] = ','.join(c for c in conf if c); "
    "import polars as pl; pl.DataFrame({'a': [1]})"
)


def _jemalloc_options(env: dict[str, str], argv: str = "pharma-twin pipeline") -> dict[str, str]:
    """jemalloc's options in a fresh process whose command line was ``argv``."""
    base = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF",)}
    base.pop("PHARMA_ALLOCATOR_DEFAULTS", None)
    base.pop("PHARMA_ALLOCATOR", None)
    base["PROBE_ARGV"] = argv
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


def test_batch_processes_keep_their_pages() -> None:
    for argv in ("pharma-twin pipeline --latest 2", "/v/bin/dagster api execute_run {}"):
        opts = _jemalloc_options({}, argv)
        assert opts["narenas"] == "2", argv
        assert (opts["dirty_decay_ms"], opts["muzzy_decay_ms"]) == ("-1", "-1"), argv
    assert "narenas:2" in pharma_assets.ALLOCATOR_CONF


def test_services_keep_polars_defaults() -> None:
    # a long-running process gives freed memory back when idle (kept pages never would be)
    for argv in ("pharma-twin live --serve", "streamlit run dashboards/app.py", "pytest"):
        opts = _jemalloc_options({}, argv)
        assert (opts["dirty_decay_ms"], opts["muzzy_decay_ms"]) == ("500", "1000"), argv
    opts = _jemalloc_options({"PHARMA_ALLOCATOR": "batch"}, "streamlit run app.py")
    assert opts["dirty_decay_ms"] == "-1"  # forced


def test_batch_process_classification() -> None:
    batch = pharma_assets.batch_process
    assert batch(["/x/bin/pharma-twin", "--debug", "pipeline", "--latest", "2"])
    assert batch(["/x/bin/pharma-twin", "import", "--input", "a.csv"])
    assert batch(["/x/pharma_assets/cli.py", "compact"])
    assert batch(["/x/bin/dagster", "api", "execute_step", "{}"])
    assert batch(["/x/dagster/__main__.py", "api", "execute_run", "{}"])
    assert not batch(["/x/bin/pharma-twin", "live", "--serve"])
    assert not batch(["/x/bin/pharma-twin", "audit", "verify"])
    assert not batch(["/x/bin/dagster", "api", "grpc"])  # the code server
    assert not batch(["/x/bin/dagster-webserver", "-p", "3000"])
    assert not batch(["/x/bin/streamlit", "run", "pipeline"])
    assert not batch([])


def test_operator_settings_win() -> None:
    opts = _jemalloc_options({"_RJEM_MALLOC_CONF": "dirty_decay_ms:700"})
    assert opts["dirty_decay_ms"] == "700"
    assert opts["muzzy_decay_ms"] == "1000"  # polars' own default, ours not applied
    for env in ({"PHARMA_ALLOCATOR_DEFAULTS": "1"}, {"PHARMA_ALLOCATOR": "defaults"}):
        opts = _jemalloc_options(env)
        assert (opts["dirty_decay_ms"], opts["muzzy_decay_ms"]) == ("500", "1000"), env


def test_a_wrong_allocator_choice_is_a_one_line_error() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import pharma_assets"],
        env={**os.environ, "PHARMA_ALLOCATOR": "fast"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "PHARMA_ALLOCATOR='fast': use batch or defaults" in out.stderr.strip().splitlines()[-1]
