"""LiveKit through livekit-api against the local Twirp peer: client tokens (decoded with
livekit-api's TokenVerifier), agent dispatch, SIP transfer and hang-up of a live call through the
engine's CallControl, and room egress; LiveKit errors and missing configuration as JSON errors."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from livekit import api
from livekit.protocol import egress, models

from runtime.telephony.livekit.bridge import RECENT_TTL_S, ExpiringSet, bridge
from tests.livekit.support import (
    API_KEY,
    API_SECRET,
    APPLIANCE_KEY,
    APPLIANCE_SECRET,
    NUMBER,
    event_json,
    start_world,
    stop_world,
    wait_for,
)


@pytest.fixture
def backend() -> str:
    return "sqlite"


# This module's world: the peer keeps the agent's signal connection waiting ("hold"), and the appliance
# has its own LiveKit project (url and key in config).
WORLD_OPTIONS = {"rtc_mode": "hold", "appliance": True}


async def test_a_client_token_carries_the_room_grants_and_verifies(world) -> None:
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/tokens", world.key,
                                           json={"room": "support-1", "identity": "user-7", "name": "Ann",
                                                 "ttl_s": 600})
    assert status == 201, body
    assert (body["room"], body["identity"], body["agent_spawned"], body["dispatch_id"]) == (
        "support-1", "user-7", False, None)
    assert body["livekit_url"] == world.peer.url.replace("http", "ws", 1)
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(body["token"])
    assert claims.identity == "user-7" and claims.name == "Ann"
    assert claims.video.room_join and claims.video.room == "support-1"
    assert claims.video.can_publish and claims.video.can_subscribe and not claims.video.room_admin
    assert not claims.video.agent and claims.kind == ""
    with pytest.raises(jwt.PyJWTError):  # not the appliance's project's token
        api.TokenVerifier(APPLIANCE_KEY, APPLIANCE_SECRET).verify(body["token"])
    assert world.peer.calls == []  # a token alone asks nothing of the server


async def test_a_token_with_a_number_names_the_call_in_its_attributes_and_the_client_becomes_a_call(world) -> None:
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/tokens", world.key,
                                           json={"room": "web-1", "number": NUMBER, "ttl_s": 86400})
    assert status == 201 and body["agent_spawned"] is True and body["dispatch_id"] is None, body
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(body["token"])
    assert claims.attributes == {"voicectl.tenant_id": world.tenant_id, "voicectl.number": NUMBER}
    assert not claims.video.can_update_own_metadata  # the client cannot rename its call
    assert world.peer.calls == []  # no dispatch: nothing an idle room's closing could take away
    # The browser joins (hours later: the room is new, with no dispatch); LiveKit's webhook carries
    # the token's attributes on the participant (livekit/livekit pkg/rtc/participant.go).
    browser = models.ParticipantInfo(sid="PA_web", identity=body["identity"], attributes=claims.attributes,
                                     kind=models.ParticipantInfo.Kind.STANDARD)
    status, data = await world.post(event_json("participant_joined", room_name="web-1", participant=browser))
    assert status == 200 and data["call_id"], data
    row = await world.api.control.store.voice_calls.get(data["call_id"], tenant_id=world.tenant_id)
    assert (row["provider"], row["to_number"], row["from_number"], row["agent_id"]) == (
        "livekit", NUMBER, None, world.agent_id)
    await wait_for(lambda: world.peer.rtc_tokens)
    assert world.peer.rtc_tokens[0].video.room == "web-1"
    assert world.peer.requests("AgentDispatchService/ListDispatch") == []
    # A second browser in the same room does not start a second agent.
    other = models.ParticipantInfo(sid="PA_web2", identity="user-x", kind=models.ParticipantInfo.Kind.STANDARD)
    status, data2 = await world.post(event_json("participant_joined", room_name="web-1", participant=other))
    assert status == 200 and data2["ignored"] == "the room already has a call", data2


async def test_only_the_signing_tenants_token_attributes_make_a_call(world) -> None:
    # The tenant's own project: its key could mint any attributes, but reaches only its own calls.
    other_id, _ = await world.api.tenant_with_key("someone-else")
    forged = models.ParticipantInfo(sid="PA_f", identity="user-f", kind=models.ParticipantInfo.Kind.STANDARD,
                                    attributes={"voicectl.tenant_id": other_id, "voicectl.number": NUMBER})
    status, data = await world.post(event_json("participant_joined", room_name="forged", participant=forged))
    assert status == 200 and data["ignored"] == "no agent dispatch of this runtime in the room", data
    # The appliance's shared project: a tenant's rooms are "<tenant id>--<name>" and nothing else.
    mine = models.ParticipantInfo(sid="PA_m", identity="user-m", kind=models.ParticipantInfo.Kind.STANDARD,
                                  attributes={"voicectl.tenant_id": world.tenant_id, "voicectl.number": NUMBER})
    status, data = await world.post(event_json("participant_joined", room_name="not-prefixed", participant=mine),
                                    sign_with=(APPLIANCE_KEY, APPLIANCE_SECRET))
    assert status == 200 and data["ignored"] == "no agent dispatch of this runtime in the room", data
    assert await world.calls() == []
    # The same attributes of the signing tenant, in its own project's room: its call.
    status, data = await world.post(event_json("participant_joined", room_name="mine", participant=mine))
    assert status == 200 and data["call_id"], data
    assert [c["to_number"] for c in await world.calls()] == [NUMBER]


async def test_a_dispatch_still_names_the_call_for_clients_with_other_tokens(world) -> None:
    status, made, _ = await world.api.call("POST", "/api/v1/livekit/dispatches", world.key,
                                           json={"room": "disp-room", "number": NUMBER})
    assert status == 201, made
    client = models.ParticipantInfo(sid="PA_c", identity="app-user", kind=models.ParticipantInfo.Kind.STANDARD)
    status, data = await world.post(event_json("participant_joined", room_name="disp-room", participant=client))
    assert status == 200 and data["call_id"], data


async def test_a_standard_participant_without_a_dispatch_is_not_a_call(world) -> None:
    someone = models.ParticipantInfo(sid="PA_s", identity="someone", kind=models.ParticipantInfo.Kind.STANDARD)
    status, data = await world.post(event_json("participant_joined", room_name="plain-room", participant=someone))
    assert status == 200 and data["ignored"] == "no agent dispatch of this runtime in the room", data
    assert await world.calls() == []


async def test_dispatches_can_be_listed_and_removed_and_are_tenant_scoped(world) -> None:
    status, made, _ = await world.api.call("POST", "/api/v1/livekit/dispatches", world.key,
                                           json={"room": "room-d", "number": NUMBER})
    assert status == 201 and made["agent_name"] == "voicectl" and made["number"] == NUMBER, made
    status, listed, _ = await world.api.call("GET", "/api/v1/livekit/dispatches?room=room-d", world.key)
    assert status == 200 and [d["id"] for d in listed["items"]] == [made["id"]], listed
    # Another tenant (on the appliance's project) names the same room: it is a different room.
    other_id, other_key = await world.api.tenant_with_key("other")
    status, theirs, _ = await world.api.call("GET", "/api/v1/livekit/dispatches?room=room-d", other_key)
    assert status == 200 and theirs["items"] == [], theirs
    assert world.peer.requests("AgentDispatchService/ListDispatch")[-1].room == f"{other_id}--room-d"
    status, err, _ = await world.api.call("DELETE", f"/api/v1/livekit/dispatches/{made['id']}?room=room-d",
                                          other_key)
    assert status == 404, err
    status, _, _ = await world.api.call("DELETE", f"/api/v1/livekit/dispatches/{made['id']}?room=room-d", world.key)
    assert status == 204
    assert world.peer.dispatches["room-d"] == []
    status, err, _ = await world.api.call("GET", "/api/v1/livekit/dispatches", world.key)
    assert status == 400 and err["details"] == {"query": "room"}, err


async def test_the_appliance_project_scopes_room_names_by_tenant(world) -> None:
    other_id, other_key = await world.api.tenant_with_key("appliance-only")  # no livekit credential
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/tokens", other_key, json={"room": "support-1"})
    assert status == 201, body
    assert body["room"] == f"{other_id}--support-1"
    claims = api.TokenVerifier(APPLIANCE_KEY, APPLIANCE_SECRET).verify(body["token"])
    assert claims.video.room == f"{other_id}--support-1"


@pytest.mark.parametrize("payload, field", [
    ({"room": "bad room!"}, "room"),
    ({"ttl_s": 5}, "ttl_s"),
    ({"spawn_agent": True}, "(body)"),
    ({"number": "12"}, "number"),
    ({"extra": 1}, "extra"),
])
async def test_bad_token_requests_get_422(world, payload, field) -> None:
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/tokens", world.key, json=payload)
    assert status == 422 and field in [e["field"] for e in body["details"]["errors"]], body


async def test_unknown_numbers_and_livekit_server_errors_are_json_errors(world) -> None:
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/tokens", world.key,
                                           json={"number": "+15550100009"})
    assert status == 404 and body["details"] == {"number": "+15550100009"}, body
    world.peer.fail["AgentDispatchService/CreateDispatch"] = (403, "permission_denied")
    dispatch = {"room": "err-room", "number": NUMBER}
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/dispatches", world.key, json=dispatch)
    assert status == 502 and body["error"] == "livekit_error", body
    assert body["details"] == {"livekit_code": "permission_denied", "livekit_status": 403}
    world.peer.fail["AgentDispatchService/CreateDispatch"] = (500, "internal")
    status, body, _ = await world.api.call("POST", "/api/v1/livekit/dispatches", world.key, json=dispatch)
    assert status == 502, body


async def test_livekit_not_configured_is_409(settings) -> None:
    """Neither a tenant credential nor the appliance's key: a 409 the tenant can fix, not a crash."""
    bare = await start_world(settings, rtc_mode="refuse", appliance=False)
    try:
        other_id, other_key = await bare.api.tenant_with_key("no-livekit")
        status, body, _ = await bare.api.call("POST", "/api/v1/livekit/tokens", other_key, json={})
        assert status == 409 and body["error"] == "livekit_not_configured", body
        assert "LiveKit is not configured" in body["message"]
    finally:
        await stop_world(bare)


