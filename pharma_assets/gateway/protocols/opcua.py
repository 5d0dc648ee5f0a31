"""OPC UA (asyncua): the twin as a server, the gateway as a subscribing client.

Address space of the twin's server (namespace ``urn:pharma-twin:<site>``), ISA-88 style::

    Objects/<site>/<area>/<unit>/BatchId                      String ("" when idle)
    Objects/<site>/<area>/<unit>/<unit>-<equipment>/<tag>     Double, AnalogItem-like:
        EngineeringUnits (EUInformation, DisplayName = the unit, e.g. "degC")
        EURange (Range: the instrument span)

Node ids are strings ``<site>.<area>.<unit>.<tag>`` so they survive a server restart.
Values carry the simulated clock as SourceTimestamp and a StatusCode (Good, Uncertain,
Bad) for quality; until the first write a variable is BadWaitingForInitialData, which the
client does not take as a reading.

The client browses the site folder, reads each variable's EngineeringUnits, subscribes to
every tag and BatchId (one subscription, ``publishing_interval_ms``), and hands readings
to ``Gateway.ingest`` in batches per unit. ``watchdog_s`` (default 10 s: the asyncua
default of 1 s declares a loaded server dead) and asyncua's auto-reconnect (backoff up to
``reconnect_max_delay_s``, subscriptions recreated) handle session loss and server
restarts; the initial connection is retried with the same backoff.
"""

# asyncua annotates with NewType aliases (ua.UInt32, ua.DateTime) that plain ints and
# datetimes satisfy at run time:
# mypy: disable-error-code="arg-type"
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asyncua import Client, Node, Server, ua
from asyncua.client.ua_client import UaClientState

from ..records import BAD, GOOD, UNCERTAIN
from . import opcua_decode

if TYPE_CHECKING:
    from ..core import Gateway
    from ..mapping import SourceMap

log = logging.getLogger(__name__)

UNITS_NS = "http://www.opcfoundation.org/UA/units/un/cefact"
APPLICATION_URI = "urn:pharma-twin:gateway"  # the gateway client's ApplicationUri
# Instrument spans the twin's server declares as EURange (by unit of measure).
INSTRUMENT_SPANS: dict[str, tuple[float, float]] = {
    "degC": (0.0, 150.0),
    "pH": (0.0, 14.0),
    "%": (0.0, 100.0),
    "rpm": (0.0, 600.0),
    "bar": (-1.0, 4.0),
    "slpm": (0.0, 500.0),
    "mL/h": (0.0, 10_000.0),
    "mL": (0.0, 50_000.0),
    "L": (0.0, 3_000.0),
    "pF/cm": (0.0, 200.0),
    "mm/s": (0.0, 50.0),
    "A": (0.0, 50.0),
    "mmHg": (0.0, 300.0),
}
_STATUS = {GOOD: ua.StatusCodes.Good, UNCERTAIN: ua.StatusCodes.Uncertain, BAD: ua.StatusCodes.Bad}


def _republish_per_spec(server: Server) -> None:
    """Make ``server`` answer a Republish of a message it no longer holds with
    Bad_MessageNotAvailable (OPC UA Part 4, 5.13.6).

    asyncua 2.1's server answers it with an empty message and status Good, and asyncua's
    own client, after it reactivates a session (auto-reconnect: a missed health probe, a
    dropped socket), republishes sequence numbers until it gets that status. Against the
    unpatched server that loop never ends: thousands of requests a second, each served
    by the twin's event loop, which starved ``live --serve`` so that it stopped stepping
    (the intermittent hang of ``test_live_serve_feeds_all_protocols_with_batch_ids``).
    """
    svc = server.iserver.subscription_service
    plain = svc.republish

    def republish(params: ua.RepublishParameters) -> ua.NotificationMessage:
        if params.SubscriptionId not in svc.subscriptions:
            raise ua.uaerrors.BadSubscriptionIdInvalid()
        msg = plain(params)
        if msg.SequenceNumber != params.RetransmitSequenceNumber:
            raise ua.uaerrors.BadMessageNotAvailable()
        return msg

    svc.republish = republish  # type: ignore[method-assign]


