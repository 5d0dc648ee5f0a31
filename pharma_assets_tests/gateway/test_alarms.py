"""Real-time CPP alarms: every ISA-18.2 transition, chattering, the GxP records (events
table, audit, deviation once) and the notifiers against real listeners on 127.0.0.1."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

from pharma_assets.compliance.audit import AuditTrail
from pharma_assets.compliance.deviations import auto_open, list_deviations
from pharma_assets.compliance.users import PermissionDeniedError, create_user
from pharma_assets.gateway.alarm_service import AlarmService, open_alarms_in, read_events
from pharma_assets.gateway.alarms import (
    AlarmEngine,
    AlarmError,
    AlarmEvent,
    AlarmSettings,
    MesPhases,
)
from pharma_assets.gateway.notify import Dispatcher, SmtpNotifier, WebhookNotifier
from pharma_assets.gateway.records import BAD, GOOD, Reading
from pharma_assets.lake.gold import EXCURSION_SCHEMA
from pharma_assets.lake.specs import load_spec
from pharma_assets.lake.storage import Lake
from pharma_assets.twin.landing import chunk_path, write_jsonl

SPEC = load_spec()
TAG = "temperature_c"
LIM = SPEC.tags[TAG].limits("production")
assert LIM.nor is not None and LIM.par is not None
NOR, PAR = LIM.nor, LIM.par
MID = (NOR[0] + NOR[1]) / 2
ABOVE_NOR = NOR[1] + 0.4 * (PAR[1] - NOR[1])  # outside NOR, inside PAR
ABOVE_PAR = PAR[1] + 0.5
T0 = 1_800_000_000_000_000  # µs; the phase started 10 h before (settle is 4 h)
S = 1_000_000


class FixedPhase:
    def __init__(self, phase: str = "production", start: int = T0 - 36000 * S) -> None:
        self.phase, self.start = phase, start

    def phase_at(self, unit_id: str, batch_id: str, ts_us: int) -> tuple[str, int] | None:
        return (self.phase, self.start) if ts_us >= self.start else None


def reading(
    v: float,
    k: int,
    unit: str = "BR-101",
    batch: str | None = "BR-101-B0001",
    q: int = GOOD,
    tag: str = TAG,
) -> Reading:
    return Reading("src", k, "SITE01", unit, batch, tag, v, "degC", T0 + k * S, T0 + k * S, q)


def engine(events: list[AlarmEvent], **kw: Any) -> AlarmEngine:
    settings = AlarmSettings(**{"on_delay_s": 3.0, "deadband_frac": 0.05, **kw})
    return AlarmEngine(SPEC, FixedPhase(), settings, [events.append])


def feed(e: AlarmEngine, values: list[float], k0: int = 0, **kw: Any) -> int:
    for i, v in enumerate(values):
        e.check([reading(v, k0 + i, **kw)])
    return k0 + len(values)


def names(events: list[AlarmEvent]) -> list[str]:
    return [ev.event for ev in events]


def test_on_delay_spike_raises_nothing_then_activates_unacknowledged() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev)
    k = feed(e, [MID, ABOVE_NOR, ABOVE_NOR, MID, MID])  # 2 s outside < 3 s on-delay
    assert ev == []
    feed(e, [ABOVE_NOR] * 5, k)
    assert names(ev) == ["activated"]
    a = ev[0].alarm
    assert (a["state"], a["severity"], a["priority"], a["direction"]) == (
        "unack_active",
        "minor",
        "low",
        "high",
    )
    assert a["activated_ts_us"] == T0 + (k + 3) * S  # on-delay of source time
    assert (a["nor_lo"], a["par_hi"], a["phase"]) == (NOR[0], PAR[1], "production")


def test_ack_then_return_closes() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0)
    k = feed(e, [ABOVE_NOR])
    aid = ev[0].alarm["alarm_id"]
    e.acknowledge(aid, "op.jones", "seen")
    assert e.alarms[aid].state == "ack_active" and e.alarms[aid].acked_by == "op.jones"
    with pytest.raises(AlarmError, match="only an unacknowledged"):
        e.acknowledge(aid, "op.jones")
    feed(e, [MID], k)
    assert names(ev) == ["activated", "acknowledged", "returned_to_normal"]
    assert ev[-1].alarm["state"] == "normal" and e.open_alarms() == []


def test_return_unacknowledged_stays_listed_until_ack() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0)
    k = feed(e, [ABOVE_NOR, MID])
    aid = ev[0].alarm["alarm_id"]
    assert e.alarms[aid].state == "rtn_unack" and not e.alarms[aid].active
    assert [a["alarm_id"] for a in e.open_alarms()] == [aid]
    e.acknowledge(aid, "op.jones")
    assert e.open_alarms() == [] and ev[-1].alarm["state"] == "normal"
    feed(e, [ABOVE_NOR], k)  # a new excursion is a new alarm
    assert names(ev) == ["activated", "returned_to_normal", "acknowledged", "activated"]
    assert ev[-1].alarm["alarm_id"] != aid


def test_escalation_reannunciates_and_critical_after_par_time() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0, critical_after_s=10)
    k = feed(e, [ABOVE_NOR])
    aid = ev[0].alarm["alarm_id"]
    e.acknowledge(aid, "op.jones")
    k = feed(e, [ABOVE_PAR], k)
    assert names(ev) == ["activated", "acknowledged", "escalated"]
    assert ev[-1].alarm["severity"] == "major" and ev[-1].alarm["priority"] == "high"
    assert ev[-1].alarm["state"] == "unack_active"  # acknowledged again needed
    k = feed(e, [ABOVE_PAR] * 8, k)
    assert ev[-1].alarm["severity"] == "major"  # 9 readings (s) outside PAR < 10 s
    feed(e, [ABOVE_PAR], k)
    assert names(ev)[-1] == "escalated" and ev[-1].alarm["severity"] == "critical"
    assert ev[-1].alarm["priority"] == "urgent" and ev[-1].alarm["par_s"] == 10


def test_shelve_needs_reason_and_bounded_expiry_then_unshelves_when_still_active() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0, max_shelve_s=3600)
    k = feed(e, [ABOVE_NOR])
    aid = ev[0].alarm["alarm_id"]
    with pytest.raises(AlarmError, match="reason"):
        e.shelve(aid, "op.jones", " ", 60)
    with pytest.raises(AlarmError, match="at most 3600"):
        e.shelve(aid, "op.jones", "probe recalibration", 7200)
    e.shelve(aid, "op.jones", "probe recalibration", 60)
    a = e.alarms[aid]
    assert a.state == "shelved" and a.shelve_reason == "probe recalibration"
    feed(e, [ABOVE_PAR], k)  # escalation while shelved is recorded, state stays shelved
    assert e.alarms[aid].state == "shelved" and e.alarms[aid].level == 2
    assert e.expire_shelves(now=a.shelved_until_us - 1) == 0
    assert e.expire_shelves(now=a.shelved_until_us) == 1
    assert ev[-1].event == "unshelved" and ev[-1].actor == "system"
    assert ev[-1].reason == "shelve expired" and e.alarms[aid].state == "unack_active"


def test_shelved_alarm_that_returns_closes_and_unshelve_by_hand() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0)
    k = feed(e, [ABOVE_NOR])
    aid = ev[0].alarm["alarm_id"]
    e.shelve(aid, "op.jones", "known drift", 60)
    e.unshelve(aid, "op.jones", "back")
    assert e.alarms[aid].state == "unack_active"
    e.shelve(aid, "op.jones", "known drift", 60)
    feed(e, [MID], k)
    assert aid not in e.alarms and ev[-1].event == "returned_to_normal"
    with pytest.raises(AlarmError, match="not open"):
        e.unshelve(aid)


def test_chattering_on_the_limit_one_alarm_with_deadband_many_without() -> None:
    wobble = [NOR[1] + 0.02, NOR[1] - 0.02] * 30  # ± around the NOR limit, 60 s
    ev: list[AlarmEvent] = []
    feed(engine(ev, on_delay_s=0, deadband_frac=0.05), wobble)
    assert names(ev) == ["activated"]
    ev2: list[AlarmEvent] = []
    feed(engine(ev2, on_delay_s=0, deadband_frac=0.0), wobble)
    assert names(ev2).count("activated") == 30
    ev3: list[AlarmEvent] = []  # on-delay alone also stops it (never 3 s outside in a row)
    feed(engine(ev3, on_delay_s=3, deadband_frac=0.0), wobble)
    assert ev3 == []


def test_not_judged_bad_quality_nan_no_batch_settle_and_non_cpp() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0)
    e.check(
        [
            reading(ABOVE_PAR, 0, q=BAD),
            reading(math.nan, 1),
            reading(ABOVE_PAR, 2, batch=None),
            reading(1e9, 3, tag="agitator_vibration_mm_s"),
        ]
    )
    assert ev == [] and e.counts["not_judged"] == 3
    settle = AlarmEngine(SPEC, FixedPhase(start=T0), AlarmSettings(on_delay_s=0), [ev.append])
    settle.check([reading(ABOVE_PAR, 1)])  # 1 s after the phase start < settle_minutes
    assert ev == [] and SPEC.settle_minutes > 0


def test_batch_end_returns_the_alarm() -> None:
    ev: list[AlarmEvent] = []
    e = engine(ev, on_delay_s=0)
    k = feed(e, [ABOVE_NOR])
    feed(e, [MID], k, batch=None)
    assert names(ev) == ["activated", "returned_to_normal"]
    assert ev[-1].reason == "batch changed or ended"


def test_phases_from_landing_mes_files(tmp_path: Path) -> None:
    t = datetime(2026, 12, 3, 8, tzinfo=UTC)
    evs = [
        {"event_type": "batch_start", "event_ts": t, "batch_id": "B1"},
        {"event_type": "phase_start", "event_ts": t, "phase": "growth"},
        {"event_type": "phase_start", "event_ts": t + timedelta(hours=30), "phase": "production"},
    ]
    write_jsonl(chunk_path(tmp_path, "mes", "BR-101", "B1", t, 1, "jsonl"), evs)
    p = MesPhases(tmp_path, rescan_s=0)
    us = int(t.timestamp() * 1e6)
    assert p.phase_at("BR-101", "B1", us - 1) is None
    assert p.phase_at("BR-101", "B1", us + 3600 * S) == ("growth", us)
    assert p.phase_at("BR-101", "B1", us + 31 * 3600 * S)[0] == "production"  # type: ignore[index]
    assert p.phase_at("BR-101", "B2", us) is None


# ------------------------------------------------------------------ GxP records


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lk = Lake.at(tmp_path / "lake")
    create_user(
        lk,
        "admin",
        "Ada Admin",
        "admin",
        "Adm1n-Pass-Word-93",
        "system:test",
        "setup",
        bootstrap=True,
    )
    create_user(lk, "op.jones", "Olive Operator", "operator", "0per-Pass-Word-47", "admin", "setup")
    create_user(lk, "view.only", "Vic Viewer", "viewer", "V1ew-Pass-Word-58", "admin", "setup")
    return lk


def service(lake: Lake, **kw: Any) -> AlarmService:
    settings = AlarmSettings(on_delay_s=0, deadband_frac=0.05, critical_after_s=5)
    return AlarmService(lake, SPEC, FixedPhase(), settings, flush_interval_s=3600, **kw)


def test_events_persisted_actions_audited_and_permission_checked(lake: Lake) -> None:
    svc = service(lake)
    try:
        k = feed(svc.engine, [ABOVE_NOR])  # type: ignore[arg-type]
        aid = next(iter(svc.engine.alarms))
        with pytest.raises(PermissionDeniedError, match=r"alarm\.respond"):
            svc.acknowledge(aid, "view.only")
        with pytest.raises(AlarmError, match="does not exist"):
            svc.acknowledge(aid, "nobody")
        svc.acknowledge(aid, "op.jones", "checked the probe", context_id="sess-1")
        feed(svc.engine, [MID], k)  # type: ignore[arg-type]
        assert svc.flush() == 3
    finally:
        svc.close()
    ev = read_events(lake).sort("at")
    assert ev["event"].to_list() == ["activated", "acknowledged", "returned_to_normal"]
    assert ev["acked_by"].to_list()[1:] == ["op.jones", "op.jones"]
    trail = AuditTrail(lake).read().filter(pl.col("action") == "alarm_acknowledged")
    assert trail.height == 1
    r = trail.row(0, named=True)
    assert (r["actor"], r["record_id"], r["old_value"], r["new_value"], r["reason"]) == (
        "op.jones",
        aid,
        "unack_active",
        "ack_active",
        "checked the probe",
    )
    assert open_alarms_in(lake) == []


def test_restart_restores_open_alarms(lake: Lake) -> None:
    svc = service(lake)
    feed(svc.engine, [ABOVE_NOR])  # type: ignore[arg-type]
    aid = next(iter(svc.engine.alarms))
    svc.shelve(aid, "op.jones", "maintenance on the jacket", 600)
    svc.close()
    svc2 = service(lake)
    try:
        a = svc2.engine.alarms[aid]
        assert a.state == "shelved" and a.shelve_reason == "maintenance on the jacket"
        feed(svc2.engine, [MID], 1)  # type: ignore[arg-type]
        assert aid not in svc2.engine.alarms  # the restored alarm is on its point again
    finally:
        svc2.close()


def test_major_alarm_opens_one_deviation_and_batch_job_opens_no_second(lake: Lake) -> None:
    svc = service(lake)
    try:
        k = feed(svc.engine, [ABOVE_PAR] * 8)  # major at once, critical after 5 s
        feed(svc.engine, [MID], k)  # type: ignore[arg-type]
        svc.flush()
        svc.flush()
    finally:
        svc.close()
    devs = list_deviations(lake)
    assert devs.height == 1
    d = devs.row(0, named=True)
    assert d["source"] == "cpp_alarm" and d["batch_id"] == "BR-101-B0001"
    ev = read_events(lake)
    assert set(ev.filter(pl.col("event") == "deviation_linked")["deviation_id"]) == {
        d["deviation_id"]
    }
    # gold later sees the same excursion (and another one of the tag, hours later)
    t = datetime.fromtimestamp(T0 / 1e6, UTC)
    rows = [
        {
            "excursion_id": f"BR-101-B0001-{TAG}-{i}",
            "batch_id": "BR-101-B0001",
            "unit_id": "BR-101",
            "tag": TAG,
            "phase": "production",
            "start_ts": t + timedelta(hours=h),
            "end_ts": t + timedelta(hours=h, seconds=8),
            "duration_min": 0.15,
            "minutes_outside_par": 0.13,
            "peak_value": ABOVE_PAR,
            "direction": "high",
            "target": MID,
            "nor_lo": NOR[0],
            "nor_hi": NOR[1],
            "par_lo": PAR[0],
            "par_hi": PAR[1],
            "severity": "major",
            "active": False,
        }
        for i, h in ((1, 0), (2, 5))
    ]
    lake.append("gold", "cpp_excursions", pl.DataFrame(rows, schema=EXCURSION_SCHEMA))
    opened = auto_open(lake)
    assert [o.source_ref for o in opened] == [f"BR-101-B0001-{TAG}-2"]
    assert auto_open(lake) == [] and list_deviations(lake).height == 2


# ------------------------------------------------------------------ notifiers


class _Hook(BaseHTTPRequestHandler):
    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        n = int(self.headers["Content-Length"])
        type(self).got.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: ClassVar[list[dict[str, Any]]] = []
    handler = type("Hook", (_Hook,), {"got": got})
    srv = HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/hook", got
    finally:
        srv.shutdown()


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    got: list[Any] = []

    class Sink(Message):
        def handle_message(self, message: Any) -> None:
            got.append(message)

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    c = Controller(Sink(), hostname="127.0.0.1", port=port)
    c.start()
    try:
        yield port, got
    finally:
        c.stop()


def test_webhook_and_smtp_notified_on_activation_and_escalation_only(
    webhook: tuple[str, list[dict[str, Any]]], smtp_sink: tuple[int, list[Any]]
) -> None:
    url, posts = webhook
    port, mails = smtp_sink
    d = Dispatcher(
        [
            WebhookNotifier(url),
            SmtpNotifier("127.0.0.1", port, "gateway@site01.example", ["qa@site01.example"]),
        ],
        "low",
    )
    ev: list[AlarmEvent] = []
    e = AlarmEngine(SPEC, FixedPhase(), AlarmSettings(on_delay_s=0), [ev.append, d])
    k = feed(e, [ABOVE_NOR, ABOVE_PAR])
    e.acknowledge(ev[0].alarm["alarm_id"], "op.jones")
    feed(e, [MID], k)
    d.drain()
    d.close()
    assert [p["event"] for p in posts] == ["activated", "escalated"]
    assert posts[1]["severity"] == "major" and posts[1]["par"] == list(PAR)
    assert len(mails) == 2 and "[HIGH] BR-101 temperature_c escalated" in mails[1]["Subject"]
    assert d.sent == {"webhook": 2, "smtp": 2} and d.failed == {"webhook": 0, "smtp": 0}


def test_failing_notifier_is_counted_and_does_not_block_others(
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, posts = webhook
    d = Dispatcher(
        [
            WebhookNotifier("http://127.0.0.1:9/none", timeout_s=1, name="dead"),
            WebhookNotifier(url),
        ],
        "high",
    )
    e = AlarmEngine(SPEC, FixedPhase(), AlarmSettings(on_delay_s=0), [d])
    feed(e, [ABOVE_NOR, ABOVE_PAR])  # the minor activation is below min priority
    d.drain()
    d.close()
    assert d.failed["dead"] == 1 and d.sent["webhook"] == 1 and len(posts) == 1


# ------------------------------------------------------------------ through the gateway + API


def test_ingest_raises_alarm_served_by_api_with_token_and_named_user(lake: Lake) -> None:
    from fastapi.testclient import TestClient

    from pharma_assets.gateway.api import make_app
    from pharma_assets.gateway.core import Gateway
    from pharma_assets.gateway.hotstore import MemoryHotStore
    from pharma_assets.gateway.mapping import SourceMap
    from pharma_assets.gateway.records import now_us

    hot = MemoryHotStore()
    gw = Gateway("SITE01", hot, max_age_s=1e9)
    t = now_us() - 30 * S
    svc = AlarmService(
        lake,
        SPEC,
        FixedPhase(start=t - 36000 * S),
        AlarmSettings(on_delay_s=2),
        flush_interval_s=3600,
    )
    gw.alarms = svc.engine
    svc.engine.sinks.append(lambda _e: hot.set_doc("alarms", svc.engine.open_alarms()))
    smap = SourceMap("src", {})
    try:
        for i, v in enumerate([MID, ABOVE_PAR, ABOVE_PAR, ABOVE_PAR]):
            gw.ingest("src", smap, "BR-101", "BR-101-B0001", [(TAG, v, "degC", t + i * S, GOOD)])
        with TestClient(make_app(hot, None, svc, "s3cret")) as c:
            alarms = c.get("/alarms").json()
            assert [(a["tag"], a["severity"], a["state"]) for a in alarms] == [
                (TAG, "major", "unack_active")
            ]
            aid = alarms[0]["alarm_id"]
            body = {"user_id": "op.jones", "comment": "ok"}
            assert c.post(f"/alarms/{aid}/ack", json=body).status_code == 401
            bad = c.post(
                f"/alarms/{aid}/ack",
                json={"user_id": "view.only"},
                headers={"Authorization": "Bearer s3cret"},
            )
            assert bad.status_code == 403
            ok = c.post(f"/alarms/{aid}/ack", json=body, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()["state"] == "ack_active"
            again = c.post(
                f"/alarms/{aid}/ack", json=body, headers={"Authorization": "Bearer s3cret"}
            )
            assert again.status_code == 409 and "only an unacknowledged" in again.json()["detail"]
            with c.websocket_connect("/ws/live?unit=BR-101") as ws:
                msg = json.loads(ws.receive_text())
            assert msg["units"]["BR-101"][TAG][0] == ABOVE_PAR
            assert [a["state"] for a in msg["alarms"]] == ["ack_active"]
            assert c.get("/spec").json()[TAG]["phases"]["production"]["par"] == list(PAR)
        replica = TestClient(make_app(hot))  # a fan-out replica: read-only
        assert replica.get("/alarms").json()[0]["alarm_id"] == aid
        assert replica.post(f"/alarms/{aid}/ack", json=body).status_code == 503
    finally:
        svc.close()
