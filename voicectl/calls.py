"""voicectl calls list|show: the call log (read only; the runtime writes it)."""

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
    errors,
    load_settings,
    new_app,
    owning_tenant,
    page,
    print_details,
    print_json,
    print_page,
    print_table,
    resolve_tenant,
    run,
    say,
    when,
)

app = new_app("Call log: list calls, show one with its transcript and events; control live calls.")


async def _all(fetch: Any) -> list[dict[str, Any]]:
    """Every item of a paged read (200 at a time)."""
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        result = await fetch(page(200, offset))
        items.extend(result.items)
        offset += len(result.items)
        if not result.items or offset >= result.total:
            return items


def _duration(ms: Any) -> str:
    if ms is None:
        return "-"
    seconds = int(ms) // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"


@app.command("list")
def list_(
    tenant: TenantOpt,
    status: Annotated[str | None, typer.Option("--status", help="Only calls in this state, e.g. ended, or live.")] = None,
    direction: Annotated[str | None, typer.Option("--direction", help="inbound or outbound.")] = None,
    limit: LimitOpt = 50,
    offset: OffsetOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List a tenant's calls, newest first."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.calls.list(tenant_id, page(limit, offset), status=status, direction=direction)).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "started", "direction", "from", "to", "status", "duration", "end reason", "agent"],
        [[c["id"], when(c["started_at"]), c["direction"], c["from_number"], c["to_number"], c["status"],
          _duration(c["duration_ms"]), c["end_reason"], c["agent_id"]] for c in result["items"]],
        title="calls", total=result["total"], offset=offset, empty="no calls yet",
    )


@app.command("show")
def show(
    call_id: Annotated[str, typer.Argument(help="Call id.", show_default=False)],
    tenant: MaybeTenantOpt = None,
    events: Annotated[bool, typer.Option("--events", help="Also show the call's events.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a call with its transcript and tool calls (and events with --events)."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await owning_tenant(plane, tenant, "voice_calls", call_id, "call")
        call = await plane.calls.get(tenant_id, call_id)
        data = {**call, "transcript": await _all(lambda p: plane.calls.transcripts(tenant_id, call_id, p)),
                "tool_calls": await _all(lambda p: plane.calls.tool_calls(tenant_id, call_id, p))}
        if events:
            data["events"] = await _all(lambda p: plane.calls.events(tenant_id, p, call_id=call_id))
        return data

    data = run(go)
    if as_json:
        print_json(data)
        return
    print_details({k: v for k, v in data.items() if k not in ("transcript", "events", "tool_calls", "summary")},
                  title=f"call {call_id}")
    summary = data.get("summary") or {}
    if summary:
        print_details({k: summary.get(k) for k in ("text", "outcome", "intent", "entities", "sentiment", "follow_up",
                                                   "analysis") if k in summary}, title="summary")
    if data["transcript"]:
        say("")
        for line in data["transcript"]:
            mark = " (interrupted)" if line.get("interrupted") else ""
            say(f"  {line['role']:>9}: {line['text']}{mark}")
    else:
        say("no transcript")
    print_table(
        ["time", "tool", "arguments", "status", "ms", "result"],
        [[when(t["created_at"]), t["name"], t["arguments"], t["status"], t["latency_ms"], t["result"]]
         for t in data["tool_calls"]],
        title="tool calls", empty="none",
    )
    if events:
        print_table(
            ["seq", "time", "topic", "payload"],
            [[e["seq"], when(e["created_at"]), e["topic"], e["payload"]] for e in data["events"]],
            title="events", empty="none",
        )


@app.command("recording")
def recording(
    call_id: Annotated[str, typer.Argument(help="Call id.", show_default=False)],
    tenant: MaybeTenantOpt = None,
    kind: Annotated[str, typer.Option("--kind", help="mixed, caller or agent.")] = "mixed",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Copy the WAV to this file.",
                                            show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Locate a call's recording (or copy it to --out); one in S3 storage is fetched with the tenant's credential."""
    from runtime.recording.storage import LocalStorage

    with errors():
        settings = load_settings()

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.errors import NotFound

        tenant_id = await owning_tenant(plane, tenant, "voice_calls", call_id, "call")
        await plane.calls.get(tenant_id, call_id)
        rows, _ = await plane.store.recordings.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=10)
        row = next((r for r in rows if r["kind"] == kind), None)
        if row is None:
            raise NotFound(f"call {call_id} has no {kind} recording", {"call_id": call_id, "kind": kind})
        if row["storage"] == "s3":
            if out:
                from pathlib import Path

                from runtime.recording.objects import RecordingObjects

                objects = RecordingObjects.from_settings(plane.credentials, settings.recording.s3)
                await objects.download_to(tenant_id, row["uri"], Path(out))
            return {**row, "path": None}
        path = LocalStorage(settings.recording_dir).resolve(row["uri"])
        if not path.is_file():
            raise NotFound(f"the recording file {path} is missing", {"recording_id": row["id"]})
        return {**row, "path": str(path)}

    data = run(go, settings=settings)
    if out and data["path"] is not None:
        import shutil

        from runtime.files import private_opener

        with errors(), open(data["path"], "rb") as source, open(out, "wb", opener=private_opener) as copy:
            shutil.copyfileobj(source, copy)  # a new file 0600, as the recording itself
    if out:
        data["written_to"] = out
    if as_json:
        print_json(data)
    elif out:
        say(f"wrote {data['kind']} recording of {call_id} ({data['duration_ms'] / 1000:.1f} s) to {out}")
    else:
        say(data["path"] or data["uri"])


live_calls.register(app)
