"""Instant stand-in engines for the benchmarks that measure the runtime itself, not the models.

``python bench/fake_engines.py --config FILE`` serves the real runtime (the same app as
``voicectl serve``: bridges, pipeline, store, events) with these engines in place of the
offline stack:

- STT: a final with a fixed text the moment the pipeline flushes (no decode time);
- LLM: a fixed short reply, streamed at once;
- TTS: the audio of ``--clip`` (a WAV, any rate), or 1 s of a 220 Hz tone, for every sentence.

So ``turn.latency``'s ``first_frame`` is the runtime's own time from the end-of-turn decision
to the first reply frame, and a long clip keeps outbound audio flowing for the transport
benchmark (bench/calls.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.audio import Audio, read_wav  # noqa: E402
from runtime.providers.base import (  # noqa: E402
    AudioChunk,
    LanguageModel,
    LlmDone,
    LlmEvent,
    LlmRequest,
    SpeechToText,
    SttStream,
    TextDelta,
    TextToSpeech,
    Transcript,
)
from runtime.providers.chains import CallProviders, ProviderChains  # noqa: E402

HEARD = "I'd like to book a table for two at seven."
REPLY = "Sure. I have a table for two at seven. Shall I book it?"


class InstantStream(SttStream):
    rate = 8000

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._heard_ms = 0
        self._pending = 0

    async def push(self, pcm: bytes) -> None:
        self._pending += len(pcm) // 16  # ms at 8 kHz PCM16

    async def flush(self) -> None:
        if self._pending:
            start, self._heard_ms = self._heard_ms, self._heard_ms + self._pending
            self._pending = 0
            self._queue.put_nowait(Transcript(HEARD, True, start, self._heard_ms, speech_final=True))

    async def close(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        while (item := await self._queue.get()) is not None:
            yield item


class InstantStt(SpeechToText):
    name = "instant"
    rate = 8000

    async def _open(self) -> SttStream:
        return InstantStream()


class InstantLlm(LanguageModel):
    name = "instant"

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:  # type: ignore[override]
        for word in REPLY.split(" "):
            yield TextDelta(word + " ")
        yield LlmDone()


class ClipTts(TextToSpeech):
    name = "clip"

    def __init__(self, clip: Audio) -> None:
        super().__init__()
        self.clip = clip

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:  # type: ignore[override]
        """The clip in 1 s pieces, as a streaming engine hands over audio (the text with the first)."""
        step = self.clip.rate * 2
        for i in range(0, len(self.clip.pcm), step):
            yield AudioChunk(self.clip.pcm[i:i + step], self.clip.rate, text if i == 0 else "")


def tone(seconds: float = 1.0, rate: int = 8000, hz: float = 220.0) -> Audio:
    samples = int(seconds * rate)
    pcm = struct.pack(f"<{samples}h", *(int(6000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(samples)))
    return Audio(pcm, rate)


class InstantRegistry(ProviderChains):
    """Every call gets the instant engines (the TTS clip is shared)."""

    def __init__(self, settings: Any, clip: Audio) -> None:
        super().__init__(settings)
        self.tts = ClipTts(clip)

    async def warm_up(self) -> None:
        return None

    def local_load(self, agent: Any) -> float:
        return 0.0  # instant engines: no local speech work for limits.local_calls to budget

    async def for_call(self, config: Any, timezone: str = "UTC", **_: Any) -> CallProviders:
        return CallProviders(InstantStt(self.policy), InstantLlm(self.policy), self.tts)

    async def aclose(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--clip", help="WAV every sentence is spoken with (default: 1 s tone)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="bind with SO_REUSEPORT, one of several workers on one port (bench/cluster.py)")
    args = parser.parse_args()
    from runtime.api.server import run
    from runtime.config import load_settings

    settings = load_settings(args.config)
    clip = read_wav(args.clip) if args.clip else tone()
    run(settings, providers=InstantRegistry(settings, clip), reuse_port=args.reuse_port)


if __name__ == "__main__":
    main()
