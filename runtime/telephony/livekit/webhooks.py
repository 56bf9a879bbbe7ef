"""``POST /webhooks/livekit``: verified deliveries (runtime.telephony.livekit.auth) turned into calls.

- ``participant_joined``: a caller arriving (runtime.telephony.livekit.callers).
- ``participant_left`` / ``participant_connection_aborted`` end that caller's call,
  ``room_finished`` every call in the room; ``track_published`` is noted on the call;
  ``egress_started`` / ``egress_ended`` tie a room egress to its call and store its files as
  recordings (of an egress that completed, or that ended at its session limit: the file is whole).
- ``num_dropped`` (livekit/protocol webhook/url_notifier.go: deliveries LiveKit dropped since the
  last one it sent, its queue being full or its few retries spent) is logged and counted, and the
  reconciler (runtime.telephony.livekit.reconcile) checks the project's rooms for callers whose
  ``participant_joined`` was lost; ``room_started`` of a room without a call has it checked too.

A delivery only ever touches calls of the tenant whose key signed it (any tenant for the
appliance's key). An event id once answered 2xx is not handled again (a refused or failed
delivery is, if LiveKit redelivers it: its client, go-retryablehttp, retries a connection error or
a 5xx a few times, never a 4xx). Events naming a room, participant or egress this runtime does not
know answer 404; everything else answers 200 ``{"received": true, ...}``.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from runtime.ids import new_id, now_iso
from runtime.telephony.livekit.auth import VerifiedEvent, WebhookRefused, verify
from runtime.telephony.livekit.bridge import KNOWN_EVENTS, LiveKitBridge, bridge
from runtime.telephony.livekit.callers import KIND_SIP, participant_joined
from runtime.telephony.livekit.ending import end_call
from runtime.telephony.livekit.reconcile import reconciler
from runtime.telephony.services import services
from runtime.web.responses import error_response, json_response

log = logging.getLogger("voicectl.livekit")

# livekit/protocol livekit_egress.proto EgressStatus: an egress that reached its session limit
# ended its file cleanly (livekit/egress pkg/pipeline/controller.go SendEOS), so it is kept.
EGRESS_COMPLETE, EGRESS_FAILED, EGRESS_LIMIT_REACHED = 3, 4, 6
EGRESS_KEPT = (EGRESS_COMPLETE, EGRESS_LIMIT_REACHED)
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
    if event.num_dropped > 0:  # a retry of this delivery carries the same count: counted once, above
        log.warning("LiveKit reports dropped webhooks", extra={"dropped": event.num_dropped,
                                                              "api_key": verified.server.api_key})
        br.dropped.inc(event.num_dropped)
        reconciler(request.app).gap(verified.server)
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
        return await participant_joined(app, br, verified)
    if name == "room_started":
        return _room_started(app, br, verified)
    if name in ("participant_left", "participant_connection_aborted"):
        return await _participant_left(br, verified)
    if name == "room_finished":
        return await _room_finished(br, verified)
    if name == "track_published":
        return _track_published(app, br, verified)
    if name == "egress_started":
        return await _egress_started(app, br, verified)
    if name == "egress_ended":
        return await _egress_ended(app, br, verified)
    return _ok(name, ignored=True)  # egress_updated, track_unpublished, ingress_*, agent_job_*


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


def _room_started(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    """LiveKit SIP creates a caller's room as it joins: if its participant_joined is lost, the
    reconciler finds the caller."""
    room = verified.event.room.name
    if room and not br.in_room(room, verified.scope):
        reconciler(app).watch(verified.server, room)
    return _ok(verified.event.event, ignored=True)


def _track_published(app: web.Application, br: LiveKitBridge, verified: VerifiedEvent) -> web.Response:
    event = verified.event
    call = br.call(event.room.name, event.participant.identity, verified.scope)
    if call is None and event.participant.kind == KIND_SIP and event.room.name:
        reconciler(app).watch(verified.server, event.room.name)  # a SIP caller this runtime never heard join
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
    if info.status not in EGRESS_KEPT:
        log.warning("livekit egress did not complete",
                    extra={"call_id": call_id, "egress_id": info.egress_id, "status": int(info.status)})
        return _ok(verified.event.event, call_id=call_id, recordings=[], egress_status=int(info.status))
    if info.status == EGRESS_LIMIT_REACHED:
        log.warning("livekit egress ended at its session limit; its file is kept",
                    extra={"call_id": call_id, "egress_id": info.egress_id, "error": info.error[:200]})
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
    return _ok(verified.event.event, call_id=call_id, recordings=stored, egress_status=int(info.status))
