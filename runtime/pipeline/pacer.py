"""Outbound pacing: 20 ms frames sent on an absolute clock, never in bursts.

Frames go out one per tick of a clock anchored when playback starts (``anchor + n * 20 ms``),
so sleep overshoot does not accumulate, and the start of a reply is not sent back to back
(which would fill the provider's buffer and make ``clear`` useless). Anchors sit on a
process-wide 20 ms grid, so the timers of all calls fire together in one loop iteration.

A mark is sent right after the frame queued before it. Every item carries the generation
id of the reply it belongs to: ``drop_stale(g)`` discards anything older (barge-in), and
``clear()`` drops everything queued.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

FRAME_S = 0.020
# Behind the clock by more than this: the frame is counted late and the clock re-anchored
# (no catch-up burst).
LATE_S = 0.040


@dataclass(slots=True)
class Frame:
    payload: bytes | None  # mu-law audio; None for a mark
    generation: int = 0
    mark: str | None = None
    encoded: str | None = None  # the wire form (base64), when the producer has it already


@dataclass(slots=True)
class PacerStats:
    frames_sent: int = 0
    marks_sent: int = 0
    dropped: int = 0  # by clear() / drop_stale()
    late: int = 0  # sent more than LATE_S behind the clock
    max_lag_s: float = 0.0


SendFrame = Callable[[Frame], Awaitable[None]]


class Pacer:
    def __init__(self, send: SendFrame, *, frame_s: float = FRAME_S, clock: Callable[[], float] = time.monotonic,
                 grid: bool = True) -> None:
        self._send = send
        self.frame_s = frame_s
        self._clock = clock
        self._grid = grid
        self._queue: deque[Frame] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.generation = 0
        self.stats = PacerStats()
        self.closed = False

    # Producer side

    def push(self, payload: bytes, generation: int | None = None, encoded: str | None = None) -> None:
        self._queue.append(Frame(payload, self.generation if generation is None else generation, None, encoded))
        self._wake.set()

    def push_mark(self, name: str, generation: int | None = None) -> None:
        self._queue.append(Frame(None, self.generation if generation is None else generation, name))
        self._wake.set()

    @property
    def queued(self) -> int:
        """Audio frames waiting to be sent."""
        return sum(1 for f in self._queue if f.payload is not None)

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def clear(self) -> int:
        """Drop everything queued; returns the number of audio frames dropped."""
        dropped = self.queued
        self._queue.clear()
        self.stats.dropped += dropped
        return dropped

    def new_generation(self) -> int:
        self.generation += 1
        return self.generation

    def drop_stale(self, generation: int | None = None) -> int:
        """Discard queued frames older than ``generation`` (default: the current one)."""
        keep_from = self.generation if generation is None else generation
        before = len(self._queue)
        kept = [f for f in self._queue if f.generation >= keep_from]
        dropped = sum(1 for f in self._queue if f.generation < keep_from and f.payload is not None)
        if len(kept) != before:
            self._queue = deque(kept)
        self.stats.dropped += dropped
        return dropped

    # The sending task

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pacer")

    async def close(self) -> None:
        self.closed = True
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def _anchor(self) -> float:
        now = self._clock()
        if not self._grid:
            return now
        return math.ceil(now / self.frame_s) * self.frame_s

    async def _run(self) -> None:
        stats, frame_s = self.stats, self.frame_s
        while not self.closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            anchor, n = self._anchor(), 0
            while self._queue and not self.closed:
                frame = self._queue.popleft()
                if frame.generation < self.generation:
                    if frame.payload is not None:
                        stats.dropped += 1
                    continue
                if frame.payload is None:
                    await self._send(frame)
                    stats.marks_sent += 1
                    continue
                due = anchor + n * frame_s
                delay = due - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if self.closed:
                        return
                lag = self._clock() - due
                if lag > stats.max_lag_s:
                    stats.max_lag_s = lag
                if lag > LATE_S:
                    stats.late += 1
                    anchor, n = self._clock(), 0  # re-anchor: no catch-up burst
                await self._send(frame)
                stats.frames_sent += 1
                n += 1
