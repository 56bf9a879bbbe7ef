"""Outbound calls through LiveKit SIP, to the server boundary: POST /api/v1/calls from a LiveKit
number dials CreateSIPParticipant (livekit-api's protobuf, against the local Twirp peer) on the
tenant's outbound trunk, the agent joins the call's room through the real SDK (held at the
peer's /rtc), LiveKit's signed webhooks about the callee reach the call; unanswered dials end
with their SIP status' reason; answering-machine detection is refused."""

from __future__ import annotations

import asyncio

import pytest

from tests.livekit.support import API_KEY, NUMBER, event_json, sip_participant, wait_for

CALLEE = "+15550123456"
WORLD_OPTIONS = {"rtc_mode": "hold"}


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the API's store side runs on both backends in tests/twilio/test_outbound_api.py


async def _trunk(world, trunk: str = "ST_outbound1") -> None:
    status, body, _ = await world.api.call("PUT", "/api/v1/credentials/livekit", world.api.admin_key,
                                           tenant_id=world.tenant_id,
                                           json={"fields": {"url": world.peer.url, "api_key": API_KEY,
                                                            "sip_outbound_trunk_id": trunk}})
    assert status == 200, body


async def _place(world, expect: int = 201, **body) -> dict:
    status, data, _ = await world.api.call("POST", "/api/v1/calls", world.key,
                                           json={"to": CALLEE, "from": NUMBER, **body})
    assert status == expect, data
    return data


async def _states(world, call_id: str) -> list[str]:
    rows, _ = await world.api.control.store.call_events.list(tenant_id=world.tenant_id,
                                                            equals={"call_id": call_id}, limit=100)
    changes = [r["payload"] for r in rows if r["topic"] == "call.state_changed"]
    return [changes[0]["from_state"], *(c["to_state"] for c in changes)] if changes else []


async def test_a_sip_call_dials_the_tenants_trunk_and_the_agent_joins_its_room(world) -> None:
    await _trunk(world)
    made = await _place(world, variables={"name": "Lu"}, timeout_s=20)
    assert made == {"id": made["id"], "status": "queued"}
    await wait_for(lambda: world.peer.requests("SIP/CreateSIPParticipant"))
    req = world.peer.requests("SIP/CreateSIPParticipant")[0]
    room, identity = f"voicectl-out-{made['id']}", f"sip-callee-{made['id']}"
    assert (req.sip_trunk_id, req.sip_call_to, req.sip_number, req.room_name, req.participant_identity) == (
        "ST_outbound1", CALLEE, NUMBER, room, identity)
    assert req.wait_until_answered and req.ringing_timeout.seconds == 20 and not req.play_dialtone
    assert dict(req.participant_attributes) == {"voicectl.call_id": made["id"]}
    claims = next(c for m, _, c in world.peer.calls if m == "SIP/CreateSIPParticipant")
    assert claims.sip.call  # verified by the peer with the tenant's key
    # Answered: the agent joins the call's room (the real SDK, held at the peer's /rtc).
    await wait_for(lambda: any(t is not None and t.video.room == room for t in world.peer.rtc_tokens))
    token = next(t for t in world.peer.rtc_tokens if t is not None and t.video.room == room)
    assert token.identity.endswith(made["id"]) and token.kind == "agent"
    # LiveKit's webhooks about the callee find the call, not a new inbound one.
    callee = sip_participant(dialled=NUMBER, caller=CALLEE, identity=identity)
    status, body = await world.post(event_json("participant_joined", room_name=room, participant=callee))
    assert status == 200 and body["call_id"] == made["id"], body
    assert len(await world.calls()) == 1
    row = await world.api.control.store.voice_calls.get(made["id"], tenant_id=world.tenant_id)
    assert (row["direction"], row["provider"], row["status"], row["variables"]) == (
        "outbound", "livekit", "dialing", {"name": "Lu"})
    status, body = await world.post(event_json("participant_left", room_name=room, participant=callee))
    assert status == 200, body
    row = await world.final(made["id"])
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")
    assert await _states(world, made["id"]) == ["queued", "dialing", "ended"]


async def test_unanswered_dials_end_with_the_sip_status_reason(world) -> None:
    await _trunk(world)
    for (code, reason), end in (((486, "Busy Here"), "busy"), ((480, "Temporarily Unavailable"), "no_answer"),
                                ((404, "Not Found"), "carrier_error")):
        world.peer.dial_fails = (code, reason)
        made = await _place(world)
        row = await world.final(made["id"])
        assert (row["status"], row["end_reason"]) == ("failed", end), row
        rows, _ = await world.api.control.store.call_events.list(tenant_id=world.tenant_id,
                                                                equals={"call_id": made["id"]}, limit=50)
        assert rows[-1]["payload"] == {"reason": end, "message": f"LiveKit SIP: {code} {reason}"}
    world.peer.dial_fails = None
    world.peer.fail["SIP/CreateSIPParticipant"] = (403, "permission_denied")
    made = await _place(world)
    row = await world.final(made["id"])
    assert (row["status"], row["end_reason"]) == ("failed", "carrier_error")


async def test_a_call_hung_up_while_it_rings_is_canceled(world) -> None:
    await _trunk(world)
    world.peer.gates["SIP/CreateSIPParticipant"] = gate = asyncio.Event()
    made = await _place(world)
    await wait_for(lambda: world.peer.requests("SIP/CreateSIPParticipant"))
    status, body, _ = await world.api.call("POST", f"/api/v1/calls/{made['id']}/hangup", world.key, json={})
    assert status == 200 and (body["status"], body["end_reason"]) == ("failed", "canceled"), body
    removed = world.peer.requests("RoomService/RemoveParticipant")
    assert [(r.room, r.identity) for r in removed] == [(f"voicectl-out-{made['id']}", f"sip-callee-{made['id']}")]
    gate.set()  # LiveKit answers the dial late: the call stays canceled and no agent joins
    await asyncio.sleep(0.3)
    assert not any(t is not None and t.video.room.endswith(made["id"]) for t in world.peer.rtc_tokens)
    assert await _states(world, made["id"]) == ["queued", "dialing", "failed"]


async def test_what_a_livekit_number_cannot_place(world) -> None:
    data = await _place(world, expect=409)  # no outbound trunk on the credential
    assert data["error"] == "livekit_not_configured"
    await _trunk(world)
    for mode in ("detect", "voicemail"):
        data = await _place(world, expect=422, machine_detection=mode)
        assert data["details"] == {"field": "machine_detection", "provider": "livekit"}, data
    assert world.peer.requests("SIP/CreateSIPParticipant") == [] and await world.calls() == []
