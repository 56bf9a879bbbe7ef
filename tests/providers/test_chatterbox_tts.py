"""ChatterboxTTS: aiohttp against a local server speaking travisvn/chatterbox-tts-api's API
(peers/chatterbox_server.py; each shape with the server's source file it comes from). The
server's audio for a text is deterministic, so every sample the adapter hands over is checked."""

from __future__ import annotations

import logging
import struct

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from peers.chatterbox_server import ChatterboxScript, ChatterboxServer, Fault, float_wav, model_audio
from peers.loopback import serve_loopback
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy
from runtime.providers.options import ChatterboxOptions, ChatterboxSettings
from runtime.providers.tts import chatterbox_wire as wire
from runtime.providers.tts.chatterbox import ChatterboxTTS
from tests.providers import tts_support
from tests.providers.tts_support import free_port

FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
TEXT = "Hello there. How can I help you today?"
SENTENCES = ["Hello there. ", "How can I help you today?"]
# 118 characters: the server's "word" strategy at 50 cuts it into three pieces (text_processing.py).
LONG = ("Thank you for calling the clinic today, we can book you in for a visit next week, "
        "or the week after if that suits you.")
LONG_PIECES = ("Thank you for calling the clinic today, we can", "book you in for a visit next week, or the week",
               "after if that suits you.")
SHAPES = ("wav", "sse")  # POST /v1/audio/speech/stream (streamed WAV); POST /v1/audio/speech + stream_format sse


async def collect(tts: ChatterboxTTS, text: str = TEXT) -> tuple[list[AudioChunk], list[float]]:
    return await tts_support.collect(tts, text)


def spoken(server: ChatterboxServer) -> bytes:
    return b"".join(server.spoken(r) for r in server.requests)


async def test_streams_a_wav_from_the_stream_route_word_piece_by_piece() -> None:
    """/v1/audio/speech/stream answers a streamed WAV (speech.py stream_text_to_speech); with
    streaming_strategy "word" the server makes and sends a sentence in short pieces."""
    script = ChatterboxScript(chunk_s=0.25, api_key="cb-key")
    async with ChatterboxServer(script) as server:
        tts = ChatterboxTTS("cb-key", base_url=server.base_url + "/v1/", voice="alice", exaggeration=0.7,
                            cfg_weight=0.4, temperature=0.8, policy=FAST)
        chunks, times = await collect(tts, LONG)
        await tts.aclose()
    request = server.requests[0]
    assert request.path == "/v1/audio/speech/stream" and request.headers["Authorization"] == "Bearer cb-key"
    assert request.body == {"input": LONG, "voice": "alice", "response_format": "wav", "streaming_strategy": "word",
                            "streaming_chunk_size": 50, "exaggeration": 0.7, "cfg_weight": 0.4, "temperature": 0.8}
    assert request.pieces == LONG_PIECES and len(server.requests) == 1
    # The first piece's audio came while the rest of the sentence was still being made.
    assert times[0] < 0.45 and times[-1] >= 0.7
    assert b"".join(c.pcm for c in chunks) == server.spoken(request)
    assert all(c.rate == 24_000 for c in chunks)
    assert [c.text for c in chunks if c.text] == [LONG] and all(not c.pcm for c in chunks if c.text)


async def test_sse_comes_from_the_speech_route_which_alone_honours_stream_format() -> None:
    """stream="sse": POST /v1/audio/speech with stream_format "sse" (speech.py text_to_speech);
    the rate comes from speech.audio.info."""
    async with ChatterboxServer(ChatterboxScript(sample_rate=22_050)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream="sse", policy=FAST)
        chunks, _ = await collect(tts)
        await tts.aclose()
    assert [r.path for r in server.requests] == ["/v1/audio/speech"] * 2
    assert server.requests[0].body == {"input": "Hello there.", "response_format": "wav", "stream_format": "sse",
                                       "streaming_strategy": "word", "streaming_chunk_size": 50}
    assert "Authorization" not in server.requests[0].headers  # no key: no header
    assert {c.rate for c in chunks} == {22_050}
    assert b"".join(c.pcm for c in chunks) == server.audio("Hello there.") + server.audio(SENTENCES[1])
    assert "".join(c.text for c in chunks) == TEXT and [c.text for c in chunks if c.text] == SENTENCES


