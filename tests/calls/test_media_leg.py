"""MediaLeg: the lifecycle every bridge shares (both backends). The bridges' own end-to-end tests
drive it over their real carriers; these pin the rules: counters under ``summary.media`` whoever
ends the call, the first reason wins, a transfer under way ends ``transferred``, the carrier is
released once, a conversation that cannot be built fails the call ``pipeline_unavailable``."""

from __future__ import annotations

import pytest

from runtime.calls.media_leg import LegFailed, MediaLeg
from tests.calls.support import engine, provision


class Conversation:
    """The pipeline's conversation as the leg sees it: records what it is fed."""

    paused = False

    def __init__(self) -> None:
        self.frames: list[tuple[int, int]] = []
        self.digits: list[str] = []
        self.lines: list[str] = []
        self.started = self.closed = 0

    def say_now(self, text: str, *, interrupt: bool, tts=None) -> bool:
        self.lines.append(text)
        return True

    def flush_lines(self) -> None:
        self.lines.clear()

    async def say(self, text: str) -> None:
        self.lines.append(text)

    async def say_uninterruptible(self, text: str) -> None:
        self.lines.append(text)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def feed_audio(self, pcm: bytes, sample_rate: int) -> None:
        self.frames.append((len(pcm), sample_rate))

    def feed_dtmf(self, digit: str, *, emit_event: bool = False) -> None:
        self.digits.append(digit)

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


class WayBack:
    def __init__(self) -> None:
        self.started = self.closed = 0

    def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


async def _leg(control, conversation: Conversation | None = None):
    world = await provision(control)
    call = await engine(control).open_call(to_number=world.e164, from_number="+15550000001", provider="twilio")
    conversation = conversation or Conversation()
    released: list[str] = []

    async def build(session, way_back):
        return conversation

    async def release(reason: str) -> None:
        released.append(reason)

    leg = MediaLeg(call, 8000, WayBack(), build, carrier_counts=lambda: {"outbound_frames": 7}, release=release)
    return world, call, leg, conversation, released


async def test_the_leg_connects_feeds_and_the_agent_ending_the_call_keeps_the_counters(control) -> None:
    world, call, leg, conversation, released = await _leg(control)
    await leg.connect()
    assert call.state == "connected" and conversation.started == 1 and leg.way_back.started == 1
    taps: list[tuple[str, int, int]] = []

    class Tap:
        def inbound(self, pcm: bytes, rate: int) -> None:
            taps.append(("in", len(pcm), rate))

        def outbound(self, pcm: bytes, rate: int) -> None:
            taps.append(("out", len(pcm), rate))

    call.audio_sinks.append(Tap())
    for _ in range(3):
        leg.audio(bytes(320))
    leg.sent(bytes(320))
    leg.dtmf("5")
    assert conversation.frames == [(320, 8000)] * 3 and conversation.digits == ["5"]
    assert taps == [("in", 320, 8000)] * 3 + [("out", 320, 8000)]
    await call.hangup("agent_ended")  # the agent ends it: no bridge finish at all
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert row["end_reason"] == "agent_ended" and row["summary"]["media"] == {
        "inbound_frames": 3, "inbound_bytes": 960, "dtmf": 1, "outbound_frames": 7}
    assert released == ["ended"] and conversation.closed == 1 and leg.way_back.closed >= 1
    await leg.release()
    assert released == ["ended"], "the carrier is released once"


async def test_the_first_reason_wins_and_a_transfer_under_way_ends_transferred(control) -> None:
    world, call, leg, conversation, released = await _leg(control)
    await leg.connect()
    await call.transfer("+15550109999", reason="asked")
    await leg.finish("end", "caller_hangup", hangup_by="caller")
    await leg.finish("fail", "stream_lost", "later")
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert (row["status"], row["end_reason"]) == ("ended", "transferred")
    assert released == ["ended"] and conversation.closed == 1


@pytest.mark.parametrize(("kind", "state", "reason"), [("end", "ended", "caller_hangup"),
                                                        ("fail", "failed", "bad_media")])
async def test_the_media_side_ends_or_fails_the_call_with_its_reason(control, kind, state, reason) -> None:
    world, call, leg, conversation, released = await _leg(control)
    await leg.connect()
    await leg.finish(kind, reason, "why", hangup_by="caller" if kind == "end" else None)
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert (row["status"], row["end_reason"]) == (state, reason)
    assert row["summary"]["media"]["outbound_frames"] == 7 and conversation.closed == 1


async def test_a_conversation_that_cannot_be_built_is_pipeline_unavailable(control) -> None:
    world = await provision(control)
    call = await engine(control).open_call(to_number=world.e164, from_number="+15550000001", provider="twilio")

    async def broken(session, way_back):
        raise RuntimeError("no engine")

    leg = MediaLeg(call, 8000, WayBack(), broken)
    with pytest.raises(LegFailed) as failed:
        await leg.open()
    assert failed.value.reason == "pipeline_unavailable"
    await leg.finish("fail", failed.value.reason, failed.value.message)
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert (row["status"], row["end_reason"]) == ("failed", "pipeline_unavailable")
