"""ElevenLabsTTS: aiohttp's WebSocket client against a local server speaking ElevenLabs'
multi-context stream-input protocol (tests/peers/elevenlabs_server.py). The server's audio for a
text is deterministic, so every sample the adapter hands over is checked."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from contextlib import aclosing

import numpy as np
import pytest

from runtime.pipeline.audio import ulaw_to_pcm16
from runtime.providers import registry
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy
from runtime.providers.options import ElevenLabsOptions, ElevenLabsSettings
from runtime.providers.registry import BuildContext, MissingCredential, ProviderCredential
from runtime.providers.tts import elevenlabs_wire as wire
from runtime.providers.tts.elevenlabs import ElevenLabsTTS, build
from tests.peers.elevenlabs_server import ElevenLabsScript, ElevenLabsServer, Fault, Refusal

KEY = "el-test-key"
FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
TEXT = "Hello there, how can I help you today?"


def engine(server: ElevenLabsServer, key: str = KEY, policy: RetryPolicy = FAST, **options: object) -> ElevenLabsTTS:
    return ElevenLabsTTS(key, url=server.url, policy=policy, **options)  # type: ignore[arg-type]


async def collect(tts: ElevenLabsTTS, text: str = TEXT) -> tuple[list[AudioChunk], list[float]]:
    chunks, times, started = [], [], time.monotonic()
    async for chunk in tts.synthesize(text):
        chunks.append(chunk)
        times.append(time.monotonic() - started)
    return chunks, times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


# Streaming and the messages sent


@pytest.mark.parametrize("snake_case", [False, True])
async def test_streams_audio_before_the_piece_is_made(snake_case: bool) -> None:
    script = ElevenLabsScript(chunks=3, chunk_gap_s=0.2, snake_case=snake_case)
    async with ElevenLabsServer(script) as server:
        tts = engine(server, transport_rate=16_000)
        chunks, times = await collect(tts)
        await tts.aclose()
    assert times[0] < 0.15 and times[-1] >= 0.38  # audio came while the rest was still being made
    assert len([c for c in chunks if c.pcm]) == 3 and {c.rate for c in chunks} == {16_000}
    assert b"".join(c.pcm for c in chunks) == server.expected(TEXT, "pcm_16000")
    # The text rides on a zero-length chunk after all the audio; the texts concatenate to the input.
    assert [(c.text, c.pcm) for c in chunks if c.text] == [(TEXT, b"")] and "".join(c.text for c in chunks) == TEXT
    assert server.connections[0].query["output_format"] == "pcm_16000"


async def test_telephony_asks_for_ulaw_and_decodes_it() -> None:
    async with ElevenLabsServer(ElevenLabsScript(chunks=4)) as server:
        tts = engine(server, transport_rate=8000)
        chunks, _ = await collect(tts, "Thanks for calling.")
        await tts.aclose()
    assert tts.rate == 8000 and {c.rate for c in chunks} == {8000}
    sent = server.speech("Thanks for calling.", "ulaw_8000")
    assert b"".join(c.pcm for c in chunks) == ulaw_to_pcm16(sent)
    assert sum(len(c.pcm) for c in chunks) == 2 * len(sent)  # one mu-law byte -> one PCM16 sample
    assert server.connections[0].query["output_format"] == "ulaw_8000"


@pytest.mark.parametrize(("transport_rate", "output_format", "rate"),
                         [(24_000, "pcm_24000", 24_000), (48_000, "pcm_24000", 24_000)])
async def test_wideband_transports_get_pcm(transport_rate: int, output_format: str, rate: int) -> None:
    async with ElevenLabsServer(ElevenLabsScript()) as server:
        tts = engine(server, transport_rate=transport_rate)
        chunks, _ = await collect(tts, "Fine.")
        await tts.aclose()
    assert server.connections[0].query["output_format"] == output_format and {c.rate for c in chunks} == {rate}
    assert b"".join(c.pcm for c in chunks) == server.expected("Fine.", output_format)


async def test_pieces_share_one_socket_and_send_the_documented_messages() -> None:
    pieces = ["Hello there. ", "I can book a table for two. ", "Shall I?"]
    async with ElevenLabsServer(ElevenLabsScript()) as server:
        tts = engine(server, voice="voice-abc", model="eleven_flash_v2_5", speed=1.1, stability=0.4,
                     similarity_boost=0.8, language="en-GB")
        spoken = []
        for piece in pieces:
            chunks, _ = await collect(tts, piece)
            assert "".join(c.text for c in chunks) == piece
            assert b"".join(c.pcm for c in chunks) == server.expected(piece)
            spoken.append(chunks)
        await tts.aclose()
    assert len(server.connections) == 1 and tts.connects == 1  # one handshake for every piece
    conn = server.connections[0]
    assert conn.path == "/v1/text-to-speech/voice-abc/multi-stream-input"
    assert conn.query == {"model_id": "eleven_flash_v2_5", "output_format": "ulaw_8000", "language_code": "en",
                          "inactivity_timeout": "180", "auto_mode": "true"}
    assert conn.headers["xi-api-key"] == KEY and KEY not in str(conn.query)
    contexts = conn.contexts
    assert len(contexts) == 3 and len(set(contexts)) == 3
    settings = {"stability": 0.4, "similarity_boost": 0.8, "speed": 1.1}
    expected = []
    for context, piece in zip(contexts, pieces, strict=True):
        expected += [{"text": " ", "context_id": context, "voice_settings": settings},
                     {"text": piece.strip() + " ", "context_id": context, "flush": True},
                     {"context_id": context, "close_context": True}]
    assert conn.messages == [*expected, {"close_socket": True}]  # aclose says goodbye
    assert [c.texts for c in server.context_list()] == [[p.strip()] for p in pieces]
    assert all(c.final_sent and not c.cut for c in server.context_list())


async def test_voice_settings_are_left_out_when_the_version_sets_none() -> None:
    async with ElevenLabsServer(ElevenLabsScript()) as server:
        tts = engine(server, model="eleven_multilingual_v2", language="en")
        await collect(tts, "Hi.")
        await tts.aclose()
    first = server.connections[0].messages[0]
    assert first == {"text": " ", "context_id": server.connections[0].contexts[0]}
    assert "language_code" not in server.connections[0].query  # that model takes none


async def test_text_without_words_is_passed_on_without_a_request() -> None:
    async with ElevenLabsServer(ElevenLabsScript()) as server:
        tts = engine(server)
        chunks, _ = await collect(tts, " ... ")
        await tts.aclose()
    assert [(c.pcm, c.text) for c in chunks] == [(b"", " ... ")] and not server.connections


# Barge-in


async def test_closing_the_generator_early_stops_the_generation_and_the_next_piece_works() -> None:
    async with ElevenLabsServer(ElevenLabsScript(chunks=8, chunk_gap_s=0.05)) as server:
        tts = engine(server)
        async with aclosing(tts.synthesize(TEXT)) as chunks:
            async for chunk in chunks:
                assert chunk.pcm
                break  # the caller barged in
        cut = server.context_list()[0]
        await until(lambda: server.connections[0].closed_at is not None)
        sent_at_cut = cut.chunks_sent
        await asyncio.sleep(0.2)
        assert cut.chunks_sent == sent_at_cut < cut.chunks_planned  # nothing more was generated
        assert cut.cut and not cut.final_sent and server.connections[0].client_closed
        assert server.connections[0].client_close_code == 1000 and tts.cancels == 1
        # The next socket was opened during the barge-in; the next piece uses it.
        await until(lambda: len(server.connections) == 2)
        chunks, _ = await collect(tts, "Sure, go ahead.")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.expected("Sure, go ahead.")
    assert "".join(c.text for c in chunks) == "Sure, go ahead."
    assert len(server.connections) == 2 and server.connections[1].contexts == [server.context_list()[1].id]


async def test_cancelling_the_speaking_task_closes_the_socket_too() -> None:
    async with ElevenLabsServer(ElevenLabsScript(chunks=8, chunk_gap_s=0.05)) as server:
        tts = engine(server)
        got: list[AudioChunk] = []

        async def speak() -> None:
            async with aclosing(tts.synthesize(TEXT)) as chunks:
                async for chunk in chunks:
                    got.append(chunk)

        task = asyncio.create_task(speak())
        await until(lambda: len(got) >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.connections[0].closed_at is not None)
        assert server.context_list()[0].cut and server.connections[0].client_closed
        assert not any(c.text for c in got)  # the cut piece is not claimed as spoken
        chunks, _ = await collect(tts, "Yes?")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.expected("Yes?")


async def test_an_idle_socket_closed_by_the_server_is_replaced_without_a_retry() -> None:
    no_retries = RetryPolicy(retries=0, first_byte_timeout_s=0.5)
    async with ElevenLabsServer(ElevenLabsScript(idle_close_s=0.15)) as server:
        tts = engine(server, policy=no_retries)
        await collect(tts, "One.")
        await until(lambda: server.connections[0].server_closed == "idle")
        chunks, _ = await collect(tts, "Two.")
        await tts.aclose()
    assert b"".join(c.pcm for c in chunks) == server.expected("Two.")
    assert len(server.connections) == 2 and tts.connects == 2


# Failures


async def test_refused_key_is_auth_and_never_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "el-wrong-key-0123456789"
    async with ElevenLabsServer(ElevenLabsScript(api_key="right")) as server:
        tts = engine(server, key=secret)
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert len(server.connections) == 1 and server.connections[0].refused == 401
    assert secret not in str(error) and secret not in repr(tts) and secret not in caplog.text
    assert error.__context__ is None and error.__cause__ is None


async def test_a_key_refused_inside_the_socket_is_auth_too() -> None:
    async with ElevenLabsServer(ElevenLabsScript(api_key="right", key_check="message")) as server:
        tts = engine(server, key="el-wrong-key-0123456789")
        with pytest.raises(ProviderError) as caught:
            await collect(tts)
        await tts.aclose()
    assert caught.value.kind == "auth" and "invalid_api_key" in str(caught.value)
    assert len(server.connections) == 1 and server.connections[0].server_closed == "invalid_api_key"


async def test_quota_exceeded_mid_piece_raises_auth_after_the_audio_sent() -> None:
    async with ElevenLabsServer(ElevenLabsScript(chunks=3, faults=[Fault(error="quota_exceeded")])) as server:
        tts = engine(server)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(TEXT):
                got.append(chunk)
        await tts.aclose()
    assert caught.value.kind == "auth" and "quota_exceeded" in str(caught.value)
    assert len(got) == 1 and got[0].pcm and "".join(c.text for c in got) == ""
    assert len(server.context_list()) == 1  # after audio, no retry: the fallback finishes the turn


async def test_rate_limit_honours_retry_after_then_gives_up() -> None:
    policy = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.1)
    limited = Refusal(429, retry_after="0.3", detail="too_many_concurrent_requests")
    async with ElevenLabsServer(ElevenLabsScript(refusals=[limited, limited])) as server:
        tts = engine(server, policy=policy)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
        gaps = np.diff([c.opened_at for c in server.connections])
        assert len(server.connections) == 3 and all(gap >= 0.28 for gap in gaps), gaps
        assert b"".join(c.pcm for c in chunks) == server.expected("Hi.")
    async with ElevenLabsServer(ElevenLabsScript(refusals=[Refusal(429, retry_after="0.1")] * 3)) as server:
        tts = engine(server, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert (caught.value.kind, caught.value.retry_after, len(server.connections)) == ("rate_limit", 0.1, 3)


async def test_server_errors_are_retried_then_raised() -> None:
    async with ElevenLabsServer(ElevenLabsScript(refusals=[Refusal(500)])) as server:
        tts = engine(server)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.connections) == 2 and b"".join(c.pcm for c in chunks) == server.expected("Hi.")
    async with ElevenLabsServer(ElevenLabsScript(refusals=[Refusal(503), Refusal(502), Refusal(500)])) as server:
        tts = engine(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert (caught.value.kind, caught.value.status, len(server.connections)) == ("server", 500, 3)


async def test_a_close_before_any_audio_is_retried_on_a_new_socket() -> None:
    faults = [Fault(close_code=1011, at_chunk=0)]
    async with ElevenLabsServer(ElevenLabsScript(faults=faults)) as server:
        tts = engine(server)
        chunks, _ = await collect(tts, "Hi.")
        await tts.aclose()
    assert len(server.connections) == 2 and b"".join(c.pcm for c in chunks) == server.expected("Hi.")


async def test_slow_first_byte_times_out_per_policy() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    async with ElevenLabsServer(ElevenLabsScript(faults=[Fault(first_byte_delay_s=1.0)])) as server:
        tts = engine(server, policy=policy)
        chunks, times = await collect(tts, "Hi.")
        await tts.aclose()
        assert len(server.context_list()) == 2 and 0.3 <= times[0] < 0.9
        assert b"".join(c.pcm for c in chunks) == server.expected("Hi.")
        assert server.context_list()[0].cut and server.context_list()[0].chunks_sent == 0
    slow = Fault(first_byte_delay_s=1.0)
    async with ElevenLabsServer(ElevenLabsScript(faults=[slow, slow])) as server:
        tts = engine(server, policy=policy)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
        assert caught.value.kind == "timeout" and len(server.context_list()) == 2


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault(malformed="json"), "protocol"), (Fault(malformed="base64"), "protocol"),
    (Fault(malformed="not_object"), "protocol"), (Fault(malformed="audio_type"), "protocol"),
    (Fault(malformed="no_fields"), "protocol"), (Fault(malformed="binary"), "protocol"),
    (Fault(drop_after_chunks=1), "unavailable"), (Fault(close_code=1011), "server"),
    (Fault(error="system_busy"), "rate_limit"),
])
async def test_broken_streams_raise_after_audio_without_a_retry(fault: Fault, kind: str) -> None:
    async with ElevenLabsServer(ElevenLabsScript(chunks=3, faults=[fault])) as server:
        tts = engine(server)
        got: list[AudioChunk] = []
        with pytest.raises(ProviderError) as caught:
            async for chunk in tts.synthesize(TEXT):
                got.append(chunk)
        # The adapter is still usable: the next piece goes on a new socket.
        chunks, _ = await collect(tts, "Still here.")
        await tts.aclose()
    assert caught.value.kind == kind
    assert len(got) == 1 and got[0].pcm == server.expected(TEXT)[:len(got[0].pcm)]
    assert "".join(c.text for c in got) == ""  # the broken piece is not claimed as spoken
    assert len(server.context_list()) == 2 and b"".join(c.pcm for c in chunks) == server.expected("Still here.")


async def test_a_malformed_first_message_is_not_retried() -> None:
    async with ElevenLabsServer(ElevenLabsScript(faults=[Fault(malformed="base64", at_chunk=0)])) as server:
        tts = engine(server)
        with pytest.raises(ProviderError) as caught:
            await collect(tts, "Hi.")
        await tts.aclose()
    assert caught.value.kind == "protocol" and len(server.context_list()) == 1


async def test_connection_refused_is_unavailable() -> None:
    policy = RetryPolicy(retries=1, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.02)
    tts = ElevenLabsTTS(KEY, url=f"ws://127.0.0.1:{free_port()}", policy=policy)
    with pytest.raises(ProviderError) as caught:
        await collect(tts, "Hi.")
    await tts.aclose()
    assert caught.value.kind == "unavailable"


# Doctor


async def test_check_lists_the_models_with_the_key() -> None:
    async with ElevenLabsServer(ElevenLabsScript()) as server:
        good = ElevenLabsTTS(KEY, url=server.http_url + "/v1/", policy=FAST)
        await good.check()
        bad = engine(server, key="el-wrong-key-0123456789")
        with pytest.raises(ProviderError) as refused:
            await bad.check()
        unknown = engine(server, model="eleven_nonexistent")
        with pytest.raises(ProviderError) as missing:
            await unknown.check()
        for tts in (good, bad, unknown):
            await tts.aclose()
    assert [p.path for p in server.probes] == ["/v1/models"] * 3 and server.probes[0].headers["xi-api-key"] == KEY
    assert (refused.value.kind, refused.value.status) == ("auth", 401) and "invalid_api_key" in str(refused.value)
    assert "el-wrong-key-0123456789" not in str(refused.value)
    assert missing.value.kind == "bad_request" and not server.connections
    down = ElevenLabsTTS(KEY, url=f"wss://127.0.0.1:{free_port()}", policy=FAST)
    with pytest.raises(ProviderError) as unreachable:
        await down.check()
    await down.aclose()
    assert unreachable.value.kind == "unavailable"


# Building from the registry


def context(**overrides: object) -> BuildContext:
    values: dict[str, object] = {
        "entry": registry.get("tts", "elevenlabs"), "settings": ElevenLabsSettings(url="wss://settings.example"),
        "options": ElevenLabsOptions(), "model": None, "base_url": None,
        "credential": ProviderCredential({}, KEY), "policy": FAST, "transport_rate": 8000, "language": "en",
    }
    values.update(overrides)
    return BuildContext(**values)  # type: ignore[arg-type]


async def test_build_from_a_build_context_speaks_to_the_server() -> None:
    async with ElevenLabsServer(ElevenLabsScript()) as server:
        options = ElevenLabsOptions(voice="voice-from-version", speed=0.9, stability=0.3, similarity_boost=0.9)
        tts = build(context(options=options, settings=ElevenLabsSettings(url=server.url)))
        chunks, _ = await collect(tts, "Built.")
        await tts.aclose()
    assert isinstance(tts, ElevenLabsTTS) and tts.policy is FAST
    assert b"".join(c.pcm for c in chunks) == server.expected("Built.")
    conn = server.connections[0]
    assert conn.voice == "voice-from-version" and conn.query["model_id"] == "eleven_flash_v2_5"
    assert conn.messages[0]["voice_settings"] == {"stability": 0.3, "similarity_boost": 0.9, "speed": 0.9}


def test_build_picks_the_server_url_model_and_voice_by_precedence() -> None:
    settings = ElevenLabsSettings(url="wss://settings.example", voice="settings-voice", model="eleven_turbo_v2_5")
    plain = build(context(settings=settings))
    assert (plain.endpoints.ws, plain.voice, plain.model) == ("wss://settings.example", "settings-voice",
                                                              "eleven_turbo_v2_5")
    credential = ProviderCredential({"base_url": "https://eu.example/v1"}, KEY)
    tenant = build(context(settings=settings, credential=credential))
    assert (tenant.endpoints.ws, tenant.endpoints.http) == ("wss://eu.example", "https://eu.example")
    version = build(context(settings=settings, credential=credential, base_url="ws://version.example:9000",
                            model="eleven_multilingual_v2", options=ElevenLabsOptions(voice="v")))
    assert (version.endpoints.ws, version.model, version.voice) == ("ws://version.example:9000",
                                                                    "eleven_multilingual_v2", "v")
    assert build(context(transport_rate=16_000)).format.name == "pcm_16000"
    assert build(context(language="de-DE")).language_code == "de"


def test_a_missing_secret_is_a_missing_credential() -> None:
    with pytest.raises(MissingCredential):
        build(context(credential=None))
    with pytest.raises(MissingCredential):
        build(context(credential=ProviderCredential({"base_url": "wss://x.example"}, None)))


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        ElevenLabsTTS(KEY, speed=1.5)
    with pytest.raises(ValueError):
        ElevenLabsTTS(KEY, stability=-0.1)
    with pytest.raises(ValueError):
        ElevenLabsTTS(KEY, url="ftp://api.elevenlabs.io")
    with pytest.raises(ValueError):
        ElevenLabsTTS("")
    tts = ElevenLabsTTS("secret-key-123")
    assert (tts.name, tts.rate, tts.endpoints.ws, tts.endpoints.http) == (
        "elevenlabs", 8000, "wss://api.elevenlabs.io", "https://api.elevenlabs.io")
    assert "secret-key-123" not in repr(tts)


def test_server_messages_are_read_in_both_casings() -> None:
    assert wire.parse('{"audio": "AAE=", "isFinal": false, "contextId": "c"}') == wire.Frame("c", b"\x00\x01", False)
    assert wire.parse('{"is_final": true, "context_id": "c"}') == wire.Frame("c", b"", True)
    assert wire.parse('{"audio": null, "isFinal": true, "contextId": "c"}') == wire.Frame("c", b"", True)
    assert isinstance(wire.parse('{"type": "flush_done", "context_id": "c"}'), wire.Other)
    error = wire.parse('{"message": "Maximum simultaneous contexts", "error": "max_active_conversations", "code": 1008}')
    assert isinstance(error, wire.ServerError) and error.code == 1008
    assert wire.error_kind(error.error) == "rate_limit" and wire.error_kind("voice_not_found") == "bad_request"
    assert wire.close_kind(1008, "Invalid API key") == "auth" and wire.close_kind(1006, "") == "unavailable"
    with pytest.raises(wire.Malformed):
        wire.parse('{"isFinal": "yes"}')
