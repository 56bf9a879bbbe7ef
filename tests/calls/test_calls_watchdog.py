"""The duration watchdog on a shrunk clock: warnings at T-2 min and T-30 s, transfer or hang-up at T-0."""

from __future__ import annotations

import asyncio

import pytest

from runtime.calls import watchdog
from tests.calls.support import engine, events_of, provision
from tests.calls.test_calls_session import FakeControl

SCALE = 0.001  # a 300 s limit passes in 0.3 s


@pytest.fixture(autouse=True)
def fast_clock(monkeypatch):
    monkeypatch.setattr(watchdog, "TIME_SCALE", SCALE)


async def _connected(control, limit_s=300, **config):
    world = await provision(control, **config)
    await control.store.tenants.update(world.tenant_id, {"max_call_duration_s": limit_s}, tenant_id=world.tenant_id)
    tracker = engine(control)
    call = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio")
    fake = FakeControl()
    call.control = fake
    heard = []

    async def speak(session, remaining_s):
        heard.append(remaining_s)

    call.on_duration_warning.append(speak)
    await call.connect()
    return world, call, fake, heard


async def _warnings(control, world, call):
    return [(e["payload"]["remaining_s"], e["payload"]["limit_s"])
            for e in await events_of(control, world.tenant_id, call.id) if e["topic"] == "call.duration_warning"]


async def test_warns_then_hangs_up_without_an_escalation_target(control):
    world, call, fake, heard = await _connected(control)
    assert call.watchdog is not None and call.watchdog.limit_s == 300
    await asyncio.wait_for(call.ended.wait(), 3)
    assert heard == [120, 30]
    assert await _warnings(control, world, call) == [(120, 300), (30, 300)]
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "max_duration", "agent")
    assert fake.calls == [("hangup", "max_duration")]


async def test_transfers_to_the_escalation_target_at_the_limit(control):
    world, call, fake, heard = await _connected(control, escalation_target="+15550109999")
    for _ in range(300):
        if fake.calls:  # the bridge was asked, after the state change and its event
            break
        await asyncio.sleep(0.01)
    assert call.state == "transferring" and heard == [120, 30]
    assert fake.calls == [("transfer", "+15550109999")]
    events = await events_of(control, world.tenant_id, call.id)
    transfer = [e for e in events if e["topic"] == "transfer.requested"]
    assert transfer[0]["payload"] == {"target": "+15550109999", "reason": "max_duration"}
    await call.end("transferred")
    assert call.watchdog.fired == [120, 30, 0]


async def test_version_limit_shorter_than_the_tenant_wins_and_early_warnings_are_skipped(control):
    world, call, fake, heard = await _connected(control, limit_s=1800, max_duration_s=60)
    assert call.watchdog.limit_s == 60
    await asyncio.wait_for(call.ended.wait(), 3)
    assert heard == [30]  # T-2 min lies before the call started
    assert await _warnings(control, world, call) == [(30, 60)]


async def test_cancelled_when_the_call_ends(control):
    world, call, fake, heard = await _connected(control)
    await call.end("hangup", hangup_by="caller")
    await asyncio.sleep(400 * SCALE)
    assert heard == [] and call.watchdog.fired == [] and fake.calls == []
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert row["end_reason"] == "hangup"
    assert await _warnings(control, world, call) == []


async def test_a_failing_hook_does_not_stop_the_watchdog(control):
    world, call, fake, heard = await _connected(control)

    async def broken(session, remaining_s):
        raise RuntimeError("tts down")

    call.on_duration_warning.insert(0, broken)
    await asyncio.wait_for(call.ended.wait(), 3)
    assert heard == [120, 30] and fake.calls == [("hangup", "max_duration")]
