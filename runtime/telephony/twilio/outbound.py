"""Outbound calls through Twilio: ``Calls.create`` with the tenant's credential, the status and
answering-machine callbacks, and the answer (the same ``<Connect><Stream>`` media path as an
inbound call).

Every URL given to Twilio names the call (``?call=<id>``): a callback may arrive before the
``Calls.create`` answer that tells us the CallSid, and the dialled ``To`` is not the tenant's
number, so the call, not the number, says whose auth token checks the signature. The voice ``Url``
also carries ``ref``, an HMAC of the call id with this process's key: it answers one CallSid once
(a retry of that same request while the stream has not started gets the same TwiML; anything else
``<Hangup />``).

Wire shapes relied on, and where they are documented
-----------------------------------------------------
- ``Calls.create``: ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``, Basic auth, a form of
  ``To``, ``From``, ``Url``, ``Method``, ``StatusCallback``, ``StatusCallbackMethod``,
  ``StatusCallbackEvent`` (repeated, one value each: ``initiated``, ``ringing``, ``answered``,
  ``completed``), ``Timeout`` (seconds of ringing, default 60, at most 600), and with detection
  ``MachineDetection`` (``Enable``: a result as soon as the called party is identified;
  ``DetectMessageEnd``: for a machine, once its greeting ends), ``MachineDetectionTimeout``,
  ``AsyncAmd=true``, ``AsyncAmdStatusCallback``, ``AsyncAmdStatusCallbackMethod``. Answer: 201 and
  the call resource (``sid``, ``status`` ``queued``). Sources: twilio.com/docs/voice/api/
  call-resource ("Create a Call"), twilio.com/docs/voice/answering-machine-detection; the names
  as twilio-python 9.x ``CallList.create`` serialises them (a test compares the two).
- Status callbacks: the voice request's parameters (``CallSid``, ``AccountSid``, ``From``, ``To``,
  ``Direction`` ``outbound-api``, ``CallStatus``) plus ``CallbackSource`` (``call-progress-events``),
  ``Timestamp``, ``SequenceNumber`` ("the order in which the events were fired, starting from 0
  ... there is no guarantee they will arrive in the same order"), and in terminal events
  ``CallDuration`` and ``SipResponseCode``. The ``answered`` event carries ``CallStatus``
  ``in-progress``; ``completed`` carries the final status: ``completed``, ``busy``,
  ``no-answer``, ``failed`` or ``canceled``. Source: call-resource, "StatusCallbackEvent".
- Canceling: ``Status=canceled`` (a call queued or ringing; "if the call is canceled while still
  in queued status, no status callbacks are fired"); ``Status=completed`` hangs up an answered
  call. Source: call-resource, "Call Status values" and "Update a Call".
- The ``Url`` request when the call is answered: a voice request with ``Direction``
  ``outbound-api`` and ``CallStatus`` ``in-progress``. With ``AsyncAmd`` it carries no
  ``AnsweredBy``: the result goes to ``AsyncAmdStatusCallback`` with ``CallSid``, ``AccountSid``,
  ``AnsweredBy`` (``human``, ``machine_start``, ``machine_end_beep``, ``machine_end_silence``,
  ``machine_end_other``, ``fax``, ``unknown``) and ``MachineDetectionDuration`` (milliseconds).
  Source: answering-machine-detection ("AsyncAmd", "AnsweredBy").

Not settled by any document (handled either way, labelled where handled): whether the AMD
callback can arrive before the ``Url`` request or the media stream (it is held until the call
connects); that it carries no ``SequenceNumber`` (the first result counts); whether an
``AnsweredBy`` outside the documented values can appear (read as ``unknown``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from runtime.calls.session import AWAITING_MEDIA, DIALING, NOT_ANSWERED, RINGING
from runtime.cluster.remote_calls import REMOTE_CALLS
from runtime.control.errors import Conflict, ControlError
from runtime.events.models import MachineDetected
from runtime.one_per import OnePer
from runtime.store.tables import ALL_TENANTS
from runtime.telephony.services import services
from runtime.telephony.twilio import twiml
from runtime.telephony.twilio.bridge import (
    OUTBOUND_QUERY,
    STREAM_STATUS_PATH,
    _forget,
    bridge,
    media_stream_url,
    public_base,
    verified_for,
    xml_response,
)
from runtime.telephony.twilio.rest import TwilioApiError, TwilioRest
from runtime.web.responses import error_response

if TYPE_CHECKING:
    from runtime.calls.outbound import OutboundCall
    from runtime.calls.routing import CallRoute
    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.twilio")

VOICE_PATH = "/webhooks/twilio/voice"
STATUS_PATH = "/webhooks/twilio/status"
AMD_PATH = "/webhooks/twilio/amd"
REF_QUERY = "ref"
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
MACHINE_DETECTION = {"detect": "Enable", "voicemail": "DetectMessageEnd"}
# The final CallStatus of a call that was never answered -> the call's end reason.
NOT_CONNECTED = {"busy": "busy", "no-answer": "no_answer", "canceled": "canceled", "failed": "carrier_error"}
# AnsweredBy -> call.machine_detected's answered_by (anything else: unknown).
ANSWERED_BY = {"human": "human", "machine_start": "machine", "machine_end_beep": "machine",
               "machine_end_silence": "machine", "machine_end_other": "machine", "fax": "fax", "unknown": "unknown"}
MAX_FORM_FIELDS = 100  # a Twilio callback has about 20


@dataclass(eq=False)
class TwilioLeg:
    """What the bridge knows of one outbound call on Twilio's side."""

    rest: TwilioRest
    call_sid: str | None = None
    answered: bool = False  # Twilio reported it in-progress, or asked for its TwiML
    answer: str | None = None  # the TwiML it was answered with


