"""The pocketsphinx option: interim results while the caller speaks, a final on flush, decoding
off the event loop; picked per agent version with stt.provider = pocketsphinx."""

from __future__ import annotations

import asyncio
import re
import threading

from runtime.audio import resample
from runtime.config import Settings
from runtime.control.schemas import AgentConfig
from runtime.providers.chains import ProviderChains
from runtime.providers.stt.sphinx import PocketSphinxSTT
from runtime.providers.tts.local import PiperTTS

FRAME = 640  # 20 ms at 16 kHz


async def _speech(text: str) -> bytes:
    # Wideband, as a WebRTC or LiveKit caller sounds: these tests are about the stream's behaviour.
    # Its accuracy on phone audio (8 kHz, band-limited) is measured on a set of callers by
    # bench/offline_stack.py, not asserted on one sentence here.
    chunks = [c async for c in PiperTTS().synthesize(text)]
    return resample(b"".join(c.pcm for c in chunks), chunks[0].rate, 16000)


async def test_interims_while_speaking_then_a_final_on_flush() -> None:
    pcm = await _speech("I would like to book a table for two please.")
    stream = await PocketSphinxSTT().open()
    seen = []

    async def read() -> None:
        async for transcript in stream:
            seen.append(transcript)

    reader = asyncio.create_task(read())
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i:i + FRAME])
        await asyncio.sleep(0)
    await stream.flush()
    await stream.close()
    await reader
    interims = [t for t in seen if not t.final]
    finals = [t for t in seen if t.final]
    assert len(interims) >= 3 and len(finals) == 1, seen
    words = set(re.findall(r"[a-z']+", finals[0].text))
    assert {"book", "table"} <= words, finals[0].text
    assert finals[0].speech_final and finals[0].end_ms > finals[0].start_ms


async def test_pushing_never_waits_for_the_decoder() -> None:
    # The decoder's worker thread is held; every push and the flush must still return, and the
    # held work is decoded in order once the thread is let go. Checked by state, not by timing.
    pcm = await _speech("A table for two.")
    stream = await PocketSphinxSTT().open()
    held, fed = threading.Event(), []
    feed = stream._feed

    def held_feed(chunk: bytes) -> str:
        held.wait(30)
        fed.append(len(chunk))
        return feed(chunk)

    stream._feed = held_feed  # type: ignore[method-assign]
    for i in range(0, len(pcm), FRAME):
        await asyncio.wait_for(stream.push(pcm[i:i + FRAME]), 1)
    await asyncio.wait_for(stream.flush(), 1)
    assert fed == []  # nothing decoded yet: the pushes did not wait for it
    held.set()
    await stream.close()
    assert sum(fed) == len(pcm)  # then every byte was decoded, in order, after all


async def test_a_version_picks_pocketsphinx() -> None:
    chosen = await ProviderChains(Settings()).for_call(AgentConfig.model_validate({"system_prompt": "x", "stt": {"provider": "pocketsphinx"}}))
    assert isinstance(chosen.stt, PocketSphinxSTT) and chosen.substitutions == []
