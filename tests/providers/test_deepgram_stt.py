"""DeepgramSTT: the real deepgram-sdk client against a local server speaking the listen protocol
(peers/deepgram_server.py). Speech is a loud tone, silence is zeros; the server "hears" each
run of tone as the next scripted utterance."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import numpy as np
import pytest

from peers.deepgram_server import (
    DEFAULT_GARBAGE,
    DOCUMENTED_EXAMPLES,
    DeepgramScript,
    DeepgramServer,
    Reject,
)
from runtime.audio import pcm16_to_ulaw
from runtime.providers.base import ProviderError, RetryPolicy, Transcript
from runtime.providers.stt.deepgram import DeepgramSTT

# deepgram-sdk 7 connects through websockets.legacy, which warns on import: the SDK's choice, not ours.
pytestmark = [pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:websockets.exceptions.InvalidStatusCode is deprecated")]

KEY = "test-deepgram-key"
FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)


def tone(ms: int, rate: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (6000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def silence(ms: int, rate: int = 8000) -> bytes:
    return bytes(2 * (rate * ms // 1000))


class Reader:
    """Collects a stream's transcripts in a task; ``final()`` waits for the next final."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.stream, self.items, self.error = stream, [], None
        self._finals: asyncio.Queue[Transcript] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for item in self.stream:
                self.items.append(item)
                if item.final:
                    self._finals.put_nowait(item)
        except ProviderError as exc:
            self.error = exc

    async def final(self, timeout: float = 2.0) -> Transcript:
        return await asyncio.wait_for(self._finals.get(), timeout)

    def finals(self) -> list[Transcript]:
        return [t for t in self.items if t.final]


