"""The agent's audio on a WebRTC call: the pipeline's transport, the outbound track, and the
shared 20 ms clock that paces every call's track.

``WebRtcTransport`` (runtime.pipeline.transport.Transport) cuts the pipeline's PCM16 into 20 ms
frames, each tagged with its reply's generation. aiortc's sender pulls ``AgentAudioTrack.recv()``
once per packet; the loop's ``MediaClock`` wakes on an absolute grid (``anchor + n * 5 ms``, so
sleep overshoot never accumulates) and gives each live track, once every 20 ms on its own
phase of the grid, its next packet: the next frame of the current generation, encoded, or
silence. So N calls cost four timers a frame, a reply never goes out in a burst, and a late
tick is not caught up: the clock re-anchors, the RTP timestamp jumps by the frames missed (the
receiver conceals them) and the frame counts as late. Barge-in drops queued frames by generation
(``drop_stale``) or all of them (``clear``); nothing queued is ever encoded, so there is nothing
to recall from the peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from runtime.audio import FRAME_MS
from runtime.one_per import OnePer
from runtime.pipeline.pacer import Grid
from runtime.telephony.webrtc.codecs import AgentEncoder

log = logging.getLogger("voicectl.webrtc")

FRAME_S = FRAME_MS / 1000
# Behind the grid by more than this: the tick counts as late and the clock re-anchors.
LATE_S = 0.040
# Packets made for a track whose sender was not waiting: kept up to this many, then dropped.
MAX_READY = 3
# The 20 ms grid is served in this many phases (see MediaClock).
PHASES = 4


@dataclass(slots=True)
class OutboundStats:
    frames_sent: int = 0  # agent audio frames handed to aiortc
    silence_sent: int = 0
    dropped: int = 0  # by clear() / drop_stale()
    late: int = 0  # audio frames sent more than LATE_S behind the grid
    backlogged: int = 0  # packets dropped because the sender was not reading
    max_lag_s: float = 0.0


class WebRtcTransport:
    """The pipeline's way back to a WebRTC caller; see the module docstring."""

    def __init__(self, encoder: AgentEncoder) -> None:
        self.encoder = encoder
        self.rate = encoder.rate
        self._frame_bytes = encoder.frame_bytes
        self._queue: deque[tuple[int, bytes]] = deque()
        self.generation = 0
        self.sent_frames: dict[int, int] = {}  # generation -> audio frames sent
        self.stats = OutboundStats()
        self.closed = False
        self.on_audio: Callable[[bytes], None] | None = None  # the call's outbound taps (recording), per frame sent

    # Transport (the pipeline's side)

    def send_audio(self, pcm: bytes, generation: int) -> None:
        if self.closed or generation < self.generation:
            return  # a stale reply: never queued
        if generation > self.generation:
            self.generation = generation  # older frames still queued are skipped when they come up
        size = self._frame_bytes
        tail = len(pcm) % size
        if tail:  # pad the chunk's last frame: under 20 ms of silence between sentences
            pcm += bytes(size - tail)
        queue = self._queue
        for i in range(0, len(pcm), size):
            queue.append((generation, pcm[i:i + size]))

    def sent_ms(self, generation: int) -> int:
        return self.sent_frames.get(generation, 0) * FRAME_MS

    def queued_ms(self) -> int:
        return len(self._queue) * FRAME_MS

    async def clear(self) -> None:
        self.drop_all()

    async def played_out(self, generation: int) -> bool:
        return True  # nothing confirms playback on this way back

    def drop_stale(self, generation: int) -> None:
        if generation > self.generation:
            self.generation = generation
        queue = self._queue
        if queue and queue[0][0] < generation:
            kept = [item for item in queue if item[0] >= generation]
            self.stats.dropped += len(queue) - len(kept)
            self._queue = deque(kept)

    def drop_all(self) -> int:
        dropped = len(self._queue)
        self._queue.clear()
        self.stats.dropped += dropped
        return dropped

    def start(self) -> None:
        """Nothing to start: the track paces from aiortc's first read (``AgentAudioTrack.recv``)."""

    async def close(self) -> None:
        self.closed = True
        self._queue.clear()

    # The clock's side

    def next_packet(self, ts: int, lag: float) -> av.Packet:
        """The packet for this tick: the next current-generation frame, else silence."""
        queue, stats = self._queue, self.stats
        while queue:
            generation, pcm = queue.popleft()
            if generation < self.generation:
                stats.dropped += 1
                continue
            stats.frames_sent += 1
            if lag > stats.max_lag_s:
                stats.max_lag_s = lag
            if lag > LATE_S:
                stats.late += 1
            self.sent_frames[generation] = self.sent_frames.get(generation, 0) + 1
            if self.on_audio is not None:
                self.on_audio(pcm)
            return self.encoder.encode(pcm, ts)
        stats.silence_sent += 1
        return self.encoder.silence(ts)


