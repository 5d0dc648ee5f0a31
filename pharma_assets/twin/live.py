"""Live mode: run the plant on a real-time or accelerated clock, writing landing chunks.

Each unit runs its planned batches one after another. Every ``chunk_minutes`` of process
time a telemetry chunk is written per running batch; MES events are written when they
happen (batch start, phase change, batch end); LIMS results when the daily sample or the
release assays are due. The clock runs ``speed`` times faster than real time (1 = real
time). Batch ids continue after the highest sequence number already in the landing zone,
so live batches follow a simulated history.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .config import PlantConfig, RecipeBook
from .engine import TRUTH_VARIABLES, Engine
from .history import mes_events, tag_strides
from .landing import (
    chunk_path,
    quality_codes,
    stamp,
    write_fault_labels,
    write_jsonl,
    write_lims_csv,
    write_telemetry_chunk,
)
from .outputs import batch_history_summary, lab_samples, release_assays, telemetry_signals
from .plant import BatchPlan, plan_history

log = logging.getLogger(__name__)
_SEQ = re.compile(r"-B(\d+)$")
_STAMP = re.compile(r"^(\d{8}T\d{6}Z)_")
RESTART_ABORT_REASON = (
    "live session stopped before the batch ended; closed when live mode restarted"
)


def next_sequence(landing: Path, unit_id: str) -> int:
    """1 + the highest batch sequence of ``unit_id`` already in the landing zone."""
    folder = Path(landing) / "mes" / unit_id
    seqs = (
        [int(m.group(1)) for p in folder.glob("*") if (m := _SEQ.search(p.name))]
        if folder.exists()
        else []
    )
    return max(seqs, default=0) + 1


def _stamp_time(path: Path) -> datetime | None:
    m = _STAMP.match(path.name)
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if m else None


def _newest_reading(folder: Path) -> datetime | None:
    """The newest timestamp a batch folder of the landing zone holds: the last reading of its
    newest Parquet telemetry chunk, else the newest file's name stamp (when it was begun)."""
    files = sorted((p for p in folder.glob("*") if _stamp_time(p)), key=lambda p: p.name)
    if not files:
        return None
    newest = _stamp_time(files[-1])
    if files[-1].suffix == ".parquet":
        try:
            ts = pq.read_table(files[-1], columns=["ts"]).column("ts")
            last = max((t for t in ts.to_pylist() if t is not None), default=None)
            if last is not None:
                newest = max(newest, last) if newest else last
        except (OSError, KeyError, ValueError) as e:  # unreadable chunk: silver quarantines it
            log.warning("could not read %s for its newest reading: %s", files[-1], e)
    return newest


def _newest_landed(landing: Path, unit_id: str) -> datetime | None:
    """The newest reading already landed for ``unit_id`` (its highest-numbered batch)."""
    folders = sorted((Path(landing) / "telemetry" / unit_id).glob("*-B*"), key=lambda p: p.name)
    return _newest_reading(folders[-1]) if folders else None


@dataclass(frozen=True)
class OpenBatch:
    """A batch the landing zone shows started (MES batch_start) and never ended."""

    unit_id: str
    batch_id: str
    newest: datetime | None  # its newest landed reading or event
    mes_files: int
    site_id: str | None = None
    area_id: str | None = None


def _event_time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else None


def open_batches(landing: Path, unit_id: str) -> list[OpenBatch]:
    """Batches of ``unit_id`` left running by an earlier live session (stopped or killed)."""
    found: list[OpenBatch] = []
    mes = Path(landing) / "mes" / unit_id
    for folder in sorted(mes.glob("*")) if mes.is_dir() else []:
        events: list[dict[str, Any]] = []
        files = [p for p in folder.glob("*.jsonl") if not p.name.startswith(".")]
        for f in files:
            for line in f.read_text().splitlines():
                try:
                    ev = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:  # a bad record: silver quarantines it
                    ev = None
                if isinstance(ev, dict):
                    events.append(ev)
        types = {str(e.get("event_type")) for e in events}
        if "batch_start" not in types or "batch_end" in types:
            continue
        start = next(e for e in events if e.get("event_type") == "batch_start")
        times = [_event_time(e.get("event_ts")) for e in events]
        times.append(_newest_reading(Path(landing) / "telemetry" / unit_id / folder.name))
        newest = max((t for t in times if t is not None), default=None)
        found.append(
            OpenBatch(
                unit_id, folder.name, newest, len(files), start.get("site_id"), start.get("area_id")
            )
        )
    return found


