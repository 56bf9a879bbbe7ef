"""CartesiaTTS: the official ``cartesia`` SDK against a local server speaking Cartesia's TTS
WebSocket protocol (tests/peers/cartesia_server.py). The server's audio for a text is
deterministic, so every sample the adapter hands over is checked."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from contextlib import aclosing

import numpy as np
import pytest

from runtime.providers import registry
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy
from runtime.providers.options import CartesiaOptions, CartesiaSettings
from runtime.providers.registry import BuildContext, MissingCredential, ProviderCredential
from runtime.providers.tts.cartesia import CartesiaTTS, build
from tests.peers.cartesia_server import CartesiaScript, CartesiaServer, Fault, Refusal

KEY = "test-key"
FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
TEXT = "Hello there. How can I help you today?"
SENTENCES = ["Hello there. ", "How can I help you today?"]
VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"


def adapter(server: CartesiaServer, key: str = KEY, **options) -> CartesiaTTS:  # type: ignore[no-untyped-def]
    options.setdefault("policy", FAST)
    return CartesiaTTS(key, base_url=server.base_url, **options)


async def collect(tts: CartesiaTTS, text: str = TEXT) -> tuple[list[AudioChunk], list[float]]:
    chunks, times, started = [], [], time.monotonic()
    async for chunk in tts.synthesize(text):
        chunks.append(chunk)
        times.append(time.monotonic() - started)
    return chunks, times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_streams_mulaw_at_8k_in_one_context_before_the_piece_is_made() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=3, chunk_gap_s=0.1)) as server:
        tts = adapter(server, transport_rate=8000)
        await collect(tts, "Warm.")  # the socket is opened once, then reused
        chunks, times = await collect(tts)
        await tts.aclose()
    assert times[0] < 0.1 and times[-1] >= 0.45  # audio came while the rest of the piece was being made
    assert {c.rate for c in chunks} == {8000}
    # Mu-law decoded to PCM16, every sample in order.
    assert b"".join(c.pcm for c in chunks) == server.pcm(SENTENCES[0]) + server.pcm(SENTENCES[1])
    # The texts concatenate to the input; a sentence's text comes after its audio, before the next's.
    assert "".join(c.text for c in chunks) == TEXT
    assert [c.text for c in chunks if c.text] == SENTENCES
    assert all(not c.pcm for c in chunks if c.text)
    first_text = [c.text for c in chunks].index(SENTENCES[0])
    assert b"".join(c.pcm for c in chunks[:first_text]) == server.pcm(SENTENCES[0])
    # One socket, authenticated as the SDK does it, for both pieces.
    assert server.accepted == 1 and len(server.connections) == 1
    handshake = server.connections[0]
    assert handshake.path == "/tts/websocket" and handshake.headers["Authorization"] == f"Bearer {KEY}"
    assert handshake.headers["cartesia-version"] == "2026-08-14"
    # Continuation: both sentences in one context, a flush between them, the last ends it.
    context_id = server.requests[-1].message["context_id"]
    sent = server.context_requests(context_id)
    assert [(m["transcript"], m["continue"], m.get("flush", False)) for m in sent] == [
        (SENTENCES[0], True, False), ("", True, True), (SENTENCES[1], False, False)]
    assert sent[0] == {"context_id": context_id, "model_id": "sonic-3", "transcript": SENTENCES[0],
                       "voice": {"id": VOICE}, "language": "en", "continue": True,
                       "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}}
    assert not server.cancels


async def test_voice_speed_model_and_language_are_sent() -> None:
    async with CartesiaServer() as server:
        tts = adapter(server, voice="voice-42", model="sonic-3.5", speed=1.2, language="pt-BR")
        chunks, _ = await collect(tts, "Olá.")
        await tts.aclose()
    (request,) = [r.message for r in server.requests]
    assert request["voice"] == {"id": "voice-42"} and request["model_id"] == "sonic-3.5"
    assert request["generation_config"] == {"speed": 1.2} and request["language"] == "pt"
    assert "".join(c.text for c in chunks) == "Olá."


@pytest.mark.parametrize(("transport", "rate"), [(16_000, 16_000), (48_000, 24_000)])
async def test_wideband_transports_get_pcm_s16le(transport: int, rate: int) -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=4)) as server:
        tts = adapter(server, transport_rate=transport)
        chunks, _ = await collect(tts)
        await tts.aclose()
    assert server.requests[0].message["output_format"] == {"container": "raw", "encoding": "pcm_s16le",
                                                           "sample_rate": rate}
    assert {c.rate for c in chunks} == {rate} and tts.rate == rate
    expected = b"".join(server.audio(s, "pcm_s16le", rate) for s in SENTENCES)
    assert b"".join(c.pcm for c in chunks) == expected
    assert "".join(c.text for c in chunks) == TEXT


async def test_a_last_chunk_marked_done_ends_the_context() -> None:
    async with CartesiaServer(CartesiaScript(done_in_last_chunk=True)) as server:
        tts = adapter(server)
        chunks, _ = await collect(tts)
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.pcm(SENTENCES[0]) + server.pcm(SENTENCES[1])
    assert "".join(c.text for c in chunks) == TEXT and not server.cancels


async def test_barge_in_cancels_the_context_and_the_socket_is_reused() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=4, chunk_gap_s=0.1)) as server:
        tts = adapter(server)
        got: list[AudioChunk] = []
        async with aclosing(tts.synthesize(TEXT)) as chunks:
            async for chunk in chunks:
                got.append(chunk)
                break  # the caller spoke: the pipeline closes the generator
        await asyncio.sleep(0.05)
        cancelled = server.requests[0].message["context_id"]
        assert [c.message for c in server.cancels] == [{"cancel": True, "context_id": cancelled}]
        assert "".join(c.text for c in got) == ""  # nothing claimed as spoken
        # The next piece: same socket, a new context, only its own audio.
        chunks2, _ = await collect(tts, "Sure.")
        await tts.aclose()
    assert server.accepted == 1
    assert b"".join(c.pcm for c in chunks2) == server.pcm("Sure.")
    assert server.requests[-1].message["context_id"] != cancelled
    assert len(server.requests) == 3 + 1  # the cancelled context's three inputs, then the new one
    assert server.contexts[cancelled].task.done()  # the server stopped generating it


async def test_a_cancelled_task_cancels_its_context() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=4, chunk_gap_s=0.1)) as server:
        tts = adapter(server)
        first = asyncio.Event()

        async def speak() -> None:
            async with aclosing(tts.synthesize(TEXT)) as chunks:
                async for _ in chunks:
                    first.set()

        task = asyncio.create_task(speak())
        await asyncio.wait_for(first.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert len(server.cancels) == 1
        chunks, _ = await collect(tts, "Again.")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.pcm("Again.") and server.accepted == 1


async def test_late_frames_of_a_cancelled_context_are_dropped() -> None:
    """A server still sending a cancelled context's audio: the next piece hears none of it."""
    script = CartesiaScript(chunks_per_input=4, chunk_gap_s=0.05, ignore_cancel=True)
    async with CartesiaServer(script) as server:
        tts = adapter(server)
        async with aclosing(tts.synthesize(TEXT)) as chunks:
            async for _ in chunks:
                break
        chunks2, _ = await collect(tts, "Next piece.")
        await tts.aclose()
    assert len(server.cancels) == 1
    assert b"".join(c.pcm for c in chunks2) == server.pcm("Next piece.")
    assert "".join(c.text for c in chunks2) == "Next piece."


