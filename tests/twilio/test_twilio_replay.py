"""A signed voice webhook replayed: a CallSid already seen never opens a second call (while it
rings, the same TwiML again; after it, ``<Reject>``), across the in-memory forget and a restart."""

from __future__ import annotations

import asyncio

import pytest
from twilio.twiml.voice_response import VoiceResponse

from peers.loopback import serve_loopback
from runtime.api.app import create_app
from runtime.api.appkeys import SETTINGS
from runtime.telephony.twilio.caller import TwilioCaller
from tests.twilio.support import ACCOUNT_SID, AUTH_TOKEN, NUMBER


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _official_reject() -> str:
    response = VoiceResponse()
    response.reject()
    return str(response)


async def _finished_call(world) -> str:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.first_media.wait()
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()
    await world.final_call(call_sid)
    return call_sid


async def test_a_replay_after_the_call_ended_is_rejected_and_opens_no_call(world) -> None:
    call_sid = await _finished_call(world)
    _, again = await world.caller().dial(NUMBER, call_sid=call_sid)
    assert again.status == 200 and again.text == _official_reject(), again.text
    assert again.stream_url is None and "token" not in again.text
    assert len(await world.calls()) == 1


async def test_a_replay_after_a_restart_is_rejected(world) -> None:
    call_sid = await _finished_call(world)
    # A second runtime on the same database: nothing of the first call in its memory.
    app = create_app(world.api.app[SETTINGS], world.api.control)
    runner, port = await serve_loopback(app)
    try:
        caller = TwilioCaller(f"http://127.0.0.1:{port}", ACCOUNT_SID, AUTH_TOKEN, http=world.api.http)
        _, again = await caller.dial(NUMBER, call_sid=call_sid)
        assert again.status == 200 and again.text == _official_reject(), again.text
    finally:
        await runner.cleanup()
    assert len(await world.calls()) == 1


async def test_a_replay_of_a_rejected_call_is_rejected(world) -> None:
    call_sid, first = await world.caller().dial("+15550100404")  # unknown number: a failed row
    assert first.verbs == ["Say", "Hangup"]
    _, again = await world.caller().dial("+15550100404", call_sid=call_sid)
    assert again.text == _official_reject(), again.text
    assert len(await world.calls()) == 1


async def test_a_replay_while_ringing_gets_the_same_twiml_and_no_second_call(world) -> None:
    caller = world.caller()
    call_sid, first = await caller.dial(NUMBER)
    _, again = await caller.dial(NUMBER, call_sid=call_sid)
    assert again.status == 200 and again.text == first.text
    rows = await world.calls()
    assert len(rows) == 1 and rows[0]["status"] == "ringing"
    # Concurrent replays too: still one call.
    answers = await asyncio.gather(*(caller.dial(NUMBER, call_sid=call_sid) for _ in range(5)))
    assert {a.text for _, a in answers} == {first.text}
    assert len(await world.calls()) == 1
    leg = await caller.open_stream(call_sid, first)
    await leg.first_media.wait()
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()


async def test_concurrent_first_webhooks_open_one_call(world) -> None:
    caller = world.caller()
    call_sid = "CA" + "5" * 32
    answers = await asyncio.gather(*(caller.dial(NUMBER, call_sid=call_sid) for _ in range(6)))
    assert len({a.text for _, a in answers}) == 1 and answers[0][1].stream_url
    assert len(await world.calls()) == 1


async def test_another_tenant_replaying_a_live_call_sid_gets_no_stream(world) -> None:
    other_tenant, other_key = await world.api.tenant_with_key("other-tenant")
    other_number, other_account, other_token = "+15550107001", "AC" + "2" * 32, "other-auth-token"
    await world.api.front_desk(other_tenant, other_key, other_number, "twilio", {"account_sid": other_account},
                               other_token)
    call_sid, first = await world.caller().dial(NUMBER)
    assert first.stream_url
    other = world.caller(token=other_token, account_sid=other_account)
    _, stolen = await other.dial(other_number, call_sid=call_sid)
    assert stolen.text == _official_reject(), stolen.text
    assert len(await world.calls()) == 1
    rows, _ = await world.api.control.store.voice_calls.list(tenant_id=other_tenant)
    assert rows == []
