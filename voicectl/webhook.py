"""voicectl webhook create|list|show|update|delete|rotate-secret|deliveries|redeliver|test: signed outbound
event webhooks."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    MaybeTenantOpt,
    OffsetOpt,
    TenantOpt,
    fail,
    new_app,
    owning_tenant,
    page,
    print_json,
    print_page,
    print_table,
    resolve_tenant,
    run,
    say,
    show_once,
    show_record,
    when,
)

app = new_app("Webhook configs: URL, event filter, signing secret (shown once).")

WebhookArg = Annotated[str, typer.Argument(help="Webhook id.", show_default=False)]
EventOpt = Annotated[
    list[str] | None,
    typer.Option("--event", "-e", metavar="PATTERN", help="Topic or glob to deliver, e.g. voice.call.* (repeatable; default: *).",
                 show_default=False),
]
DescriptionOpt = Annotated[str | None, typer.Option("--description", help="A note for humans.")]


async def _tenant(plane: Any, tenant: str | None, webhook_id: str) -> str:
    return await owning_tenant(plane, tenant, "webhook_configs", webhook_id, "webhook")


def _show(data: dict[str, Any], as_json: bool, verb: str | None = None) -> None:
    details = {k: v for k, v in data.items() if k != "signing_secret"}
    show_record(data, as_json, verb and f"{verb} webhook {data['id']} -> {data['url']}", details)


@app.command("create")
def create(
    tenant: TenantOpt,
    url: Annotated[str, typer.Option("--url", help="Where events are POSTed (http/https).", show_default=False)],
    event: EventOpt = None,
    description: DescriptionOpt = None,
    inactive: Annotated[bool, typer.Option("--inactive", help="Create it switched off.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a webhook; its signing secret is printed once."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import WebhookCreate

        tenant_id = await resolve_tenant(plane, tenant)
        values: dict[str, Any] = {"url": url, "active": not inactive, "description": description}
        if event:
            values["events"] = list(event)
        config, secret = await plane.webhooks.create(tenant_id, WebhookCreate(**values))
        return {**config.to_dict(), "signing_secret": secret}

    data = run(go)
    _show(data, as_json, "created")
    if not as_json:
        show_once("signing secret", data["signing_secret"])


@app.command("list")
def list_(tenant: TenantOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List a tenant's webhooks."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.webhooks.list(tenant_id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "url", "events", "status", "failures", "description"],
        [[w["id"], w["url"], w["events"], w["status"], w["consecutive_failures"], w["description"]]
         for w in result["items"]],
        title="webhooks", total=result["total"], offset=offset,
    )


@app.command("show")
def show(webhook: WebhookArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show a webhook (never its secret)."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await _tenant(plane, tenant, webhook)
        return (await plane.webhooks.get(tenant_id, webhook)).to_dict()

    _show(run(go), as_json)


@app.command("update")
def update(
    webhook: WebhookArg,
    tenant: MaybeTenantOpt = None,
    url: Annotated[str | None, typer.Option("--url", help="New URL.")] = None,
    event: EventOpt = None,
    description: DescriptionOpt = None,
    active: Annotated[bool | None, typer.Option(
        "--active/--inactive",
        help="Switch delivery on (a disabled webhook too: its failure count resets and its held deliveries go out) "
             "or off.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a webhook's URL, events, description or state."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import WebhookUpdate

        tenant_id = await _tenant(plane, tenant, webhook)
        values: dict[str, Any] = {}
        if url is not None:
            values["url"] = url
        if event:
            values["events"] = list(event)
        if description is not None:
            values["description"] = description
        if active is not None:
            values["active"] = active
        return (await plane.webhooks.update(tenant_id, webhook, WebhookUpdate(**values))).to_dict()

    _show(run(go), as_json, "updated")


@app.command("rotate-secret")
def rotate_secret(webhook: WebhookArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Replace the signing secret; the new one is printed once."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await _tenant(plane, tenant, webhook)
        config, secret = await plane.webhooks.rotate_secret(tenant_id, webhook)
        return {**config.to_dict(), "signing_secret": secret}

    data = run(go)
    if as_json:
        print_json(data)
        return
    say(f"rotated the signing secret of webhook {data['id']}")
    show_once("signing secret", data["signing_secret"])


@app.command("delete")
def delete(webhook: WebhookArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a webhook and its secret."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await _tenant(plane, tenant, webhook)
        await plane.webhooks.delete(tenant_id, webhook)
        return {"id": webhook, "deleted": True}

    data = run(go)
    if as_json:
        print_json(data)
    else:
        say(f"deleted webhook {data['id']}")


@app.command("deliveries")
def deliveries(webhook: WebhookArg, tenant: MaybeTenantOpt = None, limit: LimitOpt = 50, offset: OffsetOpt = 0,
               as_json: JsonOpt = False) -> None:
    """Show a webhook's deliveries, newest first, with the outcome of every attempt."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await _tenant(plane, tenant, webhook)
        return (await plane.webhooks.deliveries(tenant_id, webhook, page(limit, offset))).to_dict()

    result = run(go)
    if as_json:
        print_json(result)
        return

    def last(d: dict[str, Any]) -> str:
        if d["status"] == "delivered":
            return str(d["last_status_code"])
        return d["last_error"] or "-"

    print_table(
        ["id", "created", "topic", "event", "status", "attempts", "last result", "next attempt"],
        [[d["id"], when(d["created_at"]), d["topic"], d["event_id"], d["status"], d["attempts"], last(d),
          when(d["next_attempt_at"]) if d["status"] == "pending" else "-"] for d in result["items"]],
        title="deliveries", total=result["total"], offset=offset,
    )


