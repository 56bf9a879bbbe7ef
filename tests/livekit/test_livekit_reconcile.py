"""Lost webhooks: LiveKit drops deliveries when its queue is full and says so in the next one's
``num_dropped`` (livekit/protocol webhook/url_notifier.go). The runtime logs and counts them, and
finds SIP callers whose ``participant_joined`` never came with ListRooms / ListParticipants."""

from __future__ import annotations

import asyncio
import re

import pytest

from runtime.api.appkeys import TRACKER
from tests.livekit.support import event_json, start_world, stop_world, wait_for


@pytest.fixture
def backend() -> str:
    return "sqlite"


WORLD_OPTIONS = {"room_double": True, "livekit": {"reconcile_interval_s": 0.2}}


async def metric(world, name: str) -> float:
    _, text, _ = await world.api.call("GET", "/metrics")
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def call_for(world, identity: str) -> dict:
    async def found() -> list[dict]:
        return [c for c in await world.calls() if c["provider_call_id"] == f"SCL_{identity}"]

    for _ in range(100):
        rows = await found()
        if rows:
            return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no call for {identity}")


async def test_dropped_webhooks_are_counted_and_the_lost_caller_gets_its_call(world) -> None:
    world.peer.sip_caller("lost-room", "sip_lost")  # its participant_joined was dropped
    body = event_json("room_started", room_name="another-room", num_dropped=3)
    status, data = await world.post(body)
    assert status == 200 and data["ignored"] is True, data
    status, data = await world.post(body)  # LiveKit's retry of that delivery: the same count
    assert status == 200 and data["duplicate"] is True, data
    assert await metric(world, "voicectl_livekit_webhooks_dropped_total") == 3
    row = await call_for(world, "sip_lost")
    assert (row["to_number"], row["from_number"]) == ("+15550107100", "+15550109999")
    assert world.peer.requests("RoomService/ListRooms")
    assert "lost-room" in [r.room for r in world.peer.requests("RoomService/ListParticipants")]
    session = world.api.app[TRACKER].get(row["id"])
    await wait_for(lambda: session.state == "connected")  # answered and served like any caller
    assert await metric(world, "voicectl_livekit_reconciled_callers_total") == 1
    await world.sip_leaves("lost-room", "sip_lost")
    assert (await world.final(row["id"]))["end_reason"] == "caller_hangup"


async def test_a_room_started_whose_caller_never_joined_is_checked(world) -> None:
    world.peer.sip_caller("quiet-room", "sip_q")
    status, _ = await world.post(event_json("room_started", room_name="quiet-room"))
    assert status == 200
    row = await call_for(world, "sip_q")
    assert row["status"] in ("ringing", "connected")
    assert world.peer.requests("RoomService/ListRooms") == []  # no gap reported: only that room


async def test_only_rooms_still_without_a_call_are_listed(world) -> None:
    await world.post(event_json("room_started", room_name="busy-room"))
    status, data = await world.sip_joins("busy-room", "sip_b")
    assert status == 200, data
    world.peer.sip_caller("silent-room", "sip_s")
    await world.post(event_json("room_started", room_name="silent-room"))
    await call_for(world, "sip_s")
    assert [r.room for r in world.peer.requests("RoomService/ListParticipants")] == ["silent-room"]
    assert len(await world.calls()) == 2


async def test_a_caller_that_hung_up_meanwhile_is_left_alone(world) -> None:
    world.peer.sip_caller("gone-room", "sip_g", status="hangup")
    await world.post(event_json("room_started", room_name="gone-room"))
    await wait_for(lambda: world.peer.requests("RoomService/ListParticipants"))
    await asyncio.sleep(0.1)
    assert await world.calls() == []


async def test_no_checks_when_reconciling_is_off(settings) -> None:
    world = await start_world(settings, room_double=True, livekit={"reconcile_interval_s": 0})
    try:
        world.peer.sip_caller("lost-room", "sip_lost")
        status, _ = await world.post(event_json("room_started", room_name="lost-room", num_dropped=1))
        assert status == 200
        assert await metric(world, "voicectl_livekit_webhooks_dropped_total") == 1  # still counted
        await asyncio.sleep(0.3)
        assert world.peer.requests("RoomService/ListRooms") == [] and await world.calls() == []
    finally:
        await stop_world(world)
