"""Protocol sources in worker processes (``workers: N`` in the sources YAML).

asyncua is pure Python: one process decoding the notifications of hundreds of OPC UA
units at 1 Hz is CPU bound, and every source in it shares one GIL (500 units over 10
shards in one process: p50 28 s, 5.9 % of readings never delivered). With ``workers``
the OPC UA and MQTT Sparkplug B sources are spread over N child processes (multiprocessing
``spawn``). A child runs its sources unchanged (asyncua clients, the paho subscriber,
Sparkplug alias resolution and birth certificates, batch ids), with a ``WorkerLink`` in
place of the ``Gateway``: what a source would pass to ``Gateway.ingest`` is collected and
sent to the parent over a pipe, one pickled list per few milliseconds. The parent keeps
everything that makes the readings canonical and exactly once: the tag and unit mapping,
the checks, sequence numbers, duplicate detection, disk buffer, hot store, alarms and the
cold path (``Gateway.ingest``, the same code as in one process).

* MQTT (QoS 1) is acknowledged to the broker only after the parent has put the message's
  readings in its disk buffer: the child's paho client runs with ``manual_ack`` and acks
  when the parent confirms the list that carried the message (``WorkerLink.on_persisted``).
  A child or the gateway killed at any moment leaves unacknowledged messages with the
  broker, which redelivers them; the parent refuses those it already has as duplicates.
* A child that dies is restarted with backoff (1 s doubling to ``restart_max_delay_s``,
  back to 1 s after a minute alive); each death counts a gap and a worker restart on each
  of its sources (``/health``). The parent waits on all children at once
  (``multiprocessing.connection.wait``), so one slow or dead child never blocks another.
* A child exits when its pipe to the parent closes (the gateway died or stopped).
* Modbus sources stay in the gateway process (a poll a second per device costs little,
  and they take batch context from the parent's state, ``Gateway.batch_of``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from .core import Gateway, Item, SourceStats
from .records import REJECT_REASONS, now_us

log = logging.getLogger(__name__)

# Counters a source keeps itself (the rest are counted by Gateway.ingest in the parent);
# the child sends their increments.
_CHILD_COUNTERS = ("messages", "readings_in", "gaps", "reconnects")
SEND_EVERY_S = 0.005  # coalescing window of a child's lists (the burst of one publish)
STATS_EVERY_S = 0.5


def distributable(kind: str) -> bool:
    """Sources that run in worker processes (OPC UA and MQTT); Modbus stays in the parent."""
    return kind in ("opcua", "mqtt_sparkplug")


def resolve_workers(workers: int | str, n_sources: int) -> int:
    """``workers`` as a number: ``auto`` is one per core, at most one per source that can
    run in a worker (0 when there is none)."""
    if workers == "auto":
        return min(os.cpu_count() or 1, n_sources)
    return max(0, int(workers))


def assign(sources: Sequence[Any], n: int) -> list[list[Any]]:
    """Spread ``sources`` over ``n`` workers, round robin in their order (OPC UA shards and
    MQTT edge-node sources are alike in load; order is stable, so a source keeps its worker
    and its MQTT client id across restarts)."""
    out: list[list[Any]] = [[] for _ in range(n)]
    for i, s in enumerate(sources):
        out[i % n].append(s)
    return [w for w in out if w]


# ------------------------------------------------------------------ child side


class WorkerLink:
    """What a source in a child process sees as its ``Gateway``: ``ingest`` queues the
    message for the parent; ``stats`` are local and their increments go to the parent."""

    persists_async = True  # sources: ack a message only in ``on_persisted``

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sources: dict[str, SourceStats] = {}
        self._sent: dict[str, dict[str, Any]] = {}
        self._pending: list[tuple[Any, ...]] = []
        self._callbacks: list[tuple[int, Callable[[], object]]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next = 1  # number of the list being collected
        self._confirmed = 0
        self._confirmed_cv = threading.Condition()
        self.closed = threading.Event()  # stopping: the sender sends what is left, ends
        self.gone = False  # the parent's end of the pipe closed

    def stats(self, name: str, kind: str = "") -> SourceStats:
        s = self.sources.get(name)
        if s is None:
            s = self.sources[name] = SourceStats(name, kind)
        return s

    def batch_of(self, unit_id: str, at_us: int | None = None) -> str | None:
        return None  # the parent's ingest knows; Modbus (which asks) stays in the parent

    def ingest(
        self,
        source: str,
        smap: Any,  # the parent maps with its own copy
        device: str,
        batch_id: str | None,
        items: Iterable[Item],
        recv_us: int | None = None,
        names_batch: bool = True,
    ) -> list[Any]:
        call = (source, device, batch_id, list(items), recv_us or now_us(), names_batch)
        with self._lock:
            self._pending.append(call)
        self._wake.set()
        return []

    def on_persisted(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` once the parent has every message queued so far in its disk buffer."""
        with self._lock:
            self._callbacks.append((self._next, fn))
        self._wake.set()

    def _stats_delta(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, st in self.sources.items():
            prev = self._sent.get(name) or {}
            cur = {k: getattr(st, k) for k in _CHILD_COUNTERS}
            cur["rejected"] = dict(st.rejected)
            d: dict[str, Any] = {k: cur[k] - prev.get(k, 0) for k in _CHILD_COUNTERS}
            d["rejected"] = {
                r: n - (prev.get("rejected") or {}).get(r, 0) for r, n in cur["rejected"].items()
            }
            d["connected"], d["last_error"], d["kind"] = st.connected, st.last_error, st.kind
            self._sent[name] = cur
            out[name] = d
        return out

    def send_loop(self) -> None:
        """Send the queued messages (one list per ``SEND_EVERY_S``) and the stats, until
        ``closed`` (then once more, with whatever is left)."""
        last_stats = 0.0
        while True:
            self._wake.wait(STATS_EVERY_S)
            done = self.closed.is_set()
            if not done:
                time.sleep(SEND_EVERY_S)  # let the rest of the burst arrive
            self._wake.clear()
            with self._lock:
                calls, self._pending = self._pending, []
                n = self._next
                waiting = any(k == n for k, _ in self._callbacks)
                if calls or waiting:
                    self._next += 1
            try:
                if calls or waiting:
                    self.conn.send(("b", n, calls))
                if done or time.monotonic() - last_stats >= STATS_EVERY_S:
                    self.conn.send(("s", self._stats_delta()))
                    last_stats = time.monotonic()
            except (OSError, EOFError, ValueError):
                self.gone = True
                return
            if done:
                return

    def wait_confirmed(self, timeout_s: float) -> None:
        """Read the parent's confirmations until every queued message is confirmed (the
        sender keeps sending meanwhile) or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while not self.gone and time.monotonic() < deadline:
            self._wake.set()
            with self._lock:
                if not self._pending and not self._callbacks:
                    return
            try:
                if self.conn.poll(0.05):
                    msg = self.conn.recv()
                    if msg[0] == "a":
                        self.on_ack(msg[1])
            except (EOFError, OSError):
                self.gone = True

    def on_ack(self, n: int) -> None:
        with self._lock:
            due = [fn for k, fn in self._callbacks if k <= n]
            self._callbacks = [(k, fn) for k, fn in self._callbacks if k > n]
        for fn in due:
            try:
                fn()
            except Exception:
                log.exception("acknowledging a message failed")
        with self._confirmed_cv:
            self._confirmed = n
            self._confirmed_cv.notify_all()


def worker_main(
    conn: Connection, sources: list[Any], site_id: str, buffer_dir: Path, log_level: int
) -> None:
    """Entry point of a worker process: run ``sources`` until the parent says stop or
    its end of the pipe closes."""
    from .service import build_source

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's; it stops us
    logging.basicConfig(level=log_level, format="%(asctime)s worker %(process)d %(message)s")
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.WARNING)
    link = WorkerLink(conn)
    sender = threading.Thread(target=link.send_loop, name="worker-send", daemon=True)
    sender.start()
    srcs = [build_source(cast(Gateway, link), sc, site_id, buffer_dir) for sc in sources]
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                log.warning("worker: the gateway went away; stopping")
                link.gone = True
                break
            if msg[0] == "a":
                link.on_ack(msg[1])
            elif msg[0] == "stop":
                break
    finally:
        # OPC UA first (each hands over what it holds); MQTT keeps running until the parent
        # confirmed what was queued, so those messages are acknowledged to the broker
        # (what arrives after is not, and is redelivered after a restart)
        mqtt = [s for s in srcs if getattr(s, "async_ack", False)]
        for s in srcs:
            if s not in mqtt:
                with contextlib.suppress(Exception):
                    s.stop()
        link.wait_confirmed(10)
        for s in mqtt:
            with contextlib.suppress(Exception):
                s.stop()
        link.closed.set()
        link._wake.set()
        sender.join(10)
        with contextlib.suppress(OSError):
            conn.close()


# ------------------------------------------------------------------ parent side


@dataclass
class _Worker:
    idx: int
    sources: list[Any]
    proc: Any = None
    conn: Connection | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = 0.0
    restart_at: float = 0.0
    delay_s: float = 1.0
    restarts: int = 0
    alive: bool = False


class WorkerPool:
    """Run ``sources`` (configs) in ``n`` worker processes feeding ``gateway``."""

    def __init__(
        self,
        gateway: Gateway,
        sources: Sequence[Any],
        n: int,
        site_id: str,
        buffer_dir: Path,
        restart_max_delay_s: float = 30.0,
    ) -> None:
        self.gw, self.site_id, self.buffer_dir = gateway, site_id, Path(buffer_dir)
        self.restart_max_delay_s = restart_max_delay_s
        self.smaps = {sc.name: sc.source_map() for sc in sources}
        for sc in sources:
            gateway.stats(sc.name, sc.kind)
        self.workers = [_Worker(i, ss) for i, ss in enumerate(assign(sources, n))]
        self._ctx = mp.get_context("spawn")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0

    # -- lifecycle

    def start(self) -> None:
        for w in self.workers:
            self._spawn(w)
        self._thread = threading.Thread(target=self._loop, name="gateway-workers", daemon=True)
        self._thread.start()

    def _spawn(self, w: _Worker) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        p = self._ctx.Process(
            target=worker_main,
            args=(child, w.sources, self.site_id, self.buffer_dir, logging.getLogger().level),
            name=f"gateway-worker-{w.idx}",
            daemon=True,
        )
        p.start()
        child.close()
        w.proc, w.conn, w.alive, w.started_at = p, parent, True, time.monotonic()
        log.info("worker %d (pid %d): %s", w.idx, p.pid, ", ".join(s.name for s in w.sources))

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask every child to stop, ingest what they still send, then join them."""
        self._stop.set()
        for w in self.workers:
            if w.alive and w.conn is not None:
                with w.send_lock, contextlib.suppress(OSError, ValueError):
                    w.conn.send(("stop",))
        if self._thread is not None:
            self._thread.join(timeout_s)
        for w in self.workers:
            if w.proc is not None:
                w.proc.join(5)
                if w.proc.is_alive():
                    log.error("worker %d did not stop; terminating it", w.idx)
                    w.proc.terminate()
                    w.proc.join(5)
            for sc in w.sources:
                self.gw.stats(sc.name).connected = False

    # -- the receiving thread

    def _loop(self) -> None:
        while True:
            live = [w for w in self.workers if w.alive]
            if self._stop.is_set() and not live:
                return
            objs: list[Any] = [w.conn for w in live] + [w.proc.sentinel for w in live]
            if not objs:
                time.sleep(0.2)
            ready = wait(objs, timeout=0.2) if objs else []
            for w in live:
                if w.conn in ready:
                    try:
                        self._handle(w, w.conn.recv())
                    except (EOFError, OSError):
                        self._dead(w)
                elif w.proc.sentinel in ready:
                    self._dead(w)
            if not self._stop.is_set():
                now = time.monotonic()
                for w in self.workers:
                    if not w.alive and now >= w.restart_at:
                        self._spawn(w)

    def _handle(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        if msg[0] == "b":
            _, n, calls = msg
            for source, device, batch_id, items, recv_us, names_batch in calls:
                try:
                    self.gw.ingest(
                        source, self.smaps[source], device, batch_id, items, recv_us, names_batch
                    )
                except Exception as e:  # keep the other children going; make it visible
                    self.gw.stats(source).last_error = f"{type(e).__name__} ingesting: {e}"
                    log.exception("ingesting a worker's message of %s failed", source)
            self.batches += 1
            assert w.conn is not None
            with w.send_lock, contextlib.suppress(OSError, ValueError):
                w.conn.send(("a", n))
        elif msg[0] == "s":
            for name, d in msg[1].items():
                st = self.gw.stats(name, d.get("kind", ""))
                for k in _CHILD_COUNTERS:
                    setattr(st, k, getattr(st, k) + d[k])
                for r, k in d["rejected"].items():
                    if r in REJECT_REASONS:
                        st.rejected[r] += k
                st.connected = d["connected"]
                if d["last_error"]:
                    st.last_error = d["last_error"]

    def _dead(self, w: _Worker) -> None:
        """A child exited: ingest what it sent before, count the gap, plan its restart."""
        assert w.conn is not None and w.proc is not None
        with contextlib.suppress(EOFError, OSError):
            while w.conn.poll(0):
                self._handle(w, w.conn.recv())
        with contextlib.suppress(OSError):
            w.conn.close()
        w.proc.join(5)
        w.alive = False
        if self._stop.is_set():
            return
        code = w.proc.exitcode
        if time.monotonic() - w.started_at > 60:
            w.delay_s = 1.0
        w.restarts += 1
        w.restart_at = time.monotonic() + w.delay_s
        for sc in w.sources:
            st = self.gw.stats(sc.name)
            st.connected = False
            st.gaps += 1
            st.worker_restarts += 1
            st.last_error = (
                f"worker process {w.proc.pid} died (exit {code}); restarting in {w.delay_s:g} s"
            )
        log.error(
            "worker %d (pid %d, %s) died with exit code %s; restarting in %g s",
            w.idx,
            w.proc.pid,
            ", ".join(s.name for s in w.sources),
            code,
            w.delay_s,
        )
        w.delay_s = min(w.delay_s * 2, self.restart_max_delay_s)

    def health(self) -> dict[str, Any]:
        return {
            "workers": len(self.workers),
            "alive": sum(1 for w in self.workers if w.alive),
            "restarts": sum(w.restarts for w in self.workers),
            "pids": [w.proc.pid if w.alive and w.proc is not None else None for w in self.workers],
            "sources": [[s.name for s in w.sources] for w in self.workers],
        }


__all__ = [
    "WorkerLink",
    "WorkerPool",
    "assign",
    "distributable",
    "resolve_workers",
    "worker_main",
]
