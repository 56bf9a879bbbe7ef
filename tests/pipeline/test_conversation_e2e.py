"""The conversation end to end over the Twilio bridge, with real audio made at test time by the
local TTS: the demo's booking agent (rules brain, booking tools) understands a caller who books
a table, and a caller who talks over the greeting stops the agent (barge-in)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import pytest_asyncio

from runtime.audio import Audio, ulaw_frames
from runtime.providers.tts.local import PiperTTS
from runtime.telephony.scripted_caller import OpenLine, agent_quiet, scripted_call
from runtime.telephony.twilio.caller import TwilioCaller
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides
from voicectl.demo import provision

# Tomorrow: seven today is in the past after 7 PM (UTC), when the agent rightly refuses it.
LINES = ("I'd like to book a table for two tomorrow at seven.", "Yes please.", "No thanks, goodbye.")


async def speech(text: str) -> Audio:
    chunks = [c async for c in PiperTTS().synthesize(text)]
    return Audio(b"".join(c.pcm for c in chunks), chunks[0].rate)


@pytest_asyncio.fixture
async def demo(settings):
    api, runner = await start_live_api(with_overrides(settings, limits=high_limits()))
    try:
        made = await provision(api.control)
        token = await api.control.credentials.secret(made["tenant_id"], "twilio")
        cred = await api.control.store.credentials.find(tenant_id=made["tenant_id"], provider="twilio")
        caller = TwilioCaller(api.base_url, cred["fields"]["account_sid"], token, http=api.http)
        yield api, made, caller
    finally:
        await stop_live_api(api, runner)


async def _final_row(api, tenant_id: str, call_sid: str) -> dict:
    for _ in range(200):
        rows, _ = await api.control.store.voice_calls.list(tenant_id=tenant_id, equals={"provider_call_id": call_sid})
        if rows and rows[0]["status"] in ("ended", "failed"):
            return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_sid} never ended")


async def _rows(api, table: str, tenant_id: str, call_id: str) -> list[dict]:
    rows, _ = await getattr(api.control.store, table).list(tenant_id=tenant_id, equals={"call_id": call_id},
                                                           limit=200)
    return rows


async def test_a_caller_books_a_table_and_the_agent_ends_the_call(demo, caplog) -> None:
    api, made, caller = demo
    caplog.set_level(logging.WARNING)
    lines = [(text, await speech(text)) for text in LINES]
    dialled: list[str] = []
    result = await asyncio.wait_for(
        scripted_call(caller, made["number"], lines, quiet_s=0.9, on_dial=dialled.append), 90)
    assert result.hung_up_by == "agent", "the agent ends the call after the goodbye"
    assert [t.agent_answered is not None for t in result.turns] == [True, True, True]
    row = await _final_row(api, made["tenant_id"], dialled[0])
    assert row["status"] == "ended" and row["end_reason"] == "agent_ended" and row["hangup_by"] == "agent"
    # The media counters are kept whoever ends the call (they were lost when the agent hung up).
    media = row["summary"]["media"]
    assert media["inbound_frames"] > 100 and media["outbound_frames"] > 100 and media["outbound_late"] >= 0

    tools = await _rows(api, "tool_calls", made["tenant_id"], row["id"])
    by_name = {t["name"]: t for t in tools}
    assert list(by_name) == ["check_availability", "create_booking", "end_call"], tools
    booking = by_name["create_booking"]
    assert booking["status"] == "ok" and booking["arguments"]["party_size"] == 2
    assert booking["arguments"]["time"] == "19:00" and booking["result"]["reference"]
    bookings, _ = await api.control.store.bookings.list(tenant_id=made["tenant_id"])
    assert [(b["party_size"], b["time"]) for b in bookings] == [(2, "19:00")]

    transcript = await _rows(api, "transcripts", made["tenant_id"], row["id"])
    said = [(t["role"], t["text"].lower()) for t in transcript]
    assert said[0] == ("agent", "hello, thanks for calling trattoria demo! how can i help you?")
    callers = [text for role, text in said if role == "caller"]
    # "No thanks, goodbye." may be written "bye bye": a goodbye either way.
    assert len(callers) == 3 and "table" in callers[0] and "yes" in callers[1] and "bye" in callers[2]
    assert any("reference" in text for role, text in said if role == "agent")
    assert not any(t["interrupted"] for t in transcript)

    latency = row["latency"]
    for stage in ("stt", "llm_first_token", "tts_first_audio", "first_frame", "v2v"):
        assert latency[stage]["count"] >= 3, (stage, latency)
    events = await _rows(api, "call_events", made["tenant_id"], row["id"])
    topics = [e["topic"] for e in events]
    # Each caller utterance carries its pieces and the engine's confidence in each; the agent's none.
    created = [e["payload"] for e in events if e["topic"] == "transcript.created"]
    for data in created:
        if data["role"] == "agent":
            assert data["segments"] is None
            continue
        assert data["segments"] and " ".join(s["text"] for s in data["segments"]) == data["text"], data
        assert all(0 < s["confidence"] <= 1 for s in data["segments"]), data
    for topic in ("transcript.created", "tool.called", "turn.latency", "speech.started", "speech.ended"):
        assert topic in topics, topics
    # The demo's placeholder Twilio account: the agent's hang-up stays on the media side, and says so.
    assert [e["payload"] for e in events if e["topic"] == "call.carrier_skipped"] == [
        {"action": "hangup", "reason": "placeholder_credential"}]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # barge-in timing: the store plays no part
async def test_talking_over_the_agent_stops_it_within_the_interruption_length(demo) -> None:
    api, made, caller = demo
    interrupt = await speech("Sorry, can I order food for pickup?")
    call_sid, answer = await caller.dial(made["number"])
    leg = await caller.open_stream(call_sid, answer)
    line = OpenLine(leg)
    try:
        await asyncio.wait_for(leg.first_media.wait(), 10)
        await asyncio.sleep(1.0)  # one second into the greeting
        line.say(ulaw_frames(interrupt))
        while line.first_frame_sent_at is None:
            await asyncio.sleep(0.005)
        spoke_at = line.first_frame_sent_at
        deadline = time.monotonic() + 5
        while leg.result.clears == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        cleared_at = time.monotonic()
        assert leg.result.clears >= 1, "the agent was never cut off"
        # The runtime needs min_interruption_ms (300) of speech; the rest is transport and CI slack.
        assert cleared_at - spoke_at < 0.3 + 0.4, cleared_at - spoke_at
        await line.speaking_done.wait()
        await agent_quiet(leg, 0.9, time.monotonic(), 20)  # the agent answers the interruption
        await leg.stop(caller.account_sid, call_sid)
        await leg.wait_closed()
    finally:
        await line.close()
    row = await _final_row(api, made["tenant_id"], call_sid)
    transcript = await _rows(api, "transcripts", made["tenant_id"], row["id"])
    greeting = transcript[0]
    assert greeting["role"] == "agent" and greeting["interrupted"]
    full = "Hello, thanks for calling Trattoria Demo! How can I help you?"
    assert greeting["text"] and full.startswith(greeting["text"].rstrip(".…")) and greeting["text"] != full
    topics = [e["topic"] for e in await _rows(api, "call_events", made["tenant_id"], row["id"])]
    assert "agent.interrupted" in topics
    assert any(t["role"] == "caller" and "order" in t["text"].lower() for t in transcript), transcript


SPANISH_RULES = {
    "slots": {"party_size": {"type": "count"}, "time": {"type": "time", "pm_hours": [1, 11]},
              # The caller says "mañana"; Whisper base hears it as another word now and then, and
              # a table for today at 21:00 is in the past after 21:00 UTC: the booking must not
              # depend on the time of day the tests run.
              "date": {"type": "date", "default": "mañana"}},
    "intents": [
        {"name": "despedida", "keywords": ["adiós", "adios", "hasta luego", "nada más"],
         "reply": "Gracias por llamar. ¡Adiós!", "tool": "end_call", "on_error": {}},
        {"name": "reservar", "keywords": ["reservar", "reserva", "mesa"], "requires": ["party_size", "time"],
         "ask": {"party_size": "¿Para cuántas personas?", "time": "¿A qué hora?"},
         "tool": "check_availability",
         "arguments": {"date": "{date}", "time": "{time}", "party_size": "{party_size}"},
         "results": [{"when": {"available": True}, "reply": "Tengo una mesa a esa hora. ¿Se la reservo?",
                      "confirm": {"yes": "confirmar"}},
                     {"reply": "Lo siento, a esa hora no hay mesa. ¿A qué otra hora?", "ask": "time"}]},
        {"name": "confirmar", "requires": ["party_size", "time"], "tool": "create_booking",
         "arguments": {"date": "{date}", "time": "{time}", "party_size": "{party_size}"},
         "results": [{"reply": "Listo, su mesa está reservada. ¿Algo más?", "reset": True}]},
    ],
    "fallback": "Perdone, no le he entendido. Puedo reservarle una mesa.",
    "reprompt": "Perdone.",
    "yes_words": ["sí", "si", "vale", "claro", "de acuerdo", "por favor"],
    "no_words": ["no"],
}
SPANISH_LINES = ("Quiero reservar una mesa para cuatro personas a las nueve, mañana.", "Sí, claro.",
                 "No, gracias. Adiós.")


async def espeak(text: str, voice: str) -> Audio:
    from runtime.providers.tts.local import EspeakTTS

    chunks = [c async for c in EspeakTTS(voice=voice, words_per_minute=150).synthesize(text)]
    return Audio(b"".join(c.pcm for c in chunks), chunks[0].rate)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the language path: the booking test covers both stores
async def test_a_spanish_caller_books_through_a_spanish_script(demo) -> None:
    """A version in Spanish hears its caller with Whisper base in Spanish and answers with espeak-ng
    in Spanish; a Spanish rules script books the table."""
    from runtime.control.schemas import AgentCreate, NumberCreate

    api, made, caller = demo
    agent = await api.control.agents.create(made["tenant_id"], AgentCreate(
        name="reservas", system_prompt="x", language="es", greeting="Hola, restaurante Demo, ¿en qué puedo ayudarle?",
        llm={"provider": "rules"}, tools=["check_availability", "create_booking", "end_call"], rules=SPANISH_RULES))
    number = "+15550007777"
    await api.control.numbers.add(made["tenant_id"], NumberCreate(e164=number, provider="twilio", agent_id=agent.id))
    lines = [(text, await espeak(text, "es")) for text in SPANISH_LINES]
    dialled: list[str] = []
    result = await asyncio.wait_for(scripted_call(caller, number, lines, quiet_s=0.9, on_dial=dialled.append), 120)
    row = await _final_row(api, made["tenant_id"], dialled[0])
    transcript = await _rows(api, "transcripts", made["tenant_id"], row["id"])
    said = [(t["role"], t["text"].lower()) for t in transcript]
    assert result.hung_up_by == "agent", said
    tools = [(t["name"], t["status"]) for t in await _rows(api, "tool_calls", made["tenant_id"], row["id"])]
    assert tools == [("check_availability", "ok"), ("create_booking", "ok"), ("end_call", "ok")], (tools, said)
    bookings, _ = await api.control.store.bookings.list(tenant_id=made["tenant_id"])
    assert [(b["party_size"], b["time"]) for b in bookings] == [(4, "21:00")]
    callers = [text for role, text in said if role == "caller"]
    # "No, gracias. Adiós." may be two turns: a caller who pauses after a finished sentence has
    # ended a turn (the runtime answers "no, gracias" before "adiós" when its decode is quick).
    assert "reservar una mesa" in callers[0] and "adiós" in callers[-1] and len(callers) in (3, 4), said
    assert said[0] == ("agent", "hola, restaurante demo, ¿en qué puedo ayudarle?")
