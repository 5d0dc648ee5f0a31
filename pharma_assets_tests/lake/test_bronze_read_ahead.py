"""bronze's read-ahead (``bronze._Prefetch``): landing order, bounded rows ahead, early stop."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import polars as pl

from pharma_assets.lake import bronze


def _reader(rows: int, log: list[tuple[str, Any]], lock: threading.Lock):
    def read(f: Any) -> bronze._Landed:
        with lock:
            log.append(("read", f))
        return bronze._Landed(f, datetime.now(UTC), parsed=pl.DataFrame({"x": range(rows)}))

    return read


def test_files_come_in_landing_order_at_most_a_group_ahead() -> None:
    log: list[tuple[str, Any]] = []
    lock = threading.Lock()
    files = [f"f{i:02d}" for i in range(30)]
    ahead = bronze._Prefetch(files, _reader(100, log, lock), max_rows=300)  # type: ignore[arg-type]
    got = []
    try:
        for item in ahead:
            time.sleep(0.01)  # a slow consumer: the reader must wait for it
            with lock:
                taken = len(got) + 1
                read = sum(1 for k, _ in log if k == "read")
            # at most 300 rows (3 files) parsed and not yet taken, plus the one being read
            assert read - taken <= 4, (read, taken)
            got.append(item.f)
    finally:
        ahead.close()
    assert got == files


def test_an_early_stop_does_not_hang_and_reads_no_further() -> None:
    log: list[tuple[str, Any]] = []
    lock = threading.Lock()
    files = [f"f{i:02d}" for i in range(50)]
    ahead = bronze._Prefetch(files, _reader(100, log, lock), max_rows=200)  # type: ignore[arg-type]
    for n, _ in enumerate(ahead):
        if n == 2:
            break
    ahead.close()
    assert len(log) <= 3 + 2 + 1
    assert not ahead._thread.is_alive()
