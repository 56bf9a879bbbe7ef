"""The whole runtime plane at once: a signed Twilio call -> stream -> events in the store, on a
WebSocket subscriber and at a tenant's webhook receiver that checks every signature."""

from __future__ import annotations

import asyncio
import time

import orjson

from tests.events.test_webhook_delivery import Receiver
from tests.twilio.support import NUMBER

# This module's world: webhook retries fast enough to watch them.
WORLD_OVERRIDES = {"events": {"webhooks": {"attempts": 4, "backoff_cap_s": 0.05, "timeout_s": 2.0}}}


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_call_events_reach_store_websocket_and_signed_webhook(world):
    receiver = await Receiver(script=[500]).start()  # the first delivery fails once, then is retried
    try:
        status, hook, _ = await world.api.call(
            "POST", "/api/v1/webhooks", world.key,
            json={"url": receiver.url + "/hooks/voice", "events": ["voice.call.*", "call.connected"]},
        )
        assert status == 201, hook
        receiver.secret = hook["signing_secret"]

        ws = await world.api.http.ws_connect(f"{world.api.base_url}/api/v1/events/ws?token={world.key}")
        await ws.send_json({"type": "subscribe", "topics": ["*"]})
        assert (await ws.receive_json(timeout=3))["type"] == "subscribed"

        caller = world.caller()
        call_sid, answer = await caller.dial(NUMBER)
        leg = await caller.open_stream(call_sid, answer)
        await leg.stream([b"\x7f" * 160] * 25, speed=4.0)
        await leg.stop(caller.account_sid, call_sid)
        await leg.wait_closed()
        row = await world.final_call(call_sid)
        assert row["status"] == "ended"

        seen = []
        while not seen or seen[-1]["topic"] != "voice.call.completed":
            message = await ws.receive_json(timeout=5)
            assert message["type"] == "event", message
            if message["event"]["call_id"] == row["id"]:
                seen.append(message["event"])
        await ws.close()
        stored, _ = await world.api.control.store.call_events.list(
            tenant_id=world.tenant_id, equals={"call_id": row["id"]}, limit=100)
        # The subscriber saw exactly what was committed, in per-call order.
        assert [e["id"] for e in seen] == [e["id"] for e in stored]
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))

        wanted = {e["id"] for e in stored if e["topic"] in ("voice.call.started", "call.connected",
                                                            "voice.call.completed")}
        delivered = lambda: {r["headers"].get("X-Voicectl-Event-Id") for r in receiver.requests} >= wanted  # noqa: E731
        await _until(delivered)
        assert all(r["signed"] for r in receiver.requests), "every delivery carries a valid signature"
        assert len(receiver.requests) == len(wanted) + 1  # one retry of the failed first attempt
        bodies = [orjson.loads(r["body"]) for r in receiver.requests]
        assert {b["topic"] for b in bodies} == {"voice.call.started", "call.connected", "voice.call.completed"}
        assert all(b["tenant_id"] == world.tenant_id and b["call_id"] == row["id"] for b in bodies)
    finally:
        await receiver.stop()
