"""The Twilio bridge against a live runtime (SQLite): signatures, routing rejections, stream tokens,
bad input isolated to its call, status callbacks, REST transfer/hang-up."""

from __future__ import annotations

import asyncio
import re

import pytest
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from runtime.store.tables import ALL_TENANTS
from runtime.telephony.twilio.bridge import bridge, twilio_signature, url_variants
from runtime.telephony.twilio.caller import new_sid, parse_twiml
from tests.twilio.support import ACCOUNT_SID, AUTH_TOKEN, NUMBER, start_world, stop_world


@pytest.fixture
def backend() -> str:
    return "sqlite"


# Signatures


@pytest.mark.parametrize("url", [
    "https://voice.example.com/webhooks/twilio/voice",
    "https://voice.example.com:443/webhooks/twilio/voice?x=1&y=%20z",
    "http://127.0.0.1:8080/webhooks/twilio/voice",
    "https://proxy.example.com:8443/base/webhooks/twilio/status",
])
def test_signature_matches_the_official_validator(url: str) -> None:
    params = {"CallSid": "CA123", "AccountSid": ACCOUNT_SID, "From": "+15550001111", "To": NUMBER,
              "CallerName": "Zoë Ünïcode", "Digits": "", "A": "1"}
    ours = twilio_signature(AUTH_TOKEN, url, params.items())
    validator = RequestValidator(AUTH_TOKEN)
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)
    for variant in url_variants(url):  # with and without the default port, as the validator accepts
        assert validator.validate(variant, params, ours)


def test_signature_with_repeated_keys_matches_the_validator() -> None:
    from multidict import MultiDict

    params = MultiDict([("b", "2"), ("a", "z"), ("a", "y"), ("a", "y")])
    url = "https://h.example.com/webhooks/twilio/voice"
    assert twilio_signature(AUTH_TOKEN, url, params.items()) == RequestValidator(AUTH_TOKEN).compute_signature(
        url, params)


async def test_unsigned_forged_and_wrong_token_webhooks_get_403_and_store_nothing(world) -> None:
    caller = world.caller()
    params = caller.voice_params(NUMBER, "+15550001111", new_sid("CA"))
    cases = [
        await caller.post_signed("/webhooks/twilio/voice", params, sign=False),
        await caller.post_signed("/webhooks/twilio/voice", params, signature="Zm9yZ2VkIHNpZ25hdHVyZQ=="),
        await world.caller(token="not-the-token").post_signed("/webhooks/twilio/voice", params),
        await caller.post_signed("/webhooks/twilio/voice", {**params, "From": "+15559999999"},
                                 signature=caller.sign("/webhooks/twilio/voice", params.items())),
        await caller.post_signed("/webhooks/twilio/status", {**params, "CallStatus": "completed"}, sign=False),
    ]
    for status, text in cases:
        assert status == 403, text
        assert '"error":"forbidden"' in text
    assert await world.calls() == []
    _, metrics, _ = await world.api.call("GET", "/metrics")
    assert 'voicectl_twilio_webhooks_refused_total{reason="bad_signature"} 5.0' in metrics


async def test_signature_behind_a_public_url(settings) -> None:
    world = await start_world(settings, server={"public_url": "https://voice.example.com"})
    try:
        # Signed over the request's own URL: refused, the runtime is behind https://voice.example.com.
        _, answer = await world.caller().dial(NUMBER)
        assert answer.status == 403
        call_sid, answer = await world.caller(public_url="https://voice.example.com").dial(NUMBER)
        assert answer.status == 200 and answer.stream_url == "wss://voice.example.com/media/twilio"
        # The validator's port variant is accepted too.
        caller = world.caller(public_url="https://voice.example.com:443")
        _, answer = await caller.dial(NUMBER)
        assert answer.status == 200
    finally:
        await stop_world(world)


# Routing rejections


async def test_unknown_number_with_a_known_account_is_rejected_cleanly(world) -> None:
    call_sid, answer = await world.caller().dial("+15550100404")
    assert answer.status == 200 and answer.verbs == ["Say", "Hangup"], answer.text
    assert "not in service" in answer.text
    row = await world.call_by_sid(call_sid)
    assert row["status"] == "failed" and row["end_reason"] == "unknown_number"
    assert "voice.call.failed" in await world.events(row["id"])


async def test_unknown_number_and_unknown_account_get_403_and_a_metric(world) -> None:
    caller = world.caller(account_sid="AC" + "9" * 32)
    _, answer = await caller.dial("+15550100404")
    assert answer.status == 403
    assert await world.calls() == []
    _, metrics, _ = await world.api.call("GET", "/metrics")
    assert 'voicectl_twilio_webhooks_refused_total{reason="unknown_tenant"} 1.0' in metrics


