"""voicectl events tail and voicectl webhook deliveries|test, against a live runtime and receiver in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.cli.test_cli import Cli


class Background:
    """An event loop in a daemon thread, for servers the synchronous CLI talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def background() -> Iterator[Background]:
    bg = Background()
    try:
        yield bg
    finally:
        bg.close()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    monkeypatch.setenv("VOICECTL_SECURITY__EGRESS__ALLOW", "[127.0.0.1/32]")  # the receiver listens on loopback
    cli = Cli(tmp_path / "conf" / "config.yaml")
    cli.json("init")
    cli.json("tenant", "create", "acme")
    return cli


async def _receiver(requests: list, statuses: list[int]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        requests.append({"headers": dict(request.headers), "body": await request.read()})
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


def test_webhook_test_and_deliveries_commands(cli: Cli, background: Background) -> None:
    from runtime.events.delivery import verify

    requests: list[dict[str, Any]] = []
    statuses: list[int] = []
    runner, url = background.run(_receiver(requests, statuses))
    try:
        hook = cli.json("webhook", "create", "--tenant", "acme", "--url", url)
        result = cli.json("webhook", "test", hook["id"])
        assert result["delivered"] is True and result["status_code"] == 200
        [req] = requests
        assert verify(hook["signing_secret"], req["headers"]["X-Voicectl-Signature"], req["body"])
        assert req["headers"]["X-Voicectl-Event-Id"] == result["event_id"]
        assert json.loads(req["body"])["topic"] == "webhook.test"
        human = cli("webhook", "test", hook["id"], "--tenant", "acme")
        assert "delivered: HTTP 200" in human.stdout
        statuses.append(500)
        failed = cli("webhook", "test", hook["id"], code=1)
        assert "not delivered: HTTP 500" in failed.stdout
        assert cli("webhook", "test", "whk_missing", code=3).exit_code == 3
    finally:
        background.run(runner.cleanup())

    # Deliveries: one outbox row with two attempts, as the worker records them.
    async def seed(plane: Any) -> None:
        from runtime.ids import now_iso

        tenant = await plane.tenants.resolve("acme")
        now = now_iso()
        await plane.store.webhook_deliveries.insert({
            "id": "dlv_cli", "tenant_id": tenant.id, "webhook_id": hook["id"], "event_id": "evt_cli",
            "topic": "voice.call.failed", "payload": {"id": "evt_cli"}, "status": "delivered", "attempts": 2,
            "next_attempt_at": None, "last_status_code": 200, "last_error": None, "created_at": now,
            "updated_at": now, "delivered_at": now,
        })
        for n, code in ((1, 500), (2, 200)):
            await plane.store.webhook_delivery_attempts.insert({
                "id": f"dat_cli{n}", "tenant_id": tenant.id, "delivery_id": "dlv_cli", "attempt": n,
                "status_code": code, "error": None if code == 200 else "HTTP 500", "duration_ms": 3,
                "created_at": now,
            })

    cli.plane(seed)
    page = cli.json("webhook", "deliveries", hook["id"])
    assert page["total"] == 1
    [item] = page["items"]
    assert item["status"] == "delivered" and [a["status_code"] for a in item["attempt_log"]] == [500, 200]
    table = cli("webhook", "deliveries", hook["id"], "--tenant", "acme")
    assert "dlv_cli" in table.stdout and "delivered" in table.stdout


def test_events_tail(cli: Cli, background: Background, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.api.appkeys import BUS
    from runtime.config import load_settings
    from runtime.events.models import CallConnected, DtmfReceived, Event
    from tests.api.support import start_live_api, stop_live_api

    live, runner = background.run(start_live_api(load_settings(cli.config)))
    try:
        tenant_id = cli.json("tenant", "show", "acme")["id"]
        key = cli.json("key", "create", "--tenant", "acme", "--scope", "runtime")["key"]

        async def publish_when_subscribed() -> None:
            bus = live.app[BUS]
            while not any(getattr(s, "filters", None) for s in list(bus._subscriptions)):
                await asyncio.sleep(0.01)
            for seq, payload in enumerate((CallConnected(provider="twilio"), DtmfReceived(digit="7"),
                                           DtmfReceived(digit="8")), start=1):
                await bus.publish(Event.of(payload, tenant_id=tenant_id, call_id=None, seq=seq, trace_id=None))

        pending = asyncio.run_coroutine_threadsafe(publish_when_subscribed(), background.loop)
        result = cli("events", "tail", "--url", live.base_url, "--key", key, "--topic", "dtmf.*", "--json",
                     "--count", "2")
        pending.result(10)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert [(e["topic"], e["data"]["digit"]) for e in lines] == [("dtmf.received", "7"), ("dtmf.received", "8")]

        # Rendered lines; the key from the environment.
        monkeypatch.setenv("VOICECTL_API_KEY", key)
        pending = asyncio.run_coroutine_threadsafe(publish_when_subscribed(), background.loop)
        rendered = cli("events", "tail", "--url", live.base_url, "--count", "1")
        pending.result(10)
        assert "call.connected" in rendered.stdout and "provider=twilio" in rendered.stdout

        # Refusals: an admin key, no key, a topic that matches nothing.
        assert cli("events", "tail", "--url", live.base_url, "--key", live.admin_key, code=7).exit_code == 7
        monkeypatch.delenv("VOICECTL_API_KEY")
        assert cli("events", "tail", "--url", live.base_url, code=2).exit_code == 2
        bad = cli("events", "tail", "--url", live.base_url, "--key", key, "--topic", "nope.*", code=2)
        assert "match no topic" in bad.stderr
    finally:
        background.run(stop_live_api(live, runner))


def test_webhook_redeliver_status_and_switch_on(cli: Cli) -> None:
    hook = cli.json("webhook", "create", "--tenant", "acme", "--url", "https://hooks.example.com/voicectl")

    async def seed(plane: Any) -> None:
        from runtime.ids import now_iso

        tenant = await plane.tenants.resolve("acme")
        now = now_iso()
        for n, status in enumerate(("failed", "held", "delivered")):
            await plane.store.webhook_deliveries.insert({
                "id": f"dlv_{status}", "tenant_id": tenant.id, "webhook_id": hook["id"], "event_id": f"evt_{n}",
                "topic": "voice.call.failed", "payload": {"id": f"evt_{n}"}, "status": status, "attempts": 1,
                "next_attempt_at": None, "last_status_code": 500, "last_error": "HTTP 500", "created_at": now,
                "updated_at": now, "delivered_at": now if status == "delivered" else None,
            })
        await _disable(hook["id"])(plane)

    cli.plane(seed)
    assert "disabled" in cli("webhook", "list", "--tenant", "acme").stdout
    [listed] = cli.json("webhook", "list", "--tenant", "acme")["items"]
    assert (listed["status"], listed["consecutive_failures"]) == ("disabled", 100)

    # Exactly one selector; a readable --since error; a missing event.
    assert "exactly one of --event" in cli("webhook", "redeliver", hook["id"], code=2).stderr
    assert "exactly one of --event" in cli("webhook", "redeliver", hook["id"], "--failed", "--since", "2h",
                                           code=2).stderr
    bad = cli("webhook", "redeliver", hook["id"], "--since", "yesterday", code=2)
    assert "--since: 'yesterday' is not a time" in bad.stderr and "2h, 30m, 1d" in bad.stderr
    missing = cli("webhook", "redeliver", hook["id"], "--event", "evt_missing", code=3)
    assert "no delivery of event evt_missing" in missing.stderr

    # --failed: the failed and held deliveries, and the disabled webhook is switched back on.
    assert cli.json("webhook", "redeliver", hook["id"], "--failed") == {"queued": 2}
    shown = cli.json("webhook", "show", hook["id"])
    assert (shown["status"], shown["consecutive_failures"], shown["disabled_at"]) == ("active", 0, None)
    page = cli.json("webhook", "deliveries", hook["id"])
    assert sorted(d["status"] for d in page["items"]) == ["delivered", "pending", "pending"]
    human = cli("webhook", "redeliver", hook["id"], "--since", "2h", "--tenant", "acme")
    assert "queued 3 deliveries" in human.stdout
    assert cli.json("webhook", "redeliver", hook["id"], "--event", "evt_2") == {"queued": 1}

    # update --active resets a disabled webhook; a webhook switched off refuses redelivery (exit 4).
    cli.plane(_disable(hook["id"]))
    assert cli.json("webhook", "list", "--tenant", "acme")["items"][0]["status"] == "disabled"
    switched = cli.json("webhook", "update", hook["id"], "--active")
    assert (switched["status"], switched["consecutive_failures"]) == ("active", 0)
    assert cli.json("webhook", "update", hook["id"], "--inactive")["status"] == "inactive"
    refused = cli("webhook", "redeliver", hook["id"], "--failed", code=4)
    assert "switch it on first" in refused.stderr


def _disable(webhook_id: str) -> Any:
    """As the delivery worker leaves a webhook after 100 deliveries in a row failed."""

    async def disable(plane: Any) -> None:
        from runtime.ids import now_iso

        tenant = await plane.tenants.resolve("acme")
        await plane.store.webhook_configs.update(webhook_id, {
            "status": "disabled", "consecutive_failures": 100, "disabled_at": now_iso()}, tenant_id=tenant.id)
    return disable


async def test_events_tail_reconnects_with_backoff_and_subscribes_again() -> None:
    """A runtime that drops the subscriber (a restart: 1012) is reconnected to after 1 s, then
    2 s, ..., and the subscription is sent again; a revoked key (4401) ends the tail."""
    from aiohttp import web

    from peers.loopback import serve_loopback
    from voicectl.events import _tail

    subscribes: list[dict] = []
    closes = [1012, 1012]  # the first two connections are dropped after the subscription

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        message = await ws.receive_json()
        subscribes.append(message)
        await ws.send_json({"type": "subscribed", "topics": message["topics"], "call_id": None})
        if closes:
            await ws.close(code=closes.pop(0))
            return ws
        await ws.send_json({"type": "event", "event": {"topic": "dtmf.received", "call_id": "call_1",
                                                       "ts": "2026-12-06T10:00:00.000Z", "data": {"digit": "5"}}})
        await ws.close(code=4401)
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/events/ws", socket)
    runner, port = await serve_loopback(app)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    try:
        url = f"ws://127.0.0.1:{port}/api/v1/events/ws"
        code = await _tail(url, "vk_rt_x", ["dtmf.*"], None, True, 1, sleep=sleep)
        assert code == 0 and slept == [1.0, 2.0] and len(subscribes) == 3
        assert all(s == {"type": "subscribe", "topics": ["dtmf.*"]} for s in subscribes)
        slept.clear()
        code = await _tail(url, "vk_rt_x", ["dtmf.*"], None, True, None, sleep=sleep)  # runs until the 4401
        assert code == 7 and slept == []
    finally:
        await runner.cleanup()
