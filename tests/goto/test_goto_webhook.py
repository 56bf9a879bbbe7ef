"""The GoTo webhook against a live runtime (SQLite) and a local GoTo peer: token verification and
URL validation, call events opening/ending calls, de-duplication, and bad input isolated to its call."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from runtime.store.tables import ALL_TENANTS
from runtime.telephony.goto.bridge import bridge
from tests.goto.support import (
    CALLER,
    EXTENSION,
    NUMBER,
    add_goto_tenant,
    call_event,
    register,
    stop_world,
    web_call_offer,
)

REFUSED = "voicectl_goto_webhooks_refused_total"


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def _all_db_text(world) -> str:
    chunks = []
    for table in ("goto_channels", "credentials", "voice_calls", "call_events"):
        for row in await world.api.control.store.db.fetchall(f"SELECT * FROM {table}"):
            chunks.extend(str(v) for v in row.values())
    return "\n".join(chunks)


# Registration and verification


async def test_registration_validates_the_url_and_stores_only_the_token_hash(world) -> None:
    assert world.peer.validations == [200]
    token = world.webhook_path.rsplit("/", 1)[1]
    assert world.webhook_path == f"/webhooks/goto/{token}" and len(token) >= 43
    rows, _ = await world.api.control.store.goto_channels.list(tenant_id=world.tenant_id)
    assert len(rows) == 1 and rows[0]["status"] == "active" and rows[0]["channel_id"].startswith("Webhook.")
    assert rows[0]["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in await _all_db_text(world)
    status, _ = await world.deliver(None, method="OPTIONS")
    assert status == 200


async def test_unknown_tokens_get_404_and_a_metric_and_store_nothing(world) -> None:
    good = world.webhook_path.rsplit("/", 1)[1]
    forged = good[:-1] + ("A" if good[-1] != "A" else "B")
    cases = [("POST", f"/webhooks/goto/{forged}"), ("POST", "/webhooks/goto/short"),
             ("OPTIONS", f"/webhooks/goto/{forged}"), ("POST", "/webhooks/goto/" + "x" * 300)]
    for method, path in cases:
        status, body = await world.deliver(call_event("conv-forged", "STARTING", 1), path=path, method=method)
        assert status == 404, body
        assert body == {"error": "not_found", "message": "unknown GoTo webhook", "details": {}}
    assert await world.calls() == []
    assert f'{REFUSED}{{reason="unknown_token"}} 4.0' in await world.metrics()


async def test_every_delivery_with_a_valid_token_is_taken_with_2xx(world) -> None:
    """GoTo marks a webhook channel unreachable after a 404 or 410: malformed bodies, other
    sources and unknown shapes are answered 200 "ignored" (and counted), never 4xx."""
    status, body = await world.deliver(None, raw=b'{"content": ')
    assert status == 200 and body["status"] == "ignored" and body["reason"] == "malformed_json"
    assert "not valid JSON" in body["message"]
    status, body = await world.deliver({"data": {"source": "call-events", "content": {"metadata": {}, "state": {}}}})
    assert status == 200 and body["reason"] == "bad_payload"
    assert body["details"] == {"field": "content.metadata.conversationSpaceId"}
    status, body = await world.deliver(call_event("conv-1", "STARTING", "one"))
    assert status == 200 and body["details"]["field"] == "content.state.sequenceNumber"
    for other, reason in ((
            {"data": {"source": "WebRTC", "type": "session-terminated", "content": {}}}, "webrtc_session_terminated"),
            ({"data": {"type": "WEBSOCKET_REFRESH_REQUIRED"}}, "no_content_websocket_refresh_required"),
            ({"data": {"source": "recording", "content": {"id": "r1"}}}, "not_a_call_event_recording")):
        status, body = await world.deliver(other)
        assert status == 200 and body == {"status": "ignored", "reason": reason}, body
    assert await world.calls() == []
    metrics = await world.metrics()
    assert f'{REFUSED}{{reason="malformed_json"}} 1.0' in metrics
    assert f'{REFUSED}{{reason="bad_payload"}} 2.0' in metrics


# Call events


async def test_starting_opens_a_routed_call_and_ending_ends_it_once(world) -> None:
    status, body = await world.deliver(call_event("conv-1", "STARTING", 1, bare=True))  # the content alone
    assert status == 200 and body["status"] == "opened", body
    call_id = body["call_id"]
    row = await world.call(call_id)
    assert (row["status"], row["provider"], row["provider_call_id"]) == ("ringing", "goto", "conv-1")
    assert (row["to_number"], row["from_number"], row["agent_id"]) == (NUMBER, CALLER, world.agent_id)

    # The same delivery again (same sequence number): nothing new.
    status, body = await world.deliver(call_event("conv-1", "STARTING", 1))
    assert status == 200 and body == {"status": "duplicate", "conversation_id": "conv-1", "call_id": call_id,
                                      "sequence": 1}
    assert len(await world.calls()) == 1

    # ACTIVE before our web call answered: acknowledged, the call still rings.
    status, body = await world.deliver(call_event("conv-1", "ACTIVE", 2, caller_status="ACTIVE"))
    assert status == 200 and body["status"] == "updated" and body["state"] == "ringing"
    assert body["answered"] is False and body["caller_status"] == "ACTIVE"

    status, body = await world.deliver(call_event("conv-1", "ENDING", 3))
    assert status == 200 and body["status"] == "ended"
    row = await world.call(call_id)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "completed", "caller")
    assert await world.events(call_id) == ["voice.call.started", "call.state_changed", "voice.call.completed"]

    status, body = await world.deliver(call_event("conv-1", "ENDING", 3))
    assert status == 200 and body["status"] == "duplicate"
    status, body = await world.deliver(call_event("conv-1", "ENDING", 4))
    assert status == 200 and body == {"status": "ignored", "conversation_id": "conv-1", "call_id": call_id,
                                      "reason": "call_finished"}
    assert 'voicectl_goto_duplicate_deliveries_total 2.0' in await world.metrics()


async def test_concurrent_redeliveries_open_one_call(world) -> None:
    results = await asyncio.gather(*(world.deliver(call_event("conv-2", "STARTING", 1)) for _ in range(5)))
    assert sorted(body["status"] for _, body in results) == ["duplicate"] * 4 + ["opened"]
    assert len(await world.calls()) == 1


async def test_a_starting_redelivered_after_a_restart_does_not_reopen(world) -> None:
    status, body = await world.deliver(call_event("conv-3", "STARTING", 1))
    call_id = body["call_id"]
    await world.deliver(call_event("conv-3", "ENDING", 2))
    br = bridge(world.api.app)
    br.recent.clear()  # this process forgot it, as a restarted one would
    status, body = await world.deliver(call_event("conv-3", "STARTING", 1))
    assert status == 200 and body["status"] == "ignored" and body["call_id"] == call_id
    status, body = await world.deliver(call_event("conv-3", "ENDING", 9))
    assert status == 200 and body["reason"] == "call_finished"
    assert len(await world.calls()) == 1


async def test_events_for_unknown_conversations_are_ignored_with_2xx(world) -> None:
    for state in ("ACTIVE", "ENDING"):
        status, body = await world.deliver(call_event("conv-nope", state, 5))
        assert status == 200 and body == {"status": "ignored", "reason": "unknown_conversation",
                                          "conversation_id": "conv-nope", "state": state}
    assert await world.calls() == []


async def test_outbound_and_unknown_directions_are_not_ours(world) -> None:
    status, body = await world.deliver(call_event("conv-out", "STARTING", 1, direction="OUTBOUND"))
    assert status == 200 and body["status"] == "ignored" and body["reason"] == "outbound"
    status, body = await world.deliver(call_event("conv-odd", "STARTING", 1, direction="INTERNAL_TRANSFER"))
    assert status == 200 and body["status"] == "ignored" and body["reason"] == "unknown_direction"
    assert await world.calls() == []


async def test_other_lines_of_the_account_are_ignored_without_a_call_row(world) -> None:
    status, body = await world.deliver(call_event("conv-4", "STARTING", 1, company="+15550100404", extension="1001"))
    assert status == 200 and body["status"] == "ignored" and body["reason"] == "not_our_line", body
    status, body = await world.deliver(call_event("conv-4b", "STARTING", 1, company=None, extension=None))
    assert status == 200 and body["reason"] == "not_our_line"  # nothing says it is ours
    assert await world.calls() == []


async def test_the_call_is_routed_by_company_number_or_by_the_device_extension(world) -> None:
    status, body = await world.deliver(call_event("conv-n", "STARTING", 1, extension="1001"))
    assert status == 200 and body["status"] == "opened"  # our company number, whichever line rang
    status, body = await world.deliver(call_event("conv-e", "STARTING", 1, company="+15550100404",
                                                  extension=EXTENSION))
    assert status == 200 and body["status"] == "opened"  # another number, routed to our extension
    row = await world.call(body["call_id"])
    assert (row["to_number"], row["from_number"]) == (NUMBER, CALLER)


async def test_another_account_on_the_channel_is_ignored(world) -> None:
    status, body = await world.deliver(call_event("conv-acct", "STARTING", 1, account_key="999"))
    assert status == 200 and body == {"status": "ignored", "reason": "other_account", "conversation_id": "conv-acct"}
    assert await world.calls() == []


async def test_another_tenants_number_is_unknown_to_this_channel(world) -> None:
    other_id, _, _ = await add_goto_tenant(world.api, world.peer, "other-tenant", "+15550108111", extension="7002")
    status, body = await world.deliver(call_event("conv-5", "STARTING", 1, company="+15550108111", extension="7002"))
    assert status == 200 and body["reason"] == "not_our_line"
    rows, _ = await world.api.control.store.voice_calls.list(tenant_id=other_id)
    assert rows == []
    # The other tenant's own channel routes it; the same conversation id stays separate per tenant.
    other_path = await register(world.api, other_id, world.peer)
    status, body = await world.deliver(call_event("conv-5", "STARTING", 1, company="+15550108111", extension="7002"),
                                       path=other_path)
    assert status == 200 and body["status"] == "opened"
    row = await world.api.control.store.voice_calls.get(body["call_id"], tenant_id=ALL_TENANTS)
    assert row["tenant_id"] == other_id


async def test_a_rejected_call_keeps_a_failed_row(settings) -> None:
    from tests.goto.support import start_world as start

    world = await start(settings, limits={"max_calls": 1})
    try:
        _, first = await world.deliver(call_event("conv-6", "STARTING", 1))
        assert first["status"] == "opened"
        status, body = await world.deliver(call_event("conv-7", "STARTING", 1))
        assert status == 200 and body["status"] == "rejected" and body["reason"] == "busy"
        row = await world.call(body["call_id"])
        assert (row["status"], row["end_reason"]) == ("failed", "busy")
        assert (await world.events(row["id"]))[-1] == "voice.call.failed"
        assert (await world.call(first["call_id"]))["status"] == "ringing"
    finally:
        await stop_world(world)


async def test_a_call_never_answered_fails_after_the_ring_timeout(world) -> None:
    bridge(world.api.app).ring_timeout_s = 0.05
    _, body = await world.deliver(call_event("conv-8", "STARTING", 1))
    for _ in range(200):
        row = await world.call(body["call_id"])
        if row["status"] != "ringing":
            break
        await asyncio.sleep(0.01)
    assert (row["status"], row["end_reason"]) == ("failed", "not_answered")


# Web-call offers that cannot be answered


async def test_malformed_sdp_fails_that_call_only(world) -> None:
    _, other = await world.deliver(call_event("conv-keep", "STARTING", 1))
    _, body = await world.deliver(call_event("conv-9", "STARTING", 1))
    call_id = body["call_id"]
    status, body = await world.deliver(web_call_offer("wc-9", "v=0\r\ns=-\r\nthis is not sdp\r\n",
                                                      conversation_id="conv-9"))
    assert status == 200 and body == {"status": "failed", "reason": "no_audio", "call_id": call_id,
                                      "message": "the offer has no active audio section (m=audio)"}
    row = await world.call(call_id)
    assert (row["status"], row["end_reason"]) == ("failed", "no_audio")
    assert (await world.events(call_id))[-1] == "voice.call.failed"
    assert [r["path"] for r in world.peer.calls_to("/web-calls/v1/calls")] == ["/web-calls/v1/calls/wc-9/reject"]
    # A redelivery of that offer is a duplicate; another offer for the failed call is ignored.
    status, body = await world.deliver(web_call_offer("wc-9", "v=0\r\n", conversation_id="conv-9"))
    assert status == 200 and body["status"] == "duplicate"
    status, body = await world.deliver(web_call_offer("wc-10", "v=0\r\n", conversation_id="conv-9"))
    assert status == 200 and body["status"] == "ignored" and body["reason"] == "call_not_ringing"
    assert (await world.call(other["call_id"]))["status"] == "ringing"
    status, body = await world.deliver(call_event("conv-keep", "ENDING", 2))
    assert status == 200 and body["status"] == "ended"


async def test_unsupported_codecs_are_refused_by_name(world) -> None:
    _, body = await world.deliver(call_event("conv-10", "STARTING", 1))
    sdp = ("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nt=0 0\r\nm=audio 40000 UDP/TLS/RTP/SAVPF 18\r\n"
           "a=rtpmap:18 G729/8000\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n"
           "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\na=rtcp-mux\r\n")
    status, answer = await world.peer.ring(EXTENSION, sdp, call_id="wc-10")  # matched to the one ringing call
    assert status == 200 and "no supported audio codec offered (got g729" in answer["message"]
    assert answer["reason"] == "unsupported_codec" and answer["call_id"] == body["call_id"]
    assert (await world.call(body["call_id"]))["end_reason"] == "unsupported_codec"
    assert [r["path"] for r in world.peer.calls_to("/web-calls/v1/calls")] == ["/web-calls/v1/calls/wc-10/reject"]


async def test_an_offer_to_a_device_without_a_routed_number_is_rejected_at_goto(world) -> None:
    await world.api.control.store.db.execute("DELETE FROM phone_numbers")
    status, body = await world.peer.ring(EXTENSION, "v=0\r\n", call_id="wc-stray")
    assert status == 200 and body == {"status": "ignored", "reason": "not_routed", "web_call_id": "wc-stray"}
    assert [r["path"] for r in world.peer.calls_to("/web-calls/v1/calls")] == ["/web-calls/v1/calls/wc-stray/reject"]
    assert await world.calls() == []


async def test_an_internal_failure_is_a_json_500_that_never_logs_the_token(world, caplog) -> None:
    br = bridge(world.api.app)
    routes = br.routes(world.api.control.store)

    async def broken(key):
        raise RuntimeError("routing store exploded")

    routes.get = broken
    with caplog.at_level("DEBUG"):
        status, body = await world.deliver(call_event("conv-boom", "STARTING", 1))
    assert status == 500 and body["error"] == "internal_error"
    token = world.webhook_path.rsplit("/", 1)[1]
    assert "goto webhook failed" in caplog.text and token not in caplog.text
    del routes.get  # the redelivery is handled, not taken for a duplicate
    status, body = await world.deliver(call_event("conv-boom", "STARTING", 1))
    assert status == 200 and body["status"] == "opened"
