"""ChatterboxTTS: aiohttp against a local server speaking the Chatterbox (OpenAI-compatible) API
(peers/chatterbox_server.py). The server's audio for a text is deterministic, so every
sample the adapter hands over is checked."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from peers.chatterbox_server import ChatterboxScript, ChatterboxServer, Fault
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy
from runtime.providers.tts.chatterbox import ChatterboxTTS
from tests.providers import tts_support
from tests.providers.tts_support import free_port

FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
TEXT = "Hello there. How can I help you today?"
SENTENCES = ["Hello there. ", "How can I help you today?"]


async def collect(tts: ChatterboxTTS, text: str = TEXT) -> tuple[list[AudioChunk], list[float]]:
    return await tts_support.collect(tts, text)


async def test_streams_sse_audio_before_the_sentence_is_synthesised() -> None:
    script = ChatterboxScript(deltas=3, delta_gap_s=0.25, api_key="cb-key")
    async with ChatterboxServer(script) as server:
        tts = ChatterboxTTS("cb-key", base_url=server.base_url + "/v1/", voice="alice", exaggeration=0.7,
                            cfg_weight=0.4, temperature=0.8, policy=FAST)
        chunks, times = await collect(tts)
        await tts.aclose()
    first_sentence_done = times[[c.text for c in chunks].index(SENTENCES[0])]
    assert times[0] < 0.2 and first_sentence_done >= 0.45  # audio came while the sentence was still being made
    assert all(c.rate == 24_000 for c in chunks)
    # Every sample, in order; the texts concatenate to the input, each after its sentence's audio.
    assert b"".join(c.pcm for c in chunks) == server.audio(SENTENCES[0].strip()) + server.audio(SENTENCES[1])
    assert "".join(c.text for c in chunks) == TEXT
    assert [c.text for c in chunks if c.text] == SENTENCES
    assert all(not c.pcm for c in chunks if c.text)
    request = server.requests[0]
    assert request.path == "/v1/audio/speech/stream" and request.headers["Authorization"] == "Bearer cb-key"
    assert request.body == {"input": "Hello there.", "voice": "alice", "response_format": "wav",
                            "stream_format": "sse", "exaggeration": 0.7, "cfg_weight": 0.4, "temperature": 0.8}
    assert [r.body["input"] for r in server.requests] == ["Hello there.", "How can I help you today?"]


async def test_the_rate_comes_from_speech_audio_info() -> None:
    async with ChatterboxServer(ChatterboxScript(sample_rate=22_050)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "Fine.")
        await tts.aclose()
    assert {c.rate for c in chunks} == {22_050}
    assert "Authorization" not in server.requests[0].headers  # no key: no header
    assert b"".join(c.pcm for c in chunks) == server.audio("Fine.")


async def test_a_streamed_wav_answer_is_read_as_it_arrives() -> None:
    """travisvn's server answers /v1/audio/speech/stream with a streamed WAV whatever stream_format says."""
    async with ChatterboxServer(ChatterboxScript(stream_answer="wav", deltas=4, delta_gap_s=0.15)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        chunks, times = await collect(tts, "Streaming works.")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.audio("Streaming works.")
    assert times[0] < 0.2 and times[-1] >= 0.4
    assert [c.text for c in chunks if c.text] == ["Streaming works."]


async def test_non_streaming_posts_speech_and_pairs_each_sentence_with_its_audio() -> None:
    async with ChatterboxServer(ChatterboxScript()) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=False, policy=FAST)
        chunks, _ = await collect(tts)
        await tts.aclose()
    assert [(c.text, c.pcm) for c in chunks] == [(SENTENCES[0], server.audio("Hello there.")),
                                                 (SENTENCES[1], server.audio(SENTENCES[1]))]
    assert {r.path for r in server.requests} == {"/v1/audio/speech"}
    assert "stream_format" not in server.requests[0].body


