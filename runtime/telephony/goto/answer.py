"""Answering a GoTo web call over WebRTC: GoTo's SDP offer in, our answer out through the web-calls API.

A web call offered to the tenant's device belongs to the call its call-events STARTING opened
(named by the offer's conversation id, or else the tenant's one call still waiting for an offer);
without one, the offer opens the call itself, routed by the device's extension. GoTo's offer is checked by the WebRTC bridge's offer check (audio
section, ICE credentials, DTLS, a codec we speak) before GoTo hears anything; then the line is
marked ringing, the aiortc bridge (runtime.telephony.webrtc.bridge.answer_offer) builds the peer wired to
the conversation and returns the answer, which is posted to ``/web-calls/v1/calls/{id}/answer``
with our channel as the in-call channel. The bridge connects the call when the media is up. Any
failure fails this call (voice.call.failed) with a clear JSON error and touches nothing else; the
web call is rejected at GoTo where that is still possible.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from runtime.calls.routing import RouteRejected
from runtime.calls.session import CallSession
from runtime.control.errors import NotFound
from runtime.telephony.goto.api import GotoApi, GotoApiError, api_for, open_account
from runtime.telephony.goto.assumptions import IncomingCall
from runtime.telephony.goto.bridge import (
    DECLINED,
    IGNORED,
    LIVE,
    PROVIDER,
    REJECTED,
    GotoConversation,
    bridge,
    ignored,
    route_call,
)
from runtime.telephony.services import services
from runtime.web.responses import json_response

log = logging.getLogger("voicectl.goto")


class GotoControl:
    """CallControl for a GoTo web call: the engine hangs up through GoTo's API (after the WebRTC
    bridge's own control has kept its media counts); the peer closes with the session."""

    def __init__(self, app: web.Application, session: CallSession, web_call_id: str, inner: Any = None) -> None:
        self.app, self.session, self.web_call_id, self.inner = app, session, web_call_id, inner

    async def hangup(self, reason: str) -> None:
        if self.inner is not None:
            await self.inner.hangup(reason)
        async with aiohttp.ClientSession() as http:
            api = await _api(self.app, self.session.tenant_id, http)
            await api.hangup(self.web_call_id)

    async def transfer(self, target: str) -> None:
        # GoTo's web-calls API documents no transfer: end the call rather than leave it hanging
        # in "transferring" (the agent has already told the caller).
        log.warning("goto calls cannot be transferred; hanging up", extra={"call_id": self.session.id})
        await self.session.hangup("transfer_unsupported")


async def _api(app: web.Application, tenant_id: str, http: aiohttp.ClientSession) -> GotoApi:
    control = services(app).control
    account = await open_account(control.credentials, tenant_id, services(app).settings)
    return api_for(services(app).settings, account, http, bridge(app).tokens, control.credentials)


async def _reject_quietly(api: GotoApi | None, web_call_id: str) -> None:
    if api is None:
        return
    try:
        await api.reject(web_call_id)
    except GotoApiError as exc:
        log.warning("rejecting the goto web call failed", extra={"step": exc.step, "status": exc.http_status})


async def _failed(session: CallSession, reason: str, message: str, status: int, api: GotoApi | None,
                  web_call_id: str) -> web.Response:
    """That call failed (and its web call rejected at GoTo); the delivery itself is taken (2xx)."""
    await session.fail(reason, message)
    await _reject_quietly(api, web_call_id)
    return json_response({"status": "failed", "reason": reason, "message": message, "call_id": session.id})


def _waiting_for_offer(app: web.Application, tenant_id: str) -> GotoConversation | None:
    """The tenant's one call opened by call events that has no web call yet."""
    tracker = services(app).tracker
    waiting = [c for c in bridge(app).live.values()
               if c.tenant_id == tenant_id and c.outcome == LIVE and c.web_call_id is None
               and c.opened_by_offer_at is None and (s := tracker.get(c.call_id or "")) is not None
               and s.state == "ringing"]
    return waiting[0] if len(waiting) == 1 else None


