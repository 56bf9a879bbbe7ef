"""voicectl tenant create|list|show|update|disable|enable|delete."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    YesOpt,
    fail,
    new_app,
    page,
    print_json,
    print_page,
    run,
    say,
    show_record,
    when,
)

app = new_app("Tenants: create, list, show, update limits, disable/enable, delete.")

TenantArg = Annotated[str, typer.Argument(help="Tenant id or name.", show_default=False)]
TimezoneOpt = Annotated[str | None, typer.Option("--timezone", help="IANA time zone, e.g. Europe/Berlin.")]
MaxCallsOpt = Annotated[int | None, typer.Option("--max-concurrent-calls", help="Most calls at once (1-10000).")]
MaxDurationOpt = Annotated[
    int | None, typer.Option("--max-call-duration", help="Longest call in seconds (30-86400).")
]
RecordingOpt = Annotated[bool | None, typer.Option("--recording/--no-recording", help="Record calls.")]
RetentionOpt = Annotated[int | None, typer.Option("--retention-days", help="Keep call data this many days.")]
PrefixOpt = Annotated[list[str] | None, typer.Option(
    "--outbound-prefix", metavar="PREFIX", show_default=False,
    help="A prefix outbound calls may dial, e.g. +1415 (repeatable; replaces the list; default: the country "
         "codes of the tenant's numbers).")]
OutboundPerDayOpt = Annotated[int | None, typer.Option(
    "--max-outbound-per-day", help="Outbound calls per day in the tenant's time zone (0: none; default 100).")]
SlaOpt = Annotated[int | None, typer.Option(
    "--callback-sla-minutes", help="A callback task is due this long after it is wanted (1-43200; default 240).")]
AutoDialOpt = Annotated[bool | None, typer.Option(
    "--callback-auto-dial/--no-callback-auto-dial",
    help="Dial scheduled callback tasks when their time comes (default off).")]


def _fields(
    timezone: str | None, max_calls: int | None, max_duration: int | None, recording: bool | None,
    retention: int | None, prefixes: list[str] | None = None, per_day: int | None = None,
    sla: int | None = None, auto_dial: bool | None = None,
) -> dict[str, Any]:
    values = {
        "timezone": timezone,
        "max_concurrent_calls": max_calls,
        "max_call_duration_s": max_duration,
        "recording_enabled": recording,
        "retention_days": retention,
        "outbound_allowed_prefixes": prefixes or None,
        "max_outbound_per_day": per_day,
        "callback_sla_minutes": sla,
        "callback_auto_dial": auto_dial,
    }
    return {k: v for k, v in values.items() if v is not None}


def _show(data: dict[str, Any], as_json: bool, verb: str | None = None) -> None:
    show_record(data, as_json, verb and f"{verb} tenant {data['name']} ({data['id']})")


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Unique tenant name.", show_default=False)],
    timezone: TimezoneOpt = None,
    max_concurrent_calls: MaxCallsOpt = None,
    max_call_duration: MaxDurationOpt = None,
    recording: RecordingOpt = None,
    retention_days: RetentionOpt = None,
    outbound_prefix: PrefixOpt = None,
    max_outbound_per_day: OutboundPerDayOpt = None,
    callback_sla_minutes: SlaOpt = None,
    callback_auto_dial: AutoDialOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import TenantCreate

        data = TenantCreate(name=name, **_fields(timezone, max_concurrent_calls, max_call_duration, recording,
                                                 retention_days, outbound_prefix, max_outbound_per_day,
                                                 callback_sla_minutes, callback_auto_dial))
        return (await plane.tenants.create(data)).to_dict()

    _show(run(go), as_json, "created")


@app.command("list")
def list_(limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List tenants."""

    async def go(plane: Any) -> dict[str, Any]:
        return (await plane.tenants.list(page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "name", "status", "timezone", "max calls", "max duration s", "recording", "retention d", "created"],
        [
            [t["id"], t["name"], t["status"], t["timezone"], t["max_concurrent_calls"], t["max_call_duration_s"],
             t["recording_enabled"], t["retention_days"], when(t["created_at"])]
            for t in result["items"]
        ],
        title="tenants", total=result["total"], offset=offset, empty="none yet (voicectl tenant create NAME)",
    )