async def live_call(world, room: str, identity: str):
    """A SIP call whose agent is still joining (the peer holds the signal connection)."""
    from runtime.api.appkeys import TRACKER

    status, data = await world.sip_joins(room, identity)
    assert status == 200, data
    return world.api.app[TRACKER].get(data["call_id"])


async def test_the_engine_hangs_up_by_removing_the_participant(world) -> None:
    session = await live_call(world, "hang-room", "sip_h")
    await session.connect()
    await session.hangup("end_call")
    row = await world.final(session.id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "end_call", "agent")
    assert [(r.room, r.identity) for r in world.peer.requests("RoomService/RemoveParticipant")] == [
        ("hang-room", "sip_h")]


async def test_room_egress_records_a_live_call_to_the_tenants_s3_storage(world) -> None:
    status, body, _ = await world.api.call(
        "PUT", "/api/v1/credentials/s3", world.api.admin_key, tenant_id=world.tenant_id,
        json={"fields": {"endpoint": "https://s3.example.com", "region": "eu-1", "bucket": "calls",
                         "access_key_id": "AKIAX"}, "secret": "s3-secret-value"})
    assert status == 200, body
    session = await live_call(world, "egress-room", "sip_e")
    status, started, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", world.key)
    assert status == 201 and started["egress_id"].startswith("EG_") and started["room"] == "egress-room", started
    [req] = world.peer.requests("Egress/StartRoomCompositeEgress")
    assert req.room_name == "egress-room" and req.audio_only
    [out] = req.file_outputs
    assert out.file_type == egress.EncodedFileType.OGG and out.filepath == f"{world.tenant_id}/{session.id}.ogg"
    assert (out.s3.access_key, out.s3.secret, out.s3.bucket, out.s3.region, out.s3.endpoint) == (
        "AKIAX", "s3-secret-value", "calls", "eu-1", "https://s3.example.com")
    assert out.s3.force_path_style  # telephony.livekit.egress_force_path_style's default
    status, again, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", world.key)
    assert status == 409, again
    other_id, other_key = await world.api.tenant_with_key("nosy")
    status, err, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", other_key)
    assert status == 404, err
    status, stopped, _ = await world.api.call(
        "DELETE", f"/api/v1/livekit/calls/{session.id}/egress/{started['egress_id']}", world.key)
    assert status == 200 and stopped["egress_id"] == started["egress_id"], stopped
    assert world.peer.requests("Egress/StopEgress")[0].egress_id == started["egress_id"]
    status, err, _ = await world.api.call("DELETE", f"/api/v1/livekit/calls/{session.id}/egress/EG_other", world.key)
    assert status == 404, err
    # egress_ended arrives after the call ended: the recording is stored for the call.
    await world.post(event_json("room_finished", room_name="egress-room"))
    ended = egress.EgressInfo(egress_id=started["egress_id"], room_name="egress-room",
                              status=egress.EgressStatus.EGRESS_COMPLETE)
    ended.file_results.add(filename=f"{world.tenant_id}/{session.id}.ogg", location="https://calls/x.ogg")
    status, data = await world.post(event_json("egress_ended", egress_info=ended))
    assert status == 200 and len(data["recordings"]) == 1, data


