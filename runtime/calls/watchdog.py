"""Duration watchdog: warn at T-2 min and T-30 s, then transfer or end the call at T-0.

One watchdog per connected call, on plain loop timers (``loop.call_at``): three
handles per call are far cheaper than a scheduler job each. The limit is the
route's ``max_duration_s`` (the shorter of the tenant's and the version's).
Warnings become ``call.duration_warning`` events and call the session's
``on_duration_warning`` hooks (the pipeline speaks them). At T-0 the call is
transferred to the version's escalation target if it has one, else hung up,
both with ``reason=max_duration``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from runtime.events.models import DurationWarning

if TYPE_CHECKING:
    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.calls")

# Seconds before the limit at which the call is warned (tests shorten them).
WARN_OFFSETS_S: tuple[float, ...] = (120.0, 30.0)
# Real seconds per call second; tests shrink it (a fake clock) so a 5-minute limit passes in 0.3 s.
TIME_SCALE = 1.0
MAX_DURATION = "max_duration"


class DurationWatchdog:
    def __init__(self, session: CallSession, limit_s: float, *, offsets: tuple[float, ...] | None = None) -> None:
        self.session = session
        self.limit_s = limit_s
        self.offsets = tuple(WARN_OFFSETS_S if offsets is None else offsets)
        self._handles: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task] = set()
        self.fired: list[float] = []  # remaining seconds of each warning fired, then 0 for the limit

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        start, scale = loop.time(), TIME_SCALE
        for remaining in sorted(self.offsets, reverse=True):
            if 0 < remaining < self.limit_s:  # a warning past the start of the call is skipped
                at = start + (self.limit_s - remaining) * scale
                self._handles.append(loop.call_at(at, self._spawn, self._warn, remaining))
        self._handles.append(loop.call_at(start + self.limit_s * scale, self._spawn, self._expire))

    def cancel(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
        try:
            current = asyncio.current_task()
        except RuntimeError:  # no running loop
            current = None
        for task in list(self._tasks):
            if task is not current:  # the expiry itself ends the call, which cancels the watchdog
                task.cancel()

    def _spawn(self, job, *args) -> None:
        if not self.session.live:
            return
        task = asyncio.get_running_loop().create_task(job(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warn(self, remaining: float) -> None:
        session = self.session
        self.fired.append(remaining)
        try:
            await session.emit(DurationWarning(remaining_s=int(remaining), limit_s=int(self.limit_s)))
        except Exception:
            log.exception("duration warning event failed", extra={"call_id": session.id})
        for hook in list(session.on_duration_warning):
            try:
                await hook(session, int(remaining))
            except Exception:
                log.exception("duration warning hook failed", extra={"call_id": session.id})

    async def _expire(self) -> None:
        session = self.session
        self.fired.append(0)
        target = (session.route.config.escalation_target if session.route else None) or None
        log.info("call reached its maximum duration",
                 extra={"call_id": session.id, "limit_s": self.limit_s, "transfer": bool(target)})
        if target and session.state == "connected":
            try:
                await session.transfer(target, reason=MAX_DURATION)
                return
            except Exception:
                log.exception("max-duration transfer failed; hanging up", extra={"call_id": session.id})
        await session.hangup(MAX_DURATION)
