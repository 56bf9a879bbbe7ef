"""WebRTC calls end to end: an aiortc caller in this process talks to the runtime's bridge over
real ICE/DTLS/SRTP on this box, with the offline engines (faster-whisper, piper, the rules
brain) and caller speech made by the local TTS at test time. Then every way a call ends and
every bad request: a clear JSON error, a failed call with voice.call.failed where a call exists,
nothing else touched."""

from __future__ import annotations

import time

import av
import pytest
import pytest_asyncio
from aiortc import RTCRtpSender

from runtime.api.appkeys import TRACKER
from runtime.audio import Audio
from runtime.config import build_settings
from runtime.secrets import write_master_key
from runtime.telephony.webrtc.bridge import AnswerFailed, SdpRejected, answer_offer, bridge
from runtime.telephony.webrtc.ice import add_host_candidates, with_candidates
from runtime.telephony.webrtc.tokens import BrowserGrant
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides
from tests.webrtc.support import ClientPeer, WavTrack, piper_speech, wait_for, with_silence
from voicectl.demo import provision

pytestmark = pytest.mark.asyncio(loop_scope="module")
CONNECT_TIMEOUT_S = 2.0
SILENCE_TIMEOUT_S = 1.5


class World:
    def __init__(self, api, runner, made: dict, key: str, speech: Audio) -> None:
        self.api, self.runner, self.made, self.key, self.speech = api, runner, made, key, speech
        self.tenant_id, self.agent_id, self.number = made["tenant_id"], made["agent_id"], made["number"]

    @property
    def store(self):
        return self.api.control.store

    async def token(self, **target) -> str:
        status, body, _ = await self.api.call("POST", "/api/v1/webrtc/tokens", self.key,
                                              json=target or {"agent_id": self.agent_id})
        assert status == 201, body
        return body["token"]

    async def offer(self, sdp: str, credential: str | None = None, **target) -> tuple[int, dict]:
        """POST the offer; with a key and no target, to the demo agent (a token names its own)."""
        if not target and not (credential or "").startswith("wrtc_"):
            target = {"agent_id": self.agent_id}
        status, body, _ = await self.api.call("POST", "/api/v1/webrtc/sessions", credential or self.key,
                                              json={"type": "offer", "sdp": sdp, **target})
        return status, body

    async def call_row(self, call_id: str) -> dict:
        return await self.store.voice_calls.get(call_id, tenant_id=self.tenant_id)

    async def final_row(self, call_id: str, timeout: float = 8.0) -> dict:
        async def done():
            row = await self.call_row(call_id)
            return row if row and row["status"] in ("ended", "failed") else None

        return await wait_for(done, timeout, f"call {call_id} to finish")

    async def topics(self, call_id: str) -> list[str]:
        rows, _ = await self.store.call_events.list(tenant_id=self.tenant_id, equals={"call_id": call_id}, limit=200)
        return [r["topic"] for r in rows]

    async def transcript(self, call_id: str) -> list[tuple[str, str]]:
        rows, _ = await self.store.transcripts.list(tenant_id=self.tenant_id, equals={"call_id": call_id}, limit=200)
        return [(r["role"], r["text"]) for r in rows]

    async def calls_count(self) -> int:
        _, total = await self.store.voice_calls.list(tenant_id=self.tenant_id, limit=1)
        return total


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webrtc")
    base = build_settings({"database": {"url": f"sqlite:///{tmp}/voicectl.db"}, "secrets": {"backend": "cryptfile"}},
                          tmp)
    write_master_key(base.master_key_path)
    settings = with_overrides(base, limits=high_limits(), server={"shutdown_grace_s": 0.2}, telephony={
        "webrtc": {"connect_timeout_s": CONNECT_TIMEOUT_S, "silence_timeout_s": SILENCE_TIMEOUT_S,
                   "host_candidates": ["127.0.0.1"]}})
    api, runner = await start_live_api(settings)
    made = await provision(api.control)
    status, key, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key,
                                    json={"tenant_id": made["tenant_id"], "scope": "runtime"})
    assert status == 201, key
    speech = await piper_speech("I'd like to book a table for two at seven.")
    yield World(api, runner, made, key["key"], speech)
    await stop_live_api(api, runner)


