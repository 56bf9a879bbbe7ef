"""LiveKit projects and their server API (Twirp, through ``livekit-api``).

A project is a URL, an API key and its secret: the appliance's (``telephony.livekit`` with the
secret in the keyring under ``APPLIANCE_SECRET_REF``) or a tenant's (``livekit`` credential:
fields url and api_key, the secret in the keyring). Everything said to a LiveKit server goes
through ``LiveKitServer``: tokens (signed locally), agent dispatch, SIP transfer, participant
removal, room egress, outbound SIP calls. The SDK is imported when used, never at import time.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from runtime.control.errors import ControlError
from runtime.egress.aiohttp_client import guarded_session
from runtime.egress.policy import REFUSED, EgressPolicy, refused
from runtime.egress.resolve import permitted_addresses
from runtime.telephony.livekit.numbers import check_country

if TYPE_CHECKING:
    from livekit.protocol.agent_dispatch import AgentDispatch
    from livekit.protocol.egress import EgressInfo
    from livekit.protocol.sip import SIPParticipantInfo

    from runtime.config import Settings
    from runtime.control.plane import ControlPlane

log = logging.getLogger("voicectl.livekit")

# Keyring reference of the appliance's LiveKit API secret (set with `voicectl livekit set-secret`).
APPLIANCE_SECRET_REF = "appliance/livekit/api_secret"
API_TIMEOUT_S = 10.0
# Twirp request timeout for a SIP transfer: it rings the target first (LiveKit's own default is
# 30 s: livekit/livekit pkg/service/sip.go TransferSIPParticipant).
TRANSFER_TIMEOUT_S = 40.0
# livekit/protocol livekit_sip.proto: SIPTransferStatus and SIPTransferReason.
STS_TRANSFER_ONGOING, STS_TRANSFER_FAILED, STS_TRANSFER_SUCCESSFUL = 0, 1, 2
STR_CALL_ENDED = 2  # "The call ended before the transfer completed: remote BYE, room deleted or local hangup"
TRANSFER_STATUSES = {0: "ongoing", 1: "failed", 2: "successful"}
TRANSFER_REASONS = {0: "unspecified", 1: "completed", 2: "call_ended", 3: "rejected", 4: "ringing_timeout",
                    5: "subscription_terminated", 6: "canceled"}
# Twirp request timeout of an outbound dial, beyond its ringing timeout.
DIAL_MARGIN_S = 15


class LiveKitUnavailable(ControlError):
    """The LiveKit server refused or could not be reached; ``details`` carry its Twirp code."""

    status = 502
    code = "livekit_error"


@dataclass(frozen=True)
class TransferOutcome:
    """TransferSIPParticipantResponse (livekit/protocol livekit_sip.proto). A server older than the
    response's status (it answered google.protobuf.Empty) reads as ongoing with no reason."""

    status: int
    reason: int = 0
    sip_status: int = 0

    @property
    def successful(self) -> bool:
        return self.status == STS_TRANSFER_SUCCESSFUL

    @property
    def failed(self) -> bool:
        return self.status == STS_TRANSFER_FAILED

    @property
    def caller_hung_up(self) -> bool:
        """Ongoing, but the call ended first: the caller hung up (or the room went) mid-transfer."""
        return self.status == STS_TRANSFER_ONGOING and self.reason == STR_CALL_ENDED

    def to_dict(self) -> dict[str, Any]:
        return {"status": TRANSFER_STATUSES.get(self.status, str(self.status)),
                "reason": TRANSFER_REASONS.get(self.reason, str(self.reason)), "sip_status": self.sip_status}


class SipDialFailed(Exception):
    """An outbound SIP call was not answered: LiveKit's error carries the SIP status (metadata
    ``sip_status_code`` and ``sip_status``, as livekit-api's SipCallError reads them)."""

    def __init__(self, code: int | None, status: str) -> None:
        super().__init__(f"SIP {code} {status}")
        self.code, self.status = code, status


