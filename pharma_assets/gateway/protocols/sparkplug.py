"""MQTT Sparkplug B: the twin's edge node (publisher) and the gateway's host (subscriber).

Topics ``spBv1.0/<group>/<type>/<edge_node>[/<device>]``. One edge node per group of
units, one Sparkplug *device* per unit:

* NBIRTH carries ``bdSeq`` and ``Node Control/Rebirth``; NDEATH (same ``bdSeq``) is the
  MQTT last will, so the broker announces a dead node.
* DBIRTH declares every metric of a unit once: name, alias, datatype, value, and the
  engineering unit as the ``engUnit`` property; the string metric ``batch_id`` names the
  batch running on the unit ("" when idle).
* DDATA carries only aliases and only the metrics that changed (report by exception), all
  of one unit in one message, as Sparkplug batches per device (one message per reading
  does not scale in Python: see docs/gateway.md).
* ``seq`` runs 0..255 over every message of a node; the host counts gaps. A host that
  sees an alias it has no birth certificate for asks for a rebirth (NCMD
  ``Node Control/Rebirth``); the edge node answers with NBIRTH + DBIRTHs, possibly with
  new aliases, which replace the old ones.

Payloads are the Sparkplug B protobuf (``sparkplug_b_pb2``, compiled from
``sparkplug_b.proto`` in this folder). Metric quality, when a device sends it, is the
``Quality`` property with OPC DA codes (192 good, 64 uncertain, 0 bad).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from ..records import BAD, GOOD, UNCERTAIN
from . import sparkplug_b_pb2 as pb
from .mqtt_common import MqttSettings, make_client

if TYPE_CHECKING:
    from ..core import Gateway
    from ..mapping import SourceMap

log = logging.getLogger(__name__)

NS = "spBv1.0"
DOUBLE, STRING, BOOLEAN, UINT64 = 10, 12, 11, 8
REBIRTH = "Node Control/Rebirth"
BATCH_METRIC = "batch_id"


def topic(group: str, kind: str, node: str, device: str | None = None) -> str:
    return f"{NS}/{group}/{kind}/{node}" + (f"/{device}" if device else "")


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _quality(code: int) -> int:
    return GOOD if code >= 192 else UNCERTAIN if code >= 64 else BAD


# ------------------------------------------------------------------ edge node (twin side)


@dataclass
class MetricDef:
    name: str
    uom: str


class SparkplugEdgeNode:
    """Publishes a group of units as one Sparkplug B edge node (the twin's side).

    ``devices`` maps a device (unit) id to its metrics. ``alias_base`` offsets the aliases
    (a rebirth with ``alias_base`` changed announces new aliases).
    """

    def __init__(
        self,
        settings: MqttSettings,
        group: str,
        node: str,
        devices: Mapping[str, Sequence[MetricDef]],
        qos: int = 1,
        alias_base: int = 1,
    ) -> None:
        self.s, self.group, self.node, self.qos = settings, group, node, qos
        self.devices = {d: list(ms) for d, ms in devices.items()}
        self.alias_base = alias_base
        self.bd_seq = 0
        self._seq = -1
        self._lock = threading.Lock()
        self._last: dict[str, dict[str, Any]] = {d: {} for d in self.devices}
        self._batch: dict[str, str] = dict.fromkeys(self.devices, "")
        self._aliases: dict[str, dict[str, int]] = {}
        self.births = 0
        self.client = make_client(settings, settings.client_id or f"edge-{group}-{node}", True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._connected = threading.Event()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _death(self) -> bytes:
        p = pb.Payload(timestamp=_ms())
        p.metrics.add(name="bdSeq", datatype=UINT64, long_value=self.bd_seq)
        return p.SerializeToString()

    def start(self, timeout: float = 10.0) -> None:
        self.client.will_set(topic(self.group, "NDEATH", self.node), self._death(), qos=1)
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise ConnectionError(f"MQTT broker {self.s.host}:{self.s.port} not reachable")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("edge node %s: connect refused: %s", self.node, rc)
            return
        client.subscribe(topic(self.group, "NCMD", self.node), qos=1)
        self.birth()
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        p = pb.Payload.FromString(msg.payload)
        if any(m.name == REBIRTH and m.boolean_value for m in p.metrics):
            log.info("edge node %s: rebirth requested", self.node)
            self.birth()

    def birth(self, alias_base: int | None = None) -> None:
        """Publish NBIRTH and a DBIRTH per device (seq restarts at 0)."""
        with self._lock:
            if alias_base is not None:
                self.alias_base = alias_base
            self._seq = -1
            nb = pb.Payload(timestamp=_ms(), seq=self._next_seq())
            nb.metrics.add(name="bdSeq", datatype=UINT64, long_value=self.bd_seq)
            nb.metrics.add(name=REBIRTH, datatype=BOOLEAN, boolean_value=False)
            self.client.publish(
                topic(self.group, "NBIRTH", self.node), nb.SerializeToString(), qos=self.qos
            )
            alias = self.alias_base
            for dev, metrics in self.devices.items():
                db = pb.Payload(timestamp=_ms(), seq=self._next_seq())
                self._aliases[dev] = {}
                db.metrics.add(
                    name=BATCH_METRIC, alias=alias, datatype=STRING, string_value=self._batch[dev]
                )
                self._aliases[dev][BATCH_METRIC] = alias
                alias += 1
                for m in metrics:
                    met = db.metrics.add(name=m.name, alias=alias, datatype=DOUBLE)
                    met.properties.keys.append("engUnit")
                    met.properties.values.add(type=STRING, string_value=m.uom)
                    v = self._last[dev].get(m.name)
                    if v is None:
                        met.is_null = True
                    else:
                        met.double_value, met.timestamp = v
                    self._aliases[dev][m.name] = alias
                    alias += 1
                self.client.publish(
                    topic(self.group, "DBIRTH", self.node, dev),
                    db.SerializeToString(),
                    qos=self.qos,
                )
            self.births += 1

    def publish(
        self,
        device: str,
        ts_ms: int,
        values: Mapping[str, float],
        batch_id: str | None = None,
        quality: Mapping[str, int] | None = None,
        only_changed: bool = True,
    ) -> int:
        """One DDATA with the metrics of ``device`` that changed; returns metrics sent."""
        with self._lock:
            p = pb.Payload(timestamp=ts_ms)
            al = self._aliases[device]
            last = self._last[device]
            if batch_id is not None and batch_id != self._batch[device]:
                self._batch[device] = batch_id
                p.metrics.add(
                    alias=al[BATCH_METRIC], timestamp=ts_ms, datatype=STRING, string_value=batch_id
                )
            n = 0
            for name, v in values.items():
                if only_changed and name in last and last[name][0] == v:
                    continue
                m = p.metrics.add(alias=al[name], timestamp=ts_ms, datatype=DOUBLE, double_value=v)
                if quality and name in quality:
                    m.properties.keys.append("Quality")
                    m.properties.values.add(type=3, int_value=quality[name])
                last[name] = (v, ts_ms)
                n += 1
            if not p.metrics:
                return 0
            p.seq = self._next_seq()
            self.client.publish(
                topic(self.group, "DDATA", self.node, device), p.SerializeToString(), qos=self.qos
            )
            return n

    def publish_raw(self, kind: str, device: str | None, payload: pb.Payload) -> None:
        """Publish a hand-made payload (tests of bad input)."""
        self.client.publish(
            topic(self.group, kind, self.node, device), payload.SerializeToString(), qos=self.qos
        )

    def stop(self, graceful: bool = True) -> None:
        """Disconnect (NDEATH is published first when graceful, as the will would be)."""
        if graceful and self.client.is_connected():
            info = self.client.publish(topic(self.group, "NDEATH", self.node), self._death(), qos=1)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        self.bd_seq += 1


# ------------------------------------------------------------------ host (gateway side)


@dataclass
class _Device:
    aliases: dict[int, str] = field(default_factory=dict)  # alias -> metric name
    units: dict[str, str | None] = field(default_factory=dict)  # metric name -> engUnit
    batch_id: str | None = None
    alive: bool = False


class SparkplugHost:
    """The gateway's Sparkplug B subscriber for one broker and group (see module docstring).

    Uses a persistent session (fixed client id, clean_session False) and QoS 1, so the
    broker keeps messages while the gateway restarts; a message is acknowledged only after
    ``Gateway.ingest`` has put its readings in the disk buffer.
    """

    def __init__(
        self,
        gateway: Gateway,
        name: str,
        smap: SourceMap,
        settings: MqttSettings,
        group: str,
        qos: int = 1,
        state_path: Path | None = None,
        edge_nodes: Sequence[str] = (),
    ) -> None:
        self.edge_nodes = tuple(edge_nodes)
        self.gw, self.name, self.smap, self.s, self.group, self.qos = (
            gateway,
            name,
            smap,
            settings,
            group,
            qos,
        )
        self.stats = gateway.stats(name, "mqtt_sparkplug")
        self.devices: dict[tuple[str, str], _Device] = {}
        self._node_seq: dict[str, int] = {}
        self.rebirths_requested = 0
        self._rebirth_pending: set[str] = set()
        self.state_path = state_path
        self._journal_fd: int | None = None
        self._journal_lines = 0
        if state_path is not None:
            self._load_state(state_path)
        # in a worker process (workers.py) the gateway persists a message after this client
        # has handed it over: acknowledge it only then (``WorkerLink.on_persisted``)
        self.async_ack = bool(getattr(gateway, "persists_async", False)) and qos == 1
        self.client = make_client(
            settings, settings.client_id or f"pharma-gateway-{name}", False, self.async_ack
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._connected = threading.Event()

    def start(self, timeout: float = 10.0) -> None:
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            log.error(
                "source %s: MQTT broker %s:%s not reachable yet; retrying in the background",
                self.name,
                self.s.host,
                self.s.port,
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.stats.connected = False
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.stats.last_error = f"connect refused: {rc}"
            log.error("source %s: MQTT connect refused: %s", self.name, rc)
            return
        if self.edge_nodes:  # this source takes these edge nodes of the group only
            client.subscribe([(f"{NS}/{self.group}/+/{n}/#", self.qos) for n in self.edge_nodes])
        else:
            client.subscribe(f"{NS}/{self.group}/#", qos=self.qos)
        self.stats.connected = True
        self._connected.set()
        log.info("source %s: connected to %s:%s", self.name, self.s.host, self.s.port)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.stats.connected:
            self.stats.reconnects += 1
        self.stats.connected = False
        self.stats.last_error = f"disconnected: {rc}"
        log.warning("source %s: disconnected from broker (%s); reconnecting", self.name, rc)

    # Birth certificates are kept on disk, so that after a restart the messages the broker
    # kept for this session can be decoded without waiting for a rebirth: a snapshot
    # (``state_path``) plus a journal (``<state_path>.journal``, one JSON line per birth or
    # batch change, appended before the message is acknowledged). Rewriting the whole
    # snapshot on every DBIRTH cost O(devices) per birth, O(devices^2) per node birth: a
    # 500-device rebirth stalled ingest for about 10 s.

    @staticmethod
    def _record(node: str, device: str, dev: _Device) -> dict[str, Any]:
        return {
            "node": node,
            "device": device,
            "aliases": dev.aliases,
            "units": dev.units,
            "batch_id": dev.batch_id,
        }

    def _load_state(self, path: Path) -> None:
        recs: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
        journal = path.with_name(path.name + ".journal")
        if journal.exists():
            data = journal.read_bytes()
            for line in data.split(b"\n"):
                if not line:
                    continue
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    if data.endswith(line):  # torn final line: its message was never acked
                        continue
                    raise
        for rec in recs:  # later records replace earlier ones
            self.devices[(rec["node"], rec["device"])] = _Device(
                {int(a): n for a, n in rec["aliases"].items()}, rec["units"], rec["batch_id"]
            )
        self._save()  # compact: one snapshot, empty journal

    def _save(self) -> None:
        """Write the snapshot of every device's birth certificate; empty the journal."""
        if self.state_path is None:
            return
        recs = [self._record(n, d, dev) for (n, d), dev in self.devices.items()]
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(json.dumps(recs))
        os.replace(tmp, self.state_path)
        if self._journal_fd is not None:
            os.close(self._journal_fd)
        journal = self.state_path.with_name(self.state_path.name + ".journal")
        self._journal_fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._journal_lines = 0

    def _journal(self, node: str, device: str, dev: _Device) -> None:
        """Append one device's birth certificate to the journal (compacted now and then)."""
        if self.state_path is None:
            return
        if self._journal_fd is None or self._journal_lines > max(1000, 2 * len(self.devices)):
            self._save()
        assert self._journal_fd is not None
        line = json.dumps(self._record(node, device, dev), separators=(",", ":")) + "\n"
        os.write(self._journal_fd, line.encode())
        self._journal_lines += 1

    def _request_rebirth(self, node: str) -> None:
        p = pb.Payload(timestamp=_ms())
        p.metrics.add(name=REBIRTH, datatype=BOOLEAN, boolean_value=True)
        self.client.publish(topic(self.group, "NCMD", node), p.SerializeToString(), qos=1)
        self.rebirths_requested += 1

    def _check_seq(self, node: str, seq: int, birth: bool) -> None:
        last = self._node_seq.get(node)
        if not birth and last is not None and seq != (last + 1) % 256 and seq != last:
            self.stats.gaps += 1
        self._node_seq[node] = seq

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception as e:  # a bug or a full disk must not stop the network thread
            self.stats.last_error = f"{type(e).__name__} handling {msg.topic}: {e}"
            log.exception("source %s: error handling %s", self.name, msg.topic)
        if self.async_ack and msg.qos == 1:
            self.gw.on_persisted(functools.partial(self.client.ack, msg.mid, 1))

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 4 or parts[0] != NS:
            return
        kind, node = parts[2], parts[3]
        device = parts[4] if len(parts) > 4 else None
        try:
            p = pb.Payload.FromString(msg.payload)
        except Exception as e:  # a broken payload must not stop the subscriber
            self.stats.last_error = f"undecodable payload on {msg.topic}: {e}"
            log.error("source %s: %s", self.name, self.stats.last_error)
            return
        if kind == "NBIRTH":
            self._check_seq(node, p.seq, True)
            self._rebirth_pending.discard(node)
            for (n, _d), dev in self.devices.items():
                if n == node:
                    dev.aliases.clear()
        elif kind == "NDEATH":
            for (n, _d), dev in self.devices.items():
                if n == node:
                    dev.alive = False
            self._node_seq.pop(node, None)
        elif kind == "DBIRTH" and device:
            self._check_seq(node, p.seq, False)
            self._birth(node, device, p)
        elif kind == "DDEATH" and device:
            self.devices.setdefault((node, device), _Device()).alive = False
        elif kind == "DDATA" and device:
            self._check_seq(node, p.seq, False)
            self._data(node, device, p)

    def _props(self, m: Any) -> dict[str, Any]:
        out = {}
        for k, v in zip(m.properties.keys, m.properties.values, strict=False):
            which = v.WhichOneof("value")
            out[k] = getattr(v, which) if which else None
        return out

    def _birth(self, node: str, device: str, p: Any) -> None:
        dev = self.devices.setdefault((node, device), _Device())
        dev.aliases, dev.units, dev.alive = {}, {}, True
        for m in p.metrics:
            uom = self._props(m).get("engUnit")
            if m.HasField("alias"):
                dev.aliases[m.alias] = m.name
            dev.units[m.name] = uom
            if m.name == BATCH_METRIC:
                dev.batch_id = m.string_value or None
                continue
            try:
                self.smap.resolve(m.name, uom)
            except ValueError as e:
                log.error("source %s: birth certificate of %s/%s: %s", self.name, node, device, e)
        self._journal(node, device, dev)
        self._ingest(node, device, dev, p, birth=True)

    def _data(self, node: str, device: str, p: Any) -> None:
        dev = self.devices.get((node, device))
        if dev is None or any(not m.name and m.alias not in dev.aliases for m in p.metrics):
            log.warning(
                "source %s: DDATA from %s/%s with aliases not in a birth certificate; "
                "asking for a rebirth",
                self.name,
                node,
                device,
            )
            self.stats.rejected["unknown_tag"] += len(p.metrics)
            self.stats.readings_in += len(p.metrics)
            self._request_rebirth(node)
            return
        if not dev.alive and node not in self._rebirth_pending:
            # data from a node we saw die (or whose birth we missed): ask it to rebirth,
            # and meanwhile decode with the aliases we have
            self._rebirth_pending.add(node)
            self._request_rebirth(node)
        self._ingest(node, device, dev, p, birth=False)

    def _ingest(self, node: str, device: str, dev: _Device, p: Any, birth: bool) -> None:
        items = []
        aliases, units, p_ts = dev.aliases, dev.units, p.timestamp
        for m in p.metrics:
            name = m.name or aliases[m.alias]
            which = m.WhichOneof("value")
            if name == BATCH_METRIC:
                if dev.batch_id != (m.string_value or None):
                    dev.batch_id = m.string_value or None
                    self._journal(node, device, dev)
                continue
            if m.is_null or which is None:
                if birth:  # declared, no value yet
                    continue
                raw = None
            else:
                raw = getattr(m, which)
            q = GOOD
            if m.HasField("properties"):
                qp = self._props(m).get("Quality")
                if qp is not None:
                    q = _quality(int(qp))
            items.append((name, raw, units.get(name), (m.timestamp or p_ts) * 1000, q))
        if items:
            self.gw.ingest(self.name, self.smap, device, dev.batch_id, items)


__all__ = ["MetricDef", "MqttSettings", "SparkplugEdgeNode", "SparkplugHost", "topic"]
