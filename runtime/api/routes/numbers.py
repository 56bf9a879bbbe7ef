"""/api/v1/numbers: phone routes (admin keys change them; runtime keys read their own)."""

from __future__ import annotations

from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.models import PhoneNumber
from runtime.control.schemas import NumberCreate, NumberUpdate


async def add_number(ctx: Ctx) -> PhoneNumber:
    return await ctx.control.numbers.add(ctx.tenant, ctx.body)


async def list_numbers(ctx: Ctx):
    return await ctx.control.numbers.list(ctx.tenant, ctx.page())


async def get_number(ctx: Ctx) -> PhoneNumber:
    return await ctx.control.numbers.get(ctx.tenant, ctx.param("number_id"))


async def update_number(ctx: Ctx) -> PhoneNumber:
    return await ctx.control.numbers.update(ctx.tenant, ctx.param("number_id"), ctx.body)


async def remove_number(ctx: Ctx) -> None:
    await ctx.control.numbers.remove(ctx.tenant, ctx.param("number_id"))


ROUTES = [
    Route("GET", "/api/v1/numbers", list_numbers, "List phone numbers", response=PhoneNumber, paged=True,
          query=PAGE, tag="numbers"),
    Route("POST", "/api/v1/numbers", add_number, "Route a phone number to an agent", auth="tenant_admin",
          body=NumberCreate, status=201, response=PhoneNumber, tag="numbers"),
    Route("GET", "/api/v1/numbers/{number_id}", get_number, "Show a phone number", response=PhoneNumber,
          tag="numbers"),
    Route("PATCH", "/api/v1/numbers/{number_id}", update_number, "Re-route a phone number",
          auth="tenant_admin", body=NumberUpdate, response=PhoneNumber, tag="numbers"),
    Route("DELETE", "/api/v1/numbers/{number_id}", remove_number, "Remove a phone number",
          auth="tenant_admin", status=204, tag="numbers"),
]
