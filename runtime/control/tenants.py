"""Tenants: create, list, show, update limits, disable, delete (with their secrets)."""

from __future__ import annotations

from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.models import Tenant, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import TenantCreate, TenantUpdate
from runtime.ids import new_id, now_iso
from runtime.secrets import SecretStore
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS, TenantScope


class TenantService:
    def __init__(self, store: Store, secrets: SecretStore | None) -> None:
        self.store = store
        self.secrets = secrets

    async def create(self, data: TenantCreate) -> Tenant:
        now = now_iso()
        row = {"id": new_id("ten"), **data.model_dump(), "status": "active", "created_at": now, "updated_at": now}
        try:
            return from_row(Tenant, await self.store.tenants.insert(row))
        except UniqueViolation:
            raise Conflict(f"a tenant named {data.name!r} already exists", {"name": data.name}) from None

    async def get(self, tenant_id: str) -> Tenant:
        row = await self.store.tenants.get(tenant_id, tenant_id=ALL_TENANTS)
        if row is None:
            raise NotFound(f"tenant {tenant_id} not found", {"tenant_id": tenant_id})
        return from_row(Tenant, row)

    async def resolve(self, ref: str) -> Tenant:
        """An id or a unique name (the CLI's --tenant)."""
        row = await self.store.tenants.get(ref, tenant_id=ALL_TENANTS)
        if row is None:
            row = await self.store.tenants.find(tenant_id=ALL_TENANTS, name=ref)
        if row is None:
            raise NotFound(f"no tenant with id or name {ref!r}", {"tenant": ref})
        return from_row(Tenant, row)

    async def list(self, page: PageRequest, *, scope: TenantScope = ALL_TENANTS) -> Page[Tenant]:
        rows, total = await self.store.tenants.list(tenant_id=scope, limit=page.limit, offset=page.offset)
        return Page([from_row(Tenant, r) for r in rows], total, page.limit, page.offset)

    async def update(self, tenant_id: str, data: TenantUpdate) -> Tenant:
        changes = data.model_dump(exclude_unset=True)
        nulls = [k for k, v in changes.items() if v is None and k not in TenantUpdate.NULLABLE]
        if nulls:
            raise Invalid(f"{', '.join(nulls)} cannot be null", {"fields": nulls})
        if not changes:
            return await self.get(tenant_id)
        await self._check_gate(tenant_id, changes)
        changes["updated_at"] = now_iso()
        try:
            row = await self.store.tenants.update(tenant_id, changes, tenant_id=ALL_TENANTS)
        except UniqueViolation:
            raise Conflict(f"a tenant named {data.name!r} already exists", {"name": data.name}) from None
        if row is None:
            raise NotFound(f"tenant {tenant_id} not found", {"tenant_id": tenant_id})
        return from_row(Tenant, row)

    async def _check_gate(self, tenant_id: str, changes: dict) -> None:
        """The promotion gate is set whole (a suite of this tenant and a threshold) or not at all."""
        keys = ("rollout_required_suite_id", "rollout_min_eval_score")
        if not any(k in changes for k in keys):
            return
        current = (await self.get(tenant_id)).to_dict()
        suite, threshold = (changes[k] if k in changes else current[k] for k in keys)
        if (suite is None) != (threshold is None):
            raise Invalid("the promotion gate needs both rollout_required_suite_id and rollout_min_eval_score "
                          "(or neither: the gate is off)", {"fields": list(keys)})
        if "rollout_required_suite_id" in changes and suite is not None:
            if await self.store.eval_suites.get(suite, tenant_id=tenant_id) is None:
                raise Invalid(f"no suite {suite} in this tenant", {"rollout_required_suite_id": suite})

    async def delete(self, tenant_id: str) -> None:
        await self.get(tenant_id)
        refs = await self.store.secret_refs_for_tenant(tenant_id)
        await self.store.tenants.delete(tenant_id, tenant_id=ALL_TENANTS)  # rows cascade
        if self.secrets is not None:
            for ref in refs:
                await self.secrets.delete(ref)
