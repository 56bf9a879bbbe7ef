"""The agent inside the room, against the local peer's rooms through RoomDouble (the SDK's events
and objects; tests/livekit/room_double.py): LiveKit SIP answers only once the agent has published,
so the agent greets and transfers only when ``sip.callStatus`` is "active"; it hears its own caller
only; every way it cannot serve a call removes the caller; a transfer is recorded as LiveKit
reports it; one call per room."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc
from livekit.protocol import models, sip

from runtime.api.appkeys import PIPELINE, TRACKER
from runtime.audio import rms
from runtime.telephony.livekit.bridge import bridge
from tests.livekit.support import (
    NOT_ESTABLISHED,
    event_json,
    sip_participant,
    start_world,
    stop_world,
    wait_for,
)


@pytest.fixture
def backend() -> str:
    return "sqlite"


WORLD_OPTIONS = {"room_double": True}


class Listener:
    """What the agent says on its published track, as a subscriber would hear it (16 kHz PCM16)."""

    def __init__(self, track: rtc.LocalAudioTrack) -> None:
        self.stream = rtc.AudioStream(track, sample_rate=16000, num_channels=1, frame_size_ms=20)
        self.frames: list[bytes] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            self.frames.append(event.frame.data.tobytes())

    def loud(self) -> int:
        return sum(1 for f in self.frames if rms(f) > 300)

    async def close(self) -> None:
        await self.stream.aclose()
        self.task.cancel()


def session_of(world, call_id: str):
    return world.api.app[TRACKER].get(call_id)


def removed(world) -> list[tuple[str, str]]:
    return [(r.room, r.identity) for r in world.peer.requests("RoomService/RemoveParticipant")]


async def agent_in(world, room: str):
    await wait_for(lambda: any(d.local_participant.published for d in world.peer.agents(room)))
    return world.peer.agents(room)[0]


async def after_hours(world) -> None:
    status, body, _ = await world.api.call("PATCH", f"/api/v1/agents/{world.agent_id}", world.key,
                                           json={"hours": {"schedule": {}}, "after_hours": {"mode": "transfer"}})
    assert status == 200, body
    status, body, _ = await world.api.call("POST", f"/api/v1/agents/{world.agent_id}/promote",
                                           world.api.admin_key, tenant_id=world.tenant_id, json={"version": 2})
    assert status == 200, body


# Items 1 and 2: act once LiveKit has answered


async def test_the_agent_greets_only_once_livekit_reports_the_sip_call_active(world) -> None:
    world.peer.auto_answer = False  # LiveKit SIP has not answered yet: the caller still hears ringing
    status, data = await world.sip_joins("greet-room", "sip_g")
    assert status == 200, data
    session = session_of(world, data["call_id"])
    agent = await agent_in(world, "greet-room")
    listener = Listener(agent.published_track())
    try:
        await asyncio.sleep(0.8)
        assert session.state == "ringing" and world.peer.status("greet-room", "sip_g") == "ringing"
        assert listener.loud() == 0, "the agent spoke before LiveKit answered the call"
        world.peer.set_call_status("greet-room", "sip_g", "active")  # LiveKit SIP answered
        await wait_for(lambda: session.state == "connected")
        await wait_for(lambda: listener.loud() >= 10, 5)  # the greeting, from its first frame
    finally:
        await listener.close()
    await world.sip_leaves("greet-room", "sip_g")
    row = await world.final(session.id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")


async def test_after_hours_the_caller_is_transferred_once_livekit_has_answered(world) -> None:
    await after_hours(world)
    world.peer.auto_answer = False
    status, data = await world.sip_joins("late-room", "sip_late")
    assert status == 200 and data["after_hours"] is True, data
    await agent_in(world, "late-room")  # joined and published: LiveKit SIP can answer now
    await asyncio.sleep(0.3)
    assert world.peer.requests("SIP/TransferSIPParticipant") == []  # not while it is ringing
    world.peer.set_call_status("late-room", "sip_late", "active")
    row = await world.final(data["call_id"])
    assert (row["status"], row["end_reason"]) == ("ended", "after_hours_transfer")
    [req] = world.peer.requests("SIP/TransferSIPParticipant")
    assert (req.room_name, req.participant_identity, req.transfer_to) == ("late-room", "sip_late", "tel:+15550109000")
    assert row["summary"]["livekit"]["transfer"] == {"status": "successful", "reason": "completed", "sip_status": 0}
    assert "transfer.requested" in await world.events(row["id"])
    assert row["connected_at"] is None and world.peer.agents("late-room") == []  # no conversation; left


async def test_the_peer_refuses_to_transfer_a_ringing_call_as_livekit_does(world) -> None:
    """The fixture's side of item 1: what the old code met (it transferred as the caller joined)."""
    from runtime.telephony.livekit.server import LiveKitServer, LiveKitUnavailable
    from tests.livekit.support import API_KEY, API_SECRET

    world.peer.sip_caller("ringing-room", "sip_r")
    server = LiveKitServer(world.peer.url, API_KEY, API_SECRET)
    with pytest.raises(LiveKitUnavailable) as refused:
        await server.transfer_sip("ringing-room", "sip_r", "+15550109000")
    assert refused.value.details == {"livekit_code": NOT_ESTABLISHED[1], "livekit_status": NOT_ESTABLISHED[0]}
    assert NOT_ESTABLISHED[2] in refused.value.message


