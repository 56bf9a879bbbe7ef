"""GoTo Connect notification-channel deliveries -> typed events.

GoTo's documentation of these payloads is thin. The shape PROTOCOLS.md gives for call events is
``{"content": {"metadata": {"conversationSpaceId", "direction", "callCreated"}, "state": {"type",
"sequenceNumber", "participants": [{"type": {"value"}, "status": {"value"}}]}}}``. Everything
beyond it is a guess, and each guess lives in exactly one function below, named in its docstring
with "ASSUMPTION", and has a test named after it (tests/goto/test_goto_events.py). If GoTo's real
payloads differ, only this module changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CALL_STATES = frozenset({"STARTING", "ACTIVE", "ENDING"})
DIRECTIONS = frozenset({"INBOUND", "OUTBOUND"})
# Identifiers we key live state on: bounded and printable, so a hostile body cannot bloat memory
# or logs.
_ID = re.compile(r"^[A-Za-z0-9._:@+\-]{1,200}$")
_NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
MAX_SDP_CHARS = 64 * 1024


class GotoPayloadError(ValueError):
    """A delivery that is not a call event or web-call offer we understand; ``details`` says where."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class Participant:
    kind: str  # type.value: LINE, PHONE_NUMBER, ...
    status: str | None  # status.value: RINGING, ACTIVE, ...
    number: str | None  # see participant_number()


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One call state of a conversation (a GoTo call), with its per-conversation sequence number."""

    conversation_id: str
    state: str  # STARTING | ACTIVE | ENDING
    sequence: int
    direction: str | None
    dialled: str | None
    caller: str | None
    participants: tuple[Participant, ...]

    def caller_status(self) -> str | None:
        for p in self.participants:
            if p.kind == "PHONE_NUMBER":
                return p.status
        return None


@dataclass(frozen=True, slots=True)
class WebCallOffer:
    """An inbound web call (web-calls API) ringing our WebRTC line, with GoTo's SDP offer."""

    call_id: str
    sdp: str
    conversation_id: str


def parse_delivery(body: Any) -> CallEvent | WebCallOffer:
    """A decoded JSON body -> a call event or a web-call offer; GotoPayloadError otherwise."""
    content = delivery_content(body)
    if looks_like_web_call_offer(content):
        return web_call_offer(content)
    metadata, state = content.get("metadata"), content.get("state")
    if not isinstance(metadata, dict) or not isinstance(state, dict):
        raise GotoPayloadError("content needs the objects metadata and state (a call event) or callId and "
                               "sdp (a web-call offer)", {"keys": sorted(map(str, content))[:20]})
    conversation_id = _identifier(metadata.get("conversationSpaceId"), "content.metadata.conversationSpaceId")
    kind = state.get("type")
    if kind not in CALL_STATES:
        raise GotoPayloadError(f"content.state.type must be one of {sorted(CALL_STATES)}",
                               {"field": "content.state.type", "got": _short(kind)})
    direction = metadata.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise GotoPayloadError("content.metadata.direction must be INBOUND or OUTBOUND",
                               {"field": "content.metadata.direction", "got": _short(direction)})
    participants = _participants(state)
    return CallEvent(conversation_id, kind, sequence_number(state), direction,
                     dialled_number(metadata, participants), caller_number(participants), participants)


# The guesses, one function each.


def delivery_content(body: Any) -> dict[str, Any]:
    """ASSUMPTION: the notification channel delivers the event as ``{"content": ...}`` (PROTOCOLS.md)
    or wrapped once as ``{"data": {"content": ...}}`` (the envelope other GoTo notifications use)."""
    if not isinstance(body, dict):
        raise GotoPayloadError("the body must be a JSON object")
    content = body.get("content")
    if content is None and isinstance(body.get("data"), dict):
        content = body["data"].get("content")
    if not isinstance(content, dict):
        raise GotoPayloadError("no content object (expected {\"content\": {...}} or {\"data\": {\"content\": {...}}})",
                               {"field": "content"})
    return content


