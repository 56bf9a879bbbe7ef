"""Outbound webhooks end to end: outbox -> DeliveryWorker -> a local receiver that checks signatures."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest_asyncio
from aiohttp import web

from runtime.api.appkeys import BUS, DELIVERY
from runtime.config import WebhookDeliverySettings
from runtime.events.delivery import DeliveryWorker, parse_retry_after, sign, url_has_prefix, verify
from runtime.events.models import CallFailed, Event
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides


@dataclass
class Receiver:
    """A webhook endpoint: checks each request's signature, answers from a script (then 200)."""

    secret: str = ""
    script: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0
    gate: asyncio.Event | None = None  # when set: every request waits for it (a receiver that hangs)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({
            "headers": dict(request.headers), "body": body, "path": request.path,
            "signed": verify(self.secret, request.headers.get("X-Voicectl-Signature"), body),
        })
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        status = self.script.pop(0) if self.script else 200
        headers = {"Retry-After": "0"} if status in (429, 503) else {}
        return web.json_response({"ok": status < 300}, status=status, headers=headers)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _fast(settings, attempts: int = 4, timeout_s: float = 2.0):
    return with_overrides(settings, limits=high_limits(),
                          events={"webhooks": {"attempts": attempts, "backoff_cap_s": 0.05, "timeout_s": timeout_s}})


@pytest_asyncio.fixture
async def receiver():
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


async def _hook(api, key: str, url: str, events: list[str] | None = None) -> dict[str, Any]:
    status, hook, _ = await api.call("POST", "/api/v1/webhooks", key, json={"url": url, "events": events or ["*"]})
    assert status == 201, hook
    return hook


async def _publish(api, tenant_id: str) -> Event:
    event = Event.of(CallFailed(reason="busy", message="line busy"), tenant_id=tenant_id, call_id=None, seq=1,
                     trace_id="tr")
    await api.app[BUS].publish(event)
    return event


async def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def _deliveries(api, key: str, hook_id: str) -> list[dict[str, Any]]:
    status, page, _ = await api.call("GET", f"/api/v1/webhooks/{hook_id}/deliveries", key)
    assert status == 200, page
    return page["items"]


def _settled(api, key, hook_id, status: str):
    async def check() -> bool:
        items = await _deliveries(api, key, hook_id)
        return bool(items) and items[0]["status"] == status
    return check


