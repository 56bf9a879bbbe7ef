"""CallSession state machine, archive, bounded archive writes, crash recovery and drain (both backends)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from runtime.calls import session as session_mod
from runtime.calls.session import IllegalTransition, aggregate
from runtime.store.tables import ALL_TENANTS
from tests.api.support import start_live_api, stop_live_api
from tests.calls.support import engine, events_of, provision


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def hangup(self, reason: str) -> None:
        self.calls.append(("hangup", reason))

    async def transfer(self, target: str) -> None:
        self.calls.append(("transfer", target))


async def _open(control, world=None, tracker=None):
    world = world or await provision(control)
    tracker = tracker or engine(control)
    call = await tracker.open_call(to_number=world.e164, from_number="+15550000001", provider="twilio")
    return world, tracker, call


def _transitions(events):
    return [(e["payload"]["from_state"], e["payload"]["to_state"]) for e in events
            if e["topic"] == "call.state_changed"]


@pytest.mark.parametrize(("path", "finish"), [
    ([], "end"), ([], "fail"),
    (["connect"], "end"), (["connect"], "fail"),
    (["connect", "transfer"], "end"), (["connect", "transfer"], "fail"),
    (["connect", "transfer", "connect"], "end"),
])
async def test_every_legal_transition_is_an_event_with_increasing_seq(control, path, finish):
    world, _, call = await _open(control)
    for step in path:
        await (call.connect() if step == "connect" else call.transfer("+15550109999", reason="asked"))
    await (call.end("hangup", hangup_by="caller") if finish == "end" else call.fail("media_error", "boom"))
    events = await events_of(control, world.tenant_id, call.id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    states = ["ringing", *("connected" if s == "connect" else "transferring" for s in path),
              "ended" if finish == "end" else "failed"]
    assert _transitions(events) == list(zip(states, states[1:], strict=False))
    assert events[0]["topic"] == "voice.call.started"
    assert events[-1]["topic"] == ("voice.call.completed" if finish == "end" else "voice.call.failed")
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert row["status"] == states[-1]


async def test_illegal_transitions_raise(control):
    world, _, call = await _open(control)
    with pytest.raises(IllegalTransition):
        await call.transfer("+15550109999")  # ringing -> transferring
    await call.connect()
    with pytest.raises(IllegalTransition):
        await call.connect()  # connected -> connected
    await call.end("hangup")
    for attempt in (call.connect(), call.transfer("+1555")):
        with pytest.raises(IllegalTransition):
            await attempt
    _, _, failed = await _open(control, world)
    await failed.fail("media_error")
    with pytest.raises(IllegalTransition):
        await failed.connect()


async def test_ending_twice_is_a_no_op(control):
    world, tracker, call = await _open(control)
    await call.connect()
    await call.end("hangup", hangup_by="caller")
    before = (await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id),
              await events_of(control, world.tenant_id, call.id))
    await call.end("completed", hangup_by="agent")
    await call.fail("late")
    await call.hangup("again")
    after = (await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id),
             await events_of(control, world.tenant_id, call.id))
    assert after == before and before[0]["end_reason"] == "hangup" and call.id not in tracker.live


async def test_archive_fields_on_end(control):
    world, tracker, call = await _open(control)
    fake = FakeControl()
    call.control = fake
    await call.connect()
    call.summary.update({"outcome": "booked", "intent": "booking"})
    for ms in (120, 80, 100, 300):
        call.observe_latency("stt", ms)
    call.observe_latency("llm_first_token", 450)
    await asyncio.sleep(0.02)
    await call.hangup("completed")
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert row["status"] == "ended" and row["end_reason"] == "completed" and row["hangup_by"] == "agent"
    assert row["duration_ms"] >= 20 and row["ended_at"] >= row["connected_at"] >= row["started_at"]
    assert row["summary"] == {"outcome": "booked", "intent": "booking"}
    assert row["latency"]["stt"] == {"count": 4, "mean_ms": 150.0, "p50_ms": 100.0, "p95_ms": 300.0,
                                     "max_ms": 300.0}
    assert row["latency"]["llm_first_token"]["count"] == 1
    assert row["agent_id"] == world.agent_id and row["agent_version"] == 1 and row["number_id"] == world.number_id
    assert fake.calls == [("hangup", "completed")]
    completed = (await events_of(control, world.tenant_id, call.id))[-1]
    assert completed["topic"] == "voice.call.completed"
    assert completed["payload"] == {"reason": "completed", "hangup_by": "agent", "duration_ms": row["duration_ms"]}
    assert call.id not in tracker.live


def test_latency_aggregate():
    assert aggregate([5.0]) == {"count": 1, "mean_ms": 5.0, "p50_ms": 5.0, "p95_ms": 5.0, "max_ms": 5.0}
    many = aggregate([float(i) for i in range(1, 101)])
    assert (many["p50_ms"], many["p95_ms"], many["max_ms"]) == (50.0, 95.0, 100.0)


class _HangingBatch:
    """A write batch whose commit never returns once it holds the final (archive) update."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def commit(self):
        if any(sql.startswith("UPDATE voice_calls") and "end_reason" in sql for sql, _ in self.real.statements):
            await asyncio.Event().wait()
        return await self.real.commit()


class _HangingStore:
    def __init__(self, real) -> None:
        self.real = real

    def batch(self):
        return _HangingBatch(self.real.batch())

    def __getattr__(self, name):
        return getattr(self.real, name)


