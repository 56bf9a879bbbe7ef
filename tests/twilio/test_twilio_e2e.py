"""End to end on both backends: number -> signed webhook -> TwiML -> Media Streams -> the agent's
synthesised greeting back (transcribed by the local STT), inbound frames counted, DTMF, events
and the archived call row."""

from __future__ import annotations

from runtime.audio import resample, rms
from runtime.providers.stt.local import LocalWhisperSTT
from runtime.telephony.scripted_caller import agent_quiet
from tests.twilio.support import NUMBER


async def test_a_call_connects_speaks_the_synthesised_greeting_and_ends(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    assert answer.status == 200 and answer.stream_url, answer.text
    assert answer.stream_url.startswith("ws://127.0.0.1:") and answer.stream_url.endswith("/media/twilio")
    assert answer.parameters["token"]
    leg = await caller.open_stream(call_sid, answer)
    # Caller audio: 2 s of line silence in real time, while the greeting plays.
    await leg.stream([b"\xff" * 160] * 100, speed=1.0)
    first = await agent_quiet(leg, 0.5, 0.0, 10.0)
    assert first is not None, "no greeting audio arrived"
    greeting_pcm = bytes(leg.result.received_pcm)
    await leg.dtmf("5")
    await leg.stop(caller.account_sid, call_sid)
    await leg.wait_closed()
    result = leg.result
    assert result.close_code == 1000
    # The greeting is speech, paced in real time, and says what the agent version says.
    seconds = len(greeting_pcm) / 2 / 8000
    assert 0.8 < seconds < 4.0 and rms(greeting_pcm) > 300, seconds
    span = result.arrivals[-1] - result.arrivals[0]
    assert span >= seconds * 0.8, span
    heard = await LocalWhisperSTT().transcribe(resample(greeting_pcm, 8000, 16000))
    assert heard is not None and "front desk" in heard.text.lower(), heard
    row = await world.final_call(call_sid)
    assert row["status"] == "ended" and row["hangup_by"] == "caller" and row["end_reason"] == "caller_hangup"
    assert row["duration_ms"] >= 1500 and row["connected_at"]
    assert row["summary"]["media"]["inbound_frames"] == 100 and row["summary"]["media"]["inbound_bytes"] == 32000  # PCM16 at 8 kHz
    assert row["summary"]["media"]["outbound_frames"] == len(result.arrivals) and row["summary"]["media"]["dtmf"] == 1
    transcripts, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                                    equals={"call_id": row["id"]})
    assert [(t["role"], t["text"], t["interrupted"]) for t in transcripts][:1] == [
        ("agent", "Hello, front desk.", False)]
    topics = await world.events(row["id"])
    assert topics[0] == "voice.call.started"
    for topic in ("call.connected", "call.state_changed", "dtmf.received", "transcript.created",
                  "voice.call.completed"):
        assert topic in topics, topics
    assert topics[-1] == "voice.call.completed"
