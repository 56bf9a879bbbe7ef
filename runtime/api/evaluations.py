"""Evaluations started through the API run in the runtime, against itself: the synthetic calls go
to the socket the request came in on (the runtime's own listener, whatever proxy is in front).

``EvalJobs`` holds the runs in progress (at most ``evaluations.max_running_per_tenant`` per tenant);
at shutdown they are canceled and their rows marked failed, as are rows a previous run of the
runtime left ``running``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from runtime.api.appkeys import SELF_URL
from runtime.control.errors import Conflict
from runtime.evals.runner import Runner, RunPlan
from runtime.ids import now_iso
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

log = logging.getLogger("voicectl.evals")

API_STARTER = "key "  # started_by of runs started through the API: "key <api key id>"


def own_base_url(request: web.Request) -> str:
    """The runtime's own listener: a worker's own loopback one (``SELF_URL``), else the one this
    request reached (loopback, or the box's address)."""
    if SELF_URL in request.app:
        return request.app[SELF_URL]
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise Conflict("this runtime's listening address is not a TCP socket: run evaluations with the CLI")
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class EvalJobs:
    def __init__(self, store: Store, max_per_tenant: int) -> None:
        self.store = store
        self.max_per_tenant = max_per_tenant
        self.tasks: dict[str, tuple[str, asyncio.Task[Any]]] = {}  # evaluation id -> (tenant, task)
        self.reserved: dict[str, int] = {}  # tenant -> runs admitted and being set up

    def running(self, tenant_id: str) -> int:
        """Runs of the tenant in progress or being set up (admitted, not yet started)."""
        return sum(1 for tenant, _ in self.tasks.values() if tenant == tenant_id) + self.reserved.get(tenant_id, 0)

    def admit(self, tenant_id: str) -> None:
        """Reserve a slot for a run now (two requests at once cannot both pass); ``start`` takes it
        over, ``release`` gives it back when the run is not started after all."""
        if self.running(tenant_id) >= self.max_per_tenant:
            raise Conflict(f"the tenant already has {self.max_per_tenant} evaluation(s) running; wait for it to "
                           "finish", {"running": self.running(tenant_id), "max": self.max_per_tenant})
        self.reserved[tenant_id] = self.reserved.get(tenant_id, 0) + 1

    def release(self, tenant_id: str) -> None:
        left = self.reserved.get(tenant_id, 0) - 1
        if left > 0:
            self.reserved[tenant_id] = left
        else:
            self.reserved.pop(tenant_id, None)

    def start(self, runner: Runner, row: dict[str, Any], plan: RunPlan) -> None:
        self.release(plan.tenant_id)

        async def run() -> None:
            try:
                await runner.run(row, plan)
            except Exception as exc:  # the runner stores what it can; nothing is left to tell
                log.error("evaluation failed", exc_info=exc, extra={"evaluation_id": row["id"]})
            finally:
                self.tasks.pop(row["id"], None)

        self.tasks[row["id"]] = (plan.tenant_id, asyncio.get_running_loop().create_task(run()))

    async def stop(self) -> None:
        jobs, self.tasks = dict(self.tasks), {}
        for _, task in jobs.values():
            task.cancel()
        for evaluation_id, (tenant_id, task) in jobs.items():
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
            await self.store.evaluations.set(evaluation_id, {"status": "failed", "error": "the runtime stopped",
                                                             "finished_at": now_iso()}, tenant_id=tenant_id)

    async def recover(self, instance_id: str | None) -> int:
        """Rows a previous run left running: failed. ``instance_id`` (a database several runtimes share):
        only this instance's and those from before instances; another's are its own, or a survivor's to
        fail. Runs of the CLI are its own."""
        rows, _ = await self.store.evaluations.list(tenant_id=ALL_TENANTS, equals={"status": "running"}, limit=1000,
                                                    count=False)
        rows = [r for r in rows if str(r.get("started_by") or "").startswith(API_STARTER)
                and (instance_id is None or r.get("instance_id") in (None, instance_id))]
        for row in rows:
            await self.store.evaluations.set(row["id"], {"status": "failed", "error": "the runtime restarted",
                                                         "finished_at": now_iso()}, tenant_id=row["tenant_id"])
        return len(rows)


EVAL_JOBS: web.AppKey[EvalJobs] = web.AppKey("eval_jobs", EvalJobs)
