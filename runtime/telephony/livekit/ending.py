"""How a LiveKit call ends: the caller left or the room closed (``end_call``), or the agent cannot
serve it (``fail_call``: failed, and the caller removed from the room)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from runtime.telephony.livekit.server import LiveKitUnavailable

if TYPE_CHECKING:
    from runtime.telephony.livekit.bridge import LiveKitCall
    from runtime.telephony.livekit.server import LiveKitServer

log = logging.getLogger("voicectl.livekit")


async def hang_up(server: LiveKitServer, room: str, identity: str) -> None:
    """RemoveParticipant: for a SIP participant LiveKit hangs up the phone call."""
    try:
        await server.remove_participant(room, identity)
    except LiveKitUnavailable:
        pass  # logged by the server client; the caller may have gone already


async def end_call(call: LiveKitCall, reason: str, hangup_by: str | None = None) -> None:
    """The caller left or the room closed: stop the agent, then archive (transferred when a transfer
    was under way: the SIP caller leaves the room once LiveKit has handed the call over)."""
    session = call.session
    if not session.live:
        return
    if call.transfer_in_flight:
        call.left = (reason, hangup_by)  # LiveKit's answer to the transfer ends the call
        return
    if call.agent is not None:
        await call.agent.leave()
    if session.state == "transferring":
        await session.end("transferred")
    else:
        await session.end(reason, hangup_by=hangup_by)


async def fail_call(call: LiveKitCall, reason: str, message: str) -> None:
    """The agent cannot serve the call: fail it and remove the caller, who would otherwise keep
    ringing (LiveKit SIP rings for up to 3 minutes until a track is subscribed: livekit/sip
    pkg/sip/participant.go defaultRingingTimeout) or sit in silence."""
    session = call.session
    if not session.live:
        return
    log.warning("livekit call failed; removing the caller", extra={"call_id": session.id, "reason": reason})
    if call.agent is not None:
        await call.agent.leave()
    await session.fail(reason, message)
    await hang_up(call.server, call.room, call.identity)
