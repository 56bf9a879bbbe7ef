"""Twilio: voice and status webhooks (signed by Twilio) and the Media Streams WebSocket."""

from __future__ import annotations

from aiohttp import web

from runtime.api.endpoint import Ctx, Route


async def twilio_voice(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.bridge import voice_webhook

    return await voice_webhook(ctx.request)


async def twilio_status(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.bridge import status_webhook

    return await status_webhook(ctx.request)


async def twilio_stream_status(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.bridge import stream_status_webhook

    return await stream_status_webhook(ctx.request)


async def twilio_media(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.media import serve

    return await serve(ctx.request)


ROUTES = [
    Route("POST", "/webhooks/twilio/voice", twilio_voice,
          "Twilio voice webhook (X-Twilio-Signature): routes the call, answers TwiML", auth="public",
          tag="telephony", errors=(400, 403), media_type="text/xml"),
    Route("POST", "/webhooks/twilio/status", twilio_status,
          "Twilio status callback (X-Twilio-Signature): updates the call", auth="public", tag="telephony",
          status=204, errors=(403,)),
    Route("POST", "/webhooks/twilio/stream-status", twilio_stream_status,
          "Twilio <Stream> status callback (X-Twilio-Signature): a stream error fails its call", auth="public",
          tag="telephony", status=204, errors=(403,)),
    Route("GET", "/media/twilio", twilio_media,
          "Twilio Media Streams WebSocket (stream token from the TwiML)", auth="public", tag="telephony",
          status=101, errors=(426,)),
]