async def test_a_call_can_be_recorded_again_once_its_egress_stopped_or_ended(world) -> None:
    session = await live_call(world, "again-room", "sip_ag")
    url = f"/api/v1/livekit/calls/{session.id}/egress"
    status, first, _ = await world.api.call("POST", url, world.key)
    assert status == 201, first
    status, stopped, _ = await world.api.call("DELETE", f"{url}/{first['egress_id']}", world.key)
    assert status == 200, stopped
    status, second, _ = await world.api.call("POST", url, world.key)
    assert status == 201 and second["egress_id"] != first["egress_id"], second
    status, busy, _ = await world.api.call("POST", url, world.key)
    assert status == 409 and busy["details"] == {"egress_id": second["egress_id"]}, busy
    # LiveKit ends the second egress itself (a failure here): the call may be recorded again.
    ended = egress.EgressInfo(egress_id=second["egress_id"], room_name="again-room",
                              status=egress.EgressStatus.EGRESS_FAILED)
    status, data = await world.post(event_json("egress_ended", egress_info=ended))
    assert status == 200 and data["call_id"] == session.id, data
    status, third, _ = await world.api.call("POST", url, world.key)
    assert status == 201, third
    # A late egress_started of an egress already noted adds nothing to the history.
    late = egress.EgressInfo(egress_id=third["egress_id"], room_name="again-room",
                             status=egress.EgressStatus.EGRESS_ACTIVE)
    status, data = await world.post(event_json("egress_started", egress_info=late))
    assert status == 200 and data["call_id"] == session.id, data
    assert session.summary["livekit"]["egress_ids"] == [first["egress_id"], second["egress_id"], third["egress_id"]]