async def test_an_archive_write_that_hangs_does_not_block_teardown(control, monkeypatch, caplog):
    monkeypatch.setattr(session_mod, "ARCHIVE_TIMEOUT_S", 0.2)
    world, tracker, call = await _open(control)
    await call.connect()
    call.store = _HangingStore(control.store)
    hooked = []
    call.on_end.append(lambda s: hooked.append(s.state))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="voicectl.calls"):
        await asyncio.wait_for(call.end("hangup", hangup_by="caller"), 2)
    assert time.monotonic() - started < 1.0
    assert call.state == "ended" and call.ended.is_set() and hooked == ["ended"]
    assert call.id not in tracker.live
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("archiving the call failed" in r.getMessage() for r in errors)
    assert errors[0].exc_info is not None


async def test_crash_recovery_marks_live_calls_failed(settings):
    # "The previous run": calls left ringing and connected, one finished.
    api, runner = await start_live_api(settings)
    try:
        world = await provision(api.control)
        tracker = engine(api.control)  # a tracker whose process "dies" (never drained)
        _, _, ringing = await _open(api.control, world, tracker)
        _, _, connected = await _open(api.control, world, tracker)
        await connected.connect()
        _, _, done = await _open(api.control, world, tracker)
        await done.end("hangup", hangup_by="caller")
        done_row = await api.control.store.voice_calls.get(done.id, tenant_id=world.tenant_id)
        seqs = {c.id: c._seq for c in (ringing, connected)}
    finally:
        tracker.live.clear()  # the app's own tracker never saw them: its drain leaves them alone
        await stop_live_api(api, runner)
    # A new app on the same database.
    api, runner = await start_live_api(settings)
    try:
        store = api.control.store
        for call, state in ((ringing, "ringing"), (connected, "connected")):
            row = await store.voice_calls.get(call.id, tenant_id=world.tenant_id)
            assert row["status"] == "failed" and row["end_reason"] == "runtime_restart" and row["ended_at"]
            events = await events_of(api.control, world.tenant_id, call.id)
            tail = events[-2:]
            assert [e["topic"] for e in tail] == ["call.state_changed", "voice.call.failed"]
            assert [e["seq"] for e in tail] == [seqs[call.id] + 1, seqs[call.id] + 2]
            assert tail[0]["payload"] == {"from_state": state, "to_state": "failed", "reason": "runtime_restart"}
            assert tail[1]["payload"]["reason"] == "runtime_restart"
        assert await store.voice_calls.get(done.id, tenant_id=world.tenant_id) == done_row
        rows, _ = await store.voice_calls.list(tenant_id=ALL_TENANTS, equals={"status": "connected"})
        assert rows == []
    finally:
        await stop_live_api(api, runner)


async def test_drain_lets_calls_finish_within_the_grace_then_ends_the_rest(control):
    world = await provision(control)
    tracker = engine(control)
    _, _, quick = await _open(control, world, tracker)
    _, _, slow = await _open(control, world, tracker)
    await quick.connect()
    await slow.connect()
    fake = FakeControl()
    slow.control = fake

    async def caller_hangs_up():
        await asyncio.sleep(0.1)
        await quick.end("hangup", hangup_by="caller")

    task = asyncio.create_task(caller_hangs_up())
    started = time.monotonic()
    await tracker.drain(0.5)
    elapsed = time.monotonic() - started
    await task
    assert 0.45 <= elapsed < 1.5
    assert not tracker.accepting and tracker.live == {}
    rows = {c.id: await control.store.voice_calls.get(c.id, tenant_id=world.tenant_id) for c in (quick, slow)}
    assert (rows[quick.id]["end_reason"], rows[quick.id]["hangup_by"]) == ("hangup", "caller")
    assert (rows[slow.id]["status"], rows[slow.id]["end_reason"]) == ("ended", "shutdown")
    assert fake.calls == [("hangup", "shutdown")]
    from runtime.calls.routing import RouteRejected

    with pytest.raises(RouteRejected) as info:
        await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio")
    assert info.value.reason == "shutting_down"


async def test_drain_returns_at_once_when_all_calls_end_early(control):
    world = await provision(control)
    tracker = engine(control)
    _, _, call = await _open(control, world, tracker)
    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(call.end("hangup", "caller")))
    started = time.monotonic()
    await tracker.drain(5)
    assert time.monotonic() - started < 1
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert row["end_reason"] == "hangup"


async def test_drain_hangs_up_side_by_side_and_does_not_wait_on_a_stuck_provider(control, monkeypatch):
    from runtime.calls import tracker as tracker_mod

    monkeypatch.setattr(tracker_mod, "HANGUP_TIMEOUT_S", 0.3)
    world = await provision(control)
    tracker = engine(control)

    class StuckProvider(FakeControl):
        async def hangup(self, reason: str) -> None:
            await super().hangup(reason)
            await asyncio.sleep(30)  # an unreachable provider

    calls = [(await _open(control, world, tracker))[2] for _ in range(4)]
    for call in calls:
        await call.connect()
        call.control = StuckProvider()
    started = time.monotonic()
    await tracker.drain(0.01)
    assert time.monotonic() - started < 1.5  # not 4 x the hangup bound, let alone 4 x 30 s
    assert tracker.live == {}
    for call in calls:
        row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
        assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "shutdown", "agent")
        assert call.control.calls == [("hangup", "shutdown")]