class LiveKitNotConfigured(ControlError):
    """Neither the tenant nor the appliance has a LiveKit project: the tenant can fix that (409)."""

    status = 409
    code = "livekit_not_configured"


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str = field(repr=False)
    tenant_id: str | None = None  # the tenant whose credential this is; None: the appliance's
    # A tenant's server is reached through the egress guard (security.egress); the appliance's is not.
    egress: EgressPolicy | None = field(default=None, repr=False, compare=False)
    # ISO country of the project's SIP trunks: national dialled numbers are read with it.
    country: str | None = None

    @property
    def rtc_url(self) -> str:
        """The URL clients and the agent connect to (ws/wss)."""
        if self.url.startswith("http"):
            return "ws" + self.url[4:]
        return self.url

    # Tokens (local JWTs, HS256 with the API secret)

    def participant_token(self, room: str, identity: str, *, name: str = "", ttl_s: int = 3600,
                          metadata: str = "", attributes: dict[str, str] | None = None, can_publish: bool = True,
                          can_subscribe: bool = True) -> str:
        """``attributes`` become the participant's when it joins (livekit/livekit pkg/rtc/participant.go
        takes them from the token's claims); without canUpdateOwnMetadata the client cannot change them."""
        from livekit import api

        grants = api.VideoGrants(room_join=True, room=room, can_publish=can_publish, can_subscribe=can_subscribe,
                                 can_publish_data=True, can_update_own_metadata=False)
        token = (api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_grants(grants)
                 .with_ttl(datetime.timedelta(seconds=ttl_s)))
        if name:
            token = token.with_name(name)
        if metadata:
            token = token.with_metadata(metadata)
        if attributes:
            token = token.with_attributes(attributes)
        return token.to_jwt()

    def agent_token(self, room: str, identity: str, ttl_s: int = 6 * 3600) -> str:
        """The runtime's own participant in a call's room: kind agent, publish and subscribe."""
        from livekit import api

        grants = api.VideoGrants(room_join=True, room=room, agent=True, can_publish=True, can_subscribe=True)
        return (api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_kind("agent")
                .with_name("voicectl agent").with_grants(grants)
                .with_ttl(datetime.timedelta(seconds=ttl_s)).to_jwt())

    # Server API

    def _client(self, timeout_s: float = API_TIMEOUT_S, session: aiohttp.ClientSession | None = None) -> Any:
        from livekit import api

        # failover off: a self-hosted server has no other regions to try.
        return api.LiveKitAPI(self.url, self.api_key, self.api_secret,
                              timeout=aiohttp.ClientTimeout(total=timeout_s), session=session, failover=False)

    async def check_destination(self) -> None:
        """EgressRefused when a tenant's server is somewhere the egress guard does not let tenants'
        URLs go. For the real-time SDK, which connects by itself: the address is checked just
        before it connects (it resolves the name again)."""
        if self.egress is not None:
            target = urlsplit(self.rtc_url)
            await permitted_addresses(self.egress, target.hostname or "",
                                      target.port or (443 if target.scheme == "wss" else 80))

    async def _call(self, what: str, fn: Any, timeout_s: float = API_TIMEOUT_S) -> Any:
        from livekit.api import ServerError

        session = guarded_session(self.egress) if self.egress is not None else None
        try:
            async with self._client(timeout_s, session) as lk:
                return await fn(lk)
        except ServerError as exc:
            log.warning("livekit API call refused", extra={"call": what, "code": exc.code, "status": exc.status})
            raise LiveKitUnavailable(f"LiveKit refused {what}: {exc.message or exc.code}",
                                     {"livekit_code": exc.code, "livekit_status": exc.status}) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("livekit API unreachable", extra={"call": what, "error": type(exc).__name__})
            raise LiveKitUnavailable(f"LiveKit server unreachable for {what}",
                                     {"error": REFUSED if refused(exc) else type(exc).__name__}) from None
        finally:
            if session is not None:  # given to the SDK, which closes only its own
                await session.close()

    async def create_dispatch(self, room: str, agent_name: str, metadata: str) -> AgentDispatch:
        from livekit.protocol.agent_dispatch import CreateAgentDispatchRequest

        req = CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
        return await self._call("CreateDispatch", lambda lk: lk.agent_dispatch.create_dispatch(req))

    async def list_dispatches(self, room: str) -> list[AgentDispatch]:
        return await self._call("ListDispatch", lambda lk: lk.agent_dispatch.list_dispatch(room))

    async def delete_dispatch(self, dispatch_id: str, room: str) -> AgentDispatch:
        return await self._call("DeleteDispatch", lambda lk: lk.agent_dispatch.delete_dispatch(dispatch_id, room))

    async def transfer_sip(self, room: str, identity: str, target: str) -> TransferOutcome:
        """TransferSIPParticipant (SIP REFER). LiveKit refuses a call not yet answered
        (failed_precondition "can't transfer non established call": livekit/sip pkg/sip/inbound.go
        newReferReq): LiveKitUnavailable, as for any refusal."""
        from livekit.protocol.sip import TransferSIPParticipantRequest

        transfer_to = target if target.startswith(("tel:", "sip:", "sips:")) else f"tel:{target}"
        req = TransferSIPParticipantRequest(participant_identity=identity, room_name=room,
                                            transfer_to=transfer_to, play_dialtone=False)
        resp = await self._call("TransferSIPParticipant",
                                lambda lk: lk.sip.transfer_sip_participant(req, timeout=TRANSFER_TIMEOUT_S),
                                TRANSFER_TIMEOUT_S + 5)
        if resp is None:
            return TransferOutcome(STS_TRANSFER_ONGOING)
        return TransferOutcome(int(resp.status), int(resp.reason), int(resp.sip_status.code))

    async def remove_participant(self, room: str, identity: str) -> None:
        """Removing a SIP participant hangs up its phone call."""
        from livekit.protocol.room import RoomParticipantIdentity

        req = RoomParticipantIdentity(room=room, identity=identity)
        await self._call("RemoveParticipant", lambda lk: lk.room.remove_participant(req))

    async def list_rooms(self) -> list[str]:
        """The names of the project's open rooms (RoomService.ListRooms)."""
        from livekit.protocol.room import ListRoomsRequest

        resp = await self._call("ListRooms", lambda lk: lk.room.list_rooms(ListRoomsRequest()))
        return [r.name for r in resp.rooms]

    async def list_participants(self, room: str) -> list[Any]:
        """The room's participants (RoomService.ListParticipants), as ``ParticipantInfo``."""
        from livekit.protocol.room import ListParticipantsRequest

        resp = await self._call("ListParticipants", lambda lk: lk.room.list_participants(
            ListParticipantsRequest(room=room)))
        return list(resp.participants)

    async def start_room_egress(self, room: str, filepath: str, s3: dict[str, Any] | None) -> EgressInfo:
        """Audio-only room composite to one OGG file (to S3-compatible storage when ``s3`` is given)."""
        from livekit.protocol.egress import (
            EncodedFileOutput,
            EncodedFileType,
            RoomCompositeEgressRequest,
            S3Upload,
        )

        output = EncodedFileOutput(file_type=EncodedFileType.OGG, filepath=filepath)
        if s3 is not None:
            output.s3.CopyFrom(S3Upload(**s3))
        req = RoomCompositeEgressRequest(room_name=room, audio_only=True, file_outputs=[output])
        return await self._call("StartRoomCompositeEgress", lambda lk: lk.egress.start_room_composite_egress(req))

    async def stop_egress(self, egress_id: str) -> EgressInfo:
        from livekit.protocol.egress import StopEgressRequest

        req = StopEgressRequest(egress_id=egress_id)
        return await self._call("StopEgress", lambda lk: lk.egress.stop_egress(req))

    async def create_sip_participant(self, *, trunk_id: str, to: str, from_number: str, room: str, identity: str,
                                     ringing_timeout_s: int, attributes: dict[str, str]) -> SIPParticipantInfo:
        """SIPService.CreateSIPParticipant: dial ``to`` on the outbound trunk into ``room``, waiting
        until the callee answers (``wait_until_answered``). SipDialFailed with the SIP status when
        the call is not answered (busy, no answer, rejected); LiveKitUnavailable otherwise."""
        from livekit.api import SipCallError
        from livekit.protocol.sip import CreateSIPParticipantRequest

        req = CreateSIPParticipantRequest(
            sip_trunk_id=trunk_id, sip_call_to=to, sip_number=from_number, room_name=room,
            participant_identity=identity, participant_name=to, participant_attributes=attributes,
            play_dialtone=False, wait_until_answered=True)
        req.ringing_timeout.seconds = ringing_timeout_s

        async def dial(lk: Any) -> Any:
            try:
                return await lk.sip.create_sip_participant(req)
            except SipCallError as exc:  # not a server failure: the callee's answer
                return exc

        result = await self._call("CreateSIPParticipant", dial, ringing_timeout_s + DIAL_MARGIN_S)
        if isinstance(result, SipCallError):
            raise SipDialFailed(result.sip_status_code, result.sip_status or result.message)
        return result


