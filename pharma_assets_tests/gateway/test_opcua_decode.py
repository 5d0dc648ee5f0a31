"""The gateway's fast PublishResponse decoder gives what asyncua's decoder gives.

Messages are encoded by asyncua (``struct_to_binary``, the server's encoder) and decoded
both ways; the results must be equal dataclasses, for the shapes the decoder handles itself
(scalar Doubles with status and timestamps) and for those it hands back to asyncua
(strings, Null for bad quality, arrays, picoseconds, status changes, events)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import ua_binary as uab

from pharma_assets.gateway.protocols.opcua_decode import decode_publish_response

T = datetime(2026, 12, 4, 19, 0, 0, 123456, tzinfo=UTC)


def _item(h: int, value: ua.Variant | None, **kw: object) -> ua.MonitoredItemNotification:
    return ua.MonitoredItemNotification(ClientHandle=h, Value=ua.DataValue(value, **kw))  # type: ignore[arg-type]


def _response(*notifications: object, seq: int = 7) -> bytes:
    msg = ua.NotificationMessage(
        SequenceNumber=seq, PublishTime=T, NotificationData=list(notifications)
    )
    return uab.struct_to_binary(
        ua.PublishResponse(
            Parameters=ua.PublishResult(
                SubscriptionId=3,
                AvailableSequenceNumbers=[5, 6, seq],
                MoreNotifications=False,
                NotificationMessage=msg,
                Results=[ua.StatusCode(ua.StatusCodes.Good)],
            )
        )
    )


def _both(raw: bytes) -> tuple[ua.PublishResponse, ua.PublishResponse]:
    return (
        uab.struct_from_binary(ua.PublishResponse, Buffer(raw)),
        decode_publish_response(Buffer(raw)),
    )


DOUBLES = [
    _item(
        200 + i,
        ua.Variant(i / 3, ua.VariantType.Double),
        StatusCode=ua.StatusCode(
            (ua.StatusCodes.Good, ua.StatusCodes.Uncertain, ua.StatusCodes.Bad)[i % 3]
        ),
        SourceTimestamp=T + timedelta(seconds=i // 20),
        ServerTimestamp=T + timedelta(milliseconds=3 + i // 20),
    )
    for i in range(300)
]


@pytest.mark.parametrize(
    "items",
    [
        DOUBLES,
        # the decoder's own shape mixed with what it hands to asyncua per value
        [
            *DOUBLES[:5],
            _item(5, ua.Variant("BR01-B0001", ua.VariantType.String), SourceTimestamp=T),
            _item(
                6,
                ua.Variant(None, ua.VariantType.Null),
                StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData),
            ),
            _item(7, ua.Variant([1.0, 2.0], ua.VariantType.Double)),
            _item(8, ua.Variant(float("inf"), ua.VariantType.Double)),  # no timestamps
            _item(9, None),  # no value at all
            _item(10, ua.Variant(3, ua.VariantType.Int32), ServerTimestamp=T),
            *DOUBLES[5:10],
        ],
        [],
    ],
    ids=["doubles", "mixed", "empty"],
)
def test_data_changes_decode_as_asyncua_does(items: list[ua.MonitoredItemNotification]) -> None:
    ref, fast = _both(_response(ua.DataChangeNotification(MonitoredItems=items)))
    assert fast == ref
    assert len(fast.Parameters.NotificationMessage.NotificationData[0].MonitoredItems) == len(items)


def test_picoseconds_status_changes_and_events_go_through_asyncua() -> None:
    pico = _item(
        11,
        ua.Variant(1.5, ua.VariantType.Double),
        SourceTimestamp=T,
        SourcePicoseconds=5,
        ServerTimestamp=T,
        ServerPicoseconds=7,
    )
    raw = _response(
        ua.DataChangeNotification(MonitoredItems=[DOUBLES[0], pico]),
        ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout)),
        ua.EventNotificationList(
            Events=[ua.EventFieldList(ClientHandle=4, EventFields=[ua.Variant("x")])]
        ),
        ua.DataChangeNotification(MonitoredItems=DOUBLES[:3]),
    )
    ref, fast = _both(raw)
    assert fast == ref
    kinds = [type(n) for n in fast.Parameters.NotificationMessage.NotificationData]
    assert kinds == [
        ua.DataChangeNotification,
        ua.StatusChangeNotification,
        ua.EventNotificationList,
        ua.DataChangeNotification,
    ]


def test_keepalive_and_truncated_messages() -> None:
    ref, fast = _both(_response(seq=1))  # no notifications: a keep-alive
    assert fast == ref
    raw = _response(ua.DataChangeNotification(MonitoredItems=DOUBLES[:50]))
    with pytest.raises(Exception):  # noqa: B017 - asyncua raises its own NotEnoughData
        uab.struct_from_binary(ua.PublishResponse, Buffer(raw[:-200]))
    with pytest.raises(Exception):  # noqa: B017 - and so must the fast decoder
        decode_publish_response(Buffer(raw[:-200]))
