"""/api/v1/bookings and /api/v1/orders: what the sample booking pack's tools wrote (read only)."""

from __future__ import annotations

from typing import Any

from runtime.api.endpoint import PAGE, Ctx, QueryParam, Route


async def list_bookings(ctx: Ctx):
    return await ctx.control.bookings.bookings(ctx.tenant, ctx.page(), day=ctx.query("day"),
                                               call_id=ctx.query("call_id"))


async def get_booking(ctx: Ctx) -> dict[str, Any]:
    return await ctx.control.bookings.booking(ctx.tenant, ctx.param("booking_id"))


async def list_orders(ctx: Ctx):
    return await ctx.control.bookings.orders(ctx.tenant, ctx.page(), call_id=ctx.query("call_id"))


async def get_order(ctx: Ctx) -> dict[str, Any]:
    return await ctx.control.bookings.order(ctx.tenant, ctx.param("order_id"))


ROUTES = [
    Route("GET", "/api/v1/bookings", list_bookings, "List table bookings, newest first", paged=True,
          query=(*PAGE, QueryParam("day", description="only this date's (YYYY-MM-DD)"),
                 QueryParam("call_id", description="made on this call")), tag="bookings", errors=(400,)),
    Route("GET", "/api/v1/bookings/{booking_id}", get_booking, "Show a booking", tag="bookings"),
    Route("GET", "/api/v1/orders", list_orders, "List pickup orders, newest first", paged=True,
          query=(*PAGE, QueryParam("call_id", description="made on this call")), tag="bookings", errors=(400,)),
    Route("GET", "/api/v1/orders/{order_id}", get_order, "Show an order", tag="bookings"),
]
