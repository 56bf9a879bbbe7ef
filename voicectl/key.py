"""voicectl key create|list|revoke: admin and tenant runtime API keys (shown once)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    fail,
    new_app,
    page,
    print_details,
    print_json,
    print_table,
    resolve_tenant,
    run,
    say,
    show_once,
    when,
)

app = new_app("API keys: admin (all tenants) and runtime (one tenant); shown once.")


class Scope(StrEnum):
    runtime = "runtime"
    admin = "admin"


@app.command("create")
def create(
    scope: Annotated[Scope, typer.Option("--scope", help="runtime: one tenant; admin: every tenant.")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Tenant id or name (runtime keys only).", show_default=False)
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it once (it is stored hashed)."""
    if scope is Scope.runtime and not tenant:
        fail("runtime keys belong to one tenant: pass --tenant ID_OR_NAME", EXIT_USAGE)
    if scope is Scope.admin and tenant:
        fail("admin keys belong to no tenant: leave out --tenant", EXIT_USAGE)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import ApiKeyCreate

        tenant_id = await resolve_tenant(plane, tenant) if tenant else None
        record, key = await plane.keys.create(ApiKeyCreate(scope=scope.value, tenant_id=tenant_id, name=name))
        return {**record.to_dict(), "key": key}

    data = run(go)
    if as_json:
        print_json(data)
        return
    owner = f"tenant {data['tenant_id']}" if data["tenant_id"] else "all tenants"
    say(f"created {data['scope']} key {data['id']} ({owner})")
    show_once("key", data["key"])


@app.command("list")
def list_(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's keys (id or name).", show_default=False)
    ] = None,
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    limit: LimitOpt = 50,
    offset: OffsetOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List keys: prefix, last four, scope, created, last used (never the key)."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.store.tables import ALL_TENANTS

        scope = await resolve_tenant(plane, tenant) if tenant else ALL_TENANTS
        result = await plane.keys.list(page(limit, offset), tenant_id=scope, include_revoked=include_revoked)
        return result.to_dict()

    result = run(go)
    if as_json:
        print_json(result)
        return
    columns = ["id", "prefix", "last4", "scope", "tenant", "name", "created", "last used"]
    if include_revoked:
        columns.append("revoked")
    rows = []
    for k in result["items"]:
        row = [k["id"], k["prefix"] + "…", k["last4"], k["scope"], k["tenant_id"], k["name"],
               when(k["created_at"]), when(k["last_used_at"]) if k["last_used_at"] else "never"]
        if include_revoked:
            row.append(when(k["revoked_at"]) if k["revoked_at"] else "-")
        rows.append(row)
    print_table(columns, rows, title="API keys", total=result["total"], offset=offset)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see voicectl key list).", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key; it is refused at once."""

    async def go(plane: Any) -> dict[str, Any]:
        return (await plane.keys.revoke(key_id)).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
        return
    say(f"revoked key {data['id']} ({data['prefix']}…{data['last4']})")
    print_details({k: data[k] for k in ("scope", "tenant_id", "created_at", "revoked_at")})
