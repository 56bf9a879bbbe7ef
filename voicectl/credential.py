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
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    TenantOpt,
    errors,
    fail,
    new_app,
    page,
    parse_pairs,
    print_details,
    print_json,
    print_page,
    resolve_tenant,
    run,
    say,
    when,
)

app = new_app("Provider credentials per tenant (secrets go to the keyring, never printed).")


def _credential_names() -> str:
    """The credentials a tenant can hold, from the provider registry (a name-only module)."""
    from runtime.providers import registry

    return ", ".join(registry.CREDENTIALS)


ProviderArg = Annotated[str, typer.Argument(help=f"One of {_credential_names()}.", show_default=False)]


class EmptyStdin(Exception):
    """Nothing but whitespace came on stdin."""


def read_secret(provider: str, label: str, required: bool, existing: bool) -> str | None:
    """The secret from stdin when it is not a terminal, else from a hidden prompt; None when the
    prompt was answered with Enter (keep the stored secret, or none where it is optional).

    Empty stdin is an error (EmptyStdin), never "no change": ``printf %s "$TOKEN" | ...`` with
    an unset variable must not report success while the old secret stays. ``--no-secret`` says
    "keep the stored one" on purpose."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        value = stdin.read() if stdin is not None else ""
        if not value.strip():
            raise EmptyStdin
        return value.strip()
    if existing:
        hint = " (Enter keeps the stored one)"
    elif required:
        hint = ""
    else:
        hint = " (optional, Enter to skip)"
    value = typer.prompt(f"{provider} {label}{hint}", hide_input=True,
                         default=None if required and not existing else "", show_default=False, err=True)
    return value.strip() or None


def read_required_secret(provider: str, label: str) -> str:
    """A secret that must be given (stdin or a hidden prompt); a readable usage error otherwise."""
    try:
        secret = read_secret(provider, label, True, False)
    except EmptyStdin:
        secret = None
    if not secret:
        fail(f"no {provider} {label} given: pipe it on stdin (printf %s \"$SECRET\" | voicectl ...) "
             "or run in a terminal to be asked for it", EXIT_USAGE)
    return secret


def _secret_note(data: dict[str, Any], replaced: bool) -> str:
    if data.get("secret_updated"):
        return "secret stored: yes (the new one" + (", replacing the old one)" if replaced else ")")
    if data["secret_set"]:
        return "secret stored: yes (the one stored before, kept: no new secret was given)"
    return "secret stored: no"


def _show(data: dict[str, Any], as_json: bool, headline: str | None = None) -> None:
    if as_json:
        print_json(data)
        return
    if headline:
        say(headline)
    print_details({k: v for k, v in data.items() if k != "secret_updated"})


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
        bool, typer.Option("--no-secret", help="Do not read a secret: keep the stored one (or store none where it is "
                                               "optional). Without it, empty stdin is refused.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace a credential; the secret comes from stdin or a hidden prompt.

    Empty stdin is refused (exit 2): pass --no-secret to change only the fields and keep the
    stored secret. The output says whether the secret was replaced or kept.

    \b
    Example:
      printf %s "$TOKEN" | voicectl credential set --tenant acme twilio --field account_sid=AC...
    """
    fields = parse_pairs(field, "--field")
    with errors():
        from runtime.control.credentials import provider_spec

        spec = provider_spec(provider)

    async def existing_credential(plane: Any) -> dict[str, Any] | None:
        from runtime.control.errors import NotFound

        tenant_id = await resolve_tenant(plane, tenant)
        try:
            return (await plane.credentials.get(tenant_id, provider)).to_dict()
        except NotFound:
            return None

    before = run(existing_credential)
    had_secret = bool(before and before["secret_set"])
    secret = None
    if not no_secret:
        try:
            secret = read_secret(provider, spec.secret, spec.secret_required, had_secret)
        except EmptyStdin:
            keep = ("to keep the stored one" if had_secret else
                    "to store the credential without one" if not spec.secret_required else None)
            fail(f"stdin is empty: no secret (the {provider} {spec.secret}) to store. Pipe it in "
                 f"(printf %s \"$SECRET\" | voicectl credential set ...) or run in a terminal to be asked for it"
                 + (f"; or pass --no-secret {keep}" if keep else ""), EXIT_USAGE)

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

    data = run(go)
    data["secret_updated"] = secret is not None
    _show(data, as_json, f"stored {provider} credential ({data['id']}); {_secret_note(data, had_secret)}")


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