async def _connected(world: World, client: ClientPeer, **target) -> str:
    status, body = await world.offer(await client.offer(), await world.token(**target) if target else None)
    assert status == 201, body
    assert body["type"] == "answer" and body["sdp"].startswith("v=0")
    await client.accept(body["sdp"])
    return body["call_id"]


# A conversation


async def test_a_caller_talks_with_the_agent_over_webrtc(world: World) -> None:
    # The caller waits out the greeting (~4 s), then asks for a table.
    client = ClientPeer(with_silence(world.speech, 48000, lead_s=5.0, tail_s=1.0))
    token = await world.token()
    status, body = await world.offer(await client.offer(), token)
    assert status == 201, body
    call_id = body["call_id"]
    await client.accept(body["sdp"])
    greeting_at = len(client.heard.rms)

    async def answered():
        said = await world.transcript(call_id)
        callers = [text for role, text in said if role == "caller"]
        return said if callers and len([r for r, _ in said if r == "agent"]) >= 2 else None

    said = await wait_for(answered, 30, "the caller's words and the agent's answer")
    assert said[0] == ("agent", "Hello, thanks for calling Trattoria Demo! How can I help you?")
    caller = next(text for role, text in said if role == "caller").lower()
    assert "table" in caller and ("two" in caller or "2" in caller), said
    # The greeting reached the caller: loud frames, paced (no gap of 100 ms inside it).
    assert client.heard.loud_frames() > 100, client.heard.loud_frames()
    arrivals = client.heard.arrivals[greeting_at:greeting_at + 150]
    assert max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) < 0.1
    # The page's data channel saw the same conversation.
    await wait_for(lambda: _async(client.events("turn.latency")), 5, "turn.latency on the data channel")
    seen = [e["data"]["text"] for e in client.events("transcript.created")]
    assert seen[:2] == [text for _, text in said[:2]]
    assert client.events("call.connected") and client.events("turn.latency")[0]["data"]["v2v_ms"] > 0

    client.hang_up()
    row = await world.final_row(call_id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")
    summary = row["summary"]
    assert summary["media"]["codec"] == "opus" and summary["media"]["inbound_frames"] > 300 and summary["media"]["outbound_frames"] > 200
    assert summary["media"]["outbound_late"] <= 2, summary
    assert row["latency"]["v2v"]["count"] >= 1
    topics = await world.topics(call_id)
    for topic in ("voice.call.started", "call.connected", "transcript.created", "turn.latency", "speech.started",
                  "voice.call.completed"):
        assert topic in topics, topics
    assert call_id not in bridge(world.api.app).peers
    await client.close()


async def _async(value):
    return value


async def test_a_pcmu_caller_is_answered_in_pcmu_and_the_agent_can_hang_up(world: World) -> None:
    client = ClientPeer()
    pcmu = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
    client.pc.getTransceivers()[0].setCodecPreferences(pcmu)
    call_id = await _connected(world, client, number=world.number)
    assert "PCMU/8000" in client.pc.remoteDescription.sdp and "opus" not in client.pc.remoteDescription.sdp
    await wait_for(lambda: _async(client.heard.loud_frames() > 50), 10, "the greeting in PCMU")
    session = world.api.app[TRACKER].get(call_id)
    assert session is not None and session.state == "connected" and session.to_number == world.number
    await session.hangup("agent_ended")
    row = await world.final_row(call_id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "agent_ended", "agent")
    assert row["summary"]["media"]["codec"] == "pcmu" and row["summary"]["media"]["outbound_frames"] > 50
    await wait_for(lambda: _async([m for m in client.messages if m["type"] == "bye"]), 3, "the bye message")
    await client.close()


async def test_closing_the_peer_connection_is_a_hangup(world: World) -> None:
    client = ClientPeer(data_channel=False)
    call_id = await _connected(world, client)
    await wait_for(lambda: _async(client.heard.rms), 5, "audio")
    await client.close()  # DTLS close_notify
    row = await world.final_row(call_id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")


# Media that never comes or stops


async def test_a_peer_that_sends_no_audio_is_dropped(world: World) -> None:
    client = ClientPeer(data_channel=False)
    client.pc.getTransceivers()[0].direction = "recvonly"  # it listens, never sends a packet
    call_id = await _connected(world, client)
    row = await world.final_row(call_id, timeout=SILENCE_TIMEOUT_S + 5)
    assert (row["status"], row["end_reason"]) == ("failed", "peer_silent")
    assert "voice.call.failed" in await world.topics(call_id)
    await client.close()


async def test_media_that_never_comes_up_fails_the_call(world: World) -> None:
    client = ClientPeer(data_channel=False)
    sdp = await client.offer()
    # No candidates and no end-of-candidates: the runtime waits for trickled ones that never come.
    unreachable = "".join(line + "\r\n" for line in sdp.split("\r\n")
                          if line and not line.startswith(("a=candidate", "a=end-of-candidates")))
    status, body = await world.offer(unreachable)
    assert status == 201, body
    row = await world.final_row(body["call_id"], timeout=CONNECT_TIMEOUT_S + 5)
    assert (row["status"], row["end_reason"]) == ("failed", "ice_timeout")
    await client.close()


async def test_loopback_only_calls_connect_with_a_configured_host_candidate(world: World) -> None:
    """aioice gathers no 127.0.0.1 candidate; with telephony.webrtc.host_candidates both ends
    can meet on loopback alone (here every other candidate is stripped from both SDPs)."""
    client = ClientPeer(data_channel=False)
    extra = await add_host_candidates(client.pc, ["127.0.0.1"])
    offer = with_candidates(await client.offer(), extra)
    status, body = await world.offer(_only_loopback(offer))
    assert status == 201, body
    assert "127.0.0.1" in body["sdp"] and " typ host" in body["sdp"]
    await client.accept(_only_loopback(body["sdp"]))
    await wait_for(lambda: _async(client.heard.loud_frames() > 20), 8, "the greeting over loopback")
    assert (await world.call_row(body["call_id"]))["status"] == "connected"
    await client.close()
    await world.final_row(body["call_id"])


def _only_loopback(sdp: str) -> str:
    return "".join(line + "\r\n" for line in sdp.split("\r\n")
                   if line and (not line.startswith("a=candidate") or " 127.0.0.1 " in line))


# The contract the GoTo bridge builds on


async def test_answer_offer_serves_a_call_opened_by_another_bridge(world: World) -> None:
    tracker = world.api.app[TRACKER]
    session = await tracker.open_call(to_number=world.number, from_number="+15550100999", provider="goto",
                                      provider_call_id="goto-1")
    client = ClientPeer()
    answer = await answer_offer(world.api.app, session, await client.offer())
    await client.accept(answer)
    await wait_for(lambda: _async(session.state == "connected"), 5, "connected")
    await wait_for(lambda: _async(client.heard.loud_frames() > 20), 8, "the greeting")
    assert session.id in bridge(world.api.app).peers
    await session.end("goto_ended", hangup_by="caller")  # the other bridge ends it: the peer goes with it
    assert session.id not in bridge(world.api.app).peers
    assert bridge(world.api.app).peers.get(session.id) is None
    await wait_for(lambda: _async(client.pc.connectionState in ("closed", "failed")), 5, "the peer to close")
    row = await world.final_row(session.id)
    assert (row["provider"], row["status"], row["end_reason"]) == ("goto", "ended", "goto_ended")
    await client.close()


@pytest.mark.parametrize("broken", ["connect", "start"])
async def test_a_call_that_cannot_start_once_connected_fails(world: World, monkeypatch, broken: str) -> None:
    """The database gone at connect, or the conversation refusing to start: the call fails
    instead of staying "ringing" with the media up."""
    from runtime.calls.session import CallSession
    from runtime.store.errors import DatabaseUnavailable

    session = await world.api.app[TRACKER].open_call(to_number=world.number, from_number=None, provider="goto")
    client = ClientPeer()
    answer = await answer_offer(world.api.app, session, await client.offer())
    if broken == "connect":
        connect = CallSession.connect

        async def unavailable(self: CallSession) -> None:
            if self is session:
                raise DatabaseUnavailable("the database is unavailable")
            await connect(self)

        monkeypatch.setattr(CallSession, "connect", unavailable)
    else:
        async def refuse() -> None:
            raise RuntimeError("no engine")

        bridge(world.api.app).peers[session.id].leg.conversation.start = refuse
    await client.accept(answer)
    row = await world.final_row(session.id, timeout=CONNECT_TIMEOUT_S + 5)
    assert (row["status"], row["end_reason"]) == ("failed", "pipeline_unavailable")
    # The end hooks (the bridge forgetting the peer among them) run just after the archive write.
    await wait_for(lambda: _async(session.id not in bridge(world.api.app).peers), 5, "the peer to be released")
    await client.close()


async def test_answer_offer_fails_the_call_on_a_bad_offer(world: World) -> None:
    session = await world.api.app[TRACKER].open_call(to_number=world.number, from_number=None, provider="goto")
    with pytest.raises(SdpRejected) as caught:
        await answer_offer(world.api.app, session, "v=0\r\nm=audio x RTP/AVP 0\r\n")
    assert isinstance(caught.value, ValueError) and caught.value.reason == "bad_sdp"
    row = await world.final_row(session.id)
    assert (row["status"], row["end_reason"]) == ("failed", "bad_sdp")
    assert "voice.call.failed" in await world.topics(session.id)
    with pytest.raises(AnswerFailed) as not_ringing:
        await answer_offer(world.api.app, session, "v=0\r\n")
    assert not_ringing.value.status == 409


# Bad input


async def _bad_offer(world: World, sdp: str, status: int, reason: str, **target) -> dict:
    before = await world.calls_count()
    got, body = await world.offer(sdp, **target)
    assert got == status, body
    assert set(body) == {"error", "message", "details"} and body["details"]["reason"] == reason, body
    assert await world.calls_count() == before, "a refused offer leaves no call behind"
    return body


async def test_malformed_sdp_is_a_400_and_no_call(world: World) -> None:
    body = await _bad_offer(world, "hello", 400, "bad_sdp")
    assert body["error"] == "bad_request" and "v=0" in body["message"]
    await _bad_offer(world, "v=0\r\nm=audio zero RTP/AVP 0\r\n", 400, "bad_sdp")


async def test_an_offer_without_audio_is_a_400(world: World) -> None:
    client = ClientPeer(data_channel=False)
    sdp = (await client.offer()).replace("m=audio", "m=text")
    await client.close()
    await _bad_offer(world, sdp, 400, "no_audio")


async def test_unsupported_codecs_are_a_400(world: World) -> None:
    client = ClientPeer(data_channel=False)
    g722 = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/G722"]
    client.pc.getTransceivers()[0].setCodecPreferences(g722)
    sdp = await client.offer()
    await client.close()
    body = await _bad_offer(world, sdp, 400, "unsupported_codec")
    assert "g722" in body["message"]


async def test_an_offer_aiortc_refuses_fails_its_call(world: World) -> None:
    """Passes the checks, then aiortc refuses it: the call exists by then and is failed."""
    client = ClientPeer()
    sdp = (await client.offer()).replace("UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP webrtc-datachannel")
    await client.close()
    status, body = await world.offer(sdp)
    assert status == 400 and body["details"]["reason"] == "bad_sdp", body
    call_id = body["details"]["call_id"]
    row = await world.final_row(call_id)
    assert (row["status"], row["end_reason"]) == ("failed", "bad_sdp")
    assert (await world.topics(call_id))[-1] == "voice.call.failed"
    assert call_id not in bridge(world.api.app).peers


async def test_tokens_that_do_not_hold_are_refused(world: World) -> None:
    client = ClientPeer(data_channel=False)
    sdp = await client.offer()
    await client.close()
    before = await world.calls_count()
    tokens = bridge(world.api.app).tokens
    key_row = (await world.store.api_keys.list(tenant_id=world.tenant_id, limit=1))[0][0]
    expired = tokens.mint(BrowserGrant(world.tenant_id, key_row["id"], world.agent_id, None, int(time.time()) - 1))
    for credential, status, words in [
        ("wrtc_garbage.sig", 401, "invalid browser token"),
        (expired, 401, "expired"),
        ("vk_rt_notakey", 401, "invalid API key"),
    ]:
        got, body = await world.offer(sdp, credential)
        assert got == status and words in body["message"], body
    status, body, _ = await world.api.call("POST", "/api/v1/webrtc/sessions", None,
                                           json={"type": "offer", "sdp": sdp, "agent_id": world.agent_id})
    assert status == 401, body
    token = await world.token(agent_id=world.agent_id)
    got, body = await world.offer(sdp, token, number=world.number)  # the token is for the agent only
    assert got == 403, body
    # Revoking the key revokes its tokens.
    status, minted, _ = await world.api.call("POST", "/api/v1/auth/api-keys", world.api.admin_key,
                                             json={"tenant_id": world.tenant_id, "scope": "runtime"})
    status, body, _ = await world.api.call("POST", "/api/v1/webrtc/tokens", minted["key"],
                                           json={"agent_id": world.agent_id})
    doomed = body["token"]
    status, _, _ = await world.api.call("DELETE", f"/api/v1/auth/api-keys/{minted['id']}", world.api.admin_key)
    assert status in (200, 204)
    got, body = await world.offer(sdp, doomed)
    assert got == 401 and "revoked" in body["message"], body
    assert await world.calls_count() == before


async def test_unknown_targets_are_404s(world: World) -> None:
    client = ClientPeer(data_channel=False)
    sdp = await client.offer()
    await client.close()
    for target in ({"agent_id": "agt_nope"}, {"number": "+15550199999"}):
        got, body = await world.offer(sdp, **target)
        assert got == 404, body
    status, other, _ = await world.api.call("POST", "/api/v1/tenants", world.api.admin_key, json={"name": "other"})
    status, other_key, _ = await world.api.call("POST", "/api/v1/auth/api-keys", world.api.admin_key,
                                                json={"tenant_id": other["id"], "scope": "runtime"})
    got, body = await world.offer(sdp, other_key["key"], number=world.number)  # another tenant's number
    assert got == 404, body
    got, body = await world.offer(sdp, other_key["key"], agent_id=world.agent_id)
    assert got == 404, body
    for target in ({"agent_id": "agt_nope"}, {"number": "+15550199999"}):
        status, body, _ = await world.api.call("POST", "/api/v1/webrtc/tokens", world.key, json=target)
        assert status == 404, body


async def test_an_agent_without_an_active_version_fails_its_call(world: World) -> None:
    status, agent, _ = await world.api.call("POST", "/api/v1/agents", world.key,
                                            json={"name": "draft-only", "system_prompt": "x"})
    assert status == 201, agent
    await world.store.agents.update(agent["id"], {"active_version": None}, tenant_id=world.tenant_id)
    client = ClientPeer(data_channel=False)
    sdp = await client.offer()
    await client.close()
    got, body = await world.offer(sdp, agent_id=agent["id"])
    assert got == 409 and body["details"]["reason"] == "no_active_version", body
    rows, _ = await world.store.voice_calls.list(tenant_id=world.tenant_id, equals={"status": "failed"}, limit=200)
    failed = [r for r in rows if r["end_reason"] == "no_active_version"]
    assert failed and "voice.call.failed" in await world.topics(failed[0]["id"])


@pytest.mark.parametrize(("body", "status"), [
    ({"type": "offer", "sdp": "v=0"}, 422),  # no target
    ({"type": "answer", "sdp": "v=0", "agent_id": "a"}, 422),
    ({"type": "offer", "agent_id": "a"}, 422),
    ({"type": "offer", "sdp": "v=0", "agent_id": "a", "number": "+15550100000"}, 422),
    ({"type": "offer", "sdp": "v=0", "number": "not-a-number"}, 422),
    ({"type": "offer", "sdp": "x" * 70000, "agent_id": "a"}, 422),
])
async def test_bad_session_bodies(world: World, body: dict, status: int) -> None:
    got, answer, _ = await world.api.call("POST", "/api/v1/webrtc/sessions", world.key, json=body)
    assert got == status and set(answer) == {"error", "message", "details"}, answer


# The sessions route defers its body (Route.defer_body): the caller is checked first.
@pytest.mark.parametrize(("credential", "kwargs"), [
    (None, {"json": {"type": "offer"}}),  # fields missing: was a 422 naming them
    ("vk_rt_notakey", {"json": {"type": "answer", "sdp": 5}}),
    (None, {"data": b"v=0", "headers": {"Content-Type": "application/sdp"}}),  # was a 415
    ("wrtc_garbage.sig", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),  # was a 400
])
async def test_a_stranger_is_refused_before_the_body_is_looked_at(world: World, credential, kwargs) -> None:
    status, body, _ = await world.api.call("POST", "/api/v1/webrtc/sessions", credential, **kwargs)
    assert status == 401 and set(body) == {"error", "message", "details"}, body


@pytest.mark.parametrize(("body", "status"), [
    ({}, 422),
    ({"agent_id": "a", "number": "+15550100000"}, 422),
    ({"agent_id": "a", "ttl_s": 5}, 422),
    ({"agent_id": "a", "ttl_s": 7200}, 422),  # over token_max_ttl_s
])
async def test_bad_token_requests(world: World, body: dict, status: int) -> None:
    if "ttl_s" in body and body["ttl_s"] == 7200:
        body = {**body, "agent_id": world.agent_id}
    got, answer, _ = await world.api.call("POST", "/api/v1/webrtc/tokens", world.key, json=body)
    assert got == status, answer


async def test_the_page_and_ice_servers_are_served(world: World) -> None:
    status, html, resp = await world.api.call("GET", "/call")
    assert status == 200 and "voicectl" in html and resp.headers["Content-Security-Policy"].startswith("default-src")
    status, script, resp = await world.api.call("GET", "/call/call.js")
    assert status == 200 and "voicectlStats" in script and "javascript" in resp.content_type
    token = await world.token()
    status, body, _ = await world.api.call("GET", "/api/v1/webrtc/ice-servers", token)
    assert status == 200 and body == {"ice_servers": []}
    status, body, _ = await world.api.call("GET", "/api/v1/webrtc/ice-servers", "wrtc_x.y")
    assert status == 401



# Media the bridge cannot use, DTMF, transfer


class _GarbageMic(WavTrack):
    """Sends packets that are not Opus (aiortc's sender passes pre-encoded packets through)."""

    async def recv(self):
        frame = await super().recv()
        packet = av.Packet(b"\xff" * 200)
        packet.pts, packet.time_base = frame.pts, frame.time_base
        return packet


async def test_undecodable_audio_fails_that_call_and_no_other(world: World) -> None:
    healthy = ClientPeer(data_channel=False)
    healthy_id = await _connected(world, healthy)
    broken = ClientPeer(data_channel=False)
    broken.pc.getTransceivers()[0].sender.replaceTrack(_GarbageMic(b""))
    broken_id = await _connected(world, broken)
    row = await world.final_row(broken_id)
    assert (row["status"], row["end_reason"]) == ("failed", "bad_media")
    assert (await world.call_row(healthy_id))["status"] == "connected"
    await healthy.close()
    await broken.close()
    await world.final_row(healthy_id)


async def test_dtmf_from_the_page_reaches_the_agent_and_a_transfer_ends_the_browser_call(world: World) -> None:
    client = ClientPeer()
    call_id = await _connected(world, client)
    await wait_for(lambda: _async(client.events("call.connected")), 5, "connected")
    client.channel.send('{"type":"dtmf","digit":"x"}')  # not a key: ignored
    client.channel.send("not json")  # ignored too
    client.channel.send('{"type":"dtmf","digit":"0"}')  # the demo agent's transfer_to_human key
    # The agent says it is putting the caller through, then transfers: a browser cannot be.
    row = await world.final_row(call_id, timeout=25)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "transfer_unsupported", "agent")
    topics = await world.topics(call_id)
    assert topics.count("dtmf.received") == 1 and "transfer.requested" in topics
    assert row["summary"]["media"]["dtmf"] == 1
    await wait_for(lambda: _async([m for m in client.messages if m["type"] == "bye"]), 3, "the bye message")
    await client.close()
