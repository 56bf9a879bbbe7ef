"""Offline streaming speech to text with pocketsphinx (its US English model ships in the package).

The option when live partial transcripts matter more than accuracy: it decodes while the
caller speaks and emits interim results (``transcript.interim``), where the whisper engine
only decodes at the end of an utterance. Less accurate than whisper tiny.en (measured in
tests/providers/test_sphinx_stt.py on piper speech: the key words of a booking line, not every word).

Decoding runs in the ``stt`` worker pool, 100 ms of audio at a time, in order per stream; each
stream has its own decoder (a decoder holds one utterance's search).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from runtime.providers import workers
from runtime.providers.base import ProviderError, SpeechToText, SttStream, Transcript
from runtime.providers.registry import BuildContext

log = logging.getLogger(__name__)

RATE = 16_000
POOL = "stt"
STEP_BYTES = RATE * 2 // 10  # decode every 100 ms of audio


def _decoder() -> Any:
    from pocketsphinx import Decoder  # the model loads from the package: no network

    decoder = Decoder(samprate=RATE, loglevel="FATAL")
    decoder.start_utt()
    return decoder


class PocketSphinxSTT(SpeechToText):
    name = "pocketsphinx"
    rate = RATE
    interim_results = True

    async def check(self) -> str:
        try:
            import pocketsphinx  # noqa: F401
        except ImportError as exc:
            raise ProviderError(self.name, "unavailable", f"pocketsphinx is not installed: {exc}") from None
        return "pocketsphinx"

    async def _open(self) -> SttStream:
        try:
            decoder = await workers.run_in(POOL, _decoder)
        except Exception as exc:
            raise ProviderError(self.name, "unavailable", f"cannot load the pocketsphinx model: {exc}") from exc
        return SphinxStream(decoder)


class SphinxStream(SttStream):
    rate = RATE

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self._pending = bytearray()
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue()
        self._last: asyncio.Task[None] | None = None
        self._heard_ms = 0  # audio decoded so far (the stream's timeline)
        self._utterance_ms = 0  # where the current utterance started
        self._interim = ""
        self._closed = False

    async def push(self, pcm: bytes) -> None:
        if self._closed:
            return
        self._pending += pcm
        if len(self._pending) >= STEP_BYTES:
            chunk, self._pending = bytes(self._pending), bytearray()
            self._chain(self._process, chunk)

    async def flush(self) -> None:
        if self._closed:
            return
        chunk, self._pending = bytes(self._pending), bytearray()
        self._chain(self._finish, chunk)

    def _chain(self, step: Any, chunk: bytes) -> None:
        self._last = asyncio.get_running_loop().create_task(self._after(self._last, step, chunk))

    async def _after(self, previous: asyncio.Task[None] | None, step: Any, chunk: bytes) -> None:
        if previous is not None:
            await previous  # the decoder is fed in order
        try:
            await step(chunk)
        except Exception as exc:
            log.exception("pocketsphinx decode failed")
            self._results.put_nowait(ProviderError("pocketsphinx", "server", f"decode failed: {exc}"))

    async def _process(self, chunk: bytes) -> None:
        text = await workers.run_in(POOL, self._feed, chunk)
        if text and text != self._interim:
            self._interim = text
            self._results.put_nowait(Transcript(text, False, self._utterance_ms, self._heard_ms))

    async def _finish(self, chunk: bytes) -> None:
        text = await workers.run_in(POOL, self._end, chunk)
        start, self._utterance_ms, self._interim = self._utterance_ms, self._heard_ms, ""
        if text:
            self._results.put_nowait(Transcript(text, True, start, self._heard_ms, speech_final=True))

    def _feed(self, chunk: bytes) -> str:
        """Worker thread: decode ``chunk``; the best hypothesis so far."""
        self._heard_ms += len(chunk) * 1000 // (2 * RATE)
        if chunk:
            self._decoder.process_raw(chunk, False, False)
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def _end(self, chunk: bytes) -> str:
        """Worker thread: the utterance's final text; the decoder starts the next one."""
        self._feed(chunk)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        self._decoder.start_utt()
        return hyp.hypstr.strip() if hyp is not None else ""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._last is not None:
            await self._last
        self._results.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        while (item := await self._results.get()) is not None:
            if isinstance(item, ProviderError):
                raise item
            yield item


def build(ctx: BuildContext) -> PocketSphinxSTT:
    return PocketSphinxSTT(policy=ctx.policy)  # cheap: each stream loads its own decoder
