"""Callback tasks: the tenant's queue of people to call back.

A task is made by the ``schedule_callback`` tool (the caller asked), by an inbound call that
failed or that the caller left before the agent spoke, and by an after-hours call when the
version's ``after_hours.callback`` is on (runtime.calls.call_record). It holds the number, the
reason, when it is wanted (``scheduled_at``; none: as soon as possible), when it is due (that
time plus the tenant's ``callback_sla_minutes``), who has it (``assignee``, free text), notes,
and the calls placed for it. One number has at most one task in the queue (open, scheduled or in
progress) per tenant: a caller who tries three times is called back once.

Statuses: ``open`` (waiting for a person), ``scheduled`` (waiting for its time), ``in_progress``
(a callback call is under way), ``done``, ``canceled``. A callback call that is answered closes
the task (``done``, its disposition the call's outcome); one that is not schedules it again
``retry_after_s`` later while attempts are left, else leaves it open for a person. Events:
``callback.created``, ``callback.overdue`` (once per task, from the runtime's scheduler) and
``callback.completed`` (done or canceled), each committed with the change that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from runtime.control.errors import BadRequest, Conflict, Invalid, NotFound
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import Input, check_e164
from runtime.events.bus import EventBus, stage_in
from runtime.events.models import CallbackCompleted, CallbackCreated, CallbackOverdue, Event, Payload
from runtime.ids import iso, new_id, now_iso
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

if TYPE_CHECKING:
    from runtime.config import CallbackSettings

STATUSES = ("open", "scheduled", "in_progress", "done", "canceled")
ACTIVE = ("open", "scheduled", "in_progress")
WAITING = ("open", "scheduled")  # a person or the scheduler may place a call for it
SOURCES = ("tool", "failed_call", "abandoned_call", "after_hours")
MAX_REASON = 500
MAX_NOTES = 4000
MAX_NOTE = 2000


class CallbackQueueFull(Conflict):
    code = "callback_queue_full"


class CallbackClosed(Conflict):
    code = "callback_closed"


@dataclass(frozen=True)
class CallbackPolicy:
    max_attempts: int = 3
    retry_after_s: int = 1800
    max_active_per_tenant: int = 10_000

    @classmethod
    def from_settings(cls, settings: CallbackSettings) -> CallbackPolicy:
        return cls(settings.max_attempts, settings.retry_after_s, settings.max_active_per_tenant)


# Request bodies (API and CLI alike)


class CallbackAssign(Input):
    assignee: str = Field(min_length=1, max_length=100, description="who calls back (free text: a name, a team)")
    notes: str | None = Field(None, max_length=MAX_NOTE, description="added to the task's notes")


class CallbackComplete(Input):
    disposition: str = Field("done", min_length=1, max_length=100,
                             description="how it ended, free text (e.g. reached, resolved, wrong_number)")
    notes: str | None = Field(None, max_length=MAX_NOTE, description="added to the task's notes")


class CallbackCancel(Input):
    notes: str | None = Field(None, max_length=MAX_NOTE, description="why, added to the task's notes")


class CallbackPlace(Input):
    from_: str | None = Field(None, alias="from", description="one of the tenant's numbers (default: the number "
                                                              "the task's call came in on or went out from)")
    agent_id: str | None = Field(None, description="default: the task's agent, else the from number's")
    machine_detection: Literal["off", "detect", "voicemail"] = Field("off", description="as for POST /api/v1/calls")
    timeout_s: int = Field(30, ge=1, le=600, description="seconds to let it ring")

    _from = field_validator("from_")(check_e164)


def public(row: dict[str, Any], now: str | None = None) -> dict[str, Any]:
    """A task as the API and CLI show it: its row and whether it is overdue now."""
    now = now or now_iso()
    return {**row, "overdue": row["status"] in WAITING and row["due_at"] is not None and row["due_at"] < now}


def _notes(existing: str | None, note: str | None, when: str) -> str | None:
    """``note`` added to the task's notes with its time; the oldest text goes past MAX_NOTES."""
    if not note:
        return existing
    line = f"[{when[:16].replace('T', ' ')}] {note.strip()}"
    text = f"{existing}\n{line}" if existing else line
    return text[-MAX_NOTES:]


