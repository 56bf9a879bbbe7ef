"""POST /webhooks/livekit: deliveries signed as LiveKit signs them (livekit-api's AccessToken with
the body's sha256) reach calls; forged, stale, malformed, duplicate and unknown ones are refused
with a JSON error and touch nothing else. The agent's room join is exercised up to the server
boundary: the real SDK connects to the local peer's /rtc with the agent's token."""

from __future__ import annotations

import asyncio
import datetime
import re
import secrets

import pytest
from livekit import api
from livekit.protocol import egress, models

from tests.livekit.support import (
    API_KEY,
    API_SECRET,
    APPLIANCE_KEY,
    APPLIANCE_SECRET,
    CALLER,
    NUMBER,
    event_json,
    sign,
    sip_participant,
    start_world,
    stop_world,
    wait_for,
)


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the store is covered on both backends elsewhere; these test the bridge


# This module's world: the peer keeps the agent's signal connection waiting ("hold"), and the appliance
# has its own LiveKit project (url and key in config).
WORLD_OPTIONS = {"rtc_mode": "hold", "appliance": True}


async def metric(world, name: str, **labels: str) -> float:
    _, text, _ = await world.api.call("GET", "/metrics")
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}(?:{{{re.escape(label)}}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def join(world, room: str = "call-room-1", identity: str = "sip_caller_1", **kw) -> tuple[int, dict]:
    return await world.sip_joins(room, identity, **kw)


def removed(world) -> list[tuple[str, str]]:
    return [(r.room, r.identity) for r in world.peer.requests("RoomService/RemoveParticipant")]


async def test_a_sip_caller_becomes_a_call_and_the_agent_joins_its_room(world) -> None:
    status, body = await join(world)
    assert status == 200 and body["received"] is True and body["event"] == "participant_joined", body
    call_id = body["call_id"]
    row = await world.api.control.store.voice_calls.get(call_id, tenant_id=world.tenant_id)
    assert (row["provider"], row["status"], row["from_number"], row["to_number"], row["provider_call_id"]) == (
        "livekit", "ringing", CALLER, NUMBER, "SCL_sip_caller_1")
    assert row["agent_id"] == world.agent_id
    # The real SDK opens the signal connection with the agent's token (verified by the peer).
    await wait_for(lambda: world.peer.rtc_tokens)
    claims = world.peer.rtc_tokens[0]
    assert claims is not None, "the join token does not verify with the tenant's key"
    assert claims.identity == f"voicectl-{call_id}" and claims.kind == "agent"
    assert claims.video.room_join and claims.video.room == "call-room-1" and claims.video.agent
    assert claims.video.can_publish and claims.video.can_subscribe
    # The caller hangs up: the call ends with the caller as the one who hung up.
    status, body = await world.post(event_json("participant_left", room_name="call-room-1",
                                               participant=sip_participant()))
    assert status == 200 and body["call_id"] == call_id, body
    row = await world.final(call_id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")
    assert row["summary"]["livekit"] == {"room": "call-room-1", "participant": "sip_caller_1", "sip": True}
    topics = await world.events(call_id)
    assert topics[0] == "voice.call.started" and topics[-1] == "voice.call.completed", topics
    # room_finished for the room afterwards is known and harmless.
    status, body = await world.post(event_json("room_finished", room_name="call-room-1"))
    assert status == 200 and body["calls_ended"] == [], body


async def test_an_agent_that_cannot_join_fails_the_call_with_an_event(settings) -> None:
    world = await start_world(settings, rtc_mode="refuse")
    try:
        status, body = await join(world)
        assert status == 200, body
        row = await world.final(body["call_id"])
        assert (row["status"], row["end_reason"]) == ("failed", "agent_join_failed")
        assert (await world.events(row["id"]))[-1] == "voice.call.failed"
        assert world.peer.rtc_tokens, "the SDK never tried the server"
        # The caller is not left ringing: removed from the room (LiveKit SIP hangs up).
        await wait_for(lambda: removed(world) == [("call-room-1", "sip_caller_1")])
        assert "sip_caller_1" not in world.peer.rooms["call-room-1"]
    finally:
        await stop_world(world)


async def test_the_appliance_key_is_accepted_for_any_tenant(world) -> None:
    body = event_json("participant_joined", room_name="appliance-room",
                      participant=sip_participant(identity="sip_a"))
    status, data = await world.post(body, sign_with=(APPLIANCE_KEY, APPLIANCE_SECRET))
    assert status == 200 and data["call_id"], data
    await wait_for(lambda: world.peer.rtc_tokens)
    assert world.peer.rtc_tokens[0] is not None  # signed with the appliance's key this time
    status, data = await world.post(event_json("room_finished", room_name="appliance-room"),
                                    sign_with=(APPLIANCE_KEY, APPLIANCE_SECRET))
    assert status == 200 and data["calls_ended"] == [data["calls_ended"][0]], data
    row = await world.final(data["calls_ended"][0])
    assert (row["status"], row["end_reason"]) == ("ended", "room_finished")


def expired_token(body: str) -> str:
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(API_KEY, API_SECRET).with_sha256(digest).with_ttl(
        datetime.timedelta(seconds=-120)).to_jwt()


@pytest.mark.parametrize("case, status, reason", [
    ("missing", 401, "missing_token"),
    ("garbage", 401, "bad_token"),
    ("wrong_secret", 401, "bad_signature"),
    ("unknown_key", 403, "unknown_key"),
    ("tampered_body", 401, "bad_body_hash"),
    ("expired_token", 401, "stale"),
    ("old_event", 401, "stale"),
    ("malformed_json", 400, "malformed"),
    ("not_utf8", 400, "bad_body"),
])
async def test_forged_stale_and_malformed_deliveries_are_refused_and_store_nothing(world, case, status,
                                                                                   reason) -> None:
    # A live call in another room must be untouched by all of it.
    _, live = await join(world, room="bystander", identity="sip_bystander")
    body = event_json("participant_joined", room_name="call-x", participant=sip_participant(identity="sip_x"))
    before = await metric(world, "voicectl_livekit_webhooks_refused_total", reason=reason)
    auth, raw = sign(body), body.encode()
    if case == "missing":
        auth = ""
    elif case == "garbage":
        auth = "not-a-jwt"
    elif case == "wrong_secret":
        auth = sign(body, API_KEY, "a-different-secret-of-enough-length")
    elif case == "unknown_key":
        auth = sign(body, "APInobody", API_SECRET)
    elif case == "tampered_body":
        raw = body.replace(NUMBER, "+15550100000").encode()
    elif case == "expired_token":
        auth = expired_token(body)
    elif case == "old_event":
        body = event_json("participant_joined", room_name="call-x", participant=sip_participant(identity="sip_x"),
                          created_at=1_600_000_000)
        auth, raw = sign(body), body.encode()
    elif case == "malformed_json":
        raw = b'{"event": "participant_joined", "room": '
        auth = sign(raw.decode())
    elif case == "not_utf8":
        raw = b'{"event": "\xff\xfe"}'
        auth = sign("x")
    headers = {"Content-Type": "application/webhook+json"}
    if auth:
        headers["Authorization"] = auth
    got, data, _ = await world.api.call("POST", "/webhooks/livekit", data=raw, headers=headers)
    assert got == status, data
    assert set(data) == {"error", "message", "details"} and data["details"]["reason"] == reason, data
    assert await metric(world, "voicectl_livekit_webhooks_refused_total", reason=reason) == before + 1
    calls = await world.calls()
    assert [c["id"] for c in calls] == [live["call_id"]] and calls[0]["status"] == "ringing"


async def test_a_duplicate_delivery_is_handled_once(world) -> None:
    body = event_json("participant_joined", room_name="dup-room", participant=sip_participant(identity="sip_d"),
                      event_id="EV_same")
    first = await world.post(body)
    second = await world.post(body)  # LiveKit re-signs each delivery: a fresh token, the same event id
    assert first[0] == 200 and first[1]["call_id"], first
    assert second == (200, {"received": True, "event": "participant_joined", "duplicate": True})
    assert len(await world.calls()) == 1
    assert await metric(world, "voicectl_livekit_webhook_duplicates_total") == 1


async def test_an_unknown_number_is_a_failed_call_of_the_tenant_and_the_caller_is_hung_up(world) -> None:
    status, data = await join(world, room="wrong-number", identity="sip_w", dialled="+15550100001")
    assert status == 404 and data["error"] == "unknown_number", data
    assert data["details"] == {"reason": "unknown_number", "number": "+15550100001"}
    [row] = await world.calls()
    assert (row["status"], row["end_reason"], row["to_number"]) == ("failed", "unknown_number", "+15550100001")
    assert await world.events(row["id"]) == ["voice.call.started", "call.state_changed", "voice.call.failed"]
    await wait_for(lambda: removed(world) == [("wrong-number", "sip_w")])
    assert "sip_w" not in world.peer.rooms["wrong-number"]


async def test_the_appliance_key_with_an_unknown_number_stores_nothing(world) -> None:
    status, data = await world.sip_joins("r", "sip_u", dialled="+15550100002",
                                         sign_with=(APPLIANCE_KEY, APPLIANCE_SECRET))
    assert status == 404 and data["error"] == "unknown_number", data
    assert await world.calls() == []
    await wait_for(lambda: removed(world) == [("r", "sip_u")])  # no tenant to keep a row for; still hung up


async def test_a_tenant_key_cannot_route_another_tenants_number(world) -> None:
    other_id, other_key = await world.api.tenant_with_key("other-tenant")
    status, agent, _ = await world.api.call("POST", "/api/v1/agents", other_key,
                                            json={"name": "x", "system_prompt": "y"})
    assert status == 201, agent
    status, body, _ = await world.api.call("POST", "/api/v1/numbers", world.api.admin_key, tenant_id=other_id,
                                           json={"e164": "+15550107200", "provider": "livekit",
                                                 "agent_id": agent["id"]})
    assert status == 201, body
    status, data = await join(world, room="cross", identity="sip_c", dialled="+15550107200")
    assert status == 404 and data["error"] == "unknown_number", data
    rows, _ = await world.api.control.store.voice_calls.list(tenant_id=other_id, limit=10)
    assert rows == [] and await world.calls() == []


@pytest.mark.parametrize("name", ["participant_left", "room_finished", "track_published", "egress_ended"])
async def test_events_for_unknown_rooms_answer_404(world, name) -> None:
    kwargs = {"room_name": "never-seen"}
    if name in ("participant_left", "track_published"):
        kwargs["participant"] = sip_participant(identity="ghost")
    if name == "egress_ended":
        kwargs = {"egress_info": egress.EgressInfo(egress_id="EG_ghost", room_name="never-seen",
                                                   status=egress.EgressStatus.EGRESS_COMPLETE)}
    status, data = await world.post(event_json(name, **kwargs))
    assert status == 404 and data["error"] == "not_found" and set(data) == {"error", "message", "details"}, data


async def test_bad_participant_joined_payloads_get_400(world) -> None:
    # A dispatch rule with hide_phone_number leaves sip.trunkPhoneNumber out (livekit/protocol
    # sip/sip.go): nothing to route by, so the caller is removed rather than left ringing.
    p = world.peer.sip_caller("r", "sip_hidden")
    del p.attributes["sip.trunkPhoneNumber"]
    status, data = await world.post(event_json("participant_joined", room_name="r", participant=p))
    assert status == 400 and data["details"] == {"missing": ["sip.trunkPhoneNumber"]}, data
    await wait_for(lambda: removed(world) == [("r", "sip_hidden")])
    status, data = await world.post(event_json("participant_joined", participant=sip_participant()))
    assert status == 400 and data["details"] == {"missing": ["room.name"]}, data
    assert await world.calls() == []


async def test_other_events_are_acknowledged(world) -> None:
    for name in ("room_started", "egress_updated", "agent_job_started", "track_unpublished"):
        status, data = await world.post(event_json(name, room_name="some-room"))
        assert status == 200 and data == {"received": True, "event": name, "ignored": True}, data
    agent = models.ParticipantInfo(identity="voicectl-x", kind=models.ParticipantInfo.Kind.AGENT)
    status, data = await world.post(event_json("participant_joined", room_name="some-room", participant=agent))
    assert status == 200 and data["ignored"] == "not a caller", data


async def test_track_and_egress_events_are_tied_to_the_call(world) -> None:
    _, joined = await join(world, room="rec-room", identity="sip_r")
    call_id = joined["call_id"]
    track = models.TrackInfo(sid="TR_audio1", type=models.TrackType.AUDIO)
    status, data = await world.post(event_json("track_published", room_name="rec-room",
                                               participant=sip_participant(identity="sip_r"), track=track))
    assert status == 200 and data["call_id"] == call_id, data
    started = egress.EgressInfo(egress_id="EG_1", room_name="rec-room", status=egress.EgressStatus.EGRESS_ACTIVE)
    status, data = await world.post(event_json("egress_started", egress_info=started))
    assert status == 200 and data["call_id"] == call_id, data
    await world.post(event_json("participant_left", room_name="rec-room", participant=sip_participant(identity="sip_r")))
    row = await world.final(call_id)
    assert row["summary"]["livekit"]["tracks"] == ["TR_audio1"]
    assert row["summary"]["livekit"]["egress_ids"] == ["EG_1"]
    # The egress ends after the call: its file becomes the call's recording.
    ended = egress.EgressInfo(egress_id="EG_1", room_name="rec-room", status=egress.EgressStatus.EGRESS_COMPLETE)
    ended.file_results.add(filename="t/c.ogg", location="s3://bucket/t/c.ogg", duration=3_500_000_000, size=4096)
    status, data = await world.post(event_json("egress_ended", egress_info=ended))
    assert status == 200 and data["call_id"] == call_id and len(data["recordings"]) == 1, data
    status, page, _ = await world.api.call("GET", f"/api/v1/calls/{call_id}/recordings", world.key)
    assert status == 200 and [(r["storage"], r["uri"], r["format"], r["duration_ms"], r["size_bytes"])
                              for r in page["items"]] == [("livekit_egress", "s3://bucket/t/c.ogg", "ogg", 3500, 4096)]


async def test_a_caller_leaving_while_the_agent_joins_ends_the_call_and_the_join(world) -> None:
    _, joined = await join(world, room="quick", identity="sip_q")
    await wait_for(lambda: world.peer.rtc_tokens)  # the SDK is connecting (the peer holds it)
    status, _ = await world.post(event_json("participant_connection_aborted", room_name="quick",
                                            participant=sip_participant(identity="sip_q")))
    assert status == 200
    row = await world.final(joined["call_id"])
    assert (row["status"], row["end_reason"]) == ("ended", "connection_aborted")
    from runtime.telephony.livekit.bridge import bridge

    br = bridge(world.api.app)
    await wait_for(lambda: not br.rooms and not br.by_call)


async def test_forged_keys_cost_at_most_one_credentials_scan(world, monkeypatch) -> None:
    from runtime.telephony.livekit import bridge as livekit_bridge

    monkeypatch.setattr(livekit_bridge, "KEY_MAP_TTL_S", 60.0, raising=False)  # the whole test in one TTL
    table = world.api.control.store.credentials
    real, reads = table.list, []

    async def counting(**kwargs):
        reads.append(kwargs)
        return await real(**kwargs)

    monkeypatch.setattr(table, "list", counting)
    body = event_json("participant_joined", room_name="flood", participant=sip_participant(identity="sip_f"))

    async def forged() -> tuple[int, dict]:
        return await world.post(body, sign(body, f"APIforged{secrets.token_hex(6)}", API_SECRET))

    answers = list(await asyncio.gather(*(forged() for _ in range(10))))
    answers += [await forged() for _ in range(10)]
    assert all(status == 403 and data["details"]["reason"] == "unknown_key" for status, data in answers), answers
    assert len(reads) <= 1, reads
    assert await world.calls() == []


async def test_a_refused_delivery_is_handled_when_livekit_redelivers_it(world) -> None:
    # participant_left overtakes participant_joined: refused (404), so LiveKit redelivers it later.
    left = event_json("participant_left", room_name="late-join", participant=sip_participant(identity="sip_lj"),
                      event_id="EV_left_early")
    status, data = await world.post(left)
    assert status == 404, data
    _, joined = await join(world, room="late-join", identity="sip_lj")
    status, data = await world.post(left)  # the same event id, a fresh token
    assert status == 200 and data.get("call_id") == joined["call_id"], data
    row = await world.final(joined["call_id"])
    assert (row["status"], row["end_reason"]) == ("ended", "caller_hangup")
    status, data = await world.post(left)  # handled now: a further redelivery is a duplicate
    assert status == 200 and data["duplicate"] is True, data


async def test_another_tenants_key_does_not_learn_of_a_known_egress(world) -> None:
    _, joined = await join(world, room="eg-room", identity="sip_eg")
    started = egress.EgressInfo(egress_id="EG_mine", room_name="eg-room", status=egress.EgressStatus.EGRESS_ACTIVE)
    status, data = await world.post(event_json("egress_started", egress_info=started))
    assert status == 200 and data["call_id"] == joined["call_id"], data
    other_id, _ = await world.api.tenant_with_key("other-project")
    other = ("APIotherproject", "other-livekit-secret-0123456789abcdef")
    status, body, _ = await world.api.call("PUT", "/api/v1/credentials/livekit", world.api.admin_key,
                                           tenant_id=other_id, json={"fields": {"url": world.peer.url,
                                                                                "api_key": other[0]},
                                                                     "secret": other[1]})
    assert status == 200, body
    status, data = await world.post(event_json("egress_started", egress_info=started), sign_with=other)
    assert status == 404 and joined["call_id"] not in str(data), data
