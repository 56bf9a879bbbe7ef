"""OpenAITTS: the openai SDK against a local speech server (peers/openai_speech_server.py)
speaking POST /v1/audio/speech with streamed raw PCM. The server's audio for a text is
deterministic, so every sample the adapter hands over is checked."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

import numpy as np
import pytest

from peers.loopback import LOOPBACK_ALLOW
from peers.openai_server import error_reply
from peers.openai_speech_server import OpenAISpeechServer, Speech
from runtime.egress.policy import EgressPolicy
from runtime.providers import registry
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy
from runtime.providers.options import OpenAITTSOptions, OpenAITTSSettings
from runtime.providers.tts.openai import OpenAITTS, build
from tests.providers import tts_support
from tests.providers.tts_support import free_port

FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
KEY = "sk-test-0123456789abcdef"
TEXT = "Hello there. How can I help you today?"
SENTENCES = ["Hello there. ", "How can I help you today?"]


async def collect(tts: OpenAITTS, text: str = TEXT) -> tuple[list[AudioChunk], list[float]]:
    return await tts_support.collect(tts, text)


async def eventually(condition, timeout: float = 1.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_streams_pcm_before_the_answer_is_complete() -> None:
    async with OpenAISpeechServer(api_key=KEY) as server:
        server.repeat = Speech(pieces=4, gap_s=0.15)
        tts = OpenAITTS(KEY, base_url=server.base_url, voice="coral", policy=FAST)
        await collect(tts, "Warm up.")  # the SDK's first request in a process imports modules
        chunks, times = await collect(tts)
        await tts.aclose()
    first_sentence_done = times[[c.text for c in chunks].index(SENTENCES[0])]
    assert times[0] < 0.15 and first_sentence_done >= 0.4  # audio came while the answer was still streaming
    assert {c.rate for c in chunks} == {24_000}
    assert b"".join(c.pcm for c in chunks) == server.audio("Hello there.") + server.audio(SENTENCES[1])
    assert "".join(c.text for c in chunks) == TEXT
    assert [c.text for c in chunks if c.text] == SENTENCES and all(not c.pcm for c in chunks if c.text)
    requests = server.speech_requests[1:]
    assert [r.body for r in requests] == [
        {"model": "gpt-4o-mini-tts", "input": "Hello there.", "voice": "coral", "response_format": "pcm"},
        {"model": "gpt-4o-mini-tts", "input": SENTENCES[1], "voice": "coral", "response_format": "pcm"}]
    assert requests[0].method == "POST" and requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert requests[0].headers["accept"] == "application/octet-stream"
    assert server.completed == [0, 1, 2] and not server.disconnects


async def test_every_chunk_holds_whole_samples_across_odd_network_chunks() -> None:
    async with OpenAISpeechServer() as server:
        server.repeat = Speech(pieces=9, odd=True, gap_s=0.01)  # odd-sized writes that arrive one by one
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "Odd boundaries everywhere.")
        audio = [c for c in chunks if c.pcm]
        assert len(audio) >= 5 and all(len(c.pcm) % 2 == 0 for c in audio)
        assert b"".join(c.pcm for c in chunks) == server.audio("Odd boundaries everywhere.")
        # A body of an odd length: the last, lone byte is not a sample.
        server.push(Speech(body=bytes(range(1, 40)), pieces=3))
        chunks, _ = await collect(tts, "Short.")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == bytes(range(1, 39))
    assert [c.text for c in chunks if c.text] == ["Short."]


async def test_options_reach_the_request() -> None:
    async with OpenAISpeechServer() as server:
        tts = OpenAITTS(None, base_url=server.base_url + "/", model="gpt-4o-mini-tts", voice="verse", speed=1.25,
                        instructions="Speak warmly.", policy=FAST)
        await collect(tts, "Hi.")
        await tts.aclose()
        old = OpenAITTS(None, base_url=server.base_url, model="tts-1-hd", voice="onyx", instructions="ignored",
                        policy=FAST)
        await collect(old, "Hi.")
        await old.aclose()
        custom = OpenAITTS(None, base_url=server.base_url, voice="voice_1234", policy=FAST)
        await collect(custom, "Hi.")
        await custom.aclose()
    first, second, third = (r.body for r in server.speech_requests)
    assert first == {"model": "gpt-4o-mini-tts", "input": "Hi.", "voice": "verse", "response_format": "pcm",
                     "speed": 1.25, "instructions": "Speak warmly."}
    assert second == {"model": "tts-1-hd", "input": "Hi.", "voice": "onyx", "response_format": "pcm"}
    assert third["voice"] == {"id": "voice_1234"}
    assert "authorization" not in server.speech_requests[0].headers  # no key: no header at all


async def test_the_server_decides_which_voices_exist() -> None:
    async with OpenAISpeechServer(voices=frozenset({"alloy", "marin"})) as server:
        newer = OpenAITTS(None, base_url=server.base_url, voice="marin", policy=FAST)  # newer than our list
        chunks, _ = await collect(newer, "Hi.")
        await newer.aclose()
        unknown = OpenAITTS(None, base_url=server.base_url, voice="nobody", policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await collect(unknown, "Hi.")
        await unknown.aclose()
    assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")
    assert (caught.value.kind, caught.value.status) == ("bad_request", 400) and len(server.speech_requests) == 2
    assert "nobody" in str(caught.value)


async def test_a_sentence_longer_than_the_input_limit_goes_in_pieces() -> None:
    words = "word " * 1500  # 7500 characters without a sentence end
    text = words + "End."
    async with OpenAISpeechServer(ms_per_char=1) as server:
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, text)
        await tts.aclose()
    inputs = [r.body["input"] for r in server.speech_requests]
    assert len(inputs) == 2 and all(len(i) <= 4096 for i in inputs)
    assert "".join(c.text for c in chunks) == text
    assert b"".join(c.pcm for c in chunks) == b"".join(server.audio(i) for i in inputs)


async def test_barge_in_closes_the_connection_and_the_adapter_stays_usable() -> None:
    async with OpenAISpeechServer() as server:
        server.push(Speech(pieces=20, gap_s=0.1))  # two seconds of streaming
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        async with aclosing(tts.synthesize(TEXT)) as chunks:
            async for chunk in chunks:
                assert chunk.pcm
                break  # the caller spoke: the reply is dropped
        closed_at = time.monotonic()
        assert await eventually(lambda: server.disconnects == [0], 0.5)
        assert time.monotonic() - closed_at < 0.3 and server.completed == []
        assert len(server.speech_requests) == 1  # the second sentence was never asked for
        chunks_after, _ = await collect(tts, "Still here.")  # a new connection
        # Cancelling the task that reads (the pipeline's barge-in) closes the connection too.
        server.push(Speech(pieces=20, gap_s=0.1))
        got = asyncio.Event()

        async def speak() -> None:
            async for _ in tts.synthesize("Cancel me."):
                got.set()

        task = asyncio.create_task(speak())
        await asyncio.wait_for(got.wait(), 1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually(lambda: server.disconnects == [0, 2], 0.5)
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks_after) == server.audio("Still here.")
    assert server.completed == [1]


async def test_refused_key_is_auth_never_retried_and_the_key_stays_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-wrong-key-0123456789"
    async with OpenAISpeechServer(api_key=KEY) as server:  # its 401 echoes the key it was given
        tts = OpenAITTS(secret, base_url=server.base_url, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
        assert len(server.speech_requests) == 1
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert "Incorrect API key provided" in str(error) and "[redacted]" in str(error)
    assert secret not in str(error) and secret not in repr(error) and secret not in repr(tts)
    assert secret not in caplog.text
    assert error.__context__ is None and error.__cause__ is None  # no SDK exception (with its request) attached


async def test_rate_limit_honours_retry_after_then_succeeds() -> None:
    async with OpenAISpeechServer() as server:
        server.push(error_reply(429, retry_after="0.3"), error_reply(429, retry_after_ms="150"))
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
    gaps = np.diff([r.at for r in server.speech_requests])
    assert len(server.speech_requests) == 3 and gaps[0] >= 0.28 and gaps[1] >= 0.13, gaps
    assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")


async def test_server_errors_are_retried_then_raised() -> None:
    async with OpenAISpeechServer() as server:
        server.push(error_reply(500), error_reply(503))
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "Hi.")
        assert len(server.speech_requests) == 3 and b"".join(c.pcm for c in chunks) == server.audio("Hi.")
        server.push(error_reply(502), error_reply(500), error_reply(500, "scripted failure 500"))
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert (caught.value.kind, caught.value.status, len(server.speech_requests)) == ("server", 500, 6)
    assert "scripted failure 500" in str(caught.value)


async def test_slow_first_byte_times_out_and_is_retried() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    async with OpenAISpeechServer() as server:
        tts = OpenAITTS(None, base_url=server.base_url, policy=policy)
        await collect(tts, "Warm up.")
        server.push(Speech(delay_s=1.0))
        chunks, times = await collect(tts, "Hi.")
        assert len(server.speech_requests) == 3 and 0.3 <= times[0] < 0.9
        assert b"".join(c.pcm for c in chunks) == server.audio("Hi.")
        assert await eventually(lambda: 1 in server.disconnects)  # the abandoned request's connection was closed
        server.push(Speech(delay_s=1.0), Speech(delay_s=1.0))
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert caught.value.kind == "timeout" and len(server.speech_requests) == 5


@pytest.mark.parametrize(("answer", "fragment"), [
    (Speech(content_type="application/json", body=b'{"error": {"message": "nope", "type": "server_error"}}'),
     "application/json"),
    (Speech(content_type="text/html; charset=utf-8", body=b"<!DOCTYPE html><html><body>Bad gateway</body></html>"),
     "text/html"),
    (Speech(content_type="audio/pcm", body=b'{\n  "error": {\n    "message": "model overloaded",\n    "type": "x"}}'),
     "text document"),
    (Speech(content_type="audio/mpeg"), "audio/mpeg"),
])
async def test_malformed_answers_are_protocol_errors(answer: Speech, fragment: str) -> None:
    async with OpenAISpeechServer() as server:
        server.push(answer)
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize("Hello there."):
                got.append(chunk)
        await tts.aclose()
    assert caught.value.kind == "protocol" and fragment in str(caught.value)
    assert not got and len(server.speech_requests) == 1  # protocol errors are not retried


async def test_octet_stream_and_untyped_answers_are_pcm() -> None:
    async with OpenAISpeechServer() as server:
        server.push(Speech(content_type="application/octet-stream"), Speech(content_type="audio/L16; rate=24000"))
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        one, _ = await collect(tts, "One.")
        two, _ = await collect(tts, "Two.")
        await tts.aclose()
    assert b"".join(c.pcm for c in one) == server.audio("One.") and b"".join(c.pcm for c in two) == server.audio("Two.")


async def test_a_stream_cut_after_audio_raises_without_retrying() -> None:
    async with OpenAISpeechServer() as server:
        server.push(Speech(pieces=4, drop_after=2, gap_s=0.02))
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(TEXT):
                got.append(chunk)
        await tts.aclose()
    assert caught.value.kind == "unavailable" and server.dropped == 1 and len(server.speech_requests) == 1
    assert got and server.audio("Hello there.").startswith(b"".join(c.pcm for c in got))
    assert "".join(c.text for c in got) == ""  # the cut sentence is not claimed as spoken


async def test_connection_refused_is_unavailable() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.02)
    tts = OpenAITTS(None, base_url=f"http://127.0.0.1:{free_port()}/v1", policy=policy)
    with pytest.raises(ProviderError) as caught:
        await collect(tts, "Hi.")
    await tts.aclose()
    assert caught.value.kind == "unavailable"


async def test_check_lists_models_with_the_key() -> None:
    async with OpenAISpeechServer(api_key=KEY) as server:
        good = OpenAITTS(KEY, base_url=server.base_url, policy=FAST)
        await good.check()
        bad = OpenAITTS("sk-other-key-000", base_url=server.base_url, policy=FAST)
        with pytest.raises(ProviderError) as caught:
            await bad.check()
        await good.aclose()
        await bad.aclose()
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/models")] * 2
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert (caught.value.kind, caught.value.status) == ("auth", 401) and "sk-other-key-000" not in str(caught.value)
    assert not server.speech_requests
    down = OpenAITTS(None, base_url=f"http://127.0.0.1:{free_port()}/v1", policy=FAST)
    with pytest.raises(ProviderError) as unreachable:
        await down.check()
    await down.aclose()
    assert unreachable.value.kind == "unavailable"


def context(**overrides: object) -> registry.BuildContext:
    values: dict[str, object] = {
        "entry": registry.get("tts", "openai"), "settings": OpenAITTSSettings(), "options": OpenAITTSOptions(),
        "model": None, "base_url": None, "credential": registry.ProviderCredential({}, KEY), "policy": FAST,
        "egress": EgressPolicy.from_entries(LOOPBACK_ALLOW)}  # a version's base_url may be the loopback server
    values.update(overrides)
    return registry.BuildContext(**values)  # type: ignore[arg-type]


async def test_build_from_the_registry() -> None:
    async with OpenAISpeechServer(api_key=KEY) as server:
        # The credential's base_url (the LLM's local chat server) is not the speech server.
        credential = registry.ProviderCredential({"base_url": f"http://127.0.0.1:{free_port()}/v1"}, KEY)
        ctx = context(settings=OpenAITTSSettings(base_url=server.base_url, voice="sage"), credential=credential,
                      options=OpenAITTSOptions(voice="nova", speed=1.5, instructions="Calm and slow."))
        tts = registry.get("tts", "openai").build(ctx)
        assert isinstance(tts, OpenAITTS) and tts.policy is FAST and KEY not in repr(tts)
        await collect(tts, "Hi.")
        await tts.aclose()
        # Defaults from the settings; the version's model and base_url win.
        plain = build(context(settings=OpenAITTSSettings(base_url="http://127.0.0.1:9/v1", voice="sage"),
                              model="tts-1", base_url=server.base_url))
        await collect(plain, "Hi.")
        await plain.aclose()
    assert [r.body for r in server.speech_requests] == [
        {"model": "gpt-4o-mini-tts", "input": "Hi.", "voice": "nova", "response_format": "pcm", "speed": 1.5,
         "instructions": "Calm and slow."},
        {"model": "tts-1", "input": "Hi.", "voice": "sage", "response_format": "pcm"}]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.speech_requests)


async def test_the_public_api_needs_a_key_a_local_server_does_not() -> None:
    with pytest.raises(registry.MissingCredential, match="the tenant has no openai credential"):
        build(context(credential=None))  # providers.openai_tts.base_url: the public API by default
    with pytest.raises(registry.MissingCredential):
        build(context(credential=registry.ProviderCredential({"base_url": "http://127.0.0.1:11434/v1"}, None)))
    with pytest.raises(registry.MissingCredential):
        build(context(credential=None, base_url="https://api.openai.com/v1/"))
    async with OpenAISpeechServer() as server:
        tts = build(context(credential=None, settings=OpenAITTSSettings(base_url=server.base_url)))
        chunks, _ = await collect(tts, "Local.")
        await tts.check()
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.audio("Local.")
    assert all("authorization" not in r.headers for r in server.requests)


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        OpenAITTS(None, speed=5.0)
    with pytest.raises(ValueError):
        OpenAITTS(None, base_url="api.openai.com/v1")
    tts = OpenAITTS("sk-secret-key-123")
    assert (tts.name, tts.rate, tts.base_url, tts.voice) == ("openai", 24_000, "https://api.openai.com/v1", "alloy")
    assert "sk-secret-key-123" not in repr(tts)


async def test_text_without_words_is_passed_on_without_a_request() -> None:
    async with OpenAISpeechServer() as server:
        tts = OpenAITTS(None, base_url=server.base_url, policy=FAST)
        chunks, _ = await collect(tts, "...")
        await tts.aclose()
    assert [(c.pcm, c.text) for c in chunks] == [(b"", "...")] and not server.requests
