"""Greetings synthesised once per voice and text (runtime.pipeline.line_cache): a burst of new
calls costs one synthesis, every caller gets every chunk, a failure or a fail-over is not kept,
and the cache stays within its byte budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runtime.pipeline.line_cache import LineCache
from runtime.providers.base import AudioChunk, TextToSpeech


class SlowTts(TextToSpeech):
    """Three chunks, 20 ms apart: long enough for other calls to ask while it is speaking."""

    name = "slow"

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.runs = 0
        self.fail_after = fail_after

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        self.runs += 1
        for i in range(3):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the engine broke")
            await asyncio.sleep(0.02)
            yield AudioChunk(bytes([i + 1]) * 640, 16000, text if i == 0 else "")


async def _read(cache: LineCache, voice: str, tts: TextToSpeech, text: str) -> list[bytes]:
    return [chunk.pcm async for chunk in cache.audio((voice, text), tts, text)]


async def test_a_burst_of_calls_costs_one_synthesis_and_each_gets_every_chunk() -> None:
    cache, tts = LineCache(), SlowTts()
    heard = await asyncio.gather(*(_read(cache, "voice", tts, "Hello, front desk.") for _ in range(20)))
    assert tts.runs == 1 and cache.misses == 1 and cache.hits == 19
    assert all(h == heard[0] for h in heard) and len(heard[0]) == 3
    again = await _read(cache, "voice", tts, "Hello, front desk.")
    assert again == heard[0] and tts.runs == 1 and cache.hits == 20  # replayed, not synthesized again
    await _read(cache, "other voice", tts, "Hello, front desk.")
    await _read(cache, "voice", tts, "Another greeting.")
    assert tts.runs == 3, "the voice and the text name an entry"


async def test_a_caller_hanging_up_early_does_not_cut_the_greeting_for_the_others() -> None:
    cache, tts = LineCache(), SlowTts()
    first = cache.audio(("voice", "Hi."), tts, "Hi.")
    await anext(first)
    await first.aclose()  # the first caller is gone after one chunk
    assert len(await _read(cache, "voice", tts, "Hi.")) == 3 and tts.runs == 1


async def test_a_failed_synthesis_reaches_its_callers_and_is_not_kept() -> None:
    cache, broken = LineCache(), SlowTts(fail_after=1)
    with pytest.raises(RuntimeError, match="the engine broke"):
        await _read(cache, "voice", broken, "Hi.")
    working = SlowTts()
    assert len(await _read(cache, "voice", working, "Hi.")) == 3 and working.runs == 1


async def test_a_greeting_finished_by_a_stand_in_is_not_kept() -> None:
    cache, tts = LineCache(), SlowTts()

    async def fail_over() -> None:
        await asyncio.sleep(0.03)
        tts.name = "espeak"  # the chain moved to its stand-in mid-greeting

    await asyncio.gather(_read(cache, "voice", tts, "Hi."), fail_over())
    tts.name = "slow"
    await _read(cache, "voice", tts, "Hi.")
    assert tts.runs == 2


async def test_the_cache_keeps_to_its_byte_budget_least_recently_used_first() -> None:
    cache, tts = LineCache(max_bytes=2 * 3 * 640), SlowTts()
    for text in ("one", "two"):
        await _read(cache, "voice", tts, text)
    await _read(cache, "voice", tts, "one")  # "one" used again: "two" is now the oldest
    await _read(cache, "voice", tts, "three")
    assert tts.runs == 3
    await _read(cache, "voice", tts, "one")
    assert tts.runs == 3, "the recently used entry stayed"
    await _read(cache, "voice", tts, "two")
    assert tts.runs == 4, "the least recently used entry went"