async def feed(stream, pcm: bytes, rate: int = 8000) -> None:  # noqa: ANN001
    """20 ms frames, as the pipeline pushes them (yielding so server messages are read)."""
    frame = rate * 2 // 50
    for i in range(0, len(pcm), frame):
        await stream.push(pcm[i:i + frame])
        await asyncio.sleep(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_streams_interims_and_finals_on_one_timeline() -> None:
    script = DeepgramScript(utterances=["Hello there.", "I need a table for two."])
    async with DeepgramServer(script) as server:
        stt = DeepgramSTT(KEY, url=server.url, policy=FAST)
        assert (stt.name, stt.rate, stt.interim_results) == ("deepgram", 8000, True)
        stream = await stt.open()
        reader = Reader(stream)
        first_audio = tone(600) + silence(400)
        await feed(stream, first_audio)
        first = await reader.final()
        second_audio = tone(800) + silence(200)
        await feed(stream, second_audio)
        await stream.flush()
        second = await reader.final()
        await stream.close()
        await asyncio.wait_for(reader.task, 2)

    conn, = server.connections
    assert conn.headers["Authorization"] == f"Token {KEY}"
    assert conn.query == {"model": "nova-3", "encoding": "mulaw", "sample_rate": "8000", "channels": "1",
                          "language": "en", "interim_results": "true", "endpointing": "300",
                          "utterance_end_ms": "1000", "vad_events": "true", "smart_format": "true"}
    assert bytes(conn.audio) == pcm16_to_ulaw(first_audio + second_audio)  # mu-law, every byte, in order
    assert conn.control_types() == ["Finalize", "CloseStream"] and conn.ended == "closed"

    # Endpointing final: Deepgram's own speech_final, its window 0-900 ms (600 ms speech + 300 ms).
    assert (first.text, first.speech_final, first.start_ms, first.end_ms) == ("Hello there.", True, 0, 900)
    assert [(w.text, w.start_ms, w.end_ms) for w in first.words] == [("Hello", 0, 300), ("there.", 300, 600)]
    interims = [t for t in reader.items[:reader.items.index(first)] if not t.final]
    assert interims and all("Hello there.".startswith(t.text) for t in interims)
    # The flush's final: one transcript, its words where the second tone was (1000-1800 ms).
    assert second.text == "I need a table for two." and second.start_ms == 900
    assert second.words[0].start_ms == 1000 and second.words[-1].end_ms == 1800
    assert [t.text for t in reader.finals()] == ["Hello there.", "I need a table for two."]
    assert reader.error is None


async def test_linear16_sends_pcm_as_pushed() -> None:
    async with DeepgramServer(DeepgramScript(utterances=["Yes please."])) as server:
        stt = DeepgramSTT(KEY, url=server.url, encoding="linear16", sample_rate=16000, model="nova-2",
                          endpointing_ms=200, utterance_end_ms=1500, language="en-GB", policy=FAST)
        stream = await stt.open()
        reader = Reader(stream)
        audio = tone(500, 16000) + silence(300, 16000)
        await feed(stream, audio, 16000)
        final = await reader.final()
        await stream.close()
    conn, = server.connections
    assert bytes(conn.audio) == audio
    assert (conn.query["encoding"], conn.query["sample_rate"], conn.query["model"], conn.query["endpointing"],
            conn.query["utterance_end_ms"], conn.query["language"]) == ("linear16", "16000", "nova-2", "200",
                                                                        "1500", "en-GB")
    assert (final.text, final.start_ms, final.end_ms) == ("Yes please.", 0, 700)


async def test_each_flush_gets_exactly_one_final() -> None:
    script = DeepgramScript(utterances=["One.", "Two."], answer_idle_finalize=False)
    async with DeepgramServer(script) as server:
        stt = DeepgramSTT(KEY, url=server.url, policy=FAST)
        stream = await stt.open()
        reader = Reader(stream)
        # Nothing pushed: an empty final at once, no Finalize sent.
        started = time.monotonic()
        await stream.flush()
        empty = await reader.final(0.2)
        assert (empty.text, empty.final) == ("", True) and time.monotonic() - started < 0.1
        # Speech, its endpointing final, then trailing silence: the Finalize has nothing to answer
        # (this server, like Deepgram may, says nothing): an empty final after the quiet wait.
        await feed(stream, tone(300) + silence(400))
        assert (await reader.final()).text == "One."
        await feed(stream, silence(200))
        started = time.monotonic()
        await stream.flush()
        quiet = await reader.final(1.0)
        waited = time.monotonic() - started
        assert quiet.text == "" and stt.quiet_finalize_s - 0.05 <= waited < stt.quiet_finalize_s + 0.3
        # Speech flushed before endpointing: the Finalize answer is the final.
        await feed(stream, tone(300) + silence(100))
        await stream.flush()
        assert (await reader.final()).text == "Two."
        await stream.close()
        await asyncio.wait_for(reader.task, 2)
    assert server.connections[0].control_types() == ["Finalize", "Finalize", "CloseStream"]
    assert [t.text for t in reader.finals()] == ["", "One.", "", "Two."]


async def test_keepalive_only_while_no_audio_is_pushed() -> None:
    async with DeepgramServer(DeepgramScript()) as server:
        stt = DeepgramSTT(KEY, url=server.url, policy=FAST)
        stt.keepalive_s = 0.15
        stream = await stt.open()
        await feed(stream, silence(100))
        await asyncio.sleep(0.55)  # silent caller: the pipeline pushes nothing
        conn = server.connections[0]
        idle = conn.control_types().count("KeepAlive")
        for _ in range(25):  # 0.5 s of audio in real time: no KeepAlive needed
            await stream.push(silence(20))
            await asyncio.sleep(0.02)
        during = conn.control_types().count("KeepAlive") - idle
        await stream.close()
    assert idle >= 2, conn.control_types()
    assert during == 0
    assert conn.controls[0] == {"type": "KeepAlive"}


async def test_dropped_socket_reconnects_replays_and_keeps_the_timeline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "voicectl.providers.deepgram")
    first_audio = tone(600) + silence(400)  # final "Hello there." ends at 900 ms = 7200 mu-law bytes
    second_audio = tone(800) + silence(400)
    cut = len(first_audio) // 2 + 3200  # mid second utterance (400 ms into it)
    script = DeepgramScript(utterances=["Hello there.", "I need a table for two."], drops=[cut])
    async with DeepgramServer(script) as server:
        stt = DeepgramSTT(KEY, url=server.url, policy=FAST)
        stream = await stt.open()
        reader = Reader(stream)
        await feed(stream, first_audio)
        assert (await reader.final()).text == "Hello there."
        await feed(stream, second_audio)
        second = await reader.final()
        await stream.close()
        await asyncio.wait_for(reader.task, 2)

    dropped, resumed = server.connections
    assert dropped.ended == "dropped" and resumed.ended == "closed" and stream.reconnects == 1
    assert resumed.opened_at - server.attempt_times[0] < 5  # sanity
    assert resumed.query == dropped.query and resumed.headers["Authorization"] == f"Token {KEY}"
    # The new socket got the audio since the last final (from 900 ms) and everything after it.
    sent = pcm16_to_ulaw(first_audio + second_audio)
    assert bytes(resumed.audio) == sent[7200:]
    assert bytes(dropped.audio) == sent[:len(dropped.audio)]
    # Times on the new socket start at 0 there, 900 ms on the stream: the words sit where the tone was.
    assert second.text == "I need a table for two." and second.speech_final
    assert second.start_ms == 900 and second.words[0].start_ms == 1000 and second.words[-1].end_ms == 1800
    assert reader.error is None
    reconnect = [r for r in caplog.records if "reconnected" in r.getMessage()]
    assert reconnect and reconnect[0].reconnect_ms < 1000