async def test_the_peer_answers_the_stream_route_with_wav_whatever_stream_format_says() -> None:
    """The peer as the real server (speech.py stream_text_to_speech never reads stream_format)."""
    async with ChatterboxServer() as server, aiohttp.ClientSession() as http:
        async with http.post(server.base_url + "/v1/audio/speech/stream",
                             json={"input": "Hi there.", "stream_format": "sse"}) as response:
            raw = await response.read()
    assert response.content_type == "audio/wav"
    assert raw[:4] == b"RIFF" and struct.unpack_from("<I", raw, 40)[0] == 0xFFFFFFFF  # create_wav_header, size unknown
    assert raw[44:] == server.audio("Hi there.")


async def test_non_streaming_posts_speech_and_pairs_each_sentence_with_its_audio() -> None:
    async with ChatterboxServer(ChatterboxScript()) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream="off", policy=FAST)
        chunks, _ = await collect(tts)
        await tts.aclose()
    assert [(c.text, c.pcm) for c in chunks] == [(SENTENCES[0], server.audio("Hello there.")),
                                                 (SENTENCES[1], server.audio(SENTENCES[1]))]
    assert {r.path for r in server.requests} == {"/v1/audio/speech"}
    assert server.requests[0].body == {"input": "Hello there.", "response_format": "wav"}


@pytest.mark.parametrize("layout", ["float32", "float32_extensible"])
async def test_a_whole_float_wav_is_converted_to_pcm16(layout: str) -> None:
    """torchaudio.save of the model's float tensor (speech.py generate_speech_internal) without
    FFmpeg: 32-bit float, as libsndfile (IEEE float tag, fact, PEAK) or sox (EXTENSIBLE) write it."""
    async with ChatterboxServer(ChatterboxScript(whole_wav=layout)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream="off", policy=FAST)
        chunks, _ = await collect(tts)
        await tts.aclose()
    # The same int16 the server would have streamed (its clamp, * 32767, truncation).
    assert [(c.text, c.pcm, c.rate) for c in chunks] == [(SENTENCES[0], server.audio("Hello there."), 24_000),
                                                         (SENTENCES[1], server.audio(SENTENCES[1]), 24_000)]


def test_float_samples_split_across_reads_and_out_of_range_are_kept_whole_and_clamped() -> None:
    samples = np.concatenate([model_audio("Fine."), np.array([1.5, -2.0, np.nan], dtype=np.float32)])
    raw = float_wav(samples, 16_000, "float32")
    wav = wire.WavStream()
    pcm = b"".join(wav.feed(raw[i:i + 7]) for i in range(0, len(raw), 7))  # 7: never a whole sample
    wav.finish()
    got = np.frombuffer(pcm, dtype="<i2")
    assert wav.rate == 16_000 and len(got) == len(samples)
    assert list(got[-3:]) == [32767, -32767, 0]
    assert np.array_equal(got[:-3], (samples[:-3] * 32767).astype(np.int16))


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_stream_that_breaks_after_audio_raises_without_retrying(shape: str) -> None:
    """How the real server fails mid-stream: it raises inside its response generator, after the 200."""
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(drop_after_deltas=1)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=FAST)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(LONG):
                got.append(chunk)
        await tts.aclose()
    assert caught.value.kind == "unavailable" and server.dropped == 1
    assert len(server.requests) == 1  # after the first audio, no retry: the fallback finishes the turn
    assert b"".join(c.pcm for c in got) == server.audio(LONG_PIECES[0])
    assert "".join(c.text for c in got) == ""  # the cut sentence is not claimed as spoken


