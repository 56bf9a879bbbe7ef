"""The agent's voice. Every utterance (greeting, line, reply to a turn) is a ``Reply`` with its
own generation id; a ``Speaker`` turns the reply's text pieces into audio in order (TTS ->
resample -> transport) while the model is still writing, and notes in the reply's ledger what
audio each piece became. Audio of a generation that is no longer current is never sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import aclosing
from dataclasses import dataclass, field

from runtime.audio import Resampler
from runtime.pipeline.clock import Clock
from runtime.pipeline.frames import pcm_ms
from runtime.pipeline.history import SpokenLedger
from runtime.pipeline.line_cache import LineCache
from runtime.pipeline.metrics import TurnTiming
from runtime.pipeline.transport import Transport
from runtime.providers.base import AudioChunk, Message, TextToSpeech, ToolCall

log = logging.getLogger("voicectl.pipeline")


@dataclass(eq=False, slots=True)
class Reply:
    """One agent utterance: one generation of audio."""

    generation: int
    kind: str  # greeting | line | turn | dtmf
    timing: TurnTiming | None = None  # for replies to a caller turn
    ledger: SpokenLedger = field(default_factory=SpokenLedger)
    messages: list[Message] = field(default_factory=list)  # its assistant messages, in order
    pending_calls: list[ToolCall] = field(default_factory=list)  # tools running for it
    after: tuple[str, str] | None = None  # ("hangup", reason) | ("transfer", target) once played
    interruptible: bool = True  # False: the caller's speech does not cut it (a voicemail message)
    tts: TextToSpeech | None = None  # another voice than the call's (a speaking session's own)
    resamplers: dict[int, Resampler] = field(default_factory=dict)
    first_audio_at: float | None = None
    filler_said: bool = False
    interrupted: bool = False
    task: asyncio.Task[None] | None = None


MAX_AHEAD_MS = 3000
AHEAD_POLL_S = 0.1
# Streaming TTS: a pause in the reply's text longer than this closes the engine's context.
STREAM_GAP_S = 0.5


class Voice:
    """One call's way out: the generation counter, the TTS and the transport."""

    def __init__(self, tts: TextToSpeech, transport: Transport, clock: Clock,
                 on_first_audio: Callable[[Reply], None] | None = None) -> None:
        self.tts, self.transport, self.clock = tts, transport, clock
        self.on_first_audio = on_first_audio
        self.generation = 0
        # A barge-in's transport clear still running: a new reply's first audio waits for it,
        # or the clear would drop it.
        self.clearing: asyncio.Task[None] | None = None
        self.greetings: LineCache | None = None  # greetings synthesised once per voice and text
        self.voice_key: Hashable = None

    def greet_from(self, cache: LineCache, voice_key: Hashable) -> None:
        """Greetings come from ``cache``, made once per ``voice_key`` (what names this call's voice)
        and text, not synthesised for each call."""
        self.greetings, self.voice_key = cache, voice_key

    def cached(self, reply: Reply) -> bool:
        return reply.kind == "greeting" and self.greetings is not None

    def engine(self, reply: Reply) -> TextToSpeech:
        return reply.tts or self.tts

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    async def synthesize(self, reply: Reply, text: str, message: Message | None) -> None:
        """One piece of text: TTS audio, resampled, to the transport with the reply's generation."""
        reply.ledger.begin(text, message)
        self._requested(reply)
        source = (self.greetings.audio((self.voice_key, text), self.tts, text)  # type: ignore[union-attr]
                  if self.cached(reply) else self.engine(reply).synthesize(text))
        async with aclosing(source) as chunks:
            async for chunk in chunks:
                if not await self._send(reply, chunk):
                    return

    async def synthesize_stream(self, reply: Reply, pieces: AsyncIterator[tuple[str, Message | None]]) -> None:
        """Pieces of one reply as they are written, on the engine's one context
        (``streaming_text_input``). Chunk texts tell where a piece's audio ends: the next audio
        starts the next piece in the ledger."""
        self._requested(reply)
        waiting: deque[tuple[str, Message | None]] = deque()
        current: tuple[str, Message | None] | None = None  # the piece being spoken
        returned = 0  # how much of its text the engine has given back

        async def texts() -> AsyncIterator[str]:
            async for text, message in pieces:
                waiting.append((text, message))
                yield text

        async with aclosing(self.engine(reply).synthesize_stream(texts())) as chunks:
            async for chunk in chunks:
                if current is None and waiting:
                    current = waiting.popleft()
                    reply.ledger.begin(*current)
                if not await self._send(reply, chunk):
                    return
                if chunk.text and current is not None:
                    returned += len(chunk.text)
                    if returned >= len(current[0]):
                        current, returned = None, 0

    def _requested(self, reply: Reply) -> None:
        if reply.timing is not None and reply.timing.tts_request_at is None:
            reply.timing.tts_request_at = self.clock.now()

    async def _send(self, reply: Reply, chunk: AudioChunk) -> bool:
        """``chunk`` to the transport; False when the reply is no longer current (stop)."""
        if reply.generation != self.generation:
            return False  # a newer reply owns the line: this audio is stale
        resampler = reply.resamplers.get(chunk.rate)
        if resampler is None:
            resampler = reply.resamplers[chunk.rate] = Resampler(chunk.rate, self.transport.rate)
        return await self._play(reply, resampler(chunk.pcm), chunk.text)

    async def flush(self, reply: Reply) -> None:
        """The end of a reply's audio: the few ms its resamplers still hold go out too (between
        pieces they go out with the next piece's first audio, as one continuous stream)."""
        for resampler in list(reply.resamplers.values()):
            if reply.generation != self.generation:
                return
            tail = resampler.flush()
            if tail and not await self._play(reply, tail, ""):
                return

    async def _play(self, reply: Reply, pcm: bytes, text: str) -> bool:
        """Transport-rate ``pcm`` to the transport; False when the reply is no longer current."""
        if not pcm:
            return True
        timing, transport, rate, clock = reply.timing, self.transport, self.transport.rate, self.clock
        first = reply.first_audio_at is None
        if first:
            if timing is not None:
                timing.tts_first_audio_at = clock.now()
            if self.clearing is not None:
                await self.clearing
                if reply.generation != self.generation:
                    return False
        # Keep at most a few seconds queued ahead of playback: a long reply is handed over as
        # it plays (bounded memory per call, less to drop on barge-in).
        while transport.queued_ms() > MAX_AHEAD_MS:
            await clock.sleep(AHEAD_POLL_S)
            if reply.generation != self.generation:
                return False
        transport.send_audio(pcm, reply.generation)
        reply.ledger.audio(pcm_ms(pcm, rate), text)
        if first:
            reply.first_audio_at = clock.now()
            if timing is not None:
                timing.first_frame_at = reply.first_audio_at
            if self.on_first_audio is not None:
                self.on_first_audio(reply)
        return True

    async def wait_played(self, reply: Reply) -> None:
        """Until the transport has played everything queued (nothing to wait for when the reply
        sent no audio)."""
        if reply.first_audio_at is None:
            return
        while (queued := self.transport.queued_ms()) > 0:
            await self.clock.sleep(max(queued, 20) / 1000)
        if not await self.transport.played_out(reply.generation):
            log.info("the carrier did not confirm the reply was played in time", extra={"generation": reply.generation})