class OutboundRefs:
    """The voice Url's ``ref``: an HMAC of the call id with a key derived from the master key, so
    every instance checks the refs any other gave Twilio."""

    def __init__(self, app: web.Application) -> None:
        self._key = services(app).keys.outbound_refs

    def ref(self, call_id: str) -> str:
        return hmac.new(self._key, call_id.encode(), hashlib.sha256).hexdigest()[:32]

    def valid(self, call_id: str, ref: str | None) -> bool:
        return bool(ref) and hmac.compare_digest(self.ref(call_id), ref or "")


refs: OnePer[web.Application, OutboundRefs] = OnePer(OutboundRefs)


class OutboundControl:
    """CallControl of an outbound call until its media connects (then the media's takes over):
    a call not answered is canceled, an answered one hung up."""

    def __init__(self, leg: TwilioLeg) -> None:
        self.leg = leg

    async def hangup(self, reason: str) -> None:
        leg = self.leg
        if leg.call_sid is None:
            return  # not handed to Twilio yet: the dial sees the call has ended and never starts
        if leg.answered:
            await leg.rest.hangup(leg.call_sid)
        else:
            await leg.rest.cancel(leg.call_sid)

    async def transfer(self, target: str) -> None:
        if self.leg.call_sid is not None:
            await self.leg.rest.transfer(self.leg.call_sid, target)


async def prepare(app: web.Application, tenant_id: str) -> TwilioLeg:
    """The tenant's Twilio REST client; Conflict (409) without a complete twilio credential."""
    control = services(app).control
    token = await control.credentials.secret(tenant_id, "twilio")
    row = await control.store.credentials.find(tenant_id=tenant_id, provider="twilio")
    account_sid = (row or {}).get("fields", {}).get("account_sid")
    if not token or not account_sid:
        raise Conflict("the tenant has no twilio credential (account_sid and auth token) to place calls with",
                       {"provider": "twilio"})
    return TwilioLeg(TwilioRest(services(app).settings.telephony.twilio.api_base_url, account_sid, token))


