"""``POST /webhooks/livekit``: verified deliveries (runtime.telephony.livekit.auth) turned into calls.

- ``participant_joined`` of a SIP participant: the dialled number (attribute
  ``sip.trunkPhoneNumber``) is routed like any call (tenant, agent version, limits, hours); the
  caller id is ``sip.phoneNumber``. A routed call gets its row and session and the agent joins
  the room (runtime.telephony.livekit.room); a refused one is hung up (RemoveParticipant) and,
  where the tenant is known, kept as a failed call with ``voice.call.failed``.
- ``participant_joined`` of a standard participant (a browser or app with a token from
  ``POST /api/v1/livekit/tokens``): served when the room holds this runtime's agent dispatch,
  whose metadata names the tenant and the number to route as.
- ``participant_left`` / ``participant_connection_aborted`` end that caller's call,
  ``room_finished`` every call in the room; ``track_published`` is noted on the call;
  ``egress_started`` / ``egress_ended`` tie a room egress to its call and store its files as
  recordings.

A delivery only ever touches calls of the tenant whose key signed it (any tenant for the
appliance's key). An event id once answered 2xx is not handled again (a refused or failed
delivery is, when LiveKit redelivers it). Events naming a room, participant or egress this runtime
does not know answer 404; everything else answers 200 ``{"received": true, ...}``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from runtime.calls.routing import RouteRejected
from runtime.events.models import TransferRequested
from runtime.ids import new_id, now_iso
from runtime.telephony.livekit.auth import VerifiedEvent, WebhookRefused, verify
from runtime.telephony.livekit.bridge import KNOWN_EVENTS, LiveKitBridge, LiveKitCall, bridge
from runtime.telephony.livekit.room import LiveKitControl, RoomAgent, end_call
from runtime.telephony.livekit.server import LiveKitServer, LiveKitUnavailable
from runtime.telephony.services import services
from runtime.web.responses import error_response, json_response

log = logging.getLogger("voicectl.livekit")

KIND_STANDARD, KIND_SIP, KIND_AGENT = 0, 3, 4  # livekit.protocol.models.ParticipantInfo.Kind
EGRESS_COMPLETE, EGRESS_FAILED = 3, 4  # livekit.protocol.egress.EgressStatus
# A refused call answers 404 for an unknown number and 409 otherwise (busy, tenant_call_limit,
# shutting_down, tenant_disabled, no_active_version), with the reason as the error word: the caller
# has been hung up already, so nothing is worth a redelivery (LiveKit retries 5xx).
MAX_NAME = 256  # room names and identities longer than this are refused


def _ok(event: str, **extra: Any) -> web.Response:
    return json_response({"received": True, "event": event, **extra})


def _unknown(what: str, details: dict[str, Any]) -> web.Response:
    return error_response(404, f"no call of this runtime for {what}", details)


async def livekit_webhook(request: web.Request) -> web.StreamResponse:
    br = bridge(request.app)
    try:
        raw = await request.read()
        verified = await verify(request.app, raw, request.headers.get("Authorization"))
    except web.HTTPRequestEntityTooLarge:
        br.refused.labels("bad_body").inc()
        return error_response(413, "the webhook body is too large")
    except WebhookRefused as refused:
        br.refused.labels(refused.reason).inc()
        return error_response(refused.status, refused.message, {"reason": refused.reason})
    event = verified.event
    name = event.event
    br.received.labels(name if name in KNOWN_EVENTS else "other").inc()
    seen = br.seen_ids(services(request.app).settings.telephony.livekit.webhook_max_age_s)
    dedupe_key = (verified.server.api_key, event.id) if event.id else None
    if dedupe_key is not None and not seen.add(dedupe_key):
        br.duplicates.inc()
        return _ok(name, duplicate=True)
    handled = False
    try:
        response = await _handle(request.app, br, verified)
        handled = response.status < 300
        return response
    finally:
        if dedupe_key is not None and not handled:
            seen.discard(dedupe_key)  # refused or failed: LiveKit's redelivery must be handled, not a duplicate


async def _handle(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event = verified.event
    name, room = event.event, event.room.name or event.egress_info.room_name
    if len(room) > MAX_NAME or len(event.participant.identity) > MAX_NAME:
        return error_response(400, "room name or participant identity too long", {"max": MAX_NAME})
    if name == "participant_joined":
        return await _participant_joined(app, br, verified)
    if name in ("participant_left", "participant_connection_aborted"):
        return await _participant_left(br, verified)
    if name == "room_finished":
        return await _room_finished(br, verified)
    if name == "track_published":
        return _track_published(br, verified)
    if name == "egress_started":
        return await _egress_started(app, br, verified)
    if name == "egress_ended":
        return await _egress_ended(app, br, verified)
    return _ok(name, ignored=True)  # room_started, egress_updated, track_unpublished, ingress_*, agent_job_*


# Callers arriving


async def _participant_joined(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
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
        dialled = attributes.get("sip.trunkPhoneNumber", "").strip()
        if not dialled:
            return error_response(400, "SIP participant without the sip.trunkPhoneNumber attribute",
                                  {"missing": ["sip.trunkPhoneNumber"]})
        if attributes.get("sip.callStatus") == "hangup":
            return _ok(event.event, ignored="the SIP call already hung up")
        return await _open(app, br, verified, dialled, attributes.get("sip.phoneNumber") or None,
                           attributes.get("sip.callID") or participant.sid, sip=True)
    if participant.kind == KIND_STANDARD:
        if br.in_room(room, None):
            return _ok(event.event, ignored="the room already has a call")
        dispatched = await _dispatched_number(app, verified)
        if dispatched is None:
            return _ok(event.event, ignored="no agent dispatch of this runtime in the room")
        number, tenant_id = dispatched
        return await _open(app, br, verified, number, None, participant.sid, sip=False, scope=tenant_id)
    return _ok(event.event, ignored="not a caller")  # agents (this runtime's own), egress, ingress


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


async def _open(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent, dialled: str,
                caller: str | None, provider_call_id: str, *, sip: bool, scope: str | None = None) -> web.Response:
    """``scope``: the tenant the call must belong to (default: the signing key's)."""
    event, server = verified.event, verified.server
    scope = verified.scope if scope is None else scope
    participant, room = event.participant, event.room.name
    found = await br.routes(services(app).control.store).get(dialled)
    try:
        if found is not None and scope is not None and found["number"]["tenant_id"] != scope:
            # Another tenant's number reached through this tenant's project: unknown here, no row.
            log.warning("livekit call for another tenant's number refused", extra={"tenant_id": scope})
            raise RouteRejected("unknown_number", f"{dialled} is not routed")
        # Unknown numbers of a known tenant (scope) are kept as failed calls, as the Twilio bridge does.
        session = await services(app).tracker.open_call(
            to_number=dialled, from_number=caller, provider="livekit", provider_call_id=provider_call_id,
            tenant_hint=scope, routing=found)
    except RouteRejected as rejected:
        log.info("livekit call rejected", extra={"reason": rejected.reason, "tenant_id": rejected.tenant_id})
        br.spawn(_hang_up(server, room, participant.identity))
        return error_response(404 if rejected.reason == "unknown_number" else 409, rejected.message,
                              {"reason": rejected.reason, "number": dialled}, error=rejected.reason)
    call = LiveKitCall(session, server, room, participant.identity, participant.sid, sip)
    session.summary["livekit"] = {"room": room, "participant": participant.identity, "sip": sip}
    if session.route is not None and session.route.transfer_now and sip:
        target = session.route.config.escalation_target
        await session.emit(TransferRequested(target=target, reason="after_hours"))
        br.recent_rooms.put(room, session.tenant_id)
        br.spawn(_transfer_after_hours(server, call, target))
        return _ok(event.event, call_id=session.id, transferred=True)
    session.control = LiveKitControl(call)
    br.add(call)
    session.on_end.append(lambda s: _forget(br, call))
    call.agent = RoomAgent(app, call)
    call.agent.start()
    return _ok(event.event, call_id=session.id)


def _forget(br: LiveKitBridge, call: LiveKitCall) -> None:
    br.forget(call)
    if call.agent is not None:
        br.spawn(call.agent.leave())


async def _hang_up(server: LiveKitServer, room: str, identity: str) -> None:
    try:
        await server.remove_participant(room, identity)
    except LiveKitUnavailable:
        pass  # logged by the server client; the caller may have gone already


async def _transfer_after_hours(server: LiveKitServer, call: LiveKitCall, target: str) -> None:
    try:
        await server.transfer_sip(call.room, call.identity, target)
    except LiveKitUnavailable as exc:
        await call.session.fail("transfer_failed", exc.message)
        await _hang_up(server, call.room, call.identity)
        return
    await call.session.end("after_hours_transfer")


# Callers leaving, rooms closing


async def _participant_left(br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event, scope = verified.event, verified.scope
    room, identity = event.room.name, event.participant.identity
    call = br.call(room, identity, scope)
    if call is None:
        if br.knows_room(room, scope):
            return _ok(event.event, ignored="not a caller of a live call")
        return _unknown("this room", {"room": room})
    reason = "caller_hangup" if event.event == "participant_left" else "connection_aborted"
    await end_call(call, reason, hangup_by="caller")
    return _ok(event.event, call_id=call.session.id)


async def _room_finished(br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event, scope = verified.event, verified.scope
    calls = br.in_room(event.room.name, scope)
    if not calls and not br.knows_room(event.room.name, scope):
        return _unknown("this room", {"room": event.room.name})
    for call in calls:
        await end_call(call, "room_finished")
    return _ok(event.event, calls_ended=[c.session.id for c in calls])


def _track_published(br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event = verified.event
    call = br.call(event.room.name, event.participant.identity, verified.scope)
    if call is None:
        if br.knows_room(event.room.name, verified.scope):
            return _ok(event.event, ignored="not a caller of a live call")
        return _unknown("this room", {"room": event.room.name})
    if len(call.tracks) < 16:
        call.tracks.append(event.track.sid)
        call.session.summary.setdefault("livekit", {})["tracks"] = list(call.tracks)
    return _ok(event.event, call_id=call.session.id)


# Room egress (recordings)


async def _egress_started(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    info = verified.event.egress_info
    if not info.egress_id:
        return error_response(400, "egress_started without egressInfo.egressId", {"missing": ["egressInfo.egressId"]})
    store = services(app).control.store
    # Known (started through the API, or a redelivery, possibly after its egress_ended): nothing new.
    known = await br.egress_call(store, info.egress_id, verified.scope)
    if known is not None:
        return _ok(verified.event.event, call_id=known[1])
    calls = br.in_room(info.room_name, verified.scope)
    if not calls:
        return _unknown("this egress's room", {"room": info.room_name, "egress_id": info.egress_id})
    await br.record_egress(store, calls[0], info.egress_id)
    return _ok(verified.event.event, call_id=calls[0].session.id)


async def _egress_ended(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    info = verified.event.egress_info
    store = services(app).control.store
    known = await br.egress_call(store, info.egress_id, verified.scope) if info.egress_id else None
    if known is None:
        calls = br.in_room(info.room_name, verified.scope)
        known = (calls[0].session.tenant_id, calls[0].session.id) if calls else None
    if known is None:
        return _unknown("this egress", {"egress_id": info.egress_id, "room": info.room_name})
    tenant_id, call_id = known
    br.egress_stopped(call_id, info.egress_id)
    if info.status != EGRESS_COMPLETE:
        log.warning("livekit egress did not complete",
                    extra={"call_id": call_id, "egress_id": info.egress_id, "status": int(info.status)})
        return _ok(verified.event.event, call_id=call_id, recordings=[], egress_status=int(info.status))
    stored = []
    for result in list(info.file_results)[:16]:
        where = result.location or result.filename
        if not where:
            continue
        row = await store.recordings.insert({
            "id": new_id("rec"), "tenant_id": tenant_id, "call_id": call_id, "kind": "room",
            "storage": "livekit_egress", "uri": where[:2000],
            "format": (result.filename.rsplit(".", 1)[-1].lower() if "." in result.filename else "ogg")[:16],
            "duration_ms": int(result.duration // 1_000_000) if result.duration else None,
            "size_bytes": int(result.size) if result.size else None, "created_at": now_iso(),
        })
        stored.append(row["id"])
    br.egress.discard(info.egress_id)
    return _ok(verified.event.event, call_id=call_id, recordings=stored)
