"""`make soak`: does the running demo hold up? (issue 17)

Starts the demo's services on a small temporary plant in a temporary folder (own
DAGSTER_HOME, lake, landing zone, MLflow store and audit home; ports 3300/8601, so a
running demo is not disturbed): `dagster dev` (webserver + daemon running the sensors and
schedules), the live simulator and, with ``--streamlit``, the dashboards. The live clock
starts far enough in the past to stay accelerated (``--speed``, default 60x) for the whole
soak. Every ``--interval`` seconds it samples:

- the run queue: runs QUEUED and STARTED, per job;
- latency per hop, for the telemetry files silver took in the interval: landing (file
  mtime) -> bronze (ingest_log.ingested_at) -> silver (end of the run that processed the
  file) -> gold (end of the first successful gold_job run started after that);
  and the files still pending with the age of the oldest;
- how late contamination_live_job runs start after their scheduled time;
- the quarantined share of the interval's readings and the ts_in_future count;
- RSS, process count and open files of each service's process tree (its session);
- lake size, landing size, audit-trail entries.

It writes ``soak.csv`` and ``soak.png`` (matplotlib) to ``--out`` and prints a table.
Pass rule (after a warm-up of the first 10 % of the samples):
- no reading quarantined as ts_in_future;
- the queue stays bounded: never more than 6 runs queued (one per lane and schedule);
- latency stays flat: the landing -> silver median of the last third is at most
  1.5x that of the first third + 15 s (same for gold);
- memory does not grow without bound: total RSS over the last third is at most
  1.25x the maximum over the first third + 150 MB.

Usage: ``python -m benchmarks.soak --minutes 120`` (``make soak MINUTES=120``).

``--workers N`` soaks the live gateway instead of the live file writer: the twin serves the
units over OPC UA in real time (``live --serve opcua --opcua-shard-size S``: one server
process per S units, ports from ``--opcua-port``, default 4850) and ``pharma-twin gateway`` (sources YAML with
``workers: N``, API on :8766) subscribes to every shard, lands telemetry chunks every 5 s
into the soak's landing zone (the Dagster sensors take them from there as from the file
writer) and raises alarms into the soak's lake. Each sample then also reads the gateway's
``/health``: readings/s, sources connected, the largest lag, disk-buffer depth, worker
restarts, readings landed and rejected; and the verdict adds: every source connected in
every sample after the warm-up, no worker restart, the disk buffer bounded (last third
<= 2x the first third's maximum + 1 MB). E.g. an hour of 100 units on 4 shards with two
worker processes: ``python -m benchmarks.soak --minutes 60 --units 100 --workers 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAGE = os.sysconf("SC_PAGE_SIZE")
SCHEDULED_TAG = ".dagster/scheduled_execution_time"  # on every run a schedule launched


# ------------------------------------------------------------------------------ processes
def _stat(pid: str) -> tuple[int, int] | None:
    """(session id, rss pages) of a process from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[3]), int(fields[21])  # session, rss


