"""Shared setup of the LiveKit tests: a live runtime, a tenant with a number and a ``livekit``
credential, and ``LiveKitPeer``: a local aiohttp server speaking LiveKit's Twirp API (protobuf
bodies, JSON errors ``{"code", "msg"}``, tokens checked with livekit-api's ``TokenVerifier``) and
recording the agent's signal connection attempts (``/rtc``), since no LiveKit server can run here.
Webhooks are signed exactly as LiveKit signs them: livekit-api's ``AccessToken`` with the body's
sha256.

The peer keeps what LiveKit knows of its rooms and reproduces what LiveKit does with them:

- ``sip_caller`` is LiveKit SIP putting a caller in a room: a SIP participant whose
  ``sip.trunkPhoneNumber`` is the raw user part of the ``To`` URI as the carrier sent it (livekit/
  protocol sip/sip.go), ``sip.callStatus`` "ringing" (livekit/sip pkg/sip/inbound.go joinRoom with
  CallRinging) and its audio track published (publishTrack);
- when an agent publishes a track in the room, LiveKit SIP subscribes to it and answers: the
  status becomes "active" (waitSubscribe, acceptCall, setStatus(CallActive)); ``auto_answer=False``
  keeps the call ringing;
- TransferSIPParticipant of a call not active is refused as LiveKit refuses it: Twirp
  ``failed_precondition`` (HTTP 412) "can't transfer non established call" (livekit/sip
  sipInbound.newReferReq, through psrpc's FailedPrecondition); a participant unknown to the room is
  ``not_found``; an answered transfer reports ``transfer_outcome`` (status, reason) and, when
  successful, the SIP participant leaves the room (LiveKit SIP hangs up after the REFER);
- RemoveParticipant of a participant not in the room is ``not_found`` "participant does not exist"
  (livekit/livekit pkg/service/roomservice.go); ListParticipants and ListRooms list what it knows.

With ``room_double`` the agent joins through tests/livekit/room_double.py (its rooms are these);
otherwise the real SDK connects to ``/rtc`` and is refused or held there."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToJson
from livekit import api, rtc
from livekit.protocol import agent_dispatch, egress, models, room, sip, webhook

from peers.loopback import serve_loopback
from tests.api.support import LiveApi, high_limits, start_live_api, stop_live_api, with_overrides
from tests.livekit.room_double import RoomDouble, verify

API_KEY = "APItenantkey1"
API_SECRET = "tenant-livekit-secret-0123456789abcdef"
APPLIANCE_KEY = "APIappliancekey"
APPLIANCE_SECRET = "appliance-livekit-secret-0123456789abcd"
NUMBER = "+15550107100"
CALLER = "+15550109999"


def sign(body: str, key: str = API_KEY, secret: str = API_SECRET, ttl_s: float = 300) -> str:
    """The Authorization header LiveKit sends: a JWT with the body's sha256 (no "Bearer")."""
    import datetime

    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return (api.AccessToken(key, secret).with_sha256(digest)
            .with_ttl(datetime.timedelta(seconds=ttl_s)).to_jwt())


def event_json(name: str, *, room_name: str = "", participant: models.ParticipantInfo | None = None,
               egress_info: egress.EgressInfo | None = None, track: models.TrackInfo | None = None,
               event_id: str | None = None, created_at: int | None = None, num_dropped: int = 0) -> str:
    """A WebhookEvent in protojson, as LiveKit posts it (``num_dropped``: deliveries LiveKit dropped
    since its last one: livekit/protocol webhook/url_notifier.go sets it on each send)."""
    ev = webhook.WebhookEvent(event=name, id=event_id or f"EV_{secrets.token_hex(6)}",
                              created_at=int(time.time()) if created_at is None else created_at,
                              num_dropped=num_dropped)
    if room_name:
        ev.room.CopyFrom(models.Room(sid=f"RM_{room_name}", name=room_name))
    if participant is not None:
        ev.participant.CopyFrom(participant)
    if egress_info is not None:
        ev.egress_info.CopyFrom(egress_info)
    if track is not None:
        ev.track.CopyFrom(track)
    return MessageToJson(ev)


