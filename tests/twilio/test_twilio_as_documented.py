"""The Twilio bridge as Twilio documents it: the <Stream> TwiML as Twilio's library renders it, a
stream that never connects, <Stream statusCallback> errors, and the goodbye heard before the
hang-up (a mark after each reply, its echo awaited). Sources: twilio.com/docs/voice/twiml/stream,
twilio.com/docs/voice/media-streams/websocket-messages ("mark", "clear")."""

from __future__ import annotations

import asyncio

import pytest
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from runtime.telephony.twilio.caller import CallerStream
from tests.twilio.support import ACCOUNT_SID, NUMBER

# Every stream here must carry Twilio's signature on its upgrade (the caller signs it as Twilio does).
WORLD_OVERRIDES = {"telephony": {"twilio": {"mark_timeout_s": 1.5, "require_stream_signature": True}}}


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _official_stream(url: str, token: str, status_callback: str) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = Stream(url=url, status_callback=status_callback, status_callback_method="POST")
    stream.parameter(name="token", value=token)
    connect.append(stream)
    response.append(connect)
    return str(response)


async def test_the_stream_twiml_is_the_librarys_with_a_status_callback(world) -> None:
    _, answer = await world.caller().dial(NUMBER)
    callback = world.api.base_url + "/webhooks/twilio/stream-status"
    assert answer.text == _official_stream(answer.stream_url, answer.parameters["token"], callback), answer.text


async def test_completed_while_still_ringing_is_a_stream_that_never_started(world) -> None:
    """<Connect> falls through when the WebSocket never connects, and Twilio completes the call."""
    caller = world.caller()
    call_sid, _ = await caller.dial(NUMBER)
    assert await caller.status(call_sid, "completed", NUMBER) == 204
    row = await world.final_call(call_sid)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("failed", "stream_not_started", None)
    assert (await world.events(row["id"]))[-1] == "voice.call.failed"


async def test_a_stream_error_fails_the_call_with_twilios_message(world) -> None:
    caller = world.caller()
    call_sid, _ = await caller.dial(NUMBER)
    assert await caller.stream_status(call_sid, "stream-started") == 204
    assert (await world.call_by_sid(call_sid))["status"] == "ringing"
    message = "31920 Stream - WebSocket - Handshake Error"
    assert await caller.stream_status(call_sid, "stream-error", message) == 204
    row = await world.final_call(call_sid)
    assert (row["status"], row["end_reason"]) == ("failed", "stream_error")
    failed = await world.api.control.store.call_events.list(tenant_id=world.tenant_id,
                                                           equals={"call_id": row["id"], "topic": "voice.call.failed"})
    assert message in str(failed[0][0]["payload"])
    # Unsigned (or signed with another token): refused like every Twilio webhook.
    assert await world.caller(token="not-the-token").stream_status(call_sid, "stream-error", "x") == 403


async def _agent_hangs_up_after_silence(world, playout_delay_s: float) -> tuple[CallerStream, dict]:
    status, body, _ = await world.api.call("PATCH", f"/api/v1/agents/{world.agent_id}", world.key,
                                           json={"turn": {"silence_reprompt_s": 1}})
    assert status == 200, body
    status, body, _ = await world.api.call("POST", f"/api/v1/agents/{world.agent_id}/promote", world.api.admin_key,
                                           tenant_id=world.tenant_id, json={"version": 2})
    assert status == 200, body
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer, playout_delay_s=playout_delay_s)
    streaming = asyncio.create_task(leg.stream([b"\xff" * 160] * 1000))  # line silence, real time
    try:
        await leg.wait_closed(20)  # greeting, re-prompt, goodbye, then the agent's hang-up
    finally:
        streaming.cancel()
    row = await world.final_call(call_sid)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "silence", "agent")
    return leg, row


async def test_the_hang_up_waits_until_twilio_has_played_the_goodbye(world) -> None:
    leg, _ = await _agent_hangs_up_after_silence(world, playout_delay_s=0.6)
    [hangup] = [r for r in world.rest.requests if r["form"] == {"Status": "completed"}]
    marks = leg.result.mark_echoes
    assert len(marks) >= 3, marks  # greeting, re-prompt, goodbye: one mark after each
    last_mark = max(marks.values())
    # Twilio played the goodbye (echoed its mark) before the REST hang-up was sent.
    assert hangup["at"] >= last_mark, (hangup["at"] - last_mark)
    assert hangup["at"] - leg.result.arrivals[-1] >= 0.5  # its last frame arrived, then played out


async def test_without_an_echo_the_hang_up_goes_ahead_after_the_mark_timeout(world) -> None:
    leg, _ = await _agent_hangs_up_after_silence(world, playout_delay_s=30.0)  # Twilio never gets there
    [hangup] = [r for r in world.rest.requests if r["form"] == {"Status": "completed"}]
    waited = hangup["at"] - leg.result.arrivals[-1]
    assert 1.4 <= waited < 5.0, waited  # mark_timeout_s (1.5 s), not forever
    assert ACCOUNT_SID == world.rest.account_sid


async def test_a_box_with_twilio_numbers_and_no_https_url_warns_at_startup(world, caplog) -> None:
    from runtime.telephony.twilio.bridge import warn_if_streams_would_be_refused

    with caplog.at_level("WARNING", logger="voicectl.twilio"):
        await warn_if_streams_would_be_refused(world.api.app)
    assert any("error 31922" in r.getMessage() for r in caplog.records), caplog.text
    _, answer = await world.caller().dial(NUMBER)
    assert answer.stream_url.startswith("ws://")  # what Twilio would refuse: hence the warning


@pytest.mark.parametrize("signature", [None, "forged"])
async def test_an_upgrade_without_twilios_signature_is_refused_when_required(world, signature) -> None:
    from runtime.telephony.twilio.caller import CallResult

    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    headers = {"X-Twilio-Signature": signature} if signature else {}
    ws = await world.api.http.ws_connect(caller.ws_url(answer.stream_url), headers=headers)
    leg = CallerStream(ws, CallResult(call_sid, answer))
    await leg.connected()
    await leg.start(answer.parameters, ACCOUNT_SID, call_sid)
    await leg.wait_closed()
    assert leg.result.close_code == 4403
    row = await world.final_call(call_sid)
    assert (row["status"], row["end_reason"]) == ("failed", "bad_stream_signature")