def _bounded_republish(client: Client) -> None:
    """The client side of the same fault, for servers that answer like asyncua's: a
    Republish answered with another message than the one asked for counts as
    Bad_MessageNotAvailable, so the client's gap filling after a reconnect ends."""
    session = client.uaclient.session
    plain = session.republish

    async def republish(subscription_id: int, seq: int) -> ua.NotificationMessage:
        msg = await plain(subscription_id, seq)
        if msg.SequenceNumber != seq:
            raise ua.uaerrors.BadMessageNotAvailable()
        return msg

    session.republish = republish  # type: ignore[method-assign,assignment]


class _OwnedDataValue(ua.DataValue):
    """A DataValue the twin's server builds for one write and never touches again.

    asyncua's server deep-copies every written DataValue once per monitored item
    (``MonitoredItemValues.set_current_datavalue``, "to prevent referencing the inner
    value"); for a Double or String that copy was two thirds of a shard server's CPU
    (cProfile, 1,000 tags at 1 Hz). The twin's values are built fresh per write and not
    mutated afterwards, so the copy is skipped for this type only (``_skip_owned_copies``);
    every other DataValue is still copied as asyncua does.
    """

    __slots__ = ()


def _skip_owned_copies() -> None:
    """Install the copy-free path for ``_OwnedDataValue`` (once per process; idempotent)."""
    from asyncua.server import monitored_item_service as mis

    values_cls: Any = mis.MonitoredItemValues
    if getattr(values_cls, "_pharma_twin_patched", False):
        return
    plain = values_cls.set_current_datavalue

    def set_current_datavalue(self: Any, cur_val: ua.DataValue) -> None:
        if type(cur_val) is _OwnedDataValue:
            self.old_dvalue = self.current_dvalue
            self.current_dvalue = cur_val
        else:
            plain(self, cur_val)

    values_cls.set_current_datavalue = set_current_datavalue
    values_cls._pharma_twin_patched = True


def quality_of(sc: ua.StatusCode) -> int:
    return GOOD if sc.is_good() else BAD if sc.is_bad() else UNCERTAIN


@dataclass(frozen=True)
class TagNode:
    tag: str
    uom: str
    equipment: str


