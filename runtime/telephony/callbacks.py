"""Callback calls: a waiting callback task dialled as an outbound call.

A person asks for one (``POST /api/v1/callbacks/{id}/place``, ``voicectl callbacks place``), or
the scheduler does when a scheduled task's time has come and its tenant has
``callback_auto_dial`` on (``CallbackJob``, on the runtime's periodic scheduler, which also
fires ``callback.overdue``). Either way the call goes through ``POST /api/v1/calls``'s own
checks and toll-fraud bounds (runtime.telephony.outbound.place): the task's number is the
``to``; the ``from`` is the number the task's call came in on (or went out from), unless given;
the agent is the task's, unless given. The agent gets the task's context as variables
(``{{callback_reason}}``, ``{{callback_notes}}``, ``{{original_summary}}``...). The task is in
progress from before the call is dialled; the call's end reports back to it
(runtime.calls.call_record). A call that cannot be placed puts the task back: a person's back
where it was (the error is theirs to read), the scheduler's to ``open`` with the reason noted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import ValidationError

from runtime.calls.outbound import MAX_VARIABLE_CHARS, PlaceCall
from runtime.calls.scheduler import add_periodic, stop_periodic
from runtime.calls.session import CallSession
from runtime.control.callbacks import CallbackPlace
from runtime.control.errors import ControlError, Invalid
from runtime.store.store import Store
from runtime.telephony.outbound import place
from runtime.telephony.services import services

log = logging.getLogger("voicectl.callbacks")

JOB_ID = "callbacks"
DUE_PER_TICK = 50
DIALLING_PROVIDERS = ("twilio", "livekit")


async def place_callback(app: web.Application, tenant_id: str, task_id: str, req: CallbackPlace, base_url: str, *,
                         claimed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Place the task's call; ``claimed``: a task the scheduler has already taken (in progress).
    ``{"call_id", "status", "callback"}``."""
    svc = services(app)
    callbacks, store = svc.control.callbacks, svc.control.store
    if claimed is None:
        before = await callbacks.get(tenant_id, task_id)
        task = await callbacks.claim(tenant_id, task_id)
        back_to = before["status"]
    else:
        task, back_to = claimed, "open"

    async def queued(session: CallSession) -> None:
        session.callback_id = task_id
        await callbacks.call_started(tenant_id, task_id, session.id)

    try:
        call = await _call_for(store, task, req)
        placed = await place(app, tenant_id, call, base_url, on_queued=queued)
    except BaseException as exc:
        if claimed is None:  # the person placing it reads the error
            await callbacks.release(tenant_id, task_id, back_to)
        else:
            why = getattr(exc, "message", None) or type(exc).__name__
            await callbacks.release(tenant_id, task_id, back_to, f"auto-dial could not place the call: {why}",
                                    "not_placed")
        raise
    return {"call_id": placed["id"], "status": placed["status"],
            "callback": await callbacks.get(tenant_id, task_id)}


async def _call_for(store: Store, task: dict[str, Any], req: CallbackPlace) -> PlaceCall:
    tenant_id = task["tenant_id"]
    original = await store.voice_calls.get(task["call_id"], tenant_id=tenant_id) if task["call_id"] else None
    agent_id = req.agent_id
    if agent_id is None and task["agent_id"] and await store.agents.get(task["agent_id"], tenant_id=tenant_id):
        agent_id = task["agent_id"]
    from_number = req.from_ or await _from_number(store, task, original, agent_id)
    try:
        return PlaceCall.model_validate({
            "to": task["number"], "from": from_number, "agent_id": agent_id, "variables": _variables(task, original),
            "machine_detection": req.machine_detection, "timeout_s": req.timeout_s})
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise Invalid(f"the callback call cannot be placed: {errors}", {"callback_id": task["id"]}) from None


async def _from_number(store: Store, task: dict[str, Any], original: dict[str, Any] | None,
                       agent_id: str | None) -> str:
    """The number the task's call used on the tenant's side, else one of the tenant's numbers that
    can dial out (the agent's first)."""
    if original is not None:
        ours = original["to_number"] if original["direction"] == "inbound" else original["from_number"]
        if ours:
            row = await store.phone_numbers.find(tenant_id=task["tenant_id"], e164=ours)
            if row is not None and row["provider"] in DIALLING_PROVIDERS:
                return ours
    rows, _ = await store.phone_numbers.list(tenant_id=task["tenant_id"], equals={"provider": DIALLING_PROVIDERS},
                                             limit=200, count=False)
    rows.sort(key=lambda r: r["agent_id"] != agent_id)
    if not rows:
        raise Invalid("the tenant has no twilio or livekit number to call back from", {"field": "from"})
    return rows[0]["e164"]


def _variables(task: dict[str, Any], original: dict[str, Any] | None) -> dict[str, str]:
    """The task's context for the agent's prompt and greeting (``{{name}}``)."""
    summary = (original or {}).get("summary") or {}
    values = {
        "callback_id": task["id"], "callback_reason": task["reason"] or "", "callback_number": task["number"],
        "callback_notes": task["notes"] or "", "callback_requested_at": task["created_at"][:16].replace("T", " "),
        "callback_attempts": str(task["attempts"]), "original_call_id": task["call_id"] or "",
        "original_summary": (summary.get("text") or "") if isinstance(summary, dict) else "",
    }
    return {k: v[-MAX_VARIABLE_CHARS:] for k, v in values.items()}


class CallbackJob:
    """On the runtime's periodic scheduler: overdue events, then auto-dial of due scheduled tasks."""

    def __init__(self, app: web.Application, base_url: str | None = None) -> None:
        self.app = app
        # Where carriers reach this runtime for the calls it places: server.public_url, else the
        # configured host and port (a runtime on another address, e.g. a test's, sets it).
        self.base_url = base_url
        self.runs = 0
        self.placed = 0
        self._running: asyncio.Task[None] | None = None
        self._scheduler: AsyncIOScheduler | None = None

    def start(self, scheduler: AsyncIOScheduler) -> None:
        interval = services(self.app).settings.callbacks.check_interval_s
        self._scheduler = scheduler
        add_periodic(scheduler, self.run, job_id=JOB_ID, name="callback tasks", every_s=interval,
                     first_in_s=min(interval, 5.0))

    async def stop(self) -> None:
        """The job off the app's scheduler, a tick under way stopped."""
        await stop_periodic(self._scheduler, JOB_ID, self._running)

    async def run(self) -> None:
        self._running = asyncio.current_task()
        try:
            await self._tick()
        finally:
            self._running = None

    async def _tick(self) -> None:
        svc = services(self.app)
        callbacks = svc.control.callbacks
        try:
            await callbacks.sweep_overdue()
        except Exception:
            log.exception("the overdue callback check failed")
        try:
            due = await callbacks.claim_due(DUE_PER_TICK)
        except Exception:
            log.exception("claiming due callback tasks failed")
            due = []
        base = self.base_url or _base_url(svc.settings)
        for task in due:
            try:
                await place_callback(self.app, task["tenant_id"], task["id"], CallbackPlace(), base, claimed=task)
                self.placed += 1
            except ControlError as exc:
                log.warning("a due callback could not be placed",
                            extra={"callback_id": task["id"], "tenant_id": task["tenant_id"], "error": exc.message})
            except Exception:
                log.exception("placing a due callback failed", extra={"callback_id": task["id"]})
        self.runs += 1


CALLBACK_JOB: web.AppKey[CallbackJob] = web.AppKey("callback_job", CallbackJob)


def _base_url(settings: Any) -> str:
    """Where carriers reach this runtime: server.public_url, else its own address."""
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.server.port}"

