"""telephony.twilio.greeting_wav / greeting_loop: the pre-pipeline audio of a connected call."""

from __future__ import annotations

import pytest_asyncio

import tests.twilio_support as support
from runtime.pipeline.audio import read_wav, ulaw_frames, ulaw_to_pcm16, write_wav
from tests.twilio_support import NUMBER, start_world, stop_world


def _tone_wav(path, frames: int) -> bytes:
    """A 16 kHz WAV whose 8 kHz frames are all different; returns its expected PCM at 8 kHz."""
    pcm = b"".join(int(((i * 37) % 2000 - 1000) * (1 + i // 320)).to_bytes(2, "little", signed=True)
                   for i in range(frames * 320))
    write_wav(path, pcm, 16000)
    return b"".join(ulaw_to_pcm16(f) for f in ulaw_frames(read_wav(path)))


@pytest_asyncio.fixture
async def looping_world(settings, monkeypatch):
    _tone_wav(settings.base_dir / "loop.wav", 10)  # 200 ms: a relative path, resolved against base_dir
    real = support.with_overrides

    def with_greeting(s, **sections):
        sections["telephony"] = {"twilio": {**sections["telephony"]["twilio"], "greeting_wav": "loop.wav",
                                            "greeting_loop": True}}
        return real(s, **sections)

    monkeypatch.setattr(support, "with_overrides", with_greeting)
    w = await start_world(settings)
    try:
        yield w
    finally:
        await stop_world(w)


async def test_a_looping_greeting_plays_until_the_call_ends_without_bursts(looping_world, settings) -> None:
    expected = b"".join(ulaw_to_pcm16(f) for f in ulaw_frames(read_wav(settings.base_dir / "loop.wav")))
    caller = looping_world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.stream([b"\xff" * 160] * 50)  # 1 s of caller audio, in real time
    while leg.result.marks.count("greeting") < 4:
        leg.mark_seen.clear()
        await leg.mark_seen.wait()
    await leg.stop(caller.account_sid, call_sid)
    await leg.wait_closed()
    result = leg.result
    assert result.close_code == 1000
    passes = result.marks.count("greeting")
    assert passes >= 4 and result.frames_received >= passes * 10
    # Pass after pass of the configured WAV, in order, nothing skipped or doubled.
    received = bytes(result.received_pcm)
    assert received[: 4 * len(expected)] == expected * 4
    # Paced in real time across pass boundaries: no burst, no hole.
    gaps = [b - a for a, b in zip(result.arrivals, result.arrivals[1:], strict=False)]
    assert min(gaps) > 0.005 and result.arrivals[-1] - result.arrivals[0] >= (len(gaps) * 0.02) * 0.8
    row = await looping_world.final_call(call_sid)
    assert row["summary"]["outbound_frames"] >= len(result.arrivals)


async def test_an_unreadable_greeting_fails_the_call_cleanly(settings, monkeypatch) -> None:
    real = support.with_overrides

    def with_greeting(s, **sections):
        sections["telephony"] = {"twilio": {**sections["telephony"]["twilio"], "greeting_wav": "missing.wav"}}
        return real(s, **sections)

    monkeypatch.setattr(support, "with_overrides", with_greeting)
    world = await start_world(settings)
    try:
        caller = world.caller()
        call_sid, answer = await caller.dial(NUMBER)
        leg = await caller.open_stream(call_sid, answer)
        await leg.wait_closed()
        assert leg.result.close_code == 1011 and leg.result.frames_received == 0
        row = await world.final_call(call_sid)
        assert row["status"] == "failed"
    finally:
        await stop_world(world)