async def test_slow_handshake_times_out_and_is_retried() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    async with DeepgramServer(DeepgramScript(handshake_delays=[1.0])) as server:
        started = time.monotonic()
        stream = await DeepgramSTT(KEY, url=server.url, policy=policy).open()
        elapsed = time.monotonic() - started
        await stream.close()
        assert server.attempts == 2 and 0.3 <= elapsed < 0.9
    async with DeepgramServer(DeepgramScript(handshake_delays=[1.0, 1.0])) as server:
        with pytest.raises(ProviderError) as caught:
            await DeepgramSTT(KEY, url=server.url, policy=policy).open()
        assert caught.value.kind == "timeout" and server.attempts == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_key_is_auth_and_never_retried(status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-wrong-deepgram-key-0123456789"
    script = DeepgramScript(rejects=[Reject(status)] * 3 if status == 403 else [])
    # Retries allowed, but a first-byte timeout no loaded box reaches: a slow refusal would
    # otherwise be retried as a timeout (CI once saw 2 attempts), not as the refusal it is.
    patient = RetryPolicy(retries=2, first_byte_timeout_s=10, backoff_base_s=0.01, backoff_cap_s=0.1)
    async with DeepgramServer(script) as server:
        with pytest.raises(ProviderError) as caught:
            await DeepgramSTT(secret, url=server.url, policy=patient).open()
        assert server.attempts == 1
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", status, False)
    chain = [error, error.__cause__, error.__context__]
    assert all(secret not in repr(e) and secret not in str(e) for e in chain if e is not None)
    assert error.__context__ is None  # the SDK's ApiError (it holds the request headers) is not attached
    assert secret not in caplog.text


async def test_rate_limit_honours_retry_after_then_gives_up() -> None:
    policy = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
    async with DeepgramServer(DeepgramScript(rejects=[Reject(429, retry_after="0.3")] * 2)) as server:
        stream = await DeepgramSTT(KEY, url=server.url, policy=policy).open()
        await stream.close()
        gaps = np.diff(server.attempt_times)
        assert server.attempts == 3 and all(gap >= 0.28 for gap in gaps), gaps
    async with DeepgramServer(DeepgramScript(rejects=[Reject(429, retry_after="0.2")] * 3)) as server:
        with pytest.raises(ProviderError) as caught:
            await DeepgramSTT(KEY, url=server.url, policy=policy).open()
        assert (caught.value.kind, caught.value.retry_after, server.attempts) == ("rate_limit", 0.2, 3)


async def test_server_errors_are_retried_then_raised() -> None:
    async with DeepgramServer(DeepgramScript(rejects=[Reject(500)])) as server:
        stream = await DeepgramSTT(KEY, url=server.url, policy=FAST).open()
        await stream.close()
        assert server.attempts == 2
    async with DeepgramServer(DeepgramScript(rejects=[Reject(503), Reject(502), Reject(500)])) as server:
        with pytest.raises(ProviderError) as caught:
            await DeepgramSTT(KEY, url=server.url, policy=FAST).open()
        assert (caught.value.kind, caught.value.status, server.attempts) == ("server", 500, 3)


async def test_connection_refused_is_unavailable() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.02)
    with pytest.raises(ProviderError) as caught:
        await DeepgramSTT(KEY, url=f"ws://127.0.0.1:{free_port()}", policy=policy).open()
    assert caught.value.kind == "unavailable"


