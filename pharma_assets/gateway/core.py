"""The gateway core: check, map and stamp readings, then feed the hot store and cold path.

Protocol clients (``protocols/``) call ``Gateway.ingest`` with what one message carried;
everything after that is shared: tag and unit mapping (``mapping.SourceMap``), value and
time checks, the per-source sequence number, duplicate and out-of-order detection per
(unit, tag), the disk buffer (before the caller acknowledges the message) and the hot
store. Refused readings are counted per source and reason and appended to
``<buffer_dir>/rejected.jsonl``; nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .alarms import AlarmEngine
from .coldpath import ColdPath, FlushResult, start_flusher_process
from .hotstore import HotStore
from .mapping import MappingError, SourceMap
from .records import BAD, GOOD, REJECT_REASONS, Reading, as_number, now_us

log = logging.getLogger(__name__)

# (source tag name, raw value, unit the source declares or None, source time µs, quality)
Item = tuple[str, Any, str | None, int, int]


@dataclass
class SourceStats:
    """Health of one source, as the API and the Dagster view show it."""

    name: str
    kind: str = ""
    connected: bool = False
    messages: int = 0
    readings_in: int = 0
    accepted: int = 0
    bad_values: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    gaps: int = 0  # sequence gaps seen in the protocol (e.g. Sparkplug seq)
    reconnects: int = 0
    worker_restarts: int = 0  # deaths of the worker process running the source (workers.py)
    last_recv_us: int = 0
    last_error: str = ""
    lag_ms: float = 0.0  # receive minus source time of the last accepted reading

    def as_dict(self) -> dict[str, Any]:
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        d["silent_s"] = (
            round((now_us() - self.last_recv_us) / 1e6, 3) if self.last_recv_us else None
        )
        return d


class Gateway:
    """Shared ingest path of every source (see module docstring)."""

    def __init__(
        self,
        site_id: str,
        hot: HotStore,
        cold: ColdPath | None = None,
        max_future_s: float = 5.0,
        max_age_s: float = 86400.0,
        reject_log: Path | None = None,
    ) -> None:
        self.site_id = site_id
        self.hot = hot
        self.cold = cold
        self.max_future_us = int(max_future_s * 1e6)
        self.max_age_us = int(max_age_s * 1e6)
        self.sources: dict[str, SourceStats] = {}
        self.lock = cold.lock if cold is not None else threading.RLock()
        state = cold.recover() if cold is not None else {"hwm": {}, "seq": {}}
        self._hwm: dict[str, int] = state["hwm"]
        self._seq: dict[str, int] = state["seq"]
        self._reject_path = reject_log or (cold.dir / "rejected.jsonl" if cold else None)
        self.flush_errors = 0
        self._unit_batch: dict[str, str | None] = {}
        # (unit, µs) -> the batch running then, for units no source names a batch of
        self.batch_resolver: Callable[[str, int], str | None] | None = None
        self.last_flush: FlushResult | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._flush_proc: Any = None  # the flusher process (start_flusher(process=True))
        self._flush_stop: Any = None
        self.alarms: AlarmEngine | None = None  # real-time CPP alarms (alarm_service)
        self._rate_mark: tuple[int, int] = (now_us(), 0)  # (time, accepted) for readings/s
        self.readings_per_s = 0.0

    # a source may acknowledge a message when ``ingest`` returns (workers.WorkerLink: only
    # once the parent process has it, ``on_persisted``)
    persists_async = False

    def on_persisted(self, fn: Callable[[], object]) -> None:
        fn()  # ``ingest`` has returned: the readings are in the disk buffer

    def batch_of(self, unit_id: str, at_us: int | None = None) -> str | None:
        """The batch the latest message about ``unit_id`` named (any source that names
        batches), else the one ``batch_resolver`` (the MES files) says runs at ``at_us``:
        sources that know no batch (Modbus skids and pumps) take their unit's batch here."""
        if unit_id in self._unit_batch or self.batch_resolver is None:
            return self._unit_batch.get(unit_id)
        return self.batch_resolver(unit_id, now_us() if at_us is None else at_us)

    def stats(self, name: str, kind: str = "") -> SourceStats:
        s = self.sources.get(name)
        if s is None:
            s = self.sources[name] = SourceStats(name, kind)
        return s

    def _reject(self, st: SourceStats, reason: str, detail: dict[str, Any]) -> None:
        st.rejected[reason] += 1
        if self._reject_path is not None:
            rec = {"reason": reason, "source": st.name, "at_us": now_us(), **detail}
            with open(self._reject_path, "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")

    def ingest(
        self,
        source: str,
        smap: SourceMap,
        device: str,
        batch_id: str | None,
        items: Iterable[Item],
        recv_us: int | None = None,
        names_batch: bool = True,
    ) -> list[Reading]:
        """Check, map, number and store one message's readings; returns those accepted.
        ``names_batch``: the source knows the unit's batch (False: it took ``batch_id``
        from ``batch_of``).

        Returns after the accepted readings are in the disk buffer, so the caller may
        acknowledge the message. Never raises for bad data: refusals are counted.
        """
        recv = now_us() if recv_us is None else recv_us
        st = self.stats(source)
        st.messages += 1
        st.last_recv_us = recv
        try:
            unit = smap.unit(device)
        except MappingError as e:
            items = list(items)
            st.readings_in += len(items)
            for it in items:
                self._reject(st, e.reason, {"device": device, "name": it[0], "error": str(e)})
            return []
        batch = batch_id or None
        if names_batch:
            self._unit_batch[unit] = batch
        accepted: list[Reading] = []
        with self.lock:
            if self.cold is not None and not self.cold.has_room():
                items = list(items)
                st.readings_in += len(items)
                for it in items:
                    self._reject(
                        st, "buffer_full", {"unit_id": unit, "name": it[0], "source_ts_us": it[3]}
                    )
                log.error(
                    "gateway disk buffer full (%d bytes >= max_buffer_bytes %d): refusing "
                    "%d readings of %s; is the landing zone writable?",
                    self.cold.buffer_bytes,
                    self.cold.max_buffer_bytes,
                    len(items),
                    source,
                )
                return []
            seq = self._seq.get(source, 0)
            hwm = self._hwm
            hi, lo = recv + self.max_future_us, recv - self.max_age_us
            n_in = 0
            for name, raw, uom, ts, q in items:
                n_in += 1
                try:
                    res = smap.resolve(name, uom)
                except MappingError as e:
                    self._reject(
                        st,
                        e.reason,
                        {"unit_id": unit, "name": name, "source_ts_us": ts, "error": str(e)},
                    )
                    continue
                reason = "future_ts" if ts > hi else "too_old" if ts < lo else None
                key = f"{unit}|{res.tag}"
                last = hwm.get(key, -1)
                if reason is None and ts <= last:
                    reason = "duplicate" if ts == last else "out_of_order"
                if reason is not None:
                    self._reject(
                        st,
                        reason,
                        {
                            "unit_id": unit,
                            "name": name,
                            "source_ts_us": ts,
                            "recv_ts_us": recv,
                            "last_ts_us": last,
                        },
                    )
                    continue
                num = raw if type(raw) is float and math.isfinite(raw) else as_number(raw)
                if num is None:
                    st.bad_values += 1
                    value, quality = math.nan, BAD
                else:
                    value, quality = res.convert(num), q if q in (0, 1, 2) else BAD
                seq += 1
                accepted.append(
                    Reading(
                        source,
                        seq,
                        self.site_id,
                        unit,
                        batch,
                        res.tag,
                        value,
                        res.uom,
                        ts,
                        recv,
                        quality,
                    )
                )
                hwm[key] = ts
            st.readings_in += n_in
            if accepted and self.cold is not None:
                self.cold.append(accepted)
            self._seq[source] = seq
        st.accepted += len(accepted)
        if accepted:
            st.lag_ms = (recv - accepted[-1].source_ts_us) / 1000
        self.hot.put(accepted)
        if self.alarms is not None and accepted:
            self.alarms.check(accepted)
        return accepted

    # ------------------------------------------------------------ flusher

    def flush(self) -> FlushResult | None:
        """Drain the disk buffer into the landing zone now (also done by the flusher).

        With a flusher process running, only seal: the process lands it (returns None)."""
        if self.cold is None:
            return None
        if self._flush_proc is not None and self._flush_proc.is_alive():
            self.cold.seal_for_flusher()
            return None
        try:
            self.last_flush = self.cold.flush()
        except OSError as e:
            self.flush_errors += 1
            log.error(
                "flush to landing %s failed (readings stay in the disk buffer): %s",
                self.cold.landing,
                e,
            )
            return None
        return self.last_flush

    def start_flusher(self, interval_s: float = 5.0, process: bool = False) -> None:
        """Flush every ``interval_s``: in a thread of this process, or (``process``) seal
        here and let a flusher process write the landing files (``coldpath.run_flusher``),
        so that the Parquet writing does not hold this process's GIL while it ingests."""
        if process and self.cold is not None:
            self._flush_proc, self._flush_stop = start_flusher_process(self.cold)

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.flush()
                proc = self._flush_proc
                if proc is not None and self.cold is not None and not proc.is_alive():
                    log.error("the flusher process died (exit %s)", proc.exitcode)
                    self._flush_proc, self._flush_stop = start_flusher_process(self.cold)

        self._flusher = threading.Thread(target=loop, name="gateway-flusher", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        """Stop the flusher and drain what is buffered."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if self._flush_proc is not None:
            self.flush()  # seal what is left; the process drains it, then exits
            self._flush_stop.set()
            self._flush_proc.join(120)
            if self._flush_proc.is_alive():
                log.error("the flusher process did not stop in 120 s; terminating it")
                self._flush_proc.terminate()
                self._flush_proc.join(10)
            self._flush_proc = None
            if self.cold is not None:
                self.cold.read_counters()
        self.flush()  # whatever is left, in this process
        if self.cold is not None:
            self.cold.close()

    def _read_flusher_errors(self) -> None:
        assert self.cold is not None
        p = self.cold.dir / "flusher.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.flush_errors = max(self.flush_errors, int(json.loads(p.read_text())["errors"]))

    def health(self) -> dict[str, Any]:
        """Sources, buffer depth and cold-path counters (for the API and Dagster)."""
        cold = self.cold
        if cold is not None and self._flush_proc is not None:
            cold.read_counters()  # the flusher process keeps them in state.json
            self._read_flusher_errors()
        t, n = now_us(), sum(s.accepted for s in self.sources.values())
        t0, n0 = self._rate_mark
        if t - t0 >= 1_000_000:  # over the time since the previous call of at least 1 s
            self.readings_per_s = (n - n0) / ((t - t0) / 1e6)
            self._rate_mark = (t, n)
        return {
            "readings_per_s": round(self.readings_per_s, 1),
            "max_buffer_bytes": cold.max_buffer_bytes if cold else 0,
            "at_us": now_us(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": {k: v.as_dict() for k, v in self.sources.items()},
            "buffer_bytes": cold.buffer_bytes if cold else 0,
            "landed": cold.state["landed"] if cold else 0,
            "files": cold.state["files"] if cold else 0,
            "no_batch": cold.state["no_batch"] if cold else 0,
            "flush_errors": self.flush_errors,
        }


__all__ = ["GOOD", "Gateway", "Item", "SourceStats"]
