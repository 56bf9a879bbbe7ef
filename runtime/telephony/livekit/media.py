"""The audio adapter between a LiveKit room (``livekit.rtc``) and the conversation pipeline.

Inbound: the caller's track read through ``rtc.AudioStream`` as 16 kHz mono 20 ms frames; each
frame's PCM16 goes to ``Conversation.feed_audio`` (and the call's audio sinks). Outbound: the
pipeline's PCM16 cut into 20 ms frames, queued on the call's ``Pacer`` with their generation and
sent on the loop's shared 20 ms clock into an ``rtc.AudioSource`` (the agent's published track)
as SDK ``AudioFrame``s. ``capture_frame`` is a coroutine (an FFI round trip) and the ticker
must not wait, so one writer task per call hands the paced frames to the SDK; a frame whose
generation went stale in between is dropped there too. Barge-in clears the pacer, the writer's
few frames and the source's own queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.pipeline.audio import FRAME_MS
from runtime.pipeline.pacer import Frame, Pacer
from runtime.telephony.services import services

if TYPE_CHECKING:
    from aiohttp import web

    from runtime.calls.session import CallSession
    from runtime.pipeline.conversation import Conversation

log = logging.getLogger("voicectl.livekit")

LIVEKIT_RATE = 16000  # the pipeline's rate on LiveKit calls (wideband; the SDK resamples Opus' 48 kHz)
FRAME_SAMPLES = LIVEKIT_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = FRAME_SAMPLES * 2
# The source's own buffer: a few frames of jitter room (the pacer already sends in real time).
SOURCE_QUEUE_MS = 100
# Paced frames waiting for the SDK beyond this are dropped (and counted), never waited for.
MAX_WRITER_BACKLOG = 5


class LiveKitTransport:
    """The pipeline's way back to the caller (runtime.pipeline.transport.Transport)."""

    rate = LIVEKIT_RATE

    def __init__(self, media: LiveKitMedia) -> None:
        self.media = media
        self.sent_frames: dict[int, int] = {}  # generation -> frames handed to the source
        self.sent_since_clear = False

    def send_audio(self, pcm: bytes, generation: int) -> None:
        pacer = self.media.pacer
        if pacer.closed or generation < pacer.generation:
            return  # a stale reply: never queued
        if generation > pacer.generation:
            pacer.generation = generation
        tail = len(pcm) % FRAME_BYTES
        if tail:  # pad the chunk's last frame with silence (under 20 ms between sentences)
            pcm += bytes(FRAME_BYTES - tail)
        for i in range(0, len(pcm), FRAME_BYTES):
            pacer.push(pcm[i:i + FRAME_BYTES], generation)

    def sent_ms(self, generation: int) -> int:
        return self.sent_frames.get(generation, 0) * FRAME_MS

    def queued_ms(self) -> int:
        return (self.media.pacer.queued + len(self.media.backlog)) * FRAME_MS

    async def clear(self) -> None:
        await self.media.clear()

    def drop_stale(self, generation: int) -> None:
        pacer = self.media.pacer
        if generation > pacer.generation:
            pacer.generation = generation
        pacer.drop_stale(generation)


@dataclass
class MediaCounters:
    inbound_frames: int = 0
    inbound_bytes: int = 0
    inbound_foreign: int = 0  # frames not at 16 kHz mono (never expected from AudioStream): skipped
    outbound_captured: int = 0  # frames the SDK accepted
    outbound_backlogged: int = 0
    clears: int = 0