@pytest.mark.parametrize("shape", [*SHAPES, "off"])
async def test_a_slow_model_times_out_per_policy(shape: str) -> None:
    """The streamed answers have sent their 200 and WAV header or info event already: the
    timeout is on the first audio, not the first byte of the answer."""
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(first_byte_delay_s=0.6)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=policy)
        chunks, times = await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.requests) == 2 and 0.3 <= times[0] < 0.6
        assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")
    slow = Fault(first_byte_delay_s=0.6)
    async with ChatterboxServer(ChatterboxScript(faults=[slow, slow])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert caught.value.kind == "timeout" and len(server.requests) == 2


@pytest.mark.parametrize("shape", SHAPES)
async def test_refused_key_is_auth_and_never_retried(shape: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "cb-wrong-key-0123456789"
    async with ChatterboxServer(ChatterboxScript(api_key="right")) as server:
        tts = ChatterboxTTS(secret, base_url=server.base_url, stream=shape, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
        assert len(server.requests) == 1
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert "Invalid API key" in str(error)
    assert secret not in str(error) and secret not in repr(tts) and secret not in caplog.text
    assert error.__context__ is None and error.__cause__ is None


@pytest.mark.parametrize("shape", SHAPES)
async def test_rate_limit_honours_retry_after_then_gives_up(shape: str) -> None:
    policy = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
    limited = Fault(status=429, retry_after="0.3")
    async with ChatterboxServer(ChatterboxScript(faults=[limited, limited])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=policy)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
        gaps = np.diff([r.at for r in server.requests])
        assert len(server.requests) == 3 and all(gap >= 0.28 for gap in gaps), gaps
        assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(status=429, retry_after="0.1")] * 3)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert (caught.value.kind, caught.value.retry_after, len(server.requests)) == ("rate_limit", 0.1, 3)


@pytest.mark.parametrize("shape", SHAPES)
async def test_server_errors_are_retried_then_raised(shape: str) -> None:
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(status=500)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=FAST)
        await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.requests) == 2
    faults = [Fault(status=503), Fault(status=502), Fault(status=500)]
    async with ChatterboxServer(ChatterboxScript(faults=faults)) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert (caught.value.kind, caught.value.status, len(server.requests)) == ("server", 500, 3)
        assert "scripted failure 500" in str(caught.value)


@pytest.mark.parametrize(("shape", "breakage", "kind", "audio_first"), [
    ("sse", "json", "protocol", True), ("sse", "base64", "protocol", True), ("sse", "no_done", "protocol", True),
    ("sse", "info", "protocol", False), ("sse", "error_event", "server", True),
    ("wav", "riff", "protocol", False), ("wav", "wav_format", "protocol", False),
])
async def test_malformed_streams_raise_without_crashing(shape: str, breakage: str, kind: str,
                                                        audio_first: bool) -> None:
    async with ChatterboxServer(ChatterboxScript(faults=[Fault(malformed=breakage)])) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, stream=shape, policy=FAST)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(LONG):
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


async def test_check_reads_health_and_wants_the_model_loaded() -> None:
    """GET /health (health.py): always 200; "healthy" with model_loaded once the model is ready.
    /v1/models answers 200 while the model loads, so it is not asked."""
    script = ChatterboxScript(api_key="cb-key", status="initializing", model_loaded=False)
    async with ChatterboxServer(script) as server:
        tts = ChatterboxTTS("cb-key", base_url=server.base_url, policy=replace_retries(FAST))
        with pytest.raises(ProviderError) as loading:
            await tts.check()
        script.status = "error"
        with pytest.raises(ProviderError) as failed:
            await tts.check()
        script.status, script.model_loaded = "healthy", True
        assert await tts.check() == "model loaded on cuda"
        bad = ChatterboxTTS("other", base_url=server.base_url, policy=replace_retries(FAST))
        with pytest.raises(ProviderError) as refused:
            await bad.check()
        await tts.aclose()
        await bad.aclose()
    assert (loading.value.kind, loading.value.detail) == ("server", "model not loaded yet (status: initializing)")
    assert (failed.value.kind, failed.value.detail) == ("server", "the model failed to load (status: error)")
    assert refused.value.kind == "auth"
    assert [p.path for p in server.probes] == ["/health"] * 4 and not server.requests
    assert server.probes[0].headers["Authorization"] == "Bearer cb-key"
    unreachable = ChatterboxTTS(None, base_url=f"http://127.0.0.1:{free_port()}", policy=FAST)
    with pytest.raises(ProviderError) as down:
        await unreachable.check()
    await unreachable.aclose()
    assert down.value.kind == "unavailable"


