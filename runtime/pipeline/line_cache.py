"""Greetings synthesised once per voice and text, shared by every call of the process.

A greeting is the same audio on every call of a version, and under a burst of new calls
synthesising it per call is what overloads a local TTS first (callers hear nothing). The first
call of a (voice, text) starts one synthesis in a task of its own; that call and every other
call asking meanwhile play its chunks as they come, and later calls replay them at once. The
synthesis does not belong to any call, so a caller hanging up early does not cut it short for the
others. An entry is kept only when it completed on the engine it started on (a fail-over
mid-way is not cached: the next call tries again), and the cache is bounded in bytes (least
recently used entries go first). A greeting with ``{{variables}}`` is the call's own and never
comes from here (runtime.pipeline.engine).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable

from runtime.providers.base import AudioChunk, TextToSpeech

log = logging.getLogger("voicectl.pipeline")

MAX_BYTES = 64 * 1024 * 1024  # ~12 min of 22 kHz audio: every greeting of a busy box


class _Entry:
    __slots__ = ("chunks", "size", "done", "error", "_changed", "task")

    def __init__(self) -> None:
        self.chunks: list[AudioChunk] = []
        self.size = 0
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk.pcm)
        self._changed.set()

    def finish(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        self._changed.set()

    async def read(self) -> AsyncIterator[AudioChunk]:
        i = 0
        while True:
            while i < len(self.chunks):
                yield self.chunks[i]
                i += 1
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self._changed.clear()
            await self._changed.wait()


class LineCache:
    """See the module docstring; one per process (the conversation engine's)."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def audio(self, key: Hashable, tts: TextToSpeech, text: str) -> AsyncIterator[AudioChunk]:
        """The chunks of ``text`` in the voice ``key`` names (``tts`` makes them on a miss)."""
        entry = self._entries.get(key)
        if entry is not None and not (entry.done and entry.error is not None):
            self.hits += 1
            self._entries.move_to_end(key)
            return entry.read()
        self.misses += 1
        entry = self._entries[key] = _Entry()
        entry.task = asyncio.get_running_loop().create_task(self._synthesize(key, entry, tts, text))
        return entry.read()

    async def _synthesize(self, key: Hashable, entry: _Entry, tts: TextToSpeech, text: str) -> None:
        provider = tts.provider_name  # a fail-over chain names the engine it is on
        try:
            async for chunk in tts.synthesize(text):
                entry.add(chunk)
        except BaseException as exc:  # noqa: BLE001  # the readers get it; this task must not die loud
            entry.finish(exc if isinstance(exc, Exception) else RuntimeError("greeting synthesis cancelled"))
            self._forget(key, entry)
            return
        entry.finish()
        if tts.provider_name != provider:
            self._forget(key, entry)  # spoken partly by a stand-in: not the voice the key names
            return
        if self._entries.get(key) is not entry:
            return
        self._bytes += entry.size
        for old_key, old in list(self._entries.items()):  # least recently used first
            if self._bytes <= self.max_bytes:
                break
            if old is not entry and old.done:
                self._forget(old_key, old)

    def _forget(self, key: Hashable, entry: _Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
            if entry.done and entry.error is None:
                self._bytes -= entry.size
