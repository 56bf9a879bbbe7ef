"""/api/v1/calls and /api/v1/events: the call archive, and control of live calls."""

from __future__ import annotations

from typing import Any

from runtime.api.endpoint import PAGE, Ctx, QueryParam, Route
from runtime.api.live import live_ops
from runtime.calls.live_control import CallUpdate, HangupRequest, SayRequest, TransferRequest
from runtime.calls.outbound import PlaceCall


async def list_calls(ctx: Ctx):
    return await ctx.control.calls.list(ctx.tenant, ctx.page(), status=ctx.query("status"),
                                        direction=ctx.query("direction"))


async def place_call(ctx: Ctx) -> dict[str, Any]:
    from runtime.telephony.outbound import place
    from runtime.telephony.twilio.bridge import public_base

    return await place(ctx.request.app, ctx.tenant, ctx.body, public_base(ctx.request))


async def _on_call(ctx: Ctx, op: str) -> dict[str, Any]:
    """Live control runs on the instance holding the call (this one, or a peer in cluster mode)."""
    return await live_ops(ctx.request.app).run(op, ctx.tenant, ctx.param("call_id"), ctx.body)


async def hangup_call(ctx: Ctx) -> dict[str, Any]:
    return await _on_call(ctx, "call.hangup")


async def transfer_call(ctx: Ctx) -> dict[str, Any]:
    return await _on_call(ctx, "call.transfer")


async def say_on_call(ctx: Ctx) -> dict[str, Any]:
    return await _on_call(ctx, "call.say")


async def update_call(ctx: Ctx) -> dict[str, Any]:
    return await _on_call(ctx, "call.update")


async def get_call(ctx: Ctx):
    return await ctx.control.calls.get(ctx.tenant, ctx.param("call_id"))


async def list_transcripts(ctx: Ctx):
    return await ctx.control.calls.transcripts(ctx.tenant, ctx.param("call_id"), ctx.page())


async def list_tool_calls(ctx: Ctx):
    return await ctx.control.calls.tool_calls(ctx.tenant, ctx.param("call_id"), ctx.page())


async def list_call_events(ctx: Ctx):
    return await ctx.control.calls.events(ctx.tenant, ctx.page(), call_id=ctx.param("call_id"))


async def list_events(ctx: Ctx):
    return await ctx.control.calls.events(ctx.tenant, ctx.page(), call_id=ctx.query("call_id"))


_LIVE = (404, 409, 503, 504)  # 503/504: cluster mode, the call's instance is out of reach
ROUTES = [
    Route("GET", "/api/v1/calls", list_calls, "List calls, newest first", paged=True,
          query=(*PAGE, QueryParam("status", description="live (queued, dialing, ringing, connected or transferring), "
                                   "queued, dialing, ringing, connected, transferring, ended, failed"),
                 QueryParam("direction", description="inbound or outbound")),
          tag="calls", errors=(400,)),
    Route("POST", "/api/v1/calls", place_call,
          "Place an outbound call from one of the tenant's numbers: 201 {id, status: queued}", body=PlaceCall,
          status=201, tag="calls", rate_class="outbound", errors=(404, 409, 422, 429, 503)),
    Route("POST", "/api/v1/calls/{call_id}/hangup", hangup_call, "Hang up a live call", body=HangupRequest,
          tag="calls", rate_class="control", errors=_LIVE),
    Route("POST", "/api/v1/calls/{call_id}/transfer", transfer_call,
          "Transfer a connected call (cold, through its bridge)", body=TransferRequest, tag="calls",
          rate_class="control", errors=_LIVE),
    Route("POST", "/api/v1/calls/{call_id}/say", say_on_call,
          "The agent says a line now (interrupt) or after what it is saying", body=SayRequest, status=202,
          tag="calls", rate_class="control", errors=_LIVE),
    Route("PATCH", "/api/v1/calls/{call_id}", update_call,
          "Pause or resume the agent on a live call (the call, transcription and recording go on)",
          body=CallUpdate, tag="calls", rate_class="control", errors=_LIVE),
    Route("GET", "/api/v1/calls/{call_id}", get_call, "Show a call with its archive fields", tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/transcripts", list_transcripts, "A call's transcript", paged=True,
          query=PAGE, tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/tool-calls", list_tool_calls,
          "A call's tool calls in order: name, arguments, result, status, latency", paged=True, query=PAGE,
          tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/events", list_call_events, "A call's events in order", paged=True,
          query=PAGE, tag="events"),
    Route("GET", "/api/v1/events", list_events, "Stored events of the tenant", paged=True,
          query=(*PAGE, QueryParam("call_id")), tag="events"),
]
