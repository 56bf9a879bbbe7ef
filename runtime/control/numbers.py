"""Phone numbers (routes): E.164, unique across tenants, routed to an agent (optionally a pinned version)."""

from __future__ import annotations

from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.models import PhoneNumber, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import NumberCreate, NumberUpdate
from runtime.ids import new_id, now_iso
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store


class NumberService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _check_target(self, tenant_id: str, agent_id: str, pinned: int | None) -> None:
        agent = await self.store.agents.get(agent_id, tenant_id=tenant_id)
        if agent is None:
            raise Invalid(f"agent {agent_id} not found", {"agent_id": agent_id})
        if pinned is not None and pinned > agent["latest_version"]:
            raise Invalid(f"agent {agent_id} has no version {pinned}", {"pinned_version": pinned})

    async def add(self, tenant_id: str, data: NumberCreate) -> PhoneNumber:
        await self._check_target(tenant_id, data.agent_id, data.pinned_version)
        now = now_iso()
        row = {"id": new_id("num"), "tenant_id": tenant_id, **data.model_dump(), "created_at": now, "updated_at": now}
        try:
            return from_row(PhoneNumber, await self.store.phone_numbers.insert(row))
        except UniqueViolation:
            # Same message whichever tenant holds it: never reveal another tenant's routes.
            raise Conflict(f"{data.e164} is already routed", {"e164": data.e164}) from None

    async def get(self, tenant_id: str, number_id: str) -> PhoneNumber:
        row = await self.store.phone_numbers.get(number_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"number {number_id} not found", {"number_id": number_id})
        return from_row(PhoneNumber, row)

    async def resolve(self, tenant_id: str, ref: str) -> PhoneNumber:
        """An id or the E.164 number itself."""
        row = await self.store.phone_numbers.get(ref, tenant_id=tenant_id)
        if row is None:
            row = await self.store.phone_numbers.find(tenant_id=tenant_id, e164=ref)
        if row is None:
            raise NotFound(f"no number {ref!r} in this tenant", {"number": ref})
        return from_row(PhoneNumber, row)

    async def list(self, tenant_id: str, page: PageRequest) -> Page[PhoneNumber]:
        rows, total = await self.store.phone_numbers.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset)
        return Page([from_row(PhoneNumber, r) for r in rows], total, page.limit, page.offset)

    async def update(self, tenant_id: str, number_id: str, data: NumberUpdate) -> PhoneNumber:
        current = await self.get(tenant_id, number_id)
        changes = data.model_dump(exclude_unset=True)
        if "agent_id" in changes and changes["agent_id"] is None:
            raise Invalid("agent_id cannot be null", {"agent_id": None})
        agent_id = changes.get("agent_id", current.agent_id)
        pinned = changes.get("pinned_version", current.pinned_version)
        await self._check_target(tenant_id, agent_id, pinned)
        if changes:
            changes["updated_at"] = now_iso()
        row = await self.store.phone_numbers.update(number_id, changes, tenant_id=tenant_id)
        return from_row(PhoneNumber, row)

    async def remove(self, tenant_id: str, number_id: str) -> None:
        if not await self.store.phone_numbers.delete(number_id, tenant_id=tenant_id):
            raise NotFound(f"number {number_id} not found", {"number_id": number_id})