async def test_malformed_frames_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    script = DeepgramScript(utterances=["Still here."], garbage=list(DEFAULT_GARBAGE))
    async with DeepgramServer(script) as server:
        stream = await DeepgramSTT(KEY, url=server.url, policy=FAST).open()
        reader = Reader(stream)
        await feed(stream, tone(400) + silence(400))
        final = await reader.final()
        await stream.close()
    assert final.text == "Still here." and reader.error is None
    assert sum("malformed frame skipped" in r.getMessage() for r in caplog.records) == len(DEFAULT_GARBAGE)


async def test_a_server_sending_only_garbage_fails_the_stream_as_protocol() -> None:
    async with DeepgramServer(DeepgramScript(utterances=["x"], garbage_only=True)) as server:
        stream = await DeepgramSTT(KEY, url=server.url, policy=FAST).open()
        reader = Reader(stream)
        with pytest.raises(ProviderError) as pushed:  # once the stream has failed, push says so too
            for _ in range(50):
                await stream.push(tone(20))
                await asyncio.sleep(0.01)
        await asyncio.wait_for(reader.task, 2)
        assert reader.error is not None and reader.error.kind == "protocol"
        assert pushed.value is reader.error
        await stream.close()


async def test_check_connects_and_closes_without_audio() -> None:
    async with DeepgramServer(DeepgramScript()) as server:
        await DeepgramSTT(KEY, url=server.url, policy=FAST).check()
        conn, = server.connections
        assert conn.audio == b"" and conn.control_types() == ["CloseStream"]
        with pytest.raises(ProviderError) as caught:
            await DeepgramSTT("nope", url=server.url, policy=FAST).check()
        assert caught.value.kind == "auth"


async def test_aclose_closes_open_streams() -> None:
    async with DeepgramServer(DeepgramScript()) as server:
        stt = DeepgramSTT(KEY, url=server.url, policy=FAST)
        stream = await stt.open()
        reader = Reader(stream)
        await stt.aclose()
        await asyncio.wait_for(reader.task, 1)
        assert server.connections[0].control_types() == ["CloseStream"]


def test_configuration_errors_and_repr() -> None:
    with pytest.raises(ValueError):
        DeepgramSTT(KEY, encoding="opus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DeepgramSTT(KEY, url="ftp://example.com")
    assert KEY not in repr(DeepgramSTT(KEY))


async def test_peer_messages_keep_the_documented_shape() -> None:
    """The peer's messages carry every field of PROTOCOLS.md's examples (a peer drifting from the
    documented protocol would make the adapter tests meaningless)."""
    async with DeepgramServer(DeepgramScript(utterances=["Hi."])) as server:
        stream = await DeepgramSTT(KEY, url=server.url, policy=FAST).open()
        reader = Reader(stream)
        await feed(stream, tone(300) + silence(1400))
        await reader.final()
        await stream.close()
    sent = {m["type"]: m for m in server.connections[0].sent}

    def covers(actual: object, documented: object) -> bool:
        if isinstance(documented, dict):
            return isinstance(actual, dict) and all(k in actual and covers(actual[k], v) for k, v in documented.items())
        if isinstance(documented, list) and documented and isinstance(documented[0], dict):
            return isinstance(actual, list) and bool(actual) and covers(actual[0], documented[0])
        return type(actual) is type(documented) or {type(actual), type(documented)} <= {int, float}

    for kind, example in DOCUMENTED_EXAMPLES.items():
        assert covers(sent[kind], example), (kind, sent.get(kind))