def sip_participant(dialled: str = NUMBER, caller: str = CALLER, identity: str = "sip_caller_1",
                    status: str = "ringing") -> models.ParticipantInfo:
    """A SIP caller as LiveKit SIP makes it (livekit/protocol sip/sip.go: the attributes; identity
    ``sip_<from user>``; livekit/sip inbound.go: status "ringing" until it answers)."""
    info = models.ParticipantInfo(
        sid=f"PA_{identity}", identity=identity, name=f"Phone {caller}", kind=models.ParticipantInfo.Kind.SIP,
        attributes={"sip.trunkPhoneNumber": dialled, "sip.phoneNumber": caller, "sip.callID": f"SCL_{identity}",
                    "sip.callStatus": status, "sip.trunkID": "ST_1", "sip.hostname": "carrier.example.net"})
    info.tracks.add(sid=f"TR_{identity}", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE,
                    name="")
    return info


# Twirp errors as LiveKit answers them: (HTTP status, code, msg).
NOT_ESTABLISHED = (412, "failed_precondition", "can't transfer non established call")
NO_PARTICIPANT = (404, "not_found", "participant does not exist")


@dataclass
class LiveKitPeer:
    """LiveKit's server API on loopback. ``rtc_mode``: "refuse" answers the agent's signal
    connection 404 (the SDK's connect fails; a RoomDouble's join is refused too); "hold" keeps it
    waiting until the test ends; "accept" lets a RoomDouble join."""

    keys: dict[str, str] = field(default_factory=lambda: {API_KEY: API_SECRET, APPLIANCE_KEY: APPLIANCE_SECRET})
    rtc_mode: str = "refuse"
    # TransferSIPParticipantResponse (status, reason) of a transfer LiveKit accepts.
    transfer_outcome: tuple[int, int] = (sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL,
                                         sip.SIPTransferReason.STR_COMPLETED)
    auto_answer: bool = True
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # method -> (HTTP status, twirp code)
    dial_fails: tuple[int, str] | None = None  # CreateSIPParticipant not answered: (SIP status, reason)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # method -> answered once the event is set
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)  # (method, request message, claims)
    rtc_tokens: list[Any] = field(default_factory=list)  # claims of the agent's join tokens
    dispatches: dict[str, list[agent_dispatch.AgentDispatch]] = field(default_factory=dict)
    rooms: dict[str, dict[str, models.ParticipantInfo]] = field(default_factory=dict)  # room -> identity -> info
    doubles: list[RoomDouble] = field(default_factory=list)  # agents in rooms (room_double)
    sources: dict[tuple[str, str], rtc.AudioSource] = field(default_factory=dict)  # callers' audio
    runner: web.AppRunner | None = None
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    METHODS = {
        "AgentDispatchService/CreateDispatch": (agent_dispatch.CreateAgentDispatchRequest, "room_admin"),
        "AgentDispatchService/ListDispatch": (agent_dispatch.ListAgentDispatchRequest, "room_admin"),
        "AgentDispatchService/DeleteDispatch": (agent_dispatch.DeleteAgentDispatchRequest, "room_admin"),
        "SIP/TransferSIPParticipant": (sip.TransferSIPParticipantRequest, "sip_call"),
        "RoomService/RemoveParticipant": (room.RoomParticipantIdentity, "room_admin"),
        "RoomService/ListParticipants": (room.ListParticipantsRequest, "room_admin"),
        "RoomService/ListRooms": (room.ListRoomsRequest, "room_list"),
        "Egress/StartRoomCompositeEgress": (egress.RoomCompositeEgressRequest, "room_record"),
        "Egress/StopEgress": (egress.StopEgressRequest, "room_record"),
        "SIP/CreateSIPParticipant": (sip.CreateSIPParticipantRequest, "sip_dial"),
    }

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twirp/livekit.{service}/{method}", self._twirp)
        app.router.add_get("/rtc{tail:.*}", self._rtc)
        self.runner, port = await serve_loopback(app)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._release.set()
        for gate in self.gates.values():
            gate.set()
        if self.runner is not None:
            await self.runner.cleanup()
        for source in self.sources.values():
            await source.aclose()

    # The rooms

    def sip_caller(self, room_name: str, identity: str = "sip_caller_1", **kw: Any) -> models.ParticipantInfo:
        """LiveKit SIP puts a caller in ``room_name`` (``sip_participant``'s keywords)."""
        info = sip_participant(identity=identity, **kw)
        self.rooms.setdefault(room_name, {})[identity] = info
        for double in self._in(room_name):
            double.participant_joined(info)
        return info

    def set_call_status(self, room_name: str, identity: str, status: str) -> None:
        info = self.rooms[room_name][identity]
        info.attributes["sip.callStatus"] = status
        for double in self._in(room_name):
            double.attributes_changed(identity, {"sip.callStatus": status})

    def status(self, room_name: str, identity: str) -> str | None:
        info = self.rooms.get(room_name, {}).get(identity)
        return info.attributes.get("sip.callStatus") if info is not None else None

    def leave(self, room_name: str, identity: str,
              reason: int = models.DisconnectReason.CLIENT_INITIATED) -> None:
        if self.rooms.get(room_name, {}).pop(identity, None) is not None:
            for double in self._in(room_name):
                double.participant_left(identity, reason)

    def lose_room(self, room_name: str, reason: int = models.DisconnectReason.ROOM_DELETED) -> None:
        for double in self._in(room_name):
            double.lost(reason)

    def agent_published(self, room_name: str) -> None:
        """LiveKit SIP subscribes to the agent's track, then answers the ringing calls in the room."""
        if not self.auto_answer:
            return
        for identity, info in list(self.rooms.get(room_name, {}).items()):
            if info.kind == models.ParticipantInfo.Kind.SIP and info.attributes.get("sip.callStatus") == "ringing":
                self.set_call_status(room_name, identity, "active")

    def caller_track(self, room_name: str, identity: str) -> rtc.LocalAudioTrack:
        """The caller's audio as the agent receives it: a real SDK track on ``caller_source``."""
        return rtc.LocalAudioTrack.create_audio_track(identity, self.caller_source(room_name, identity))

    def caller_source(self, room_name: str, identity: str) -> rtc.AudioSource:
        key = (room_name, identity)
        if key not in self.sources:
            self.sources[key] = rtc.AudioSource(16000, 1)
        return self.sources[key]

    def room_factory(self, loop: Any) -> RoomDouble:
        return RoomDouble(self, loop)

    def join(self, double: RoomDouble, url: str, token: str) -> api.access_token.Claims:
        """An agent's join: refused as ``rtc_mode`` says, else in the token's room."""
        assert url == self.url.replace("http", "ws", 1), url
        claims = verify(self.keys, token)
        self.rtc_tokens.append(claims)
        if self.rtc_mode == "refuse":
            raise rtc.ConnectError("engine: signal failure: the test's server refuses")
        info = models.ParticipantInfo(sid=f"PA_{claims.identity}", identity=claims.identity,
                                      kind=models.ParticipantInfo.Kind.AGENT)
        self.rooms.setdefault(claims.video.room, {})[claims.identity] = info
        self.doubles.append(double)
        return claims

    def left(self, double: RoomDouble) -> None:
        if double in self.doubles:
            self.doubles.remove(double)
        self.rooms.get(double.name, {}).pop(double.identity, None)

    def agents(self, room_name: str) -> list[RoomDouble]:
        return self._in(room_name)

    def _in(self, room_name: str) -> list[RoomDouble]:
        return [d for d in self.doubles if d.name == room_name and d.isconnected()]

    def requests(self, method: str) -> list[Any]:
        return [req for m, req, _ in self.calls if m == method]

    def _claims(self, request: web.Request) -> Any:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        for key, secret in self.keys.items():
            try:
                return api.TokenVerifier(key, secret).verify(header[7:])
            except Exception:
                continue
        return None

    async def _twirp(self, request: web.Request) -> web.Response:
        method = f"{request.match_info['service']}/{request.match_info['method']}"
        if method not in self.METHODS:
            return web.json_response({"code": "bad_route", "msg": f"no method {method}"}, status=404)
        claims = self._claims(request)
        if claims is None:
            return web.json_response({"code": "unauthenticated", "msg": "invalid token"}, status=401)
        kind, grant = self.METHODS[method]
        msg = kind.FromString(await request.read())
        self.calls.append((method, msg, claims))
        if method in self.gates:  # lets a test act while the request is in flight
            await self.gates[method].wait()
        allowed = {"room_admin": bool(claims.video and claims.video.room_admin),
                   "room_list": bool(claims.video and claims.video.room_list),
                   "room_record": bool(claims.video and claims.video.room_record),
                   "sip_call": bool(claims.sip and claims.sip.call and claims.video and claims.video.room_admin),
                   "sip_dial": bool(claims.sip and claims.sip.call)}
        if not allowed[grant]:
            return web.json_response({"code": "permission_denied", "msg": f"needs {grant}"}, status=403)
        if method in self.fail:
            status, code = self.fail[method]
            return web.json_response({"code": code, "msg": "refused by the test"}, status=status)
        if method == "SIP/CreateSIPParticipant" and self.dial_fails is not None:
            # Not answered: the SIP status in the error's metadata, as livekit-api's SipCallError reads
            # it (which HTTP status and Twirp code LiveKit pairs with each SIP status is not documented).
            code, reason = self.dial_fails
            return web.json_response({"code": "unavailable", "msg": f"sip status: {code}: {reason}",
                                      "meta": {"sip_status_code": str(code), "sip_status": reason}}, status=503)
        answer = self._answer(method, msg)
        if isinstance(answer, tuple):  # a Twirp error: (HTTP status, code, msg)
            return web.json_response({"code": answer[1], "msg": answer[2]}, status=answer[0])
        return web.Response(body=answer.SerializeToString(), content_type="application/protobuf")

    def _answer(self, method: str, msg: Any) -> Any:
        if method == "SIP/CreateSIPParticipant":  # answered (wait_until_answered: LiveKit returns then)
            return sip.SIPParticipantInfo(participant_id=f"PA_{msg.participant_identity}",
                                          participant_identity=msg.participant_identity, room_name=msg.room_name,
                                          sip_call_id=f"SCL_{secrets.token_hex(4)}")
        if method == "AgentDispatchService/CreateDispatch":
            made = agent_dispatch.AgentDispatch(id=f"AD_{secrets.token_hex(4)}", agent_name=msg.agent_name,
                                                room=msg.room, metadata=msg.metadata)
            self.dispatches.setdefault(msg.room, []).append(made)
            return made
        if method == "AgentDispatchService/ListDispatch":
            return agent_dispatch.ListAgentDispatchResponse(agent_dispatches=self.dispatches.get(msg.room, []))
        if method == "AgentDispatchService/DeleteDispatch":
            kept = [d for d in self.dispatches.get(msg.room, []) if d.id != msg.dispatch_id]
            gone = [d for d in self.dispatches.get(msg.room, []) if d.id == msg.dispatch_id]
            self.dispatches[msg.room] = kept
            return gone[0] if gone else agent_dispatch.AgentDispatch()
        if method == "SIP/TransferSIPParticipant":
            return self._transfer(msg)
        if method == "RoomService/RemoveParticipant":
            if msg.identity not in self.rooms.get(msg.room, {}):
                return NO_PARTICIPANT
            self.leave(msg.room, msg.identity, models.DisconnectReason.PARTICIPANT_REMOVED)
            return room.RemoveParticipantResponse()
        if method == "RoomService/ListParticipants":
            return room.ListParticipantsResponse(participants=list(self.rooms.get(msg.room, {}).values()))
        if method == "RoomService/ListRooms":
            return room.ListRoomsResponse(rooms=[models.Room(sid=f"RM_{name}", name=name)
                                                 for name, people in self.rooms.items() if people])
        if method == "Egress/StartRoomCompositeEgress":
            return egress.EgressInfo(egress_id=f"EG_{secrets.token_hex(4)}", room_name=msg.room_name,
                                     status=egress.EgressStatus.EGRESS_STARTING)
        return egress.EgressInfo(egress_id=msg.egress_id, status=egress.EgressStatus.EGRESS_ENDING)

    def _transfer(self, msg: sip.TransferSIPParticipantRequest) -> Any:
        """livekit/livekit pkg/service/sip.go TransferSIPParticipant, then livekit/sip newReferReq."""
        info = self.rooms.get(msg.room_name, {}).get(msg.participant_identity)
        if info is None:
            return NO_PARTICIPANT
        if "sip.callID" not in info.attributes:
            return (400, "invalid_argument", "no SIP session associated with participant")
        if info.attributes.get("sip.callStatus") != "active":
            return NOT_ESTABLISHED
        status, reason = self.transfer_outcome
        if status == sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL:
            self.leave(msg.room_name, msg.participant_identity)  # LiveKit SIP hangs up after the REFER
        elif reason == sip.SIPTransferReason.STR_CALL_ENDED:
            self.leave(msg.room_name, msg.participant_identity)  # the caller hung up meanwhile
        return sip.TransferSIPParticipantResponse(transfer_id="TR_1", status=status, reason=reason)

    async def _rtc(self, request: web.Request) -> web.StreamResponse:
        claims = self._claims(request)
        if request.path.startswith("/rtc/validate"):
            return web.json_response({"code": "not_found", "msg": "no room server here"}, status=404)
        self.rtc_tokens.append(claims)
        if self.rtc_mode == "hold":
            await self._release.wait()
        return web.json_response({"code": "not_found", "msg": "no room server here"}, status=404)


