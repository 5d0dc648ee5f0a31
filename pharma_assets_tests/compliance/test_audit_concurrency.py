"""Concurrent writers (processes and threads) keep one linear chain and lose no entry."""

from __future__ import annotations

import multiprocessing as mp
import threading

from pharma_assets.compliance.audit import AuditEvent, AuditTrail
from pharma_assets.lake.storage import Lake
from pharma_assets_tests.spawn import start_all

PROCS, BATCHES, PER_BATCH = 3, 4, 25
THREADS, SINGLES = 4, 8


def _process_writer(root: str, wid: int) -> None:
    t = AuditTrail(Lake.at(root))
    for b in range(BATCHES):
        t.append(
            [
                AuditEvent("bulk", f"proc{wid}", record_id=f"p{wid}-b{b}-{i}")
                for i in range(PER_BATCH)
            ]
        )


def test_processes_and_threads_lose_nothing(empty_lake: Lake) -> None:
    root = empty_lake.root
    ctx = mp.get_context("spawn")  # forking after deltalake use can hang (STACK_NOTES)
    procs = [ctx.Process(target=_process_writer, args=(root, w)) for w in range(PROCS)]
    start_all(procs)

    errors: list[BaseException] = []

    def thread_writer(tid: int) -> None:
        try:
            t = AuditTrail(Lake.at(root))
            for i in range(SINGLES):
                t.record("single", f"thread{tid}", record_id=f"t{tid}-{i}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert not errors

    trail = AuditTrail(Lake.at(root))
    df = trail.read()
    expected = {
        f"p{w}-b{b}-{i}" for w in range(PROCS) for b in range(BATCHES) for i in range(PER_BATCH)
    } | {f"t{k}-{i}" for k in range(THREADS) for i in range(SINGLES)}
    assert df.height == len(expected)
    assert set(df["record_id"]) == expected
    assert df["seq"].to_list() == list(range(len(expected)))
    res = trail.verify()
    assert res.ok, res.summary()
    assert res.anchor_seq == len(expected) - 1
    # a batch from one process is contiguous in the chain (one commit, under the lock)
    first = df.filter(df["record_id"].str.starts_with("p0-b0-"))["seq"].to_list()
    assert first == list(range(first[0], first[0] + PER_BATCH))
