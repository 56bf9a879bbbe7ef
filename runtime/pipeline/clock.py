"""The pipeline's notion of time: the event loop's clock in production, a hand-driven one in tests.

Everything in the conversation that waits (re-prompt after silence, the filler for a slow
tool, waiting for a reply to finish playing, the DTMF inter-digit gap) sleeps on a ``Clock``,
so a test moves time forward explicitly instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

EPSILON = 1e-6  # seconds; see ManualClock.advance


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic time and ``asyncio.sleep``."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """Time that moves only when ``advance`` is awaited; sleepers wake in deadline order, and
    after each wake-up the loop runs until every task is waiting again (``settle``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await settle()
        # A deadline within EPSILON of the target is due: sums of 0.02 s steps are not exact.
        while self._sleepers and self._sleepers[0][0] <= target + EPSILON:
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not future.done():  # a cancelled sleeper leaves its future behind
                future.set_result(None)
                await settle()
        self._now = target
        await settle()

    @property
    def pending(self) -> int:
        """Sleepers still waiting (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())


async def settle(max_rounds: int = 200) -> None:
    """Let every runnable task run until all of them wait on something (a future, the clock).

    Uses the default loop's ready queue to stop early; other loops get ``max_rounds`` yields."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return
