"""End to end on both backends: number -> signed webhook -> TwiML -> Media Streams -> greeting back,
inbound frames counted, DTMF, events and the archived call row."""

from __future__ import annotations

import pytest_asyncio

from runtime.pipeline.audio import GREETING_WAV, read_wav, rms
from tests.twilio_support import NUMBER, start_world, stop_world


@pytest_asyncio.fixture
async def world(settings):
    w = await start_world(settings)
    try:
        yield w
    finally:
        await stop_world(w)


async def test_a_call_connects_plays_the_greeting_and_ends(world) -> None:
    greeting = read_wav(GREETING_WAV)
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    assert answer.status == 200 and answer.stream_url, answer.text
    assert answer.stream_url.startswith("ws://127.0.0.1:") and answer.stream_url.endswith("/media/twilio")
    assert answer.parameters["token"]
    leg = await caller.open_stream(call_sid, answer)
    # Caller audio: 2 s of (non-silent) greeting back at the runtime, in real time, then a DTMF key.
    inbound = [bytes([0x20 + (i % 64)]) * 160 for i in range(100)]
    await leg.stream(inbound, speed=1.0)
    await leg.dtmf("5")
    while "greeting" not in leg.result.marks:
        leg.mark_seen.clear()
        await leg.mark_seen.wait()
    await leg.stop(caller.account_sid, call_sid)
    await leg.wait_closed()
    result = leg.result
    assert result.close_code == 1000
    # The whole greeting came back, paced in real time, and it is not silence.
    assert abs(result.received_s - greeting.duration_s) < 0.05, result.received_s
    span = result.arrivals[-1] - result.arrivals[0]
    assert span >= greeting.duration_s * 0.8, span
    assert rms(bytes(result.received_pcm)) > 500
    row = await world.final_call(call_sid)
    assert row["status"] == "ended" and row["hangup_by"] == "caller" and row["end_reason"] == "caller_hangup"
    assert row["duration_ms"] >= 4000 and row["connected_at"]
    assert row["summary"]["inbound_frames"] == 100 and row["summary"]["inbound_bytes"] == 16000
    assert row["summary"]["outbound_frames"] == len(result.arrivals) and row["summary"]["dtmf"] == 1
    topics = await world.events(row["id"])
    assert topics[0] == "voice.call.started"
    for topic in ("call.connected", "call.state_changed", "dtmf.received", "voice.call.completed"):
        assert topic in topics, topics
    assert topics[-1] == "voice.call.completed"