class TwinOpcuaServer:
    """The twin's OPC UA server for a group of units (run one per group: a pure-Python
    server does not write 10,000 values/s)."""

    def __init__(
        self,
        endpoint: str,
        site_id: str,
        units: Mapping[str, Sequence[str]],  # area -> unit ids
        tags: Sequence[TagNode] | Mapping[str, Sequence[TagNode]],  # every unit's, or per unit
    ) -> None:
        self.endpoint, self.site_id = endpoint, site_id
        self.units = units
        self.unit_tags: dict[str, list[TagNode]] = {
            u: list(tags[u] if isinstance(tags, Mapping) else tags)
            for us in units.values()
            for u in us
        }
        self.server = Server()
        self.nodes: dict[tuple[str, str], ua.NodeId] = {}
        self.batch_nodes: dict[str, ua.NodeId] = {}
        self.idx = 0

    async def start(self) -> None:
        s = self.server
        await s.init()
        _republish_per_spec(s)
        _skip_owned_copies()
        s.set_endpoint(self.endpoint)
        s.set_server_name(f"pharma-twin {self.site_id}")
        s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.idx = await s.register_namespace(f"urn:pharma-twin:{self.site_id}")
        idx = self.idx
        site = await s.nodes.objects.add_folder(
            ua.NodeId(self.site_id, idx), f"{idx}:{self.site_id}"
        )
        for area, unit_ids in self.units.items():
            a = await site.add_folder(ua.NodeId(f"{self.site_id}.{area}", idx), f"{idx}:{area}")
            for unit in unit_ids:
                base = f"{self.site_id}.{area}.{unit}"
                u = await a.add_object(ua.NodeId(base, idx), f"{idx}:{unit}")
                b = await u.add_variable(
                    ua.NodeId(f"{base}.BatchId", idx),
                    f"{idx}:BatchId",
                    "",
                    varianttype=ua.VariantType.String,
                )
                self.batch_nodes[unit] = b.nodeid
                equipment: dict[str, Node] = {}
                for t in self.unit_tags[unit]:
                    eq = equipment.get(t.equipment)
                    if eq is None:
                        eq = equipment[t.equipment] = await u.add_object(
                            ua.NodeId(f"{base}.{t.equipment}", idx), f"{idx}:{unit}-{t.equipment}"
                        )
                    v = await eq.add_variable(
                        ua.NodeId(f"{base}.{t.tag}", idx),
                        f"{idx}:{t.tag}",
                        ua.Variant(float("nan"), ua.VariantType.Double),
                    )
                    lo, hi = INSTRUMENT_SPANS.get(t.uom, (0.0, 1e6))
                    eu = ua.EUInformation(
                        NamespaceUri=UNITS_NS,
                        UnitId=-1,
                        DisplayName=ua.LocalizedText(t.uom),
                        Description=ua.LocalizedText(t.uom),
                    )
                    await v.add_property(idx, "EngineeringUnits", eu)
                    await v.add_property(idx, "EURange", ua.Range(Low=lo, High=hi))
                    await s.write_attribute_value(
                        v.nodeid,
                        ua.DataValue(
                            ua.Variant(float("nan"), ua.VariantType.Double),
                            StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData),
                        ),
                    )
                    self.nodes[(unit, t.tag)] = v.nodeid
        await s.start()

    async def write(
        self,
        unit: str,
        ts: datetime,
        values: Mapping[str, float],
        quality: Mapping[str, int] | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Set the unit's tags (source time ``ts``, status from ``quality`` codes)."""
        await self.write_units(
            ts,
            {unit: values},
            {unit: quality} if quality else None,
            {unit: batch_id} if batch_id is not None else None,
        )

    async def write_units(
        self,
        ts: datetime,
        values: Mapping[str, Mapping[str, float]],
        quality: Mapping[str, Mapping[str, int]] | None = None,
        batch_ids: Mapping[str, str] | None = None,
    ) -> None:
        """Set the tags of several units at once (one source time ``ts``), as one step of
        the simulated clock does: one server timestamp and one status object per quality
        for the whole step, straight into the address space (``write_attribute_value`` of
        asyncua's address space, which notifies the monitored items)."""
        now = datetime.now(UTC)
        aspace = self.server.iserver.aspace
        value_attr = ua.AttributeIds.Value
        status = {q: ua.StatusCode(code) for q, code in _STATUS.items()}
        good = status[GOOD]
        double = ua.VariantType.Double
        for unit, batch_id in (batch_ids or {}).items():
            await aspace.write_attribute_value(
                self.batch_nodes[unit],
                value_attr,
                _OwnedDataValue(
                    ua.Variant(batch_id, ua.VariantType.String),
                    SourceTimestamp=ts,
                    ServerTimestamp=now,
                ),
            )
        nodes = self.nodes
        for unit, tag_values in values.items():
            q = (quality or {}).get(unit) or {}
            for tag, v in tag_values.items():
                dv = _OwnedDataValue(
                    ua.Variant(float(v), double),
                    StatusCode=status[q[tag]] if tag in q else good,
                    SourceTimestamp=ts,
                    ServerTimestamp=now,
                )
                await aspace.write_attribute_value(nodes[(unit, tag)], value_attr, dv)

    async def stop(self) -> None:
        """Stop serving; connections made while stopping are closed too.

        asyncua's ``Server.stop`` closes the open connections, stops listening a few loop
        turns later, then waits until no connection is left. A client that reconnects at
        once (asyncua's auto-reconnect: the gateway) gets in between; nothing closes its
        new connection, so the stop waited for ever (the other half of the intermittent
        ``live --serve`` hang). Until the stop ends, every connection is closed again.
        """
        stopping = asyncio.ensure_future(self.server.stop())
        while not stopping.done():
            await asyncio.wait({stopping}, timeout=0.1)
            for transport in list(self.server.iserver.asyncio_transports):
                transport.close()
        await stopping


class _Handler:
    def __init__(self, src: OpcuaSource) -> None:
        self.src = src

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.src._on_change(node.nodeid, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        log.warning("source %s: subscription status %s", self.src.name, status)


def _deliver_in_batches(sub: Any, src: OpcuaSource) -> None:
    """Hand each publish response of ``sub`` to ``src`` as one batch, at once.

    asyncua's ``Subscription.publish_callback`` schedules an asyncio task per data change
    and calls the handler once per item (for 1,000 tags at 1 Hz that was a third of the
    client's CPU: task creation, dispatch, a ``DataChangeNotif`` per value), and the source
    then waited for its next drain tick (up to a publishing interval) before ingesting.
    This callback walks the notification message itself, collects every value and
    ingests the lot before returning: no task per value and no added delay. It replaces
    the subscription's callback on the instance, so asyncua's own re-registration after
    a reconnect (``recreate``/``restore``/republish, which use ``self.publish_callback``)
    keeps using it. Uses ``Subscription._monitored_items`` (client handle -> item; pinned
    asyncua 2.1.0).
    """

    async def publish_callback(result: ua.PublishResult) -> None:
        sub.last_publish_at = time.monotonic()
        msg = result.NotificationMessage
        if msg.NotificationData is None:
            return
        sub.last_sequence_number = int(msg.SequenceNumber)
        items = sub._monitored_items
        for notif in msg.NotificationData:
            if isinstance(notif, ua.DataChangeNotification):
                for item in notif.MonitoredItems:
                    data = items.get(item.ClientHandle)
                    if data is None or data.node is None or item.Value is None:
                        continue
                    try:  # one odd value must not cost the rest of the message
                        src._on_change(data.node.nodeid, item.Value)
                    except Exception:
                        log.exception("source %s: data change of %s", src.name, data.node)
            elif isinstance(notif, ua.StatusChangeNotification):
                log.warning("source %s: subscription status %s", src.name, notif.Status)
        src._drain()

    sub.publish_callback = publish_callback
    if sub.subscription_id is not None:
        sub.server._subscription_callbacks[sub.subscription_id] = publish_callback


class OpcuaSource:
    """The gateway's OPC UA client for one server (see module docstring).

    ``security`` is an asyncua security string such as
    ``"Basic256Sha256,SignAndEncrypt,client_cert.der,client_key.pem"`` (None: no
    security); ``username``/``password`` log in with a user identity.
    """

    def __init__(
        self,
        gateway: Gateway,
        name: str,
        smap: SourceMap,
        url: str,
        site_id: str,
        publishing_interval_ms: float = 50.0,
        watchdog_s: float = 10.0,
        reconnect_max_delay_s: float = 30.0,
        security: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.gw, self.name, self.smap, self.url, self.site_id = gateway, name, smap, url, site_id
        self.publishing_interval_ms = publishing_interval_ms
        self.watchdog_s, self.reconnect_max_delay_s = watchdog_s, reconnect_max_delay_s
        self.security, self.username, self.password = security, username, password
        self.stats = gateway.stats(name, "opcua")
        self.index: dict[ua.NodeId, tuple[str, str, str | None]] = {}  # node -> unit, tag, uom
        self.batch_index: dict[ua.NodeId, str] = {}
        self.batch: dict[str, str | None] = {}
        self._pending: dict[str, list[Any]] = {}
        self._last_ts: datetime | None = None
        self._last_ts_us = 0
        self._stop = asyncio.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client: Client | None = None  # the current connection's client

    def _on_change(self, nodeid: ua.NodeId, dv: ua.DataValue) -> None:
        if nodeid in self.batch_index:
            v = dv.Value.Value if dv.Value is not None else None
            self.batch[self.batch_index[nodeid]] = str(v) if v else None
            return
        hit = self.index.get(nodeid)
        if hit is None:
            return
        unit, tag, uom = hit
        sc = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode(ua.StatusCodes.Good)
        if sc.value == ua.StatusCodes.BadWaitingForInitialData:
            return  # no reading yet: nothing to store
        ts = dv.SourceTimestamp or dv.ServerTimestamp or datetime.now(UTC)
        if ts is self._last_ts:  # the values of one step share their timestamp object
            ts_us = self._last_ts_us
        else:
            ts_us = int(ts.replace(tzinfo=ts.tzinfo or UTC).timestamp() * 1_000_000)
            self._last_ts, self._last_ts_us = ts, ts_us
        raw = dv.Value.Value if dv.Value is not None else None
        self._pending.setdefault(unit, []).append((tag, raw, uom, ts_us, quality_of(sc)))

    def _drain(self) -> None:
        pending, self._pending = self._pending, {}
        for unit, items in pending.items():
            try:
                self.gw.ingest(self.name, self.smap, unit, self.batch.get(unit), items)
            except Exception as e:  # keep the subscription alive; the error is visible
                self.stats.last_error = f"{type(e).__name__} ingesting {unit}: {e}"
                log.exception(
                    "source %s: error ingesting %d readings of %s", self.name, len(items), unit
                )

    async def _browse(self, client: Client) -> list[ua.NodeId]:
        idx = await client.get_namespace_index(f"urn:pharma-twin:{self.site_id}")
        site = await client.nodes.objects.get_child(f"{idx}:{self.site_id}")
        subs: list[ua.NodeId] = []
        for area in await site.get_children():
            for unit_node in await area.get_children():
                unit = (await unit_node.read_browse_name()).Name
                await self._browse_unit(unit, unit_node, subs)
        return subs

    async def _browse_unit(self, unit: str, node: Node, subs: list[ua.NodeId]) -> None:
        for child in await node.get_children():
            ncls = await child.read_node_class()
            name = (await child.read_browse_name()).Name
            if ncls == ua.NodeClass.Object:
                await self._browse_unit(unit, child, subs)
            elif ncls == ua.NodeClass.Variable and name == "BatchId":
                self.batch_index[child.nodeid] = unit
                subs.append(child.nodeid)
            elif ncls == ua.NodeClass.Variable:
                uom = None
                try:
                    eu = await (
                        await child.get_child(f"{child.nodeid.NamespaceIndex}:EngineeringUnits")
                    ).read_value()
                    uom = eu.DisplayName.Text
                except ua.UaError:
                    pass
                try:
                    self.smap.resolve(name, uom)
                except ValueError as e:
                    log.error("source %s: %s (node %s)", self.name, e, child.nodeid.to_string())
                self.index[child.nodeid] = (self.smap.unit(unit), name, uom)
                subs.append(child.nodeid)

    async def _on_lost(self, exc: Exception) -> None:
        if self.stats.connected:
            self.stats.reconnects += 1
        self.stats.connected = False
        self.stats.last_error = f"connection lost: {exc!r}"
        log.warning("source %s: OPC UA connection lost (%r); reconnecting", self.name, exc)

    async def run(self) -> None:
        """Connect (retrying with backoff), subscribe, and feed the gateway until ``stop``."""
        delay = 1.0
        while not self._stop.is_set():
            client = Client(
                self.url,
                timeout=10,
                watchdog_intervall=self.watchdog_s,
                auto_reconnect=True,
                reconnect_max_delay=self.reconnect_max_delay_s,
            )
            client.connection_lost_callback = self._on_lost
            # the URI in the gateway's certificate (subjectAltName; docs/gateway.md)
            client.application_uri = APPLICATION_URI
            self.client = client
            if self.username:
                client.set_user(self.username)
                client.set_password(self.password or "")
            try:
                if self.security:
                    await client.set_security_string(self.security)
                await client.connect()
            except (OSError, TimeoutError, ua.UaError) as e:
                self.stats.last_error = f"connect failed: {e!r}"
                log.error(
                    "source %s: cannot connect to %s (%r); retry in %.0f s",
                    self.name,
                    self.url,
                    e,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, self.reconnect_max_delay_s)
                continue
            delay = 1.0
            _bounded_republish(client)
            opcua_decode.install(client.uaclient.session)
            try:
                nodes = await self._browse(client)
                sub = await client.create_subscription(self.publishing_interval_ms, _Handler(self))
                _deliver_in_batches(sub, self)
                await sub.subscribe_data_change([client.get_node(n) for n in nodes])
                self.stats.connected = True
                log.info("source %s: subscribed to %d nodes on %s", self.name, len(nodes), self.url)
                while not self._stop.is_set():
                    self._drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._stop.wait(), self.publishing_interval_ms / 1000
                        )
                    if client.state is UaClientState.CONNECTED and not self.stats.connected:
                        self.stats.connected = True
                self._drain()
            finally:
                self.stats.connected = False
                with contextlib.suppress(Exception):  # already gone
                    await client.disconnect()

    def start_in_thread(self) -> None:
        """Run in a thread with its own event loop (the gateway service does this)."""

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            self._loop.run_until_complete(self.run())

        self._thread = threading.Thread(target=main, name=f"opcua-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)


__all__ = ["INSTRUMENT_SPANS", "OpcuaSource", "TagNode", "TwinOpcuaServer", "quality_of"]