# Item 3: a call the agent cannot serve removes the caller


async def test_an_agent_that_cannot_join_removes_the_caller(settings) -> None:
    world = await start_world(settings, room_double=True, rtc_mode="refuse")
    try:
        status, data = await world.sip_joins("refused-room", "sip_rf")
        assert status == 200, data
        row = await world.final(data["call_id"])
        assert (row["status"], row["end_reason"]) == ("failed", "agent_join_failed")
        await wait_for(lambda: removed(world) == [("refused-room", "sip_rf")])
        assert "sip_rf" not in world.peer.rooms["refused-room"]  # the phone call is hung up
    finally:
        await stop_world(world)


async def test_a_call_livekit_never_answers_fails_and_the_caller_is_removed(settings) -> None:
    world = await start_world(settings, room_double=True, livekit={"join_timeout_s": 0.5})
    world.peer.auto_answer = False
    try:
        status, data = await world.sip_joins("mute-room", "sip_m")
        assert status == 200, data
        row = await world.final(data["call_id"])
        assert (row["status"], row["end_reason"]) == ("failed", "agent_join_failed")
        failed = await world.api.control.store.call_events.list(tenant_id=world.tenant_id,
                                                                equals={"call_id": row["id"]}, limit=50)
        [message] = [e["payload"]["message"] for e in failed[0] if e["topic"] == "voice.call.failed"]
        assert "did not answer" in message, message
        await wait_for(lambda: removed(world) == [("mute-room", "sip_m")])
    finally:
        await stop_world(world)


async def test_a_conversation_that_cannot_start_fails_and_removes_the_caller(world, monkeypatch) -> None:
    async def broken(*args, **kwargs):
        raise RuntimeError("no engine")

    monkeypatch.setattr(world.api.app[PIPELINE], "conversation", broken)
    status, data = await world.sip_joins("broken-room", "sip_b")
    assert status == 200, data
    row = await world.final(data["call_id"])
    assert (row["status"], row["end_reason"]) == ("failed", "pipeline_unavailable")
    await wait_for(lambda: removed(world) == [("broken-room", "sip_b")])


async def test_a_room_lost_under_the_agent_fails_the_call_and_removes_the_caller(world) -> None:
    status, data = await world.sip_joins("lost-room", "sip_l")
    session = session_of(world, data["call_id"])
    await wait_for(lambda: session.state == "connected")
    world.peer.lose_room("lost-room")
    row = await world.final(session.id)
    assert (row["status"], row["end_reason"]) == ("failed", "room_disconnected")
    await wait_for(lambda: removed(world) == [("lost-room", "sip_l")])


# Item 4: one call per room, and the agent hears its caller only


async def test_a_second_sip_caller_in_a_room_with_a_call_is_refused_room_busy(world) -> None:
    _, first = await world.sip_joins("shared-room", "sip_one")
    session = session_of(world, first["call_id"])
    await wait_for(lambda: session.state == "connected")
    status, data = await world.sip_joins("shared-room", "sip_two", caller="+15550108888")
    assert status == 409 and data["error"] == "room_busy", data
    rows = {r["from_number"]: r for r in await world.calls()}
    busy = rows["+15550108888"]
    assert (busy["status"], busy["end_reason"], busy["to_number"]) == ("failed", "room_busy", "+15550107100")
    assert await world.events(busy["id"]) == ["voice.call.started", "call.state_changed", "voice.call.failed"]
    await wait_for(lambda: removed(world) == [("shared-room", "sip_two")])
    assert session.state == "connected" and "sip_one" in world.peer.rooms["shared-room"]
    # The first caller's agent never subscribed to the second caller's track.
    agent = world.peer.agents("shared-room")[0]
    assert agent.options.auto_subscribe is False
    assert agent.remote_participants["sip_one"].track_publications["TR_sip_one"].subscribe_requests == 1


