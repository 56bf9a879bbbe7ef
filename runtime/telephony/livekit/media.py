"""The audio adapter between a LiveKit room (``livekit.rtc``) and the conversation pipeline.

Inbound: the caller's track read through ``rtc.AudioStream`` as 16 kHz mono 20 ms frames (the SDK
resamples Opus' 48 kHz itself); each frame's PCM16 goes to the call's ``MediaLeg``
(runtime.calls.media_leg: the lifecycle, the recording taps, the conversation). Outbound: a
``PacedTransport`` (runtime.pipeline.paced_transport) of 20 ms PCM16 frames, sent on the loop's
shared 20 ms clock into an ``rtc.AudioSource`` (the agent's published track) as SDK
``AudioFrame``s. ``capture_frame`` is a coroutine (an FFI round trip) and the ticker
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

from runtime.audio import FRAME_MS
from runtime.calls.media_leg import MediaLeg
from runtime.pipeline.paced_transport import PacedTransport
from runtime.pipeline.pacer import Frame
from runtime.telephony.services import services

if TYPE_CHECKING:
    from aiohttp import web

    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.livekit")

LIVEKIT_RATE = 16000  # the pipeline's rate on LiveKit calls (wideband; the SDK resamples Opus' 48 kHz)
FRAME_SAMPLES = LIVEKIT_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = FRAME_SAMPLES * 2
# The source's own buffer: a few frames of jitter room (the pacer already sends in real time).
SOURCE_QUEUE_MS = 100
# Paced frames waiting for the SDK beyond this are dropped (and counted), never waited for.
MAX_WRITER_BACKLOG = 5


@dataclass
class MediaCounters:
    inbound_foreign: int = 0  # frames not at 16 kHz mono (never expected from AudioStream): skipped
    outbound_captured: int = 0  # frames the SDK accepted
    outbound_backlogged: int = 0
    clears: int = 0


class LiveKitMedia:
    """One call's audio in a room: built before the agent publishes (``source`` is its track's)."""

    def __init__(self, app: web.Application, session: CallSession, source: Any | None = None) -> None:
        from livekit import rtc

        self.app, self.session = app, session
        self.source = source if source is not None else rtc.AudioSource(LIVEKIT_RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self.backlog: deque[Frame] = deque()
        self.transport = PacedTransport(LIVEKIT_RATE, FRAME_BYTES, self._send_frame, on_clear=self._clear,
                                        held=self.backlog.__len__)
        self.pacer = self.transport.pacer
        self.leg = MediaLeg(session, LIVEKIT_RATE, self.transport, services(app).conversations.conversation,
                            carrier_counts=self._carrier_counts, release=self._release)
        self.counters = MediaCounters()
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
        await self.leg.open()
        self.start_output()
        await self.leg.connect()

    def start_output(self) -> None:
        """Start pacing queued audio into the source (and the writer task that feeds it)."""
        if self._writer is None:
            self.transport.start()
            self._writer = asyncio.get_running_loop().create_task(self._write())
            self._tasks.append(self._writer)

    # Inbound

    async def _read(self, stream: Any) -> None:
        counters, leg = self.counters, self.leg
        async for event in stream:
            frame = event.frame
            if frame.sample_rate != LIVEKIT_RATE or frame.num_channels != 1:
                counters.inbound_foreign += 1
                continue
            leg.audio(frame.data.tobytes())

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
        self.transport.sent(frame.generation)
        self.leg.sent(frame.payload)

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

    async def _clear(self, dropped: int, sent: bool) -> None:
        """The writer's frames and the source's queue, only when something may be queued."""
        held = len(self.backlog)
        self.backlog.clear()
        if (dropped or held or sent) and not self.closed:
            self.source.clear_queue()
            self.counters.clears += 1

    # Teardown

    def _carrier_counts(self) -> dict[str, Any]:
        c, stats = self.counters, self.pacer.stats
        return {"inbound_foreign": c.inbound_foreign, "outbound_frames": stats.frames_sent,
                "outbound_late": stats.late, "outbound_backlogged": c.outbound_backlogged, "clears": c.clears}

    async def close(self) -> None:
        """Stop the media (the room is left by the caller of this); idempotent."""
        await self.leg.release()

    async def _release(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
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
