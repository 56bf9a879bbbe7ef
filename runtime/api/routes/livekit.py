"""LiveKit: the signed webhook, client tokens, agent dispatch and room egress of live calls."""

from __future__ import annotations

from aiohttp import web

from runtime.api.appkeys import SETTINGS
from runtime.api.endpoint import Ctx, QueryParam, Route
from runtime.control.errors import BadRequest
from runtime.providers.registry import require_extra
from runtime.telephony.livekit.control import (
    DispatchRequest,
    LiveKitDispatch,
    LiveKitEgress,
    LiveKitToken,
    TokenRequest,
)

# 409: no LiveKit project for the tenant (livekit_not_configured); 501: this install left out the
# livekit extra (not_installed: every handler checks first); 502: the LiveKit server refused or
# could not be reached (livekit_error).
LIVEKIT_ERRORS = (409, 501, 502)


async def livekit_webhook(ctx: Ctx) -> web.StreamResponse:
    require_extra("livekit")
    from runtime.telephony.livekit.webhooks import livekit_webhook as handle

    return await handle(ctx.request)


async def create_token(ctx: Ctx) -> LiveKitToken:
    require_extra("livekit")
    from runtime.telephony.livekit.control import mint_token

    return await mint_token(ctx.request.app[SETTINGS], ctx.control, ctx.tenant, ctx.body)


async def create_dispatch(ctx: Ctx) -> LiveKitDispatch:
    require_extra("livekit")
    from runtime.telephony.livekit.control import create_dispatch as dispatch

    return await dispatch(ctx.request.app[SETTINGS], ctx.control, ctx.tenant, ctx.body)


def _room(ctx: Ctx) -> str:
    import re

    from runtime.telephony.livekit.control import NAME_PATTERN

    room = ctx.query("room")
    if not room or not re.match(NAME_PATTERN, room):
        raise BadRequest("the room query parameter is required (letters, digits, _ . : = -)", {"query": "room"})
    return room


async def list_dispatches(ctx: Ctx) -> dict:
    require_extra("livekit")
    from runtime.telephony.livekit.control import list_dispatches as listed

    items = await listed(ctx.request.app[SETTINGS], ctx.control, ctx.tenant, _room(ctx))
    return {"items": [d.to_dict() for d in items]}


async def delete_dispatch(ctx: Ctx) -> None:
    require_extra("livekit")
    from runtime.telephony.livekit.control import delete_dispatch as delete

    await delete(ctx.request.app[SETTINGS], ctx.control, ctx.tenant, _room(ctx), ctx.param("dispatch_id"))


async def start_egress(ctx: Ctx) -> LiveKitEgress:
    require_extra("livekit")
    from runtime.telephony.livekit.bridge import bridge
    from runtime.telephony.livekit.control import start_egress as start

    return await start(ctx.control, bridge(ctx.request.app), ctx.tenant, ctx.param("call_id"),
                       force_path_style=ctx.request.app[SETTINGS].telephony.livekit.egress_force_path_style)


async def stop_egress(ctx: Ctx) -> LiveKitEgress:
    require_extra("livekit")
    from runtime.telephony.livekit.bridge import bridge
    from runtime.telephony.livekit.control import stop_egress as stop

    return await stop(bridge(ctx.request.app), ctx.tenant, ctx.param("call_id"), ctx.param("egress_id"))


ROOM = (QueryParam("room", description="room name as the tenant named it"),)

ROUTES = [
    Route("POST", "/webhooks/livekit", livekit_webhook,
          "LiveKit webhook (JWT in Authorization with the body's sha256): SIP and app callers, leaves, egress, "
          "dropped-webhook counts",
          auth="public", tag="telephony", errors=(400, 401, 403, 404, 409, 413, 501)),
    Route("POST", "/api/v1/livekit/tokens", create_token,
          "Mint a LiveKit room token for a browser/mobile client (with a number: the token names the call, "
          "and the agent answers when the client joins)",
          body=TokenRequest, status=201, response=LiveKitToken, tag="livekit", rate_class="realtime",
          errors=(404, *LIVEKIT_ERRORS)),
    Route("POST", "/api/v1/livekit/dispatches", create_dispatch,
          "Dispatch this runtime's agent into a room (AgentDispatchService)", body=DispatchRequest,
          status=201, response=LiveKitDispatch, tag="livekit", rate_class="session", errors=(404, *LIVEKIT_ERRORS)),
    Route("GET", "/api/v1/livekit/dispatches", list_dispatches, "The agent dispatches of a room", query=ROOM,
          tag="livekit", errors=(400, *LIVEKIT_ERRORS)),
    Route("DELETE", "/api/v1/livekit/dispatches/{dispatch_id}", delete_dispatch, "Remove an agent dispatch",
          query=ROOM, status=204, tag="livekit", errors=(400, 404, *LIVEKIT_ERRORS)),
    Route("POST", "/api/v1/livekit/calls/{call_id}/egress", start_egress,
          "Record a live LiveKit call with a room egress (to the tenant's s3 storage when set)", status=201,
          response=LiveKitEgress, tag="livekit", rate_class="recording", errors=(404, 409, *LIVEKIT_ERRORS)),
    Route("DELETE", "/api/v1/livekit/calls/{call_id}/egress/{egress_id}", stop_egress,
          "Stop a call's room egress", response=LiveKitEgress, tag="livekit", rate_class="recording",
          errors=(404, *LIVEKIT_ERRORS)),
]