class Speaker:
    """Speaks one reply's text pieces in order while more text is coming; a TTS failure is
    kept in ``error`` (the rest is skipped) for the reply to handle."""

    __slots__ = ("_voice", "_reply", "_queue", "_task", "error", "pieces")

    def __init__(self, voice: Voice, reply: Reply) -> None:
        self._voice, self._reply = voice, reply
        self._queue: asyncio.Queue[tuple[str, Message | None] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.pieces = 0  # pieces of the reply's own text queued (fillers excluded)

    def say(self, text: str, message: Message | None) -> None:
        if message is not None:
            self.pieces += 1
        self._queue.put_nowait((text, message))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def finish(self) -> None:
        """Wait until everything queued has been synthesised and sent; raises the TTS error."""
        if self._task is not None:
            self._queue.put_nowait(None)
            task, self._task = self._task, None
            await task
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        if self._voice.engine(self._reply).streaming_text_input and not self._voice.cached(self._reply):
            await self._run_streams()
            return
        while (item := await self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                await self._voice.synthesize(self._reply, *item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = exc
        await self._voice.flush(self._reply)

    async def _run_streams(self) -> None:
        """Streaming engines: the pieces go to one context while they keep coming; a pause longer
        than STREAM_GAP_S (the model calling a tool, a reply done) ends it, the next piece opens
        another, so no context idles at the provider."""
        ended = False
        carried: list[tuple[str, Message | None] | None] = []  # a piece taken as its segment was cut

        async def segment(first: tuple[str, Message | None]) -> AsyncIterator[tuple[str, Message | None]]:
            nonlocal ended
            yield first
            clock = self._voice.clock
            while True:
                if self._queue.empty():
                    get = asyncio.ensure_future(self._queue.get())
                    timer = asyncio.ensure_future(clock.sleep(STREAM_GAP_S))
                    try:
                        await asyncio.wait({get, timer}, return_when=asyncio.FIRST_COMPLETED)
                    except BaseException:
                        if get.done() and not get.cancelled():
                            carried.append(get.result())  # cut (cancelled) just as it came: keep it
                        raise
                    finally:
                        timer.cancel()
                        if not get.done():
                            get.cancel()
                    if not get.done() or get.cancelled():
                        return
                    item = get.result()
                else:
                    item = self._queue.get_nowait()
                if item is None:
                    ended = True
                    return
                yield item

        async def next_item() -> tuple[str, Message | None] | None:
            return carried.pop(0) if carried else await self._queue.get()

        while not ended and (item := await next_item()) is not None:
            if self.error is not None:
                continue
            try:
                await self._voice.synthesize_stream(self._reply, segment(item))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = exc
        await self._voice.flush(self._reply)
