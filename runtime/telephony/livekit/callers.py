"""Callers arriving in LiveKit rooms (``participant_joined``, or found by the reconciler) become calls.

- A SIP participant: the dialled number (``sip.trunkPhoneNumber``, the raw user part of the
  ``To`` URI) is read as E.164 (runtime.telephony.livekit.numbers) and routed like any call;
  the caller id is ``sip.phoneNumber``. A routed call gets its row and session and the agent joins
  the room (runtime.telephony.livekit.room); a refused one is removed from the room
  (RemoveParticipant hangs up the phone call) and, where the tenant is known, kept as a failed call.
- One call per room: LiveKit SIP mixes every track it subscribes to into the phone call
  (livekit/sip pkg/sip/room.go), and a "callee" dispatch rule puts every caller of a number in one
  room, so a second SIP caller in a room with a live call is refused (``room_busy``).
- A standard participant (a browser or app): served when its token names the tenant and number
  (attributes ``voicectl.tenant_id`` / ``voicectl.number``, minted by POST /api/v1/livekit/tokens),
  else when the room holds this runtime's agent dispatch whose metadata names them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from runtime.calls.routing import RouteRejected
from runtime.events.models import TransferRequested
from runtime.telephony.livekit.auth import VerifiedEvent
from runtime.telephony.livekit.bridge import LiveKitBridge, LiveKitCall
from runtime.telephony.livekit.control import NUMBER_ATTRIBUTE, TENANT_ATTRIBUTE
from runtime.telephony.livekit.ending import hang_up
from runtime.telephony.livekit.numbers import caller_id, candidates
from runtime.telephony.livekit.room import LiveKitControl, RoomAgent
from runtime.telephony.livekit.server import LiveKitUnavailable
from runtime.telephony.services import services
from runtime.web.responses import error_response, json_response

log = logging.getLogger("voicectl.livekit")

KIND_STANDARD, KIND_SIP, KIND_AGENT = 0, 3, 4  # livekit.protocol.models.ParticipantInfo.Kind
# A refused call answers 404 for an unknown number and 409 otherwise (busy, room_busy,
# tenant_call_limit, shutting_down, tenant_disabled, no_active_version), with the reason as the
# error word: the caller has been removed already, so nothing is worth a redelivery.


def _ok(event: str, **extra: Any) -> web.Response:
    return json_response({"received": True, "event": event, **extra})


async def participant_joined(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event, scope = verified.event, verified.scope
    participant, room = event.participant, event.room.name
    if not room or not participant.identity:
        return error_response(400, "participant_joined without a room name or participant identity",
                              {"missing": [k for k, v in (("room.name", room), ("participant.identity",
                                                                                participant.identity)) if not v]})
    existing = br.call(room, participant.identity, scope)
    if existing is not None:  # the same caller announced twice (e.g. after a reconnect)
        return _ok(event.event, call_id=existing.session.id)
    # One setup at a time per caller (SIP) or per room (clients): the setup awaits the store.
    key = (room, participant.identity if participant.kind == KIND_SIP else "")
    if key in br.opening:
        return _ok(event.event, ignored="the call is being set up")
    br.opening.add(key)
    try:
        return await _caller_joined(app, br, verified)
    finally:
        br.opening.discard(key)


async def _caller_joined(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event = verified.event
    participant, room = event.participant, event.room.name
    if participant.kind == KIND_SIP:
        attributes = dict(participant.attributes)
        if attributes.get("sip.callStatus") == "hangup":
            return _ok(event.event, ignored="the SIP call already hung up")
        dialled = attributes.get("sip.trunkPhoneNumber", "").strip()
        if not dialled:  # e.g. a dispatch rule with hide_phone_number: nothing to route by
            br.spawn(hang_up(verified.server, room, participant.identity))
            return error_response(400, "SIP participant without the sip.trunkPhoneNumber attribute",
                                  {"missing": ["sip.trunkPhoneNumber"]})
        busy = _room_busy(br, verified)
        return await _open(app, br, verified, dialled, attributes.get("sip.phoneNumber") or None,
                           attributes.get("sip.callID") or participant.sid, sip=True, busy=busy)
    if participant.kind == KIND_STANDARD:
        if br.in_room(room, None):
            return _ok(event.event, ignored="the room already has a call")
        named = _token_number(verified) or await _dispatched_number(app, verified)
        if named is None:
            return _ok(event.event, ignored="no agent dispatch of this runtime in the room")
        number, tenant_id = named
        return await _open(app, br, verified, number, None, participant.sid, sip=False, scope=tenant_id)
    return _ok(event.event, ignored="not a caller")  # agents (this runtime's own), egress, ingress


def _room_busy(br: LiveKitBridge, verified: VerifiedEvent) -> bool:
    """Another caller's call lives in this room of this project, or is being set up there."""
    room, identity, server = verified.event.room.name, verified.event.participant.identity, verified.server
    if any(c.server.url == server.url and c.server.api_key == server.api_key for c in br.in_room(room, None)):
        return True
    return any(r == room and i != identity for r, i in br.opening)