async def test_two_contexts_share_the_socket_without_mixing_frames() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=4, chunk_gap_s=0.02)) as server:
        tts = adapter(server)
        await collect(tts, "Open.")
        (one, _), (two, _) = await asyncio.gather(collect(tts, "First piece."), collect(tts, "Second piece, longer."))
        await tts.aclose()
    assert server.accepted == 1
    assert b"".join(c.pcm for c in one) == server.pcm("First piece.")
    assert b"".join(c.pcm for c in two) == server.pcm("Second piece, longer.")


async def test_a_server_that_stalls_mid_context_times_out() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=3, chunk_gap_s=0.5)) as server:
        tts = adapter(server)
        tts.read_timeout_s = 0.2
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize("Hello there."):
                got.append(chunk)
        assert caught.value.kind == "timeout" and len(got) == 1
        tts.read_timeout_s = 5.0
        chunks, _ = await collect(tts, "Ok.")  # the stalled socket is not used again
        await tts.aclose()
    assert server.accepted == 2 and b"".join(c.pcm for c in chunks) == server.pcm("Ok.")


async def test_a_refused_request_is_bad_request() -> None:
    async with CartesiaServer() as server:
        tts = adapter(server)
        tts.speed = 3.0  # past the configuration check: the server refuses it
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert (caught.value.kind, caught.value.status) == ("bad_request", 400)
    assert "speed" in str(caught.value) and len(server.contexts) == 0