def close_open_batches(landing: Path, batches: list[OpenBatch], at: datetime) -> None:
    """End each batch an earlier live session left running with an MES ``batch_end``
    (status ``aborted``) at ``at``, after its newest data: a restarted demo has no batch that
    stays 'running' for ever with no new readings (and no freshness alarm that never clears)."""
    for b in batches:
        event = {
            "site_id": b.site_id,
            "area_id": b.area_id,
            "unit_id": b.unit_id,
            "batch_id": b.batch_id,
            "event_type": "batch_end",
            "event_ts": at,
            "status": "aborted",
            "reason": RESTART_ABORT_REASON,
            "event_id": f"{b.batch_id}-E900",
        }
        path = chunk_path(landing, "mes", b.unit_id, b.batch_id, at, b.mes_files + 1, "jsonl")
        write_jsonl(path, [event])
        log.warning(
            "closed %s on %s as aborted at %s: %s",
            b.batch_id,
            b.unit_id,
            at.isoformat(),
            RESTART_ABORT_REASON,
        )


@dataclass
class _Running:
    plan: BatchPlan
    engine: Engine
    rng: np.random.Generator
    k: int = 0
    seq: int = 0
    buffer: list[dict[str, np.ndarray]] = field(default_factory=list)
    history: list[dict[str, np.ndarray]] = field(default_factory=list)
    emitted_events: int = 0


@dataclass
class LiveStats:
    chunks: int = 0
    batches_started: int = 0
    batches_finished: int = 0
    process_hours: float = 0.0
    waited_for_wall_clock_s: float = 0.0  # time spent held back to stay behind the wall clock


def catch_up(t0: datetime, wall0: datetime, speed: float) -> datetime | None:
    """Wall-clock time at which a process clock started at ``t0`` (at wall time ``wall0``)
    and running ``speed`` times real time reaches the wall clock; None if it never does
    (speed <= 1 or no pacing) or already has (t0 >= wall0: it waits, then runs at real time)."""
    behind = (wall0 - t0).total_seconds()
    if speed <= 1 or behind <= 0:
        return None
    return wall0 + timedelta(seconds=behind / (speed - 1))


def _wall_now() -> datetime:
    return datetime.now(UTC)