async def answer_web_call(request: web.Request, channel: dict[str, Any], offer: IncomingCall) -> web.Response:
    br = bridge(request.app)
    tenant_id = channel["tenant_id"]
    conv = br.conversation(tenant_id, offer.conversation_id) if offer.conversation_id else None
    if conv is not None and conv.outcome == IGNORED:
        conv = None  # its call events named no line of ours, but GoTo offers the call to our device
    if conv is None and offer.conversation_id is None:
        conv = _waiting_for_offer(request.app, tenant_id)
    if conv is None:
        known = br.by_web_call(tenant_id, offer.call_id)
        if known is not None:  # a redelivered offer
            br.duplicates.inc()
            return json_response({"status": "duplicate", "call_id": known.call_id, "web_call_id": offer.call_id})
        conv = await _open_from_offer(request, channel, offer)
        if isinstance(conv, web.Response):
            return conv
    async with conv.lock:
        if conv.web_call_id == offer.call_id:
            br.duplicates.inc()
            return json_response({"status": "duplicate", "call_id": conv.call_id, "web_call_id": offer.call_id})
        if conv.outcome in (REJECTED, DECLINED):
            conv.web_call_id = offer.call_id
            async with aiohttp.ClientSession() as http:
                await _reject_quietly(await _api_or_none(request.app, tenant_id, http), offer.call_id)
            return json_response({"status": "rejected", "call_id": conv.call_id, "reason": conv.reason})
        session = services(request.app).tracker.get(conv.call_id or "")
        if session is None or session.state != "ringing" or conv.web_call_id is not None:
            return ignored("call_not_ringing", call_id=conv.call_id, web_call_id=offer.call_id)
        conv.web_call_id = offer.call_id
        return await _answer(request, channel, conv, session, offer)


async def _open_from_offer(request: web.Request, channel: dict[str, Any],
                           offer: IncomingCall) -> GotoConversation | web.Response:
    """A web call with no call-events conversation to join: its own call, routed by the device's extension."""
    app, br, tenant_id = request.app, bridge(request.app), channel["tenant_id"]
    found = await route_call(app, tenant_id, None, offered_to_device=True)
    if found is None:
        async with aiohttp.ClientSession() as http:
            await _reject_quietly(await _api_or_none(app, tenant_id, http), offer.call_id)
        return ignored("not_routed", web_call_id=offer.call_id)
    conv = br.track(tenant_id, f"webcall:{offer.call_id}")
    conv.opened_by_offer_at = asyncio.get_running_loop().time()
    try:
        session = await services(app).tracker.open_call(
            to_number=found["number"]["e164"], from_number=offer.caller, provider=PROVIDER,
            provider_call_id=offer.call_id, tenant_hint=tenant_id, routing=found)
    except RouteRejected as rejected:
        conv.reason = rejected.reason
        br.retire(conv, REJECTED)
        async with aiohttp.ClientSession() as http:
            await _reject_quietly(await _api_or_none(app, tenant_id, http), offer.call_id)
        return json_response({"status": "rejected", "reason": rejected.reason, "web_call_id": offer.call_id})
    conv.call_id, conv.outcome = session.id, LIVE
    if session.route is not None and session.route.transfer_now:
        conv.reason = "after_hours_declined"
        await session.end("after_hours_declined")
        br.retire(conv, DECLINED)
        return conv  # its offer is rejected below, as for a declined STARTING
    session.on_end.append(lambda s: br.retire(conv))
    return conv


async def _api_or_none(app: web.Application, tenant_id: str, http: aiohttp.ClientSession) -> GotoApi | None:
    try:
        return await _api(app, tenant_id, http)
    except NotFound:
        return None


async def _answer(request: web.Request, channel: dict[str, Any], conv: GotoConversation, session: CallSession,
                  offer: IncomingCall) -> web.Response:
    from runtime.telephony.webrtc import bridge as webrtc
    from runtime.telephony.webrtc.sdp import check_offer

    app = request.app
    async with aiohttp.ClientSession() as http:
        api = await _api_or_none(app, session.tenant_id, http)
        try:
            check_offer(offer.sdp)  # before GoTo is told the line rings
        except webrtc.SdpRejected as exc:
            return await _failed(session, exc.reason, exc.message, 400, api, offer.call_id)
        if api is None:
            return await _failed(session, "no_credential", "the tenant has no usable goto credential", 409,
                                 None, offer.call_id)
        if not channel.get("channel_id"):
            return await _failed(session, "channel_pending", "the GoTo channel is not registered yet", 409,
                                 api, offer.call_id)
        try:
            await api.ringing(offer.call_id)
            answer_sdp = await webrtc.answer_offer(app, session, offer.sdp)
        except GotoApiError as exc:
            return await _failed(session, "provider_error", exc.message, 502, api, offer.call_id)
        except webrtc.SdpRejected as exc:  # the call is failed already
            return await _failed(session, exc.reason, exc.message, 400, api, offer.call_id)
        except webrtc.AnswerFailed as exc:
            return await _failed(session, exc.reason, exc.message, exc.status, api, offer.call_id)
        try:
            await api.answer(offer.call_id, answer_sdp, channel["channel_id"])
        except GotoApiError as exc:
            await session.fail("provider_error", exc.message)  # the peer goes with the call
            return json_response({"status": "failed", "reason": "provider_error", "message": exc.message,
                                  "call_id": session.id})
    peer = webrtc.bridge(app).peers.get(session.id)
    session.control = GotoControl(app, session, offer.call_id,
                                  webrtc.WebRtcControl(peer) if peer is not None else None)
    conv.answered = True
    return json_response({"status": "answered", "call_id": session.id, "web_call_id": offer.call_id})
