"""A GoTo call end to end: the local GoTo peer plays GoTo's part with an aiortc client peer as the
remote WebRTC end. STARTING opens the call, the web-call offer (the client's SDP) is answered by the
runtime's aiortc bridge and posted back to GoTo's /answer, whose SDP the client applies; the agent's
greeting must then reach the client as audio, and ENDING ends the call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from tests.goto.support import call_event, web_call_offer

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
    remote = RemoteEnd()
    world.peer.on_answer = remote.answered
    try:
        status, body = await world.deliver(call_event("conv-e2e", "STARTING", 1))
        assert status == 200 and body["status"] == "opened", body
        call_id = body["call_id"]
        status, body = await world.deliver(web_call_offer("conv-e2e", "wc-e2e", await remote.offer()))
        assert status == 200 and body == {"status": "answered", "call_id": call_id, "web_call_id": "wc-e2e"}, body
        paths = [(r["method"], r["path"]) for r in world.peer.calls_to("/web-calls/")]
        assert paths == [("POST", "/web-calls/v1/calls/wc-e2e/ringing"), ("POST", "/web-calls/v1/calls/wc-e2e/answer")]
        answer = world.peer.calls_to("/answer")[0]["json"]
        assert answer["inCallChannelId"].startswith("Webhook.") and answer["sdp"].startswith("v=0")

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
        status, body = await world.deliver(web_call_offer("conv-x", "wc-x", await remote.offer()))
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
        status, _ = await world.deliver(web_call_offer("conv-y", "wc-y", await remote.offer()))
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
        status, body = await world.deliver(web_call_offer("conv-z", "wc-z", await remote.offer()))
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