def run_live(
    plant: PlantConfig,
    recipes: RecipeBook,
    out: Path,
    seed: int = 0,
    speed: float = 60.0,
    period_s: float = 60.0,
    chunk_minutes: float = 10.0,
    hours: float | None = None,
    batches_per_unit: int = 50,
    start: datetime | None = None,
    on_chunk: Callable[[Path], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], datetime] = _wall_now,
) -> LiveStats:
    """Run until ``hours`` of process time have passed (forever when None) or Ctrl-C.

    ``clock`` is the wall clock (injectable for tests): process time never passes it, so
    a clock started in the past runs ``speed`` times real time until it catches up, then at
    real time. ``speed`` 0 means no pacing at all (tests, bulk generation): then ``clock``
    still holds every timestamp back to the wall clock.
    """
    out = Path(out)
    truth_dir = out.parent / "ground_truth"
    started: list[BatchPlan] = []
    dt_h = period_s / 3600.0
    strides = tag_strides(plant, period_s)
    tags = [t.tag for t in plant.tags]
    uoms = [t.uom for t in plant.tags]
    t0 = (start or clock()).replace(microsecond=0)
    wall_start = clock()
    left_open = [b for u in plant.units for b in open_batches(out, u.unit_id)]
    newest = max((b.newest for b in left_open if b.newest is not None), default=None)
    newest = max(
        [t for t in [newest, *(_newest_landed(out, u.unit_id) for u in plant.units)] if t],
        default=None,
    )
    if newest is not None and newest >= t0:  # resume after what already landed: no overlap
        t0 = (newest + timedelta(seconds=period_s)).replace(microsecond=0)
        log.info(
            "live clock: the landing zone already holds data up to %s; resuming after it",
            newest.isoformat(),
        )
    if left_open:
        close_open_batches(out, left_open, t0)
    meet = catch_up(t0, wall_start, speed) if speed > 0 else None
    if t0 > wall_start:
        log.info(
            "live clock: process time starts at %s, %.0f s ahead of the wall clock: waiting "
            "for it, then running at real time",
            t0.isoformat(),
            (t0 - wall_start).total_seconds(),
        )
    elif meet is not None:
        log.info(
            "live clock: process time starts at %s (%s behind the wall clock) and runs x%g; "
            "it reaches the wall clock at about %s (in %.0f min) and runs at real time from then on",
            t0.isoformat(),
            wall_start - t0,
            speed,
            meet.isoformat(timespec="seconds"),
            (meet - wall_start).total_seconds() / 60,
        )
    else:
        log.info(
            "live clock: process time starts at %s, x%g, never ahead of the wall clock",
            t0.isoformat(),
            speed,
        )
    queues: dict[str, list[BatchPlan]] = {}
    for ui, unit in enumerate(plant.units):
        one = plant.with_units(len(plant.units)).model_copy(
            update={"areas": [plant.areas[0].model_copy(update={"units": [unit]})]}
        )
        first = next_sequence(out, unit.unit_id)
        p = plan_history(
            one,
            recipes,
            batches_per_unit,
            seed=seed * 100 + ui,
            start=t0 + timedelta(minutes=5 * ui),
        )
        for b in p.batches:  # renumber after the history already landed
            b.seq = first + b.seq - 1
            b.batch_id = f"{unit.unit_id}-B{b.seq:04d}"
            b.lots["inoculum_lot"] = f"INO-{b.batch_id}"
        queues[unit.unit_id] = p.batches
    stats = LiveStats()
    running: dict[str, _Running] = {}
    lims_due: list[tuple[datetime, Path, list[Any]]] = []  # results not yet due
    ending: list[_Running] = []  # finished batches whose batch_end event is not yet due
    chunk_steps = max(1, round(chunk_minutes / 60.0 / dt_h))
    spd = round(24 / dt_h)
    wall0 = time.monotonic()
    step = 0
    now = t0

    def flush(r: _Running) -> None:
        if not r.buffer:
            return
        rec = {k: np.concatenate([b[k] for b in r.buffer]) for k in r.buffer[0]}
        k_first = r.k - len(rec["T"])
        sig = telemetry_signals(rec, r.engine.inputs, dt_h, k_first, r.rng)
        vals = np.stack([sig[t][:, 0] for t in tags], axis=-1)
        ks = np.arange(k_first, r.k)
        mask = np.stack([(ks % s) == 0 for s in strides], axis=-1)
        qual = quality_codes(r.rng, vals.shape)
        b = r.plan
        ts_us = int(b.start.timestamp() * 1e6) + ks.astype(np.int64) * round(period_s * 1e6)
        r.seq += 1
        path = chunk_path(
            out,
            "telemetry",
            b.unit_id,
            b.batch_id,
            b.start + timedelta(hours=k_first * dt_h),
            r.seq,
            "parquet",
        )
        write_telemetry_chunk(
            path,
            ts_us,
            b.site_id,
            b.unit_id,
            b.batch_id,
            tags,
            uoms,
            vals,
            qual,
            None if mask.all() else mask,
        )
        stats.chunks += 1
        r.buffer.clear()
        if on_chunk:
            on_chunk(path)

    def emit_events(r: _Running, upto: datetime) -> None:
        evs = mes_events(r.plan)
        due = [e for e in evs if e["event_ts"] <= upto]
        new = due[r.emitted_events :]
        if new:
            write_jsonl(
                chunk_path(
                    out,
                    "mes",
                    r.plan.unit_id,
                    r.plan.batch_id,
                    new[0]["event_ts"],
                    r.emitted_events + 1,
                    "jsonl",
                ),
                new,
            )
            r.emitted_events = len(due)

    try:
        while hours is None or step * dt_h < hours:
            now = t0 + timedelta(hours=step * dt_h)
            ahead = (now - clock()).total_seconds()
            if ahead > 0:  # caught up with the wall clock: never write the future
                stats.waited_for_wall_clock_s += ahead
                sleep(ahead)
                continue
            for item in [x for x in lims_due if x[0] <= now]:
                write_lims_csv(item[1], item[2])
                lims_due.remove(item)
            for r in [r for r in ending if r.plan.end <= now]:  # the batch_end event, when due
                emit_events(r, r.plan.end + timedelta(seconds=1))
                ending.remove(r)
            for uid, q in queues.items():
                if uid not in running and q and q[0].start <= now:
                    b = q.pop(0)
                    inputs = b.engine_inputs()
                    running[uid] = _Running(
                        b,
                        Engine(inputs, dt_h=dt_h, seed=seed + b.seq),
                        np.random.default_rng([seed, b.seq]),
                    )
                    stats.batches_started += 1
                    started.append(b)
                    log.info("started %s on %s", b.batch_id, uid)
            for uid in list(running):
                r = running[uid]
                rec = r.engine.run(1)
                r.buffer.append(rec)
                r.history.append({k: rec[k] for k in TRUTH_VARIABLES})
                if r.k % spd == 0:
                    ts = r.plan.start + timedelta(hours=r.k * dt_h + 0.25)
                    rows = [
                        (
                            f"{r.plan.batch_id}-S{r.k // spd:02d}",
                            r.plan.site_id,
                            uid,
                            r.plan.batch_id,
                            ts,
                            "in_process",
                            a,
                            v,
                            u,
                        )
                        for a, v, u in lab_samples(rec, 0, 0, r.rng)
                    ]
                    # the result carries its sample time (15 min on): written when that is past
                    lims_due.append(
                        (
                            ts,
                            chunk_path(
                                out, "lims", uid, r.plan.batch_id, ts, r.k // spd + 1, "csv"
                            ),
                            rows,
                        )
                    )
                r.k += 1
                emit_events(r, now)
                finished = r.k * dt_h >= r.plan.end_h
                if len(r.buffer) >= chunk_steps or finished:
                    flush(r)
                if finished:
                    hist_rec = {k: np.concatenate([h[k] for h in r.history]) for k in r.history[0]}
                    hist = batch_history_summary(hist_rec, r.engine.inputs, 0, r.k, dt_h)
                    rel = release_assays(
                        hist,
                        r.plan.lot_attributes["media_mn_ppb"],
                        r.plan.status == "complete",
                        r.rng,
                    )
                    ts = r.plan.end  # may lie up to one period ahead: written when due
                    lims_due.append(
                        (
                            ts,
                            chunk_path(out, "lims", uid, r.plan.batch_id, ts, 99, "csv"),
                            [
                                (
                                    f"{r.plan.batch_id}-REL",
                                    r.plan.site_id,
                                    uid,
                                    r.plan.batch_id,
                                    ts,
                                    "release",
                                    a,
                                    v,
                                    u,
                                )
                                for a, v, u in rel
                            ],
                        )
                    )
                    ending.append(r)
                    del running[uid]
                    stats.batches_finished += 1
            step += 1
            stats.process_hours = step * dt_h
            if speed > 0:
                lag = (step * period_s / speed) - (time.monotonic() - wall0)
                if lag > 0:
                    sleep(lag)
    except KeyboardInterrupt:
        log.info("live mode interrupted; flushing partial chunks")
    for r in running.values():
        flush(r)
    if lims_due or ending:
        log.info(
            "stopped before %d lab results and %d batch ends were due (not written: they "
            "would lie in the future)",
            len(lims_due),
            len(ending),
        )
    # ground truth of the batches this run started (labels of faults that have begun)
    labels = [f for b in started for f in b.faults if f.onset_ts <= now]
    write_fault_labels(truth_dir / f"live_fault_labels_{stamp(t0)}.parquet", labels)
    return stats


__all__ = ["LiveStats", "next_sequence", "run_live"]