async def _rejected(world, reason: str, verbs: list[str]) -> None:
    call_sid, answer = await world.caller().dial(NUMBER)
    assert answer.status == 200 and answer.verbs == verbs, answer.text
    row = await world.call_by_sid(call_sid)
    assert row is not None and row["status"] == "failed" and row["end_reason"] == reason
    assert (await world.events(row["id"]))[-1] == "voice.call.failed"


async def test_disabled_tenant_is_rejected(world) -> None:
    await world.api.control.store.tenants.update(world.tenant_id, {"status": "disabled"}, tenant_id=ALL_TENANTS)
    await _rejected(world, "tenant_disabled", ["Say", "Hangup"])


async def test_agent_without_an_active_version_is_rejected(world) -> None:
    await world.api.control.store.agents.update(world.agent_id, {"active_version": None},
                                                tenant_id=world.tenant_id)
    await _rejected(world, "no_active_version", ["Say", "Hangup"])


async def test_tenant_call_limit_rejects_the_next_call(settings) -> None:
    world = await start_world(settings, tenant_limit=1)
    try:
        _, first = await world.caller().dial(NUMBER)
        assert not first.rejected
        await _rejected(world, "tenant_call_limit", ["Say", "Hangup"])
    finally:
        await stop_world(world)


async def test_box_limit_answers_busy(settings) -> None:
    world = await start_world(settings, max_calls=1)
    try:
        _, first = await world.caller().dial(NUMBER)
        assert not first.rejected
        await _rejected(world, "busy", ["Reject"])
        assert 'reason="busy"' in (await world.caller().dial(NUMBER))[1].text
    finally:
        await stop_world(world)


async def test_after_hours_transfer_answers_dial(world) -> None:
    status, body, _ = await world.api.call(
        "PATCH", f"/api/v1/agents/{world.agent_id}", world.key,
        json={"hours": {"schedule": {}}, "after_hours": {"mode": "transfer"}})
    assert status == 200, body
    status, body, _ = await world.api.call("POST", f"/api/v1/agents/{world.agent_id}/promote", world.api.admin_key,
                                           tenant_id=world.tenant_id,
                                           json={"version": 2})
    assert status == 200, body
    call_sid, answer = await world.caller().dial(NUMBER)
    assert answer.text == _official_dial("+15550109000"), answer.text
    row = await world.call_by_sid(call_sid)
    assert row["status"] == "ended" and row["end_reason"] == "after_hours_transfer"
    assert "transfer.requested" in await world.events(row["id"])
    assert row["escalated_to"] == "+15550109000"  # the call's record: where it went, and so its outcome
    for _ in range(100):
        row = await world.call_by_sid(call_sid)
        if row["outcome"] is not None:
            break
        await asyncio.sleep(0.02)
    assert row["outcome"] == "transferred" and row["summary"]["outcome"] == "transferred"


def _official_dial(target: str) -> str:
    """<Dial> as Twilio's library renders it (twilio.com/docs/voice/twiml/dial, .../twiml/sip)."""
    response = VoiceResponse()
    if target.startswith("sip:"):
        response.dial().sip(target)
    else:
        response.dial(target)
    return str(response)


@pytest.mark.parametrize("target", ["+15550109000", "sip:frontdesk@pbx.example.com;transport=tls",
                                    "sip:queue@example.com?x-tenant=a&b=1"])
def test_dial_renders_as_the_official_library(target: str) -> None:
    from runtime.telephony.twilio import twiml

    assert twiml.document(twiml.dial(target)) == _official_dial(target)


async def test_a_sip_transfer_dials_a_sip_noun(world) -> None:
    """A sip: target (the schema allows it) is <Dial><Sip>, never a bare URI as <Dial>'s text."""
    from runtime.api.appkeys import TRACKER

    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.first_media.wait()
    session = world.api.app[TRACKER].get(bridge(world.api.app).by_sid[call_sid])
    await session.transfer("sip:frontdesk@pbx.example.com", reason="caller asked")
    assert world.rest.requests[-1]["form"] == {"Twiml": _official_dial("sip:frontdesk@pbx.example.com")}
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()


# Stream tokens


async def test_unknown_reused_and_expired_stream_tokens_are_refused(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer, parameters={"token": "made-up"})
    await leg.wait_closed()
    assert leg.result.close_code == 4401
    good = await caller.open_stream(call_sid, answer)
    await good.first_media.wait()
    reused = await caller.open_stream(call_sid, answer)
    await reused.wait_closed()
    assert reused.result.close_code == 4403
    assert not good.closed.is_set()  # the real stream carries on
    await good.stop(ACCOUNT_SID, call_sid)
    await good.wait_closed()
    call_sid, answer = await caller.dial(NUMBER)
    tokens = bridge(world.api.app).tokens
    real_clock = tokens._clock
    tokens._clock = lambda: real_clock() + tokens.ttl_s + 1
    try:
        expired = await caller.open_stream(call_sid, answer)
        await expired.wait_closed()
    finally:
        tokens._clock = real_clock
    assert expired.result.close_code == 4401


