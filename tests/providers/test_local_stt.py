"""The offline whisper STT on speech the packaged piper voice makes at test time, sent the
telephony way (22.05 kHz -> 8 kHz -> 16 kHz), plus the model hash check."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from runtime.audio import resample
from runtime.providers.base import ProviderError, RetryPolicy, SttStream, Transcript
from runtime.providers.models import WHISPER_TINY_EN, ModelSpec, verified_dir
from runtime.providers.stt.local import LocalWhisperSTT, collapse_repeats
from runtime.providers.tts.local import EspeakTTS, PiperTTS

BOOKING = "I would like to book a table for two at seven tonight."
HOURS = "Can you tell me when you open on Sunday?"
FRAME = 640  # 20 ms at 16 kHz
RATE_BYTES = 32_000  # one second at 16 kHz


async def _telephony_speech(text: str) -> bytes:
    chunks = [c async for c in PiperTTS().synthesize(text)]
    return resample(resample(b"".join(c.pcm for c in chunks), chunks[0].rate, 8000), 8000, 16000)


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    async def make() -> dict[str, bytes]:
        return {BOOKING: await _telephony_speech(BOOKING), HOURS: await _telephony_speech(HOURS)}

    return asyncio.run(make())


@pytest.fixture
async def stt() -> LocalWhisperSTT:
    engine = LocalWhisperSTT()
    await engine.warm_up()  # the shared model loads once per process
    return engine


async def _push(stream: SttStream, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i:i + FRAME])


async def _next(stream: SttStream) -> Transcript:
    return await asyncio.wait_for(anext(aiter(stream)), 20)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


async def test_transcribes_telephony_speech(stt, speech) -> None:
    stream = await stt.open()
    assert stream.rate == 16000
    await _push(stream, speech[BOOKING])
    await stream.flush()
    transcript = await _next(stream)
    words = _words(transcript.text)
    assert {"book", "table"} <= words
    assert words & {"two", "2"} and words & {"seven", "7"}
    assert transcript.final and transcript.speech_final
    duration_ms = len(speech[BOOKING]) // 32
    assert 0 <= transcript.start_ms < transcript.end_ms <= duration_ms + 100
    assert transcript.start_ms is not None and transcript.end_ms > transcript.start_ms
    assert 0 < transcript.confidence <= 1
    await stream.close()


async def test_silence_yields_an_empty_final_and_offsets_count_from_stream_start(stt, speech) -> None:
    stream = await stt.open()
    await _push(stream, bytes(32000 * 2))  # 2 s of silence
    await stream.flush()
    await _push(stream, speech[HOURS])
    await stream.flush()
    await stream.close()
    silent, spoken = [t async for t in stream]
    # The silent utterance: an empty final (nothing understood, said at once), no text, no segments.
    assert (silent.text, silent.final, silent.segments, silent.start_ms, silent.end_ms) == ("", True, (), 0, 2000)
    assert {"open", "sunday"} <= _words(spoken.text)
    assert spoken.start_ms >= 2000


def _noises() -> dict[str, bytes]:
    """Two seconds each of sounds that are not speech; raw tiny.en hears "Oh"/"Ah" in the breaths."""
    rate, out = 16000, {}
    t = np.arange(2 * rate) / rate
    for seed in (0, 4):
        rng = np.random.default_rng(seed)
        out[f"breath {seed}"] = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, "same") \
            * np.exp(-(((t - 1) / 0.3) ** 2)) * 0.1
    out["white"] = np.random.default_rng(1).standard_normal(t.size) * 0.03
    out["buzz"] = sum(0.05 / k * np.sin(2 * np.pi * 60 * k * t) for k in (1, 3, 5))
    return {name: (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes() for name, x in out.items()}


async def test_noise_is_not_transcribed_but_a_short_answer_is(stt) -> None:
    noises = _noises()
    heard = await asyncio.gather(*(stt.transcribe(pcm) for pcm in noises.values()))
    assert dict(zip(noises, heard, strict=True)) == dict.fromkeys(noises)
    yes = await stt.transcribe(await _telephony_speech("Yes."))
    assert yes is not None and "yes" in _words(yes.text)


async def test_two_streams_decode_concurrently(stt, speech) -> None:
    streams = [await stt.open(), await stt.open()]
    for stream, text in zip(streams, (BOOKING, HOURS), strict=True):
        await _push(stream, speech[text])
    await asyncio.gather(*(s.flush() for s in streams))
    booking, hours = await asyncio.gather(*(_next(s) for s in streams))
    assert "table" in _words(booking.text) and "sunday" in _words(hours.text)
    await asyncio.gather(*(s.close() for s in streams))


async def test_decoding_never_blocks_the_event_loop(stt, speech) -> None:
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - last)
            last = loop.time()

    stream = await stt.open()
    await _push(stream, speech[BOOKING])
    ticking = asyncio.create_task(ticker())
    began = loop.time()
    await stream.flush()
    flush_s = loop.time() - began
    await _next(stream)
    decode_s = loop.time() - began
    assert flush_s < decode_s / 2, (flush_s, decode_s)  # flush hands the decode to the worker pool
    done.set()
    await ticking
    assert max(gaps) < min(0.2, decode_s / 2), (max(gaps), decode_s)
    await stream.close()


def _spec_with_a_bad_file(tmp_path: Path) -> ModelSpec:
    """A model folder whose vocabulary.txt is not the pinned one."""
    name, digest = WHISPER_TINY_EN.files[-1]
    (tmp_path / name).write_bytes(b"not the model")
    return ModelSpec("whisper under test", "local", lambda: tmp_path, ((name, digest),))


def test_model_hash_mismatch_is_a_clear_provider_error(tmp_path) -> None:
    spec = _spec_with_a_bad_file(tmp_path)
    with pytest.raises(ProviderError) as caught:
        verified_dir(spec)
    assert caught.value.kind == "unavailable"
    assert "vocabulary.txt" in str(caught.value) and "does not match its pinned sha256" in str(caught.value)
    assert verified_dir(WHISPER_TINY_EN).is_dir()  # the installed files pass


async def test_stt_with_a_bad_model_fails_to_open(tmp_path) -> None:
    stt = LocalWhisperSTT(RetryPolicy(retries=0, first_byte_timeout_s=10), model=_spec_with_a_bad_file(tmp_path))
    with pytest.raises(ProviderError) as caught:
        await stt.open()
    assert caught.value.kind == "unavailable" and "sha256" in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("No... No... No...", ("No.", True)),
    ("Yes, please. Yes, please. Yes,", ("Yes, please.", True)),
    ("Yes? Yes? Yes? Yes", ("Yes?", True)),
    ("I'd like to book a table for two at seven.", ("I'd like to book a table for two at seven.", False)),
    ("Table for two, two people.", ("Table for two, two people.", False)),
])
def test_a_looping_short_window_decode_is_collapsed(text: str, expected: tuple[str, bool]) -> None:
    assert collapse_repeats(text) == expected


@pytest.mark.parametrize("answer", ["No.", "Yes please.", "Okay, thanks.", "No thanks, goodbye."])
async def test_short_answers_decode_without_looping(stt, answer: str) -> None:
    heard = await stt.transcribe(await _telephony_speech(answer))
    assert heard is not None
    assert not collapse_repeats(heard.text)[1], heard.text  # said once, not over and over
    # The words, but one in three: piper's voice varies from run to run ("No thanks, goodbye." was
    # once heard "No thanks, bye bye.").
    said, got = _words(answer), heard.text.lower().split()
    assert len(said - _words(heard.text)) <= len(said) // 3 and len(got) <= len(said) + 1, heard.text


async def _espeak_telephony(text: str) -> bytes:
    chunks = [c async for c in EspeakTTS().synthesize(text)]
    return resample(resample(b"".join(c.pcm for c in chunks), chunks[0].rate, 8000), 8000, 16000)


async def test_a_two_part_utterance_keeps_both_parts_with_a_confidence_each(stt) -> None:
    # The example, two sentences with a second's pause in one flush: two segments.
    first, second = "No wait, make it six.", "And we need a high chair."
    pcm = await _espeak_telephony(first) + bytes(RATE_BYTES) + await _espeak_telephony(second)
    heard = await stt.transcribe(pcm)
    assert heard is not None
    assert len(heard.segments) == 2, heard
    assert heard.text == " ".join(s.text for s in heard.segments)
    assert {"make", "it"} <= _words(heard.segments[0].text), heard
    assert {"we", "need", "high"} <= _words(heard.segments[1].text), heard
    assert all(0 < s.confidence <= 1 for s in heard.segments)


async def _push_paced(stream: SttStream, pcm: bytes) -> None:
    """Frames as a caller sends them, with the loop free between them (partials get to run)."""
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i:i + FRAME])
        await asyncio.sleep(0.004)


async def _all(stream: SttStream) -> list[Transcript]:
    return [t async for t in stream]


async def test_interim_text_only_when_wanted_and_never_after_its_final(stt, speech) -> None:
    quiet = await stt.open()
    await _push_paced(quiet, speech[BOOKING])
    await quiet.flush()
    await quiet.close()
    assert [t.final for t in await _all(quiet)] == [True]  # nobody listens: no partial decodes

    stream = await stt.open()
    stream.want_interim(True)
    await _push_paced(stream, speech[BOOKING])
    await stream.flush()
    await _push_paced(stream, speech[HOURS][:FRAME * 10])  # 200 ms of the next turn: no partial yet
    await stream.close()
    got = await _all(stream)
    interims, finals = [t for t in got if not t.final], [t for t in got if t.final]
    assert len(finals) == 1 and interims, got
    assert got[-1].final  # every partial came before the final of its utterance
    assert all(not t.speech_final for t in interims)
    assert _words(interims[-1].text) & {"book", "table", "like"}  # the utterance so far, in words


def test_a_looping_decode_is_retried_without_the_hints_on_the_same_encoding(monkeypatch) -> None:
    """The retry of a loop costs a decoder pass, not another encoder pass; only the last resort,
    the 30 s window, encodes again. (Engine and model stand-ins: the retry logic is what is tested.)"""
    from runtime.providers.stt import local

    encodes: list[float] = []
    decodes: list[tuple[int, object]] = []
    looped = local.Decoded("yes please.", -0.2, 0.01, 3.3, True)
    clean = local.Decoded("Yes, please.", -0.4, 0.01, 0.6, False, (local.Piece("Yes, please.", -0.4),))

    def encode(model, audio, context_s):
        encodes.append(context_s)
        return ("encoding", context_s)

    def generate(model, tokenizer, prompt, encoded, seconds, beam_size=1):
        decodes.append((len(prompt), encoded))
        return looped if len(prompt) > 1 or answers["no hints"] is looped else clean

    monkeypatch.setattr(local, "_encode", encode)
    monkeypatch.setattr(local, "_generate", generate)
    engine = local._Engine(WHISPER_TINY_EN, None)
    engine._model = object()
    monkeypatch.setattr(engine, "_prefix", lambda model, language, prompt: [0] * (1 + len(prompt.split())))
    options = local.DecodeOptions(prompt="for two people at seven", beam_size=5)
    pcm = (np.sin(np.arange(16_000) / 5) * 8000).astype("<i2").tobytes()  # 1 s, loud enough to decode

    answers = {"no hints": clean}
    heard = engine.decode(pcm, 0, options)
    assert heard is not None and heard.text == "Yes, please."
    assert encodes == [options.context_s]  # one encoding, two decodes on it
    assert [e for _, e in decodes] == [("encoding", options.context_s)] * 2
    assert decodes[1][0] == 1  # the second without the hints

    encodes.clear()
    decodes.clear()
    answers["no hints"] = looped  # still looping without the hints: the 30 s window, with them
    engine.decode(pcm, 0, options)
    assert encodes == [options.context_s, local.WINDOW_S]
    assert [n for n, _ in decodes] == [6, 1, 6]


def test_a_decode_that_writes_out_the_hints_is_decoded_again_without_them(monkeypatch) -> None:
    """Whisper unsure of a noisy line writes its prompt out; the same encoding is decoded without
    the hints, and that is kept when it is clean speech."""
    from runtime.providers.stt import local

    hints = "six fifteen, nine forty five, ten o'clock, Trattoria Demo"
    copied = local.Decoded("At nine, nine forty five, ten o'clock, Trattoria Demo.", -0.5, 0.05, 1.1, False,
                           (local.Piece("At nine, nine forty five, ten o'clock, Trattoria Demo.", -0.5),))
    heard = local.Decoded("At nine fifteen.", -0.6, 0.05, 0.9, False, (local.Piece("At nine fifteen.", -0.6),))
    encodes: list[float] = []
    monkeypatch.setattr(local, "_encode", lambda model, audio, context_s: encodes.append(context_s) or "encoding")
    monkeypatch.setattr(local, "_generate",
                        lambda model, tokenizer, prompt, encoded, seconds, beam_size=1: copied if prompt else heard)
    engine = local._Engine(WHISPER_TINY_EN, None)
    engine._model = object()
    monkeypatch.setattr(engine, "_prefix", lambda model, language, prompt: [1] if prompt else [])
    pcm = (np.sin(np.arange(16_000) / 5) * 8000).astype("<i2").tobytes()

    transcript = engine.decode(pcm, 0, local.DecodeOptions(prompt=hints))
    assert transcript is not None and transcript.text == "At nine fifteen."
    assert encodes == [local.DecodeOptions().context_s]  # one encoding for both decodes
