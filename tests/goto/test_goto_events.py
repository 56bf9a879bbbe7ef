"""GoTo payload parsing: each test named test_assumes_* pins one guess about GoTo's payloads
(runtime.telephony.goto.events); if GoTo's real payloads differ, these are the tests to change."""

from __future__ import annotations

import copy

import pytest

from runtime.telephony.goto.events import CallEvent, GotoPayloadError, WebCallOffer, parse_delivery
from tests.goto.support import CALLER, NUMBER, call_event, web_call_offer


def test_documented_call_event_shape_parses() -> None:
    event = parse_delivery(call_event("conv-1", "STARTING", 1))
    assert isinstance(event, CallEvent)
    assert (event.conversation_id, event.state, event.sequence, event.direction) == ("conv-1", "STARTING", 1,
                                                                                     "INBOUND")
    assert [(p.kind, p.status) for p in event.participants] == [("PHONE_NUMBER", "RINGING"), ("LINE", "RINGING")]
    assert event.caller_status() == "RINGING"


def test_assumes_content_at_top_level_or_under_data() -> None:
    top = parse_delivery(call_event("conv-1", "ENDING", 7))
    wrapped = parse_delivery(call_event("conv-1", "ENDING", 7, wrapped=True))
    assert top == wrapped
    with pytest.raises(GotoPayloadError, match="no content object"):
        parse_delivery({"payload": call_event("conv-1", "ENDING", 7)["content"]})


def test_assumes_sequence_number_in_state_sequence_number() -> None:
    body = call_event("conv-1", "ACTIVE", 3)
    assert parse_delivery(body).sequence == 3
    body["content"]["state"]["sequenceNumber"] = "12"
    assert parse_delivery(body).sequence == 12  # a numeric string is accepted
    moved = copy.deepcopy(body)
    moved["content"]["metadata"]["sequenceNumber"] = moved["content"]["state"].pop("sequenceNumber")
    with pytest.raises(GotoPayloadError) as exc:
        parse_delivery(moved)
    assert exc.value.details["field"] == "content.state.sequenceNumber"
    for bad in (-1, True, 1.5, "x", None, 2**63):
        body["content"]["state"]["sequenceNumber"] = bad
        with pytest.raises(GotoPayloadError):
            parse_delivery(body)


def test_assumes_caller_number_on_the_phone_number_participant() -> None:
    assert parse_delivery(call_event("c", "STARTING", 1, caller="+1 555 000-1111")).caller == CALLER
    assert parse_delivery(call_event("c", "STARTING", 1, caller=None)).caller is None
    assert parse_delivery(call_event("c", "STARTING", 1, caller="anonymous")).caller is None


def test_assumes_dialled_number_in_metadata_dialed_number() -> None:
    body = call_event("c", "STARTING", 1, dialled=None)
    body["content"]["metadata"]["dialedNumber"] = "+1 (555) 010-8000"
    assert parse_delivery(body).dialled == NUMBER


def test_assumes_dialled_number_on_the_line_participant() -> None:
    assert parse_delivery(call_event("c", "STARTING", 1)).dialled == NUMBER
    body = call_event("c", "STARTING", 1)
    body["content"]["metadata"]["dialedNumber"] = "+15550109999"  # metadata wins when present
    assert parse_delivery(body).dialled == "+15550109999"
    assert parse_delivery(call_event("c", "STARTING", 1, dialled=None)).dialled is None


def test_assumes_web_call_offer_carries_call_id_and_sdp() -> None:
    offer = parse_delivery(web_call_offer("conv-1", "wc-1", "v=0\r\n"))
    assert isinstance(offer, WebCallOffer)
    assert (offer.call_id, offer.sdp) == ("wc-1", "v=0\r\n")
    wrapped = parse_delivery({"data": web_call_offer("conv-1", "wc-1", "v=0\r\n")})
    assert wrapped == offer


def test_assumes_web_call_offer_names_its_conversation_space_id() -> None:
    assert parse_delivery(web_call_offer("conv-9", "wc-1", "v=0\r\n")).conversation_id == "conv-9"
    body = web_call_offer("conv-9", "wc-1", "v=0\r\n")
    del body["content"]["conversationSpaceId"]
    with pytest.raises(GotoPayloadError, match="conversationSpaceId"):
        parse_delivery(body)


@pytest.mark.parametrize("body, where", [
    ([], "JSON object"),
    ({"content": "x"}, "no content"),
    ({"content": {"metadata": {}}}, "metadata and state"),
    ({"content": {"metadata": {"conversationSpaceId": "c"}, "state": {"type": "RINGING", "sequenceNumber": 1}}},
     "state.type"),
    ({"content": {"metadata": {"conversationSpaceId": "bad id\n"}, "state": {"type": "ACTIVE",
                                                                             "sequenceNumber": 1}}},
     "conversationSpaceId"),
    ({"content": {"metadata": {"conversationSpaceId": "c", "direction": "SIDEWAYS"},
                  "state": {"type": "ACTIVE", "sequenceNumber": 1}}}, "direction"),
    ({"content": {"metadata": {"conversationSpaceId": "c"},
                  "state": {"type": "ACTIVE", "sequenceNumber": 1, "participants": [{"status": {}}]}}},
     "type.value"),
    ({"content": {"callId": "wc", "conversationSpaceId": "c", "sdp": ""}}, "sdp"),
    ({"content": {"callId": "wc", "conversationSpaceId": "c", "sdp": "v=0\r\n" + "a" * 70_000}}, "longer"),
])
def test_malformed_payloads_name_the_problem(body, where: str) -> None:
    with pytest.raises(GotoPayloadError) as exc:
        parse_delivery(body)
    assert where in exc.value.message
