"""The event bus: commit first, then publish; glob and call filters; slow subscribers dropped."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.control.schemas import TenantCreate, WebhookCreate
from runtime.events.bus import EventBus, Subscription
from runtime.events.models import CallConnected, DtmfReceived, Event, TranscriptCreated
from runtime.events.topics import matches, unknown_patterns
from runtime.ids import new_id, now_iso


async def _tenant(control, name: str) -> str:
    return (await control.tenants.create(TenantCreate(name=name))).id


async def _call(control, tenant_id: str) -> str:
    call_id, now = new_id("call"), now_iso()
    await control.store.voice_calls.insert({
        "id": call_id, "tenant_id": tenant_id, "agent_id": None, "agent_version": None, "number_id": None,
        "provider": "twilio", "provider_call_id": None, "direction": "inbound", "from_number": None,
        "to_number": None, "status": "connected", "end_reason": None, "hangup_by": None, "started_at": now,
        "connected_at": now, "ended_at": None, "duration_ms": None, "summary": {}, "latency": {}, "metadata": {},
        "trace_id": "tr", "created_at": now, "updated_at": now,
    })
    return call_id


def _event(payload, tenant_id: str, call_id: str | None, seq: int = 1) -> Event:
    return Event.of(payload, tenant_id=tenant_id, call_id=call_id, seq=seq, trace_id="tr")


def test_glob_matching_and_unknown_patterns():
    assert matches("voice.call.started", ["voice.call.*"])
    assert matches("transcript.created", ["voice.call.*", "transcript.*"])
    assert not matches("call.connected", ["voice.call.*"])
    assert matches("dtmf.received", ["*"])
    assert unknown_patterns(["voice.call.*", "nope.*", "transcript.created"]) == ["nope.*"]


async def test_subscriber_only_sees_committed_events(control):
    tenant_id = await _tenant(control, "acme")
    call_id = await _call(control, tenant_id)
    bus = EventBus(control.store)
    sub = bus.subscribe(Subscription(tenant_id=tenant_id))
    seen_in_store: list[bool] = []

    async def consume() -> None:
        while True:
            event = await sub.queue.get()
            # The moment a subscriber sees an event, it is already in call_events.
            row = await control.store.call_events.get(event.id, tenant_id=tenant_id)
            seen_in_store.append(row is not None and row["topic"] == event.topic)

    consumer = asyncio.create_task(consume())
    for seq in range(1, 6):
        await bus.publish(_event(DtmfReceived(digit=str(seq)), tenant_id, call_id, seq))
    # An event whose commit fails (unknown call: foreign key) is never published.
    with pytest.raises(Exception):  # noqa: B017 - the backend's foreign-key error
        await bus.publish(_event(DtmfReceived(digit="9"), tenant_id, "call_missing", 1))
    for _ in range(100):
        if len(seen_in_store) == 5:
            break
        await asyncio.sleep(0.01)
    consumer.cancel()
    assert seen_in_store == [True] * 5
    assert sub.queue.empty()
    rows, total = await control.store.call_events.list(tenant_id=tenant_id)
    assert total == 5 and [r["payload"]["digit"] for r in rows] == ["1", "2", "3", "4", "5"]


async def test_publish_queues_outbox_rows_for_matching_active_webhooks(control):
    tenant_id = await _tenant(control, "acme")
    wanted, _ = await control.webhooks.create(tenant_id, WebhookCreate(url="http://x.test/a", events=["voice.call.*"]))
    await control.webhooks.create(tenant_id, WebhookCreate(url="http://x.test/b", events=["transcript.*"]))
    await control.webhooks.create(tenant_id, WebhookCreate(url="http://x.test/c", active=False))
    woken = []
    bus = EventBus(control.store)
    bus.on_outbox = lambda: woken.append(1)
    from runtime.events.models import CallFailed

    event = _event(CallFailed(reason="busy"), tenant_id, None)
    await bus.publish(event)
    rows, _ = await control.store.webhook_deliveries.list(tenant_id=tenant_id)
    assert [(r["webhook_id"], r["event_id"], r["status"]) for r in rows] == [(wanted.id, event.id, "pending")]
    assert rows[0]["payload"] == event.to_dict()
    assert woken == [1]
    await bus.publish(_event(CallConnected(provider="twilio"), tenant_id, None))
    assert woken == [1]  # no webhook wants call.connected: no wake-up


async def test_topic_tenant_and_call_filters(control):
    a, b = await _tenant(control, "a"), await _tenant(control, "b")
    call_1, call_2, call_b = await _call(control, a), await _call(control, a), await _call(control, b)
    bus = EventBus(control.store)
    transcripts = bus.subscribe(Subscription(tenant_id=a, topics=["transcript.*"]))
    one_call = bus.subscribe(Subscription(tenant_id=a, call_id=call_2))
    everything_b = bus.subscribe(Subscription(tenant_id=b))
    await bus.publish(_event(TranscriptCreated(role="caller", text="hi"), a, call_1, 1))
    await bus.publish(_event(DtmfReceived(digit="1"), a, call_2, 1))
    await bus.publish(_event(TranscriptCreated(role="agent", text="hello"), a, call_2, 2))
    await bus.publish(_event(TranscriptCreated(role="caller", text="b"), b, call_b, 1))

    def drain(sub: Subscription) -> list[tuple[str, str]]:
        out = []
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            out.append((event.topic, event.call_id))
        return out

    assert drain(transcripts) == [("transcript.created", call_1), ("transcript.created", call_2)]
    assert drain(one_call) == [("dtmf.received", call_2), ("transcript.created", call_2)]
    assert drain(everything_b) == [("transcript.created", call_b)]


async def test_listened_says_whether_a_tenants_socket_or_webhook_takes_a_topic(control):
    a, b = await _tenant(control, "a"), await _tenant(control, "b")
    call_1, call_2 = await _call(control, a), await _call(control, a)
    bus = EventBus(control.store)
    bus.subscribe(Subscription(tenant_id=None))  # the runtime's own listeners do not count
    bus.subscribe(Subscription(tenant_id=b))
    assert not bus.listened(a, "transcript.interim", call_1)
    page = bus.subscribe(Subscription(tenant_id=a, topics=["transcript.*"], call_id=call_2))
    assert bus.listened(a, "transcript.interim", call_2) and not bus.listened(a, "transcript.interim", call_1)
    bus.unsubscribe(page)
    await control.webhooks.create(a, WebhookCreate(url="http://x.test/i", events=["transcript.interim"]))
    assert not bus.listened(a, "transcript.interim", call_1)  # not read yet: the next event reads the configs
    await bus.publish(_event(DtmfReceived(digit="1"), a, call_1, 1))
    assert bus.listened(a, "transcript.interim", call_1) and not bus.listened(a, "speech.started", call_1)


async def test_slow_subscriber_is_dropped_without_blocking_publish(control):
    tenant_id = await _tenant(control, "acme")
    bus = EventBus(control.store)
    dropped: list[Subscription] = []
    slow = bus.subscribe(Subscription(tenant_id=tenant_id, queue=asyncio.Queue(3), on_overflow=dropped.append))
    fast = bus.subscribe(Subscription(tenant_id=tenant_id, queue=asyncio.Queue(100)))
    started = time.perf_counter()
    for seq in range(10):
        await bus.publish(_event(CallConnected(provider="twilio"), tenant_id, None, seq))
    assert time.perf_counter() - started < 5
    assert dropped == [slow] and slow.dropped
    assert slow.queue.qsize() == 3  # it got what fit, then was cut off
    assert fast.queue.qsize() == 10 and not fast.dropped
    await bus.publish(_event(CallConnected(provider="twilio"), tenant_id, None, 11))
    assert slow.queue.qsize() == 3 and fast.queue.qsize() == 11
