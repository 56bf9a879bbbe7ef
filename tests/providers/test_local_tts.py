"""The offline TTS engines: piper (the packaged voice) and the espeak-ng fallback."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from runtime.providers.base import ProviderError, RetryPolicy
from runtime.providers.tts.local import EspeakTTS, PiperTTS, split_sentences

THREE = ("Thanks for calling the Blue Door restaurant. We are open every day from noon until ten. "
         "Would you like to book a table for tonight?")


@pytest.fixture
async def piper() -> PiperTTS:
    tts = PiperTTS()
    await tts.warm_up()  # the shared voice loads once per process
    return tts


def test_sentences_concatenate_back_to_the_text() -> None:
    for text in (THREE, "Hi!  How are you?\nFine... thanks", "No punctuation at all", "Wait. ... Really?!", " ", ""):
        assert "".join(split_sentences(text)) == text
    assert split_sentences("Hi! How are you? Fine.") == ["Hi! ", "How are you? ", "Fine."]
    assert split_sentences("Okay. ... Right.") == ["Okay. ... ", "Right."]  # nothing to say joins the left
    # no cut after a title, an initial or a dotted abbreviation
    assert split_sentences("Dr. J. Smith sees you at 9 a.m. tomorrow. Okay?") == [
        "Dr. J. Smith sees you at 9 a.m. tomorrow. ", "Okay?"]


async def test_piper_streams_one_chunk_per_sentence_at_22050(piper) -> None:
    began = time.perf_counter()
    arrivals, chunks = [], []
    async for chunk in piper.synthesize(THREE):
        arrivals.append(time.perf_counter() - began)
        chunks.append(chunk)
    assert [c.rate for c in chunks] == [22050] * 3
    assert "".join(c.text for c in chunks) == THREE
    assert [c.text.strip() for c in chunks] == [s.strip() for s in split_sentences(THREE)]
    for chunk in chunks:
        seconds = len(chunk.pcm) / 2 / chunk.rate
        assert len(chunk.pcm) % 2 == 0 and 0.5 < seconds < 6
    # the first sentence is handed out while the rest are still being made
    assert arrivals[0] < arrivals[-1] * 0.6, arrivals


async def test_piper_stops_when_the_listener_does(piper) -> None:
    stream = piper.synthesize(THREE)
    first = await anext(stream)
    await stream.aclose()  # barge-in: later sentences are not needed
    assert first.text == split_sentences(THREE)[0]


async def test_piper_length_scale_slows_speech(piper) -> None:
    text = "Your table is booked."
    normal = b"".join([c.pcm async for c in piper.synthesize(text)])
    slow = b"".join([c.pcm async for c in PiperTTS(length_scale=1.5).synthesize(text)])
    assert len(slow) > len(normal) * 1.25


async def test_piper_says_nothing_for_empty_text(piper) -> None:
    assert [c async for c in piper.synthesize("")] == []


def _need_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        message = "espeak-ng is not installed (apt-get install -y espeak-ng)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)


async def test_espeak_fallback_makes_audio() -> None:
    _need_espeak()
    text = "Hello there. How can I help you today?"
    chunks = [c async for c in EspeakTTS().synthesize(text)]
    assert "".join(c.text for c in chunks) == text and len(chunks) == 2
    assert all(c.rate == 22050 and len(c.pcm) > 22050 * 2 * 0.4 for c in chunks)


async def test_espeak_missing_binary_is_unavailable() -> None:
    with pytest.raises(ProviderError) as caught:
        async for _ in EspeakTTS(RetryPolicy(retries=0), binary="no-such-espeak-binary").synthesize("Hello."):
            pass
    assert caught.value.kind == "unavailable" and caught.value.provider == "espeak"
