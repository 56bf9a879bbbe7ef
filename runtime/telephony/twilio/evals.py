"""An evaluation's synthetic call over the Twilio protocol (runtime.evals): the voice webhook with
``?eval=<pin id>&pin=<secret>`` in its URL.

The pin (runtime.control.eval_pins) says which tenant, agent and version the call is for. Its
secret is checked against the stored hash, then the request's ``X-Twilio-Signature`` against the
secret (as Twilio signs with an auth token), then the pin is used up; only then is the call routed,
to the pinned version, with the usual admission (a busy box or tenant answers ``<Reject
reason="busy" />``) and the usual ``<Connect><Stream>``. Anything wrong is a 403 that says no more.

The call's media is ordinary Twilio media, except that nothing is asked of Twilio's REST API: the
media stream's ``MediaSideControl`` (reason ``evaluation``) hangs up by closing the stream and ends a
transfer ``transferred`` as a redirect would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runtime.calls.routing import RouteRejected, pinned_route
from runtime.control import eval_pins
from runtime.telephony.services import services
from runtime.telephony.twilio import twiml
from runtime.telephony.twilio.bridge import (
    EVAL_QUERY,
    _form,
    answer_with_stream,
    bridge,
    public_request_url,
    rejection_twiml,
    signature_valid,
    twiml_response,
)
from runtime.web.responses import error_response

log = logging.getLogger("voicectl.twilio")

PIN_QUERY = "pin"
BUSY = frozenset({"busy", "shutting_down", "tenant_call_limit"})


@dataclass(frozen=True)
class EvalCall:
    """What the bridge keeps of an evaluation call (``session.evaluation``)."""

    pin_id: str
    evaluation_id: str
    signing_key: str  # the pin's secret: the media upgrade is signed with it too ("" once taken over)


async def resumed_evaluation(app: web.Application, row: dict[str, Any]) -> EvalCall | None:
    """What another instance kept of the evaluation call of ``row`` (cluster mode: its media
    reached this one), rebuilt from its pin; None when the pin is gone, or when the media upgrade
    must be signed (``require_stream_signature``): only the pin's hash is stored, its secret is
    the caller's, so the upgrade could not be checked here."""
    if services(app).settings.telephony.twilio.require_stream_signature:
        return None
    pin = await services(app).control.store.eval_pins.find(tenant_id=row["tenant_id"], call_id=row["id"])
    if pin is None:
        return None
    return EvalCall(pin["id"], pin["evaluation_id"], signing_key="")


async def eval_voice(request: web.Request) -> web.Response:
    br = bridge(request.app)
    store = services(request.app).control.store
    form = await _form(request)
    row = await eval_pins.valid(store, request.query.get(EVAL_QUERY, ""), request.query.get(PIN_QUERY, ""))
    if row is None:
        br.refused.labels("bad_pin").inc()
        return error_response(403, "the request names no usable evaluation pin")
    secret = request.query[PIN_QUERY]
    if not signature_valid(secret, public_request_url(request), form.items(), request.headers.get("X-Twilio-Signature")):
        br.refused.labels("bad_signature").inc()
        return error_response(403, "invalid or missing X-Twilio-Signature")
    call_sid = form.get("CallSid")
    if not call_sid:
        return error_response(400, "CallSid is required", {"missing": ["CallSid"]})
    if not await eval_pins.consume(store, row):
        br.refused.labels("bad_pin").inc()
        return error_response(403, "the request names no usable evaluation pin")
    tenant_id = row["tenant_id"]
    tags = {"evaluation_id": row["evaluation_id"], "scenario": row["scenario"]}
    try:
        route = await pinned_route(store, tenant_id, row["agent_id"], row["agent_version"])
        session = await services(request.app).tracker.open_call(
            to_number=form.get("To"), from_number=form.get("From"), provider="twilio", provider_call_id=call_sid,
            tenant_hint=tenant_id, route=route, tags=tags)
    except RouteRejected as rejected:
        log.info("evaluation call rejected", extra={"reason": rejected.reason, "tenant_id": tenant_id})
        if rejected.reason in BUSY:  # the box's or the tenant's limit: the evaluation reports it as busy
            return twiml_response(twiml.REJECT_BUSY)
        return rejection_twiml(rejected)
    session.evaluation = EvalCall(row["id"], row["evaluation_id"], secret)
    await eval_pins.bind_call(store, row, session.id)
    return await answer_with_stream(request, br, session, call_sid)
