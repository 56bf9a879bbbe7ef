"""The callback queue on both backends: tasks made once per number with their SLA, the moves a
person makes (assign, complete, cancel) and those a callback call makes, the overdue event fired
once, auto-dial's claim, and each change committed with its event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runtime.control.callbacks import (
    CallbackAssign,
    CallbackCancel,
    CallbackClosed,
    CallbackComplete,
    CallbackPolicy,
    CallbackQueueFull,
    CallbackService,
)
from runtime.control.errors import BadRequest, Invalid, NotFound
from runtime.control.pagination import PageRequest
from runtime.control.schemas import TenantUpdate
from runtime.ids import iso, parse_iso
from runtime.store.tables import ALL_TENANTS
from tests.calls.support import insert_call, provision


async def _events(control, tenant_id: str, topic: str) -> list[dict]:
    rows, _ = await control.store.call_events.list(tenant_id=tenant_id, equals={"topic": topic}, limit=100)
    return rows


async def test_a_task_per_number_due_after_the_tenants_sla(control) -> None:
    world = await provision(control)
    await control.tenants.update(world.tenant_id, TenantUpdate(callback_sla_minutes=30))
    call_id = await insert_call(control, world.tenant_id)
    before = datetime.now(UTC)
    task, created = await control.callbacks.create(world.tenant_id, number="+1 (555) 010-9000", reason="  a table  ",
                                                   source="tool", call_id=call_id, agent_id=world.agent_id)
    assert created and task["number"] == "+15550109000" and task["reason"] == "a table"
    assert (task["status"], task["source"], task["attempts"], task["overdue"]) == ("open", "tool", 0, False)
    due = parse_iso(task["due_at"]) - before
    assert timedelta(minutes=30) <= due < timedelta(minutes=30, seconds=5)
    # The same number again: the task already in the queue, whatever the source.
    again, created = await control.callbacks.create(world.tenant_id, number="+15550109000", reason="other",
                                                    source="abandoned_call")
    assert not created and again["id"] == task["id"] and again["reason"] == "a table"
    # A preferred time: scheduled, due that long after it.
    wanted = datetime.now(UTC) + timedelta(days=1)
    later, created = await control.callbacks.create(world.tenant_id, number="+15550109001", reason=None,
                                                    source="tool", scheduled_at=wanted)
    assert created and later["status"] == "scheduled" and later["scheduled_at"] == iso(wanted)
    assert parse_iso(later["due_at"]) == parse_iso(iso(wanted)) + timedelta(minutes=30)
    created_events = [e["payload"] for e in await _events(control, world.tenant_id, "callback.created")]
    assert [(e["callback_id"], e["call_id"], e["source"]) for e in created_events] == [
        (task["id"], call_id, "tool"), (later["id"], None, "tool")]
    # Tenant events: no call in the envelope (the task's call is in the data).
    assert {e["call_id"] for e in await _events(control, world.tenant_id, "callback.created")} == {None}
    with pytest.raises(Invalid):
        await control.callbacks.create(world.tenant_id, number="not a number", reason="x", source="tool")
    with pytest.raises(NotFound):
        await control.callbacks.create("ten_nope", number="+15550109000", reason="x", source="tool")


async def test_the_queue_of_a_tenant_is_bounded(control) -> None:
    world = await provision(control)
    service = CallbackService(control.store, policy=CallbackPolicy(max_active_per_tenant=2))
    for n in range(2):
        await service.create(world.tenant_id, number=f"+1555010900{n}", reason="x", source="tool")
    with pytest.raises(CallbackQueueFull) as caught:
        await service.create(world.tenant_id, number="+15550109009", reason="x", source="tool")
    assert caught.value.status == 409 and caught.value.details == {"limit": 2}
    listed = await service.list(world.tenant_id, PageRequest())
    await service.cancel(world.tenant_id, listed.items[0]["id"], CallbackCancel())
    await service.create(world.tenant_id, number="+15550109009", reason="x", source="tool")  # room again


async def test_assign_complete_cancel_and_what_a_closed_task_refuses(control) -> None:
    world = await provision(control)
    other = await provision(control, name="other", e164="+15550100002")
    task, _ = await control.callbacks.create(world.tenant_id, number="+15550109000", reason="r", source="tool")
    assigned = await control.callbacks.assign(world.tenant_id, task["id"], CallbackAssign(assignee="Ada", notes="hi"))
    assert assigned["assignee"] == "Ada" and assigned["notes"].endswith("] hi")
    done = await control.callbacks.complete(world.tenant_id, task["id"],
                                            CallbackComplete(disposition="reached", notes="booked a table"))
    assert (done["status"], done["disposition"]) == ("done", "reached") and done["completed_at"]
    assert done["notes"].count("\n") == 1 and done["notes"].endswith("] booked a table")
    completed = [e["payload"] for e in await _events(control, world.tenant_id, "callback.completed")]
    assert completed == [{"callback_id": task["id"], "call_id": None, "status": "done", "disposition": "reached",
                          "attempts": 0, "last_call_id": None}]
    for move in (control.callbacks.assign(world.tenant_id, task["id"], CallbackAssign(assignee="Bo")),
                 control.callbacks.complete(world.tenant_id, task["id"], CallbackComplete()),
                 control.callbacks.cancel(world.tenant_id, task["id"], CallbackCancel())):
        with pytest.raises(CallbackClosed) as caught:
            await move
        assert caught.value.status == 409 and caught.value.details["status"] == "done"
    # Another tenant's task is as unknown as none.
    with pytest.raises(NotFound):
        await control.callbacks.get(other.tenant_id, task["id"])
    with pytest.raises(NotFound):
        await control.callbacks.cancel(other.tenant_id, task["id"], CallbackCancel())
    # A new task for the number once the old one is closed; canceling it is a completed event too.
    fresh, created = await control.callbacks.create(world.tenant_id, number="+15550109000", reason="r2", source="tool")
    assert created and fresh["id"] != task["id"]
    canceled = await control.callbacks.cancel(world.tenant_id, fresh["id"], CallbackCancel(notes="wrong number"))
    assert (canceled["status"], canceled["disposition"]) == ("canceled", "canceled")
    assert len(await _events(control, world.tenant_id, "callback.completed")) == 2
    page = await control.callbacks.list(world.tenant_id, PageRequest(), status="active")
    assert page.total == 0
    assert (await control.callbacks.list(world.tenant_id, PageRequest(), status="done")).total == 1
    with pytest.raises(BadRequest):
        await control.callbacks.list(world.tenant_id, PageRequest(), status="finished")


async def test_overdue_fires_once_per_waiting_task(control) -> None:
    world = await provision(control)
    past = iso(datetime.now(UTC) - timedelta(minutes=5))
    late, _ = await control.callbacks.create(world.tenant_id, number="+15550109000", reason="late", source="tool")
    closed, _ = await control.callbacks.create(world.tenant_id, number="+15550109001", reason="closed", source="tool")
    fine, _ = await control.callbacks.create(world.tenant_id, number="+15550109002", reason="fine", source="tool")
    for task in (late, closed):
        await control.store.callback_tasks.update(task["id"], {"due_at": past}, tenant_id=world.tenant_id)
    await control.callbacks.complete(world.tenant_id, closed["id"], CallbackComplete())
    assert (await control.callbacks.get(world.tenant_id, late["id"]))["overdue"] is True
    assert await control.callbacks.sweep_overdue() == 1
    assert await control.callbacks.sweep_overdue() == 0
    # A second service (another runtime on the same database) does not fire it again either.
    assert await CallbackService(control.store).sweep_overdue() == 0
    overdue = [e["payload"] for e in await _events(control, world.tenant_id, "callback.overdue")]
    assert overdue == [{"callback_id": late["id"], "call_id": None, "number": "+15550109000", "due_at": past,
                        "status": "open", "assignee": None}]
    row = await control.store.callback_tasks.get(late["id"], tenant_id=world.tenant_id)
    assert row["overdue_at"] is not None and fine["overdue"] is False


async def test_auto_dial_claims_due_scheduled_tasks_of_tenants_that_want_it(control) -> None:
    world = await provision(control)
    quiet = await provision(control, name="quiet", e164="+15550100002")
    wanted = datetime.now(UTC) + timedelta(hours=1)
    tasks = {}
    for tenant_id, number in ((world.tenant_id, "+15550109000"), (quiet.tenant_id, "+15550109000"),
                              (world.tenant_id, "+15550109001")):
        task, _ = await control.callbacks.create(tenant_id, number=number, reason="x", source="tool",
                                                 scheduled_at=wanted)
        tasks[(tenant_id, number)] = task
    past = iso(datetime.now(UTC) - timedelta(minutes=1))
    for key in ((world.tenant_id, "+15550109000"), (quiet.tenant_id, "+15550109000")):
        await control.store.callback_tasks.update(tasks[key]["id"], {"scheduled_at": past}, tenant_id=key[0])
    assert await control.callbacks.claim_due() == []  # auto-dial is off by default
    await control.tenants.update(world.tenant_id, TenantUpdate(callback_auto_dial=True))
    claimed = await control.callbacks.claim_due()
    assert [t["id"] for t in claimed] == [tasks[(world.tenant_id, "+15550109000")]["id"]]
    assert claimed[0]["status"] == "in_progress"
    assert await control.callbacks.claim_due() == []  # claimed once
    # Attempts used up: not claimed again.
    await control.store.callback_tasks.update(claimed[0]["id"], {"status": "scheduled", "attempts": 3},
                                              tenant_id=world.tenant_id)
    assert await control.callbacks.claim_due() == []
    rows, _ = await control.store.callback_tasks.list(tenant_id=ALL_TENANTS, equals={"status": "in_progress"})
    assert rows == []


async def test_a_callback_calls_end_moves_its_task(control) -> None:
    world = await provision(control)
    service = CallbackService(control.store, policy=CallbackPolicy(max_attempts=2, retry_after_s=600))
    task, _ = await service.create(world.tenant_id, number="+15550109000", reason="x", source="failed_call")
    claimed = await service.claim(world.tenant_id, task["id"])
    assert claimed["status"] == "in_progress"
    with pytest.raises(CallbackClosed):  # in progress: not waiting, nobody else places it
        await service.claim(world.tenant_id, task["id"])
    await service.call_started(world.tenant_id, task["id"], "call_1")
    # Another call's end, or an unknown task: nothing moves.
    assert await service.call_ended(world.tenant_id, task["id"], "call_other", answered=True, outcome="x") is None
    missed = await service.call_ended(world.tenant_id, task["id"], "call_1", answered=False, outcome="no_answer")
    assert (missed["status"], missed["disposition"], missed["attempts"]) == ("scheduled", "no_answer", 1)
    retry_in = parse_iso(missed["scheduled_at"]) - datetime.now(UTC)
    assert timedelta(minutes=9) < retry_in <= timedelta(minutes=10)
    await service.claim(world.tenant_id, task["id"])
    await service.call_started(world.tenant_id, task["id"], "call_2")
    last = await service.call_ended(world.tenant_id, task["id"], "call_2", answered=False, outcome="busy")
    assert (last["status"], last["attempts"], last["scheduled_at"]) == ("open", 2, None)  # a person's now
    await service.claim(world.tenant_id, task["id"])
    await service.call_started(world.tenant_id, task["id"], "call_3")
    done = await service.call_ended(world.tenant_id, task["id"], "call_3", answered=True, outcome="booked")
    assert (done["status"], done["disposition"], done["last_call_id"]) == ("done", "booked", "call_3")
    completed = [e["payload"] for e in await _events(control, world.tenant_id, "callback.completed")]
    assert completed == [{"callback_id": task["id"], "call_id": None, "status": "done", "disposition": "booked",
                          "attempts": 3, "last_call_id": "call_3"}]
    # A claim whose call could not be placed goes back where it was.
    other, _ = await service.create(world.tenant_id, number="+15550109001", reason="x", source="tool",
                                    scheduled_at=datetime.now(UTC) + timedelta(hours=2))
    await service.claim(world.tenant_id, other["id"])
    await service.release(world.tenant_id, other["id"], "scheduled")
    assert (await service.get(world.tenant_id, other["id"]))["status"] == "scheduled"
