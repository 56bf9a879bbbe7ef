"""Outbound calls end to end against the local Twilio peer (tests/twilio/calls_peer.py), with real
speech made at test time: a human who answers and talks, a machine whose greeting ends with a
beep (the voicemail left is in the recording and the transcript)."""

from __future__ import annotations

import json
import logging

import pytest
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from runtime.api.appkeys import SETTINGS
from runtime.audio import read_wav, resample
from runtime.providers.stt.local import LocalWhisperSTT
from tests.twilio.calls_peer import Callee
from tests.twilio.outbound_support import (
    CALLEE,
    events,
    final,
    outbound_agent,
    place,
    speech,
    states,
    transcript,
)
from tests.twilio.support import ACCOUNT_SID, AUTH_TOKEN


@pytest.fixture
def backend() -> str:
    return "sqlite"  # speech on both backends would double the slowest tests; the store paths run on both elsewhere


async def test_a_human_answers_is_greeted_with_the_calls_variables_and_talks(world) -> None:
    agent_id = await outbound_agent(world, tools=["end_call"])
    world.rest.calls.callees[CALLEE] = Callee("human", [await speech("Hello?"), await speech("Goodbye.")],
                                              hang_up=False)  # the agent says goodbye and hangs up
    made = await place(world, agent_id=agent_id, variables={"name": "Ada", "party": 2},
                       machine_detection="voicemail")
    assert made == {"id": made["id"], "status": "queued"}
    row = await final(world, made["id"], 60)
    assert (row["status"], row["hangup_by"]) == ("ended", "agent"), row
    assert (row["direction"], row["from_number"], row["to_number"]) == ("outbound", "+15550107000", CALLEE)
    assert row["variables"] == {"name": "Ada", "party": 2} and row["provider_call_id"].startswith("CA")
    assert await states(world, made["id"]) == ["queued", "dialing", "ringing", "connected", "ended"]
    detected = [e["payload"] for e in await events(world, made["id"]) if e["topic"] == "call.machine_detected"]
    assert detected == [{"answered_by": "human", "detection_ms": detected[0]["detection_ms"]}]
    lines = await transcript(world, made["id"])
    agent = [text for role, text in lines if role == "agent"]
    assert agent[0] == "Hi Ada, this is the front desk.", lines  # held until Twilio said "human", then rendered
    assert any(role == "caller" and "bye" in text.lower() for role, text in lines), lines
    assert len(agent) >= 2 and "goodbye" in agent[-1].lower(), lines  # the agent answered the callee
    call = world.rest.calls.created[-1]
    heard = await LocalWhisperSTT().transcribe(resample(bytes(call.leg.result.received_pcm), 8000, 16000))
    assert heard is not None and "front desk" in heard.text.lower(), heard  # the words, as heard on the line


async def test_a_machine_gets_the_voicemail_after_its_beep_in_the_recording_and_the_transcript(world) -> None:
    status, _, _ = await world.api.call("PATCH", f"/api/v1/tenants/{world.tenant_id}", world.api.admin_key,
                                        json={"recording_enabled": True})
    assert status == 200
    agent_id = await outbound_agent(world)
    greeting = await speech("Hi, this is Sam. Leave a message after the tone.")
    world.rest.calls.callees[CALLEE] = Callee("machine", greeting=greeting)
    made = await place(world, agent_id=agent_id, variables={"name": "Sam", "party": "four"},
                       machine_detection="voicemail")
    row = await final(world, made["id"], 60)
    assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "voicemail_left", "agent"), row
    assert await states(world, made["id"]) == ["queued", "dialing", "ringing", "connected", "ended"]
    detected = [e["payload"] for e in await events(world, made["id"]) if e["topic"] == "call.machine_detected"]
    assert detected == [{"answered_by": "machine", "detection_ms": detected[0]["detection_ms"]}]
    assert detected[0]["detection_ms"] >= int(greeting.duration_s * 1000)  # at the beep, not before
    message = "Hi Sam, your table for four is ready. Please call us back."
    agent = [text for role, text in await transcript(world, made["id"]) if role == "agent"]
    assert agent == [message]  # no greeting spoken to a machine: only the voicemail
    call = world.rest.calls.created[-1]
    assert world.rest.requests[-1]["call"] == call.sid and world.rest.requests[-1]["form"] == {"Status": "completed"}
    # The machine recorded the message after its beep; the runtime's recording has it too.
    left = await LocalWhisperSTT().transcribe(resample(call.heard_after_beep(), 8000, 16000))
    assert left is not None and _said(left.text, "your table", "call us"), left
    assert any(p["kind"] == "completed" and p["params"]["CallStatus"] == "completed" for p in call.posts)
    recordings, _ = await world.api.control.store.recordings.list(tenant_id=world.tenant_id,
                                                                 equals={"call_id": made["id"]})
    agent_leg = next(r for r in recordings if r["kind"] == "agent")
    wav = read_wav(world.api.app[SETTINGS].recording_dir / agent_leg["uri"])
    recorded = await LocalWhisperSTT().transcribe(resample(wav.pcm, wav.rate, 16000))
    assert recorded is not None and _said(recorded.text, "your table", "call us"), recorded


def _said(text: str, *phrases: str) -> bool:
    """The phrases in a transcription (its punctuation aside: the local TTS's voice varies a little
    from run to run, and so does how the STT writes it: "call us back" was once "call us bat")."""
    plain = " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
    return all(p in plain for p in phrases)


async def test_calls_create_is_what_the_twilio_library_sends_and_callbacks_are_signed_as_twilio_signs(world) -> None:
    agent_id = await outbound_agent(world)
    world.rest.calls.callees[CALLEE] = Callee("busy")
    made = await place(world, agent_id=agent_id, machine_detection="detect", timeout_s=25)
    await final(world, made["id"])
    call = world.rest.calls.created[-1]
    sent = call.form
    # The same request through twilio-python's CallList.create: the same parameter names and values.
    captured: dict = {}

    class Capture(HttpClient):
        def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None,
                    allow_redirects=False):
            captured.update(url=url, data=data)
            return Response(201, json.dumps({"sid": call.sid, "status": "queued"}))

    Client(ACCOUNT_SID, AUTH_TOKEN, http_client=Capture(logging.getLogger("twilio"), False)).calls.create(
        to=sent["To"], from_=sent["From"], url=sent["Url"], method="POST", status_callback=sent["StatusCallback"],
        status_callback_method="POST", status_callback_event=["initiated", "ringing", "answered", "completed"],
        timeout=25, machine_detection="Enable", machine_detection_timeout=30, async_amd="true",
        async_amd_status_callback=sent["AsyncAmdStatusCallback"], async_amd_status_callback_method="POST")
    assert captured["url"].endswith(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json")
    library = captured["data"]
    assert sorted(k for k in library) == sorted(set(sent))
    for name, value in library.items():
        assert sent.getall(name) == (value if isinstance(value, list) else [str(value)]), name
    # Every callback the peer sent verifies with the official RequestValidator, and was accepted.
    validator = RequestValidator(AUTH_TOKEN)
    assert call.posts and all(validator.validate(p["url"], p["params"], p["signature"]) for p in call.posts)
    assert {p["status"] for p in call.posts} == {204}
