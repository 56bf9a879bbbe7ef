"""/api/v1/credentials/{provider}: write-only secrets (admin keys); fields readable by the tenant."""

from __future__ import annotations

from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.models import Credential
from runtime.control.schemas import CredentialSet


async def set_credential(ctx: Ctx) -> Credential:
    return await ctx.control.credentials.set(ctx.tenant, ctx.param("provider"), ctx.body)


async def list_credentials(ctx: Ctx):
    return await ctx.control.credentials.list(ctx.tenant, ctx.page())


async def get_credential(ctx: Ctx) -> Credential:
    return await ctx.control.credentials.get(ctx.tenant, ctx.param("provider"))


async def delete_credential(ctx: Ctx) -> None:
    await ctx.control.credentials.delete(ctx.tenant, ctx.param("provider"))


ROUTES = [
    Route("GET", "/api/v1/credentials", list_credentials, "List credentials (never the secrets)",
          response=Credential, paged=True, query=PAGE, tag="credentials"),
    Route("PUT", "/api/v1/credentials/{provider}", set_credential,
          "Create or replace a provider credential; the secret is write-only", auth="tenant_admin",
          body=CredentialSet, response=Credential, tag="credentials"),
    Route("GET", "/api/v1/credentials/{provider}", get_credential, "Show a credential's fields",
          response=Credential, tag="credentials"),
    Route("DELETE", "/api/v1/credentials/{provider}", delete_credential,
          "Delete a credential and its secret", auth="tenant_admin", status=204, tag="credentials"),
]