def control_for(leg: TwilioLeg) -> OutboundControl:
    return OutboundControl(leg)


def create_form(base: str, app: web.Application, session: CallSession) -> list[tuple[str, str]]:
    """The Calls.create form (see the module docstring), in Twilio's parameter names."""
    outbound: OutboundCall = session.outbound
    call = {OUTBOUND_QUERY: session.id}
    form = [
        ("To", session.to_number or ""), ("From", session.from_number or ""),
        ("Url", f"{base}{VOICE_PATH}?{urlencode({**call, REF_QUERY: refs(app).ref(session.id)})}"),
        ("Method", "POST"),
        ("StatusCallback", f"{base}{STATUS_PATH}?{urlencode(call)}"), ("StatusCallbackMethod", "POST"),
        *(("StatusCallbackEvent", event) for event in STATUS_EVENTS),
        ("Timeout", str(outbound.timeout_s)),
    ]
    mode = MACHINE_DETECTION.get(outbound.machine_detection)
    if mode is not None:
        form += [("MachineDetection", mode),
                 ("MachineDetectionTimeout", str(services(app).settings.telephony.twilio.amd_timeout_s)),
                 ("AsyncAmd", "true"), ("AsyncAmdStatusCallback", f"{base}{AMD_PATH}?{urlencode(call)}"),
                 ("AsyncAmdStatusCallbackMethod", "POST")]
    return form


async def dial(app: web.Application, session: CallSession, base: str) -> None:
    """Calls.create; the call is ``dialing`` once Twilio has it (or ``failed``, carrier_error)."""
    leg: TwilioLeg = session.outbound.leg
    try:
        created = await leg.rest.create_call(create_form(base, app, session))
    except TwilioApiError as exc:
        await session.fail("carrier_error", f"Twilio refused the call: {_twilio_error(exc)}")
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("twilio unreachable for Calls.create", extra={"call_id": session.id,
                                                                 "error": type(exc).__name__})
        await session.fail("carrier_error", "Twilio could not be reached")
        return
    sid = created.get("sid")
    if not isinstance(sid, str) or not sid.startswith("CA"):
        await session.fail("carrier_error", "Twilio answered Calls.create without a call sid")
        return
    await bind(app, session, sid)
    if not session.live:  # hung up while Calls.create was on its way: Twilio has it now, cancel it
        try:
            await leg.rest.cancel(sid)
        except (TwilioApiError, aiohttp.ClientError, TimeoutError):
            log.warning("canceling a call hung up while it was placed failed", extra={"call_id": session.id})


async def bind(app: web.Application, session: CallSession, sid: str) -> bool:
    """Tie the CallSid to the call (whichever comes first: the Calls.create answer or a
    callback); False when the call already has another."""
    leg: TwilioLeg = session.outbound.leg
    if leg.call_sid is not None:
        return leg.call_sid == sid
    leg.call_sid = session.provider_call_id = sid
    if session.live:
        br = bridge(app)
        br.by_sid[sid] = session.id
        session.on_end.append(lambda s: _forget(br, s, sid))
        await session.advance(DIALING, {"provider_call_id": sid})
    return True


# Twilio's requests about an outbound call


class TwilioCallback(BaseModel):
    """One verified Twilio request about an outbound call: what its holder needs to answer it, here
    or forwarded over NATS (cluster mode: a callback may reach any instance, the call lives in one)."""

    kind: Literal["voice", "status", "amd"]
    form: dict[str, str] = Field(max_length=MAX_FORM_FIELDS)
    stream_url: str = Field("", max_length=2048)  # voice only: the <Stream> URL, as the request reached us
    stream_status_url: str = Field("", max_length=2048)


@dataclass(frozen=True)
class Reply:
    status: int
    twiml: str | None = None

    def response(self) -> web.Response:
        return xml_response(self.twiml) if self.twiml is not None else web.Response(status=self.status)