@dataclass
class LiveKitWorld:
    api: LiveApi
    runner: web.AppRunner
    peer: LiveKitPeer
    tenant_id: str
    key: str
    agent_id: str

    async def post(self, body: str, authorization: str | None = None, *, sign_with: tuple[str, str] | None = None,
                   content_type: str = "application/webhook+json") -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if authorization is None:
            authorization = sign(body, *(sign_with or (API_KEY, API_SECRET)))
        if authorization:
            headers["Authorization"] = authorization
        status, data, _ = await self.api.call("POST", "/webhooks/livekit", data=body.encode(), headers=headers)
        return status, data

    async def sip_joins(self, room_name: str = "call-room-1", identity: str = "sip_caller_1", *,
                        sign_with: tuple[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
        """A SIP caller enters a room of the peer and LiveKit posts its participant_joined."""
        info = self.peer.sip_caller(room_name, identity, **kw)
        return await self.post(event_json("participant_joined", room_name=room_name, participant=info),
                               sign_with=sign_with)

    async def sip_leaves(self, room_name: str, identity: str, event: str = "participant_left") -> tuple[int, Any]:
        """The caller hangs up: gone from the room (the agent sees it leave), then the webhook."""
        info = self.peer.rooms.get(room_name, {}).get(identity) or sip_participant(identity=identity)
        self.peer.leave(room_name, identity)
        return await self.post(event_json(event, room_name=room_name, participant=info))

    async def calls(self) -> list[dict]:
        rows, _ = await self.api.control.store.voice_calls.list(tenant_id=self.tenant_id, limit=200)
        return rows

    async def events(self, call_id: str) -> list[str]:
        rows, _ = await self.api.control.store.call_events.list(tenant_id=self.tenant_id,
                                                                equals={"call_id": call_id}, limit=200)
        return [r["topic"] for r in rows]

    async def final(self, call_id: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            row = await self.api.control.store.voice_calls.get(call_id, tenant_id=self.tenant_id)
            if row is not None and row["status"] in ("ended", "failed"):
                return row
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.02)


async def start_world(settings, *, rtc_mode: str | None = None, appliance: bool = False, room_double: bool = False,
                      livekit: dict | None = None) -> LiveKitWorld:
    """``room_double``: the agent joins the peer's rooms through RoomDouble instead of the SDK's Room
    (``rtc_mode`` "accept" by default then; "refuse" fails the join)."""
    peer = LiveKitPeer(rtc_mode=rtc_mode or ("accept" if room_double else "refuse"))
    await peer.start()
    lk = {"url": peer.url, "api_key": APPLIANCE_KEY} if appliance else {}
    built = with_overrides(settings, limits=high_limits(), server={"shutdown_grace_s": 0.2},
                           telephony={"livekit": {**lk, "join_timeout_s": 5, "reconcile_interval_s": 0,
                                                  **(livekit or {})}})
    live, runner = await start_live_api(built)
    if room_double:
        from runtime.telephony.livekit.bridge import bridge

        bridge(live.app).room_factory = peer.room_factory
    if appliance:
        from runtime.telephony.livekit.server import APPLIANCE_SECRET_REF

        await live.control.secrets.set(APPLIANCE_SECRET_REF, APPLIANCE_SECRET)
    tenant_id, key = await live.tenant_with_key("livekit-tenant")
    agent_id = await live.front_desk(tenant_id, key, NUMBER, "livekit", {"url": peer.url, "api_key": API_KEY},
                                     API_SECRET, escalation_target="+15550109000")
    return LiveKitWorld(live, runner, peer, tenant_id, key, agent_id)


async def stop_world(world: LiveKitWorld) -> None:
    await stop_live_api(world.api, world.runner)
    await world.peer.stop()


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
