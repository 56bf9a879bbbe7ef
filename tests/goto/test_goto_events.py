"""GoTo notification parsing against the documented shapes: the {"data": {type, source, content}}
envelope of GoTo's sample apps, call-event metadata and state from the Call Events guide, the caller
as screen-pop-demo's InboundCaller reads it, and web-call offers by their documented envelope."""

from __future__ import annotations

import copy

import pytest

from runtime.telephony.goto.events import CallEvent, GotoPayloadError, Ignored, WebCallOffer, parse_delivery
from tests.goto.support import ACCOUNT_KEY, CALLER, EXTENSION, NUMBER, call_event, web_call_offer


def test_documented_call_event_shape_parses() -> None:
    event = parse_delivery(call_event("conv-1", "STARTING", 1))
    assert isinstance(event, CallEvent)
    assert (event.conversation_id, event.state, event.sequence, event.direction, event.account_key) == (
        "conv-1", "STARTING", 1, "INBOUND", ACCOUNT_KEY)
    assert [(p.kind, p.status) for p in event.participants] == [("PHONE_NUMBER", "RINGING"), ("LINE", "RINGING")]
    assert event.caller_status() == "RINGING"


def test_the_caller_is_type_caller_number_and_the_company_line_is_type_number() -> None:
    """screen-pop-demo's InboundCaller reads type.caller.{name, number} on the PHONE_NUMBER participant."""
    event = parse_delivery(call_event("c", "STARTING", 1, caller="+1 555 000-1111", company="+1 (555) 010-8000"))
    assert (event.caller, event.company_number) == (CALLER, NUMBER)
    assert event.participants[0].caller_name == "Pat Caller"
    assert parse_delivery(call_event("c", "STARTING", 1, caller=None)).caller is None
    assert parse_delivery(call_event("c", "STARTING", 1, caller="anonymous")).caller is None


def test_the_line_and_extension_the_call_reached() -> None:
    event = parse_delivery(call_event("c", "STARTING", 1))
    assert event.extensions == (EXTENSION,) and event.participants[1].line_id == "line-1"
    body = call_event("c", "STARTING", 1)
    body["data"]["content"]["state"]["participants"][1]["type"]["extensionNumber"] = 7001  # a number is read too
    assert parse_delivery(body).extensions == ("7001",)


def test_sequence_number_in_state_sequence_number() -> None:
    body = call_event("conv-1", "ACTIVE", 3)
    state = body["data"]["content"]["state"]
    assert parse_delivery(body).sequence == 3
    state["sequenceNumber"] = "12"
    assert parse_delivery(body).sequence == 12  # a numeric string is accepted
    moved = copy.deepcopy(body)
    content = moved["data"]["content"]
    content["metadata"]["sequenceNumber"] = content["state"].pop("sequenceNumber")
    with pytest.raises(GotoPayloadError) as exc:
        parse_delivery(moved)
    assert exc.value.details["field"] == "content.state.sequenceNumber"
    for bad in (-1, True, 1.5, "x", None, 2**63):
        state["sequenceNumber"] = bad
        with pytest.raises(GotoPayloadError):
            parse_delivery(body)


def test_what_is_unknown_is_ignored_not_refused() -> None:
    """The Call Events guide: clients ignore attributes (and values) they do not know."""
    body = call_event("c", "STARTING", 1, direction="SIDEWAYS")
    content = body["data"]["content"]
    content["state"]["participants"].append({"status": {"value": "RINGING"}})  # no type.value
    content["metadata"]["somethingNew"] = {"x": 1}
    event = parse_delivery(body)
    assert event.direction is None and len(event.participants) == 2
    assert parse_delivery({"data": {"source": "WebRTC", "type": "ended", "content": {}}}) == Ignored("webrtc_ended")
    assert parse_delivery({"data": {"type": "WEBSOCKET_REFRESH_REQUIRED"}}) == Ignored(
        "no_content_websocket_refresh_required")


def test_a_web_call_offer_is_known_by_its_envelope() -> None:
    offer = parse_delivery(web_call_offer("wc-1", "v=0\r\n"))
    assert isinstance(offer, WebCallOffer)
    assert (offer.call.call_id, offer.call.sdp, offer.call.conversation_id) == ("wc-1", "v=0\r\n", None)
    # The same content without the WebRTC envelope is not an offer.
    assert isinstance(parse_delivery({"content": web_call_offer("wc-1", "v=0\r\n")["data"]["content"]}), Ignored)


@pytest.mark.parametrize("body, where", [
    ([], "JSON object"),
    ({"data": {"content": {"metadata": {"conversationSpaceId": "c"}, "state": {"type": "RINGING",
                                                                               "sequenceNumber": 1}}}},
     "state.type"),
    ({"data": {"content": {"metadata": {"conversationSpaceId": "bad id\n"}, "state": {"type": "ACTIVE",
                                                                                      "sequenceNumber": 1}}}},
     "conversationSpaceId"),
    ({"data": {"source": "WebRTC", "type": "incoming", "content": {"callId": "wc", "sdp": ""}}}, "sdp"),
    ({"data": {"source": "WebRTC", "type": "incoming", "content": {"callId": "wc", "sdp": "v=0\r\n" + "a" * 70_000}}},
     "longer"),
    ({"data": {"source": "WebRTC", "type": "incoming", "content": {"sdp": "v=0"}}}, "callId"),
])
def test_malformed_payloads_name_the_problem(body, where: str) -> None:
    with pytest.raises(GotoPayloadError) as exc:
        parse_delivery(body)
    assert where in exc.value.message