def test_sign_and_verify():
    body = b'{"id":"evt_1"}'
    header = sign("whsec_x", body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify("whsec_x", header, body, now=1_700_000_100)
    assert not verify("whsec_x", header, body, now=1_700_000_400)  # outside the tolerance
    assert not verify("whsec_y", header, body, now=1_700_000_000)
    assert not verify("whsec_x", header, body + b" ", now=1_700_000_000)
    assert not verify("whsec_x", "garbage", body) and not verify("whsec_x", None, body)


def test_backoff_full_jitter_cap_and_retry_after():
    config = WebhookDeliverySettings(attempts=8, backoff_cap_s=300, timeout_s=5)
    top = DeliveryWorker(None, None, config, jitter=lambda: 1.0)  # type: ignore[arg-type]
    assert [top.backoff(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    low = DeliveryWorker(None, None, config, jitter=lambda: 0.25)  # type: ignore[arg-type]
    assert low.backoff(3) == 1.0
    assert top.backoff(1, retry_after=42) == 42 and top.backoff(1, retry_after=10_000) == 300
    assert parse_retry_after("7") == 7 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def test_n8n_prefix_must_end_at_a_url_boundary():
    assert url_has_prefix("https://n8n.example/webhook/abc", "https://n8n.example")
    assert url_has_prefix("https://n8n.example/webhook/abc", "https://n8n.example/webhook/")
    assert not url_has_prefix("https://n8n.example.evil/webhook", "https://n8n.example")
    assert not url_has_prefix("https://other.example/", "https://n8n.example")


async def test_retries_until_delivered_with_signature_and_event_id(settings, receiver):
    live, runner = await start_live_api(_fast(settings))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook", ["voice.call.*"])
        receiver.secret = hook["signing_secret"]
        receiver.script = [500, 500, 200]
        event = await _publish(live, tenant_id)
        await _wait_for(_settled(live, key, hook["id"], "delivered"))
        assert len(receiver.requests) == 3
        for req in receiver.requests:
            assert req["signed"]
            assert req["headers"]["X-Voicectl-Event-Id"] == event.id
            assert req["headers"]["Content-Type"] == "application/json"
            assert req["headers"]["User-Agent"] == "voicectl-webhooks/1"
            assert orjson.loads(req["body"]) == event.to_dict()
            assert req["path"] == "/hook"
        [delivery] = await _deliveries(live, key, hook["id"])
        assert delivery["attempts"] == 3 and delivery["last_status_code"] == 200 and delivery["delivered_at"]
        assert delivery["event_id"] == event.id and delivery["topic"] == "voice.call.failed"
        assert [(a["attempt"], a["status_code"], a["error"]) for a in delivery["attempt_log"]] == [
            (1, 500, "HTTP 500"), (2, 500, "HTTP 500"), (3, 200, None)]
        assert all(a["duration_ms"] >= 0 for a in delivery["attempt_log"])
    finally:
        await stop_live_api(live, runner)


async def test_fails_after_max_attempts_and_honours_retry_after(settings, receiver):
    live, runner = await start_live_api(_fast(settings, attempts=3))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook")
        receiver.secret = hook["signing_secret"]
        receiver.script = [503, 500, 500, 500, 500]
        await _publish(live, tenant_id)
        await _wait_for(_settled(live, key, hook["id"], "failed"))
        await asyncio.sleep(0.2)  # nothing more is sent
        assert len(receiver.requests) == 3
        [delivery] = await _deliveries(live, key, hook["id"])
        assert delivery["attempts"] == 3 and delivery["last_status_code"] == 500 and delivery["next_attempt_at"] is None
        assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 500, 500]
    finally:
        await stop_live_api(live, runner)


async def test_timeout_and_unreachable_count_as_failed_attempts(settings, receiver):
    live, runner = await start_live_api(_fast(settings, attempts=1, timeout_s=0.2))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        slow = await _hook(live, key, receiver.url + "/slow")
        dead = await _hook(live, key, "http://127.0.0.1:1/nothing-listens")
        receiver.secret = slow["signing_secret"]
        receiver.delay_s = 1.0
        await _publish(live, tenant_id)
        await _wait_for(_settled(live, key, slow["id"], "failed"))
        await _wait_for(_settled(live, key, dead["id"], "failed"))
        [timed_out] = await _deliveries(live, key, slow["id"])
        assert timed_out["last_error"] == "no response within 0.2 s" and timed_out["last_status_code"] is None
        [refused] = await _deliveries(live, key, dead["id"])
        assert refused["last_error"] and refused["last_status_code"] is None
    finally:
        await stop_live_api(live, runner)


async def test_restart_mid_delivery_loses_nothing(settings, receiver):
    fast = _fast(settings, attempts=50)
    live, runner = await start_live_api(fast)
    tenant_id, key = await live.tenant_with_key("acme")
    hook = await _hook(live, key, receiver.url + "/hook")
    receiver.secret = hook["signing_secret"]
    receiver.script = [500] * 1000
    event = await _publish(live, tenant_id)
    await _wait_for(lambda: asyncio.sleep(0, len(receiver.requests) >= 2))
    await stop_live_api(live, runner)  # the delivery is still pending (failing)
    receiver.script = []  # the receiver recovers while the runtime is down
    live, runner = await start_live_api(fast)
    try:
        await _wait_for(_settled(live, key, hook["id"], "delivered"))
        [delivery] = await _deliveries(live, key, hook["id"])
        assert delivery["event_id"] == event.id
        assert delivery["attempts"] == len(receiver.requests) == len(delivery["attempt_log"])
        assert {r["headers"]["X-Voicectl-Event-Id"] for r in receiver.requests} == {event.id}
        rows, _ = await live.control.store.webhook_deliveries.list(tenant_id=tenant_id)
        assert len(rows) == 1
    finally:
        await stop_live_api(live, runner)


async def test_rows_left_sending_by_a_dead_process_are_resumed(settings, receiver):
    fast = _fast(settings)
    live, runner = await start_live_api(fast)
    tenant_id, key = await live.tenant_with_key("acme")
    hook = await _hook(live, key, receiver.url + "/hook")
    receiver.secret = hook["signing_secret"]
    await live.app[DELIVERY].stop()  # as if the worker died: nothing drains the outbox
    event = await _publish(live, tenant_id)
    store = live.control.store
    [row], _ = await store.webhook_deliveries.list(tenant_id=tenant_id)
    # A claim by a process that died long ago.
    await store.webhook_deliveries.update(row["id"], {"status": "sending", "updated_at": "2000-01-01T00:00:00.000000Z"},
                                          tenant_id=tenant_id)
    await stop_live_api(live, runner)
    assert receiver.requests == []
    live, runner = await start_live_api(fast)
    try:
        await _wait_for(_settled(live, key, hook["id"], "delivered"))
        assert [r["headers"]["X-Voicectl-Event-Id"] for r in receiver.requests] == [event.id]
    finally:
        await stop_live_api(live, runner)


async def test_n8n_header_sent_only_under_its_url(settings, receiver):
    live, runner = await start_live_api(_fast(settings))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        status, body, _ = await live.call("PUT", "/api/v1/credentials/n8n", live.admin_key, tenant_id=tenant_id, json={
            "fields": {"url": receiver.url + "/n8n", "header_name": "X-N8N-Auth"}, "secret": "n8n-header-value"})
        assert status == 200, body
        inside = await _hook(live, key, receiver.url + "/n8n/webhook/abc")
        outside = await _hook(live, key, receiver.url + "/elsewhere")
        receiver.secret = inside["signing_secret"]
        await _publish(live, tenant_id)
        await _wait_for(_settled(live, key, inside["id"], "delivered"))
        await _wait_for(_settled(live, key, outside["id"], "delivered"))
        by_path = {r["path"]: r["headers"] for r in receiver.requests}
        assert by_path["/n8n/webhook/abc"]["X-N8N-Auth"] == "n8n-header-value"
        assert "X-N8N-Auth" not in by_path["/elsewhere"]
    finally:
        await stop_live_api(live, runner)


async def test_disabled_webhook_is_skipped_and_deleted_one_takes_its_rows(settings, receiver):
    live, runner = await start_live_api(_fast(settings))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook")
        gone = await _hook(live, key, receiver.url + "/gone")
        await live.app[DELIVERY].stop()
        await _publish(live, tenant_id)
        await live.call("PATCH", f"/api/v1/webhooks/{hook['id']}", key, json={"active": False})
        await live.call("DELETE", f"/api/v1/webhooks/{gone['id']}", key)
        rows, _ = await live.control.store.webhook_deliveries.list(tenant_id=tenant_id)
        assert [r["webhook_id"] for r in rows] == [hook["id"]]
        worker = DeliveryWorker(live.control.store, live.control.secrets,
                                live.app[DELIVERY].config)
        await worker.start()
        worker.wake()
        await _wait_for(_settled(live, key, hook["id"], "skipped"))
        await worker.stop()
        assert receiver.requests == []
    finally:
        await stop_live_api(live, runner)


async def test_webhook_test_route(settings, receiver):
    live, runner = await start_live_api(_fast(settings))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook")
        receiver.secret = hook["signing_secret"]
        status, result, _ = await live.call("POST", f"/api/v1/webhooks/{hook['id']}/test", key)
        assert status == 200, result
        assert result["delivered"] is True and result["status_code"] == 200 and result["error"] is None
        [req] = receiver.requests
        assert req["signed"] and req["headers"]["X-Voicectl-Event-Id"] == result["event_id"]
        sample = orjson.loads(req["body"])
        assert sample["topic"] == "webhook.test" and sample["tenant_id"] == tenant_id
        receiver.script = [500]
        status, result, _ = await live.call("POST", f"/api/v1/webhooks/{hook['id']}/test", key)
        assert status == 200 and result["delivered"] is False and result["status_code"] == 500
        assert result["error"] == "HTTP 500"
        # Another tenant's key: not found.
        _, other = await live.tenant_with_key("other")
        status, body, _ = await live.call("POST", f"/api/v1/webhooks/{hook['id']}/test", other)
        assert status == 404 and body["error"] == "not_found"
        status, body, _ = await live.call("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", other)
        assert status == 404
    finally:
        await stop_live_api(live, runner)


async def test_one_tenants_hanging_receiver_does_not_hold_the_others_deliveries(settings, receiver):
    """20 events to a receiver that never answers take at most ``per_tenant`` (4) of the 16
    delivery slots: another tenant's events are delivered meanwhile."""
    hanging = Receiver(gate=asyncio.Event())
    await hanging.start()
    live, runner = await start_live_api(_fast(settings, timeout_s=30))
    try:
        slow_tenant, slow_key = await live.tenant_with_key("slow")
        fast_tenant, fast_key = await live.tenant_with_key("fast")
        slow_hook = await _hook(live, slow_key, hanging.url + "/hook")
        fast_hook = await _hook(live, fast_key, receiver.url + "/hook")
        receiver.secret = fast_hook["signing_secret"]
        for _ in range(20):
            await _publish(live, slow_tenant)
        await _wait_for(lambda: _true(len(hanging.requests) >= 4))
        await _publish(live, fast_tenant)
        await _wait_for(_settled(live, fast_key, fast_hook["id"], "delivered"))
        assert receiver.requests[0]["signed"]
        assert len(hanging.requests) == 4  # the slow tenant's share, not every slot
        hanging.gate.set()
        await _wait_for(lambda: _all_delivered(live, slow_key, slow_hook["id"], 20), timeout=30)
    finally:
        hanging.gate.set()
        await stop_live_api(live, runner)
        await hanging.stop()


async def _true(value: bool) -> bool:
    return value


async def _all_delivered(api, key: str, hook_id: str, count: int) -> bool:
    status, page, _ = await api.call("GET", f"/api/v1/webhooks/{hook_id}/deliveries?limit=100", key)
    assert status == 200, page
    return sum(item["status"] == "delivered" for item in page["items"]) == count
