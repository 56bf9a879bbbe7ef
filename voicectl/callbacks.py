"""voicectl callbacks list|show|assign|complete|cancel|place: the tenant's callback queue.

list, show, assign, complete and cancel work on the database, as the other nouns do; ``place``
dials the task's number, so it asks the running runtime (``--url``, ``--key``, as ``calls place``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicectl import live_calls
from voicectl.common import (
    JsonOpt,
    LimitOpt,
    MaybeTenantOpt,
    OffsetOpt,
    TenantOpt,
    new_app,
    owning_tenant,
    page,
    print_page,
    resolve_tenant,
    run,
    show_record,
    when,
)

app = new_app("Callback tasks: the people to call back (list, show, assign, complete, cancel, place).")

CallbackArg = Annotated[str, typer.Argument(help="Callback task id (cb_...).", show_default=False)]
NoteOpt = Annotated[str | None, typer.Option("--note", help="A note added to the task's notes.", show_default=False)]


@app.command("list")
def list_(
    tenant: TenantOpt,
    status: Annotated[str | None, typer.Option(
        "--status", help="active (open, scheduled, in_progress), open, scheduled, in_progress, done or canceled.")] = None,
    assignee: Annotated[str | None, typer.Option("--assignee", help="Only this person's tasks.")] = None,
    limit: LimitOpt = 50,
    offset: OffsetOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List a tenant's callback tasks, due first."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.callbacks.list(tenant_id, page(limit, offset), status=status,
                                           assignee=assignee)).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "number", "status", "due", "overdue", "scheduled", "assignee", "attempts", "source", "reason"],
        [[t["id"], t["number"], t["status"], when(t["due_at"]), t["overdue"], when(t["scheduled_at"]),
          t["assignee"], t["attempts"], t["source"], t["reason"]] for t in result["items"]],
        title="callbacks", total=result["total"], offset=offset, empty="no callback tasks",
    )


@app.command("show")
def show(task_id: CallbackArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show a callback task."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await owning_tenant(plane, tenant, "callback_tasks", task_id, "callback task")
        return await plane.callbacks.get(tenant_id, task_id)

    show_record(run(go), as_json)


@app.command("assign")
def assign(
    task_id: CallbackArg,
    to: Annotated[str, typer.Option("--to", help="Who calls back (free text: a name, a team).", show_default=False)],
    note: NoteOpt = None,
    tenant: MaybeTenantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a waiting task to someone."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.callbacks import CallbackAssign

        body = CallbackAssign(assignee=to, notes=note)
        tenant_id = await owning_tenant(plane, tenant, "callback_tasks", task_id, "callback task")
        return await plane.callbacks.assign(tenant_id, task_id, body)

    data = run(go)
    show_record(data, as_json, f"callback {data['id']} assigned to {data['assignee']}")


@app.command("complete")
def complete(
    task_id: CallbackArg,
    disposition: Annotated[str, typer.Option("--disposition", help="How it ended, free text, e.g. reached, "
                                             "resolved, wrong_number.")] = "done",
    note: NoteOpt = None,
    tenant: MaybeTenantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a task as done."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.callbacks import CallbackComplete

        body = CallbackComplete(disposition=disposition, notes=note)
        tenant_id = await owning_tenant(plane, tenant, "callback_tasks", task_id, "callback task")
        return await plane.callbacks.complete(tenant_id, task_id, body)

    data = run(go)
    show_record(data, as_json, f"callback {data['id']} done ({data['disposition']})")


@app.command("cancel")
def cancel(task_id: CallbackArg, note: NoteOpt = None, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a task (nobody calls back)."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.callbacks import CallbackCancel

        body = CallbackCancel(notes=note)
        tenant_id = await owning_tenant(plane, tenant, "callback_tasks", task_id, "callback task")
        return await plane.callbacks.cancel(tenant_id, task_id, body)

    data = run(go)
    show_record(data, as_json, f"callback {data['id']} canceled")


@app.command("place")
def place(
    task_id: CallbackArg,
    from_: Annotated[str | None, typer.Option("--from", help="One of the tenant's numbers (default: the number "
                                              "the task's call used).", show_default=False)] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Agent id (default: the task's).",
                                              show_default=False)] = None,
    machine_detection: Annotated[str, typer.Option("--machine-detection", help="off, detect or voicemail.")] = "off",
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds to let it ring.")] = 30,
    url: live_calls.UrlOpt = None, key: live_calls.KeyOpt = None, tenant: live_calls.TenantIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Call the task's number back now, through the running runtime (the agent gets the task as variables)."""
    body: dict[str, Any] = {"machine_detection": machine_detection, "timeout_s": timeout}
    if from_ is not None:
        body["from"] = from_
    if agent is not None:
        body["agent_id"] = agent
    live_calls.call_api("POST", f"/api/v1/callbacks/{task_id}/place", body, url, key, tenant, as_json,
                        lambda data: f"placed {data['call_id']} ({data['status']}) for callback {task_id}")
