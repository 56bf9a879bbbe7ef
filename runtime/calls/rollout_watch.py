"""The rollout checks: every ``rollout.check_interval_s`` the scheduler (runtime.calls.scheduler)
judges each running rollout of every tenant against its stop conditions (runtime.control.rollouts):
a breach reverts it (``agent.rollout_reverted``), enough good calls may promote its candidate. A
rollout breached between two ticks is reverted at the next one; its calls meanwhile are counted in
its numbers. Several runtimes on one database may each check it: the first to end it wins.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from runtime.calls.scheduler import add_periodic, stop_periodic
from runtime.control.rollouts import RolloutService
from runtime.store.store import Store

log = logging.getLogger("voicectl.rollout")

JOB_ID = "rollout_checks"


class RolloutWatch:
    def __init__(self, store: Store, rollouts: RolloutService, scheduler: AsyncIOScheduler, *,
                 interval_s: float) -> None:
        self.store = store
        self.rollouts = rollouts
        self.scheduler = scheduler
        self.interval_s = interval_s
        self.ticks = 0
        self._running: asyncio.Task | None = None

    def start(self) -> None:
        add_periodic(self.scheduler, self.tick, job_id=JOB_ID, name="check running rollouts",
                     every_s=self.interval_s, first_in_s=self.interval_s)

    async def tick(self) -> dict[str, int]:
        """Judge every running rollout once; how many were reverted, promoted, left running."""
        self._running = asyncio.current_task()
        counts = {"revert": 0, "promote": 0, "wait": 0}
        try:
            for rollout in await self.store.running_rollouts():
                try:
                    counts[await self.rollouts.check(rollout)] += 1
                except Exception:
                    log.exception("checking a rollout failed", extra={"rollout_id": rollout["id"],
                                                                     "tenant_id": rollout["tenant_id"]})
            self.ticks += 1
            if counts["revert"] or counts["promote"]:
                log.info("rollouts checked", extra=counts)
            return counts
        finally:
            self._running = None

    async def stop(self) -> None:
        await stop_periodic(self.scheduler, JOB_ID, self._running)


ROLLOUT_WATCH: web.AppKey[RolloutWatch] = web.AppKey("rollout_watch", RolloutWatch)