async def test_a_stream_that_breaks_after_audio_raises_without_retrying() -> None:
    async with ChatterboxServer(ChatterboxScript(deltas=3, faults=[Fault(drop_after_deltas=1)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(TEXT):
                got.append(chunk)
        await tts.aclose()
    assert caught.value.kind == "unavailable" and server.dropped == 1
    assert len(server.requests) == 1  # after the first audio, no retry: the fallback finishes the turn
    assert got and got[0].pcm == server.audio("Hello there.")[:len(got[0].pcm)]
    assert "".join(c.text for c in got) == ""  # the cut sentence is not claimed as spoken


async def test_slow_first_byte_times_out_per_policy() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(first_byte_delay_s=1.0)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=policy)
        chunks, times = await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.requests) == 2 and 0.3 <= times[0] < 0.9
        assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")
    slow = Fault(first_byte_delay_s=1.0)
    async with ChatterboxServer(ChatterboxScript(faults=[slow, slow])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert caught.value.kind == "timeout" and len(server.requests) == 2


async def test_refused_key_is_auth_and_never_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "cb-wrong-key-0123456789"
    async with ChatterboxServer(ChatterboxScript(api_key="right")) as server:
        tts = ChatterboxTTS(secret, base_url=server.base_url, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
        assert len(server.requests) == 1
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert "Invalid API key" in str(error)
    assert secret not in str(error) and secret not in repr(tts) and secret not in caplog.text
    assert error.__context__ is None and error.__cause__ is None


async def test_rate_limit_honours_retry_after_then_gives_up() -> None:
    policy = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
    limited = Fault(status=429, retry_after="0.3")
    async with ChatterboxServer(ChatterboxScript(faults=[limited, limited])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=policy)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
        gaps = np.diff([r.at for r in server.requests])
        assert len(server.requests) == 3 and all(gap >= 0.28 for gap in gaps), gaps
        assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(status=429, retry_after="0.1")] * 3)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert (caught.value.kind, caught.value.retry_after, len(server.requests)) == ("rate_limit", 0.1, 3)


async def test_server_errors_are_retried_then_raised() -> None:
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(status=500)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.requests) == 2
    faults = [Fault(status=503), Fault(status=502), Fault(status=500)]
    async with ChatterboxServer(ChatterboxScript(faults=faults)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert (caught.value.kind, caught.value.status, len(server.requests)) == ("server", 500, 3)
        assert "scripted failure 500" in str(caught.value)


@pytest.mark.parametrize(("breakage", "kind", "audio_first"), [
    ("json", "protocol", True), ("base64", "protocol", True), ("no_done", "protocol", True),
    ("info", "protocol", False), ("error_event", "server", True),
])
async def test_malformed_streams_raise_without_crashing(breakage: str, kind: str, audio_first: bool) -> None:
    async with ChatterboxServer(ChatterboxScript(deltas=3, faults=[Fault(malformed=breakage)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize("Hello there."):
                got.append(chunk)
        await tts.aclose()
    assert caught.value.kind == kind
    assert bool(got) == audio_first
    assert len(server.requests) == 1  # neither protocol errors nor errors after audio are retried


async def test_connection_refused_is_unavailable() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.02)
    tts = ChatterboxTTS(None, base_url=f"http://127.0.0.1:{free_port()}", policy=policy)
    with pytest.raises(ProviderError) as caught:
        await collect(tts, "Hi.")
    await tts.aclose()
    assert caught.value.kind == "unavailable"


async def test_check_probes_the_server_with_the_key() -> None:
    async with ChatterboxServer(ChatterboxScript(api_key="cb-key")) as server:
        good = ChatterboxTTS("cb-key", base_url=server.base_url, policy=FAST)
        await good.check()
        bad = ChatterboxTTS("other", base_url=server.base_url, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await bad.check()
        await good.aclose()
        await bad.aclose()
    assert server.probes[0].path == "/v1/models" and server.probes[0].headers["Authorization"] == "Bearer cb-key"
    assert caught.value.kind == "auth" and len(server.probes) == 2 and not server.requests
    unreachable = ChatterboxTTS(None, base_url=f"http://127.0.0.1:{free_port()}", policy=FAST)
    with pytest.raises(ProviderError) as down:
        await unreachable.check()
    await unreachable.aclose()
    assert down.value.kind == "unavailable"


async def test_text_without_words_is_passed_on_without_a_request() -> None:
    async with ChatterboxServer(ChatterboxScript()) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "...")
        await tts.aclose()
    assert [(c.pcm, c.text) for c in chunks] == [(b"", "...")] and not server.requests


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        ChatterboxTTS(None, exaggeration=3.0)
    with pytest.raises(ValueError):
        ChatterboxTTS(None, cfg_weight=-0.1)
    with pytest.raises(ValueError):
        ChatterboxTTS(None, temperature=0.0)
    tts = ChatterboxTTS("secret-key-123", base_url="http://tts.local:4123/v1/")
    assert (tts.name, tts.rate, tts.base_url) == ("chatterbox", 24_000, "http://tts.local:4123")
    assert "secret-key-123" not in repr(tts)