async def test_refused_key_is_auth_and_never_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk_car_wrong-key-0123456789"
    async with CartesiaServer(CartesiaScript(api_key="right")) as server:
        tts = adapter(server, key=secret)
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
        assert len(server.connections) == 1 and server.accepted == 0
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert "Invalid API key" in str(error)
    assert secret not in str(error) and secret not in repr(tts) and secret not in caplog.text
    assert error.__context__ is None and error.__cause__ is None


async def test_forbidden_is_auth_too() -> None:
    async with CartesiaServer(CartesiaScript(handshakes=[Refusal(403)])) as server:
        tts = adapter(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
    assert (caught.value.kind, caught.value.status, len(server.connections)) == ("auth", 403, 1)


async def test_rate_limit_honours_retry_after_then_succeeds() -> None:
    limited = Refusal(429, retry_after="0.3")
    async with CartesiaServer(CartesiaScript(handshakes=[limited, limited])) as server:
        tts = adapter(server)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
        gaps = np.diff([c.at for c in server.connections])
        assert len(server.connections) == 3 and all(gap >= 0.28 for gap in gaps), gaps
    assert b"".join(c.pcm for c in chunks) == server.pcm("Hi.")
    async with CartesiaServer(CartesiaScript(handshakes=[Refusal(429, retry_after="0.05")] * 3)) as server:
        tts = adapter(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert (caught.value.kind, caught.value.retry_after, len(server.connections)) == ("rate_limit", 0.05, 3)


async def test_server_errors_are_retried_then_raised() -> None:
    async with CartesiaServer(CartesiaScript(handshakes=[Refusal(503)])) as server:
        tts = adapter(server)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.connections) == 2 and b"".join(c.pcm for c in chunks) == server.pcm("Hi.")
    handshakes = [Refusal(503), Refusal(502), Refusal(500, message="overloaded")]
    async with CartesiaServer(CartesiaScript(handshakes=handshakes)) as server:
        tts = adapter(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert (caught.value.kind, caught.value.status, len(server.connections)) == ("server", 500, 3)
    assert "overloaded" in str(caught.value)


async def test_error_messages_are_mapped_by_status_code() -> None:
    # Before any audio: a 500 is retried on a new context (same socket), and the piece is spoken.
    async with CartesiaServer(CartesiaScript(faults=[Fault(error_status=500)])) as server:
        tts = adapter(server)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.pcm("Hi.") and len(server.contexts) == 2
    assert server.accepted == 1 and not server.cancels  # the failed context was done already
    # A 400 (our request) is not retried.
    async with CartesiaServer(CartesiaScript(faults=[Fault(error_status=400)])) as server:
        tts = adapter(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert (caught.value.kind, caught.value.status, len(server.contexts)) == ("bad_request", 400, 1)
    assert "scripted failure 400" in str(caught.value)
    # After audio: raised, not retried (the fallback finishes the piece).
    async with CartesiaServer(CartesiaScript(faults=[Fault(error_status=503, error_at=1)])) as server:
        tts = adapter(server)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as after:
            async for chunk in tts.synthesize("Hello there."):
                got.append(chunk)
        await tts.aclose()
    assert after.value.kind == "server" and got and len(server.contexts) == 1
    assert "".join(c.text for c in got) == ""


async def test_slow_first_byte_times_out_and_retries_on_a_new_context() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    async with CartesiaServer(CartesiaScript(faults=[Fault(first_chunk_delay_s=1.0)])) as server:
        tts = adapter(server, policy=policy)
        chunks, times = await collect(tts, "Hi.")
        await tts.aclose()
        slow = list(server.contexts)[0]
        assert [c.message["context_id"] for c in server.cancels] == [slow]  # the slow one was cancelled
        assert len(server.contexts) == 2 and server.accepted == 1 and 0.3 <= times[0] < 0.9
        assert b"".join(c.pcm for c in chunks) == server.pcm("Hi.")
    slow_fault = Fault(first_chunk_delay_s=1.0)
    async with CartesiaServer(CartesiaScript(faults=[slow_fault, slow_fault])) as server:
        tts = adapter(server, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert caught.value.kind == "timeout" and len(server.contexts) == 2 and len(server.cancels) == 2


@pytest.mark.parametrize("breakage", ["json", "not_object", "base64", "no_type", "binary"])
async def test_malformed_frames_are_protocol_errors_and_the_socket_is_replaced(breakage: str) -> None:
    async with CartesiaServer(CartesiaScript(faults=[Fault(malformed=breakage, malformed_at=1)])) as server:
        tts = adapter(server)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize("Hello there."):
                got.append(chunk)
        assert caught.value.kind == "protocol" and got and len(server.contexts) == 1
        chunks, _ = await collect(tts, "Fine.")  # a new socket for the next piece
        await tts.aclose()
    assert server.accepted == 2 and b"".join(c.pcm for c in chunks) == server.pcm("Fine.")


async def test_malformed_first_frame_is_not_retried() -> None:
    async with CartesiaServer(CartesiaScript(faults=[Fault(malformed="json", malformed_at=0)])) as server:
        tts = adapter(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hello.")
        await tts.aclose()
    assert caught.value.kind == "protocol" and len(server.contexts) == 1


async def test_a_dropped_socket_raises_after_audio_and_is_reopened() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=3, faults=[Fault(drop_after_chunks=1)])) as server:
        tts = adapter(server)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(TEXT):
                got.append(chunk)
        assert caught.value.kind == "unavailable" and server.dropped == 1 and len(server.contexts) == 1
        assert got and "".join(c.text for c in got) == ""
        assert got[0].pcm == server.pcm(SENTENCES[0])[:len(got[0].pcm)]
        chunks, _ = await collect(tts, "Back.")
        await tts.aclose()
    assert server.accepted == 2 and b"".join(c.pcm for c in chunks) == server.pcm("Back.")


async def test_a_drop_before_audio_is_retried_on_a_new_socket() -> None:
    async with CartesiaServer(CartesiaScript(faults=[Fault(drop_after_chunks=0)])) as server:
        tts = adapter(server)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
    assert server.accepted == 2 and b"".join(c.pcm for c in chunks) == server.pcm("Hi.")


async def test_connection_refused_is_unavailable() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.02)
    tts = CartesiaTTS(KEY, base_url=f"http://127.0.0.1:{free_port()}", policy=policy)
    with pytest.raises(ProviderError) as caught:
        await collect(tts, "Hi.")
    await tts.aclose()
    assert caught.value.kind == "unavailable"


async def test_check_gets_the_voice_with_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with CartesiaServer(CartesiaScript(voices=frozenset({VOICE}))) as server:
        good = adapter(server)
        await good.check()
        bad = adapter(server, key="sk_car_other-key-99")
        with pytest.raises(ProviderError) as refused:
            await bad.check()
        missing = adapter(server, voice="no-such-voice")
        with pytest.raises(ProviderError) as unknown:
            await missing.check()
        for tts in (good, bad, missing):
            await tts.aclose()
    probe = server.probes[0]
    assert probe.path == f"/voices/{VOICE}" and probe.headers["Authorization"] == f"Bearer {KEY}"
    assert probe.headers["cartesia-version"] == "2026-08-14"
    assert (refused.value.kind, refused.value.status) == ("auth", 401)
    assert "sk_car_other-key-99" not in str(refused.value) and "sk_car_other-key-99" not in caplog.text
    assert (unknown.value.kind, unknown.value.status) == ("bad_request", 404)
    assert len(server.probes) == 3 and not server.connections  # no WebSocket for a check
    unreachable = CartesiaTTS(KEY, base_url=f"http://127.0.0.1:{free_port()}", policy=FAST)
    with pytest.raises(ProviderError) as down:
        await unreachable.check()
    await unreachable.aclose()
    assert down.value.kind == "unavailable"


async def test_text_without_words_is_passed_on_without_a_request() -> None:
    async with CartesiaServer() as server:
        tts = adapter(server)
        chunks, _ = await collect(tts, "...")
        leading, _ = await collect(tts, "... Right.")
        await tts.aclose()
    assert [(c.pcm, c.text) for c in chunks] == [(b"", "...")]
    assert "".join(c.text for c in leading) == "... Right." and len(server.contexts) == 1


def _context(entry, **changes):  # type: ignore[no-untyped-def]
    values = {"entry": entry, "settings": CartesiaSettings(), "options": CartesiaOptions(), "model": None,
              "base_url": None, "credential": ProviderCredential({}, KEY), "policy": FAST}
    values.update(changes)
    return BuildContext(**values)


async def test_build_from_a_build_context() -> None:
    entry = registry.get("tts", "cartesia")
    async with CartesiaServer() as server:
        context = _context(entry, options=CartesiaOptions(voice="voice-7", speed=0.9),
                           settings=CartesiaSettings(url=server.base_url), language="fr", transport_rate=8000)
        tts = entry.build(context)
        assert isinstance(tts, CartesiaTTS) and tts.policy is FAST
        chunks, _ = await collect(tts, "Bonjour.")
        await tts.aclose()
    request = server.requests[0].message
    assert (request["voice"], request["model_id"], request["language"]) == ({"id": "voice-7"}, "sonic-3", "fr")
    assert request["generation_config"] == {"speed": 0.9}
    assert request["output_format"]["encoding"] == "pcm_mulaw" and chunks[0].rate == 8000
    assert "".join(c.text for c in chunks) == "Bonjour."


async def test_build_url_and_model_precedence() -> None:
    entry = registry.get("tts", "cartesia")
    settings = CartesiaSettings(url="https://settings.example", voice="settings-voice")
    credential = ProviderCredential({"base_url": "https://credential.example"}, KEY)
    tts = build(_context(entry, settings=settings, credential=credential, base_url="https://version.example",
                         model="sonic-3.5", transport_rate=16_000))
    assert (tts.rest_url, tts.ws_url, tts.model, tts.voice) == (
        "https://version.example", "wss://version.example", "sonic-3.5", "settings-voice")
    assert (tts.output["encoding"], tts.rate, tts.speed) == ("pcm_s16le", 16_000, None)
    await tts.aclose()
    tts = build(_context(entry, settings=settings, credential=credential))
    assert tts.rest_url == "https://credential.example" and tts.model == settings.model
    await tts.aclose()
    tts = build(_context(entry, settings=settings))
    assert tts.rest_url == "https://settings.example"
    await tts.aclose()


def test_build_needs_the_key() -> None:
    entry = registry.get("tts", "cartesia")
    with pytest.raises(MissingCredential):
        build(_context(entry, credential=None))
    with pytest.raises(MissingCredential):
        build(_context(entry, credential=ProviderCredential({"base_url": "https://x.example"}, None)))


async def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        CartesiaTTS(KEY, speed=2.0)
    with pytest.raises(ValueError):
        CartesiaTTS(KEY, base_url="ftp://api.cartesia.ai")
    with pytest.raises(ValueError):
        CartesiaTTS("")
    tts = CartesiaTTS("sk_car_secret-123", base_url="wss://api.cartesia.ai/tts/websocket")
    assert (tts.name, tts.rest_url, tts.ws_url) == ("cartesia", "https://api.cartesia.ai", "wss://api.cartesia.ai")
    assert (tts.output["encoding"], tts.rate, tts.model) == ("pcm_mulaw", 8000, "sonic-3")
    assert "sk_car_secret-123" not in repr(tts)
    await tts.aclose()
