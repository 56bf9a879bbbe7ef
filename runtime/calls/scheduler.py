"""The runtime's one periodic scheduler: an apscheduler (3.x) AsyncIOScheduler on the app's loop.

Jobs that run every so often add themselves to it: the retention purge (runtime.calls.retention)
and the rollout checks (runtime.calls.rollout_watch), the callback queue's overdue and auto-dial
job (runtime.telephony.callbacks). The call engine starts it and shuts it down.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler


def new_scheduler() -> AsyncIOScheduler:
    # Each run of a job is logged at info by apscheduler: every rollout check tick, a line. Warnings stay.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    return AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)


SCHEDULER: web.AppKey[AsyncIOScheduler] = web.AppKey("scheduler", AsyncIOScheduler)
