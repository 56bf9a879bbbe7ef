"""Read access to calls, transcripts and events (filled by the runtime plane)."""

from __future__ import annotations

from typing import Any

from runtime.control.errors import BadRequest, NotFound
from runtime.control.pagination import Page, PageRequest
from runtime.store.store import Store

LIVE_STATUSES = ("queued", "dialing", "ringing", "connected", "transferring")
CALL_STATUSES = ("live", *LIVE_STATUSES, "ended", "failed")


class CallReadService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def list(self, tenant_id: str, page: PageRequest, *, status: str | None = None,
                   direction: str | None = None) -> Page[dict[str, Any]]:
        """``status``: one call status, or ``live`` (ringing, connected or transferring)."""
        equals: dict[str, Any] = {}
        if status:
            if status not in CALL_STATUSES:
                raise BadRequest(f"status must be one of {', '.join(CALL_STATUSES)}", {"query": "status"})
            equals["status"] = LIVE_STATUSES if status == "live" else status
        if direction:
            if direction not in ("inbound", "outbound"):
                raise BadRequest("direction must be inbound or outbound", {"query": "direction"})
            equals["direction"] = direction
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

    async def tool_calls(self, tenant_id: str, call_id: str, page: PageRequest) -> Page[dict[str, Any]]:
        """A call's tool calls in the order they ran: name, arguments, result, status, latency."""
        await self.get(tenant_id, call_id)
        rows, total = await self.store.tool_calls.list(
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