def _token_number(verified: VerifiedEvent) -> tuple[str, str] | None:
    """(number, tenant id) from the participant's token attributes, if the tenant is in scope.
    Only a holder of the project's secret mints tokens, and clients cannot change their own
    attributes without canUpdateOwnMetadata (livekit/livekit pkg/rtc/participant.go)."""
    attributes = verified.event.participant.attributes
    tenant_id, number = attributes.get(TENANT_ATTRIBUTE), attributes.get(NUMBER_ATTRIBUTE)
    if not tenant_id or not number:
        return None
    if verified.scope is not None and tenant_id != verified.scope:
        return None  # a tenant's own project names only that tenant
    if verified.scope is None and not verified.event.room.name.startswith(f"{tenant_id}--"):
        return None  # the appliance's shared project: every room of a tenant is prefixed with its id
    return number, tenant_id


async def _dispatched_number(app: web.Application, verified: VerifiedEvent) -> tuple[str, str] | None:
    """(number, tenant id) of this runtime's agent dispatch in the room, if the tenant is in scope."""
    agent_name = services(app).settings.telephony.livekit.agent_name
    try:
        dispatches = await verified.server.list_dispatches(verified.event.room.name)
    except LiveKitUnavailable:
        log.warning("listing the room's agent dispatches failed", extra={"room": verified.event.room.name})
        return None
    for dispatch in dispatches:
        if dispatch.agent_name != agent_name:
            continue
        try:
            meta = orjson.loads(dispatch.metadata or "{}")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("number"), str):
            continue
        tenant_id = meta.get("tenant_id")
        if not isinstance(tenant_id, str) or (verified.scope is not None and tenant_id != verified.scope):
            continue
        return meta["number"], tenant_id
    return None


async def _route(br: LiveKitBridge, app: web.Application, dialled: str,
                 country: str | None) -> tuple[str, dict | None]:
    """(E.164 number, its route or None): the first reading of ``dialled`` that is a known number,
    else the most likely reading (the raw text when it is no phone number at all)."""
    readings = candidates(dialled, country)
    routes = br.routes(services(app).control.store)
    for number in readings:
        found = await routes.get(number)
        if found is not None:
            return number, found
    return (readings[0] if readings else dialled[:64]), None


async def _open(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent, dialled: str,
                caller: str | None, provider_call_id: str, *, sip: bool, scope: str | None = None,
                busy: bool = False) -> web.Response:
    """``scope``: the tenant the call must belong to (default: the signing key's); ``busy``: the
    room already has a call (refused as room_busy once the tenant is known)."""
    event, server = verified.event, verified.server
    scope = verified.scope if scope is None else scope
    participant, room = event.participant, event.room.name
    number, found = await _route(br, app, dialled, server.country)
    try:
        if found is not None and scope is not None and found["number"]["tenant_id"] != scope:
            # Another tenant's number reached through this tenant's project: unknown here, no row.
            log.warning("livekit call for another tenant's number refused", extra={"tenant_id": scope})
            raise RouteRejected("unknown_number", f"{number} is not routed")
        # Unknown numbers of a known tenant (scope) are kept as failed calls, as the Twilio bridge does.
        session = await services(app).tracker.open_call(
            to_number=number, from_number=caller_id(caller, server.country), provider="livekit",
            provider_call_id=provider_call_id, tenant_hint=scope, routing=found)
        if busy:
            await session.fail("room_busy", "the room already has a call (one call per room)")
            raise RouteRejected("room_busy", "the room already has a call: use an individual dispatch rule",
                                session.tenant_id)
    except RouteRejected as rejected:
        log.info("livekit call rejected", extra={"reason": rejected.reason, "tenant_id": rejected.tenant_id})
        br.spawn(hang_up(server, room, participant.identity))
        return error_response(404 if rejected.reason == "unknown_number" else 409, rejected.message,
                              {"reason": rejected.reason, "number": number}, error=rejected.reason)
    call = LiveKitCall(session, server, room, participant.identity, participant.sid, sip)
    session.summary["livekit"] = {"room": room, "participant": participant.identity, "sip": sip}
    if number != dialled:
        session.summary["livekit"]["dialled"] = dialled[:64]  # as LiveKit reported it
    session.control = LiveKitControl(call)
    br.add(call)
    session.on_end.append(lambda s: _forget(br, call))
    after_hours = session.route is not None and session.route.transfer_now and sip
    target = session.route.config.escalation_target if after_hours else None  # type: ignore[union-attr]
    if target is not None:
        # The transfer waits for LiveKit to answer: the agent joins, publishes and waits for "active".
        await session.emit(TransferRequested(target=target, reason="after_hours"))
    call.agent = RoomAgent(app, call, transfer_to=target)
    call.agent.start()
    return _ok(event.event, call_id=session.id, **({"after_hours": True} if target is not None else {}))


def _forget(br: LiveKitBridge, call: LiveKitCall) -> None:
    br.forget(call)
    if call.agent is not None:
        br.spawn(call.agent.leave())