def sequence_number(state: dict[str, Any]) -> int:
    """ASSUMPTION (PROTOCOLS.md, unconfirmed): the per-conversation sequence number is
    ``content.state.sequenceNumber``, an integer (a numeric string is accepted)."""
    raw = state.get("sequenceNumber")
    if isinstance(raw, bool):
        raw = None
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 18:
        raw = int(raw)
    if not isinstance(raw, int) or raw < 0 or raw > 2**62:
        raise GotoPayloadError("content.state.sequenceNumber must be a non-negative integer",
                               {"field": "content.state.sequenceNumber", "got": _short(raw)})
    return raw


def participant_number(kind_obj: dict[str, Any]) -> str | None:
    """ASSUMPTION: a participant's phone number is ``type.number`` (E.164; spaces and dashes are
    compacted). Anything that is not a phone number reads as unknown (None)."""
    raw = kind_obj.get("number")
    if not isinstance(raw, str):
        return None
    compact = re.sub(r"[\s\-().]", "", raw)
    return compact if _NUMBER.match(compact) else None


def dialled_number(metadata: dict[str, Any], participants: tuple[Participant, ...]) -> str | None:
    """ASSUMPTION: the number the caller dialled is ``content.metadata.dialedNumber`` when present,
    else the number of the LINE participant (our side of the call)."""
    raw = metadata.get("dialedNumber")
    if isinstance(raw, str):
        number = participant_number({"number": raw})
        if number is not None:
            return number
    for p in participants:
        if p.kind == "LINE" and p.number:
            return p.number
    return None


def caller_number(participants: tuple[Participant, ...]) -> str | None:
    """ASSUMPTION: on an inbound call the caller is the PHONE_NUMBER participant (the external party)."""
    for p in participants:
        if p.kind == "PHONE_NUMBER":
            return p.number
    return None


def looks_like_web_call_offer(content: dict[str, Any]) -> bool:
    """ASSUMPTION: an inbound web call reaches the same channel as a content object carrying the
    web call's ``callId`` and GoTo's SDP offer ``sdp`` (no metadata/state)."""
    return "sdp" in content and "callId" in content


def web_call_offer(content: dict[str, Any]) -> WebCallOffer:
    """ASSUMPTION: the offer names the call-events conversation it belongs to as
    ``conversationSpaceId``, which is how it is matched to the call opened on STARTING."""
    call_id = _identifier(content.get("callId"), "content.callId")
    conversation_id = _identifier(content.get("conversationSpaceId"), "content.conversationSpaceId")
    sdp = content.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise GotoPayloadError("content.sdp must be the SDP offer as a string", {"field": "content.sdp"})
    if len(sdp) > MAX_SDP_CHARS:
        raise GotoPayloadError(f"content.sdp is longer than {MAX_SDP_CHARS} characters", {"field": "content.sdp"})
    return WebCallOffer(call_id, sdp, conversation_id)


# Documented parts.


def _participants(state: dict[str, Any]) -> tuple[Participant, ...]:
    raw = state.get("participants", [])
    if not isinstance(raw, list) or len(raw) > 100:
        raise GotoPayloadError("content.state.participants must be a list (at most 100)",
                               {"field": "content.state.participants"})
    out = []
    for index, item in enumerate(raw):
        kind_obj = item.get("type") if isinstance(item, dict) else None
        kind = kind_obj.get("value") if isinstance(kind_obj, dict) else None
        if not isinstance(kind, str) or not kind:
            raise GotoPayloadError("every participant needs type.value",
                                   {"field": f"content.state.participants[{index}].type.value"})
        status_obj = item.get("status")
        status = status_obj.get("value") if isinstance(status_obj, dict) else None
        out.append(Participant(kind[:40], status[:40] if isinstance(status, str) else None,
                               participant_number(kind_obj)))
    return tuple(out)


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise GotoPayloadError(f"{field} must be an identifier (1-200 characters of letters, digits, ._:@+-)",
                               {"field": field})
    return value


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 and not isinstance(value, (dict, list)) else text[:60]
