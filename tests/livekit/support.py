"""Shared setup of the LiveKit tests: a live runtime, a tenant with a number and a ``livekit``
credential, and ``LiveKitPeer``: a local aiohttp server speaking LiveKit's Twirp API (protobuf
bodies, JSON errors ``{"code", "msg"}``, tokens checked with livekit-api's ``TokenVerifier``) and
recording the agent's signal connection attempts (``/rtc``), since no LiveKit server can run here.
Webhooks are signed exactly as LiveKit signs them: livekit-api's ``AccessToken`` with the body's
sha256."""

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
from livekit import api
from livekit.protocol import agent_dispatch, egress, models, room, sip, webhook

from peers.loopback import serve_loopback
from tests.api.support import LiveApi, high_limits, start_live_api, stop_live_api, with_overrides

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
               event_id: str | None = None, created_at: int | None = None) -> str:
    """A WebhookEvent in protojson, as LiveKit posts it."""
    ev = webhook.WebhookEvent(event=name, id=event_id or f"EV_{secrets.token_hex(6)}",
                              created_at=int(time.time()) if created_at is None else created_at)
    if room_name:
        ev.room.CopyFrom(models.Room(sid=f"RM_{room_name}", name=room_name))
    if participant is not None:
        ev.participant.CopyFrom(participant)
    if egress_info is not None:
        ev.egress_info.CopyFrom(egress_info)
    if track is not None:
        ev.track.CopyFrom(track)
    return MessageToJson(ev)


def sip_participant(dialled: str = NUMBER, caller: str = CALLER, identity: str = "sip_caller_1") -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=f"PA_{identity}", identity=identity, kind=models.ParticipantInfo.Kind.SIP,
        attributes={"sip.trunkPhoneNumber": dialled, "sip.phoneNumber": caller, "sip.callID": f"SCL_{identity}",
                    "sip.callStatus": "active", "sip.trunkID": "ST_1"})


@dataclass
class LiveKitPeer:
    """LiveKit's server API on loopback. ``rtc_mode``: "refuse" answers the agent's signal
    connection 404 (the SDK's connect fails); "hold" keeps it waiting until the test ends."""

    keys: dict[str, str] = field(default_factory=lambda: {API_KEY: API_SECRET, APPLIANCE_KEY: APPLIANCE_SECRET})
    rtc_mode: str = "refuse"
    transfer_status: int = 2  # STS_TRANSFER_SUCCESSFUL
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # method -> (HTTP status, twirp code)
    dial_fails: tuple[int, str] | None = None  # CreateSIPParticipant not answered: (SIP status, reason)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # method -> answered once the event is set
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)  # (method, request message, claims)
    rtc_tokens: list[Any] = field(default_factory=list)  # claims of the agent's join tokens
    dispatches: dict[str, list[agent_dispatch.AgentDispatch]] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    METHODS = {
        "AgentDispatchService/CreateDispatch": (agent_dispatch.CreateAgentDispatchRequest, "room_admin"),
        "AgentDispatchService/ListDispatch": (agent_dispatch.ListAgentDispatchRequest, "room_admin"),
        "AgentDispatchService/DeleteDispatch": (agent_dispatch.DeleteAgentDispatchRequest, "room_admin"),
        "SIP/TransferSIPParticipant": (sip.TransferSIPParticipantRequest, "sip_call"),
        "RoomService/RemoveParticipant": (room.RoomParticipantIdentity, "room_admin"),
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
        return web.Response(body=self._answer(method, msg).SerializeToString(), content_type="application/protobuf")

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
            return sip.TransferSIPParticipantResponse(transfer_id="TR_1", status=self.transfer_status)
        if method == "RoomService/RemoveParticipant":
            return room.RemoveParticipantResponse()
        if method == "Egress/StartRoomCompositeEgress":
            return egress.EgressInfo(egress_id=f"EG_{secrets.token_hex(4)}", room_name=msg.room_name,
                                     status=egress.EgressStatus.EGRESS_STARTING)
        return egress.EgressInfo(egress_id=msg.egress_id, status=egress.EgressStatus.EGRESS_ENDING)

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


async def start_world(settings, *, rtc_mode: str = "refuse", appliance: bool = False,
                      livekit: dict | None = None) -> LiveKitWorld:
    peer = LiveKitPeer(rtc_mode=rtc_mode)
    await peer.start()
    lk = {"url": peer.url, "api_key": APPLIANCE_KEY} if appliance else {}
    built = with_overrides(settings, limits=high_limits(), server={"shutdown_grace_s": 0.2},
                           telephony={"livekit": {**lk, "join_timeout_s": 5, **(livekit or {})}})
    live, runner = await start_live_api(built)
    if appliance:
        from runtime.telephony.livekit.server import APPLIANCE_SECRET_REF

        live.control.secrets.set(APPLIANCE_SECRET_REF, APPLIANCE_SECRET)
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