HANG_UP = Reply(200, twiml.document(twiml.HANGUP))
NOTHING = Reply(204)
FORWARDED_OP = "twilio.outbound_callback"


async def voice_answer(request: web.Request) -> web.Response:
    """The callee answered: Twilio asks the ``Url`` for TwiML."""
    return await _callback(request, "voice")


async def status_callback(request: web.Request) -> web.Response:
    return await _callback(request, "status")


async def amd_callback(request: web.Request) -> web.Response:
    return await _callback(request, "amd")


async def _callback(request: web.Request, kind: str) -> web.Response:
    """Verify the request with the tenant of the call its URL names (a call that has ended is looked
    up in the store), then answer it where the call lives: here, or on the instance holding it."""
    app = request.app
    call_id = request.query.get(OUTBOUND_QUERY, "")[:64]
    session = _outbound_here(app, call_id)
    tenant_id = session.tenant_id if session is not None else await _tenant_of(app, call_id)
    verified = await verified_for(request, tenant_id)
    if isinstance(verified, web.Response):
        return verified
    if kind == "voice" and not refs(app).valid(call_id, request.query.get(REF_QUERY)):
        bridge(app).refused.labels("bad_signature").inc()
        return error_response(403, "invalid or missing call reference")
    try:
        callback = TwilioCallback(kind=kind, form=dict(verified[1]))
        if kind == "voice":  # the answer's <Stream>, as this request reached the runtime
            callback.stream_url = media_stream_url(request)
            callback.stream_status_url = public_base(request) + STREAM_STATUS_PATH
    except ValidationError as exc:
        return error_response(400, f"not a Twilio callback: {exc.error_count()} invalid fields")
    if session is not None and not await _still_here(app, session):
        session = None  # its media reached another instance, which runs the call now
    remote = app.get(REMOTE_CALLS)
    if session is None and remote is not None:
        try:
            answer = await remote.forward(FORWARDED_OP, verified[0], call_id, callback)
        except ControlError as exc:  # NATS lost, or the holder did not answer: Twilio may retry
            return error_response(exc.status, exc.message, exc.details, error=exc.code)
        if answer is not None:
            return Reply(int(answer["status"]), answer.get("twiml")).response()
    return (await _answer(app, session, callback)).response()


async def answer_forwarded(app: web.Application, tenant_id: str, call_id: str,
                           callback: TwilioCallback) -> dict[str, Any]:
    """The holder's side of a forwarded callback (runtime.cluster.remote_calls): the same answer
    as if Twilio had reached this instance."""
    session = _outbound_here(app, call_id)
    if session is not None and (session.tenant_id != tenant_id or not await _still_here(app, session)):
        session = None
    return asdict(await _answer(app, session, callback))


def _outbound_here(app: web.Application, call_id: str) -> CallSession | None:
    session = services(app).tracker.get(call_id)
    return session if session is not None and session.outbound is not None else None  # not an inbound call's id


async def _still_here(app: web.Application, session: CallSession) -> bool:
    return session.state not in AWAITING_MEDIA or await bridge(app).still_here(app, session)


async def _tenant_of(app: web.Application, call_id: str) -> str | None:
    if not call_id:
        return None
    row = await services(app).control.store.voice_calls.get(call_id, tenant_id=ALL_TENANTS)
    return row["tenant_id"] if row is not None and row["direction"] == "outbound" else None


async def _answer(app: web.Application, session: CallSession | None, callback: TwilioCallback) -> Reply:
    if callback.kind == "voice":
        return await _voice(app, session, callback)
    if session is None or not session.live:
        return NOTHING  # ended (or no instance has it): nothing to do, idempotently
    if callback.kind == "status":
        await _status(app, session, callback.form)
    else:
        await _amd(session, callback.form)
    return NOTHING


