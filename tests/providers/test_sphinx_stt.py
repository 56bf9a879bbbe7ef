"""The pocketsphinx option: interim results while the caller speaks, a final on flush, decoding
off the event loop; picked per agent version with stt.provider = pocketsphinx."""

from __future__ import annotations

import asyncio
import re

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
    loop = asyncio.get_running_loop()
    gaps, last = [], loop.time()
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i:i + FRAME])
        await asyncio.sleep(0)
        gaps.append(loop.time() - last)
        last = loop.time()
    await stream.flush()
    await stream.close()
    await reader
    interims = [t for t in seen if not t.final]
    finals = [t for t in seen if t.final]
    assert len(interims) >= 3 and len(finals) == 1, seen
    words = set(re.findall(r"[a-z']+", finals[0].text))
    assert {"book", "table"} <= words, finals[0].text
    assert finals[0].speech_final and finals[0].end_ms > finals[0].start_ms
    assert max(gaps) < 0.05  # pushing never waits for the decoder


async def test_a_version_picks_pocketsphinx() -> None:
    chosen = await ProviderChains(Settings()).for_call(AgentConfig.model_validate({"system_prompt": "x", "stt": {"provider": "pocketsphinx"}}))
    assert isinstance(chosen.stt, PocketSphinxSTT) and chosen.substitutions == []
