"""CartesiaTTS: the official ``cartesia`` SDK against a local server speaking Cartesia's TTS
WebSocket protocol (peers/cartesia_server.py). The server's audio for a text is
deterministic, so every sample the adapter hands over is checked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np
import pytest

from peers.cartesia_server import CartesiaScript, CartesiaServer, Fault, Refusal
from runtime.providers import registry
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy, TextToSpeech
from runtime.providers.failover import Failover, FailoverTTS
from runtime.providers.options import CartesiaOptions, CartesiaSettings
from runtime.providers.registry import BuildContext, MissingCredential, ProviderCredential
from runtime.providers.tts.cartesia import CartesiaTTS, build
from tests.providers import tts_support
from tests.providers.tts_support import free_port

KEY = "test-key"
FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
TEXT = "Hello there. How can I help you today?"
SENTENCES = ["Hello there. ", "How can I help you today?"]
VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"


def adapter(server: CartesiaServer, key: str = KEY, **options) -> CartesiaTTS:  # type: ignore[no-untyped-def]
    options.setdefault("policy", FAST)
    return CartesiaTTS(key, base_url=server.base_url, **options)


async def collect(tts: CartesiaTTS, text: str = TEXT) -> tuple[list[AudioChunk], list[float]]:
    return await tts_support.collect(tts, text)


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
                       "voice": {"id": VOICE}, "language": "en", "continue": True, "max_buffer_delay_ms": 0,
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


# Text arriving over time (synthesize_stream): one context for the stream


class Paced:
    """Pieces as a model writes them: the first at once, each next after ``gap`` seconds.
    Records when each was handed out and whether the source ran to its end or was closed."""

    def __init__(self, pieces: list[str], gap: float = 0.05) -> None:
        self.pieces, self.gap = pieces, gap
        self.handed: list[tuple[str, float]] = []
        self.ended = False  # every piece was handed out and the source returned
        self.closed = False  # the source was closed or cancelled before its end

    async def stream(self) -> AsyncIterator[str]:
        try:
            for index, piece in enumerate(self.pieces):
                if index:
                    await asyncio.sleep(self.gap)
                self.handed.append((piece, time.monotonic()))
                yield piece
            self.ended = True
        except BaseException:
            self.closed = True
            raise


async def collect_stream(tts: TextToSpeech, pieces: Paced) -> tuple[list[AudioChunk], list[float]]:
    chunks, times = [], []
    async for chunk in tts.synthesize_stream(pieces.stream()):
        chunks.append(chunk)
        times.append(time.monotonic())
    return chunks, times


def shape(chunks: list[AudioChunk]) -> list[str]:
    """The chunks as texts, each run of audio chunks as one "<audio>"."""
    out: list[str] = []
    for chunk in chunks:
        assert not (chunk.pcm and chunk.text)  # audio carries no text, texts come on empty chunks
        if chunk.text:
            out.append(chunk.text)
        elif chunk.pcm and (not out or out[-1] != "<audio>"):
            out.append("<audio>")
    return out


def inputs(server: CartesiaServer, context_id: str) -> list[tuple[str, bool, bool]]:
    return [(m["transcript"], m["continue"], m.get("flush", False)) for m in server.context_requests(context_id)]


STREAM = ["Hello there. How are you today? ", "I can help ", "with that. ", "Bye."]
STREAM_SENTENCES = ["Hello there. ", "How are you today? ", "I can help ", "with that. ", "Bye."]


async def test_a_stream_of_pieces_is_one_context_sent_as_the_pieces_arrive() -> None:
    assert CartesiaTTS.streaming_text_input is True
    async with CartesiaServer(CartesiaScript(chunks_per_input=4, chunk_gap_s=0.03)) as server:
        tts = adapter(server)
        pieces = Paced(STREAM)
        chunks, times = await collect_stream(tts, pieces)
        # A later segment of the same reply (after a pause): a new context on the same socket.
        again, _ = await collect_stream(tts, Paced(["And again. "]))
        await tts.aclose()
    first, second = list(server.contexts)
    assert server.accepted == 1 and [r.message["context_id"] for r in server.requests].count(first) == 11
    # One context for the whole stream: each sentence with continue, a flush after it; then the
    # end Cartesia documents for a last transcript not known in advance.
    expected: list[tuple[str, bool, bool]] = []
    for sentence in STREAM_SENTENCES:
        expected += [(sentence, True, False), ("", True, True)]
    assert inputs(server, first) == [*expected, ("", False, False)]
    assert all(m["max_buffer_delay_ms"] == 0 for m in server.context_requests(first))
    flush_ids = [c.flush_id for c in server.chunks if c.context_id == first]
    assert list(dict.fromkeys(flush_ids)) == [1, 2, 3, 4, 5] and flush_ids == sorted(flush_ids)
    assert server.contexts[first].finished and not server.cancels and pieces.ended
    # Exact audio in order; the texts concatenate to the pieces, each sentence's text right after
    # its last audio.
    assert b"".join(c.pcm for c in chunks) == b"".join(server.pcm(s) for s in STREAM_SENTENCES)
    assert "".join(c.text for c in chunks) == "".join(STREAM)
    assert shape(chunks) == [part for s in STREAM_SENTENCES for part in ("<audio>", s)]
    for number, sentence in enumerate(STREAM_SENTENCES):
        at = [c.text for c in chunks].index(sentence)
        assert b"".join(c.pcm for c in chunks[:at]) == b"".join(server.pcm(s) for s in STREAM_SENTENCES[:number + 1])
    # The next piece was at Cartesia while the first was still being handed over.
    second_piece_at = next(r.at for r in server.requests if r.message["transcript"] == "I can help ")
    last_audio_of_first_piece = times[[c.text for c in chunks].index("How are you today? ") - 1]
    assert second_piece_at < last_audio_of_first_piece
    assert b"".join(c.pcm for c in again) == server.pcm("And again. ")
    assert inputs(server, second) == [("And again. ", True, False), ("", True, True), ("", False, False)]


async def test_pieces_without_words_keep_their_place_in_the_texts() -> None:
    async with CartesiaServer() as server:
        tts = adapter(server)
        pieces = ["...", "Hi there. ", " ", "Bye.", "?!"]
        chunks, _ = await collect_stream(tts, Paced(pieces, gap=0.01))
        # Nothing to say at all: the texts go on, no context is begun.
        silent, _ = await collect_stream(tts, Paced(["...", " "], gap=0.01))
        await tts.aclose()
    assert shape(chunks) == ["...", "<audio>", "Hi there. ", " ", "<audio>", "Bye.", "?!"]
    assert b"".join(c.pcm for c in chunks) == server.pcm("Hi there. ") + server.pcm("Bye.")
    (context_id,) = server.contexts
    assert [t for t, _, _ in inputs(server, context_id) if t] == ["Hi there. ", "Bye."]
    assert [(c.pcm, c.text) for c in silent] == [(b"", "..."), (b"", " ")]
    assert len(server.contexts) == 1 and not server.cancels


@pytest.mark.parametrize("how", ["closed", "cancelled"])
async def test_a_stream_stopped_mid_way_cancels_its_context_and_its_sender(how: str) -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=4, chunk_gap_s=0.05)) as server:
        tts = adapter(server)
        pieces = Paced(["Hello there. ", "How are you? ", "Bye now."], gap=0.1)
        got: list[AudioChunk] = []
        if how == "closed":  # the reply is stale: the pipeline closes the generator
            async with aclosing(tts.synthesize_stream(pieces.stream())) as chunks:
                async for chunk in chunks:
                    got.append(chunk)
                    break
        else:  # barge-in: the speaking task is cancelled
            first = asyncio.Event()

            async def speak() -> None:
                async for chunk in tts.synthesize_stream(pieces.stream()):
                    got.append(chunk)
                    first.set()

            task = asyncio.create_task(speak())
            await asyncio.wait_for(first.wait(), 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        (context_id,) = server.contexts
        await asyncio.sleep(0.05)
        assert [c.message for c in server.cancels] == [{"cancel": True, "context_id": context_id}]
        # The sender stopped: it read no further piece and sent nothing more.
        assert pieces.closed and [p for p, _ in pieces.handed] == ["Hello there. "]
        received = len(server.requests)
        await asyncio.sleep(0.25)
        assert len(server.requests) == received == 2
        assert inputs(server, context_id) == [("Hello there. ", True, False), ("", True, True)]
        assert "".join(c.text for c in got) == "" and got[0].pcm
        # The adapter goes on: same socket, a new context.
        chunks, _ = await collect(tts, "Sure.")
        await tts.aclose()
    assert server.accepted == 1 and b"".join(c.pcm for c in chunks) == server.pcm("Sure.")


@pytest.mark.parametrize(("fault", "kind"), [(Fault(error_status=503, error_at=5), "server"),
                                             (Fault(drop_after_chunks=5), "unavailable"),
                                             (Fault(done_at=5), "server")])
async def test_a_failure_mid_stream_raises_after_the_audio_handed_over(fault: Fault, kind: str) -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=4, chunk_gap_s=0.02, faults=[fault])) as server:
        tts = adapter(server)
        pieces = Paced(STREAM)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize_stream(pieces.stream()):
                got.append(chunk)
        assert caught.value.kind == kind and len(server.contexts) == 1  # not retried after audio
        expected = b"".join(server.pcm(s) for s in STREAM_SENTENCES)
        audio = b"".join(c.pcm for c in got)
        assert audio and expected.startswith(audio)
        assert "".join(STREAM).startswith("".join(c.text for c in got))
        chunks, _ = await collect(tts, "Fine.")  # the adapter stays usable
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.pcm("Fine.")
    assert server.accepted == (2 if kind == "unavailable" else 1)
    assert not server.cancels  # the context was over (error and done say so; a dropped socket takes none)


async def test_a_stream_whose_server_stalls_times_out() -> None:
    async with CartesiaServer(CartesiaScript(chunks_per_input=3, chunk_gap_s=0.5)) as server:
        tts = adapter(server)
        tts.read_timeout_s = 0.2
        got: list[AudioChunk] = []
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize_stream(Paced(["Hello there. ", "Bye."]).stream()):
                got.append(chunk)
        # The timer ran from the last input sent (the second piece, 0.05 s in), not from the start.
        assert caught.value.kind == "timeout" and len(got) == 1 and time.monotonic() - started >= 0.25
        tts.read_timeout_s = 5.0
        chunks, _ = await collect(tts, "Ok.")  # the stalled socket is not used again
        await tts.aclose()
    assert server.accepted == 2 and b"".join(c.pcm for c in chunks) == server.pcm("Ok.")


async def test_a_retry_before_the_first_audio_replays_the_pieces() -> None:
    async with CartesiaServer(CartesiaScript(chunk_gap_s=0.02, faults=[Fault(error_status=500)])) as server:
        tts = adapter(server)
        pieces = Paced(STREAM)
        chunks, _ = await collect_stream(tts, pieces)
        await tts.aclose()
    failed, retried = list(server.contexts)
    assert inputs(server, failed)[0] == ("Hello there. ", True, False)
    assert [t for t, _, _ in inputs(server, retried) if t] == STREAM_SENTENCES
    assert inputs(server, retried)[-1] == ("", False, False)
    assert b"".join(c.pcm for c in chunks) == b"".join(server.pcm(s) for s in STREAM_SENTENCES)
    assert "".join(c.text for c in chunks) == "".join(STREAM)
    assert [p for p, _ in pieces.handed] == STREAM and pieces.ended  # the source was read once
    assert not server.cancels  # the failed context was over (its error said done)


class Fallback(TextToSpeech):
    """A second engine: a fixed tone per piece, and the texts it was given."""

    name = "fallback"

    def __init__(self) -> None:
        super().__init__(FAST)
        self.texts: list[str] = []

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        self.texts.append(text)
        yield AudioChunk(b"\x01\x00" * 80, 8000, "")
        yield AudioChunk(b"", 8000, text)


async def test_failover_speaks_the_rest_of_a_stream_on_the_next_engine() -> None:
    # Two chunks a sentence: the error replaces the second sentence's second chunk, after the first
    # sentence's text was handed over (its audio is all out once the second sentence's begins).
    script = CartesiaScript(chunks_per_input=2, chunk_gap_s=0.02, faults=[Fault(error_status=503, error_at=3)])
    async with CartesiaServer(script) as server:
        cartesia, fallback, switches = adapter(server), Fallback(), []
        chain = FailoverTTS([("cartesia", cartesia), ("fallback", fallback)], report=switches.append)
        assert chain.streaming_text_input
        pieces = Paced(["Hello there. ", "How are you? ", "Bye now."])
        chunks = [chunk async for chunk in chain.synthesize_stream(pieces.stream())]
        await cartesia.aclose()
    switch: Failover = switches[0]
    assert (switch.from_provider, switch.to_provider, switch.kind) == ("cartesia", "fallback", "server")
    # The next engine speaks exactly what Cartesia had not claimed, pieces still to come included.
    assert fallback.texts == ["How are you? ", "Bye now."]
    assert "".join(c.text for c in chunks) == "Hello there. How are you? Bye now."
    assert [p for p, _ in pieces.handed] == ["Hello there. ", "How are you? ", "Bye now."] and pieces.ended
    # Cartesia's audio (the first sentence, then the second's first chunk), then the fallback's.
    switched = next(i for i, c in enumerate(chunks) if c.pcm == b"\x01\x00" * 80)
    first, second = server.pcm("Hello there. "), server.pcm("How are you? ")
    assert b"".join(c.pcm for c in chunks[:switched]) == first + second[:len(second) // 2]
    assert [c.text for c in chunks[switched:] if c.text] == ["How are you? ", "Bye now."]
    assert len(server.contexts) == 1


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
