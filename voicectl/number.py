"""voicectl number add|list|show|update|remove: phone numbers (routes) to agents."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    MaybeTenantOpt,
    OffsetOpt,
    TenantOpt,
    errors,
    fail,
    load_settings,
    new_app,
    page,
    print_json,
    print_page,
    resolve_tenant,
    run,
    say,
    show_record,
)

app = new_app("Phone numbers (routes): E.164 number -> tenant -> agent.")


class Provider(StrEnum):
    twilio = "twilio"
    goto = "goto"
    livekit = "livekit"
    webrtc = "webrtc"


NumberArg = Annotated[str, typer.Argument(help="Number id or the E.164 number.", show_default=False)]
AgentOpt = Annotated[str, typer.Option("--agent", "-a", help="Agent id or name.", show_default=False, metavar="AGENT")]
PinOpt = Annotated[
    int | None, typer.Option("--pinned-version", help="Answer with this agent version instead of the active one.")
]
LabelOpt = Annotated[str | None, typer.Option("--label", help="A note for humans.")]


def _normalise(ref: str) -> str:
    """E.164 refs are compacted (+1 555-123-0001 -> +15551230001) before lookups."""
    if not ref.startswith("+"):
        return ref
    from runtime.control.schemas import check_e164

    try:
        return check_e164(ref) or ref
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


async def _number(plane: Any, tenant: str | None, ref: str) -> tuple[str, Any]:
    ref = _normalise(ref)
    if tenant:
        tenant_id = await resolve_tenant(plane, tenant)
    else:
        from runtime.control.errors import NotFound
        from runtime.store.tables import ALL_TENANTS

        if ref.startswith("+"):
            row = await plane.store.number_by_e164(ref)
        else:
            row = await plane.store.phone_numbers.get(ref, tenant_id=ALL_TENANTS)
        if row is None:
            raise NotFound(f"no number {ref!r}", {"number": ref})
        tenant_id = row["tenant_id"]
    return tenant_id, await plane.numbers.resolve(tenant_id, ref)


def _show(data: dict[str, Any], as_json: bool, verb: str | None = None) -> None:
    show_record(data, as_json, verb and f"{verb} number {data['e164']} ({data['id']})")


@app.command("add")
def add(
    e164: Annotated[str, typer.Argument(help="The number in E.164 form, e.g. +15551230001.", show_default=False)],
    tenant: TenantOpt,
    agent: AgentOpt,
    provider: Annotated[Provider, typer.Option("--provider", help="Who delivers the calls.")],
    pinned_version: PinOpt = None,
    label: LabelOpt = None,
    goto_new_channel: Annotated[bool, typer.Option(
        "--goto-new-channel",
        help="GoTo: register a new notification channel (and webhook token) even if the tenant has one.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Route a number to an agent (numbers are unique across tenants).

    With --provider goto, the tenant's GoTo notification channel, call-events subscription and
    web-call device with its extension are registered through GoTo's API first (once per tenant),
    with its goto credential; the GoTo admin then routes the number to that extension."""
    with errors():
        settings = load_settings()

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import NumberCreate

        tenant_id = await resolve_tenant(plane, tenant)
        target = await plane.agents.resolve(tenant_id, agent)
        data = NumberCreate(e164=e164, provider=provider.value, agent_id=target.id,
                            pinned_version=pinned_version, label=label)
        goto = None
        if provider is Provider.goto:
            goto = await _register_goto(plane, settings, tenant_id, data.e164, goto_new_channel)
        number = (await plane.numbers.add(tenant_id, data)).to_dict()
        return {**number, "goto": goto} if goto is not None else number

    result = run(go, settings=settings)
    goto = result.pop("goto", None)
    if as_json:
        print_json({**result, "goto": goto} if goto is not None else result)
        return
    _show(result, as_json, "added")
    if goto is not None:
        _say_goto(goto)


def _say_goto(goto: dict[str, Any]) -> None:
    if goto["registered"]:
        say(f"goto: registered notification channel {goto['channel_id']}")
        if goto["removed_channel"]:
            say(f"goto: deleted the old channel {goto['removed_channel']} and its device at GoTo")
    else:
        say(f"goto: the tenant's notification channel {goto['channel_id']} is already registered "
            "(--goto-new-channel replaces it)")
    if goto["call_events"] == "subscribed":
        say("goto: call events (STARTING, ACTIVE, ENDING) subscribed")
    else:
        say(f"warning: goto call events not subscribed ({goto['call_events']}); calls still arrive through the "
            "web-call device, without the caller's number when the offer lacks it", err=True)
    state = "registered" if goto["device_registered"] else "already registered"
    say(f"goto: web-call device {goto['device_id']} with extension {goto['extension']} {state}; "
        f"in GoTo's admin, route the number to extension {goto['extension']}")


