"""What the TTS adapter tests share: collecting a synthesis with its timing, and a closed port."""

from __future__ import annotations

import socket
import time

from runtime.providers.base import AudioChunk, TextToSpeech


async def collect(tts: TextToSpeech, text: str) -> tuple[list[AudioChunk], list[float]]:
    """The chunks of ``tts.synthesize(text)`` and when each came (seconds from the start)."""
    chunks, times, started = [], [], time.monotonic()
    async for chunk in tts.synthesize(text):
        chunks.append(chunk)
        times.append(time.monotonic() - started)
    return chunks, times


def free_port() -> int:
    """A loopback port nothing listens on (a server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
