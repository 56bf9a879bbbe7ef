"""A whole call with every cloud adapter in place: Deepgram hears the caller, Claude answers (with
a tool call), Chatterbox speaks, all three real clients talking to local servers that speak their
wire protocols, over the Twilio bridge with real speech made at test time. The caller talks over
a long answer (barge-in). Afterwards, no secret of the call may appear in the logs, the events,
the database files or the CLI's output."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from peers.anthropic_server import AnthropicServer, text_reply, tool_reply
from peers.chatterbox_server import ChatterboxScript, ChatterboxServer
from peers.deepgram_server import DeepgramScript, DeepgramServer
from runtime.audio import ulaw_frames
from runtime.control.schemas import AgentCreate, CredentialSet, NumberCreate, TenantCreate, VoiceProfileCreate
from runtime.telephony.scripted_caller import OpenLine, agent_quiet
from runtime.telephony.twilio.caller import TwilioCaller
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides
from tests.pipeline.test_conversation_e2e import speech
from voicectl.cli import app as cli_app

DEEPGRAM_KEY = "dg-secret-5f1c0a9e77d24b1b"
ANTHROPIC_KEY = "sk-ant-secret-93b2e4d0c6a1f8e7"
CHATTERBOX_KEY = "cb-secret-1d7e22a9f0c34b58"
TWILIO_TOKEN = "twilio-secret-0aa9c3b1e5d74f62"
SECRETS = (DEEPGRAM_KEY, ANTHROPIC_KEY, CHATTERBOX_KEY, TWILIO_TOKEN)
NUMBER = "+15557650001"
SUMMARY = {"text": "The caller left a message for Sam and asked about opening hours.", "intent": "leave a message",
           "entities": {"for": "Sam"}, "sentiment": "neutral", "follow_up": "Give Sam the message."}

HEARD = ["I'd like to leave a message for Sam.", "What are your opening hours?", "That's all, goodbye."]
LONG_ANSWER = ("We're open from nine in the morning until six in the evening on weekdays. "
               "On Saturdays we open at ten and close at four. On Sundays we are closed. "
               "On public holidays the hours can change, so please check our website before you come. "
               "You can also reach us by e-mail at any time and we will answer within a day.")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the database files are scanned for secrets
async def test_a_call_through_deepgram_claude_and_chatterbox(settings, caplog, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    lines = [await speech(text) for text in ("I'd like to leave a message for Sam.", "What are your opening hours?",
                                             "Sorry, that's all, goodbye.")]
    async with (DeepgramServer(DeepgramScript(utterances=list(HEARD), api_key=DEEPGRAM_KEY)) as deepgram,
                AnthropicServer(api_key=ANTHROPIC_KEY) as claude,
                ChatterboxServer(ChatterboxScript(api_key=CHATTERBOX_KEY)) as chatterbox):
        conf = with_overrides(settings, limits=high_limits(), providers={
            "deepgram": {"url": deepgram.url}, "anthropic": {"base_url": claude.base_url},
            "chatterbox": {"base_url": chatterbox.base_url}})
        claude.push(tool_reply("log_note", {"note": "Message for Sam"}, text="Sure."),
                    text_reply("I've written that down for Sam. Anything else?"),
                    text_reply(LONG_ANSWER, pieces=12),
                    text_reply("Goodbye, and thanks for calling!"),
                    text_reply(json.dumps(SUMMARY)))  # after the call: the summary
        api, runner = await start_live_api(conf)
        try:
            plane = api.control
            tenant = await plane.tenants.create(TenantCreate(name="acme"))
            # The voice profile makes Chatterbox the TTS and chooses its voice; the version tunes it.
            profile = await plane.voices.create(tenant.id, VoiceProfileCreate(
                name="desk voice", provider="chatterbox", voice_id="narrator"))
            agent = await plane.agents.create(tenant.id, AgentCreate(
                name="front desk", system_prompt="You answer the phone for Acme.", greeting="Hello, Acme here.",
                stt={"provider": "deepgram", "endpointing_ms": 400}, llm={"provider": "anthropic", "fallback": ["rules"]},
                tts={"exaggeration": 0.8, "cfg_weight": 0.3}, voice_profile_id=profile.id, tools=["log_note"]))
            await plane.numbers.add(tenant.id, NumberCreate(e164=NUMBER, provider="twilio", agent_id=agent.id))
            for provider, secret, fields in (("deepgram", DEEPGRAM_KEY, {}), ("anthropic", ANTHROPIC_KEY, {}),
                                             ("chatterbox", CHATTERBOX_KEY, {"base_url": chatterbox.base_url}),
                                             ("twilio", TWILIO_TOKEN, {"account_sid": "AC" + "7" * 32})):
                await plane.credentials.set(tenant.id, provider, CredentialSet(fields=fields, secret=secret))
            caller = TwilioCaller(api.base_url, "AC" + "7" * 32, TWILIO_TOKEN, http=api.http)
            call_sid = await asyncio.wait_for(_converse(caller, lines), 60)
            row = await _final_row(plane, tenant.id, call_sid)
            row = await _summarised(plane, tenant.id, row["id"])
            await _check_the_call(plane, tenant.id, row, deepgram, claude, chatterbox)
        finally:
            await stop_live_api(api, runner)
    # The CLI runs its own event loop: in a thread.
    await asyncio.to_thread(_check_no_secret_leaked, caplog, tmp_path, conf, tenant.id, row["id"])


async def _converse(caller: TwilioCaller, lines: list) -> str:
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    line = OpenLine(leg)
    try:
        await agent_quiet(leg, 0.9, 0.0, 15)  # the greeting
        for audio in lines[:2]:
            line.say(ulaw_frames(audio))
            await line.speaking_done.wait()
            if audio is lines[0]:
                await agent_quiet(leg, 0.9, time.monotonic(), 15)  # "Sure." + the note + the answer
        # The long answer starts; a second into it the caller talks over it.
        await asyncio.wait_for(_agent_speaks(leg, time.monotonic()), 15)
        await asyncio.sleep(1.0)
        clears = leg.result.clears
        line.say(ulaw_frames(lines[2]))
        await line.speaking_done.wait()
        assert leg.result.clears > clears, "the agent was not cut off"
        await agent_quiet(leg, 0.9, time.monotonic(), 15)  # the goodbye
        await leg.stop(caller.account_sid, call_sid)
        await leg.wait_closed(10)
    finally:
        await line.close()
    return call_sid


async def _agent_speaks(leg, since: float) -> None:
    while not (leg.result.arrivals and leg.result.arrivals[-1] > since):
        await asyncio.sleep(0.02)


async def _final_row(plane, tenant_id: str, call_sid: str) -> dict:
    for _ in range(200):
        rows, _ = await plane.store.voice_calls.list(tenant_id=tenant_id, equals={"provider_call_id": call_sid})
        if rows and rows[0]["status"] in ("ended", "failed"):
            return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_sid} never ended")


async def _summarised(plane, tenant_id: str, call_id: str) -> dict:
    """The call row once Claude has written its summary (after the call, off its path)."""
    for _ in range(200):
        row = await plane.store.voice_calls.get(call_id, tenant_id=tenant_id)
        if row["summary"].get("analysis", {}).get("status") not in (None, "pending"):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} was never summarised: {row['summary']}")


async def _rows(plane, table: str, tenant_id: str, call_id: str) -> list[dict]:
    rows, _ = await getattr(plane.store, table).list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=500)
    return rows


async def _check_the_call(plane, tenant_id: str, row: dict, deepgram, claude, chatterbox) -> None:
    assert row["status"] == "ended" and row["end_reason"] == "caller_hangup", row
    events = await _rows(plane, "call_events", tenant_id, row["id"])
    topics = [e["topic"] for e in events]
    assert "provider.failed_over" not in topics, [e for e in events if e["topic"] == "provider.failed_over"]
    assert "agent.interrupted" in topics and "tool.called" in topics and "turn.latency" in topics

    # Deepgram: the caller's audio as it came off the phone line, with the tenant's key.
    first = deepgram.connections[0]
    assert first.headers.get("Authorization") == f"Token {DEEPGRAM_KEY}"
    assert first.query["encoding"] == "mulaw" and first.query["sample_rate"] == "8000"
    assert first.query["model"] == "nova-3" and first.query["interim_results"] == "true"
    assert first.query["endpointing"] == "400" and first.query["language"] == "en"
    transcript = await _rows(plane, "transcripts", tenant_id, row["id"])
    callers = [t["text"] for t in transcript if t["role"] == "caller"]
    assert callers == HEARD, transcript

    # Claude: the tool call ran and its result went back in Claude's format; the prefix is cached.
    tools = await _rows(plane, "tool_calls", tenant_id, row["id"])
    assert [(t["name"], t["status"], t["arguments"]) for t in tools] == [("log_note", "ok", {"note": "Message for Sam"})]
    asked = claude.message_requests
    assert len(asked) == 5  # four replies, then the summary
    results = [b for m in asked[1].body["messages"] for b in (m["content"] if isinstance(m["content"], list) else [])
               if b.get("type") == "tool_result"]
    assert len(results) == 1 and results[0]["tool_use_id"]
    assert any("cache_control" in block for block in asked[0].body["system"])
    # The interrupted answer is in the history only as far as the caller heard it.
    said = next(m for m in asked[3].body["messages"][::-1] if m["role"] == "assistant")
    text = said["content"] if isinstance(said["content"], str) else " ".join(
        b.get("text", "") for b in said["content"] if b.get("type") == "text")
    assert text.strip() and len(text) < len(LONG_ANSWER), text
    agent_lines = [t for t in transcript if t["role"] == "agent"]
    assert agent_lines[0]["text"] == "Hello, Acme here."
    assert any(t["interrupted"] for t in agent_lines)

    # Chatterbox spoke every line, sentence by sentence, streamed.
    spoken = [r.body["input"] for r in chatterbox.requests]
    assert spoken[0] == "Hello, Acme here." and "Goodbye, and thanks for calling!" in spoken
    assert all(r.path == "/v1/audio/speech/stream" for r in chatterbox.requests)
    assert all(r.headers.get("Authorization") == f"Bearer {CHATTERBOX_KEY}" for r in chatterbox.requests)
    assert {(r.body["voice"], r.body["exaggeration"], r.body["cfg_weight"]) for r in chatterbox.requests} == {
        ("narrator", 0.8, 0.3)}

    # The record: the engines and voice that served the call, and the summary Claude wrote after it
    # from the transcript and the tool calls.
    assert (row["stt_provider"], row["llm_provider"], row["tts_provider"], row["tts_voice"]) == (
        "deepgram", "anthropic", "chatterbox", "narrator")
    assert row["llm_model"] and row["outcome"] == "completed"
    summary = row["summary"]
    assert (summary["text"], summary["intent"], summary["sentiment"]) == (SUMMARY["text"], "leave_a_message",
                                                                          "neutral")
    assert summary["analysis"] == {"by": "llm", "status": "done", "provider": "anthropic"}
    assert summary["follow_up"]["note"] == SUMMARY["follow_up"] and summary["media"]["inbound_frames"] > 0
    facts = asked[4].body["messages"][0]["content"]
    facts = facts if isinstance(facts, str) else facts[0]["text"]
    assert "log_note" in facts and "caller: I'd like to leave a message for Sam." in facts


def _check_no_secret_leaked(caplog, tmp_path: Path, conf, tenant_id: str, call_id: str) -> None:
    database = Path(conf.database.url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    config = conf.base_dir / "cli-config.yaml"  # beside the master key and keyring the runtime used
    config.write_text(yaml.safe_dump(conf.model_dump(mode="json", exclude={"base_dir"})))
    runner = CliRunner()
    outputs = []
    for args in (["calls", "show", call_id, "--events", "--json"], ["credential", "list", "--tenant", tenant_id],
                 ["credential", "show", "anthropic", "--tenant", tenant_id, "--json"],
                 ["config", "show"], ["doctor", "--tenant", tenant_id, "--json"]):
        result = runner.invoke(cli_app, ["--config", str(config), *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        outputs.append(result.output)
    assert outputs[0].lstrip().startswith("{"), outputs[0][:2000]
    assert json.loads(outputs[0])["id"] == call_id
    logged = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    assert len(stored) > 10_000 and len(logged) > 1_000  # something was scanned
    for secret in SECRETS:
        assert secret not in logged, f"{secret[:6]}... in the logs"
        assert secret.encode() not in stored, f"{secret[:6]}... in the database files"
        for args, out in zip(("calls show", "credential list", "credential show", "config show", "doctor"), outputs,
                             strict=True):
            assert secret not in out, f"{secret[:6]}... in `voicectl {args}`"
