"""GET /api/v1/events/ws end to end: a live server and a real aiohttp WebSocket client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from runtime.api import event_socket as websocket
from runtime.api.appkeys import BUS
from runtime.events.models import CallConnected, DtmfReceived, Event, TranscriptCreated
from tests.api.support import start_live_api, stop_live_api, with_overrides
from tests.events.test_events_bus import _call


def _ws_url(api, token: str | None = None) -> str:
    url = api.base_url + "/api/v1/events/ws"
    return url + f"?token={token}" if token else url


async def _connect(api, key: str, via: str = "header") -> aiohttp.ClientWebSocketResponse:
    if via == "header":
        return await api.http.ws_connect(_ws_url(api), headers={"Authorization": f"Bearer {key}"})
    return await api.http.ws_connect(_ws_url(api, key))


async def _recv(ws, timeout: float = 3.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return msg.json()


async def _subscribe(ws, topics, call_id=None) -> dict:
    body = {"type": "subscribe", "topics": topics}
    if call_id:
        body["call_id"] = call_id
    await ws.send_json(body)
    reply = await _recv(ws)
    assert reply["type"] == "subscribed", reply
    return reply


async def _publish(api, payload, tenant_id: str, call_id: str | None, seq: int = 1) -> Event:
    event = Event.of(payload, tenant_id=tenant_id, call_id=call_id, seq=seq, trace_id="tr")
    await api.app[BUS].publish(event)
    return event


async def _no_message(ws, wait: float = 0.2) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=wait)


@pytest.mark.parametrize("via", ["header", "token"])
async def test_subscribe_receive_and_unsubscribe(api, via):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    tenant_b, _ = await api.tenant_with_key("tenant-b")
    call_a, call_b = await _call(api.control, tenant_a), await _call(api.control, tenant_b)
    ws = await _connect(api, key_a, via)
    try:
        reply = await _subscribe(ws, ["voice.call.*", "transcript.*"])
        assert reply == {"type": "subscribed", "topics": ["transcript.*", "voice.call.*"], "call_id": None}
        await _publish(api, TranscriptCreated(role="caller", text="b's words"), tenant_b, call_b)  # other tenant
        await _publish(api, DtmfReceived(digit="5"), tenant_a, call_a)  # topic not subscribed
        sent = await _publish(api, TranscriptCreated(role="caller", text="hello"), tenant_a, call_a, 2)
        got = await _recv(ws)
        assert got == {"type": "event", "event": sent.to_dict()}
        await _no_message(ws)

        await ws.send_json({"type": "unsubscribe", "topics": ["voice.call.*", "transcript.*"]})
        assert (await _recv(ws))["type"] == "unsubscribed"
        await _publish(api, TranscriptCreated(role="caller", text="again"), tenant_a, call_a, 3)
        await _no_message(ws)
    finally:
        await ws.close()


async def test_call_filter_and_one_copy_per_event(api):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    call_1, call_2 = await _call(api.control, tenant_a), await _call(api.control, tenant_a)
    ws = await _connect(api, key_a)
    try:
        await _subscribe(ws, ["dtmf.*"], call_id=call_2)
        await _subscribe(ws, ["*"], call_id=call_2)  # overlapping: still one copy per event
        await _publish(api, DtmfReceived(digit="1"), tenant_a, call_1)
        sent = await _publish(api, DtmfReceived(digit="2"), tenant_a, call_2)
        assert (await _recv(ws))["event"]["id"] == sent.id
        await _no_message(ws)
        # Unsubscribing needs the same topics and call id.
        await ws.send_json({"type": "unsubscribe", "topics": ["*"]})
        assert (await _recv(ws))["type"] == "error"
        await ws.send_json({"type": "unsubscribe", "topics": ["*"], "call_id": call_2})
        assert (await _recv(ws)) == {"type": "unsubscribed", "topics": ["*"], "call_id": call_2}
    finally:
        await ws.close()


async def test_bad_messages_get_errors_and_the_socket_stays_open(api):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    ws = await _connect(api, key_a)
    try:
        for bad in ("{not json", "[1, 2]", '{"type": "dance"}', '{"type": "subscribe", "topics": ["nope.*"]}',
                    '{"type": "subscribe", "topics": []}', '{"type": "subscribe", "topics": "voice.call.*"}',
                    '{"type": "subscribe", "topics": ["*"], "call_id": 5}'):
            await ws.send_str(bad)
            reply = await _recv(ws)
            assert reply["type"] == "error" and reply["message"], (bad, reply)
        await ws.send_bytes(b"\x00\x01")
        assert (await _recv(ws))["type"] == "error"
        await _subscribe(ws, ["*"])
        sent = await _publish(api, CallConnected(provider="twilio"), tenant_a, None)
        assert (await _recv(ws))["event"]["id"] == sent.id
    finally:
        await ws.close()


async def test_refusals_before_the_upgrade(api):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    cases = [
        ({}, 401), ({"Authorization": "Bearer vk_rt_" + "x" * 40}, 401),
        ({"Authorization": f"Bearer {api.admin_key}"}, 403),
    ]
    for headers, status in cases:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await api.http.ws_connect(_ws_url(api), headers=headers)
        assert info.value.status == status
        # The same request as plain HTTP: a JSON error body.
        code, body, _ = await api.call("GET", "/api/v1/events/ws", headers=headers)
        assert code == status and set(body) == {"error", "message", "details"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await api.http.ws_connect(_ws_url(api, api.admin_key))
    assert info.value.status == 403
    # A runtime key without an upgrade: 400, JSON.
    code, body, _ = await api.call("GET", "/api/v1/events/ws", key_a)
    assert code == 400 and body["error"] == "bad_request"


async def test_realtime_rate_limit(settings):
    limits = {"rate_limits": {"runtime": {"realtime": {"limit": 1, "window_s": 60}}}}
    live, runner = await start_live_api(with_overrides(settings, limits=limits))
    try:
        _, key = await live.tenant_with_key("tenant-a")
        ws = await _connect(live, key)
        await ws.close()
        code, body, resp = await live.call("GET", "/api/v1/events/ws", key)
        assert code == 429 and body["error"] == "rate_limited" and "Retry-After" in resp.headers
    finally:
        await stop_live_api(live, runner)


async def test_slow_subscriber_closed_with_4008_without_blocking_publish(api, monkeypatch):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    monkeypatch.setattr(websocket, "QUEUE_SIZE", 5)  # read when a socket opens
    slow = await _connect(api, key_a)
    monkeypatch.setattr(websocket, "QUEUE_SIZE", 100)
    fast = await _connect(api, key_a)
    try:
        await _subscribe(slow, ["*"])
        await _subscribe(fast, ["*"])
        bus = api.app[BUS]
        # Fan out faster than any socket can drain (no await in between): the slow one overflows.
        events = [Event.of(CallConnected(provider="twilio"), tenant_id=tenant_a, call_id=None, seq=i, trace_id=None)
                  for i in range(20)]
        for event in events[:8]:
            bus.fan_out(event)
        msgs = []
        while True:
            msg = await slow.receive(timeout=3)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
            msgs.append(msg.json())
        assert slow.close_code == 4008
        assert len(msgs) <= 5
        # Publishing goes on; the slow socket's subscription is gone, the fast one got everything.
        await api.app[BUS].publish(events[8])
        assert sum(1 for s in bus._subscriptions if isinstance(s, websocket.SocketSubscription)) == 1
        got = [(await _recv(fast))["event"]["seq"] for _ in range(9)]
        assert got == list(range(9))
    finally:
        await slow.close()
        await fast.close()


async def test_closing_the_socket_removes_its_subscription(api):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    bus = api.app[BUS]
    before = len(bus._subscriptions)
    ws = await _connect(api, key_a)
    await _subscribe(ws, ["*"])
    assert len(bus._subscriptions) == before + 1
    await ws.close()
    for _ in range(100):
        if len(bus._subscriptions) == before:
            break
        await asyncio.sleep(0.01)
    assert len(bus._subscriptions) == before
