"""Webhook delivery that outlives an outage: retries stop by time (``retry_for_s``), a dead webhook is
disabled without losing its events, and deliveries can be sent again (redelivery)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web

from runtime.api.appkeys import BUS, DELIVERY
from runtime.events.delivery import DeliveryWorker, verify
from runtime.events.models import CallFailed, Event
from runtime.ids import parse_iso
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides


@dataclass
class Receiver:
    """A webhook endpoint on a fixed port that can go down (connection refused) and come back.
    ``status(path)`` answers each request; while ``hold`` is set, requests wait for ``gate``."""

    status: Callable[[str], int] = lambda path: 200
    secrets: dict[str, str] = field(default_factory=dict)  # path -> signing secret
    requests: list[dict[str, Any]] = field(default_factory=list)
    hold: bool = False
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({
            "path": request.path, "body": body, "event_id": request.headers.get("X-Voicectl-Event-Id"),
            "signed": verify(self.secrets.get(request.path, ""), request.headers.get("X-Voicectl-Signature"), body),
        })
        if self.hold:
            await self.gate.wait()
        return web.Response(status=self.status(request.path))

    async def up(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def arrived(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


def _settings(settings, **webhooks: Any):
    return with_overrides(settings, limits=high_limits(), events={"webhooks": {"backoff_cap_s": 0.05, **webhooks}})


async def _hook(api, key: str, url: str, events: list[str] | None = None) -> dict[str, Any]:
    status, hook, _ = await api.call("POST", "/api/v1/webhooks", key, json={"url": url, "events": events or ["*"]})
    assert status == 201, hook
    return hook


async def _publish(api, tenant_id: str, n: int = 1) -> list[Event]:
    events = [Event.of(CallFailed(reason="busy", message=f"event {i}"), tenant_id=tenant_id, call_id=None, seq=i,
                       trace_id=None) for i in range(n)]
    for event in events:
        await api.app[BUS].publish(event)
    return events


async def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def _rows(api, tenant_id: str, hook_id: str) -> list[dict[str, Any]]:
    rows, _ = await api.control.store.webhook_deliveries.list(tenant_id=tenant_id, equals={"webhook_id": hook_id},
                                                             limit=1000)
    return rows


def _statuses(api, tenant_id: str, hook_id: str, want: dict[str, int]):
    async def check() -> bool:
        return Counter(r["status"] for r in await _rows(api, tenant_id, hook_id)) == Counter(want)
    return check


# The stop rule


def test_retries_stop_by_time_not_by_count():
    from runtime.events.retry import RetryPolicy

    policy = RetryPolicy(retry_for_s=86_400, backoff_cap_s=3_600)
    assert [policy.backoff(n, jitter=1.0) for n in range(1, 15)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]
    assert policy.backoff(3, jitter=0.25) == 1.0
    assert policy.backoff(1, jitter=1.0, retry_after=42) == 42
    assert policy.backoff(1, jitter=1.0, retry_after=10**6) == 3_600
    # The longest schedule (jitter 1.0) keeps trying for the whole day; its last attempt is at the deadline.
    elapsed, attempt = 0.0, 1
    while (delay := policy.next_delay(attempt, elapsed, jitter=1.0)) is not None:
        elapsed += delay
        attempt += 1
    assert elapsed == 86_400 and attempt == 36  # 36 attempts over the day
    # Full jitter makes many more, smaller steps: the rule is time, so nothing overflows or stops early.
    assert policy.next_delay(100_000, 10.0, jitter=1.0) == 3_600
    assert policy.next_delay(3, 86_399.5, jitter=1.0) == 0.5
    assert policy.next_delay(3, 86_400, jitter=1.0) is None
    capped = RetryPolicy(retry_for_s=86_400, backoff_cap_s=3_600, attempts=3)
    assert capped.next_delay(2, 1.0, jitter=1.0) == 2 and capped.next_delay(3, 1.0, jitter=1.0) is None


def test_the_worker_backoff_does_not_overflow_on_long_outages():
    from runtime.config import WebhookDeliverySettings

    worker = DeliveryWorker(None, None, WebhookDeliverySettings(), jitter=lambda: 1.0)  # type: ignore[arg-type]
    assert worker.backoff(2_000) == 3_600  # 2 ** 1999 as a float used to raise OverflowError


def test_defaults_retry_for_a_day():
    from runtime.config import WebhookDeliverySettings

    config = WebhookDeliverySettings()
    assert (config.retry_for_s, config.backoff_cap_s, config.attempts, config.disable_after_failures) == (
        86_400, 3_600, None, 100)


# The outage


async def test_a_receiver_down_longer_than_the_old_window_gets_every_event(settings):
    """80 events while the receiver refuses connections for longer than the old give-up point
    (attempts 8: at most seven waits of backoff_cap_s), then comes back: each arrives once, signed."""
    cap = 0.25
    receiver = await Receiver().up()
    live, runner = await start_live_api(_settings(settings, backoff_cap_s=cap, timeout_s=1.0, retry_for_s=60))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook")
        receiver.secrets["/hook"] = hook["signing_secret"]
        await receiver.down()
        events = await _publish(live, tenant_id, 80)
        await asyncio.sleep(7 * cap + 0.75)  # longer than the old window
        rows = await _rows(live, tenant_id, hook["id"])
        assert len(rows) == 80 and not [r for r in rows if r["status"] not in ("pending", "sending")]
        assert all(r["attempts"] >= 2 for r in rows if r["status"] == "pending")
        outage_attempts = sum(r["attempts"] for r in rows)
        back = time.monotonic()
        await receiver.up()
        await _wait_for(_statuses(live, tenant_id, hook["id"], {"delivered": 80}))
        drained_s = time.monotonic() - back
        arrived = receiver.arrived("/hook")
        assert Counter(r["event_id"] for r in arrived) == Counter(e.id for e in events)  # each exactly once
        assert all(r["signed"] for r in arrived)
        by_id = {e.id: e.to_dict() for e in events}
        assert all(orjson.loads(r["body"]) == by_id[r["event_id"]] for r in arrived)
        print(f"\noutage: {outage_attempts} failed attempts for 80 events; all delivered {drained_s:.2f} s "
              "after the receiver came back")
    finally:
        await stop_live_api(live, runner)
        await receiver.down()


async def test_only_deliveries_in_flight_at_a_crash_arrive_twice(settings):
    """The worker dies with requests in flight (no grace: their rows go back to pending, as a dead
    process's rows do at the next start). Those events may arrive twice; no other does."""
    receiver = await Receiver().up()
    fast = _settings(settings, timeout_s=5.0)
    live, runner = await start_live_api(fast)
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook")
        receiver.secrets["/hook"] = hook["signing_secret"]
        receiver.hold = True
        events = await _publish(live, tenant_id, 40)
        worker = live.app[DELIVERY]
        await _wait_for(lambda: asyncio.sleep(0, len(receiver.requests) >= worker.concurrency))
        in_flight = {r["event_id"] for r in receiver.requests}
        await worker.stop(grace_s=0)
        await stop_live_api(live, runner)
        receiver.hold = False
        receiver.gate.set()
        live, runner = await start_live_api(fast)  # the next start
        await _wait_for(_statuses(live, tenant_id, hook["id"], {"delivered": 40}))
        seen = Counter(r["event_id"] for r in receiver.arrived("/hook"))
        assert set(seen) == {e.id for e in events}
        twice = {event_id for event_id, n in seen.items() if n > 1}
        assert twice <= in_flight and max(seen.values()) <= 2
        assert all(r["signed"] for r in receiver.requests)
    finally:
        await stop_live_api(live, runner)
        await receiver.down()


# Disabling a dead webhook


async def test_a_dead_webhook_is_disabled_and_keeps_its_events_until_switched_on(settings):
    broken = {"/bad": True}
    receiver = await Receiver(status=lambda path: 500 if broken.get(path) else 200).up()
    live, runner = await start_live_api(_settings(settings, attempts=1, disable_after_failures=3))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        bad = await _hook(live, key, receiver.url + "/bad")
        watch = await _hook(live, key, receiver.url + "/watch", ["webhook.*"])
        receiver.secrets.update({"/bad": bad["signing_secret"], "/watch": watch["signing_secret"]})
        first = await _publish(live, tenant_id, 3)

        async def disabled() -> bool:
            status, body, _ = await live.call("GET", f"/api/v1/webhooks/{bad['id']}", key)
            return status == 200 and body["status"] == "disabled"

        await _wait_for(disabled)
        status, config, _ = await live.call("GET", f"/api/v1/webhooks/{bad['id']}", key)
        assert config["consecutive_failures"] == 3 and config["disabled_at"] and config["active"] is True
        # The webhook.disabled event: stored, and delivered to the tenant's other webhook.
        await _wait_for(lambda: asyncio.sleep(0, len(receiver.arrived("/watch")) == 1))
        [notice] = receiver.arrived("/watch")
        assert notice["signed"]
        sent = orjson.loads(notice["body"])
        assert sent["topic"] == "webhook.disabled" and sent["tenant_id"] == tenant_id and sent["call_id"] is None
        assert sent["data"] == {"webhook_id": bad["id"], "failures": 3, "last_status": 500, "last_error": "HTTP 500"}
        status, stored, _ = await live.call("GET", "/api/v1/events", key)
        assert status == 200 and "webhook.disabled" in [e["topic"] for e in stored["items"]]

        # Events while disabled are held, not sent and not dropped (the notice too: the hook takes "*").
        later = await _publish(live, tenant_id, 2)
        await _wait_for(_statuses(live, tenant_id, bad["id"], {"failed": 3, "held": 3}))
        await asyncio.sleep(0.2)
        assert len(receiver.arrived("/bad")) == 3

        # Switched back on: the count is reset and the held deliveries go out.
        broken["/bad"] = False
        status, config, _ = await live.call("PATCH", f"/api/v1/webhooks/{bad['id']}", key, json={"active": True})
        assert status == 200 and config["status"] == "active" and config["consecutive_failures"] == 0
        assert config["disabled_at"] is None
        await _wait_for(_statuses(live, tenant_id, bad["id"], {"failed": 3, "delivered": 3}))
        # The ones that failed before the webhook was disabled: sent again on request.
        status, body, _ = await live.call("POST", f"/api/v1/webhooks/{bad['id']}/redeliver", key,
                                          json={"failed": True})
        assert status == 202 and body == {"queued": 3}
        await _wait_for(_statuses(live, tenant_id, bad["id"], {"delivered": 6}))
        arrived = receiver.arrived("/bad")
        assert all(r["signed"] for r in arrived)
        got = Counter(r["event_id"] for r in arrived)
        expected = {e.id for e in first + later} | {sent["id"]}
        assert set(got) == expected
        assert {i for i, n in got.items() if n == 2} == {e.id for e in first}  # the failed attempt, then the redelivery
    finally:
        await stop_live_api(live, runner)
        await receiver.down()


async def test_only_failures_in_a_row_disable_a_webhook(settings):
    broken = {"/hook": True}
    receiver = await Receiver(status=lambda path: 500 if broken.get(path) else 200).up()
    live, runner = await start_live_api(_settings(settings, attempts=1, disable_after_failures=2))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook", ["voice.call.*"])

        async def settle(broken_now: bool, want: dict[str, int], failures: int, status: str) -> None:
            broken["/hook"] = broken_now
            await _publish(live, tenant_id)
            await _wait_for(_statuses(live, tenant_id, hook["id"], want))
            config = (await live.call("GET", f"/api/v1/webhooks/{hook['id']}", key))[1]
            assert (config["consecutive_failures"], config["status"]) == (failures, status)

        await settle(True, {"failed": 1}, 1, "active")
        await settle(False, {"failed": 1, "delivered": 1}, 0, "active")  # a success resets the count
        await settle(False, {"failed": 1, "delivered": 2}, 0, "active")
        await settle(True, {"failed": 2, "delivered": 2}, 1, "active")
        await settle(True, {"failed": 3, "delivered": 2}, 2, "disabled")
    finally:
        await stop_live_api(live, runner)
        await receiver.down()


async def test_redelivery_switches_a_disabled_webhook_back_on(settings):
    broken = {"/bad": True}
    receiver = await Receiver(status=lambda path: 500 if broken.get(path) else 200).up()
    live, runner = await start_live_api(_settings(settings, attempts=1, disable_after_failures=2))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        bad = await _hook(live, key, receiver.url + "/bad", ["voice.call.*"])
        receiver.secrets["/bad"] = bad["signing_secret"]
        await _publish(live, tenant_id, 2)
        await _wait_for(_statuses(live, tenant_id, bad["id"], {"failed": 2}))

        async def disabled() -> bool:
            return (await live.call("GET", f"/api/v1/webhooks/{bad['id']}", key))[1]["status"] == "disabled"

        await _wait_for(disabled)
        await _publish(live, tenant_id, 1)
        await _wait_for(_statuses(live, tenant_id, bad["id"], {"failed": 2, "held": 1}))
        broken["/bad"] = False
        status, body, _ = await live.call("POST", f"/api/v1/webhooks/{bad['id']}/redeliver", key,
                                          json={"failed": True})
        assert status == 202 and body == {"queued": 3}
        await _wait_for(_statuses(live, tenant_id, bad["id"], {"delivered": 3}))
        status, config, _ = await live.call("GET", f"/api/v1/webhooks/{bad['id']}", key)
        assert config["status"] == "active" and config["consecutive_failures"] == 0
    finally:
        await stop_live_api(live, runner)
        await receiver.down()


# Redelivery


async def test_redeliver_by_event_and_since(settings):
    receiver = await Receiver().up()
    live, runner = await start_live_api(_settings(settings))
    try:
        tenant_id, key = await live.tenant_with_key("acme")
        hook = await _hook(live, key, receiver.url + "/hook")
        receiver.secrets["/hook"] = hook["signing_secret"]
        events = await _publish(live, tenant_id, 3)
        await _wait_for(_statuses(live, tenant_id, hook["id"], {"delivered": 3}))
        path = f"/api/v1/webhooks/{hook['id']}/redeliver"
        status, body, _ = await live.call("POST", path, key, json={"event_id": events[0].id})
        assert status == 202 and body == {"queued": 1}
        await _wait_for(lambda: asyncio.sleep(0, len(receiver.requests) == 4))
        await _wait_for(_statuses(live, tenant_id, hook["id"], {"delivered": 3}))
        again = receiver.requests[3]
        assert again["event_id"] == events[0].id and again["signed"]
        status, page, _ = await live.call("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", key)
        [row] = [d for d in page["items"] if d["event_id"] == events[0].id]
        assert row["attempts"] == 2 and [a["attempt"] for a in row["attempt_log"]] == [1, 2]

        status, body, _ = await live.call("POST", path, key, json={"since": "1h"})
        assert status == 202 and body == {"queued": 3}
        await _wait_for(lambda: asyncio.sleep(0, len(receiver.requests) == 7))
        assert Counter(r["event_id"] for r in receiver.requests) == {events[0].id: 3, events[1].id: 2,
                                                                       events[2].id: 2}
        await _wait_for(_statuses(live, tenant_id, hook["id"], {"delivered": 3}))
        future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert (await live.call("POST", path, key, json={"since": future}))[:2] == (202, {"queued": 0})
        assert (await live.call("POST", path, key, json={"failed": True}))[:2] == (202, {"queued": 0})

        # Not found: an event this webhook never had, a webhook of another tenant.
        status, body, _ = await live.call("POST", path, key, json={"event_id": "evt_missing"})
        assert status == 404 and body["error"] == "not_found"
        _, other = await live.tenant_with_key("other")
        status, body, _ = await live.call("POST", path, other, json={"failed": True})
        assert status == 404 and body["error"] == "not_found"
        # Switched off by its owner: refused, with what to do.
        await live.call("PATCH", f"/api/v1/webhooks/{hook['id']}", key, json={"active": False})
        status, body, _ = await live.call("POST", path, key, json={"failed": True})
        assert status == 409 and body["error"] == "conflict" and "--active" in body["message"]
    finally:
        await stop_live_api(live, runner)
        await receiver.down()


@pytest.mark.parametrize("payload, field_name", [
    ({}, "(body)"),
    ({"failed": False}, "(body)"),
    ({"event_id": "evt_1", "failed": True}, "(body)"),
    ({"event_id": "evt_1", "since": "2h"}, "(body)"),
    ({"since": "yesterday"}, "since"),
    ({"since": "2h", "failed": True}, "(body)"),
    ({"since": "-2h"}, "since"),
    ({"since": ""}, "since"),
    ({"event_id": ""}, "event_id"),
    ({"failed": True, "all": True}, "all"),
])
async def test_redeliver_takes_exactly_one_selector(api, payload, field_name):
    tenant_id, key = await api.tenant_with_key("acme")
    hook = await _hook(api, key, "http://127.0.0.1:9/hook")
    status, body, _ = await api.call("POST", f"/api/v1/webhooks/{hook['id']}/redeliver", key, json=payload)
    assert status == 422, body
    assert body["error"] == "validation_error" and set(body) == {"error", "message", "details"}
    assert [e["field"] for e in body["details"]["errors"]] == [field_name]
    if field_name == "(body)":
        assert "exactly one of event_id, since, failed" in body["message"]


def test_since_reads_iso_times_and_durations():
    from runtime.control.redelivery import parse_since

    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == "2025-03-01T10:00:00.000000Z"
    assert parse_since("30m", now) == "2025-03-01T11:30:00.000000Z"
    assert parse_since("1d", now) == "2025-02-28T12:00:00.000000Z"
    assert parse_since("1h30m", now) == "2025-03-01T10:30:00.000000Z"
    assert parse_since("45s", now) == "2025-03-01T11:59:15.000000Z"
    assert parse_since("2025-02-01T08:00:00Z", now) == "2025-02-01T08:00:00.000000Z"
    assert parse_since("2025-02-01T09:00:00+01:00", now) == "2025-02-01T08:00:00.000000Z"
    assert parse_since("2025-02-01 08:00", now) == "2025-02-01T08:00:00.000000Z"  # no zone: UTC
    assert parse_since("2025-02-01", now) == "2025-02-01T00:00:00.000000Z"
    parse_iso(parse_since("2h", now))  # the stored timestamp format
    for bad in ("yesterday", "2x", "-2h", "", "h", "2025-13-01", "99999999d"):
        with pytest.raises(ValueError, match="ISO-8601"):
            parse_since(bad, now)


async def test_existing_webhooks_migrate_as_active(raw_db_at_v6):
    db, tenant_id = raw_db_at_v6
    from runtime.store import migrate as migrations

    await migrations.migrate(db)
    row = await db.fetchone("SELECT status, consecutive_failures, disabled_at FROM webhook_configs WHERE tenant_id = ?",
                            (tenant_id,))
    assert dict(row) == {"status": "active", "consecutive_failures": 0, "disabled_at": None}
    row = await db.fetchone("SELECT retry_from, attempts_before FROM webhook_deliveries WHERE tenant_id = ?",
                            (tenant_id,))
    assert dict(row) == {"retry_from": None, "attempts_before": 0}


@pytest.fixture
async def raw_db_at_v6(db_url):
    """A database at schema version 6 (before webhook status) holding a webhook and a delivery."""
    from runtime.ids import now_iso
    from runtime.store.base import open_database
    from runtime.store.schema import MIGRATIONS

    db = open_database(db_url)
    await db.connect()
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        for migration in MIGRATIONS[:6]:
            for statement in migration.render(db.dialect):
                await db.execute(statement)
            await db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                             (migration.version, migration.name, now_iso()))
        now = now_iso()
        true = 1 if db.dialect == "sqlite" else True
        await db.execute("INSERT INTO tenants VALUES (?, ?, 'active', 'UTC', 5, 600, ?, 30, '{}', ?, ?)",
                         ("ten_old", "old", true, now, now))
        await db.execute("INSERT INTO webhook_configs VALUES (?, ?, ?, '[\"*\"]', ?, NULL, 'ref', ?, ?)",
                         ("whk_old", "ten_old", "http://127.0.0.1:9/", true, now, now))
        await db.execute("INSERT INTO webhook_deliveries VALUES (?, ?, ?, 'evt_old', 'voice.call.failed', '{}', "
                         "'failed', 1, NULL, 500, 'HTTP 500', ?, ?, NULL)", ("dlv_old", "ten_old", "whk_old", now, now))
        yield db, "ten_old"
    finally:
        await db.close()
