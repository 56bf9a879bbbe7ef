"""Handing a SIP caller over (TransferSIPParticipant) and recording what LiveKit says came of it.

LiveKit answers with ``TransferSIPParticipantResponse{status, reason, sip_status}`` (livekit/protocol
livekit_sip.proto): only ``STS_TRANSFER_SUCCESSFUL`` means the transfer finished; ``ONGOING`` with
``STR_CALL_ENDED`` means the call ended first (the caller hung up); ``FAILED`` carries why. A server
older than that response answers ``google.protobuf.Empty``, read as ongoing with no reason: the
call then stays ``transferring`` until the SIP participant leaves (``transferred``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.telephony.livekit.ending import fail_call
from runtime.telephony.livekit.server import TRANSFER_REASONS, LiveKitUnavailable

if TYPE_CHECKING:
    from runtime.telephony.livekit.bridge import LiveKitCall


async def transfer_call(call: LiveKitCall, target: str, *, after_hours: bool = False) -> None:
    """Transfer ``call``'s SIP caller to ``target``; ``after_hours``: no conversation was held
    (the call ends ``after_hours_transfer`` rather than ``transferred``)."""
    session = call.session
    call.transfer_in_flight = True
    try:
        outcome = await call.server.transfer_sip(call.room, call.identity, target)
    except LiveKitUnavailable as exc:
        await fail_call(call, "transfer_failed", exc.message)
        return
    finally:
        call.transfer_in_flight = False
    session.summary.setdefault("livekit", {})["transfer"] = outcome.to_dict()
    if outcome.failed:
        why = TRANSFER_REASONS.get(outcome.reason, str(outcome.reason))
        await fail_call(call, "transfer_failed", f"LiveKit reports the SIP transfer failed ({why})")
        return
    if not (outcome.successful or outcome.caller_hung_up or after_hours or call.left):
        return  # ongoing, outcome not reported: the SIP participant leaving ends the call
    if call.agent is not None:
        await call.agent.leave()
    if outcome.caller_hung_up:
        await session.end("caller_hangup", hangup_by="caller")
    else:
        await session.end("after_hours_transfer" if after_hours else "transferred")