def session_usage(sids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per service (keyed by its session id): processes, RSS MB and open files."""
    out = {name: {"procs": 0.0, "rss_mb": 0.0, "fds": 0.0} for name in sids}
    by_sid = {sid: name for name, sid in sids.items()}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        st = _stat(pid)
        if st is None or st[0] not in by_sid:
            continue
        u = out[by_sid[st[0]]]
        u["procs"] += 1
        u["rss_mb"] += st[1] * PAGE / 1e6
        with contextlib.suppress(OSError):
            u["fds"] += len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _du_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total / 1e6


# ------------------------------------------------------------------------------- set-up
def _dagster_yaml(home: Path) -> str:
    """The repository's dagster.yaml with its relative folders moved under ``home``."""
    text = (ROOT / "dagster.yaml").read_text()
    return text.replace(".state/dagster", str(home / "state"))


@dataclass
class Soak:
    out: Path
    work: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def landing(self) -> Path:
        return self.work / "landing"

    @property
    def lake(self) -> Path:
        return self.work / "lake"

    def run(self, name: str, cmd: list[str]) -> None:
        log = self.out / f"{name}.log"
        t = time.perf_counter()
        with open(log, "ab") as fh:
            subprocess.run(
                cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, check=True
            )
        print(f"  {name}: {time.perf_counter() - t:.0f} s")

    def start(self, name: str, cmd: list[str]) -> None:
        fh = open(self.out / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        self.procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        print(f"  started {name} (pid {self.procs[name].pid})")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in self.procs.values():
            while time.monotonic() < deadline:
                try:
                    os.killpg(p.pid, 0)
                except ProcessLookupError:
                    break
                p.poll()
                time.sleep(0.2)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            p.poll()


def setup(args: argparse.Namespace) -> Soak:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    home = work / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(_dagster_yaml(home))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PHARMA_LANDING_DIR": str(work / "landing"),
        "PHARMA_LAKE_URI": str(work / "lake"),
        "PHARMA_GROUND_TRUTH_DIR": str(work / "ground_truth"),
        "PHARMA_MLFLOW_URI": f"sqlite:///{work / 'mlflow.db'}",
        "PHARMA_GXP_HOME": str(work / "gxp_home"),
    }
    os.environ["DAGSTER_HOME"] = str(home)  # the sampler reads the same instance
    return Soak(out, work, env)


# ------------------------------------------------------------------------------ sampling
@dataclass
class Sampler:
    soak: Soak
    t0: float
    sids: dict[str, int]
    seen_files: set[str] = field(default_factory=set)
    awaiting_silver: dict[str, tuple[float, str]] = field(default_factory=dict)
    awaiting_gold: dict[str, tuple[float, float]] = field(default_factory=dict)
    future_total: int = 0
    gateway_url: str | None = None  # --workers: the gateway's API

    def sample(self, since: datetime, now: datetime) -> dict[str, Any]:
        import dagster as dg
        import polars as pl

        from pharma_assets.lake.storage import UTC_US, Lake

        row: dict[str, Any] = {
            "t_min": round((time.monotonic() - self.t0) / 60, 2),
            "at": now.isoformat(timespec="seconds"),
        }
        with dg.DagsterInstance.get() as inst:
            for st in ("QUEUED", "STARTED"):
                row[f"runs_{st.lower()}"] = inst.get_runs_count(
                    dg.RunsFilter(statuses=[dg.DagsterRunStatus[st]])
                )
            for job in ("batch_ingest_job", "gold_job", "contamination_live_job"):
                row[f"queued_{job}"] = inst.get_runs_count(
                    dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.QUEUED])
                )
            row["runs_total"] = inst.get_runs_count()
            recs = inst.get_run_records(
                filters=dg.RunsFilter(created_after=now - timedelta(hours=3)), limit=2000
            )
        ends = {r.dagster_run.run_id: r.end_time for r in recs if r.end_time}
        golds = sorted(
            (r.start_time, r.end_time)
            for r in recs
            if r.dagster_run.job_name == "gold_job"
            and r.start_time
            and r.end_time
            and r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        )
        sched_delay = [
            r.start_time - datetime.fromisoformat(sched).timestamp()
            for r in recs
            if r.dagster_run.job_name == "contamination_live_job"
            and r.start_time
            and r.start_time >= since.timestamp()
            and (sched := r.dagster_run.tags.get(SCHEDULED_TAG))
        ]
        row["sched_delay_max_s"] = round(max(sched_delay), 1) if sched_delay else None

        lake = Lake.at(str(self.soak.lake))
        win = pl.col("processed_at") >= pl.lit(since, UTC_US)
        log = lake.read(
            "silver",
            "telemetry_log",
            filter_expr=win,
            columns=["source_file", "rows_in", "rows_quarantined", "run_id"],
        )
        bronze_log = lake.read(
            "bronze",
            "ingest_log",
            columns=["source_file", "ingested_at"],
            filter_expr=pl.col("source") == "telemetry",
        )
        b_at = (
            {}
            if bronze_log is None
            else dict(zip(bronze_log["source_file"], bronze_log["ingested_at"], strict=True))
        )
        lat_b: list[float] = []
        lat_s: list[float] = []
        lat_g: list[float] = []
        rows_in = rows_q = 0
        if log is not None:
            for f, r_in, r_q, run_id in log.iter_rows():
                rows_in += r_in
                rows_q += r_q
                if f in self.seen_files:
                    continue
                self.seen_files.add(f)
                try:
                    landed = (self.soak.landing / f).stat().st_mtime
                except OSError:
                    continue
                if f in b_at:
                    lat_b.append(b_at[f].timestamp() - landed)
                self.awaiting_silver[f] = (landed, run_id)
        # silver: when the run that processed the file ended; gold: when the first gold run
        # started after that ended (files wait here across samples until both are known)
        for f, (landed, run_id) in list(self.awaiting_silver.items()):
            s_end = ends.get(run_id)
            if s_end is not None:
                lat_s.append(s_end - landed)
                self.awaiting_gold[f] = (landed, s_end)
                del self.awaiting_silver[f]
        for f, (landed, s_end) in list(self.awaiting_gold.items()):
            g = next((e for s, e in golds if s >= s_end), None)
            if g is not None:
                lat_g.append(g - landed)
                del self.awaiting_gold[f]
        for name, xs in (("bronze", lat_b), ("silver", lat_s), ("gold", lat_g)):
            row[f"{name}_lat_med_s"] = round(statistics.median(xs), 1) if xs else None
            row[f"{name}_lat_p90_s"] = (
                round(statistics.quantiles(xs, n=10)[-1], 1) if len(xs) >= 2 else None
            )
        row["files_to_silver"] = len(lat_s)
        row["quarantine_share"] = round(rows_q / rows_in, 5) if rows_in else 0.0
        q = lake.read(
            "silver",
            "telemetry_quarantine",
            columns=["failed_check"],
            filter_expr=win & (pl.col("failed_check") == "ts_in_future"),
        )
        fut = 0 if q is None else q.height
        self.future_total += fut
        row["ts_in_future"] = fut
        row["ts_in_future_total"] = self.future_total
        # files landed and not through silver yet, and the oldest one's age
        all_log = lake.read("silver", "telemetry_log", columns=["source_file"])
        done = set() if all_log is None else set(all_log["source_file"].to_list())
        pending = [
            p
            for p in (self.soak.landing / "telemetry").rglob("*.parquet")
            if p.relative_to(self.soak.landing).as_posix() not in done
        ]
        row["pending_files"] = len(pending)
        row["oldest_pending_s"] = (
            round(time.time() - min(p.stat().st_mtime for p in pending), 1) if pending else 0.0
        )
        usage = session_usage(self.sids)
        for name, u in usage.items():
            row[f"{name}_rss_mb"] = round(u["rss_mb"], 1)
            row[f"{name}_procs"] = int(u["procs"])
            row[f"{name}_fds"] = int(u["fds"])
        row["rss_total_mb"] = round(sum(u["rss_mb"] for u in usage.values()), 1)
        row["procs_total"] = int(sum(u["procs"] for u in usage.values()))
        row["lake_mb"] = round(_du_mb(self.soak.lake), 1)
        row["landing_mb"] = round(_du_mb(self.soak.landing), 1)
        audit = lake.read("gxp", "audit_trail")
        row["audit_entries"] = 0 if audit is None else audit.height
        if self.gateway_url:
            row.update(gateway_sample(self.gateway_url))
        return row


