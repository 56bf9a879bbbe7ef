"""voicectl credential set|list|show|delete: per-tenant provider credentials.

Non-secret fields go to the database; the secret goes to the keyring and is
read from stdin (when stdin is not a terminal) or a hidden prompt. No command
ever prints a stored secret.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from voicectl.common import (
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    TenantOpt,
    errors,
    new_app,
    page,
    parse_pairs,
    print_json,
    print_page,
    resolve_tenant,
    run,
    say,
    show_record,
    when,
)

app = new_app("Provider credentials per tenant (secrets go to the keyring, never printed).")

ProviderArg = Annotated[
    str,
    typer.Argument(help="twilio, goto, livekit, deepgram, anthropic, openai, chatterbox, s3 or n8n.",
                   show_default=False),
]


def read_secret(provider: str, label: str, required: bool) -> str | None:
    """The secret from stdin when it is not a terminal, else from a hidden prompt; None when empty."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        value = stdin.read() if stdin is not None else ""
    else:
        value = typer.prompt(
            f"{provider} {label}" + ("" if required else " (optional, Enter to skip)"),
            hide_input=True, default=None if required else "", show_default=False, err=True,
        )
    value = value.strip()
    return value or None


def _show(data: dict[str, Any], as_json: bool, verb: str | None = None) -> None:
    secret = "yes" if data["secret_set"] else "no"
    show_record(data, as_json, verb and f"{verb} {data['provider']} credential ({data['id']}); secret stored: {secret}")


@app.command("set")
def set_(
    provider: ProviderArg,
    tenant: TenantOpt,
    field: Annotated[
        list[str] | None,
        typer.Option("--field", metavar="KEY=VALUE", help="Non-secret field as KEY=VALUE (repeatable), e.g. account_sid=AC...",
                     show_default=False),
    ] = None,
    no_secret: Annotated[
        bool, typer.Option("--no-secret", help="Do not read a secret (keep the stored one, or none where optional).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace a credential; the secret comes from stdin or a hidden prompt.

    \b
    Example:
      printf %s "$TOKEN" | voicectl credential set --tenant acme twilio --field account_sid=AC...
    """
    fields = parse_pairs(field, "--field")
    with errors():
        from runtime.control.credentials import provider_spec

        spec = provider_spec(provider)
    secret = None if no_secret else read_secret(provider, spec.secret, spec.secret_required)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.errors import Invalid
        from runtime.control.schemas import CredentialSet

        tenant_id = await resolve_tenant(plane, tenant)
        try:
            stored = await plane.credentials.set(tenant_id, provider, CredentialSet(fields=fields, secret=secret))
        except Invalid as exc:
            if exc.details.get("secret") == "missing":
                exc.message += " (pipe it on stdin, or run in a terminal to be asked for it)"
            raise
        return stored.to_dict()

    _show(run(go), as_json, "stored")


@app.command("list")
def list_(tenant: TenantOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List a tenant's credentials (fields and whether a secret is stored)."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.credentials.list(tenant_id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["provider", "id", "fields", "secret stored", "updated"],
        [[c["provider"], c["id"], c["fields"], c["secret_set"], when(c["updated_at"])] for c in result["items"]],
        title="credentials", total=result["total"], offset=offset,
    )


@app.command("show")
def show(provider: ProviderArg, tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """Show a credential's fields (never its secret)."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.credentials.get(tenant_id, provider)).to_dict()

    _show(run(go), as_json)


@app.command("delete")
def delete(provider: ProviderArg, tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """Delete a credential and its secret."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        found = await plane.credentials.get(tenant_id, provider)
        await plane.credentials.delete(tenant_id, provider)
        return {"id": found.id, "provider": provider, "deleted": True}

    data = run(go)
    if as_json:
        print_json(data)
    else:
        say(f"deleted {provider} credential ({data['id']})")
