"""Outbound calls through LiveKit SIP: ``SIPService.CreateSIPParticipant`` on the tenant's outbound
trunk (its ``livekit`` credential's ``sip_outbound_trunk_id``) into a room of the call's own,
then the agent joins that room as it does for an inbound SIP caller (runtime.telephony.livekit.
room), and the call connects when it hears the callee.

The request waits until the callee answers (``wait_until_answered``, ``ringing_timeout`` = the
call's ``timeout_s``): the call is ``dialing`` meanwhile (LiveKit reports no separate ringing to
the API) and ``failed`` with the SIP status when nobody answers: 486 Busy Here and 600 Busy
Everywhere are ``busy``; 408 Request Timeout, 480 Temporarily Unavailable, 487 Request Terminated
and 603 Decline ``no_answer`` (Twilio reports a rejected call as no-answer too); anything else
``carrier_error``. The callee is registered with the bridge before the dial, so LiveKit's webhooks
for it (``participant_joined`` answers with this call's id, ``participant_left`` ends it) find it.
Answering-machine detection is not offered (422 at the API).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from runtime.calls.session import DIALING
from runtime.telephony.livekit.bridge import LiveKitBridge, LiveKitCall, bridge
from runtime.telephony.livekit.room import LiveKitControl, RoomAgent
from runtime.telephony.livekit.server import (
    LiveKitNotConfigured,
    LiveKitServer,
    LiveKitUnavailable,
    SipDialFailed,
    tenant_credential_server,
)
from runtime.telephony.services import services

if TYPE_CHECKING:
    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.livekit")

BUSY = frozenset({486, 600})
NO_ANSWER = frozenset({408, 480, 487, 603})


@dataclass(eq=False)
class LiveKitLeg:
    server: LiveKitServer
    trunk_id: str
    call: LiveKitCall | None = None


def room_name(call_id: str) -> str:
    return f"voicectl-out-{call_id}"


def callee_identity(call_id: str) -> str:
    return f"sip-callee-{call_id}"


async def prepare(app: web.Application, tenant_id: str) -> LiveKitLeg:
    """The tenant's own LiveKit project and outbound trunk; 409 livekit_not_configured without."""
    control = services(app).control
    server = await tenant_credential_server(control, tenant_id)
    row = await control.store.credentials.find(tenant_id=tenant_id, provider="livekit")
    trunk = str(((row or {}).get("fields") or {}).get("sip_outbound_trunk_id") or "")
    if server is None or not trunk:
        raise LiveKitNotConfigured("outbound LiveKit calls need the tenant's livekit credential with its "
                                   "sip_outbound_trunk_id (url, api_key, the API secret)", {"provider": "livekit"})
    return LiveKitLeg(server, trunk)


class _Canceling:
    """CallControl before the dial: a call hung up while queued is simply never dialled."""

    def __init__(self, leg: LiveKitLeg) -> None:
        self.leg = leg

    async def hangup(self, reason: str) -> None:
        if self.leg.call is not None:
            await LiveKitControl(self.leg.call).hangup(reason)

    async def transfer(self, target: str) -> None:
        """Never asked: live control transfers connected calls only (their control is LiveKit's)."""


def control_for(leg: LiveKitLeg) -> _Canceling:
    return _Canceling(leg)


async def dial(app: web.Application, session: CallSession, base_url: str) -> None:
    leg: LiveKitLeg = session.outbound.leg
    br = bridge(app)
    call = leg.call = LiveKitCall(session, leg.server, room_name(session.id), callee_identity(session.id), "",
                                  sip=True)
    session.summary["livekit"] = {"room": call.room, "participant": call.identity, "sip": True}
    br.add(call)
    session.on_end.append(lambda s: _ended(br, call, s))
    await session.advance(DIALING)
    try:
        info = await leg.server.create_sip_participant(
            trunk_id=leg.trunk_id, to=session.to_number or "", from_number=session.from_number or "",
            room=call.room, identity=call.identity, ringing_timeout_s=session.outbound.timeout_s,
            attributes={"voicectl.call_id": session.id})
    except SipDialFailed as failed:
        if session.live:
            await session.fail(_reason(failed.code), f"LiveKit SIP: {failed.code} {failed.status}"[:300])
        return
    except LiveKitUnavailable as exc:
        if session.live:
            await session.fail("carrier_error", exc.message)
        return
    if not session.live:
        return  # hung up while it rang: the control removed the participant
    call.participant_sid = info.participant_id
    session.control = LiveKitControl(call)
    call.agent = RoomAgent(app, call)
    call.agent.start()


def _reason(code: int | None) -> str:
    if code in BUSY:
        return "busy"
    if code in NO_ANSWER:
        return "no_answer"
    return "carrier_error"


def _ended(br: LiveKitBridge, call: LiveKitCall, session: CallSession) -> None:
    br.forget(call)
    if call.agent is not None:
        br.spawn(call.agent.leave())
    if session.state == "failed" and call.participant_sid:  # e.g. the agent could not join: free the callee
        br.spawn(_remove(call))


async def _remove(call: LiveKitCall) -> None:
    try:
        await call.server.remove_participant(call.room, call.identity)
    except LiveKitUnavailable:
        pass  # logged by the server client; the callee may have gone already
