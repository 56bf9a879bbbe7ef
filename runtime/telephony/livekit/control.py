"""What tenants ask of LiveKit through the API: client tokens, agent dispatch, room egress.

Room names are tenant-scoped: on the appliance's shared project every room a tenant names is
``<tenant id>--<name>``, so a runtime key can never mint a token for another tenant's room; on a
tenant's own project (its ``livekit`` credential) names are used as given.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from pydantic import Field, field_validator, model_validator

from runtime.config import Settings
from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.plane import ControlPlane
from runtime.control.schemas import Input, check_e164
from runtime.telephony.livekit.bridge import LiveKitBridge
from runtime.telephony.livekit.server import LiveKitServer, server_for_tenant

NAME_PATTERN = r"^[A-Za-z0-9_.:=-]{1,100}$"
ROOM_SEPARATOR = "--"
# A client token's attributes naming the call its holder starts (read by the webhook: callers.py).
# In the token, they last as long as it does (an agent dispatch goes with the room when an empty
# room closes, after 5 minutes by default, while a token may live 24 h).
TENANT_ATTRIBUTE, NUMBER_ATTRIBUTE = "voicectl.tenant_id", "voicectl.number"


class TokenRequest(Input):
    room: str | None = Field(None, pattern=NAME_PATTERN, description="room name (default: a new random room)")
    identity: str | None = Field(None, pattern=NAME_PATTERN, description="participant identity (default: random)")
    name: str | None = Field(None, max_length=100, description="display name")
    ttl_s: int = Field(3600, ge=60, le=86400, description="token lifetime in seconds")
    number: str | None = Field(None, description="the tenant's number whose agent should answer (E.164)")
    spawn_agent: bool | None = Field(None, description="this runtime's agent answers when the client joins "
                                                       "(default: true when a number is given)")

    _e164 = field_validator("number")(check_e164)

    @model_validator(mode="after")
    def _agent_needs_number(self) -> TokenRequest:
        if self.spawn_agent and not self.number:
            raise ValueError("spawn_agent needs the number whose agent answers")
        return self


class DispatchRequest(Input):
    room: str = Field(pattern=NAME_PATTERN, description="room name (tenant-scoped)")
    number: str = Field(description="the tenant's number whose agent answers (E.164)")

    _e164 = field_validator("number")(check_e164)


@dataclass(frozen=True)
class LiveKitToken:
    token: str
    room: str
    identity: str
    livekit_url: str
    expires_at: int  # unix seconds
    agent_spawned: bool
    dispatch_id: str | None  # null: the call is named in the token (kept for clients that read it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LiveKitDispatch:
    id: str
    room: str
    agent_name: str
    number: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LiveKitEgress:
    egress_id: str
    call_id: str
    room: str
    status: int  # livekit.protocol.egress.EgressStatus

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scoped_room(server: LiveKitServer, tenant_id: str, room: str) -> str:
    return room if server.tenant_id == tenant_id else f"{tenant_id}{ROOM_SEPARATOR}{room}"


async def _check_number(control: ControlPlane, tenant_id: str, number: str) -> None:
    row = await control.store.phone_numbers.find(tenant_id=tenant_id, e164=number)
    if row is None:
        raise NotFound(f"number {number} not found", {"number": number})


async def _dispatch(server: LiveKitServer, settings: Settings, tenant_id: str, room: str,
                    number: str) -> LiveKitDispatch:
    agent_name = settings.telephony.livekit.agent_name
    meta = orjson.dumps({"tenant_id": tenant_id, "number": number}).decode()
    created = await server.create_dispatch(room, agent_name, meta)
    return LiveKitDispatch(created.id, created.room or room, created.agent_name or agent_name, number)


async def mint_token(settings: Settings, control: ControlPlane, tenant_id: str, req: TokenRequest) -> LiveKitToken:
    server = await server_for_tenant(settings, control, tenant_id)
    room = scoped_room(server, tenant_id, req.room or f"call-{secrets.token_hex(6)}")
    identity = req.identity or f"user-{secrets.token_hex(6)}"
    spawn = bool(req.number) if req.spawn_agent is None else req.spawn_agent
    if req.number:
        await _check_number(control, tenant_id, req.number)
    # The call is named in the token itself: no dispatch that an idle room could lose.
    attributes = {TENANT_ATTRIBUTE: tenant_id, NUMBER_ATTRIBUTE: req.number} if spawn and req.number else None
    token = server.participant_token(room, identity, name=req.name or "", ttl_s=req.ttl_s, attributes=attributes)
    return LiveKitToken(token, room, identity, server.rtc_url, int(time.time()) + req.ttl_s, spawn, None)


async def create_dispatch(settings: Settings, control: ControlPlane, tenant_id: str,
                          req: DispatchRequest) -> LiveKitDispatch:
    server = await server_for_tenant(settings, control, tenant_id)
    await _check_number(control, tenant_id, req.number)
    return await _dispatch(server, settings, tenant_id, scoped_room(server, tenant_id, req.room), req.number)


def _own(dispatch: Any, settings: Settings, tenant_id: str) -> LiveKitDispatch | None:
    """A dispatch of this runtime's agent for this tenant (by its metadata), else None."""
    if dispatch.agent_name != settings.telephony.livekit.agent_name:
        return None
    try:
        meta = orjson.loads(dispatch.metadata or "{}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(meta, dict) or meta.get("tenant_id") != tenant_id:
        return None
    return LiveKitDispatch(dispatch.id, dispatch.room, dispatch.agent_name, meta.get("number"))


async def list_dispatches(settings: Settings, control: ControlPlane, tenant_id: str,
                          room: str) -> list[LiveKitDispatch]:
    server = await server_for_tenant(settings, control, tenant_id)
    found = await server.list_dispatches(scoped_room(server, tenant_id, room))
    return [d for d in (_own(x, settings, tenant_id) for x in found) if d is not None]


async def delete_dispatch(settings: Settings, control: ControlPlane, tenant_id: str, room: str,
                          dispatch_id: str) -> None:
    server = await server_for_tenant(settings, control, tenant_id)
    full = scoped_room(server, tenant_id, room)
    mine = [d for d in await list_dispatches(settings, control, tenant_id, room) if d.id == dispatch_id]
    if not mine:
        raise NotFound(f"dispatch {dispatch_id} not found in room {room}", {"dispatch_id": dispatch_id})
    await server.delete_dispatch(dispatch_id, full)


# Room egress of a live call


def _live_call(br: LiveKitBridge, tenant_id: str, call_id: str):
    call = br.by_call.get(call_id)
    if call is None or call.session.tenant_id != tenant_id or not call.session.live:
        raise NotFound(f"no live LiveKit call {call_id}", {"call_id": call_id})
    return call


async def _s3_output(control: ControlPlane, tenant_id: str, force_path_style: bool) -> dict[str, Any] | None:
    """The tenant's S3-compatible storage (its ``s3`` credential) as egress upload settings."""
    row = await control.store.credentials.find(tenant_id=tenant_id, provider="s3")
    if row is None:
        return None
    secret = await control.credentials.secret(tenant_id, "s3")
    fields = row.get("fields") or {}
    if not secret:
        raise Invalid("the tenant's s3 credential has no secret access key", {"provider": "s3"})
    return {"access_key": fields.get("access_key_id", ""), "secret": secret, "region": fields.get("region", ""),
            "endpoint": fields.get("endpoint", ""), "bucket": fields.get("bucket", ""),
            "force_path_style": force_path_style}


async def start_egress(control: ControlPlane, br: LiveKitBridge, tenant_id: str, call_id: str, *,
                       force_path_style: bool = True) -> LiveKitEgress:
    """``force_path_style``: S3 uploads address the bucket in the path (telephony.livekit.egress_force_path_style)."""
    call = _live_call(br, tenant_id, call_id)
    # Checked and claimed before the first await: of two concurrent starts only one records.
    if call.recording or call.egress_starting:
        raise Conflict("the call is already being recorded by a room egress",
                       {"egress_id": call.recording[-1] if call.recording else None})
    call.egress_starting = True
    try:
        s3 = await _s3_output(control, tenant_id, force_path_style)
        info = await call.server.start_room_egress(call.room, f"{tenant_id}/{call_id}.ogg", s3)
    finally:
        call.egress_starting = False
    await br.record_egress(control.store, call, info.egress_id)
    return LiveKitEgress(info.egress_id, call_id, call.room, int(info.status))


async def stop_egress(br: LiveKitBridge, tenant_id: str, call_id: str, egress_id: str) -> LiveKitEgress:
    call = _live_call(br, tenant_id, call_id)
    if egress_id not in call.egress_ids:
        raise NotFound(f"egress {egress_id} is not this call's", {"egress_id": egress_id})
    info = await call.server.stop_egress(egress_id)
    br.egress_stopped(call_id, egress_id)
    return LiveKitEgress(egress_id, call_id, call.room, int(info.status))