# Which project: the appliance's or a tenant's


async def appliance_server(settings: Settings, control: ControlPlane) -> LiveKitServer | None:
    conf = settings.telephony.livekit
    if not conf.url or not conf.api_key:
        return None
    secret = await control.secrets.get(APPLIANCE_SECRET_REF, cached=True)
    if not secret:
        return None
    return LiveKitServer(conf.url, conf.api_key, secret, None, country=conf.default_country)


async def tenant_credential_server(control: ControlPlane, tenant_id: str,
                                   default_country: str | None = None) -> LiveKitServer | None:
    """``default_country``: the trunks' country when the credential names none (field ``country``)."""
    row = await control.store.credentials.find(tenant_id=tenant_id, provider="livekit")
    if row is None:
        return None
    fields = row.get("fields") or {}
    secret = await control.credentials.secret(tenant_id, "livekit")
    if not secret or not fields.get("url") or not fields.get("api_key"):
        return None
    country = default_country
    if fields.get("country"):
        try:
            country = check_country(str(fields["country"]))
        except ValueError:
            log.warning("the tenant's livekit credential names an unknown country; ignored",
                        extra={"tenant_id": tenant_id})
    return LiveKitServer(str(fields["url"]).rstrip("/"), str(fields["api_key"]), secret, tenant_id, control.egress,
                         country)


async def server_for_tenant(settings: Settings, control: ControlPlane, tenant_id: str) -> LiveKitServer:
    """The tenant's own project, else the appliance's; LiveKitNotConfigured when neither is set up."""
    found = await tenant_credential_server(control, tenant_id, settings.telephony.livekit.default_country)
    if found is None:
        found = await appliance_server(settings, control)
    if found is None:
        raise LiveKitNotConfigured(
            "LiveKit is not configured: set the tenant's livekit credential (url, api_key, secret) "
            "or telephony.livekit.url/api_key with `voicectl livekit set-secret`", {"provider": "livekit"})
    return found
