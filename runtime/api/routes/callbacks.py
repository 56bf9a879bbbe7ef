"""/api/v1/callbacks: the tenant's callback queue (runtime.control.callbacks)."""

from __future__ import annotations

from typing import Any

from runtime.api.endpoint import PAGE, Ctx, QueryParam, Route
from runtime.control.callbacks import CallbackAssign, CallbackCancel, CallbackComplete, CallbackPlace


async def list_callbacks(ctx: Ctx):
    return await ctx.control.callbacks.list(ctx.tenant, ctx.page(), status=ctx.query("status"),
                                            assignee=ctx.query("assignee"), call_id=ctx.query("call_id"))


async def get_callback(ctx: Ctx) -> dict[str, Any]:
    return await ctx.control.callbacks.get(ctx.tenant, ctx.param("callback_id"))


async def assign_callback(ctx: Ctx) -> dict[str, Any]:
    return await ctx.control.callbacks.assign(ctx.tenant, ctx.param("callback_id"), ctx.body)


async def complete_callback(ctx: Ctx) -> dict[str, Any]:
    return await ctx.control.callbacks.complete(ctx.tenant, ctx.param("callback_id"), ctx.body)


async def cancel_callback(ctx: Ctx) -> dict[str, Any]:
    return await ctx.control.callbacks.cancel(ctx.tenant, ctx.param("callback_id"), ctx.body)


async def place_callback(ctx: Ctx) -> dict[str, Any]:
    from runtime.telephony.callbacks import place_callback as place
    from runtime.telephony.twilio.bridge import public_base

    return await place(ctx.request.app, ctx.tenant, ctx.param("callback_id"), ctx.body, public_base(ctx.request))


ROUTES = [
    Route("GET", "/api/v1/callbacks", list_callbacks, "List callback tasks, due first", paged=True,
          query=(*PAGE, QueryParam("status", description="active (open, scheduled or in_progress), open, scheduled, "
                                   "in_progress, done, canceled"),
                 QueryParam("assignee"), QueryParam("call_id", description="the call that made the task")),
          tag="callbacks", errors=(400,)),
    Route("GET", "/api/v1/callbacks/{callback_id}", get_callback, "Show a callback task", tag="callbacks"),
    Route("POST", "/api/v1/callbacks/{callback_id}/assign", assign_callback,
          "Give a waiting callback task to someone (free text), with an optional note", body=CallbackAssign,
          tag="callbacks", errors=(404, 409, 422)),
    Route("POST", "/api/v1/callbacks/{callback_id}/complete", complete_callback,
          "Close a callback task as done with a disposition (callback.completed)", body=CallbackComplete,
          tag="callbacks", errors=(404, 409, 422)),
    Route("POST", "/api/v1/callbacks/{callback_id}/cancel", cancel_callback,
          "Cancel a callback task (callback.completed, status canceled)", body=CallbackCancel, tag="callbacks",
          errors=(404, 409, 422)),
    Route("POST", "/api/v1/callbacks/{callback_id}/place", place_callback,
          "Call the task's number back now with its agent and context (POST /api/v1/calls's checks): "
          "201 {call_id, status, callback}", body=CallbackPlace, status=201, tag="callbacks", rate_class="outbound",
          errors=(404, 409, 422, 429, 503)),
]
