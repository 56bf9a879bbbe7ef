"""An open /api/v1/events/ws socket follows its key and tenant: revoking the key closes it with
4401, disabling the tenant with 4403, within about a second; other sockets stream on."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from runtime.api.appkeys import BUS
from runtime.events.models import DtmfReceived, Event
from tests.events.test_events_bus import _call


async def _socket(api, key: str) -> aiohttp.ClientWebSocketResponse:
    ws = await api.http.ws_connect(api.base_url + "/api/v1/events/ws", headers={"Authorization": f"Bearer {key}"})
    await ws.send_json({"type": "subscribe", "topics": ["*"]})
    assert (await ws.receive_json(timeout=3))["type"] == "subscribed"
    return ws


async def _closed_within(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> tuple[int | None, float, int]:
    """(close code, seconds waited, events received meanwhile)."""
    started, events = time.monotonic(), 0
    while (left := started + timeout - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return ws.close_code, time.monotonic() - started, events
        events += 1
    return None, time.monotonic() - started, events


async def _publish(api, tenant_id: str, call_id: str, seq: int) -> None:
    await api.app[BUS].publish(Event.of(DtmfReceived(digit="1"), tenant_id=tenant_id, call_id=call_id, seq=seq,
                                        trace_id="tr"))


async def _key_id(api, tenant_id: str, key: str) -> str:
    status, body, _ = await api.call("GET", "/api/v1/auth/api-keys", key)
    assert status == 200, body
    return next(k["id"] for k in body["items"] if key.endswith(k["last4"]) and k["tenant_id"] == tenant_id)


async def _feed(api, tenant_id: str, call_id: str, stop: asyncio.Event) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        await _publish(api, tenant_id, call_id, seq)
        await asyncio.sleep(0.05)


async def test_revoking_the_key_closes_its_sockets_with_4401(api) -> None:
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    call_a = await _call(api.control, tenant_a)
    status, second, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key,
                                       json={"tenant_id": tenant_a, "scope": "runtime"})
    assert status == 201
    doomed, other = await _socket(api, key_a), await _socket(api, second["key"])
    stop = asyncio.Event()
    feeding = asyncio.create_task(_feed(api, tenant_a, call_a, stop))
    try:
        key_id = await _key_id(api, tenant_a, key_a)
        status, _, _ = await api.call("DELETE", f"/api/v1/auth/api-keys/{key_id}", api.admin_key)
        assert status == 200
        code, waited, _ = await _closed_within(doomed, 3.0)
        assert code == 4401 and waited < 3.0
        # The tenant's other key streams on.
        before = 0
        while before < 3:
            assert (await other.receive_json(timeout=3))["type"] == "event"
            before += 1
        assert not other.closed
    finally:
        stop.set()
        await feeding
        await doomed.close()
        await other.close()


async def test_disabling_the_tenant_closes_its_sockets_with_4403_and_spares_others(api) -> None:
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    tenant_b, key_b = await api.tenant_with_key("tenant-b")
    call_a, call_b = await _call(api.control, tenant_a), await _call(api.control, tenant_b)
    ws_a, ws_b = await _socket(api, key_a), await _socket(api, key_b)
    stop = asyncio.Event()
    feeding = [asyncio.create_task(_feed(api, tenant_a, call_a, stop)),
               asyncio.create_task(_feed(api, tenant_b, call_b, stop))]
    try:
        status, body, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_a}", api.admin_key,
                                         json={"status": "disabled"})
        assert status == 200, body
        code, waited, _ = await _closed_within(ws_a, 3.0)
        assert code == 4403 and waited < 3.0
        for _ in range(3):
            assert (await ws_b.receive_json(timeout=3))["type"] == "event"
        assert not ws_b.closed
    finally:
        stop.set()
        await asyncio.gather(*feeding)
        await ws_a.close()
        await ws_b.close()


async def test_a_change_made_outside_the_api_is_seen_too(api) -> None:
    """Another process (the CLI) writes the database directly: the socket follows it."""
    from runtime.store.tables import ALL_TENANTS

    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    ws = await _socket(api, key_a)
    try:
        await api.control.store.tenants.update(tenant_a, {"status": "disabled"}, tenant_id=ALL_TENANTS)
        code, waited, _ = await _closed_within(ws, 3.0)
        assert code == 4403 and waited < 3.0
    finally:
        await ws.close()