class AgentAudioTrack(MediaStreamTrack):
    """The track aiortc's sender reads: one pre-encoded packet per 20 ms tick of the loop's clock."""

    kind = "audio"

    def __init__(self, transport: WebRtcTransport) -> None:
        super().__init__()
        self.transport = transport
        self.on_failure: Callable[[Exception], None] | None = None  # the call's handler of a broken encoder
        self._waiter: asyncio.Future[av.Packet] | None = None
        self._ready: deque[av.Packet] = deque()
        self._clock: MediaClock | None = None
        self._phase = 0  # which of the clock's phases serves this track
        self._last_due: float | None = None
        self._ts = 0  # RTP timestamp offset of the next packet (the sender adds its random origin)

    async def recv(self) -> av.Packet:  # type: ignore[override]  # aiortc accepts packets as well as frames
        if self.readyState != "live":
            raise MediaStreamError
        if self._clock is None:  # the sender's first read: the call's media is up, start pacing
            self._clock = media_clock()
            self._clock.add(self)
        if self._ready:
            return self._ready.popleft()
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await waiter
        finally:
            self._waiter = None

    def tick(self, due: float, lag: float) -> None:
        """This track's turn on the grid (``due``: when it was due, ``lag``: how late it came)."""
        last, self._last_due = self._last_due, due
        skipped = 0 if last is None else max(0, round((due - last) / FRAME_S) - 1)  # lost to a stall
        self._ts += self.transport.encoder.clock_step * (1 + skipped)
        packet = self.transport.next_packet(self._ts, lag)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(packet)
            self._waiter = None
        elif len(self._ready) < MAX_READY:
            self._ready.append(packet)
        else:
            self.transport.stats.backlogged += 1

    def fail(self, exc: Exception) -> None:
        self.stop()
        if self.on_failure is not None:
            self.on_failure(exc)

    def stop(self) -> None:
        super().stop()
        if self._clock is not None:
            self._clock.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(MediaStreamError())
        self._ready.clear()


class MediaClock:
    """The 20 ms grid of one event loop, shared by every WebRTC track on it.

    The grid is cut into ``phases`` sub-ticks (5 ms apart by default) and each track is served
    on one of them, the least loaded when it joins: every track still gets a packet every 20 ms,
    but the encoding work (and the packets on the wire) is spread over the frame instead of one
    burst, so no single loop iteration holds up the caller's incoming packets for long."""

    def __init__(self, loop: asyncio.AbstractEventLoop, frame_s: float = FRAME_S, phases: int = PHASES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop, self.frame_s, self.phases = loop, frame_s, phases
        self.grid = Grid(clock, frame_s / phases)
        self.slots: list[dict[AgentAudioTrack, None]] = [{} for _ in range(phases)]  # insertion-ordered sets
        self._task: asyncio.Task[None] | None = None

    @property
    def ticks(self) -> int:
        return self.grid.ticks

    @property
    def late_ticks(self) -> int:
        return self.grid.late_ticks

    @property
    def tracks(self) -> int:
        return sum(len(slot) for slot in self.slots)

    def add(self, track: AgentAudioTrack) -> None:
        phase = min(range(self.phases), key=lambda i: len(self.slots[i]))
        track._phase = phase
        self.slots[phase][track] = None
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="webrtc-media-clock")

    def discard(self, track: AgentAudioTrack) -> None:
        self.slots[track._phase].pop(track, None)

    async def _run(self) -> None:
        grid, slots, phases = self.grid, self.slots, self.phases
        grid.anchor()
        k = 0
        while any(slots):
            due, lag = await grid.next()
            slot = slots[k % phases]
            k += 1
            for track in list(slot):
                try:
                    track.tick(due, lag)
                except Exception as exc:  # one call's broken encoder must not stop the others
                    log.exception("outbound WebRTC frame failed; that call's track stops")
                    slot.pop(track, None)
                    track.fail(exc)


_clocks: OnePer[asyncio.AbstractEventLoop, MediaClock] = OnePer(MediaClock)


def media_clock() -> MediaClock:
    """This event loop's media clock."""
    return _clocks(asyncio.get_running_loop())