async def _voice(app: web.Application, session: CallSession | None, callback: TwilioCallback) -> Reply:
    if session is None or not session.live:
        return HANG_UP  # canceled or failed meanwhile
    leg: TwilioLeg = session.outbound.leg
    sid = callback.form.get("CallSid", "")
    if not sid or not await bind(app, session, sid):
        return HANG_UP  # another CallSid: this reference answers one call
    if leg.answer is not None:  # the same request again: the same TwiML while the stream is awaited
        return Reply(200, leg.answer) if session.state in AWAITING_MEDIA else HANG_UP
    leg.answered = True
    br = bridge(app)
    leg.answer = br.answers[session.id] = twiml.document(twiml.stream(
        callback.stream_url, await br.tokens.issue(session.id), callback.stream_status_url))
    br.expect_stream(services(app).tracker, session.id)
    return Reply(200, leg.answer)


async def _status(app: web.Application, session: CallSession, form: dict[str, str]) -> None:
    """Call progress: dialing, ringing, answered, and the final status (any order: see the
    module docstring; a report of a state already passed is ignored)."""
    sid, status = form.get("CallSid", ""), form.get("CallStatus", "")
    if not sid or not await bind(app, session, sid):
        return
    leg: TwilioLeg = session.outbound.leg
    if status in ("queued", "initiated"):
        await session.advance(DIALING)
    elif status == "ringing":
        await session.advance(RINGING)
    elif status == "in-progress":
        leg.answered = True
    elif status == "completed":
        if session.state in NOT_ANSWERED:  # answered, then over before its media stream started
            await session.fail("stream_not_started", "Twilio completed the call before its media stream started")
        else:
            await session.end("completed", hangup_by="caller")
    elif status in NOT_CONNECTED:
        reason = NOT_CONNECTED[status]
        if session.state in NOT_ANSWERED:
            code = form.get("SipResponseCode")
            await session.fail(reason, f"Twilio: {status}" + (f" (SIP {code[:3]})" if code else ""))
        else:
            await session.end(reason, hangup_by="caller")


async def _amd(session: CallSession, form: dict[str, str]) -> None:
    """``AsyncAmdStatusCallback``: who answered (the first result counts)."""
    leg: TwilioLeg = session.outbound.leg
    if leg.call_sid is not None and form.get("CallSid") != leg.call_sid:
        return
    raw = form.get("AnsweredBy", "")[:40]
    try:
        detection_ms: int | None = int(form.get("MachineDetectionDuration", ""))
    except ValueError:
        detection_ms = None
    await session.outbound.detected(session, ANSWERED_BY.get(raw, "unknown"), detection_ms, raw)


# A call taken over: its media reached another instance than the one that placed it.


async def resumed(app: web.Application, row: dict[str, Any], route: CallRoute) -> OutboundCall | None:
    """The outbound call of ``row``, rebuilt to run it here (runtime.calls.outbound.OutboundCall.from_row)
    with a result of answering-machine detection that came before the media; None when the tenant
    can no longer reach Twilio."""
    from runtime.calls.outbound import OutboundCall

    try:
        leg = await prepare(app, row["tenant_id"])
    except Conflict:
        return None
    leg.call_sid, leg.answered = row["provider_call_id"], True
    outbound = OutboundCall.from_row(row, route, services(app).settings.telephony.twilio.amd_timeout_s, leg)
    detected = await services(app).control.store.call_events.find(
        tenant_id=row["tenant_id"], call_id=row["id"], topic=MachineDetected.topic)
    if detected is not None:  # the call acts on it once connected, as its first instance would have
        outbound.result = (detected["payload"]["answered_by"], detected["payload"].get("detection_ms"))
    return outbound


def _twilio_error(exc: TwilioApiError) -> str:
    """Twilio's error body is JSON ``{"code", "message", "more_info", "status"}``."""
    try:
        body = orjson.loads(exc.body)
    except orjson.JSONDecodeError:
        return f"HTTP {exc.status}"
    if not isinstance(body, dict):
        return f"HTTP {exc.status}"
    return f"{body.get('code', exc.status)} {str(body.get('message', ''))[:200]}".strip()
