"""Twilio's callbacks about an outbound call arrive as separate requests, in any order: progress
reported late or twice, callbacks before the Calls.create answer, the detection result before the
media or after the call, ``completed`` before the stream's ``stop``, a repeated voice request."""

from __future__ import annotations

import asyncio

import pytest

from runtime.api.appkeys import PIPELINE
from runtime.audio import Audio
from tests.twilio.calls_peer import Callee
from tests.twilio.outbound_support import (
    CALLEE,
    events,
    final,
    outbound_agent,
    place,
    states,
    transcript,
    until,
)


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the media path; the store's part of these flows runs on both in test_outbound_api


def silence(seconds: float) -> Audio:
    return Audio(b"\x00\x00" * int(8000 * seconds), 8000)


async def _placed(world) -> object:
    async def created() -> bool:
        return bool(world.rest.calls.created)
    await until(created)
    return world.rest.calls.created[-1]


def _statuses(call) -> list[tuple[str, int | None]]:
    return [(p["params"].get("CallStatus", p["kind"]), p.get("status")) for p in call.posts]


async def test_progress_reported_late_or_twice_only_moves_the_call_forward(world) -> None:
    agent_id = await outbound_agent(world)
    # "initiated" lands after "ringing" and "answered"; "ringing" of a second call after it connected.
    world.rest.calls.callees[CALLEE] = Callee("human", [silence(0.3)], delays={"initiated": 0.5})
    world.rest.calls.callees["+15550123499"] = Callee("human", [silence(0.3)], ring_s=0.05, delays={"ringing": 2.0})
    first = await place(world, agent_id=agent_id, variables={"name": "Ann"})
    await final(world, first["id"], 20)
    second = await place(world, agent_id=agent_id, variables={"name": "Bo"}, to="+15550123499")
    await final(world, second["id"], 20)
    assert await states(world, first["id"]) == ["queued", "dialing", "ringing", "connected", "ended"]
    assert await states(world, second["id"]) == ["queued", "dialing", "connected", "ended"]  # no ringing reported in time
    one, two = world.rest.calls.created
    await asyncio.wait_for(two.done.wait(), 5)
    await until(lambda: _all_answered(one, two))
    assert [s for s, _ in _statuses(one)][:3] == ["ringing", "in-progress", "initiated"]
    assert ("ringing", 204) in _statuses(two)
    # A status repeated (Twilio retries a callback it got no answer to): nothing changes.
    ringing = next(p for p in one.posts if p["params"].get("CallStatus") == "ringing")
    assert (await world.caller().post_url(ringing["url"], ringing["params"]))[0] == 204
    assert await states(world, first["id"]) == ["queued", "dialing", "ringing", "connected", "ended"]


async def _all_answered(*calls) -> bool:
    return all(p.get("status") is not None for c in calls for p in c.posts)


async def test_callbacks_before_the_calls_create_answer_find_their_call(world) -> None:
    agent_id = await outbound_agent(world)
    world.rest.calls.callees[CALLEE] = Callee("human", [silence(0.3)], ring_s=0.05, create_after_twiml=True)
    made = await place(world, agent_id=agent_id, variables={"name": "Cy"})
    call = await _placed(world)
    row = await final(world, made["id"], 20)
    assert row["provider_call_id"] == call.sid and row["end_reason"] == "caller_hangup"
    assert call.twiml_at < call.created_at and not call.twiml.rejected  # answered before the 201 went back
    assert await states(world, made["id"]) == ["queued", "dialing", "ringing", "connected", "ended"]
    assert all(status == 204 for kind, status in _statuses(call) if kind != "completed")


async def test_a_detection_result_before_the_media_waits_for_the_call_to_connect(world) -> None:
    agent_id = await outbound_agent(world)
    world.rest.calls.callees[CALLEE] = Callee("human", [silence(0.2)], ring_s=0.05, stream_delay_s=2.5)
    made = await place(world, agent_id=agent_id, variables={"name": "Di"}, machine_detection="voicemail")
    call = await _placed(world)

    async def detected() -> bool:
        return any(p["kind"] == "amd" and p.get("status") for p in call.posts)
    await until(detected)
    assert call.leg is None  # Twilio said "human" before the stream was even open
    # The voice request again (a retry) while the stream is awaited: the same TwiML, no second token.
    caller = world.caller()
    params = caller.outbound_voice_params(call.sid, call.form["From"], call.form["To"])
    status, text = await caller.post_url(call.form["Url"], params)
    assert status == 200 and text == call.twiml.text
    row = await final(world, made["id"], 20)
    assert row["end_reason"] == "caller_hangup"
    topics = [e["topic"] for e in await events(world, made["id"])]
    assert topics.index("call.machine_detected") < topics.index("call.connected")
    assert [t for r, t in await transcript(world, made["id"]) if r == "agent"] == ["Hi Di, this is the front desk."]
    # After the stream: the reference has answered its call.
    status, text = await caller.post_url(call.form["Url"], params)
    assert status == 200 and "<Hangup />" in text


async def test_completed_before_the_streams_stop_ends_the_call(world) -> None:
    agent_id = await outbound_agent(world)
    world.rest.calls.callees[CALLEE] = Callee("human", [silence(0.2)], ring_s=0.05, delays={"stop": 1.0})
    made = await place(world, agent_id=agent_id, variables={"name": "Ed"})
    row = await final(world, made["id"], 20)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "completed", "caller")


async def test_a_detection_result_after_the_call_ended_is_ignored(world) -> None:
    agent_id = await outbound_agent(world)
    world.rest.calls.callees[CALLEE] = Callee("human", [silence(0.2)], ring_s=0.05, detect_after_end=True)
    made = await place(world, agent_id=agent_id, variables={"name": "Fay"}, machine_detection="detect")
    call = await _placed(world)
    await final(world, made["id"], 20)

    async def late() -> bool:
        return any(p["kind"] == "amd" and p.get("status") for p in call.posts)
    await until(late, 10)
    assert next(p["status"] for p in call.posts if p["kind"] == "amd") == 204
    assert "call.machine_detected" not in [e["topic"] for e in await events(world, made["id"])]
    # detect mode greets at once, without waiting for the result; a greeting with the call's variables
    # is its own: it never went through the greeting cache.
    assert [t for r, t in await transcript(world, made["id"]) if r == "agent"] == ["Hi Fay, this is the front desk."]
    greetings = world.api.app[PIPELINE].greetings
    assert (greetings.hits, greetings.misses) == (0, 0)
