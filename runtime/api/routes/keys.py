"""/api/v1/auth/api-keys: admin keys create and revoke keys; the key is shown once."""

from __future__ import annotations

from typing import Any

from runtime.api.endpoint import PAGE, Ctx, QueryParam, Route
from runtime.control.models import ApiKey
from runtime.control.schemas import ApiKeyCreate
from runtime.store.tables import ALL_TENANTS


async def create_key(ctx: Ctx) -> dict[str, Any]:
    record, key = await ctx.control.keys.create(ctx.body)
    return {**record.to_dict(), "key": key}


async def list_keys(ctx: Ctx):
    if ctx.principal.is_admin:
        scope = ctx.query("tenant_id") or ALL_TENANTS
    else:
        scope = ctx.principal.tenant_id
    return await ctx.control.keys.list(ctx.page(), tenant_id=scope)


async def revoke_key(ctx: Ctx) -> ApiKey:
    return await ctx.control.keys.revoke(ctx.param("key_id"))


ROUTES = [
    Route("POST", "/api/v1/auth/api-keys", create_key,
          "Create an API key (shown once; tenant_id required for runtime keys, absent for admin keys)",
          auth="admin", body=ApiKeyCreate, status=201, response=ApiKey, tag="auth", errors=(404,)),
    Route("GET", "/api/v1/auth/api-keys", list_keys, "List API keys (prefix and last four only)", auth="any",
          response=ApiKey, paged=True, query=(*PAGE, QueryParam("tenant_id", description="admin: filter")),
          tag="auth"),
    Route("DELETE", "/api/v1/auth/api-keys/{key_id}", revoke_key, "Revoke an API key at once", auth="admin",
          response=ApiKey, tag="auth"),
]
