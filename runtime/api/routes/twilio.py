"""Twilio: voice and status webhooks (signed by Twilio) and the Media Streams WebSocket."""

from __future__ import annotations

from aiohttp import web

from runtime.api.endpoint import Ctx, QueryParam, Route


async def twilio_voice(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.bridge import voice_webhook

    return await voice_webhook(ctx.request)


async def twilio_status(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.bridge import status_webhook

    return await status_webhook(ctx.request)


async def twilio_stream_status(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.bridge import stream_status_webhook

    return await stream_status_webhook(ctx.request)


async def twilio_amd(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.outbound import amd_callback

    return await amd_callback(ctx.request)


async def twilio_media(ctx: Ctx) -> web.StreamResponse:
    from runtime.telephony.twilio.media import serve

    return await serve(ctx.request)


ROUTES = [
    Route("POST", "/webhooks/twilio/voice", twilio_voice,
          "Twilio voice webhook (X-Twilio-Signature): routes the call, answers an outbound one (?call=&ref=) or an "
          "evaluation's synthetic call (?eval=&pin=, signed with the pin), with TwiML", auth="public",
          tag="telephony", errors=(400, 403), media_type="text/xml",
          query=(QueryParam("call", description="an outbound call's id (the Url given to Calls.create)"),
                 QueryParam("ref", description="the outbound call's signed reference"),
                 QueryParam("eval", description="an evaluation call's pin id"),
                 QueryParam("pin", description="the pin's single-use secret"))),
    Route("POST", "/webhooks/twilio/status", twilio_status,
          "Twilio status callback (X-Twilio-Signature): updates the call", auth="public", tag="telephony",
          status=204, errors=(400, 403), query=(QueryParam("call", description="an outbound call's id"),)),
    Route("POST", "/webhooks/twilio/amd", twilio_amd,
          "Twilio AsyncAmdStatusCallback (X-Twilio-Signature): who answered an outbound call", auth="public",
          tag="telephony", status=204, errors=(400, 403), query=(QueryParam("call", description="the call's id"),)),
    Route("POST", "/webhooks/twilio/stream-status", twilio_stream_status,
          "Twilio <Stream> status callback (X-Twilio-Signature): a stream error fails its call", auth="public",
          tag="telephony", status=204, errors=(403,)),
    Route("GET", "/media/twilio", twilio_media,
          "Twilio Media Streams WebSocket (stream token from the TwiML)", auth="public", tag="telephony",
          status=101, errors=(426,)),
]
