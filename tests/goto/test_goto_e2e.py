"""A GoTo call end to end, in the order GoTo's guides give: the local GoTo peer plays GoTo's part with
an aiortc client peer as the remote WebRTC end. Registration made the channel (OPTIONS-validated),
the call-events subscription (207), and a web-call device with the tenant's extension; STARTING
opens the call, GoTo offers the web call to the device (the incoming-call notification, posted by
the peer to the device's channel), the runtime's aiortc bridge answers through GoTo's /answer, the
agent's greeting reaches the client as audio, and ENDING ends the call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from tests.goto.support import ACCOUNT_KEY, CALLER, EXTENSION, NUMBER, add_goto_tenant, call_event, register

TIMEOUT_S = 20.0


@pytest.fixture
def backend() -> str:
    return "sqlite"


class RemoteEnd:
    """GoTo's media end: sends silence, measures the energy of what it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTrack(AudioStreamTrack())
        self.loud_frames = 0
        self.frames = 0
        self.heard = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames += 1
            samples = frame.to_ndarray().astype(np.float64)
            if samples.size and np.sqrt(np.mean(samples ** 2)) > 300:  # speech, not comfort noise
                self.loud_frames += 1
                if self.loud_frames >= 25:  # half a second of the agent's voice
                    self.heard.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answered(self, call_id: str, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()


async def agent_transcript(world, call_id: str) -> dict:
    while True:
        rows, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                                 equals={"call_id": call_id, "role": "agent"})
        if rows:
            return rows[0]
        await asyncio.sleep(0.05)


async def test_a_goto_call_is_answered_over_webrtc_and_reaches_the_agent(world) -> None:
    peer = world.peer
    # Registration, as the guides order it: the channel (validated with OPTIONS), the call-events
    # subscription (207), a device on the channel and the credential's extension on the device.
    assert peer.validations == [200]
    [(channel_id, url)] = peer.channels.items()
    assert url.endswith(world.webhook_path)
    subscription = peer.calls_to("/call-events/v1/subscriptions")[0]["json"]
    assert subscription == {"channelId": channel_id, "accountKeys": [{"id": ACCOUNT_KEY,
                                                                      "events": ["STARTING", "ACTIVE", "ENDING"]}]}
    device_id, device = peer.device_for(EXTENSION)
    assert device["incoming"] == device["session"] == channel_id and device["extensions"] == [EXTENSION]
    # Basic-auth refresh: the client in the header, never in the form; GoTo rotates the refresh token.
    assert peer.token_requests[0]["authorization"].startswith("Basic ")
    assert "client_id" not in peer.token_requests[0] and "client_secret" not in peer.token_requests[0]
    # Another tenant on another line of the same account: its calls must never reach this tenant.
    other_id, _, _ = await add_goto_tenant(world.api, peer, "goto-other", "+15550108999", extension="7002")
    await register(world.api, other_id, peer)

    remote = RemoteEnd()
    peer.on_answer = remote.answered
    try:
        # Another line's call (the subscription covers the whole account): 2xx, ignored, no call row.
        status, body = await peer.notify(channel_id, call_event("conv-other", "STARTING", 1, company="+15550107777",
                                                                extension="1001"))
        assert status == 200 and body["status"] == "ignored" and body["reason"] == "not_our_line", body
        status, body = await peer.notify(channel_id, call_event("conv-e2e", "STARTING", 1))
        assert status == 200 and body["status"] == "opened", body
        call_id = body["call_id"]
        peer.rotate_to = "goto-refresh-token-two"  # the runtime's first refresh gets a new refresh token
        status, body = await world.peer.ring(EXTENSION, await remote.offer(), call_id="wc-e2e")
        assert status == 200 and body == {"status": "answered", "call_id": call_id, "web_call_id": "wc-e2e"}, body
        assert peer.token_requests[-1]["authorization"] == peer.token_requests[0]["authorization"]
        assert await world.api.control.credentials.secret(world.tenant_id, "goto") == "goto-refresh-token-two"
        paths = [(r["method"], r["path"]) for r in peer.calls_to("/web-calls/v1/calls")]
        assert paths == [("POST", "/web-calls/v1/calls/wc-e2e/ringing"), ("POST", "/web-calls/v1/calls/wc-e2e/answer")]
        answer = peer.calls_to("/answer")[0]["json"]
        assert answer["inCallChannelId"] == channel_id and answer["sdp"].startswith("v=0")
        row = await world.call(call_id)
        assert (row["to_number"], row["from_number"]) == (NUMBER, CALLER)  # the company number; type.caller

        await asyncio.wait_for(remote.heard.wait(), TIMEOUT_S)  # the greeting, over WebRTC
        greeting = await asyncio.wait_for(agent_transcript(world, call_id), TIMEOUT_S)  # played out in full
        assert greeting["text"] == "Hello, front desk." and not greeting["interrupted"]
        status, body = await world.deliver(call_event("conv-e2e", "ACTIVE", 2, caller_status="ACTIVE"))
        assert status == 200 and body["state"] == "connected" and body["answered"] is True, body

        status, body = await world.deliver(call_event("conv-e2e", "ENDING", 3))
        assert status == 200 and body["status"] == "ended"
        row = await world.call(call_id)
        assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "completed", "caller")
        topics = await world.events(call_id)
        assert topics[0] == "voice.call.started" and topics[-1] == "voice.call.completed"
        assert "call.connected" in topics
        assert [c["id"] for c in await world.calls()] == [call_id]  # the other line left no row
        rows, _ = await world.api.control.store.voice_calls.list(tenant_id=other_id, limit=10)
        assert rows == []
    finally:
        await remote.close()


