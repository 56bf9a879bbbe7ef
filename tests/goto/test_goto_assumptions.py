"""What GoTo does not document publicly (runtime/telephony/goto/assumptions.py): one test per guess,
named test_assumes_*. If GoTo's real payloads differ, these tests and that module are what change."""

from __future__ import annotations

import aiohttp

from runtime.telephony.goto import assumptions
from runtime.telephony.goto.api import GotoAccount, GotoApi, OAuthClient, TokenCache
from runtime.telephony.goto.events import Ignored, parse_delivery, phone_number
from tests.goto.support import (
    ACCOUNT_KEY,
    CALLER,
    CLIENT_ID,
    CLIENT_SECRET,
    EXTENSION,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
    GotoPeer,
    call_event,
    web_call_offer,
)


def _api(peer: GotoPeer, http: aiohttp.ClientSession) -> GotoApi:
    account = GotoAccount("ten_x", ACCOUNT_KEY, ORGANIZATION_ID, EXTENSION, OAuthClient(CLIENT_ID, CLIENT_SECRET),
                          REFRESH_TOKEN, {})
    return GotoApi(peer.url, peer.token_url, account, http, TokenCache(), webrtc_base_url=peer.url)


def test_assumes_an_incoming_call_carries_call_id_sdp_and_optionally_caller_and_conversation() -> None:
    call = assumptions.incoming_call({"callId": "wc-1", "sdp": "v=0\r\n", "conversationSpaceId": "conv-1",
                                      "caller": {"name": "Pat", "number": "+1 555 000-1111"}}, phone_number)
    assert (call.call_id, call.sdp, call.conversation_id, call.caller, call.caller_name) == (
        "wc-1", "v=0\r\n", "conv-1", CALLER, "Pat")
    bare = assumptions.incoming_call({"callId": "wc-2", "sdp": "v=0\r\n"}, phone_number)
    assert (bare.conversation_id, bare.caller, bare.caller_name) == (None, None, None)


def test_assumes_webhook_deliveries_use_the_websocket_envelope_or_bare_content() -> None:
    wrapped = parse_delivery(call_event("conv-1", "ENDING", 7))
    bare = parse_delivery(call_event("conv-1", "ENDING", 7, bare=True))
    assert wrapped == bare and not isinstance(wrapped, Ignored)


def test_assumes_the_device_answer_names_its_id() -> None:
    assert assumptions.device_id({"id": "dev-1"}) == "dev-1"
    assert assumptions.device_id({"deviceId": "dev-2"}) == "dev-2"
    assert assumptions.device_id({"device": {"id": "x"}}) is None
    assert assumptions.device_id({"id": "bad id\n"}) is None


def test_assumes_client_information_names_the_application() -> None:
    assert assumptions.client_information("1.2.3") == {"appId": "voicectl", "appVersion": "1.2.3",
                                                       "platform": "server"}


async def test_assumes_ringing_has_no_body_and_hangup_is_delete_on_the_web_call(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = _api(peer, http)
        await api.ringing("wc-9")
        await api.hangup("wc-9")
    assert [(r["method"], r["path"], r["json"]) for r in peer.requests] == [
        ("POST", "/web-calls/v1/calls/wc-9/ringing", None), ("DELETE", "/web-calls/v1/calls/wc-9", None)]
    assert assumptions.RINGING_BODY is None and assumptions.HANGUP == ("DELETE", "/web-calls/v1/calls/{id}")


async def test_assumes_a_device_is_removed_with_delete(peer) -> None:
    peer.devices["dev-1"] = {"incoming": "c", "session": "c", "extensions": [EXTENSION]}
    async with aiohttp.ClientSession() as http:
        await _api(peer, http).delete_device("dev-1")
    assert [(r["method"], r["path"]) for r in peer.requests] == [("DELETE", "/web-calls/v1/devices/dev-1")]
    assert peer.devices == {} and assumptions.DEVICE_DELETE[0] == "DELETE"


def test_assumes_call_events_are_optional_for_a_webhook_channel() -> None:
    """Fallback when GoTo refuses call events on a Webhook channel: the device alone takes calls
    (tests/goto/test_goto_cli.py::test_refused_call_events_leave_the_number_working_through_the_device)."""
    assert assumptions.CALL_EVENTS_OPTIONAL is True
    offer = parse_delivery(web_call_offer("wc-1", "v=0\r\n"))
    assert offer.call.conversation_id is None  # nothing from call events is needed to take it
