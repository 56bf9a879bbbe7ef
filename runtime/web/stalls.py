"""Process stalls as metrics: cyclic-GC pauses and event-loop lag.

Every live call's media is paced by this one loop, so anything that stops it for more than a
20 ms frame gives every call a late frame at once. These two series tell an operator (and
bench/calls.py) whether that happened and whether the collector was the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
LAG_PROBE_S = 0.05  # how often the lag probe wakes; a stall shows as that wake-up's lateness
STALL_S = 0.02  # one media frame: a pause this long delays every call's next frame


class GcPauses:
    """Times every cyclic-GC pass through ``gc.callbacks`` (two ``perf_counter`` calls a pass)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pause = Histogram("voicectl_gc_pause_seconds", "Cyclic garbage-collector pauses by generation",
                               ("generation",), registry=registry, buckets=PAUSE_BUCKETS)
        self._by_generation = [self.pause.labels(generation=str(g)) for g in range(3)]
        self._started = 0.0
        self._installed: Callable[[str, dict], None] | None = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0

    def install(self) -> None:
        if self._installed is None:
            self._installed = self._callback
            gc.callbacks.append(self._installed)

    def uninstall(self) -> None:
        if self._installed is not None:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._installed)
            self._installed = None


class LoopLag:
    """A task that sleeps ``LAG_PROBE_S`` and records how late it woke: the loop's stalls."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram("voicectl_event_loop_lag_seconds", "How late the event loop ran a timer",
                             registry=registry, buckets=PAUSE_BUCKETS)
        self.stalls = Counter("voicectl_event_loop_stalls", f"Timer wake-ups over {STALL_S * 1000:.0f} ms late",
                              registry=registry)
        self._task: asyncio.Task | None = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            late = max(0.0, loop.time() - due)
            self.lag.observe(late)
            if late > STALL_S:
                self.stalls.inc()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe(), name="loop-lag-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
