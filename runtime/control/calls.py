"""Read access to calls, transcripts and events (filled by the runtime plane)."""

from __future__ import annotations

from typing import Any

from runtime.control.errors import NotFound
from runtime.control.pagination import Page, PageRequest
from runtime.store.store import Store


class CallReadService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def list(self, tenant_id: str, page: PageRequest, *, status: str | None = None) -> Page[dict[str, Any]]:
        equals = {"status": status} if status else {}
        rows, total = await self.store.voice_calls.list(
            tenant_id=tenant_id, equals=equals, limit=page.limit, offset=page.offset, descending=True
        )
        return Page(rows, total, page.limit, page.offset)

    async def get(self, tenant_id: str, call_id: str) -> dict[str, Any]:
        row = await self.store.voice_calls.get(call_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"call {call_id} not found", {"call_id": call_id})
        return row

    async def transcripts(self, tenant_id: str, call_id: str, page: PageRequest) -> Page[dict[str, Any]]:
        await self.get(tenant_id, call_id)
        rows, total = await self.store.transcripts.list(
            tenant_id=tenant_id, equals={"call_id": call_id}, limit=page.limit, offset=page.offset
        )
        return Page(rows, total, page.limit, page.offset)

    async def events(self, tenant_id: str, page: PageRequest, *, call_id: str | None = None) -> Page[dict[str, Any]]:
        equals: dict[str, Any] = {}
        if call_id is not None:
            await self.get(tenant_id, call_id)
            equals["call_id"] = call_id
        rows, total = await self.store.call_events.list(
            tenant_id=tenant_id, equals=equals, limit=page.limit, offset=page.offset
        )
        return Page(rows, total, page.limit, page.offset)
