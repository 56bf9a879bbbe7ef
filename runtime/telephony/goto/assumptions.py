"""What GoTo does not document publicly, in one place.

Everything else about GoTo's wire formats follows its developer guides and sample apps (cited in
runtime.telephony.goto.api and .events). Each guess below has a test named ``test_assumes_...``
(tests/goto/test_goto_assumptions.py), a line in the README ("GoTo Connect: assumptions") and a
fallback for when it is wrong. If GoTo's real payloads differ, this module and those tests change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Bounded, printable identifiers: a hostile body cannot bloat memory or logs with them.
IDENTIFIER = re.compile(r"^[A-Za-z0-9._:@+\-]{1,200}$")
MAX_SDP_CHARS = 64 * 1024

# The web-calls guide names these endpoints without a body or an answer we could read:
# ringing is posted without a body; fallback if GoTo wants one: its 4xx fails only that call.
RINGING_BODY: dict[str, Any] | None = None
# No hang-up endpoint is documented: DELETE /web-calls/v1/calls/{id}; fallback when GoTo answers
# 404/405: closing our WebRTC peer ends the media (runtime.telephony.goto.api.GotoApi.hangup).
HANGUP = ("DELETE", "/web-calls/v1/calls/{id}")
# Nor is removing a device: DELETE /web-calls/v1/devices/{deviceId}; fallback: the GoTo admin
# routes the number away from the extension, after which the device gets no calls.
DEVICE_DELETE = ("DELETE", "/web-calls/v1/devices/{deviceId}")
# The guide shows a notification as {"data": {"type", "source", "content"}} on a WebSocket channel;
# a Webhook channel is assumed to POST the same object (a bare {"content": ...} is read too).
ENVELOPE_KEYS = ("data",)
# Whether call events accept a Webhook channel on every account is not settled; fallback: a
# refused call-events subscription leaves the number working through the web-call device alone
# (offers still arrive; caller id from the offer, hang-ups from the WebRTC peer).
CALL_EVENTS_OPTIONAL = True


def client_information(version: str) -> dict[str, str]:
    """ASSUMPTION: the device's ``clientInformation`` (its fields are not published) names the
    application and its version."""
    return {"appId": "voicectl", "appVersion": version, "platform": "server"}


def device_id(answer: dict[str, Any]) -> str | None:
    """ASSUMPTION: the device-creation answer carries the new device's id as ``id`` (or ``deviceId``)."""
    for key in ("id", "deviceId"):
        value = answer.get(key)
        if isinstance(value, str) and IDENTIFIER.match(value):
            return value
    return None


class OfferError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A web call offered to our device: GoTo's id for it, its SDP offer, and what it may say about
    the caller and the call-events conversation."""

    call_id: str
    sdp: str
    conversation_id: str | None
    caller: str | None
    caller_name: str | None


def incoming_call(content: dict[str, Any], number: Any) -> IncomingCall:
    """ASSUMPTION: the content of an incoming web call (envelope ``source: "WebRTC"``, ``type:
    "incoming"``, which the guide documents) carries ``callId`` and the SDP offer ``sdp``, and may
    carry ``conversationSpaceId`` and the caller as ``caller: {name, number}`` (the shape call
    events use). Fallback: without a conversation id the offer is matched to the tenant's one
    ringing call, else it opens its own call; without a caller the call-events STARTING supplies it.
    ``number`` normalises a phone number (or returns None)."""
    call_id = content.get("callId")
    if not isinstance(call_id, str) or not IDENTIFIER.match(call_id):
        raise OfferError("content.callId must be an identifier (1-200 characters of letters, digits, ._:@+-)",
                         "content.callId")
    sdp = content.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("content.sdp must be the SDP offer as a string", "content.sdp")
    if len(sdp) > MAX_SDP_CHARS:
        raise OfferError(f"content.sdp is longer than {MAX_SDP_CHARS} characters", "content.sdp")
    conversation = content.get("conversationSpaceId")
    conversation = conversation if isinstance(conversation, str) and IDENTIFIER.match(conversation) else None
    caller = content.get("caller") if isinstance(content.get("caller"), dict) else {}
    name = caller.get("name")
    return IncomingCall(call_id, sdp, conversation, number(caller.get("number")),
                        name[:100] if isinstance(name, str) and name else None)
