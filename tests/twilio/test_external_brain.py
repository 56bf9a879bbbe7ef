"""Bring your own brain end to end: a version with ``llm: external``, a Twilio-protocol caller who
speaks, and examples/external_brain.py as the integrator's backend (events WebSocket in, speaking
session ``say`` out). The runtime never answers a caller turn itself."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from runtime.api.appkeys import TRACKER
from runtime.telephony.scripted_caller import scripted_call
from tests.twilio.support import NUMBER
from voicectl.call import _speak_lines  # the CLI's caller voice (piper)

ROOT = Path(__file__).resolve().parents[2]


def _example():
    spec = importlib.util.spec_from_file_location("external_brain_example", ROOT / "examples/external_brain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def _external_version(world) -> None:
    status, body, _ = await world.api.call("PATCH", f"/api/v1/agents/{world.agent_id}", world.key,
                                           json={"llm": {"provider": "external"}})
    assert status == 200, body
    status, body, _ = await world.api.call("POST", f"/api/v1/agents/{world.agent_id}/promote", world.api.admin_key,
                                           tenant_id=world.tenant_id, json={"version": 2})
    assert status == 200, body


@pytest.mark.parametrize("backend", ["sqlite"])  # speech end to end: the store paths of this flow run on both below
async def test_the_integrators_backend_answers_every_turn_through_the_api(world) -> None:
    await _external_version(world)
    example = _example()
    brain = example.ExternalBrain(world.api.base_url, world.key)
    ready = asyncio.Event()
    running = asyncio.create_task(brain.run(world.api.http, ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        lines = await _speak_lines(["I would like a table for two people."], [])
        result = await scripted_call(world.caller(), NUMBER, lines, quiet_s=1.2, answer_timeout_s=15)
        assert result.turns and result.turns[0].agent_answered is not None, "the backend's reply was not heard"
        call = (await world.calls())[0]
        transcripts, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                                        equals={"call_id": call["id"]})
        said = [(t["role"], t["text"]) for t in sorted(transcripts, key=lambda t: t["seq"])]
        assert said[0] == ("agent", "Hello, front desk.")
        caller = [text for role, text in said if role == "caller"]
        assert caller and "table" in caller[0].lower(), said
        # The backend's line, spoken as the agent's own; nothing else from the agent.
        assert [text for role, text in said if role == "agent"][1:] == [f"You said: {caller[0]}"], said
        events, _ = await world.api.control.store.call_events.list(tenant_id=world.tenant_id,
                                                                   equals={"call_id": call["id"]}, limit=200)
        topics = [e["topic"] for e in sorted(events, key=lambda e: e["seq"])]
        assert "transcription.started" in topics and "speaking.started" in topics
        created = [e["payload"] for e in events if e["topic"] == "transcript.created"]
        inbound = [p for p in created if p["role"] == "caller"]
        assert inbound and all(p["direction"] == "in" and p["transcribe_id"].startswith("trs_") for p in inbound)
        # The offline STT decodes partial text for an external brain while the caller speaks.
        first_final = min(e["seq"] for e in events if e["topic"] == "transcript.created" and e["payload"]["role"] == "caller")
        interims = [e["payload"]["text"] for e in events if e["topic"] == "transcript.interim" and e["seq"] < first_final]
        assert interims and all(text.strip() for text in interims), topics
        assert brain.replies_sent == len(caller)
    finally:
        running.cancel()


async def test_speaking_and_transcribe_sessions_by_rest(world) -> None:
    """The REST side: sessions on a connected call, say/flush/stop, 404 for other tenants, 409 stopped."""
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    streaming = asyncio.create_task(leg.stream([b"\xff" * 160] * 1000))
    try:
        await leg.first_media.wait()
        call_id = (await world.call_by_sid(call_sid))["id"]
        api, key = world.api, world.key
        status, tr, _ = await api.call("POST", "/api/v1/transcribes", key,
                                       json={"reference_type": "call", "reference_id": call_id, "direction": "both"})
        assert status == 201 and tr["status"] == "active" and tr["direction"] == "both", tr
        status, sp, _ = await api.call("POST", "/api/v1/speakings", key, json={"reference_id": call_id})
        assert status == 201 and sp["status"] == "active", sp
        for _ in range(3):
            status, body, _ = await api.call("POST", f"/api/v1/speakings/{sp['id']}/say", key,
                                             json={"text": "This is a long line that the flush will cut short."})
            assert status == 202, body
        await asyncio.sleep(0.3)
        conversation = api.app[TRACKER].get(call_id).conversation
        assert conversation.lines.pending >= 1
        status, body, _ = await api.call("POST", f"/api/v1/speakings/{sp['id']}/flush", key)
        assert status == 200 and body["said"] == 3 and conversation.lines.pending == 0
        status, page, _ = await api.call("GET", "/api/v1/speakings", key)
        assert [s["id"] for s in page["items"]] == [sp["id"]] and page["items"][0]["provider"] == "local"
        # Another tenant: not found; bad bodies: 422.
        _, other = await api.tenant_with_key("other")
        for method, path in (("GET", f"/api/v1/speakings/{sp['id']}"), ("POST", f"/api/v1/speakings/{sp['id']}/flush"),
                             ("GET", f"/api/v1/transcribes/{tr['id']}")):
            status, body, _ = await api.call(method, path, other)
            assert status == 404, (path, body)
        # Another provider, voice or language than the call's: the session's own engine, or a clear 422.
        for bad, field in (({"voice_id": "someone-else"}, "voice_id"), ({"provider": "nope"}, "provider"),
                           ({"provider": "elevenlabs"}, "provider")):  # no credential for it
            status, body, _ = await api.call("POST", "/api/v1/speakings", key, json={"reference_id": call_id, **bad})
            assert status == 422 and body["details"]["field"] == field, (bad, body)
        status, es, _ = await api.call("POST", "/api/v1/speakings", key,
                                       json={"reference_id": call_id, "provider": "espeak", "language": "es"})
        assert status == 201 and es["provider"] == "espeak" and es["language"] == "es", es
        status, body, _ = await api.call("POST", f"/api/v1/speakings/{es['id']}/say", key, json={"text": "Hola, buenos días."})
        assert status == 202, body
        for _ in range(50):
            reply = conversation.reply
            if reply is not None and reply.tts is not None:
                break
            await asyncio.sleep(0.02)
        assert reply is not None and reply.tts.name == "espeak" and reply.tts.voice == "es", reply
        status, body, _ = await api.call("POST", "/api/v1/speakings", key, json={"reference_id": "call_nope"})
        assert status == 404
        # Stopped: say is 409; the transcribe stops too.
        status, body, _ = await api.call("POST", f"/api/v1/speakings/{sp['id']}/stop", key)
        assert status == 200 and body["status"] == "stopped"
        status, body, _ = await api.call("POST", f"/api/v1/speakings/{sp['id']}/say", key, json={"text": "hi"})
        assert status == 409 and body["error"] == "session_stopped"
        status, body, _ = await api.call("POST", f"/api/v1/transcribes/{tr['id']}/stop", key)
        assert status == 200 and body["status"] == "stopped"
        topics = await world.events(call_id)
        assert {"transcription.started", "transcription.stopped", "speaking.started", "speaking.stopped"} <= set(topics)
    finally:
        streaming.cancel()
        await leg.stop(world.caller().account_sid, call_sid)
        await leg.wait_closed()


async def test_event_socket_commands_and_topic_aliases(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    streaming = asyncio.create_task(leg.stream([b"\xff" * 160] * 1000))
    ws_url = world.api.base_url.replace("http", "ws", 1) + "/api/v1/events/ws"
    try:
        await leg.first_media.wait()
        call_id = (await world.call_by_sid(call_sid))["id"]
        _, sp, _ = await world.api.call("POST", "/api/v1/speakings", world.key, json={"reference_id": call_id})
        async with world.api.http.ws_connect(ws_url, headers={"Authorization": f"Bearer {world.key}"}) as ws:
            await ws.send_json({"type": "subscribe", "topics": [f"{world.tenant_id}::transcription:*",
                                                                 f"{world.tenant_id}::call:*"]})
            reply = await ws.receive_json(timeout=5)
            assert reply["type"] == "subscribed" and "transcript.*" in reply["topics"] and "voice.call.*" in reply["topics"]
            await ws.send_json({"type": "subscribe", "topics": ["ten_someoneelse::call:*"]})
            assert (await ws.receive_json(timeout=5))["type"] == "error"
            await ws.send_json({"type": "say", "speaking_id": sp["id"], "text": "Hello from the socket.", "ref": "r1"})
            assert await _next_of(ws, {"ack", "error"}) == {"type": "ack", "ref": "r1"}
            await ws.send_json({"type": "flush", "speaking_id": "spk_nope", "ref": 7})
            error = await _next_of(ws, {"ack", "error"})
            assert error["error"] == "not_found" and error["ref"] == 7
            await ws.send_json({"type": "say", "speaking_id": sp["id"], "text": "", "ref": "r2"})
            assert (await _next_of(ws, {"ack", "error"}))["error"] == "bad_request"
    finally:
        streaming.cancel()
        await leg.stop(world.caller().account_sid, call_sid)
        await leg.wait_closed()


async def _next_of(ws, types: set[str]) -> dict:
    while True:
        message = await ws.receive_json(timeout=5)
        if message["type"] in types:
            return message


async def test_a_callee_who_hangs_up_mid_say_stops_the_session_and_keeps_what_was_heard(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    streaming = asyncio.create_task(leg.stream([b"\xff" * 160] * 1000))
    try:
        await leg.first_media.wait()
        call_id = (await world.call_by_sid(call_sid))["id"]
        api, key = world.api, world.key
        status, sp, _ = await api.call("POST", "/api/v1/speakings", key, json={"reference_id": call_id})
        assert status == 201, sp
        line = ("Thanks for waiting. I am reading you the whole list of our opening hours for every day of the "
                "week, including the holidays, so please stay on the line while I go through it.")
        conversation = api.app[TRACKER].get(call_id).conversation
        await asyncio.sleep(0.5)  # the greeting's first words
        conversation.flush_lines()
        status, body, _ = await api.call("POST", f"/api/v1/speakings/{sp['id']}/say", key, json={"text": line})
        assert status == 202, body
        for _ in range(100):  # the line is on the line
            reply = conversation.reply
            if reply is not None and reply.first_audio_at is not None and reply.messages[0].content == line:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)
        await leg.stop(world.caller().account_sid, call_sid)  # the callee hangs up mid-line
        await leg.wait_closed()
        row = await world.final_call(call_sid)
        assert (row["status"], row["hangup_by"]) == ("ended", "caller"), row
        status, body, _ = await api.call("POST", f"/api/v1/speakings/{sp['id']}/say", key, json={"text": "Hello?"})
        assert status == 409 and body["error"] == "session_stopped", body
        status, body, _ = await api.call("GET", f"/api/v1/speakings/{sp['id']}", key)
        assert status == 200 and body["status"] == "stopped" and body["said"] == 1, body
        _, other = await api.tenant_with_key("other")
        status, body, _ = await api.call("GET", f"/api/v1/speakings/{sp['id']}", other)
        assert status == 404, body
        transcripts, _ = await api.control.store.transcripts.list(tenant_id=world.tenant_id, equals={"call_id": call_id})
        heard = [t for t in transcripts if t["role"] == "agent" and line.startswith(t["text"][:20])]
        assert len(heard) == 1 and heard[0]["interrupted"] and len(heard[0]["text"]) < len(line), heard
    finally:
        streaming.cancel()
