"""The audio adapter between ``livekit.rtc`` and the pipeline, with the SDK's real objects: the
caller is an ``rtc.AudioSource`` behind a ``LocalAudioTrack``, the agent's output is listened to
with an ``rtc.AudioStream`` on the agent's track. No server is involved: the SDK runs these
locally. The conversation is the runtime's own (offline TTS/STT, rules brain)."""

from __future__ import annotations

import asyncio
import math
import struct

import pytest
from livekit import rtc

from runtime.api.appkeys import TRACKER
from runtime.audio import rms
from runtime.providers.stt.local import LocalWhisperSTT
from runtime.telephony.livekit.media import FRAME_BYTES, FRAME_SAMPLES, LIVEKIT_RATE, LiveKitMedia
from tests.livekit.support import CALLER, NUMBER


@pytest.fixture
def backend() -> str:
    return "sqlite"


class Listener:
    """The far end of the agent's track: PCM16 at 16 kHz as the SDK delivers it."""

    def __init__(self, track: rtc.LocalAudioTrack) -> None:
        self.stream = rtc.AudioStream(track, sample_rate=LIVEKIT_RATE, num_channels=1, frame_size_ms=20)
        self.frames: list[bytes] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            self.frames.append(event.frame.data.tobytes())

    def audio(self) -> bytes:
        return b"".join(self.frames)

    async def close(self) -> None:
        await self.stream.aclose()
        self.task.cancel()


def tone(ms: int, amplitude: int = 6000) -> bytes:
    n = LIVEKIT_RATE * ms // 1000
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * 440 * i / LIVEKIT_RATE)) for i in range(n)))


async def open_session(world):
    return await world.api.app[TRACKER].open_call(to_number=NUMBER, from_number=CALLER, provider="livekit",
                                                  provider_call_id="SCL_media")


async def test_the_agent_greets_through_the_sdk_and_the_callers_frames_reach_the_conversation(world) -> None:
    session = await open_session(world)
    caller_source = rtc.AudioSource(LIVEKIT_RATE, 1)
    caller_track = rtc.LocalAudioTrack.create_audio_track("caller", caller_source)
    media = LiveKitMedia(world.api.app, session)
    listener = Listener(rtc.LocalAudioTrack.create_audio_track("agent", media.source))
    try:
        await media.start(caller_track)
        assert session.state == "connected" and media.leg.conversation is not None
        # The caller's line: 1.5 s of quiet audio in 20 ms SDK frames, in real time.
        for _ in range(75):
            await caller_source.capture_frame(rtc.AudioFrame(bytes(FRAME_BYTES), LIVEKIT_RATE, 1, FRAME_SAMPLES))
        # Until the greeting has played out (its transcript is stored then, with what the caller
        # heard: ending the call earlier, as a loaded box once did, stores "Hello, front").
        deadline = asyncio.get_running_loop().time() + 15
        while not await _agent_lines(world, session.id):
            assert asyncio.get_running_loop().time() < deadline, "the greeting did not play out"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the listener receives the last frames
        speech = listener.audio()
        assert rms(speech) > 300, "no greeting audio reached the agent's track"
        heard = await LocalWhisperSTT().transcribe(speech)
        assert heard is not None and "front desk" in heard.text.lower(), heard
        counters = media.leg.counters
        assert counters.inbound_frames >= 60 and counters.inbound_bytes == counters.inbound_frames * FRAME_BYTES
        assert media.counters.inbound_foreign == 0
        assert media.counters.outbound_captured >= 40 and media.pacer.stats.frames_sent >= 40
    finally:
        await media.close()
        await listener.close()
        await caller_source.aclose()
    await session.end("caller_hangup", hangup_by="caller")
    row = await world.final(session.id)
    summary = row["summary"]
    assert summary["media"]["inbound_frames"] == media.leg.counters.inbound_frames and summary["media"]["outbound_frames"] >= 40
    assert (await _agent_lines(world, session.id))[:1] == ["Hello, front desk."]


async def _agent_lines(world, call_id: str) -> list[str]:
    transcripts, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                                    equals={"call_id": call_id})
    return [t["text"] for t in transcripts if t["role"] == "agent"]


async def test_the_transport_paces_by_generation_drops_stale_audio_and_clears_the_source(world) -> None:
    session = await open_session(world)
    media = LiveKitMedia(world.api.app, session)
    listener = Listener(rtc.LocalAudioTrack.create_audio_track("agent", media.source))
    transport = media.transport
    try:
        media.start_output()
        transport.send_audio(tone(410), generation=1)  # 20.5 frames: the last one padded
        assert transport.queued_ms() == 420 and transport.sent_ms(1) == 0
        await asyncio.sleep(0.2)
        sent = transport.sent_ms(1)
        assert 100 <= sent <= 300, sent  # paced in real time, not sent in a burst
        transport.send_audio(tone(100), generation=0)  # an older reply: never queued
        assert transport.sent_ms(0) == 0
        transport.drop_stale(2)  # barge-in: reply 1 is stale everywhere
        assert transport.queued_ms() == 0 and media.pacer.generation == 2
        await transport.clear()
        assert media.counters.clears == 1  # audio had been sent: the source's queue is cleared too
        await transport.clear()
        assert media.counters.clears == 1  # nothing sent or queued since: no second clear
        transport.send_audio(tone(200), generation=2)
        await asyncio.sleep(0.5)
        assert transport.sent_ms(2) == 200 and transport.sent_ms(1) == sent
        await asyncio.sleep(0.1)
        loud = [f for f in listener.frames if rms(f) > 1000]
        assert len(loud) >= 10, len(loud)  # the tone came out of the SDK's track
    finally:
        await media.close()
        await listener.close()
    assert media.pacer.closed and media.closed
    await session.end("test")
