"""A faster decoder for OPC UA PublishResponses carrying data changes (the gateway's hot path).

asyncua decodes every message with generic, per-field Python deserializers built from the
dataclasses; for a subscription of 1,000 Double tags at 1 Hz that decoding was about 80 %
of the gateway client's CPU (cProfile, 2026-12-04). Almost all of a PublishResponse is a
DataChangeNotification: a list of (client handle, DataValue) where the DataValue is a
scalar Double with a status code and two timestamps. This module decodes exactly that
shape with ``struct.unpack_from`` on the message bytes and hands everything else to
asyncua's own decoders:

* the response header, the publish result's other fields and DiagnosticInfos: asyncua's
  deserializers for those types (once per message, cheap);
* any notification other than a DataChangeNotification (status changes, events), and a
  DataChangeNotification with anything unusual in it (a DataValue with picoseconds, a
  non-binary body): ``extensionobject_from_binary``, as asyncua does;
* a Variant that is not a scalar Double (strings such as BatchId, Null for bad quality,
  arrays): asyncua's ``variant_from_binary``.

The result is the same ``ua.PublishResponse`` asyncua builds (equal as dataclasses; tested
in ``pharma_assets_tests/gateway/test_opcua_decode.py`` against ``struct_from_binary`` on
messages encoded by asyncua). ``install`` puts it into one client session's ``publish``;
if it ever fails on a message, that message is decoded by asyncua instead (logged once).
"""

# asyncua annotates with NewType aliases that plain ints satisfy at run time:
# mypy: disable-error-code="arg-type"
from __future__ import annotations

import logging
import struct
from dataclasses import fields
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import ua_binary as uab

log = logging.getLogger(__name__)

_DCN_BINARY = ua.FourByteNodeId(ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary)
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_DBL = struct.Struct("<d")
_HANDLE_MASK = struct.Struct("<IB")
_DOUBLE = ua.VariantType.Double
_NONE = type(None)


class _Unusual(Exception):
    """Something this decoder does not handle itself: decode the part with asyncua."""


def _field_decoders(cls: type) -> list[tuple[str, Any]]:
    hints = uab.get_safe_type_hints(cls, {"ua": ua})
    return [(f.name, uab._create_type_deserializer(hints[f.name], cls)) for f in fields(cls)]


_RESULT_FIELDS = _field_decoders(ua.PublishResult)
_MESSAGE_FIELDS = _field_decoders(ua.NotificationMessage)
_decode_diagnostics = dict(_field_decoders(ua.DataChangeNotification))["DiagnosticInfos"]


def _decode_datachange(body: Buffer) -> ua.DataChangeNotification:
    raw, pos = body._data, body._cur_pos
    end = pos + len(body)
    (n,) = _I32.unpack_from(raw, pos)
    pos += 4
    items: list[ua.MonitoredItemNotification] = []
    append = items.append
    to_dt = ua.win_epoch_to_datetime
    # a message's values share few timestamps (a unit's tags, a server's step) and status
    # codes: convert each once per message (the objects are read, never modified)
    times: dict[int, Any] = {}
    statuses: dict[int, ua.StatusCode] = {}
    good = ua.StatusCode()
    variant = ua.Variant
    datavalue = ua.DataValue
    notification = ua.MonitoredItemNotification
    for _ in range(max(n, 0)):
        handle, mask = _HANDLE_MASK.unpack_from(raw, pos)
        pos += 5
        if mask & 0b110000:  # picoseconds: let asyncua's field order decide
            raise _Unusual
        value = None
        if mask & 1:
            if raw[pos] == 11:  # scalar Double
                value = variant(_DBL.unpack_from(raw, pos + 1)[0], _DOUBLE)
                pos += 9
            else:
                sub = Buffer(raw, pos, end - pos)
                value = uab.variant_from_binary(sub)
                pos = sub.cur_pos
        if mask & 2:
            code = _U32.unpack_from(raw, pos)[0]
            pos += 4
            status = statuses.get(code)
            if status is None:
                status = statuses[code] = ua.StatusCode(code)
        else:
            status = good
        src = srv = None
        if mask & 4:
            e = _I64.unpack_from(raw, pos)[0]
            pos += 8
            src = times.get(e)
            if src is None:
                src = times[e] = to_dt(e)
        if mask & 8:
            e = _I64.unpack_from(raw, pos)[0]
            pos += 8
            srv = times.get(e)
            if srv is None:
                srv = times[e] = to_dt(e)
        if pos > end:
            raise _Unusual
        append(
            notification(
                ClientHandle=handle,
                Value=datavalue(
                    Value=value, StatusCode=status, SourceTimestamp=src, ServerTimestamp=srv
                ),
            )
        )
    rest = Buffer(raw, pos, end - pos)
    diags = _decode_diagnostics(rest)
    return ua.DataChangeNotification(MonitoredItems=items, DiagnosticInfos=diags)


def _decode_notification_data(data: Buffer) -> list[Any]:
    n = uab.Primitives.Int32.unpack(data)
    out: list[Any] = []
    for _ in range(max(n, 0)):
        start = data.copy()
        typeid = uab.nodeid_from_binary(data)
        encoding = ord(data.read(1))
        if typeid == _DCN_BINARY and encoding == 1:
            length = uab.Primitives.Int32.unpack(data)
            if length >= 1:
                body = data.copy(length)
                data.skip(length)
                try:
                    out.append(_decode_datachange(body))
                    continue
                except (_Unusual, struct.error, IndexError):
                    pass
        # anything else, or an unusual data change: asyncua's decoder, from the start
        # of this extension object
        data._cur_pos, data._size = start._cur_pos, len(start)
        out.append(uab.extensionobject_from_binary(data))
    return out


def decode_publish_response(data: Buffer) -> ua.PublishResponse:
    """``struct_from_binary(ua.PublishResponse, data)``, faster for data changes."""
    type_id = uab.nodeid_from_binary(data)
    header = uab.struct_from_binary(ua.ResponseHeader, data)
    result: dict[str, Any] = {}
    for name, dec in _RESULT_FIELDS:
        if name == "NotificationMessage":
            msg: dict[str, Any] = {}
            for mname, mdec in _MESSAGE_FIELDS:
                msg[mname] = (
                    _decode_notification_data(data) if mname == "NotificationData" else mdec(data)
                )
            result[name] = ua.NotificationMessage(**msg)
        else:
            result[name] = dec(data)
    return ua.PublishResponse(
        TypeId=type_id, ResponseHeader=header, Parameters=ua.PublishResult(**result)
    )


def install(session: Any) -> None:
    """Decode ``session``'s PublishResponses with ``decode_publish_response`` (an asyncua
    ``UaSession``; it lives as long as its ``Client``, across reconnects). Idempotent."""
    if getattr(session, "_pharma_fast_publish", False):
        return
    from asyncua.client.ua_session import UaStructParsingError

    warned = [False]

    async def publish(acks: list[ua.SubscriptionAcknowledgement]) -> ua.PublishResponse:
        request = ua.PublishRequest()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        data = await session._send_request(request, timeout=0)
        copy = data.copy()
        try:
            return decode_publish_response(data)
        except Exception:
            if not warned[0]:
                warned[0] = True
                log.warning("fast publish decoding failed; asyncua decodes", exc_info=True)
        try:
            return uab.struct_from_binary(ua.PublishResponse, copy)
        except Exception as ex:
            log.exception("Error parsing notification from server")
            raise UaStructParsingError from ex

    session.publish = publish
    session._pharma_fast_publish = True


__all__ = ["decode_publish_response", "install"]