async def test_plain_get_of_the_media_socket_is_a_json_426(world) -> None:
    status, body, _ = await world.api.call("GET", "/media/twilio")
    assert status == 426 and body["error"] == "upgrade_required"


# Bad input: only that call ends


async def test_an_unknown_event_is_logged_once_and_ignored(world, caplog) -> None:
    """Twilio may add events: an unknown one neither closes the socket nor fails the call."""
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    with caplog.at_level("INFO", logger="voicectl.twilio"):
        for _ in range(3):
            await leg.send_raw('{"event":"dance","dance":{"style":"tango"}}')
        await leg.stream([b"\x7f" * 160] * 10)
        await leg.stop(ACCOUNT_SID, call_sid)
        await leg.wait_closed()
    row = await world.final_call(call_sid)
    assert row["status"] == "ended" and row["summary"]["media"]["inbound_frames"] == 10
    assert [r.event for r in caplog.records if "unknown event" in r.getMessage()] == ["dance"]


BAD_INPUT = {
    "malformed_json": ('{"event": "media", ', 4400, "bad_media_message"),
    "malformed_base64": ('{"event":"media","media":{"payload":"@@not base64@@"}}', 4400, "bad_media_message"),
    "oversized_payload": ('{"event":"media","media":{"payload":"' + "A" * 12000 + '"}}', 4413,
                          "oversized_media_message"),
    "oversized_frame": ('{"event":"mark","mark":{"name":"' + "x" * 70000 + '"}}', 4413,
                        "oversized_media_message"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT) + ["wrong_format"])