async def test_an_offer_without_call_events_opens_its_own_call_and_starting_joins_it(world) -> None:
    """Call events may be refused (they need a super-admin) or late: the offer to the device is
    enough to take the call, routed by the device's extension; a STARTING that follows joins it."""
    remote = RemoteEnd()
    world.peer.on_answer = remote.answered
    try:
        status, body = await world.peer.ring(EXTENSION, await remote.offer(), call_id="wc-first")
        assert status == 200 and body["status"] == "answered", body
        call_id = body["call_id"]
        row = await world.call(call_id)
        assert (row["to_number"], row["from_number"], row["provider_call_id"]) == (NUMBER, CALLER, "wc-first")
        status, body = await world.deliver(call_event("conv-late", "STARTING", 1))
        assert status == 200 and body["status"] == "updated" and body["call_id"] == call_id, body
        await asyncio.wait_for(remote.heard.wait(), TIMEOUT_S)
        status, body = await world.deliver(call_event("conv-late", "ENDING", 2))
        assert status == 200 and body["status"] == "ended" and body["call_id"] == call_id, body
        assert [c["id"] for c in await world.calls()] == [call_id]
        status, body = await world.peer.ring(EXTENSION, "v=0 redelivered", call_id="wc-first")
        assert status == 200 and body["status"] == "duplicate", body
    finally:
        await remote.close()


async def test_the_engine_ends_a_goto_call_through_gotos_api(world) -> None:
    """A transfer (GoTo documents none) ends the call: hang-up through GoTo, then ENDING is late."""
    from runtime.api.appkeys import TRACKER

    remote = RemoteEnd()
    world.peer.on_answer = remote.answered
    try:
        _, body = await world.deliver(call_event("conv-x", "STARTING", 1))
        call_id = body["call_id"]
        status, body = await world.peer.ring(EXTENSION, await remote.offer(), call_id="wc-x")
        assert status == 200 and body["status"] == "answered", body
        await asyncio.wait_for(agent_transcript(world, call_id), TIMEOUT_S)  # as the agent would: after speaking
        session = world.api.app[TRACKER].get(call_id)
        await session.transfer("+15550109000", reason="caller_asked")
        row = await world.call(call_id)
        assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "transfer_unsupported", "agent")
        assert ("DELETE", "/web-calls/v1/calls/wc-x") in [(r["method"], r["path"]) for r in world.peer.requests]
        topics = await world.events(call_id)
        assert "transfer.requested" in topics and topics[-1] == "voice.call.completed"
        status, body = await world.deliver(call_event("conv-x", "ENDING", 2))
        assert status == 200 and body["status"] == "ignored" and body["reason"] == "call_finished"
    finally:
        await remote.close()


async def test_ending_mid_greeting_writes_the_transcript_before_the_final_event(world) -> None:
    remote = RemoteEnd()
    world.peer.on_answer = remote.answered
    try:
        _, body = await world.deliver(call_event("conv-y", "STARTING", 1))
        call_id = body["call_id"]
        status, _ = await world.peer.ring(EXTENSION, await remote.offer(), call_id="wc-y")
        assert status == 200
        await asyncio.wait_for(remote.heard.wait(), TIMEOUT_S)  # the greeting is playing
        status, body = await world.deliver(call_event("conv-y", "ENDING", 2))
        assert status == 200 and body["status"] == "ended"
        topics = await world.events(call_id)
        assert topics[-1] == "voice.call.completed" and "transcript.created" in topics, topics
    finally:
        await remote.close()


async def test_an_agent_hangup_goto_does_not_take_logs_no_error(world, caplog) -> None:
    """The assumed hang-up endpoint answering 404 (or the call gone at GoTo) is no failure: the
    peer close ends the media and the call ends as the agent asked."""
    from runtime.api.appkeys import TRACKER
    from runtime.telephony.webrtc import bridge as webrtc

    remote = RemoteEnd()
    world.peer.on_answer = remote.answered
    world.peer.refuse["hangup"] = (404, {"errorCode": "NOT_FOUND"})
    try:
        _, body = await world.deliver(call_event("conv-z", "STARTING", 1))
        call_id = body["call_id"]
        status, body = await world.peer.ring(EXTENSION, await remote.offer(), call_id="wc-z")
        assert status == 200 and body["status"] == "answered", body
        session = world.api.app[TRACKER].get(call_id)
        with caplog.at_level("INFO"):
            await session.hangup("agent_done")
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
        row = await world.call(call_id)
        assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "agent_done", "agent")
        assert ("DELETE", "/web-calls/v1/calls/wc-z") in [(r["method"], r["path"]) for r in world.peer.requests]
        assert call_id not in webrtc.bridge(world.api.app).peers
    finally:
        await remote.close()
