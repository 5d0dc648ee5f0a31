"""Live-view benchmarks (issue 12): alarm latency and WebSocket fan-out.

``alarms``: one process runs the gateway core with the alarm service (on-delay 0, a
temporary lake), the API (uvicorn, /ws/live) and a webhook listener on 127.0.0.1; a
WebSocket client watches /ws/live. ``units`` units send their 6 CPPs every second; every
few seconds one unit's temperature crosses its PAR. Measured per crossing, from the
reading's source time: until the alarm is in a /ws/live message the client received
(``visible``) and until the webhook listener received the notice (``notified``).

``fanout``: separate processes sharing Redis: one ingest process puts ``units`` x 20 tags
into a RedisHotStore every second (source time = now), ``procs`` fan-out processes serve
/ws/live (``pharma-twin gateway-api --hot-store redis://...``), and client processes hold
``clients`` WebSocket connections spread over the fan-out processes. Measured per
message: client receive time minus the newest source time in it (source -> client).

    python -m benchmarks.bench_live [--only alarms|fanout] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np

REDIS = "redis://127.0.0.1:6379/0"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _wait_http(url: str, timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


# ------------------------------------------------------------------ alarms


def bench_alarms(units: int = 20, crossings: int = 20, every_s: float = 3.0) -> dict[str, Any]:
    import uvicorn
    import websockets

    from pharma_assets.compliance.users import create_user
    from pharma_assets.gateway.alarm_service import AlarmService
    from pharma_assets.gateway.alarms import AlarmSettings
    from pharma_assets.gateway.api import make_app
    from pharma_assets.gateway.core import Gateway
    from pharma_assets.gateway.hotstore import MemoryHotStore
    from pharma_assets.gateway.mapping import SourceMap
    from pharma_assets.gateway.notify import WebhookNotifier
    from pharma_assets.gateway.records import GOOD, now_us
    from pharma_assets.lake.specs import load_spec
    from pharma_assets.lake.storage import Lake

    spec = load_spec()
    tmp = Path(tempfile.mkdtemp(prefix="bench_alarms_"))
    lake = Lake.at(tmp / "lake")
    create_user(
        lake,
        "admin",
        "Ada Admin",
        "admin",
        "Adm1n-Pass-Word-93",
        "system:bench",
        "bench",
        bootstrap=True,
    )

    class Production:
        def phase_at(self, unit_id: str, batch_id: str, ts_us: int) -> tuple[str, int]:
            return ("production", ts_us - 10 * 3600 * 1_000_000)

    hooks: dict[str, int] = {}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["event"] == "activated":
                hooks.setdefault(body["alarm_id"], now_us())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hot = MemoryHotStore()
    gw = Gateway("SITE01", hot)
    svc = AlarmService(
        lake,
        spec,
        Production(),
        AlarmSettings(on_delay_s=0),
        [WebhookNotifier(f"http://127.0.0.1:{hook.server_port}/hook")],
        "low",
        flush_interval_s=2.0,
        open_deviations=False,
    )
    gw.alarms = svc.engine
    svc.engine.sinks.append(lambda _e: hot.set_doc("alarms", svc.engine.open_alarms()))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(hot, None, svc), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    _wait_http(f"http://127.0.0.1:{port}/health")
    mid = {}
    for t in spec.cpp_tags:
        lim = spec.tags[t].limits("production")
        assert lim.nor is not None
        mid[t] = (lim.nor[0] + lim.nor[1]) / 2
    par_hi = spec.tags["temperature_c"].limits("production").par[1]  # type: ignore[index]
    smap = SourceMap("bench", {})
    crossing_ts: dict[str, int] = {}  # unit -> source time of its PAR crossing
    seen: dict[str, int] = {}
    stop = threading.Event()

    def feeder() -> None:
        k, out = 0, set()
        t_next = time.monotonic()
        while not stop.is_set():
            ts = now_us()
            if k % int(every_s) == 0 and len(crossing_ts) < crossings:
                u = f"U{len(crossing_ts) % units:03d}"
                if u not in out:
                    crossing_ts[u + f"#{len(crossing_ts)}"] = ts
                    out.add(u)
            for i in range(units):
                u = f"U{i:03d}"
                vals = dict(mid)
                if u in out:
                    vals["temperature_c"] = par_hi + 1.0
                gw.ingest(
                    "bench", smap, u, f"{u}-B1", [(t, v, None, ts, GOOD) for t, v in vals.items()]
                )
            # a crossing lasts 2 s, then the unit returns (and its alarm is acknowledged away)
            for key, t0 in list(crossing_ts.items()):
                u = key.split("#")[0]
                if u in out and ts - t0 > 2_000_000:
                    out.discard(u)
            k += 1
            t_next += 1.0
            time.sleep(max(0.0, t_next - time.monotonic()))

    async def watch() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/live", max_size=None) as ws:
            while not stop.is_set():
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 2))
                except TimeoutError:
                    continue
                t = now_us()
                for a in msg.get("alarms", []):  # deltas carry alarms when they changed
                    seen.setdefault(a["alarm_id"], t)

    th = threading.Thread(target=feeder, daemon=True)
    th.start()
    load0 = _uptime()
    runner = threading.Thread(target=lambda: asyncio.run(watch()), daemon=True)
    runner.start()
    deadline = time.monotonic() + crossings * every_s + 30
    while time.monotonic() < deadline and len(crossing_ts) < crossings:
        time.sleep(0.5)
    time.sleep(8)
    stop.set()
    th.join(5)
    runner.join(5)
    svc.close()
    server.should_exit = True
    hook.shutdown()
    # alarm ids carry the unit and the crossing's source time (second resolution)
    vis, notif = [], []
    from pharma_assets.gateway.alarm_service import read_events

    ev = read_events(lake)
    act = ev.filter(ev["event"] == "activated")
    for r in act.iter_rows(named=True):
        src = int(r["last_ts"].timestamp() * 1e6)
        if r["alarm_id"] in seen:
            vis.append((seen[r["alarm_id"]] - src) / 1000)
        if r["alarm_id"] in hooks:
            notif.append((hooks[r["alarm_id"]] - src) / 1000)
    return {
        "units": units,
        "crossings": len(crossing_ts),
        "alarms": act.height,
        "visible_n": len(vis),
        "visible_p50_ms": _pct(vis, 50),
        "visible_p99_ms": _pct(vis, 99),
        "visible_max_ms": max(vis, default=float("nan")),
        "notified_n": len(notif),
        "notified_p50_ms": _pct(notif, 50),
        "notified_p99_ms": _pct(notif, 99),
        "notified_max_ms": max(notif, default=float("nan")),
        "load": f"{load0} / {_uptime()}",
    }


# ------------------------------------------------------------------ fan-out


def ingest_role(prefix: str, units: int, seconds: float, hz: float = 1.0) -> None:
    from pharma_assets.gateway.hotstore import RedisHotStore
    from pharma_assets.gateway.records import Reading, now_us

    hot = RedisHotStore(REDIS, prefix=prefix)
    t_next = time.monotonic()
    end = t_next + seconds
    k = 0
    while time.monotonic() < end:
        ts = now_us()
        hot.put(
            [
                Reading(
                    "bench", k, "SITE01", f"U{u:03d}", "B", f"tag{j:02d}", float(k + j), "x", ts, ts
                )
                for u in range(units)
                for j in range(20)
            ]
        )
        k += 1
        t_next += 1.0 / hz
        time.sleep(max(0.0, t_next - time.monotonic()))


def client_role(urls: list[str], n: int, seconds: float, out: Path) -> None:
    import websockets

    lat: list[float] = []
    errors = 0
    nbytes = [0]
    first_error: list[str] = []

    async def one(url: str) -> None:
        nonlocal errors
        try:
            async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 5)
                    except TimeoutError:
                        continue
                    t = time.time_ns() // 1000
                    m = json.loads(raw)
                    # deltas carry only the values that changed: their newest source time
                    # is the value just pushed (health-only deltas carry no value)
                    newest = max((v[1] for u in m["units"].values() for v in u.values()), default=0)
                    if newest and not m.get("full"):
                        lat.append((t - newest) / 1000)
                        nbytes[0] += len(raw)
        except Exception as e:
            errors += 1
            first_error.append(f"{type(e).__name__}: {e}")

    async def main() -> None:
        await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(n)))

    asyncio.run(main())
    out.write_text(
        json.dumps({"lat": lat, "errors": errors, "bytes": nbytes[0], "error": first_error[:1]})
    )


CPP_VIEW = "tags=" + ",".join(f"tag{j:02d}" for j in range(6))  # as the Live page asks


def bench_fanout(
    clients: int,
    procs: int,
    units: int = 10,
    seconds: float = 30.0,
    per_unit: bool = False,
    hz: float = 1.0,
    client: str = "python",
) -> dict[str, Any]:
    """``per_unit``: client i watches unit i % units (``/ws/live?unit=U``), else every unit's
    6 CPPs as the Live page's grid (``/ws/live?tags=...``). ``hz``: how often every tag
    changes (the API snapshots every 0.2 s, so up to 5 messages per client per second).
    ``client``: "python" (``websockets``, at most 250 connections per process) or "node"
    (Node's built-in WebSocket, ``benchmarks/ws_clients.mjs``, at most 1,000 per process:
    far cheaper per message, so the fan-out process is what runs out of CPU first)."""
    from benchmarks.bench_gateway import _proc_cpu_s, _proc_wait_s

    prefix = f"pharma:bench:{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_fanout_"))
    ports = [_free_port() for _ in range(procs)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started: list[subprocess.Popen[bytes]] = []
    try:
        ing = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_live",
                "--role",
                "ingest",
                "--prefix",
                prefix,
                "--units",
                str(units),
                "--seconds",
                str(seconds + 90),
                "--hz",
                str(hz),
            ],
            env=env,
        )
        started.append(ing)
        time.sleep(2)
        for p in ports:
            started.append(
                subprocess.Popen(
                    [
                        str(BIN / "pharma-twin"),
                        "gateway-api",
                        "--hot-store",
                        REDIS,
                        "--port",
                        str(p),
                        "--redis-prefix",
                        prefix,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for p in ports:
            _wait_http(f"http://127.0.0.1:{p}/health", 90)
        load0 = _uptime()
        fan_pids = [sp.pid for sp in started[1:]]
        cpu0 = [_proc_cpu_s(pid) for pid in fan_pids]
        wait0 = [_proc_wait_s(pid) for pid in fan_pids]
        t0 = time.monotonic()
        if per_unit:  # client i -> process i % procs, unit i % units
            urls = [
                f"ws://127.0.0.1:{ports[i % procs]}/ws/live?unit=U{i % units:03d}"
                for i in range(max(procs, units) * procs)
            ]
        else:
            urls = [f"ws://127.0.0.1:{p}/ws/live?{CPP_VIEW}" for p in ports]
        per_proc = 1000 if client == "node" else 250
        n_cp = max(1, (clients + per_proc - 1) // per_proc)
        outs = [tmp / f"c{i}.json" for i in range(n_cp)]
        cps = []
        for i in range(n_cp):
            n = clients // n_cp + (1 if i < clients % n_cp else 0)
            if client == "node":
                cmd = [
                    "node",
                    "--experimental-websocket",
                    str(Path(__file__).with_name("ws_clients.mjs")),
                    "|".join(urls),
                    str(n),
                    str(seconds),
                    str(outs[i]),
                ]
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_live",
                    "--role",
                    "client",
                    "--urls",
                    "|".join(urls),
                    "--n",
                    str(n),
                    "--seconds",
                    str(seconds),
                    "--out",
                    str(outs[i]),
                ]
            cps.append(subprocess.Popen(cmd, env=env))
        for c in cps:
            c.wait(seconds + 180)
        wall = time.monotonic() - t0
        cpu = [_proc_cpu_s(pid) - c0 for pid, c0 in zip(fan_pids, cpu0, strict=True)]
        waited = [_proc_wait_s(pid) - w0 for pid, w0 in zip(fan_pids, wait0, strict=True)]
        lat: list[float] = []
        errors, nbytes = 0, 0
        error_kinds: set[str] = set()
        for o in outs:
            if o.exists():
                d = json.loads(o.read_text())
                lat += d["lat"]
                errors += d["errors"]
                nbytes += d["bytes"]
                error_kinds.update(d["error"])
        return {
            "clients": clients,
            "procs": procs,
            "view": "per unit" if per_unit else "all units, 6 CPPs",
            "bytes_per_msg": nbytes / max(1, len(lat)),
            # CPU of the fan-out processes over the run (clients connect, stream, leave)
            "fanout_cpu_pct": 100 * sum(cpu) / wall,
            "fanout_wait_pct": 100 * sum(waited) / wall,
            "cpu_ms_per_client_s": 1000 * sum(cpu) / (clients * wall),
            "units": units,
            "hz": hz,
            "client": client,
            # the busiest fan-out process: a single event loop cannot use more than one core
            "max_proc_cpu_pct": 100 * max(cpu) / wall,
            "messages": len(lat),
            "msgs_per_client_s": len(lat) / max(1, clients) / seconds,
            "errors": errors,
            "error_kinds": sorted(error_kinds),
            "p50_ms": _pct(lat, 50),
            "p99_ms": _pct(lat, 99),
            "load": f"{load0} / {_uptime()}",
        }
    finally:
        for sp in started:
            sp.terminate()
        for sp in started:
            try:
                sp.wait(10)
            except subprocess.TimeoutExpired:
                sp.kill()
        import redis

        r = redis.Redis.from_url(REDIS)
        for k in r.scan_iter(f"{prefix}:*"):
            r.delete(k)


def markdown(alarm: dict[str, Any] | None, fan: list[dict[str, Any]]) -> str:
    lines = []
    if alarm:
        lines += [
            "| alarm latency (source time ->) | n | p50 ms | p99 ms | max ms | load avg (start / end) |",
            "|---|---|---|---|---|---|",
            f"| visible in /ws/live | {alarm['visible_n']} | {alarm['visible_p50_ms']:.0f} | "
            f"{alarm['visible_p99_ms']:.0f} | {alarm['visible_max_ms']:.0f} | {alarm['load']} |",
            f"| webhook received | {alarm['notified_n']} | {alarm['notified_p50_ms']:.0f} | "
            f"{alarm['notified_p99_ms']:.0f} | {alarm['notified_max_ms']:.0f} | {alarm['load']} |",
            "",
        ]
    if fan:
        lines += [
            "| WebSocket clients | client | fan-out processes | view | units x tags | tag updates per s "
            "| messages with values | msgs per client per s | bytes per msg | errors | p50 ms | "
            "p99 ms | fan-out CPU % of a core (all processes) | busiest fan-out process CPU % "
            "| fan-out waited for a CPU % | fan-out CPU ms per client per s | load avg (start / "
            "end) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fan:
            lines.append(
                f"| {r['clients']} | {r.get('client', 'python')} | {r['procs']} | {r['view']} | {r['units']} x 20 | "
                f"{r['hz']:g} | {r['messages']:,} | {r['msgs_per_client_s']:.2f} | {r['bytes_per_msg']:,.0f} | "
                f"{r['errors']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['fanout_cpu_pct']:.0f} | {r['max_proc_cpu_pct']:.0f} | "
                f"{r['fanout_wait_pct']:.0f} | "
                f"{r['cpu_ms_per_client_s']:.2f} | {r['load']} |"
            )
    return "\n".join(lines)


FANOUT_PLAN = [  # (clients, fan-out processes, per-unit view, tag updates per s)
    (50, 1, False, 1.0),
    (500, 1, False, 1.0),
    (500, 2, False, 1.0),
    (500, 1, True, 1.0),
    (1000, 1, False, 1.0),
    (1000, 2, False, 1.0),
]
# Does adding processes scale it? At 1 update/s one process is far from busy (8 % of a core
# for 1,000 clients), so a second one cannot show anything. Here every tag changes 5 times
# a second (5 messages per client per second, the API's snapshot rate) so that one process'
# event loop saturates its core; the same clients on two processes sharing Redis.
SCALE_PLAN = [
    (1000, 1, False, 5.0),
    (1000, 2, False, 5.0),
    (2000, 1, False, 5.0),
    (2000, 2, False, 5.0),
]


def parse_plan(text: str) -> list[tuple[int, int, bool, float]]:
    """``"2000x1@5,2000x2@5"``: clients x processes @ tag updates per second."""
    plan = []
    for item in text.split(","):
        try:
            cp, hz = item.split("@") if "@" in item else (item, "1")
            c, n = cp.split("x")
            plan.append((int(c), int(n), False, float(hz)))
        except ValueError:
            raise SystemExit(f"--plan: cannot read {item!r} (want CLIENTSxPROCS@HZ)") from None
    return plan


def main(
    only: str | None = None, seconds: float = 30.0, plan: str = "", client: str = "python"
) -> str:
    alarm = bench_alarms() if only in (None, "alarms") else None
    if alarm:
        print(json.dumps(alarm), flush=True)
    fan = []
    rows = (
        parse_plan(plan)
        if plan
        else (FANOUT_PLAN if only in (None, "fanout") else [])
        + (SCALE_PLAN if only in (None, "scale") else [])
    )
    if rows:
        for clients, procs, per_unit, hz in rows:
            r = bench_fanout(
                clients,
                procs,
                seconds=seconds,
                per_unit=per_unit,
                hz=hz,
                client="node" if (client == "node" or (only == "scale" and not plan)) else client,
            )
            print(json.dumps(r), flush=True)
            fan.append(r)
    return markdown(alarm, fan)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["ingest", "client"])
    ap.add_argument("--only", choices=["alarms", "fanout", "scale"])
    ap.add_argument("--plan", default="", help="e.g. 2000x1@5,2000x2@5 (clients x procs @ Hz)")
    ap.add_argument("--prefix", default="pharma:bench")
    ap.add_argument("--units", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hz", type=float, default=1.0)
    ap.add_argument("--client", choices=["python", "node"], default="python")
    ap.add_argument("--urls", default="")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.role == "ingest":
        ingest_role(a.prefix, a.units, a.seconds, a.hz)
    elif a.role == "client":
        assert a.out is not None
        client_role(a.urls.split("|"), a.n, a.seconds, a.out)
    else:
        print(main(a.only, a.seconds, a.plan, a.client))