class LiveKitMedia:
    """One call's audio in a room: built before the agent publishes (``source`` is its track's)."""

    def __init__(self, app: web.Application, session: CallSession, source: Any | None = None) -> None:
        from livekit import rtc

        self.app, self.session = app, session
        session.media_counts = self.media_counts
        self.source = source if source is not None else rtc.AudioSource(LIVEKIT_RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self.pacer = Pacer(self._send_frame)
        self.transport = LiveKitTransport(self)
        self.backlog: deque[Frame] = deque()
        self.counters = MediaCounters()
        self.conversation: Conversation | None = None
        self.closed = False
        self._wake = asyncio.Event()
        self._stream: Any = None
        self._tasks: list[asyncio.Task] = []
        self._writer: asyncio.Task | None = None

    async def start(self, track: Any) -> None:
        """Read ``track`` (the caller's audio), build the conversation, connect the call, speak."""
        from livekit import rtc

        self._stream = rtc.AudioStream(track, sample_rate=LIVEKIT_RATE, num_channels=1, frame_size_ms=FRAME_MS)
        self._tasks.append(asyncio.get_running_loop().create_task(self._read(self._stream)))
        conversation = await services(self.app).conversations.conversation(self.session, self.transport)
        await self.session.connect()
        self.start_output()
        self.conversation = conversation
        await conversation.start()

    def start_output(self) -> None:
        """Start pacing queued audio into the source (and the writer task that feeds it)."""
        if self._writer is None:
            self.pacer.start()
            self._writer = asyncio.get_running_loop().create_task(self._write())
            self._tasks.append(self._writer)

    # Inbound

    async def _read(self, stream: Any) -> None:
        counters, session = self.counters, self.session
        async for event in stream:
            frame = event.frame
            if frame.sample_rate != LIVEKIT_RATE or frame.num_channels != 1:
                counters.inbound_foreign += 1
                continue
            pcm = frame.data.tobytes()
            counters.inbound_frames += 1
            counters.inbound_bytes += len(pcm)
            if session.audio_sinks:
                session.tap_inbound(pcm, LIVEKIT_RATE)
            conversation = self.conversation
            if conversation is not None:
                conversation.feed_audio(pcm, LIVEKIT_RATE)

    # Outbound

    async def _send_frame(self, frame: Frame) -> None:
        """Called by the loop's shared ticker for every call in one iteration: must not wait."""
        if self.closed:
            self.pacer.closed = True
            return
        if len(self.backlog) >= MAX_WRITER_BACKLOG:
            self.counters.outbound_backlogged += 1  # the SDK is not keeping up: drop, never block
            return
        self.backlog.append(frame)
        self._wake.set()
        transport = self.transport
        transport.sent_frames[frame.generation] = transport.sent_frames.get(frame.generation, 0) + 1
        transport.sent_since_clear = True
        if self.session.audio_sinks:
            self.session.tap_outbound(frame.payload, LIVEKIT_RATE)

    async def _write(self) -> None:
        from livekit import rtc

        backlog, source, pacer = self.backlog, self.source, self.pacer
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while backlog and not self.closed:
                frame = backlog.popleft()
                if frame.generation < pacer.generation:
                    continue  # went stale while waiting here
                try:
                    await source.capture_frame(rtc.AudioFrame(frame.payload, LIVEKIT_RATE, 1, FRAME_SAMPLES))
                except Exception:  # the source is gone (room left): nothing more can be played
                    log.warning("the agent's audio source refused a frame", extra={"call_id": self.session.id},
                                exc_info=True)
                    self.pacer.closed = True
                    return
                self.counters.outbound_captured += 1

    async def clear(self) -> int:
        """Drop what is queued here and in the source, only when something may be queued."""
        dropped = self.pacer.clear() + len(self.backlog)
        self.backlog.clear()
        sent, self.transport.sent_since_clear = self.transport.sent_since_clear, False
        if (dropped or sent) and not self.closed:
            self.source.clear_queue()
            self.counters.clears += 1
        return dropped

    # Teardown

    def media_counts(self) -> dict[str, Any]:
        """The adapter's counters (the call's ``summary.media``, read when it ends)."""
        c = self.counters
        return {
            "inbound_frames": c.inbound_frames, "inbound_bytes": c.inbound_bytes,
            "outbound_frames": self.pacer.stats.frames_sent, "outbound_late": self.pacer.stats.late,
            "outbound_backlogged": c.outbound_backlogged, "clears": c.clears,
        }

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.pacer.close()
        conversation, self.conversation = self.conversation, None
        if conversation is not None:
            await conversation.close()
        self._wake.set()
        if self._stream is not None:
            try:
                await self._stream.aclose()  # ends the reader's iteration
            except Exception:
                log.exception("closing the caller's audio stream failed", extra={"call_id": self.session.id})
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        try:
            await self.source.aclose()
        except Exception:
            log.exception("closing the agent's audio source failed", extra={"call_id": self.session.id})
