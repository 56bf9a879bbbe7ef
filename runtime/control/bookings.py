"""Read access to the sample booking pack's records: bookings and pickup orders (written by the
runtime's check_availability / create_booking / create_order tools, runtime.tools.booking)."""

from __future__ import annotations

from datetime import date
from typing import Any

from runtime.control.errors import BadRequest, NotFound
from runtime.control.pagination import Page, PageRequest
from runtime.store.store import Store


class BookingReadService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def bookings(self, tenant_id: str, page: PageRequest, *, day: str | None = None,
                       call_id: str | None = None) -> Page[dict[str, Any]]:
        """Newest first; ``day``: only that date's (YYYY-MM-DD, the tenant's local date)."""
        equals: dict[str, Any] = {}
        if day:
            try:
                equals["day"] = date.fromisoformat(day).isoformat()
            except ValueError:
                raise BadRequest(f"day {day!r} is not a date like 2025-06-01", {"query": "day"}) from None
        if call_id:
            equals["call_id"] = call_id
        rows, total = await self.store.bookings.list(tenant_id=tenant_id, equals=equals, limit=page.limit,
                                                     offset=page.offset, descending=True)
        return Page(rows, total, page.limit, page.offset)

    async def booking(self, tenant_id: str, booking_id: str) -> dict[str, Any]:
        row = await self.store.bookings.get(booking_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"booking {booking_id} not found", {"booking_id": booking_id})
        return row

    async def orders(self, tenant_id: str, page: PageRequest, *, call_id: str | None = None) -> Page[dict[str, Any]]:
        """Newest first."""
        equals = {"call_id": call_id} if call_id else {}
        rows, total = await self.store.orders.list(tenant_id=tenant_id, equals=equals, limit=page.limit,
                                                   offset=page.offset, descending=True)
        return Page(rows, total, page.limit, page.offset)

    async def order(self, tenant_id: str, order_id: str) -> dict[str, Any]:
        row = await self.store.orders.get(order_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"order {order_id} not found", {"order_id": order_id})
        return row
