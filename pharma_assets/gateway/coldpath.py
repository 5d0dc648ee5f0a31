"""Cold path: readings -> local disk buffer -> landing telemetry chunks, exactly once.

Every accepted reading is appended to a write-ahead segment on local disk *before* the
protocol client acknowledges it (``wal/<n>.jsonl``, one JSON line per incoming message).
Every ``flush_interval_s`` the open segment is sealed and the sealed segments are drained
in order into landing telemetry chunks in the existing format
(``pharma_assets.twin.landing.write_telemetry_chunk``, one file per unit and batch)::

    1. plan: group the segment's readings by (unit, batch); choose each file's path
       (first time stamp, next free sequence number of its folder) and write the plan
       to ``flush.json`` (atomic rename);
    2. write the chunk files (each atomic: hidden temporary name, then rename);
    3. save ``state.json`` (counters, high-water marks, per-source sequence numbers);
    4. delete the segment, then ``flush.json``.

A crash anywhere in 1-4 leaves either no plan (the segment is planned again, nothing was
written) or a plan whose files are rewritten on restart to the same paths with the same
content: nothing is lost and nothing lands twice. While the landing zone cannot be written
the segments stay on disk (store-and-forward) and drain in order when it returns; when
they reach ``max_buffer_bytes`` new readings are refused (counted as ``buffer_full``) and
the oldest data is kept.

Readings taken while no batch runs on the unit (``batch_id`` None) feed the hot store
only: landing telemetry is per batch. They are counted as ``no_batch``, not dropped
silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..process.vocabulary import CANONICAL_TAGS
from ..twin.landing import chunk_path, write_telemetry_chunk
from .records import BAD, Reading

log = logging.getLogger(__name__)

_SEG = re.compile(r"^(\d{12})\.jsonl$")
_SEQ = re.compile(r"_(\d+)\.parquet$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TAG_ORDER = {t: i for i, t in enumerate(CANONICAL_TAGS)}


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _next_seq(folder: Path) -> int:
    seqs = [int(m.group(1)) for p in folder.glob("*.parquet") if (m := _SEQ.search(p.name))]
    return max(seqs, default=0) + 1


@dataclass
class FlushResult:
    segments: int = 0
    files: list[Path] = field(default_factory=list)
    readings_landed: int = 0
    no_batch: int = 0


class ColdPath:
    """The disk buffer and flusher of one gateway (see module docstring).

    ``state`` (after ``recover``) holds ``hwm`` ("unit|tag" -> last source time accepted),
    ``seq`` (source -> last sequence number) and counters ``landed``, ``files``,
    ``no_batch``; the gateway keeps ``hwm`` and ``seq`` current as it accepts readings.
    """

    def __init__(
        self,
        buffer_dir: Path,
        landing_dir: Path,
        max_buffer_bytes: int = 1 << 30,
        fsync: bool = False,
    ) -> None:
        self.dir = Path(buffer_dir)
        self.wal = self.dir / "wal"
        self.landing = Path(landing_dir)
        self.max_buffer_bytes = max_buffer_bytes
        self.fsync = fsync
        self.wal.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = {"hwm": {}, "seq": {}, "landed": 0, "files": 0, "no_batch": 0}
        self._fd: int | None = None
        self.lock = threading.RLock()  # shared with the gateway's ingest critical section
        self._seg_no = 0
        self.buffer_bytes = 0
        self.track_marks = False  # set in a flusher process (see run_flusher)

    # ------------------------------------------------------------ recovery

    def _segments(self) -> list[tuple[int, Path]]:
        segs = [(int(m.group(1)), p) for p in self.wal.iterdir() if (m := _SEG.match(p.name))]
        return sorted(segs)

    @staticmethod
    def read_segment(path: Path) -> list[Reading]:
        """Readings of a segment; a torn last line (crash mid-append) is ignored."""
        out: list[Reading] = []
        data = path.read_bytes()
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                if data.endswith(line):  # incomplete final line: never acknowledged
                    log.warning("%s: ignoring a torn final record (%d bytes)", path, len(line))
                    continue
                raise
            src, site, unit, batch, recv, rows = msg
            out.extend(
                Reading(
                    src, sq, site, unit, batch, tag, math.nan if v is None else v, uom, ts, recv, q
                )
                for sq, tag, v, uom, ts, q in rows
            )
        return out

    @contextlib.contextmanager
    def flushing(self) -> Iterator[None]:
        """Hold ``flush.lock`` (an exclusive flock): one flusher at a time, across processes
        (a flusher process orphaned by a SIGKILL finishes its segment before a restarted
        gateway recovers)."""
        fd = os.open(self.dir / "flush.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def recover(self) -> dict[str, Any]:
        """Finish an interrupted flush, then rebuild high-water marks and sequence numbers.

        Returns ``state``; call before ``append``.
        """
        with self.flushing():
            return self._recover()

    def _recover(self) -> dict[str, Any]:
        p = self.dir / "state.json"
        if p.exists():
            self.state.update(json.loads(p.read_text()))
        segs = self._segments()
        for _, seg in segs:
            for r in self.read_segment(seg):
                key = f"{r.unit_id}|{r.tag}"
                if r.source_ts_us > self.state["hwm"].get(key, -1):
                    self.state["hwm"][key] = r.source_ts_us
                if r.seq > self.state["seq"].get(r.source, 0):
                    self.state["seq"][r.source] = r.seq
        self._seg_no = (segs[-1][0] + 1) if segs else int(self.state.get("next_segment", 0))
        self.buffer_bytes = sum(s.stat().st_size for _, s in segs)
        # marks first (above), then finish the plan: its segment is deleted once landed
        plan = self.dir / "flush.json"
        if plan.exists():
            manifest = json.loads(plan.read_text())
            seg = self.wal / manifest["segment"]
            if seg.exists():
                log.info("finishing the flush of %s interrupted by a crash", seg.name)
                self._flush_segment(seg, manifest)
            else:
                plan.unlink()
        return self.state

    # ------------------------------------------------------------ append

    def _open(self) -> int:
        if self._fd is None:
            path = self.wal / f"{self._seg_no:012d}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def has_room(self) -> bool:
        return self.buffer_bytes < self.max_buffer_bytes

    def append(self, readings: list[Reading]) -> None:
        """Append one message's readings to the open segment (one write, one line).

        Call under ``lock``, together with the high-water-mark update."""
        if not readings:
            return
        r0 = readings[0]  # one message: same source, site, unit, batch and receive time
        rows = [
            (
                r.seq,
                r.tag,
                None if r.value != r.value else r.value,
                r.uom,
                r.source_ts_us,
                r.quality,
            )
            for r in readings
        ]
        msg = (r0.source, r0.site_id, r0.unit_id, r0.batch_id, r0.recv_ts_us, rows)
        line = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        fd = self._open()
        os.write(fd, line)
        if self.fsync:
            os.fsync(fd)
        self.buffer_bytes += len(line)

    def seal(self) -> None:
        """Close the open segment; the next append starts a new one (call under ``lock``)."""
        if self._fd is not None:
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._seg_no += 1

    # ------------------------------------------------------------ flush

    def _plan(self, seg: Path, readings: list[Reading]) -> dict[str, Any]:
        first_ts: dict[tuple[str, str], int] = {}
        for r in readings:
            if r.batch_id is not None:
                k = (r.unit_id, r.batch_id)
                if r.source_ts_us < first_ts.get(k, 1 << 62):
                    first_ts[k] = r.source_ts_us
        files = []
        next_seq: dict[Path, int] = {}
        for (unit, batch), first in sorted(first_ts.items()):
            folder = self.landing / "telemetry" / unit / batch
            if folder not in next_seq:
                next_seq[folder] = _next_seq(folder)
            first_dt = _EPOCH + timedelta(microseconds=first)
            path = chunk_path(
                self.landing, "telemetry", unit, batch, first_dt, next_seq[folder], "parquet"
            )
            next_seq[folder] += 1
            files.append({"unit_id": unit, "batch_id": batch, "path": str(path)})
        return {"segment": seg.name, "files": files}

    def _write_group(self, path: Path, rs: list[Reading]) -> None:
        ts = np.fromiter((r.source_ts_us for r in rs), dtype=np.int64, count=len(rs))
        uniq_ts, t_row = np.unique(ts, return_inverse=True)
        tags = sorted({r.tag for r in rs}, key=_TAG_ORDER.__getitem__)
        col = {t: i for i, t in enumerate(tags)}
        shape = (len(uniq_ts), len(tags))
        values = np.full(shape, np.nan)
        quality = np.full(shape, BAD, dtype=np.int8)
        mask = np.zeros(shape, dtype=bool)
        for r, i in zip(rs, t_row, strict=True):
            j = col[r.tag]
            values[i, j], quality[i, j], mask[i, j] = r.value, r.quality, True
        write_telemetry_chunk(
            path,
            uniq_ts,
            rs[0].site_id,
            rs[0].unit_id,
            str(rs[0].batch_id),
            tags,
            [CANONICAL_TAGS[t] for t in tags],
            values,
            quality,
            mask=None if mask.all() else mask,
        )

    def _flush_segment(self, seg: Path, manifest: dict[str, Any] | None) -> FlushResult:
        res = FlushResult(segments=1)
        readings = self.read_segment(seg)
        plan_path = self.dir / "flush.json"
        if manifest is None:
            manifest = self._plan(seg, readings)
            _atomic_json(plan_path, manifest)
        by_group: dict[tuple[str, str | None], list[Reading]] = {}
        for r in readings:
            by_group.setdefault((r.unit_id, r.batch_id), []).append(r)
        for f in manifest["files"]:
            rs = by_group[(f["unit_id"], f["batch_id"])]
            self._write_group(Path(f["path"]), rs)
            res.files.append(Path(f["path"]))
            res.readings_landed += len(rs)
        res.no_batch = sum(len(v) for (_, b), v in by_group.items() if b is None)
        with self.lock:
            if self.track_marks:  # a flusher process: its state.json carries the marks
                hwm, seqs = self.state["hwm"], self.state["seq"]
                for r in readings:
                    key = f"{r.unit_id}|{r.tag}"
                    if r.source_ts_us > hwm.get(key, -1):
                        hwm[key] = r.source_ts_us
                    if r.seq > seqs.get(r.source, 0):
                        seqs[r.source] = r.seq
            self.state["landed"] += res.readings_landed
            self.state["files"] += len(res.files)
            self.state["no_batch"] += res.no_batch
            self.state["next_segment"] = self._seg_no
            snapshot = json.dumps(self.state)
        tmp = self.dir / ".state.json.tmp"
        tmp.write_text(snapshot)
        os.replace(tmp, self.dir / "state.json")
        size = seg.stat().st_size
        seg.unlink()
        plan_path.unlink()
        self.buffer_bytes = max(0, self.buffer_bytes - size)
        return res

    def flush(self) -> FlushResult:
        """Seal the open segment and drain every sealed segment into landing, in order.

        Raises ``OSError`` when the landing zone cannot be written; the segments stay and
        the next call retries them first.
        """
        with self.lock:
            self.seal()
            boundary = self._seg_no
        with self.flushing():
            return self._drain(boundary)

    # ------------------------------------------------------------ flusher process

    def seal_for_flusher(self) -> int:
        """Seal the open segment and tell the flusher process (``sealed``: every segment
        below this number may be drained); recount the buffer's bytes (the flusher deletes
        the segments it landed). Returns the boundary."""
        with self.lock:
            self.seal()
            boundary = self._seg_no
            _atomic_json(self.dir / "sealed", boundary)
        size = 0
        for p in self.wal.iterdir():
            with contextlib.suppress(FileNotFoundError):
                size += p.stat().st_size
        self.buffer_bytes = size
        return boundary

    def read_counters(self) -> None:
        """Landed/files/no_batch as the flusher process last saved them (``state.json``)."""
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            st = json.loads((self.dir / "state.json").read_text())
            for k in ("landed", "files", "no_batch"):
                self.state[k] = st.get(k, self.state[k])

    def _drain(self, boundary: int) -> FlushResult:
        """Land every segment numbered below ``boundary``, in order (hold ``flushing``)."""
        total = FlushResult()
        plan_path = self.dir / "flush.json"
        for n, seg in self._segments():
            if n >= boundary:
                break
            manifest = json.loads(plan_path.read_text()) if plan_path.exists() else None
            if manifest is not None and manifest["segment"] != seg.name:
                raise RuntimeError(f"{plan_path} plans {manifest['segment']}, expected {seg.name}")
            r = self._flush_segment(seg, manifest)
            total.segments += 1
            total.files += r.files
            total.readings_landed += r.readings_landed
            total.no_batch += r.no_batch
        return total

    def close(self) -> None:
        self.seal()


def run_flusher(
    buffer_dir: Path,
    landing_dir: Path,
    parent_pid: int,
    stop: Any,
    fsync: bool = False,
    poll_s: float = 0.1,
) -> None:
    """The flusher process: drain the segments the gateway sealed (``sealed``) into the
    landing zone, so that writing Parquet never competes with ingest for the gateway's GIL.
    It owns ``state.json`` while it runs (counters, and the marks of what it landed: with
    the segments not yet landed they rebuild the gateway's marks on restart). Exits when
    ``stop`` is set (after draining what was sealed) or when the gateway process is gone
    (a SIGKILL: it finishes the segment in hand, the restarted gateway recovers the rest)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s flusher %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the gateway stops us in order
    cold = ColdPath(buffer_dir, landing_dir, fsync=fsync)
    cold.track_marks = True
    errors = 0
    with cold.flushing():
        p = cold.dir / "state.json"
        if p.exists():
            cold.state.update(json.loads(p.read_text()))
    while True:
        if os.getppid() != parent_pid:
            log.warning("gateway process %d is gone; flusher stops", parent_pid)
            return
        stopping = stop.is_set()
        try:
            boundary = int(json.loads((cold.dir / "sealed").read_text()))
        except (FileNotFoundError, ValueError):
            boundary = 0
        if any(n < boundary for n, _ in cold._segments()):
            cold._seg_no = boundary  # next_segment in state.json
            try:
                with cold.flushing():
                    cold._drain(boundary)
            except OSError as e:
                errors += 1
                log.error("flush to landing %s failed (segments stay): %s", cold.landing, e)
                _atomic_json(cold.dir / "flusher.json", {"errors": errors, "last_error": str(e)})
                time.sleep(1.0)
                continue
        if stopping:
            return
        time.sleep(poll_s)


def start_flusher_process(cold: ColdPath) -> tuple[Any, Any]:
    """Start ``run_flusher`` for ``cold`` in a new (spawned) process: (process, stop event)."""
    ctx = mp.get_context("spawn")  # not fork: the gateway has network threads
    stop = ctx.Event()
    proc = ctx.Process(
        target=run_flusher,
        args=(cold.dir, cold.landing, os.getpid(), stop, cold.fsync),
        name="gateway-flusher",
        daemon=True,
    )
    proc.start()
    return proc, stop


__all__ = ["ColdPath", "FlushResult", "run_flusher", "start_flusher_process"]
