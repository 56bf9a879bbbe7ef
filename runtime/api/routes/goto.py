"""GoTo Connect: notification-channel deliveries, verified by the secret token in the path."""

from __future__ import annotations

from aiohttp import web

from runtime.api.endpoint import Ctx, Route


async def goto_webhook(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.goto.bridge import webhook

    return await webhook(ctx.request)


async def goto_validate(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.goto.bridge import validate

    return await validate(ctx.request)


ROUTES = [
    Route("POST", "/webhooks/goto/{token}", goto_webhook,
          "GoTo Connect call events and web-call offers (secret path token): opens, answers, ends calls",
          auth="public", tag="telephony", errors=(400, 404, 409, 413, 502, 503)),
    Route("OPTIONS", "/webhooks/goto/{token}", goto_validate,
          "GoTo's URL validation of the notification channel (200 for a known token)", auth="public",
          tag="telephony", errors=(404,)),
]