async def test_bad_input_ends_only_that_call(world, case: str) -> None:
    caller = world.caller()
    sid_ok, answer_ok = await caller.dial(NUMBER)
    ok = await caller.open_stream(sid_ok, answer_ok)
    sid_bad, answer_bad = await caller.dial(NUMBER)
    if case == "wrong_format":
        bad = await caller.open_stream(sid_bad, answer_bad,
                                       media_format={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
        code, reason = 4415, "unsupported_media_format"
    else:
        bad = await caller.open_stream(sid_bad, answer_bad)
        text, code, reason = BAD_INPUT[case]
        await bad.media(b"\xff" * 160)
        await bad.send_raw(text)
    streaming = asyncio.create_task(ok.stream([b"\x7f" * 160] * 25))
    await bad.wait_closed()
    assert bad.result.close_code == code
    row = await world.final_call(sid_bad)
    assert row["status"] == "failed" and row["end_reason"] == reason
    await streaming
    assert not ok.closed.is_set()
    await ok.stop(ACCOUNT_SID, sid_ok)
    await ok.wait_closed()
    row = await world.final_call(sid_ok)
    assert row["status"] == "ended" and row["summary"]["media"]["inbound_frames"] == 25


# Status callbacks


async def test_status_callbacks_are_idempotent(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.first_media.wait()
    assert await caller.status(call_sid, "in-progress", NUMBER) == 204
    assert await caller.status(call_sid, "completed", NUMBER) == 204
    assert await caller.status(call_sid, "completed", NUMBER) == 204
    await leg.wait_closed()
    assert leg.result.close_code == 1000
    row = await world.call_by_sid(call_sid)
    assert row["status"] == "ended" and row["end_reason"] == "completed" and row["hangup_by"] == "caller"
    assert (await world.events(row["id"])).count("voice.call.completed") == 1
    assert await caller.status("CA" + "0" * 32, "completed", NUMBER) == 204  # unknown CallSid: nothing
    # A call that never connected: no-answer fails it.
    call_sid, _ = await caller.dial(NUMBER)
    assert await caller.status(call_sid, "no-answer", NUMBER) == 204
    row = await world.call_by_sid(call_sid)
    assert row["status"] == "failed" and row["end_reason"] == "no_answer"


# Transfer and hang-up through Twilio's REST API (a local peer)


async def test_transfer_and_hangup_use_the_rest_api(world) -> None:
    caller = world.caller()
    tracker_calls = world.api.app
    from runtime.api.appkeys import TRACKER

    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.first_media.wait()
    session = tracker_calls[TRACKER].get(bridge(world.api.app).by_sid[call_sid])
    await session.transfer("+15550109000", reason="caller asked")
    (request,) = world.rest.requests
    assert request["authorized"] and request["account"] == ACCOUNT_SID and request["call"] == call_sid
    assert request["form"] == {"Twiml": _official_dial("+15550109000")}
    await leg.stop(ACCOUNT_SID, call_sid)  # Twilio stops the stream when the new TwiML runs
    await leg.wait_closed()
    row = await world.final_call(call_sid)
    assert row["status"] == "ended" and row["end_reason"] == "transferred"

    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.first_media.wait()
    session = tracker_calls[TRACKER].get(bridge(world.api.app).by_sid[call_sid])
    await session.hangup("agent_done")
    assert world.rest.requests[-1]["form"] == {"Status": "completed"} and world.rest.requests[-1]["authorized"]
    await leg.wait_closed()
    assert leg.result.close_code == 1000
    row = await world.call_by_sid(call_sid)
    assert row["status"] == "ended" and row["hangup_by"] == "agent" and row["end_reason"] == "agent_done"


async def test_the_placeholder_credential_hangs_up_and_transfers_on_the_media_side(world) -> None:
    # The demo's stand-in account: api.twilio.com would answer 401 (or be unreachable), so the bridge
    # never asks it; the call still ends, or ends transferred, and its events say how.
    from runtime.api.appkeys import TRACKER
    from runtime.control.schemas import CredentialSet
    from runtime.telephony.twilio.rest import PLACEHOLDER_ACCOUNT_SID

    await world.api.control.credentials.set(world.tenant_id, "twilio", CredentialSet(
        fields={"account_sid": PLACEHOLDER_ACCOUNT_SID}, secret=AUTH_TOKEN))
    caller = world.caller(account_sid=PLACEHOLDER_ACCOUNT_SID)
    for action in ("transfer", "hangup"):
        call_sid, answer = await caller.dial(NUMBER)
        leg = await caller.open_stream(call_sid, answer)
        await leg.first_media.wait()
        session = world.api.app[TRACKER].get(bridge(world.api.app).by_sid[call_sid])
        if action == "transfer":
            await session.transfer("+15550109000", reason="caller asked")
        else:
            await session.hangup("agent_done")
        await asyncio.wait_for(leg.wait_closed(), 5)  # the runtime closed the stream itself
        row = await world.final_call(call_sid)
        assert row["status"] == "ended" and row["end_reason"] == ("transferred" if action == "transfer"
                                                                   else "agent_done"), row
        events, _ = await world.api.control.store.call_events.list(
            tenant_id=world.tenant_id, equals={"call_id": row["id"]}, limit=200)
        skipped = [e["payload"] for e in events if e["topic"] == "call.carrier_skipped"]
        assert skipped == [{"action": action, "reason": "placeholder_credential"}], events
    assert world.rest.requests == []  # nothing reached the Twilio API's stand-in


async def test_rest_errors_surface_with_the_status(world) -> None:
    from runtime.telephony.twilio.rest import TwilioApiError, TwilioRest

    world.rest.fail_with = 404
    rest = TwilioRest(world.rest.url, ACCOUNT_SID, AUTH_TOKEN)
    with pytest.raises(TwilioApiError) as caught:
        await rest.hangup("CA" + "1" * 32)
    assert caught.value.status == 404
    with pytest.raises(TwilioApiError) as caught:
        await TwilioRest(world.rest.url, ACCOUNT_SID, "wrong").hangup("CA" + "1" * 32)
    assert caught.value.status == 401


def test_parse_twiml_reads_the_stream() -> None:
    answer = parse_twiml(200, '<Response><Connect><Stream url="wss://h/media/twilio">'
                              '<Parameter name="token" value="t1"/></Stream></Connect></Response>')
    assert answer.stream_url == "wss://h/media/twilio" and answer.parameters == {"token": "t1"}
    assert re.match(r"CA[0-9a-f]{32}$", new_sid("CA"))


async def test_a_stream_that_never_starts_fails_the_call_and_a_started_one_does_not(world, monkeypatch) -> None:
    import runtime.telephony.twilio.bridge as twilio_mod

    monkeypatch.setattr(twilio_mod, "STREAM_START_GRACE_S", 0.0)
    tokens = bridge(world.api.app).tokens
    monkeypatch.setattr(tokens, "ttl_s", 0.3)
    caller = world.caller()
    silent_sid, _ = await caller.dial(NUMBER)
    streamed_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(streamed_sid, answer)
    await leg.first_media.wait()
    for _ in range(100):
        row = await world.call_by_sid(silent_sid)
        if row["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert row["status"] == "failed" and row["end_reason"] == "stream_not_started"
    assert (await world.call_by_sid(streamed_sid))["status"] == "connected"
    await leg.stop(ACCOUNT_SID, streamed_sid)
    await leg.wait_closed()