class CallbackService:
    def __init__(self, store: Store, bus: EventBus | None = None, policy: CallbackPolicy | None = None) -> None:
        self.store = store
        # The runtime's bus (WebSocket subscribers see the events); elsewhere (the CLI) one that
        # commits them with their outbox rows, which the runtime delivers.
        self.bus = bus or EventBus(store)
        self.policy = policy or CallbackPolicy()

    # Reads

    async def list(self, tenant_id: str, page: PageRequest, *, status: str | None = None,
                   assignee: str | None = None, call_id: str | None = None) -> Page[dict[str, Any]]:
        """Due first. ``status``: one status, or ``active`` (open, scheduled or in progress)."""
        equals: dict[str, Any] = {}
        if status:
            if status not in (*STATUSES, "active"):
                raise BadRequest(f"status must be one of active, {', '.join(STATUSES)}", {"query": "status"})
            equals["status"] = ACTIVE if status == "active" else status
        if assignee:
            equals["assignee"] = assignee
        if call_id:
            equals["call_id"] = call_id
        rows, total = await self.store.callback_tasks.list(tenant_id=tenant_id, equals=equals, limit=page.limit,
                                                           offset=page.offset)
        now = now_iso()
        return Page([public(r, now) for r in rows], total, page.limit, page.offset)

    async def get(self, tenant_id: str, task_id: str) -> dict[str, Any]:
        return public(await self._row(tenant_id, task_id))

    async def _row(self, tenant_id: str, task_id: str) -> dict[str, Any]:
        row = await self.store.callback_tasks.get(task_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"callback {task_id} not found", {"callback_id": task_id})
        return row

    async def for_call(self, tenant_id: str, call_id: str) -> dict[str, Any] | None:
        """The task a call made (the newest), if any."""
        rows, _ = await self.store.callback_tasks.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=1,
                                                       descending=True, count=False)
        return rows[0] if rows else None

    # The queue

    async def create(self, tenant_id: str, *, number: str, reason: str | None, source: str,
                     call_id: str | None = None, agent_id: str | None = None,
                     scheduled_at: datetime | None = None, notes: str | None = None) -> tuple[dict[str, Any], bool]:
        """A task for ``number``, or the one already in the queue for it: (task, created)."""
        if source not in SOURCES:
            raise ValueError(f"unknown callback source {source!r}")
        try:
            number = check_e164(number) or ""
        except ValueError as exc:
            raise Invalid(str(exc), {"field": "number"}) from None
        tenant = await self.store.tenants.get(tenant_id, tenant_id=ALL_TENANTS)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id} not found", {"tenant_id": tenant_id})
        existing = await self._active_for(tenant_id, number)
        if existing is not None:
            return public(existing), False
        limit = self.policy.max_active_per_tenant
        if await self.store.count_active_callbacks(tenant_id) >= limit:
            raise CallbackQueueFull(f"the tenant already has {limit} callback tasks waiting", {"limit": limit})
        now = datetime.now(UTC)
        wanted = scheduled_at if scheduled_at is not None and scheduled_at > now else None
        created = iso(now)
        row = {
            "id": new_id("cb"), "tenant_id": tenant_id, "call_id": call_id, "number": number,
            "reason": (reason or "").strip()[:MAX_REASON] or None, "status": "scheduled" if wanted else "open",
            "due_at": iso((wanted or now) + timedelta(minutes=int(tenant["callback_sla_minutes"]))),
            "disposition": None, "notes": _notes(None, notes, created), "created_at": created, "updated_at": created,
            "agent_id": agent_id, "source": source, "scheduled_at": iso(wanted) if wanted else None, "attempts": 0,
            "assignee": None, "last_call_id": None, "overdue_at": None, "completed_at": None,
        }
        batch = self.store.batch()
        await batch.callback_tasks.insert(row)
        event = _event(tenant_id, CallbackCreated(
            callback_id=row["id"], call_id=call_id, number=number, reason=row["reason"], source=source,
            due_at=row["due_at"], scheduled_at=row["scheduled_at"]))
        try:
            await self.bus.publish(event, batch)
        except UniqueViolation:  # another task for the number went in meanwhile: that one it is
            existing = await self._active_for(tenant_id, number)
            if existing is None:
                raise
            return public(existing), False
        return public(row), True

    async def _active_for(self, tenant_id: str, number: str) -> dict[str, Any] | None:
        return await self.store.callback_tasks.find(tenant_id=tenant_id, number=number, status=ACTIVE)

    async def assign(self, tenant_id: str, task_id: str, data: CallbackAssign) -> dict[str, Any]:
        row = await self._row(tenant_id, task_id)
        now = now_iso()
        changed = await self.store.callback_tasks.update_if(
            task_id, {"assignee": data.assignee, "notes": _notes(row["notes"], data.notes, now), "updated_at": now},
            tenant_id=tenant_id, status_in=ACTIVE)
        if changed is None:
            raise _closed(await self._row(tenant_id, task_id))
        return public(changed, now)

    async def complete(self, tenant_id: str, task_id: str, data: CallbackComplete) -> dict[str, Any]:
        row = await self._row(tenant_id, task_id)
        return await self._close(row, "done", data.disposition, data.notes)

    async def cancel(self, tenant_id: str, task_id: str, data: CallbackCancel) -> dict[str, Any]:
        row = await self._row(tenant_id, task_id)
        return await self._close(row, "canceled", "canceled", data.notes)

    async def _close(self, row: dict[str, Any], status: str, disposition: str | None, note: str | None,
                     *, status_in: tuple[str, ...] = ACTIVE) -> dict[str, Any]:
        now = now_iso()
        tenant_id = row["tenant_id"]
        async with self.store.atomic() as tx:
            changed = await tx.callback_tasks.update_if(
                row["id"], {"status": status, "disposition": disposition, "notes": _notes(row["notes"], note, now),
                            "completed_at": now, "updated_at": now}, tenant_id=tenant_id, status_in=status_in)
            if changed is None:
                raise _closed(await tx.callback_tasks.get(row["id"], tenant_id=tenant_id) or row)
            event = _event(tenant_id, CallbackCompleted(
                callback_id=row["id"], call_id=row["call_id"], status=status, disposition=disposition,
                attempts=int(changed["attempts"]), last_call_id=changed["last_call_id"]))
            queued = await stage_in(tx, event)
        self.bus.committed((event,), queued)
        return public(changed, now)

    # Callback calls (runtime.telephony.callbacks places them; runtime.calls.call_record reports back)

    async def claim(self, tenant_id: str, task_id: str) -> dict[str, Any]:
        """Take a waiting task for a callback call (in progress); 409 when it is not waiting."""
        now = now_iso()
        changed = await self.store.callback_tasks.update_if(task_id, {"status": "in_progress", "updated_at": now},
                                                           tenant_id=tenant_id, status_in=WAITING)
        if changed is None:
            raise _closed(await self._row(tenant_id, task_id))
        return changed

    async def call_started(self, tenant_id: str, task_id: str, call_id: str) -> dict[str, Any] | None:
        """The claimed task's call is placed: one more attempt, and the call it waits for."""
        row = await self._row(tenant_id, task_id)
        return await self.store.callback_tasks.update_if(
            task_id, {"attempts": int(row["attempts"]) + 1, "last_call_id": call_id, "updated_at": now_iso()},
            tenant_id=tenant_id, status_in=("in_progress",))

    async def release(self, tenant_id: str, task_id: str, back_to: str, note: str | None = None,
                      disposition: str | None = None) -> None:
        """A claimed task whose call could not be placed: waiting again (``back_to``), with a note."""
        row = await self.store.callback_tasks.get(task_id, tenant_id=tenant_id)
        if row is None:
            return
        now = now_iso()
        changes: dict[str, Any] = {"status": back_to, "notes": _notes(row["notes"], note, now), "updated_at": now}
        if disposition is not None:
            changes["disposition"] = disposition
        await self.store.callback_tasks.update_if(task_id, changes, tenant_id=tenant_id, status_in=("in_progress",))

    async def call_ended(self, tenant_id: str, task_id: str, call_id: str, *, answered: bool,
                         outcome: str | None) -> dict[str, Any] | None:
        """The task's callback call ended: answered closes it (done, disposition the call's
        outcome); not answered schedules it again while attempts are left, else opens it for a
        person. Nothing changes when the task moved on meanwhile (closed, or another call placed)."""
        row = await self.store.callback_tasks.get(task_id, tenant_id=tenant_id)
        if row is None or row["last_call_id"] != call_id or row["status"] != "in_progress":
            return None
        if answered:
            try:
                return await self._close(row, "done", outcome or "reached", None, status_in=("in_progress",))
            except CallbackClosed:
                return None
        now = datetime.now(UTC)
        again = int(row["attempts"]) < self.policy.max_attempts
        changes = {"status": "scheduled" if again else "open", "disposition": outcome or "no_answer",
                   "scheduled_at": iso(now + timedelta(seconds=self.policy.retry_after_s)) if again else None,
                   "updated_at": iso(now)}
        return await self.store.callback_tasks.update_if(task_id, changes, tenant_id=tenant_id,
                                                         status_in=("in_progress",))

    # The scheduler (runtime.telephony.callbacks.CallbackJob)

    async def sweep_overdue(self, limit: int = 200) -> int:
        """callback.overdue for each waiting task past its due time, once per task; how many."""
        now = now_iso()
        async with self.store.atomic() as tx:
            rows = await tx.claim_overdue_callbacks(now, limit)
            events = [_event(r["tenant_id"], CallbackOverdue(
                callback_id=r["id"], call_id=r["call_id"], number=r["number"], due_at=r["due_at"], status=r["status"],
                assignee=r["assignee"])) for r in rows]
            queued = 0
            for event in events:
                queued += await stage_in(tx, event)
        if events:
            self.bus.committed(events, queued)
        return len(events)

    async def claim_due(self, limit: int = 50) -> list[dict[str, Any]]:
        """Scheduled tasks to dial now (tenants with callback_auto_dial), claimed: in progress."""
        return await self.store.claim_due_callbacks(now_iso(), limit, self.policy.max_attempts)


def _event(tenant_id: str, payload: Payload) -> Event:
    return Event.of(payload, tenant_id=tenant_id, call_id=None, seq=0, trace_id=None)


def _closed(row: dict[str, Any]) -> CallbackClosed:
    return CallbackClosed(f"callback {row['id']} is {row['status']}", {"callback_id": row["id"],
                                                                       "status": row["status"]})
