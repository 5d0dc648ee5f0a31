"""Alarm notifications: a pluggable notifier (webhook, e-mail over SMTP) fed off the ingest
thread, so a slow mail server never delays readings or other alarms.

A notifier is anything with ``name`` and ``send(event)``; ``Dispatcher`` queues the alarm
events worth telling someone about (activation and escalation at or above a priority)
and sends each to every notifier from one worker thread, counting what was sent and what
failed (a failure is logged with the notifier and the alarm, and not retried).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import smtplib
import ssl
import threading
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from .alarms import PRIORITY_RANK, AlarmEvent
from .records import now_us

log = logging.getLogger(__name__)

NOTIFY_EVENTS = ("activated", "escalated")


class Notifier(Protocol):
    name: str

    def send(self, event: AlarmEvent) -> None: ...


def event_payload(ev: AlarmEvent) -> dict[str, Any]:
    a = ev.alarm
    return {
        "event": ev.event,
        "at_us": ev.at_us,
        "source_ts_us": ev.source_ts_us,
        "alarm_id": a["alarm_id"],
        "unit_id": a["unit_id"],
        "batch_id": a["batch_id"],
        "tag": a["tag"],
        "phase": a["phase"],
        "severity": a["severity"],
        "priority": a["priority"],
        "state": a["state"],
        "value": a["value"],
        "direction": a["direction"],
        "nor": [a["nor_lo"], a["nor_hi"]],
        "par": [a["par_lo"], a["par_hi"]],
        "deviation_id": a["deviation_id"],
    }


def event_text(ev: AlarmEvent) -> tuple[str, str]:
    """(subject, body) of a notification in words an operator reads."""
    a = ev.alarm
    subject = (
        f"[{a['priority'].upper()}] {a['unit_id']} {a['tag']} {ev.event}: "
        f"{a['severity']} {a['direction']}"
    )
    body = (
        f"Alarm {a['alarm_id']} {ev.event}\n"
        f"Unit {a['unit_id']}, batch {a['batch_id']}, phase {a['phase']}\n"
        f"{a['tag']} = {a['value']:.4g} (NOR {a['nor_lo']}..{a['nor_hi']}, "
        f"PAR {a['par_lo']}..{a['par_hi']})\n"
        f"Severity {a['severity']}, priority {a['priority']}, state {a['state']}\n"
    )
    return subject, body


@dataclass
class WebhookNotifier:
    """POSTs the alarm as JSON to ``url`` (a chat or paging system's incoming webhook)."""

    url: str
    timeout_s: float = 5.0
    headers: dict[str, str] = field(default_factory=dict)
    name: str = "webhook"

    def send(self, event: AlarmEvent) -> None:
        data = json.dumps(event_payload(event)).encode()
        req = urllib.request.Request(
            self.url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            if resp.status >= 300:
                raise OSError(f"webhook {self.url} answered HTTP {resp.status}")


@dataclass
class SmtpNotifier:
    """Sends the alarm as an e-mail through an SMTP relay (STARTTLS and login optional;
    the password comes from the environment variable ``password_env``)."""

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None
    timeout_s: float = 10.0
    name: str = "smtp"

    def send(self, event: AlarmEvent) -> None:
        subject, body = event_text(event)
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = subject, self.sender, ", ".join(self.recipients)
        msg.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as s:
            if self.starttls:
                s.starttls(context=ssl.create_default_context())
            if self.username:
                pw = os.environ.get(self.password_env or "")
                if pw is None:
                    raise OSError(f"SMTP password variable {self.password_env!r} is not set")
                s.login(self.username, pw)
            s.send_message(msg)


class Dispatcher:
    """Queues notifiable alarm events and sends them from one worker thread."""

    def __init__(self, notifiers: Sequence[Notifier], min_priority: str = "low") -> None:
        if min_priority not in PRIORITY_RANK:
            raise ValueError(f"min_priority {min_priority!r} is not one of {list(PRIORITY_RANK)}")
        self.notifiers = list(notifiers)
        self.min_rank = PRIORITY_RANK[min_priority]
        self.sent: dict[str, int] = {n.name: 0 for n in self.notifiers}
        self.failed: dict[str, int] = {n.name: 0 for n in self.notifiers}
        self.last_sent_us: dict[str, int] = {}  # alarm id -> when its last notice went out
        self._q: queue.Queue[AlarmEvent | None] = queue.Queue()
        self._t = threading.Thread(target=self._run, name="alarm-notifier", daemon=True)
        self._t.start()

    def __call__(self, ev: AlarmEvent) -> None:
        if (
            ev.event in NOTIFY_EVENTS
            and ev.alarm["state"] != "shelved"
            and (PRIORITY_RANK[ev.alarm["priority"]] >= self.min_rank)
        ):
            self._q.put(ev)

    def _run(self) -> None:
        while (ev := self._q.get()) is not None:
            for n in self.notifiers:
                try:
                    n.send(ev)
                    self.sent[n.name] += 1
                except Exception as e:
                    self.failed[n.name] += 1
                    log.error(
                        "notifier %s could not send %s of %s: %s",
                        n.name,
                        ev.event,
                        ev.alarm["alarm_id"],
                        e,
                    )
            self.last_sent_us[ev.alarm["alarm_id"]] = now_us()
            self._q.task_done()

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued notice was tried (tests, shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self._q.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout_s)

    def close(self) -> None:
        self._q.put(None)
        self._t.join(10)


__all__ = [
    "Dispatcher",
    "Notifier",
    "SmtpNotifier",
    "WebhookNotifier",
    "event_payload",
    "event_text",
]
