"""/api/v1/calls and /api/v1/events: read access to the call archive."""

from __future__ import annotations

from runtime.api.endpoint import PAGE, Ctx, QueryParam, Route


async def list_calls(ctx: Ctx):
    return await ctx.control.calls.list(ctx.tenant, ctx.page(), status=ctx.query("status"))


async def get_call(ctx: Ctx):
    return await ctx.control.calls.get(ctx.tenant, ctx.param("call_id"))


async def list_transcripts(ctx: Ctx):
    return await ctx.control.calls.transcripts(ctx.tenant, ctx.param("call_id"), ctx.page())


async def list_call_events(ctx: Ctx):
    return await ctx.control.calls.events(ctx.tenant, ctx.page(), call_id=ctx.param("call_id"))


async def list_events(ctx: Ctx):
    return await ctx.control.calls.events(ctx.tenant, ctx.page(), call_id=ctx.query("call_id"))


ROUTES = [
    Route("GET", "/api/v1/calls", list_calls, "List calls, newest first", paged=True,
          query=(*PAGE, QueryParam("status", description="ringing, connected, transferring, ended, failed")),
          tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}", get_call, "Show a call with its archive fields", tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/transcripts", list_transcripts, "A call's transcript", paged=True,
          query=PAGE, tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/events", list_call_events, "A call's events in order", paged=True,
          query=PAGE, tag="events"),
    Route("GET", "/api/v1/events", list_events, "Stored events of the tenant", paged=True,
          query=(*PAGE, QueryParam("call_id")), tag="events"),
]