async def test_check_of_a_server_without_health_or_with_another_shape_is_protocol() -> None:
    """A server that is not travisvn's (no /health, or one of another shape) fails the check as protocol."""
    async def other(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})  # no model_loaded

    app = web.Application()
    app.router.add_get("/health", other)
    runner, port = await serve_loopback(app)
    try:
        tts = ChatterboxTTS(None, base_url=f"http://127.0.0.1:{port}", policy=replace_retries(FAST))
        with pytest.raises(ProviderError) as shaped:
            await tts.check()
        tts.base_url += "/elsewhere"
        with pytest.raises(ProviderError) as missing:
            await tts.check()
        await tts.aclose()
    finally:
        await runner.cleanup()
    assert shaped.value.kind == "protocol" and missing.value.kind == "protocol" and missing.value.status == 404


async def test_the_default_voice_is_not_sent() -> None:
    """Without voice the server uses its configured one (speech.py resolve_voice_path_and_language)."""
    async with ChatterboxServer() as server:
        for voice in ("default", "narrator"):
            tts = ChatterboxTTS(None, base_url=server.base_url, voice=voice, policy=FAST)
            await collect(tts, "Hi.")
            await tts.aclose()
    assert ["voice" in r.body for r in server.requests] == [False, True]
    assert server.requests[1].body["voice"] == "narrator"


async def test_text_without_words_is_passed_on_without_a_request() -> None:
    async with ChatterboxServer(ChatterboxScript()) as server:
        tts = ChatterboxTTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "...")
        await tts.aclose()
    assert [(c.pcm, c.text) for c in chunks] == [(b"", "...")] and not server.requests


def test_configuration_is_checked_against_the_servers_ranges() -> None:
    """TTSRequest (app/models/requests.py): exaggeration 0.25-2, cfg_weight 0-1, temperature
    0.05-5, streaming_chunk_size 50-500, streaming_strategy sentence|paragraph|fixed|word."""
    for bad in ({"exaggeration": 3.0}, {"cfg_weight": -0.1}, {"temperature": 0.0}, {"temperature": 5.1},
                {"streaming_chunk_size": 40}, {"streaming_strategy": "syllable"}, {"stream": "mp3"}):
        with pytest.raises(ValueError):
            ChatterboxTTS(None, **bad)  # type: ignore[arg-type]
    assert ChatterboxTTS(None, temperature=5.0).temperature == 5.0
    assert ChatterboxOptions(temperature=5.0).temperature == 5.0
    with pytest.raises(ValueError):
        ChatterboxOptions(temperature=5.1)
    defaults = ChatterboxSettings()
    assert (defaults.first_byte_timeout_ms, defaults.stream, defaults.streaming_strategy,
            defaults.streaming_chunk_size, defaults.voice) == (8000, "wav", "word", 50, "default")
    tts = ChatterboxTTS("secret-key-123", base_url="http://tts.local:4123/v1/")
    assert (tts.name, tts.rate, tts.base_url) == ("chatterbox", 24_000, "http://tts.local:4123")
    assert "secret-key-123" not in repr(tts)


def replace_retries(policy: RetryPolicy) -> RetryPolicy:
    """``doctor``'s way: one attempt."""
    return RetryPolicy(retries=0, first_byte_timeout_s=policy.first_byte_timeout_s)