async def _register_goto(plane: Any, settings: Any, tenant_id: str, e164: str, again: bool) -> dict[str, Any]:
    """Register the tenant's GoTo channel before the number is stored: a refusal stores nothing."""
    from runtime.control.errors import Conflict
    from runtime.telephony.goto.api import open_account
    from runtime.telephony.goto.channels import active_channel, register_channel, require_public_url

    if await plane.store.number_by_e164(e164) is not None:
        raise Conflict(f"{e164} is already routed", {"e164": e164})  # checked before GoTo is asked
    await open_account(plane.credentials, tenant_id, settings)  # a missing credential first: the likelier mistake
    if again or await active_channel(plane.store, tenant_id) is None:
        if not require_public_url(settings).startswith("https://"):
            say("warning: server.public_url is not https: GoTo only calls HTTPS webhooks on port 443", err=True)
    r = await register_channel(plane, settings, tenant_id, again=again)
    return {"channel_id": r.channel_id, "registered": r.registered, "device_id": r.device_id,
            "extension": r.extension, "device_registered": r.device_registered, "call_events": r.call_events,
            "removed_channel": r.removed_channel}


@app.command("list")
def list_(tenant: TenantOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List a tenant's numbers."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.numbers.list(tenant_id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "number", "provider", "agent", "pinned version", "label"],
        [[n["id"], n["e164"], n["provider"], n["agent_id"], n["pinned_version"], n["label"]]
         for n in result["items"]],
        title="numbers", total=result["total"], offset=offset,
    )


@app.command("show")
def show(number: NumberArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show a number's route."""

    async def go(plane: Any) -> dict[str, Any]:
        return (await _number(plane, tenant, number))[1].to_dict()

    _show(run(go), as_json)


@app.command("update")
def update(
    number: NumberArg,
    tenant: MaybeTenantOpt = None,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Route to this agent (id or name).")] = None,
    pinned_version: PinOpt = None,
    unpin: Annotated[bool, typer.Option("--unpin", help="Answer with the active version again.")] = False,
    label: LabelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-route a number, pin or unpin a version, change its label."""
    if unpin and pinned_version is not None:
        fail("give --pinned-version or --unpin, not both", EXIT_USAGE)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import NumberUpdate

        tenant_id, found = await _number(plane, tenant, number)
        changes: dict[str, Any] = {}
        if agent is not None:
            changes["agent_id"] = (await plane.agents.resolve(tenant_id, agent)).id
        if pinned_version is not None or unpin:
            changes["pinned_version"] = pinned_version
        if label is not None:
            changes["label"] = label
        return (await plane.numbers.update(tenant_id, found.id, NumberUpdate(**changes))).to_dict()

    _show(run(go), as_json, "updated")


@app.command("remove")
def remove(number: NumberArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a number's route (calls to it are no longer answered)."""

    with errors():
        settings = load_settings()

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _number(plane, tenant, number)
        await plane.numbers.remove(tenant_id, found.id)
        out: dict[str, Any] = {"id": found.id, "e164": found.e164, "deleted": True}
        if found.provider == "goto":
            out["goto_device_removed"] = await _unregister_goto(plane, settings, tenant_id)
        return out

    data = run(go, settings=settings)
    if as_json:
        print_json(data)
    else:
        say(f"removed number {data['e164']} ({data['id']})")
        if data.get("goto_device_removed"):
            say(f"goto: deleted the web-call device {data['goto_device_removed']} (the tenant's last GoTo number)")


async def _unregister_goto(plane: Any, settings: Any, tenant_id: str) -> str | None:
    """The tenant's last GoTo number went: its web-call device goes at GoTo too."""
    from runtime.control.errors import NotFound
    from runtime.telephony.goto.api import GotoApiError
    from runtime.telephony.goto.channels import unregister_device

    rows, _ = await plane.store.phone_numbers.list(tenant_id=tenant_id, equals={"provider": "goto"}, limit=1,
                                                    count=False)
    if rows:
        return None
    try:
        return await unregister_device(plane, settings, tenant_id)
    except (GotoApiError, NotFound) as exc:
        # The number is gone either way; the device stays known, and the next `number add` reuses it.
        say(f"warning: the GoTo web-call device was not deleted: {exc}", err=True)
        return None