def gateway_sample(url: str) -> dict[str, Any]:
    """The gateway's /health as soak columns (None when it does not answer)."""
    from pharma_assets.gateway.health import fetch_health, summarize

    h = fetch_health(url)
    if h is None:
        return {"gw_connected": None}
    s = summarize(h)
    src = h.get("sources") or {}
    return {
        "gw_connected": f"{s['sources_connected']}/{s['sources_total']}",
        "gw_all_connected": int(s["sources_connected"] == s["sources_total"]),
        "gw_readings_per_s": round(s["readings_per_s"], 1),
        "gw_lag_ms_max": round(s["lag_ms_max"], 1),
        "gw_buffer_mb": round(s["buffer_bytes"] / 1e6, 2),
        "gw_landed": s["landed"],
        "gw_rejected": s["rejected"],
        "gw_worker_restarts": int(sum(int(v.get("worker_restarts") or 0) for v in src.values())),
        "gw_reconnects": int(sum(int(v.get("reconnects") or 0) for v in src.values())),
    }


# ------------------------------------------------------------------------------ verdict
def _med(rows: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def verdict(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    body = rows[max(1, len(rows) // 10) :] or rows
    third = max(1, len(body) // 3)
    first, last = body[:third], body[-third:]
    out: list[tuple[str, bool, str]] = []
    fut = rows[-1]["ts_in_future_total"] if rows else 0
    out.append(("no reading quarantined as ts_in_future", fut == 0, f"{fut} readings"))
    qmax = max((r["runs_queued"] for r in rows), default=0)
    out.append(("queue bounded (<= 6 queued)", qmax <= 6, f"max {qmax} queued"))
    for hop in ("silver", "gold"):
        a, b = _med(first, f"{hop}_lat_med_s"), _med(last, f"{hop}_lat_med_s")
        ok = a is not None and b is not None and b <= 1.5 * a + 15
        out.append(
            (f"landing -> {hop} latency flat", ok, f"median first third {a} s, last third {b} s")
        )
    m1 = max((r["rss_total_mb"] for r in first), default=0.0)
    m3 = statistics.mean(r["rss_total_mb"] for r in last) if last else 0.0
    out.append(
        (
            "memory bounded",
            m3 <= 1.25 * m1 + 150,
            f"mean RSS last third {m3:,.0f} MB vs max first third {m1:,.0f} MB",
        )
    )
    if any("gw_connected" in r for r in rows):  # --workers: the gateway's own checks
        down = [r["t_min"] for r in body if not r.get("gw_all_connected")]
        out.append(("gateway: every source connected", not down, f"not at t_min {down[:10]}"))
        restarts = max((r.get("gw_worker_restarts") or 0 for r in rows), default=0)
        out.append(("gateway: no worker restart", restarts == 0, f"{restarts} restarts"))
        b1 = max((r.get("gw_buffer_mb") or 0.0 for r in first), default=0.0)
        b3 = max((r.get("gw_buffer_mb") or 0.0 for r in last), default=0.0)
        out.append(
            (
                "gateway: disk buffer bounded",
                b3 <= 2 * b1 + 1.0,
                f"max last third {b3} MB vs max first third {b1} MB",
            )
        )
    return out


def plot(rows: list[dict[str, Any]], path: Path, services: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_min"] for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    ax[0].plot(t, [r["runs_queued"] for r in rows], label="queued")
    ax[0].plot(t, [r["runs_started"] for r in rows], label="started")
    ax[0].set_ylabel("runs")
    for hop in ("bronze", "silver", "gold"):
        ax[1].plot(t, [r[f"{hop}_lat_med_s"] for r in rows], label=f"landing -> {hop} median")
    ax[1].plot(t, [r["oldest_pending_s"] for r in rows], ":", label="oldest pending file age")
    ax[1].set_ylabel("seconds")
    for s in services:
        ax[2].plot(t, [r[f"{s}_rss_mb"] for r in rows], label=s)
    ax[2].plot(t, [r["rss_total_mb"] for r in rows], "k", label="total")
    ax[2].set_ylabel("RSS MB")
    ax[3].plot(t, [r["quarantine_share"] * 100 for r in rows], label="quarantined %")
    ax[3].plot(t, [r["ts_in_future_total"] for r in rows], label="ts_in_future (total)")
    ax[3].set_ylabel("% / rows")
    ax[3].set_xlabel("minutes")
    for a in ax:
        a.legend(loc="upper left", fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle("pharma-twin soak: the live demo over time")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


COLS = (
    "t_min",
    "runs_queued",
    "runs_started",
    "bronze_lat_med_s",
    "silver_lat_med_s",
    "silver_lat_p90_s",
    "gold_lat_med_s",
    "gold_lat_p90_s",
    "pending_files",
    "sched_delay_max_s",
    "quarantine_share",
    "ts_in_future_total",
    "rss_total_mb",
    "procs_total",
    "lake_mb",
    "audit_entries",
    "gw_connected",
    "gw_readings_per_s",
    "gw_lag_ms_max",
    "gw_buffer_mb",
    "gw_worker_restarts",
)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(" ".join(f"{c[:14]:>14}" for c in COLS))
    for r in rows:
        print(" ".join(f"{'' if r.get(c) is None else r[c]!s:>14}" for c in COLS))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _num(v: str) -> Any:
    if v in ("", "None"):
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def markdown(rows: list[dict[str, Any]], bucket_min: float = 10.0) -> list[str]:
    """The soak as a markdown table, one row per ``bucket_min`` minutes, and the verdict."""
    lines = [
        "| minutes | queued max | started max | landing -> bronze median s | landing -> silver "
        "median s (p90) | landing -> gold median s (p90) | files pending max | contamination "
        "start delay max s | quarantined % | ts_in_future | RSS total MB (max) | processes max "
        "| open files max | lake MB | audit entries |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def med(xs: list[Any]) -> str:
        xs = [x for x in xs if x is not None]
        return f"{statistics.median(xs):.0f}" if xs else "-"

    def mx(xs: list[Any]) -> Any:
        xs = [x for x in xs if x is not None]
        return max(xs) if xs else "-"

    fds = [k for k in rows[0] if k.endswith("_fds")] if rows else []
    i = 0
    while i < len(rows):
        t0 = rows[i]["t_min"]
        b = [r for r in rows[i:] if r["t_min"] < t0 + bucket_min]
        last = b[-1]
        q = sum(r["quarantine_share"] or 0 for r in b) / len(b) * 100
        lines.append(
            f"| {b[0]['t_min']:.0f}-{last['t_min']:.0f} | {mx([r['runs_queued'] for r in b])} | "
            f"{mx([r['runs_started'] for r in b])} | {med([r['bronze_lat_med_s'] for r in b])} | "
            f"{med([r['silver_lat_med_s'] for r in b])} ({med([r['silver_lat_p90_s'] for r in b])}) | "
            f"{med([r['gold_lat_med_s'] for r in b])} ({med([r['gold_lat_p90_s'] for r in b])}) | "
            f"{mx([r['pending_files'] for r in b])} | {mx([r['sched_delay_max_s'] for r in b])} | "
            f"{q:.2f} | {last['ts_in_future_total']} | {mx([r['rss_total_mb'] for r in b]):,.0f} | "
            f"{mx([r['procs_total'] for r in b])} | {mx([sum(r[k] or 0 for k in fds) for r in b])} | "
            f"{last['lake_mb']:,.0f} | {last['audit_entries']:,} |"
        )
        i += len(b)
    lines.append("")
    for what, passed, detail in verdict(rows):
        lines.append(f"- {'PASS' if passed else 'FAIL'}: {what} ({detail})")
    return lines


def gateway_sources_yaml(soak: Soak, args: argparse.Namespace, endpoint: str) -> Path:
    """The soak gateway's sources YAML: an OPC UA source per twin shard, ``workers``."""
    import yaml

    from pharma_assets.gateway.serve import gateway_sources_for, plan_serving
    from pharma_assets.twin.config import load_plant

    plan = plan_serving(load_plant(None).with_units(args.units), ["opcua"], args.opcua_shard_size)
    cfg = {
        "site_id": "SITE01",
        "landing_dir": str(soak.landing),
        "buffer_dir": str(soak.work / "gateway_buffer"),
        "hot_store": "memory",
        "workers": args.workers,
        "api": {"host": "127.0.0.1", "port": args.gateway_port},
        "alarms": {"lake_dir": str(soak.lake), "on_delay_s": 5, "notify_min_priority": "high"},
        "sources": gateway_sources_for(plan, soak.work / "gateway_maps", endpoint),
    }
    path = soak.work / "gateway_sources.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def history_start(units: int, batches: int, live_start: datetime) -> datetime:
    """Where the simulated history must start so that its last batch ends an hour before
    the live clock starts (a history reaching past the wall clock would be quarantined as
    ts_in_future and trip the quarantine alarm)."""
    from pharma_assets.twin.config import load_plant, load_recipes
    from pharma_assets.twin.plant import plan_history

    probe = datetime(2026, 1, 1, tzinfo=UTC)
    plan = plan_history(load_plant().with_units(units), load_recipes(), batches, 42, start=probe)
    span = max(b.end for b in plan.batches) - probe
    return (live_start - span - timedelta(hours=1)).replace(second=0, microsecond=0)


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=120.0, help="soak duration (default 2 h)")
    ap.add_argument("--out", default=f"/tmp/soak_{datetime.now(UTC):%Y%m%dT%H%M%S}")
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6, help="history batches before the live run")
    ap.add_argument("--speed", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--port", type=int, default=3300, help="Dagster UI port")
    ap.add_argument("--streamlit", action="store_true", help="also serve the dashboards (:8601)")
    ap.add_argument("--report", help="print an earlier soak's CSV as markdown, and exit")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="soak the live gateway with this many worker processes (0: sources in the "
        "gateway process); the twin then serves OPC UA in real time instead of writing files",
    )
    ap.add_argument(
        "--opcua-shard-size",
        type=int,
        default=25,
        help="with --workers: units per OPC UA shard process (default 25)",
    )
    ap.add_argument("--gateway-port", type=int, default=8766, help="with --workers: API port")
    ap.add_argument(
        "--opcua-port",
        type=int,
        default=4850,
        help="with --workers: first OPC UA shard port (the shards take consecutive ports)",
    )
    args = ap.parse_args(argv)
    if args.report:
        print("\n".join(markdown(read_csv(Path(args.report)))))
        return 0

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # (a background job ignores SIGINT)
    soak = setup(args)
    print(
        f"soak: {args.minutes:g} min, {args.units} units at x{args.speed:g}; output in {soak.out}"
    )
    # the live clock starts far enough back to stay accelerated for the whole soak; the
    # history ends before it
    live_start = (
        datetime.now(UTC) - timedelta(minutes=args.minutes * (args.speed - 1) + 60)
    ).replace(second=0, microsecond=0)
    hist_start = history_start(args.units, args.batches, live_start)
    pt = str(BIN / "pharma-twin")
    rows: list[dict[str, Any]] = []
    try:
        soak.run(
            "simulate",
            [
                pt,
                "simulate",
                "--units",
                str(args.units),
                "--batches",
                str(args.batches),
                "--seed",
                "42",
                "--out",
                str(soak.landing),
                "--start",
                hist_start.isoformat(),
            ],
        )
        soak.run("pipeline", [pt, "pipeline"])
        soak.start(
            "dagster",
            [
                str(BIN / "dagster"),
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(args.port),
            ],
        )
        gateway_url = None
        if args.workers is None:
            soak.start(
                "live",
                [
                    pt,
                    "live",
                    "--out",
                    str(soak.landing),
                    "--units",
                    str(args.units),
                    "--speed",
                    str(args.speed),
                    "--start",
                    live_start.isoformat(),
                ],
            )
        else:
            endpoint = f"opc.tcp://127.0.0.1:{args.opcua_port}/twin"
            soak.start(
                "live",
                [
                    *(pt, "live", "--serve", f"opcua={endpoint}", "--out", str(soak.landing)),
                    *("--units", str(args.units), "--period", "1s"),
                    *("--opcua-shard-size", str(args.opcua_shard_size)),
                ],
            )
            sources = gateway_sources_yaml(soak, args, endpoint)
            soak.start("gateway", [pt, "gateway", "--sources", str(sources)])
            gateway_url = f"http://127.0.0.1:{args.gateway_port}"
        if args.streamlit:
            soak.start(
                "streamlit",
                [
                    str(BIN / "streamlit"),
                    "run",
                    "dashboards/app.py",
                    "--server.port",
                    "8601",
                    "--server.address",
                    "127.0.0.1",
                    "--server.headless",
                    "true",
                    "--browser.gatherUsageStats",
                    "false",
                ],
            )
        sampler = Sampler(
            soak,
            time.monotonic(),
            {n: p.pid for n, p in soak.procs.items()},
            gateway_url=gateway_url,
        )
        end = time.monotonic() + args.minutes * 60
        since = datetime.now(UTC)
        while time.monotonic() < end:
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
            for name, p in soak.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {p.returncode}; see {soak.out}/{name}.log"
                    )
            now = datetime.now(UTC)
            try:
                row = sampler.sample(since, now)
            except Exception as e:  # a sample can meet a table mid-commit: note it, go on
                print(f"  sample failed: {type(e).__name__}: {e}")
                continue
            since = now
            rows.append(row)
            write_csv(rows, soak.out / "soak.csv")
            print(" ".join(f"{c}={row.get(c)}" for c in COLS), flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was sampled")
    finally:
        soak.stop()
    if not rows:
        print("no samples")
        return 1
    write_csv(rows, soak.out / "soak.csv")
    plot(rows, soak.out / "soak.png", list(soak.procs))
    print_table(rows)
    print(f"load: {os.getloadavg()}")
    ok = True
    for what, passed, detail in verdict(rows):
        ok &= passed
        print(f"  {'PASS' if passed else 'FAIL'}  {what}: {detail}")
    print(f"csv: {soak.out / 'soak.csv'}  plot: {soak.out / 'soak.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
