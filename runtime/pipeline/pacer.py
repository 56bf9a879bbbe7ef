"""Outbound pacing: 20 ms frames sent on an absolute clock, never in bursts.

One ``Ticker`` per event loop drives every call's pacer: it wakes on a process-wide 20 ms grid
(``anchor + n * 20 ms``, so sleep overshoot does not accumulate) and, in that one loop
iteration, sends each busy pacer's next audio frame. N calls cost one timer a tick, not N
sleeping tasks. A pacer sends at most one audio frame a tick, so the start of a reply is not
sent back to back (which would fill the provider's buffer and make ``clear`` useless), and a
late tick is not caught up with a burst: the clock re-anchors and the frame counts as late.
The ticker only runs while some pacer has something queued. An idle pacer (nothing sent for a
frame's time) sends the first frame of new audio at once rather than at the next tick, so a line
starts up to 20 ms sooner; the frames after it follow on the grid (a tick less than MIN_GAP_S
after it is skipped, so the second frame comes 5-25 ms after the first).

A mark is sent right after the frame queued before it. Every item carries the generation
id of the reply it belongs to: ``drop_stale(g)`` discards anything older (barge-in), and
``clear()`` drops everything queued.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from runtime.one_per import OnePer

log = logging.getLogger("voicectl.pacer")
_monotonic = time.monotonic

FRAME_S = 0.020
# Behind the clock by more than this: the frame is counted late and the clock re-anchored
# (no catch-up burst).
LATE_S = 0.040
# A tick due this soon after the due time of the pacer's previous audio frame (sent at once by an
# idle pacer) is skipped. Due times, not send times: a frame sent late in a busy tick must not
# make the next tick look too soon.
MIN_GAP_S = 0.005


@dataclass(slots=True)
class Frame:
    payload: bytes | None  # mu-law audio; None for a mark
    generation: int = 0
    mark: str | None = None
    encoded: str | bytes | None = None  # the wire form (base64), when the producer has it already


@dataclass(slots=True)
class PacerStats:
    frames_sent: int = 0
    marks_sent: int = 0
    dropped: int = 0  # by clear() / drop_stale()
    late: int = 0  # sent more than LATE_S behind the clock
    max_lag_s: float = 0.0


SendFrame = Callable[[Frame], Awaitable[None]]


class Grid:
    """Due times every ``step`` seconds on a fixed grid: ``next()`` sleeps until the next one.
    After a stall of more than LATE_S the grid is re-anchored on the present: no catch-up burst."""

    __slots__ = ("_clock", "step", "_start", "_n", "ticks", "late_ticks")

    def __init__(self, clock: Callable[[], float], step: float) -> None:
        self._clock, self.step = clock, step
        self._start, self._n = 0.0, 0
        self.ticks = 0
        self.late_ticks = 0

    def anchor(self) -> None:
        self._start, self._n = math.ceil(self._clock() / self.step) * self.step, 0

    async def next(self) -> tuple[float, float]:
        """(due time, how late it was served)."""
        due = self._start + self._n * self.step
        delay = due - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = self._clock() - due
        if lag > LATE_S:
            self.late_ticks += 1
            self.anchor()
        else:
            self._n += 1
        self.ticks += 1
        return due, lag


class Ticker:
    """The shared 20 ms clock of one event loop; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, frame_s: float = FRAME_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop, self.frame_s = loop, frame_s
        self.grid = Grid(clock, frame_s)
        self.active: dict[Pacer, None] = {}  # insertion-ordered set of pacers with work queued
        self._task: asyncio.Task[None] | None = None
        self.kicked: dict[Pacer, None] = {}  # idle pacers whose first frame goes out on the next loop turn
        self._kick_task: asyncio.Task[None] | None = None
        self._clock = clock

    @property
    def ticks(self) -> int:
        return self.grid.ticks

    @property
    def late_ticks(self) -> int:
        return self.grid.late_ticks

    def add(self, pacer: Pacer) -> None:
        self.active[pacer] = None
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="pacer-ticker")

    def discard(self, pacer: Pacer) -> None:
        self.active.pop(pacer, None)

    def kick(self, pacer: Pacer) -> None:
        """``pacer`` was idle: its first frame goes out on the next loop turn, then it joins the grid."""
        self.kicked[pacer] = None
        if self._kick_task is None:
            self._kick_task = self.loop.create_task(self._kick_all(), name="pacer-kick")

    async def _kick_all(self) -> None:
        # One due time for all pacers kicked in the same turn: the same grid tick is then too soon,
        # or not, for all of them, so their frames stay in step.
        due, pacers = self._clock(), list(self.kicked)
        self.kicked.clear()
        self._kick_task = None
        for pacer in pacers:
            try:
                busy = await pacer._tick(due)
            except Exception:  # one call's broken sender must not stop the others
                log.exception("outbound frame send failed; that call's pacer stops")
                pacer.closed = True
                busy = False
            finally:
                pacer._kicking = False
            if busy:
                self.add(pacer)

    async def _run(self) -> None:
        grid, active = self.grid, self.active
        grid.anchor()
        while active:
            due, _ = await grid.next()
            for pacer in list(active):
                try:
                    if await pacer._tick(due):
                        continue
                except Exception:  # one call's broken sender must not stop the others
                    log.exception("outbound frame send failed; that call's pacer stops")
                    pacer.closed = True
                active.pop(pacer, None)