async def test_two_concurrent_egress_starts_record_the_call_once(world) -> None:
    session = await live_call(world, "race-room", "sip_race")
    url = f"/api/v1/livekit/calls/{session.id}/egress"
    gate = world.peer.gates["Egress/StartRoomCompositeEgress"] = asyncio.Event()
    first = asyncio.create_task(world.api.call("POST", url, world.key))
    await wait_for(lambda: world.peer.requests("Egress/StartRoomCompositeEgress"))  # in flight, held
    second = asyncio.create_task(world.api.call("POST", url, world.key))
    await wait_for(lambda: second.done() or len(world.peer.requests("Egress/StartRoomCompositeEgress")) > 1)
    gate.set()
    (status1, body1, _), (status2, body2, _) = await asyncio.gather(first, second)
    assert (status1, status2) == (201, 409), (body1, body2)
    assert len(world.peer.requests("Egress/StartRoomCompositeEgress")) == 1
    assert session.summary["livekit"]["egress_ids"] == [body1["egress_id"]]


async def test_an_egress_ended_after_a_restart_still_finds_its_call(world) -> None:
    session = await live_call(world, "restart-room", "sip_rs")
    status, started, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", world.key)
    assert status == 201, started
    await world.post(event_json("room_finished", room_name="restart-room"))
    # A restart: this process's memory of rooms and egresses is gone, the store's link is not.
    br = bridge(world.api.app)
    br.egress = ExpiringSet(RECENT_TTL_S)
    br.recent_rooms = ExpiringSet(RECENT_TTL_S)
    late = egress.EgressInfo(egress_id=started["egress_id"], room_name="restart-room",
                             status=egress.EgressStatus.EGRESS_ACTIVE)
    status, data = await world.post(event_json("egress_started", egress_info=late))  # a redelivery: known
    assert status == 200 and data["call_id"] == session.id, data
    ended = egress.EgressInfo(egress_id=started["egress_id"], room_name="restart-room",
                              status=egress.EgressStatus.EGRESS_COMPLETE)
    ended.file_results.add(filename=f"{world.tenant_id}/{session.id}.ogg", location="https://calls/r.ogg")
    status, data = await world.post(event_json("egress_ended", egress_info=ended))
    assert status == 200 and data["call_id"] == session.id and len(data["recordings"]) == 1, data
    rows, _ = await world.api.control.store.recordings.list(tenant_id=world.tenant_id,
                                                            equals={"call_id": session.id})
    assert [(r["kind"], r["uri"]) for r in rows] == [("room", "https://calls/r.ogg")]
    # Another tenant's key does not learn of it.
    assert await br.egress_call(world.api.control.store, started["egress_id"], "ten_someone_else") is None