async def test_the_agent_subscribes_to_its_callers_track_only(world) -> None:
    # Someone else is already in the room with a microphone (a supervisor's browser, say).
    other = models.ParticipantInfo(sid="PA_sup", identity="supervisor", kind=models.ParticipantInfo.Kind.STANDARD)
    other.tracks.add(sid="TR_sup", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)
    world.peer.rooms["mixed-room"] = {"supervisor": other}
    _, data = await world.sip_joins("mixed-room", "sip_mx")
    session = session_of(world, data["call_id"])
    await wait_for(lambda: session.state == "connected")
    agent = world.peer.agents("mixed-room")[0]
    participants = agent.remote_participants
    assert participants["supervisor"].track_publications["TR_sup"].subscribe_requests == 0
    assert participants["sip_mx"].track_publications["TR_sip_mx"].subscribed
    await world.sip_leaves("mixed-room", "sip_mx")
    await world.final(session.id)


# Item 6: the transfer's outcome as LiveKit reports it


@pytest.mark.parametrize("outcome, state, reason, hangup_by", [
    ((sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL, sip.SIPTransferReason.STR_COMPLETED),
     "ended", "transferred", None),
    ((sip.SIPTransferStatus.STS_TRANSFER_ONGOING, sip.SIPTransferReason.STR_CALL_ENDED),
     "ended", "caller_hangup", "caller"),
    ((sip.SIPTransferStatus.STS_TRANSFER_FAILED, sip.SIPTransferReason.STR_REJECTED),
     "failed", "transfer_failed", None),
])
async def test_a_transfer_is_recorded_as_livekit_reports_it(world, outcome, state, reason, hangup_by) -> None:
    world.peer.transfer_outcome = outcome
    _, data = await world.sip_joins("xfer-room", "sip_x")
    session = session_of(world, data["call_id"])
    await wait_for(lambda: session.state == "connected")
    await session.transfer("+15550109000", reason="caller_asked")
    row = await world.final(session.id, timeout=3)  # no participant_left needed: the answer says it
    assert (row["status"], row["end_reason"], row["hangup_by"]) == (state, reason, hangup_by)
    names = {0: "ongoing", 1: "failed", 2: "successful"}
    assert row["summary"]["livekit"]["transfer"]["status"] == names[outcome[0]]
    [req] = world.peer.requests("SIP/TransferSIPParticipant")
    assert (req.room_name, req.participant_identity, req.transfer_to) == ("xfer-room", "sip_x", "tel:+15550109000")
    assert removed(world) == ([("xfer-room", "sip_x")] if state == "failed" else [])


async def test_a_transfer_without_a_reported_outcome_ends_when_the_caller_leaves(world) -> None:
    """An older LiveKit answers google.protobuf.Empty: ongoing, no reason. The SIP participant
    leaving afterwards is the transfer done."""
    world.peer.transfer_outcome = (sip.SIPTransferStatus.STS_TRANSFER_ONGOING, sip.SIPTransferReason.STR_UNSPECIFIED)
    _, data = await world.sip_joins("old-room", "sip_o")
    session = session_of(world, data["call_id"])
    await wait_for(lambda: session.state == "connected")
    await session.transfer("sip:desk@pbx.example.com")
    await asyncio.sleep(0.2)
    assert session.state == "transferring"
    await world.sip_leaves("old-room", "sip_o")
    row = await world.final(session.id)
    assert (row["status"], row["end_reason"]) == ("ended", "transferred")


async def test_a_caller_leaving_while_livekit_transfers_waits_for_its_answer(world) -> None:
    gate = world.peer.gates["SIP/TransferSIPParticipant"] = asyncio.Event()
    world.peer.transfer_outcome = (sip.SIPTransferStatus.STS_TRANSFER_ONGOING, sip.SIPTransferReason.STR_CALL_ENDED)
    _, data = await world.sip_joins("race-room", "sip_race")
    session = session_of(world, data["call_id"])
    await wait_for(lambda: session.state == "connected")
    transfer = asyncio.create_task(session.transfer("+15550109000"))
    await wait_for(lambda: world.peer.requests("SIP/TransferSIPParticipant"))
    await world.post(event_json("participant_left", room_name="race-room",
                                participant=sip_participant(identity="sip_race")))
    assert session.state == "transferring"  # not "transferred" before LiveKit says how it went
    gate.set()
    await transfer
    row = await world.final(session.id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")


async def test_leaving_calls_leave_nothing_behind(world) -> None:
    _, data = await world.sip_joins("tidy-room", "sip_t")
    session = session_of(world, data["call_id"])
    await wait_for(lambda: session.state == "connected")
    await world.sip_leaves("tidy-room", "sip_t")
    await world.final(session.id)
    br = bridge(world.api.app)
    await wait_for(lambda: not br.rooms and not br.by_call and world.peer.agents("tidy-room") == [])
