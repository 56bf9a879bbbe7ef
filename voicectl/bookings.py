"""voicectl bookings list|show and voicectl orders list|show: what the sample booking pack's tools
wrote (read only; the runtime's create_booking and create_order make them)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicectl.common import (
    JsonOpt,
    LimitOpt,
    MaybeTenantOpt,
    OffsetOpt,
    TenantOpt,
    new_app,
    owning_tenant,
    page,
    print_page,
    resolve_tenant,
    run,
    show_record,
    when,
)

bookings_app = new_app("Table bookings made by calls (the create_booking tool): list, show.")
orders_app = new_app("Pickup orders made by calls (the create_order tool): list, show.")
CallOpt = Annotated[str | None, typer.Option("--call", help="Only those made on this call.", show_default=False)]


@bookings_app.command("list")
def list_bookings(
    tenant: TenantOpt,
    day: Annotated[str | None, typer.Option("--day", help="Only this date's (YYYY-MM-DD).", show_default=False)] = None,
    call: CallOpt = None,
    limit: LimitOpt = 50,
    offset: OffsetOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List a tenant's bookings, newest first."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.bookings.bookings(tenant_id, page(limit, offset), day=day, call_id=call)).to_dict()

    result = run(go)
    print_page(
        result, as_json, ["id", "reference", "date", "time", "party", "name", "phone", "status", "call", "created"],
        [[b["id"], b["reference"], b["day"], b["time"], b["party_size"], b["name"], b["phone"], b["status"],
          b["call_id"], when(b["created_at"])] for b in result["items"]],
        title="bookings", total=result["total"], offset=offset, empty="no bookings",
    )


@bookings_app.command("show")
def show_booking(booking_id: Annotated[str, typer.Argument(help="Booking id (bkg_...).", show_default=False)],
                 tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show a booking."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await owning_tenant(plane, tenant, "bookings", booking_id, "booking")
        return await plane.bookings.booking(tenant_id, booking_id)

    show_record(run(go), as_json)


@orders_app.command("list")
def list_orders(tenant: TenantOpt, call: CallOpt = None, limit: LimitOpt = 50, offset: OffsetOpt = 0,
                as_json: JsonOpt = False) -> None:
    """List a tenant's pickup orders, newest first."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.bookings.orders(tenant_id, page(limit, offset), call_id=call)).to_dict()

    result = run(go)
    print_page(
        result, as_json, ["id", "reference", "items", "total", "pickup", "name", "phone", "status", "call", "created"],
        [[o["id"], o["reference"], ", ".join(f"{i['qty']} {i['name']}" for i in o["items"]),
          f"{o['total_cents'] / 100:.2f} {o['currency']}", o["pickup_time"], o["name"], o["phone"], o["status"],
          o["call_id"], when(o["created_at"])] for o in result["items"]],
        title="orders", total=result["total"], offset=offset, empty="no orders",
    )


@orders_app.command("show")
def show_order(order_id: Annotated[str, typer.Argument(help="Order id (ord_...).", show_default=False)],
               tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show an order."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await owning_tenant(plane, tenant, "orders", order_id, "order")
        return await plane.bookings.order(tenant_id, order_id)

    show_record(run(go), as_json)
