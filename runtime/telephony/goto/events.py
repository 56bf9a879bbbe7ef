"""GoTo Connect notification-channel deliveries -> typed items.

Sources: GoTo's guides "Use the Call Events API" (C) and "Make and Receive Calls using the Devices
and Calls API" (W), and the sample apps LogMeIn/screen-pop-demo (S1: types/callEvents.ts,
service/callEventsWs.ts) and goto-developers/call-events-report-demo (S2: listener.js).

- A notification is ``{"data": {"type", "source", "content"}}`` (S1 handleEvent, S2 onSocketMessage).
- A web call offered to our device has ``source: "WebRTC"`` and ``type: "incoming"`` (W); its
  content is read by runtime.telephony.goto.assumptions.incoming_call (not published).
- A call event's content is ``{"metadata": {"conversationSpaceId", "direction", "accountKey",
  "callCreated"}, "state": {"id", "type", "sequenceNumber", "timestamp", "participants"}}`` (C, S1
  Metadata/State). A participant is ``{"id", "type": {"value", "name", ...}, "status": {"value"}}``;
  on the PHONE_NUMBER participant ``type.caller.{name, number}`` is the caller (S1 InboundCaller)
  and ``type.number`` the company number it called (C); a LINE participant names the line and
  extension the call reached as ``type.lineId`` and ``type.extensionNumber`` (C).

C asks clients to ignore what they do not know: unknown attributes, directions, participants
without a type and notifications of other sources are ignored, never refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runtime.telephony.goto.assumptions import (
    ENVELOPE_KEYS,
    IDENTIFIER,
    IncomingCall,
    OfferError,
    incoming_call,
)

CALL_STATES = frozenset({"STARTING", "ACTIVE", "ENDING"})
DIRECTIONS = frozenset({"INBOUND", "OUTBOUND"})
_NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
_EXTENSION = re.compile(r"^[0-9*#]{1,15}$")
MAX_PARTICIPANTS = 100


class GotoPayloadError(ValueError):
    """A delivery we recognise but cannot read; ``details`` says where."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class Participant:
    kind: str  # type.value: LINE, PHONE_NUMBER, ...
    status: str | None  # status.value: RINGING, ACTIVE, ...
    number: str | None  # PHONE_NUMBER: the company number called (type.number)
    caller: str | None  # PHONE_NUMBER: the caller (type.caller.number)
    caller_name: str | None
    line_id: str | None  # LINE: type.lineId
    extension: str | None  # LINE: type.extensionNumber


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One call state of a conversation (a GoTo call), with its per-conversation sequence number."""

    conversation_id: str
    state: str  # STARTING | ACTIVE | ENDING
    sequence: int
    direction: str | None  # INBOUND | OUTBOUND; None: a value we do not know
    account_key: str | None
    participants: tuple[Participant, ...]

    def _phone(self) -> Participant | None:
        return next((p for p in self.participants if p.kind == "PHONE_NUMBER"), None)

    @property
    def caller(self) -> str | None:
        phone = self._phone()
        return phone.caller if phone else None

    @property
    def company_number(self) -> str | None:
        """The company number the caller dialled (the PHONE_NUMBER participant's ``type.number``)."""
        phone = self._phone()
        return phone.number if phone else None

    @property
    def extensions(self) -> tuple[str, ...]:
        """The extensions of the LINE participants the call reached."""
        return tuple(p.extension for p in self.participants if p.kind == "LINE" and p.extension)

    def caller_status(self) -> str | None:
        phone = self._phone()
        return phone.status if phone else None


@dataclass(frozen=True, slots=True)
class WebCallOffer:
    """A web call offered to our device (source WebRTC, type incoming)."""

    call: IncomingCall


@dataclass(frozen=True, slots=True)
class Ignored:
    """A notification with nothing for us to do (another source or type)."""

    reason: str


def parse_delivery(body: Any) -> CallEvent | WebCallOffer | Ignored:
    """A decoded JSON body -> a call event, a web-call offer or Ignored; GotoPayloadError for one
    we recognise but cannot read."""
    if not isinstance(body, dict):
        raise GotoPayloadError("the body must be a JSON object")
    envelope = next((body[k] for k in ENVELOPE_KEYS if isinstance(body.get(k), dict)), body)
    source, kind, content = envelope.get("source"), envelope.get("type"), envelope.get("content")
    if source == "WebRTC":
        if kind != "incoming":
            return Ignored(f"webrtc_{_label(kind)}")
        if not isinstance(content, dict):
            raise GotoPayloadError("an incoming web call needs a content object", {"field": "data.content"})
        try:
            return WebCallOffer(incoming_call(content, phone_number))
        except OfferError as exc:
            raise GotoPayloadError(exc.message, {"field": exc.field}) from None
    if not isinstance(content, dict):
        return Ignored(f"no_content_{_label(kind)}" if kind else "no_content")
    metadata, state = content.get("metadata"), content.get("state")
    if not isinstance(metadata, dict) or not isinstance(state, dict):
        return Ignored(f"not_a_call_event_{_label(source)}" if source else "not_a_call_event")
    return _call_event(metadata, state)


def _call_event(metadata: dict[str, Any], state: dict[str, Any]) -> CallEvent:
    conversation_id = _identifier(metadata.get("conversationSpaceId"), "content.metadata.conversationSpaceId")
    kind = state.get("type")
    if kind not in CALL_STATES:
        raise GotoPayloadError(f"content.state.type must be one of {sorted(CALL_STATES)}",
                               {"field": "content.state.type", "got": _short(kind)})
    direction = metadata.get("direction")
    account = metadata.get("accountKey")
    return CallEvent(conversation_id, kind, sequence_number(state),
                     direction if direction in DIRECTIONS else None,
                     str(account)[:40] if isinstance(account, (str, int)) and not isinstance(account, bool) else None,
                     _participants(state))


def sequence_number(state: dict[str, Any]) -> int:
    """C, S1 State: ``content.state.sequenceNumber``, an integer (a numeric string is accepted)."""
    raw = state.get("sequenceNumber")
    if isinstance(raw, bool):
        raw = None
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 18:
        raw = int(raw)
    if not isinstance(raw, int) or raw < 0 or raw > 2**62:
        raise GotoPayloadError("content.state.sequenceNumber must be a non-negative integer",
                               {"field": "content.state.sequenceNumber", "got": _short(raw)})
    return raw


def phone_number(raw: Any) -> str | None:
    """A phone number as GoTo writes it -> compact E.164-ish digits; anything else is unknown."""
    if not isinstance(raw, str):
        return None
    compact = re.sub(r"[\s\-().]", "", raw)
    return compact if _NUMBER.match(compact) else None


def _participants(state: dict[str, Any]) -> tuple[Participant, ...]:
    raw = state.get("participants", [])
    if not isinstance(raw, list):
        raise GotoPayloadError("content.state.participants must be a list", {"field": "content.state.participants"})
    out = []
    for item in raw[:MAX_PARTICIPANTS]:
        kind_obj = item.get("type") if isinstance(item, dict) else None
        kind = kind_obj.get("value") if isinstance(kind_obj, dict) else None
        if not isinstance(kind, str) or not kind:
            continue  # C: what we do not know is ignored
        status_obj = item.get("status")
        status = status_obj.get("value") if isinstance(status_obj, dict) else None
        caller = kind_obj.get("caller") if isinstance(kind_obj.get("caller"), dict) else {}
        name = caller.get("name")
        line_id = kind_obj.get("lineId")
        extension = kind_obj.get("extensionNumber")
        extension = str(extension) if isinstance(extension, (str, int)) and not isinstance(extension, bool) else None
        out.append(Participant(
            kind[:40], status[:40] if isinstance(status, str) else None,
            phone_number(kind_obj.get("number")), phone_number(caller.get("number")),
            name[:100] if isinstance(name, str) and name else None,
            line_id if isinstance(line_id, str) and IDENTIFIER.match(line_id) else None,
            extension if extension and _EXTENSION.match(extension) else None,
        ))
    return tuple(out)


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise GotoPayloadError(f"{field} must be an identifier (1-200 characters of letters, digits, ._:@+-)",
                               {"field": field})
    return value


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else type(value).__name__
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:40] or "none"


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 and not isinstance(value, (dict, list)) else text[:60]
