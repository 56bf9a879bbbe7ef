"""Tokens and CallSids across instances: any instance accepts another's browser and stream tokens,
a stream token is spent once cluster-wide, Twilio media may reach another instance than the voice
webhook (that instance takes the call over), and a CallSid opens one call whichever instances its
webhooks reach."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

import runtime.telephony.twilio.bridge as twilio_bridge
from runtime.control import eval_pins
from runtime.ids import new_id, now_iso
from runtime.telephony.services import services
from runtime.telephony.stream_tokens import StreamTokenError
from runtime.telephony.twilio.bridge import bridge
from runtime.telephony.twilio.caller import TwilioCaller, new_sid, parse_twiml
from runtime.telephony.webrtc.models import SESSION_PATH
from tests.cluster.support import ClusterNames, start_instances, stop_instances

ACCOUNT_SID = "AC" + "2" * 32
AUTH_TOKEN = "twilio-cluster-auth-token"
NUMBER = "+15550107100"


@pytest_asyncio.fixture
async def pair(cluster_names: ClusterNames, tmp_path: Path):
    """Two instances, a tenant with a Twilio number set up through the first. Calls left ringing (dialled,
    no stream) are not waited for at the end."""
    started = await start_instances(cluster_names, tmp_path, 2, server={"shutdown_grace_s": 0.5})
    one = started[0][0]
    tenant_id, key = await one.tenant_with_key("cluster-twilio")
    await one.front_desk(tenant_id, key, NUMBER, "twilio", {"account_sid": ACCOUNT_SID}, AUTH_TOKEN)
    try:
        yield [live for live, _ in started], tenant_id, key
    finally:
        await stop_instances(started)


def _caller(live) -> TwilioCaller:
    return TwilioCaller(live.base_url, ACCOUNT_SID, AUTH_TOKEN, http=live.http)


async def _row(live, tenant_id: str, call_sid: str) -> dict | None:
    return await live.control.store.voice_calls.find(tenant_id=tenant_id, provider_call_id=call_sid)


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_browser_token_minted_by_one_instance_is_accepted_by_another(pair) -> None:
    (one, two), tenant_id, key = pair
    status, minted, _ = await one.call("POST", "/api/v1/webrtc/tokens", key, json={"number": NUMBER})
    assert status == 201, minted
    token = minted["token"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    # The offer body is not valid SDP: a caller the token lets in gets 400 for the body, not 401.
    refused, body, _ = await two.call("POST", SESSION_PATH, forged, json={"sdp": "v=0", "type": "offer"})
    assert refused == 401, body
    status, body, _ = await two.call("POST", SESSION_PATH, token, json={"sdp": "v=0", "type": "offer"})
    assert status not in (401, 403, 500), body
    assert status == 400, body


@pytest.mark.parametrize("told_by", ["nats_notice", "stream_deadline"])
async def test_a_stream_token_from_one_instance_takes_the_call_over_on_another_which_completes_it(
        pair, monkeypatch: pytest.MonkeyPatch, told_by: str) -> None:
    (one, two), tenant_id, _ = pair
    if told_by == "stream_deadline":
        # The notice is lost: instance 1's stream deadline passes during the call, and it must
        # forget the call there, not fail it.
        async def lost(app, call_id: str) -> None:
            return None

        monkeypatch.setattr(twilio_bridge, "_announce_take_over", lost)
        monkeypatch.setattr(twilio_bridge, "STREAM_START_GRACE_S", 0.0)
        monkeypatch.setattr(bridge(one.app).tokens, "ttl_s", 1.0)
    call_sid, answer = await _caller(one).dial(NUMBER)
    assert answer.stream_url and answer.parameters.get("token"), answer.text
    row = await _row(one, tenant_id, call_sid)
    assert row is not None and row["status"] == "ringing" and row["instance_id"] == "i1"
    assert services(one.app).tracker.get(row["id"]) is not None

    leg = await _caller(two).open_stream(call_sid, answer)  # Twilio's media socket reaches instance 2
    await asyncio.wait_for(leg.first_media.wait(), 10)
    taken = services(two.app).tracker.get(row["id"])
    assert taken is not None and taken.state == "connected"

    for live in (one, two):  # spent: refused a second time on either instance
        again = await _caller(live).open_stream(call_sid, answer)
        await again.wait_closed()
        assert again.result.close_code == 4403, live.base_url

    async def forgotten() -> bool:
        return services(one.app).tracker.get(row["id"]) is None
    await _until(forgotten, 0.5 if told_by == "nats_notice" else 5.0)
    taken_row = await _row(one, tenant_id, call_sid)
    assert taken_row["status"] == "connected"
    assert taken_row["instance_id"] == "i2"  # its media, and so its lease, is instance 2's now
    assert not leg.closed.is_set()

    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()

    async def ended() -> bool:
        return (await _row(two, tenant_id, call_sid))["status"] in ("ended", "failed")
    await _until(ended)
    final = await _row(two, tenant_id, call_sid)
    assert final["status"] == "ended" and final["end_reason"] == "caller_hangup", final
    rows, _ = await two.control.store.call_events.list(tenant_id=tenant_id, equals={"call_id": row["id"]},
                                                       limit=100)
    seqs = [r["seq"] for r in rows]
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), seqs  # one sequence across both instances
    topics = [r["topic"] for r in sorted(rows, key=lambda r: r["seq"])]
    assert topics[0] == "voice.call.started" and topics[-1] == "voice.call.completed", topics
    assert "voice.call.failed" not in topics


async def test_an_unknown_or_expired_stream_token_is_refused_with_4401_on_any_instance(pair) -> None:
    (one, two), tenant_id, _ = pair
    call_sid, answer = await _caller(one).dial(NUMBER)
    made_up = await _caller(two).open_stream(call_sid, answer, parameters={"token": "made-up"})
    await made_up.wait_closed()
    assert made_up.result.close_code == 4401
    tokens = bridge(two.app).tokens
    real_clock = tokens._clock
    tokens._clock = lambda: real_clock() + 3600
    try:
        expired = await _caller(two).open_stream(call_sid, answer)
        await expired.wait_closed()
    finally:
        tokens._clock = real_clock
    assert expired.result.close_code == 4401
    good = await _caller(two).open_stream(call_sid, answer)  # not spent by the refusals
    await asyncio.wait_for(good.first_media.wait(), 10)
    await good.stop(ACCOUNT_SID, call_sid)
    await good.wait_closed()


async def test_one_callsid_posted_to_both_instances_at_once_opens_one_call(pair) -> None:
    (one, two), tenant_id, _ = pair
    for _ in range(3):
        call_sid = new_sid("CA")
        answers = await asyncio.gather(_caller(one).dial(NUMBER, call_sid=call_sid),
                                       _caller(two).dial(NUMBER, call_sid=call_sid))
        rows, _ = await one.control.store.voice_calls.list(tenant_id=tenant_id,
                                                           equals={"provider_call_id": call_sid}, limit=5)
        assert len(rows) == 1, rows
        for _, answer in answers:  # both answered like a retry: the call's stream, no error
            assert answer.status == 200 and answer.stream_url, answer.text
        # Either answer's token starts the one call, once.
        leg = await _caller(two).open_stream(call_sid, answers[0][1])
        await asyncio.wait_for(leg.first_media.wait(), 10)
        await leg.stop(ACCOUNT_SID, call_sid)
        await leg.wait_closed()

    async def all_ended() -> bool:
        rows, _ = await one.control.store.voice_calls.list(tenant_id=tenant_id, limit=10)
        return all(r["status"] in ("ended", "failed") for r in rows)
    await _until(all_ended)
    rows, _ = await one.control.store.voice_calls.list(tenant_id=tenant_id, limit=10)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ended"}, rows


async def test_a_retried_webhook_for_a_call_that_ended_elsewhere_is_refused(pair) -> None:
    (one, two), tenant_id, _ = pair
    call_sid, answer = await _caller(one).dial(NUMBER)
    leg = await _caller(one).open_stream(call_sid, answer)
    await asyncio.wait_for(leg.first_media.wait(), 10)
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()

    async def ended() -> bool:
        return (await _row(one, tenant_id, call_sid))["status"] == "ended"
    await _until(ended)
    _, retried = await _caller(two).dial(NUMBER, call_sid=call_sid)
    assert retried.status == 200 and retried.rejected and "Reject" in retried.verbs, retried.text


async def test_a_key_revoked_or_a_secret_rotated_on_one_instance_is_honoured_by_the_other(pair) -> None:
    (one, two), tenant_id, key = pair
    status, _, _ = await two.call("GET", "/api/v1/agents", key)
    assert status == 200
    status, made, _ = await one.call("POST", "/api/v1/auth/api-keys", one.admin_key,
                                     json={"tenant_id": tenant_id, "scope": "runtime"})
    assert status == 201, made
    assert (await two.call("GET", "/api/v1/agents", made["key"]))[0] == 200
    status, body, _ = await one.call("DELETE", f"/api/v1/auth/api-keys/{made['id']}", one.admin_key)
    assert status in (200, 204), body
    status, body, _ = await two.call("GET", "/api/v1/agents", made["key"])  # the next request: no process cache
    assert status == 401, body

    # The Twilio auth token (a credential secret, cached per process) rotated through instance 1:
    # instance 2 verifies webhooks with the new one within the credential row's 1 s cache.
    call_sid, answer = await _caller(two).dial(NUMBER)  # caches the old token on instance 2
    assert answer.stream_url
    status, body, _ = await one.call("PUT", "/api/v1/credentials/twilio", one.admin_key, tenant_id=tenant_id,
                                     json={"fields": {"account_sid": ACCOUNT_SID}, "secret": "rotated-token"})
    assert status == 200, body
    await asyncio.sleep(1.1)
    rotated = TwilioCaller(two.base_url, ACCOUNT_SID, "rotated-token", http=two.http)
    _, answer = await rotated.dial(NUMBER)
    assert answer.status == 200 and answer.stream_url, answer.text
    _, stale = await _caller(two).dial(NUMBER)
    assert stale.status == 403, stale.text


async def test_a_stream_token_presented_to_both_instances_at_once_is_spent_once(pair) -> None:
    (one, two), _, _ = pair
    issuer, other = bridge(one.app).tokens, bridge(two.app).tokens
    for _ in range(20):
        token = await issuer.issue("call_race")
        results = await asyncio.gather(issuer.consume(token), other.consume(token), return_exceptions=True)
        spent = [r for r in results if r == "call_race"]
        refused = [r for r in results if isinstance(r, StreamTokenError)]
        assert len(spent) == 1 and len(refused) == 1 and refused[0].code == 4403, results


async def test_a_call_another_instance_cannot_take_over_is_failed_by_its_own_not_left_ringing(
        pair, monkeypatch: pytest.MonkeyPatch) -> None:
    (one, two), tenant_id, _ = pair
    monkeypatch.setattr(twilio_bridge, "STREAM_START_GRACE_S", 0.0)
    monkeypatch.setattr(bridge(one.app).tokens, "ttl_s", 1.0)

    async def route_gone(store, row):
        raise twilio_bridge.RouteRejected("no_active_version", "the call's number or agent version is gone")

    monkeypatch.setattr(twilio_bridge, "route_of_call", route_gone)
    call_sid, answer = await _caller(one).dial(NUMBER)
    leg = await _caller(two).open_stream(call_sid, answer)
    await leg.wait_closed()
    assert leg.result.close_code == 4410

    async def failed() -> bool:
        return (await _row(one, tenant_id, call_sid))["status"] == "failed"
    await _until(failed, 5.0)
    row = await _row(one, tenant_id, call_sid)
    assert row["end_reason"] == "stream_not_started", row


async def test_an_evaluation_calls_media_on_another_instance_takes_it_over(pair) -> None:
    """`voicectl eval run --url` at a port several workers share: the pinned voice webhook reaches one,
    the media another, which runs the call from its row and pin (its media-side control: no Twilio)."""
    (one, two), tenant_id, _ = pair
    store = one.control.store
    agent = await store.agents.find(tenant_id=tenant_id)
    evaluation_id = new_id("evl")
    await store.evaluations.insert({"id": evaluation_id, "tenant_id": tenant_id, "agent_id": agent["id"],
                                    "agent_version": agent["active_version"], "status": "running", "rubric": {},
                                    "created_at": now_iso()})
    pin, secret = await eval_pins.mint(store, tenant_id=tenant_id, evaluation_id=evaluation_id,
                                       agent_id=agent["id"], version=agent["active_version"], scenario="split")
    caller = TwilioCaller(one.base_url, "AC" + "e" * 32, secret, http=one.http)
    call_sid = new_sid("CA")
    status, text = await caller.post_signed(f"/webhooks/twilio/voice?eval={pin}&pin={secret}",
                                            caller.voice_params(NUMBER, "+15550001111", call_sid))
    assert status == 200, text
    answer = parse_twiml(status, text)
    call_id = (await store.eval_pins.get(pin, tenant_id=tenant_id))["call_id"]
    leg = await TwilioCaller(two.base_url, "AC" + "e" * 32, secret, http=two.http).open_stream(call_sid, answer)
    await asyncio.wait_for(leg.first_media.wait(), 10)
    taken = services(two.app).tracker.get(call_id)
    assert taken is not None and taken.state == "connected" and taken.evaluation.evaluation_id == evaluation_id
    assert taken.evaluation.pin_id == pin and taken.route.version == agent["active_version"]

    async def forgotten() -> bool:
        return services(one.app).tracker.get(call_id) is None
    await _until(forgotten, 5.0)
    await services(two.app).tracker.get(call_id).hangup("test_done")  # the media side ends it: no Twilio REST
    await leg.wait_closed()

    async def ended() -> bool:
        return (await store.voice_calls.get(call_id, tenant_id=tenant_id))["status"] in ("ended", "failed")
    await _until(ended)
    row = await store.voice_calls.get(call_id, tenant_id=tenant_id)
    assert (row["status"], row["instance_id"]) == ("ended", "i2"), row
    assert row["metadata"]["evaluation_id"] == evaluation_id
