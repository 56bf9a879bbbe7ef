"""Retention: purge calls older than their tenant's ``retention_days``, with everything they own.

``purge_expired`` deletes, tenant by tenant, finished calls created before
``now - retention_days`` together with their transcripts, events, tool calls and
recordings rows (one transaction per batch), then the calls' recording files: local files, and the
objects in the tenant's S3-compatible storage (rows uploaded there, and the keys of uploads that were
pending or failed, in case an object got there before the row was updated). Files and objects go after
the rows: a crash in between leaves files, never rows that point at nothing.
``RetentionJob`` runs it from an apscheduler (3.x) AsyncIOScheduler in the app's
call engine: first a minute after start, then every ``PURGE_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from runtime.calls.scheduler import add_periodic, stop_periodic
from runtime.ids import now_iso
from runtime.recording.objects import RecordingObjects
from runtime.recording.storage import LocalStorage
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

log = logging.getLogger("voicectl.retention")

PURGE_INTERVAL_S = 3600
FIRST_RUN_DELAY_S = 60
JOB_ID = "retention_purge"
BATCH = 500
COUNT_KEYS = ("calls", "transcripts", "events", "tool_calls", "recordings", "files")


async def purge_expired(store: Store, recording_dir: Path, now: datetime | None = None, *,
                        objects: RecordingObjects | None = None) -> dict[str, int]:
    """Delete what is past each tenant's retention; the number of calls, rows and files (local files and
    storage objects) removed. Without ``objects`` stored objects are left alone."""
    now = now or datetime.now(UTC)
    storage = LocalStorage(recording_dir)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    offset = 0
    while True:
        tenants, _ = await store.tenants.list(tenant_id=ALL_TENANTS, limit=200, offset=offset, count=False)
        if not tenants:
            break
        offset += len(tenants)
        for tenant in tenants:
            days = tenant.get("retention_days")
            if not days:
                continue
            before = (now - timedelta(days=int(days))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            await _purge_tenant(store, storage, tenant["id"], before, counts, objects)
    if counts["calls"]:
        log.info("retention purge removed expired calls", extra=counts)
    return counts


async def _purge_tenant(store: Store, storage: LocalStorage, tenant_id: str, before: str,
                        counts: dict[str, int], objects: RecordingObjects | None = None) -> None:
    while True:
        call_ids = await store.expired_call_ids(tenant_id, before, BATCH)
        if not call_ids:
            return
        stored = await store.recordings_of_calls(tenant_id, call_ids) if objects is not None else []
        async with store.atomic() as tx:
            deleted = await tx.delete_calls(tenant_id, call_ids)
        counts["calls"] += deleted.get("voice_calls", 0)
        counts["transcripts"] += deleted.get("transcripts", 0)
        counts["events"] += deleted.get("call_events", 0)
        counts["tool_calls"] += deleted.get("tool_calls", 0)
        counts["recordings"] += deleted.get("recordings", 0)
        for call_id in call_ids:  # files after the rows: a crash in between leaves files, never dangling rows
            try:
                counts["files"] += await asyncio.to_thread(storage.delete_call, tenant_id, call_id)
            except Exception:
                log.exception("could not delete recording files", extra={"call_id": call_id})
        if stored and objects is not None:
            counts["files"] += await objects.delete_rows(tenant_id, stored)
        if len(call_ids) < BATCH:
            return


class RetentionJob:
    """The scheduled purge: ``start()`` in the call engine, ``stop()`` on cleanup."""

    def __init__(self, store: Store, recording_dir: Path, *, interval_s: float = PURGE_INTERVAL_S,
                 first_run_delay_s: float = FIRST_RUN_DELAY_S, objects: RecordingObjects | None = None,
                 scheduler: AsyncIOScheduler | None = None) -> None:
        self.store = store
        self.recording_dir = recording_dir
        self.objects = objects
        self.interval_s = interval_s
        self.first_run_delay_s = first_run_delay_s
        # The app's scheduler (runtime.calls.scheduler), shared with the rollout checks; else its own.
        self.scheduler: AsyncIOScheduler | None = scheduler
        self._owns_scheduler = scheduler is None
        self._running: asyncio.Task | None = None
        self.runs = 0
        self.last_counts: dict[str, int] | None = None
        self.last_run_at: str | None = None

    def start(self) -> None:
        if self.scheduler is None:
            self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        add_periodic(self.scheduler, self.run, job_id=JOB_ID, name="purge expired calls", every_s=self.interval_s,
                     first_in_s=self.first_run_delay_s)
        if not self.scheduler.running:
            self.scheduler.start()

    async def run(self) -> dict[str, int] | None:
        self._running = asyncio.current_task()
        try:
            self.last_counts = await purge_expired(self.store, self.recording_dir, objects=self.objects)
            self.runs += 1
            self.last_run_at = now_iso()
            return self.last_counts
        except Exception:
            log.exception("retention purge failed")
            return None
        finally:
            self._running = None

    @property
    def running(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    async def stop(self) -> None:
        if self._owns_scheduler and self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await stop_periodic(self.scheduler, JOB_ID, self._running)


RETENTION: web.AppKey[RetentionJob] = web.AppKey("retention", RetentionJob)
