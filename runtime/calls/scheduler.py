"""The runtime's one periodic scheduler: an apscheduler (3.x) AsyncIOScheduler on the app's loop.

Jobs that run every so often add themselves to it: the retention purge (runtime.calls.retention)
and the rollout checks (runtime.calls.rollout_watch), the callback queue's overdue and auto-dial
job (runtime.telephony.callbacks). The call engine starts it and shuts it down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler


def add_periodic(scheduler: AsyncIOScheduler, job: Callable[[], Awaitable[Any]], *, job_id: str, name: str,
                 every_s: float, first_in_s: float) -> None:
    """``job`` every ``every_s`` seconds, the first run ``first_in_s`` from now; one run at a time,
    missed runs coalesced into one."""
    scheduler.add_job(job, "interval", seconds=every_s, id=job_id, name=name,
                      next_run_time=datetime.now(UTC) + timedelta(seconds=first_in_s),
                      max_instances=1, coalesce=True, misfire_grace_time=None)


async def stop_periodic(scheduler: AsyncIOScheduler | None, job_id: str, running: asyncio.Task[Any] | None) -> None:
    """The job taken off the scheduler, and its run under way (``running``) cancelled and awaited."""
    if scheduler is not None and scheduler.running and scheduler.get_job(job_id) is not None:
        scheduler.remove_job(job_id)
    if running is not None and not running.done():
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def new_scheduler() -> AsyncIOScheduler:
    # Each run of a job is logged at info by apscheduler: every rollout check tick, a line. Warnings stay.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    return AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)


SCHEDULER: web.AppKey[AsyncIOScheduler] = web.AppKey("scheduler", AsyncIOScheduler)