@app.command("redeliver")
def redeliver(
    webhook: WebhookArg,
    tenant: MaybeTenantOpt = None,
    event: Annotated[str | None, typer.Option("--event", metavar="EVENT_ID", help="The delivery of one event.",
                                              show_default=False)] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="TIME", show_default=False,
        help="Deliveries created since TIME: ISO-8601 (no zone: UTC) or a duration before now, e.g. 2h, 30m, 1d.")] = None,
    failed: Annotated[bool, typer.Option(
        "--failed", help="Every delivery that failed for good, was skipped or is held.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send deliveries again, due now, with the same event ids (exactly one of --event, --since, --failed).
    A disabled webhook is switched back on."""
    if [event is not None, since is not None, failed].count(True) != 1:
        fail("give exactly one of --event EVENT_ID, --since TIME or --failed", EXIT_USAGE)
    from runtime.control.redelivery import WebhookRedeliver, parse_since

    if since is not None:
        try:
            since = parse_since(since)
        except ValueError as exc:
            fail(f"--since: {exc}", EXIT_USAGE)

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await _tenant(plane, tenant, webhook)
        selection = WebhookRedeliver(event_id=event, since=since, failed=failed)
        return (await plane.webhooks.redeliver(tenant_id, webhook, selection)).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
    else:
        n = data["queued"]
        say(f"queued {n} deliver{'y' if n == 1 else 'ies'} of webhook {webhook} (a running runtime sends "
            f"{'it' if n == 1 else 'them'} within a second)")


@app.command("test")
def test(webhook: WebhookArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Send a signed sample event (topic webhook.test) now and show the outcome."""
    from voicectl.common import errors, load_settings

    with errors():
        settings = load_settings()

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await _tenant(plane, tenant, webhook)
        result = await plane.webhooks.send_test(tenant_id, webhook, timeout_s=settings.events.webhooks.timeout_s)
        return result.to_dict()

    data = run(go, settings=settings)
    if as_json:
        print_json(data)
    elif data["delivered"]:
        say(f"delivered: HTTP {data['status_code']} in {data['duration_ms']} ms (event {data['event_id']})")
    else:
        say(f"not delivered: {data['error']} after {data['duration_ms']} ms (event {data['event_id']})")
    if not data["delivered"]:
        raise typer.Exit(1)