@app.command("show")
def show(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Show one tenant."""

    async def go(plane: Any) -> dict[str, Any]:
        return (await plane.tenants.resolve(tenant)).to_dict()

    _show(run(go), as_json)


@app.command("update")
def update(
    tenant: TenantArg,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    timezone: TimezoneOpt = None,
    max_concurrent_calls: MaxCallsOpt = None,
    max_call_duration: MaxDurationOpt = None,
    recording: RecordingOpt = None,
    retention_days: RetentionOpt = None,
    outbound_prefix: PrefixOpt = None,
    max_outbound_per_day: OutboundPerDayOpt = None,
    default_prefixes: Annotated[bool, typer.Option(
        "--default-outbound-prefixes", help="Back to the country codes of the tenant's numbers.")] = False,
    callback_sla_minutes: SlaOpt = None,
    callback_auto_dial: AutoDialOpt = None,
    rollout_required_suite: Annotated[str | None, typer.Option(
        "--rollout-required-suite", help="The promotion gate: the suite id a version's latest evaluation must be "
                                         "on (with --rollout-min-eval-score).", show_default=False)] = None,
    rollout_min_eval_score: Annotated[float | None, typer.Option(
        "--rollout-min-eval-score", help="The gate's minimum score, 0-1.", min=0.0, max=1.0, show_default=False)] = None,
    no_gate: Annotated[bool, typer.Option("--no-rollout-gate", help="Turn the promotion gate off.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a tenant's name, limits or promotion gate."""
    if default_prefixes and outbound_prefix:
        fail("give --outbound-prefix or --default-outbound-prefixes, not both", EXIT_USAGE)
    if no_gate and (rollout_required_suite is not None or rollout_min_eval_score is not None):
        fail("give --no-rollout-gate or --rollout-required-suite/--rollout-min-eval-score, not both", EXIT_USAGE)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import TenantUpdate

        changes = _fields(timezone, max_concurrent_calls, max_call_duration, recording, retention_days,
                          outbound_prefix, max_outbound_per_day, callback_sla_minutes, callback_auto_dial)
        if name is not None:
            changes["name"] = name
        if default_prefixes:
            changes["outbound_allowed_prefixes"] = None
        if rollout_required_suite is not None:
            changes["rollout_required_suite_id"] = rollout_required_suite
        if rollout_min_eval_score is not None:
            changes["rollout_min_eval_score"] = rollout_min_eval_score
        if no_gate:
            changes["rollout_required_suite_id"] = changes["rollout_min_eval_score"] = None
        data = TenantUpdate(**changes)
        current = await plane.tenants.resolve(tenant)
        return (await plane.tenants.update(current.id, data)).to_dict()

    _show(run(go), as_json, "updated")


def _set_status(tenant: str, status: str, as_json: bool) -> None:
    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import TenantUpdate

        current = await plane.tenants.resolve(tenant)
        return (await plane.tenants.update(current.id, TenantUpdate(status=status))).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
    else:
        say(f"tenant {data['name']} ({data['id']}) is {data['status']}")


@app.command("disable")
def disable(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Disable a tenant: its runtime keys are refused and its numbers stop answering."""
    _set_status(tenant, "disabled", as_json)


@app.command("enable")
def enable(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Enable a disabled tenant."""
    _set_status(tenant, "active", as_json)


@app.command("delete")
def delete(tenant: TenantArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a tenant with everything it owns (agents, numbers, keys, credentials, calls)."""

    async def find(plane: Any) -> dict[str, Any]:
        return (await plane.tenants.resolve(tenant)).to_dict()

    found = run(find)
    if not yes:
        typer.confirm(
            f"Delete tenant {found['name']} ({found['id']}) and everything it owns?", abort=True, err=True
        )

    async def go(plane: Any) -> None:
        await plane.tenants.delete(found["id"])

    run(go)
    if as_json:
        print_json({"id": found["id"], "name": found["name"], "deleted": True})
    else:
        say(f"deleted tenant {found['name']} ({found['id']})")
