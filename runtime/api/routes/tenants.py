"""/api/v1/tenants: admin keys manage tenants; a runtime key may read its own tenant."""

from __future__ import annotations

from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.errors import NotFound
from runtime.control.models import Tenant
from runtime.control.schemas import TenantCreate, TenantUpdate


def _own(ctx: Ctx, tenant_id: str) -> None:
    # Runtime keys see their own tenant only; anything else does not exist for them.
    if not ctx.principal.is_admin and ctx.principal.tenant_id != tenant_id:
        raise NotFound(f"tenant {tenant_id} not found", {"tenant_id": tenant_id})


async def create_tenant(ctx: Ctx) -> Tenant:
    return await ctx.control.tenants.create(ctx.body)


async def list_tenants(ctx: Ctx):
    scope = ctx.principal.tenant_id if not ctx.principal.is_admin else None
    if scope is not None:
        return await ctx.control.tenants.list(ctx.page(), scope=scope)
    return await ctx.control.tenants.list(ctx.page())


async def get_tenant(ctx: Ctx) -> Tenant:
    tenant_id = ctx.param("tenant_id")
    _own(ctx, tenant_id)
    return await ctx.control.tenants.get(tenant_id)


async def update_tenant(ctx: Ctx) -> Tenant:
    return await ctx.control.tenants.update(ctx.param("tenant_id"), ctx.body)


async def delete_tenant(ctx: Ctx) -> None:
    await ctx.control.tenants.delete(ctx.param("tenant_id"))


ROUTES = [
    Route("POST", "/api/v1/tenants", create_tenant, "Create a tenant", auth="admin", body=TenantCreate,
          status=201, response=Tenant, tag="tenants"),
    Route("GET", "/api/v1/tenants", list_tenants, "List tenants (a runtime key sees its own)", auth="any",
          response=Tenant, paged=True, query=PAGE, tag="tenants"),
    Route("GET", "/api/v1/tenants/{tenant_id}", get_tenant, "Show a tenant", auth="any", response=Tenant,
          tag="tenants"),
    Route("PATCH", "/api/v1/tenants/{tenant_id}", update_tenant, "Update a tenant's settings and limits",
          auth="admin", body=TenantUpdate, response=Tenant, tag="tenants"),
    Route("DELETE", "/api/v1/tenants/{tenant_id}", delete_tenant,
          "Delete a tenant with all its rows and secrets", auth="admin", status=204, tag="tenants"),
]
