"""Each runtime's lease in ``instances``, and the reaper of peers whose lease ran out.

An instance registers its row at startup and renews it every ``lease_s / 3`` with what it carries
(live calls, local-engine calls, CPU load, whether it accepts calls); a clean stop removes it. A
runtime that stops renewing (killed, frozen, cut off from the database) is presumed lost once its
lease has run out: the first survivor to see it claims its row (one claim, whoever races) and every
survivor fails whatever live calls it held (``instance_lost``), each call once
(runtime.calls.stale_calls). SQLite runs this too: one instance, nothing to reap, same code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from runtime.calls.stale_calls import fail_stale_call
from runtime.calls.tracker import CallTracker
from runtime.ids import iso, now_iso, parse_iso
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

log = logging.getLogger("voicectl.cluster")

# On a shared database survivors look for lost peers at least this often, so a lost peer's calls
# end within about a second of its lease running out whatever the lease. (On SQLite, with one
# runtime by construction, only a previous run under another id can be found: with each renewal.)
REAP_EVERY_S = 1.0
PURGE_EVERY_S = 3600.0
PAGE = 200
# Rows of reaped instances are kept this long for `voicectl instances`, then removed.
REAPED_KEPT = timedelta(days=1)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicectl")
    except PackageNotFoundError:
        return "0"


class CpuLoad:
    """This process's CPU time over wall time since the last reading (1.0: one core, busy)."""

    def __init__(self) -> None:
        self._cpu, self._wall = time.process_time(), time.monotonic()

    def read(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        share = (cpu - self._cpu) / (wall - self._wall) if wall > self._wall else 0.0
        self._cpu, self._wall = cpu, wall
        return round(share, 3)


class InstanceLease:
    """``start()`` in the call engine (after the tracker), ``stop()`` after its drain."""

    def __init__(self, store: Store, tracker: CallTracker, instance_id: str, *, lease_s: float,
                 port: int | None = None, shared: bool = True) -> None:
        self.store = store
        self.tracker = tracker
        self.instance_id = instance_id
        self.lease_s = lease_s
        self.port = port
        self.renew_every_s = lease_s / 3
        self.tick_s = min(self.renew_every_s, REAP_EVERY_S) if shared else self.renew_every_s
        self._purged_at: float | None = None
        self._load = CpuLoad()
        self._task: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self.reaped_calls = 0  # calls of lost peers this instance failed

    def _carried(self) -> dict:
        tracker = self.tracker
        now = datetime.now(UTC)
        return {"heartbeat_at": iso(now), "expires_at": iso(now + timedelta(seconds=self.lease_s)),
                "live_calls": len(tracker.live), "local_calls": len(tracker.local_live),
                "load": self._load.read(), "accepting": tracker.accepting}

    async def register(self) -> None:
        started = now_iso()
        await self.store.register_instance({
            "id": self.instance_id, "host": socket.gethostname(), "port": self.port, "pid": os.getpid(),
            "version": package_version(), "started_at": started, "lease_s": self.lease_s,
            "max_calls": self.tracker.max_calls, "reaped_by": None, "reaped_at": None, **self._carried(),
        })
        self._renewed_at = time.monotonic()

    async def renew(self) -> None:
        if not await self.store.renew_instance(self.instance_id, self._carried()):
            # Our lease ran out (a pause longer than lease_s, or the database was out of reach) and a
            # survivor failed our calls: carry on under a new lease, and stop the media of the calls
            # it failed (their record is the survivor's).
            log.error("this instance's lease had run out and a survivor claimed it; registering again",
                      extra={"instance_id": self.instance_id, "lease_s": self.lease_s})
            await self.register()
            if lost := await self.tracker.give_up_lost_calls():
                log.error("calls failed by a survivor hung up here", extra={"calls": lost})
        self._renewed_at = time.monotonic()

    async def reap(self) -> int:
        """Claim peers whose lease ran out, fail the live calls of every claimed peer; calls failed here."""
        moment = datetime.now(UTC)
        now = iso(moment)
        for lost in await self.store.claim_expired_instances(self.instance_id, now):
            log.warning("instance lost: its lease ran out; failing its live calls",
                        extra={"instance_id": lost, "reaper": self.instance_id})
        failed = 0
        while True:
            rows = await self.store.live_calls_of_lost_instances(PAGE)
            for row in rows:
                # False: another survivor failed it first.
                failed += await fail_stale_call(self.store, self.tracker.bus, row, "instance_lost")
            if len(rows) < PAGE:
                break
        if failed:
            log.warning("calls of lost instances failed", extra={"calls": failed, "reaper": self.instance_id})
        if evaluations := await self.store.fail_evaluations_of_lost_instances(now):
            log.warning("evaluations of lost instances failed", extra={"evaluations": evaluations,
                                                                       "reaper": self.instance_id})
        self.reaped_calls += failed
        if self._purged_at is None or time.monotonic() - self._purged_at >= PURGE_EVERY_S:
            await self.store.delete_instances_reaped_before(iso(moment - REAPED_KEPT))
            self._purged_at = time.monotonic()
        return failed

    async def start(self) -> None:
        await self.register()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="instance-lease")

    async def _run(self) -> None:
        tick = self.tick_s
        while True:
            await asyncio.sleep(tick)
            try:
                if time.monotonic() - self._renewed_at >= self.renew_every_s - tick / 2:
                    await self.renew()
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database out of reach: try again next tick
                log.warning("instance lease renewal or reaping failed",
                            extra={"instance_id": self.instance_id, "error": str(exc) or type(exc).__name__})

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop renewing; ``deregister``: remove the row (a clean stop: nothing left to reap)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if deregister:
            try:
                await self.store.delete_instance(self.instance_id)
            except Exception as exc:  # its lease runs out instead; its calls ended in the drain
                log.warning("could not remove this instance's row",
                            extra={"instance_id": self.instance_id, "error": str(exc) or type(exc).__name__})


LIVE, LEASE_EXPIRED = "live", "lease expired"


@dataclass(frozen=True)
class InstanceView:
    """One runtime as `voicectl instances` shows it."""

    id: str
    state: str  # live | lease expired (a survivor fails its calls; reaped_by names it once it has)
    host: str
    port: int | None
    pid: int
    version: str
    started_at: str
    heartbeat_at: str
    heartbeat_age_s: float
    lease_s: float
    live_calls: int
    local_calls: int
    max_calls: int | None
    load: float
    accepting: bool
    reaped_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def list_instances(store: Store, now: datetime | None = None) -> list[InstanceView]:
    """Every runtime registered on this database, by id."""
    now = now or datetime.now(UTC)
    rows, _ = await store.instances.list(tenant_id=ALL_TENANTS, limit=10_000, count=False)
    views = []
    for row in rows:
        alive = row["reaped_by"] is None and parse_iso(row["expires_at"]) >= now
        views.append(InstanceView(
            id=row["id"], state=LIVE if alive else LEASE_EXPIRED, host=row["host"], port=row["port"],
            pid=row["pid"], version=row["version"], started_at=row["started_at"], heartbeat_at=row["heartbeat_at"],
            heartbeat_age_s=round((now - parse_iso(row["heartbeat_at"])).total_seconds(), 1),
            lease_s=float(row["lease_s"]), live_calls=row["live_calls"], local_calls=row["local_calls"],
            max_calls=row["max_calls"], load=float(row["load"]), accepting=bool(row["accepting"]),
            reaped_by=row["reaped_by"],
        ))
    return views


INSTANCE_LEASE: web.AppKey[InstanceLease] = web.AppKey("instance_lease", InstanceLease)