_tickers: OnePer[asyncio.AbstractEventLoop, Ticker] = OnePer(Ticker)


def ticker() -> Ticker:
    """This event loop's ticker."""
    return _tickers(asyncio.get_running_loop())


class Pacer:
    __slots__ = ("_send", "_queue", "_queued_audio", "_ticker", "_started", "generation", "stats", "closed",
                 "_last_due", "_kicking", "__weakref__")

    def __init__(self, send: SendFrame) -> None:
        self._send = send
        self._queue: deque[Frame] = deque()
        self._queued_audio = 0  # audio frames in _queue (kept, not counted: asked on every inbound frame)
        self._ticker: Ticker | None = None
        self._started = False
        self.generation = 0
        self.stats = PacerStats()
        self.closed = False
        self._last_due = -math.inf  # the due time of the latest audio frame sent (its tick, or its kick)
        self._kicking = False  # an idle pacer's first frame is being sent outside the ticker

    # Producer side

    def push(self, payload: bytes, generation: int | None = None, encoded: str | None = None) -> None:
        self._queue.append(Frame(payload, self.generation if generation is None else generation, None, encoded))
        self._queued_audio += 1
        self._wake()

    def push_mark(self, name: str, generation: int | None = None) -> None:
        self._queue.append(Frame(None, self.generation if generation is None else generation, name))
        self._wake()

    def extend(self, frames: Iterable[Frame]) -> None:
        """Queue ready-made frames (shared, never mutated: e.g. a cached greeting)."""
        before = len(self._queue)
        self._queue.extend(frames)
        self._queued_audio += sum(1 for i in range(before, len(self._queue)) if self._queue[i].payload is not None)
        self._wake()

    def _wake(self) -> None:
        ticker = self._ticker
        if not self._started or self.closed or ticker is None or self._kicking:
            return
        if self in ticker.active or _monotonic() - self._last_due < FRAME_S:
            ticker.add(self)
        else:  # idle: the first frame goes now (the next loop turn), the rest on the grid
            self._kicking = True
            ticker.kick(self)

    @property
    def queued(self) -> int:
        """Audio frames waiting to be sent."""
        return self._queued_audio

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def clear(self) -> int:
        """Drop everything queued; returns the number of audio frames dropped."""
        dropped = self._queued_audio
        self._queue.clear()
        self._queued_audio = 0
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
            self._queued_audio -= dropped
        self.stats.dropped += dropped
        return dropped

    # Sending (driven by the loop's ticker)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._ticker = ticker()
            if self._queue:
                self._ticker.add(self)

    async def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._queued_audio = 0
        if self._ticker is not None:
            self._ticker.discard(self)

    async def _tick(self, due: float) -> bool:
        """One tick: marks up to and one audio frame, then the marks right after it.

        False when there is nothing left to send (the ticker forgets this pacer until a push)."""
        queue, stats, generation, send = self._queue, self.stats, self.generation, self._send
        sent_audio = False
        while queue and not self.closed:
            frame = queue[0]
            if frame.generation < generation:
                queue.popleft()
                if frame.payload is not None:
                    stats.dropped += 1
                    self._queued_audio -= 1
                continue
            if frame.payload is None:
                queue.popleft()
                await send(frame)
                stats.marks_sent += 1
                continue
            if sent_audio or due - self._last_due < MIN_GAP_S:
                return True
            queue.popleft()
            self._queued_audio -= 1
            self._last_due = due
            lag = _monotonic() - due
            if lag > stats.max_lag_s:
                stats.max_lag_s = lag
            if lag > LATE_S:
                stats.late += 1
            await send(frame)
            stats.frames_sent += 1
            sent_audio = True
            generation = self.generation  # the send may have started a new reply
        return bool(queue) and not self.closed