async def test_s3_egress_outputs_can_use_virtual_hosted_addressing(settings) -> None:
    world = await start_world(settings, rtc_mode="hold", livekit={"egress_force_path_style": False})
    try:
        status, body, _ = await world.api.call(
            "PUT", "/api/v1/credentials/s3", world.api.admin_key, tenant_id=world.tenant_id,
            json={"fields": {"endpoint": "https://s3.amazonaws.com", "region": "us-east-1", "bucket": "calls",
                             "access_key_id": "AKIAX"}, "secret": "s3-secret-value"})
        assert status == 200, body
        session = await live_call(world, "vhost-room", "sip_v")
        status, started, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", world.key)
        assert status == 201, started
        [req] = world.peer.requests("Egress/StartRoomCompositeEgress")
        assert req.file_outputs[0].s3.bucket == "calls" and req.file_outputs[0].s3.force_path_style is False
    finally:
        await stop_world(world)


async def test_an_egress_that_reached_its_limit_keeps_its_recording(world) -> None:
    session = await live_call(world, "limit-room", "sip_lim")
    status, started, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", world.key)
    assert status == 201, started
    # livekit/protocol livekit_egress.go SetLimitReached: status EGRESS_LIMIT_REACHED, error
    # "Session limit reached", details "End reason: Session limit reached"; the file is closed cleanly.
    ended = egress.EgressInfo(egress_id=started["egress_id"], room_name="limit-room",
                              status=egress.EgressStatus.EGRESS_LIMIT_REACHED, error="Session limit reached",
                              error_code=413, details="End reason: Session limit reached")
    ended.file_results.add(filename=f"{world.tenant_id}/{session.id}.ogg", location="s3://calls/limit.ogg",
                           duration=3_600_000_000_000, size=10_000_000)
    status, data = await world.post(event_json("egress_ended", egress_info=ended))
    assert status == 200 and len(data["recordings"]) == 1, data
    assert data["egress_status"] == egress.EgressStatus.EGRESS_LIMIT_REACHED
    rows, _ = await world.api.control.store.recordings.list(tenant_id=world.tenant_id,
                                                            equals={"call_id": session.id})
    assert [(r["uri"], r["duration_ms"]) for r in rows] == [("s3://calls/limit.ogg", 3_600_000)]
    # The call can be recorded again (its egress has ended).
    status, again, _ = await world.api.call("POST", f"/api/v1/livekit/calls/{session.id}/egress", world.key)
    assert status == 201, again
