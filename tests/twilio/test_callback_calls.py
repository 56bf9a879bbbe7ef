"""Callback tasks against the local Twilio peer (tests/twilio/calls_peer.py), on both backends: a
task the schedule_callback tool made is placed as an outbound call, talked through and closed;
the runtime's scheduler fires callback.overdue once and auto-dials a due task (a busy line puts it
back for later); inbound calls that fail or that the caller leaves before the agent spoke put the
caller on the queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from runtime.api.appkeys import SETTINGS
from runtime.ids import iso
from runtime.pipeline.text_chat import text_chat
from runtime.telephony.callbacks import CALLBACK_JOB
from tests.twilio.calls_peer import Callee
from tests.twilio.outbound_support import CALLEE, final, speech, transcript, until
from tests.twilio.support import ACCOUNT_SID

WORLD_OVERRIDES = {"callbacks": {"check_interval_s": 1}}  # the scheduler ticks every second here
DESK = "+15550107001"
RULES: dict[str, Any] = {
    "intents": [
        {"name": "callback", "keywords": ["call me back"], "tool": "schedule_callback",
         "arguments": {"reason": "a table for Friday"}, "results": [{"reply": "Sure, we will call you back."}]},
        {"name": "goodbye", "keywords": ["bye", "goodbye"], "reply": "Goodbye!", "tool": "end_call", "on_error": {}},
    ],
}


async def _desk(world, **agent: Any) -> str:
    """An agent that takes call backs and calls back, on its own number."""
    status, made, _ = await world.api.call("POST", "/api/v1/agents", world.key, json={
        "name": "callbacks", "system_prompt": "You call people back.", "tools": ["schedule_callback", "end_call"],
        "greeting": "Hi, the front desk calling you back about {{callback_reason}}.", "rules": RULES, **agent})
    assert status == 201, made
    status, body, _ = await world.api.call("POST", "/api/v1/numbers", world.api.admin_key, tenant_id=world.tenant_id,
                                           json={"e164": DESK, "provider": "twilio", "agent_id": made["id"]})
    assert status == 201, body
    return made["id"]


async def _topics(world, topic: str) -> list[dict]:
    rows, _ = await world.api.control.store.call_events.list(tenant_id=world.tenant_id, equals={"topic": topic},
                                                            limit=100)
    return [r["payload"] for r in rows]


async def test_a_callback_the_tool_made_is_placed_talked_through_and_closed(world) -> None:
    agent_id = await _desk(world, voicemail_message="Hi, the front desk calling you back: please call us.")
    plane, settings = world.api.control, world.api.app[SETTINGS]
    chat_id = await text_chat(plane, settings, DESK, ["Could you call me back please?", "Bye."], from_number=CALLEE)
    tasks = (await world.api.call("GET", "/api/v1/callbacks", world.key))[1]["items"]
    assert len(tasks) == 1 and (tasks[0]["number"], tasks[0]["call_id"], tasks[0]["source"]) == (CALLEE, chat_id, "tool")
    task = tasks[0]
    world.rest.calls.callees[CALLEE] = Callee("human", [await speech("Hello?"), await speech("Goodbye.")],
                                              hang_up=False)  # the agent says goodbye and hangs up
    # The agent greets once it knows a person answered (as calls placed with voicemail handling do).
    status, placed, _ = await world.api.call("POST", f"/api/v1/callbacks/{task['id']}/place", world.key,
                                             json={"machine_detection": "voicemail"})
    assert status == 201, placed
    assert placed["status"] == "queued" and placed["callback"]["status"] == "in_progress"
    assert (placed["callback"]["attempts"], placed["callback"]["last_call_id"]) == (1, placed["call_id"])
    status, again, _ = await world.api.call("POST", f"/api/v1/callbacks/{task['id']}/place", world.key, json={})
    assert status == 409 and again["details"]["status"] == "in_progress"  # one call at a time
    row = await final(world, placed["call_id"], 60)
    assert (row["status"], row["direction"], row["from_number"], row["to_number"], row["agent_id"]) == (
        "ended", "outbound", DESK, CALLEE, agent_id), row
    variables = row["variables"]
    assert (variables["callback_reason"], variables["callback_id"], variables["original_call_id"]) == (
        "a table for Friday", task["id"], chat_id)
    lines = await transcript(world, placed["call_id"])
    agent = [text for role, text in lines if role == "agent"]
    assert agent[0] == "Hi, the front desk calling you back about a table for Friday.", lines
    assert world.rest.calls.created[-1].form["To"] == CALLEE and world.rest.calls.created[-1].form["From"] == DESK

    async def closed() -> bool:
        return (await world.api.call("GET", f"/api/v1/callbacks/{task['id']}", world.key))[1]["status"] == "done"
    await until(closed, 20)
    done = (await world.api.call("GET", f"/api/v1/callbacks/{task['id']}", world.key))[1]
    assert (done["disposition"], done["attempts"], done["last_call_id"]) == ("completed", 1, placed["call_id"])
    assert await _topics(world, "callback.completed") == [{
        "callback_id": task["id"], "call_id": chat_id, "status": "done", "disposition": "completed", "attempts": 1,
        "last_call_id": placed["call_id"]}]
    record = (await world.api.call("GET", f"/api/v1/calls/{placed['call_id']}", world.key))[1]
    assert record["outcome"] == "completed" and record["summary"]["outcome"] == "completed"
    assert (record["stt_provider"], record["llm_provider"], record["tts_provider"]) == ("local", "rules", "local")
    assert record["tts_voice"]  # the packaged piper voice's name


async def test_the_scheduler_fires_overdue_once_and_auto_dials_a_due_task(world) -> None:
    plane = world.api.control
    world.api.app[CALLBACK_JOB].base_url = world.api.base_url  # the test's runtime is not on server.port
    late, _ = await plane.callbacks.create(world.tenant_id, number="+15550123401", reason="late", source="tool")
    await plane.store.callback_tasks.update(late["id"], {"due_at": iso(datetime.now(UTC) - timedelta(minutes=1))},
                                            tenant_id=world.tenant_id)

    async def overdue() -> bool:
        return bool(await _topics(world, "callback.overdue"))
    await until(overdue, 10)
    await asyncio.sleep(2.5)  # two more ticks
    assert [e["callback_id"] for e in await _topics(world, "callback.overdue")] == [late["id"]]
    # Auto-dial: off by default, so a due scheduled task waits; on, it is dialled at the next tick.
    world.rest.calls.callees["+15550123402"] = Callee("busy")
    due, _ = await plane.callbacks.create(world.tenant_id, number="+15550123402", reason="due", source="tool",
                                          scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    await plane.store.callback_tasks.update(due["id"], {"scheduled_at": iso(datetime.now(UTC))},
                                            tenant_id=world.tenant_id)
    await asyncio.sleep(1.5)
    assert world.rest.calls.created == []
    status, _, _ = await world.api.call("PATCH", f"/api/v1/tenants/{world.tenant_id}", world.api.admin_key,
                                        json={"callback_auto_dial": True})
    assert status == 200

    async def tried() -> bool:
        row = await plane.store.callback_tasks.get(due["id"], tenant_id=world.tenant_id)
        return row["attempts"] == 1 and row["status"] == "scheduled"
    await until(tried, 15)
    row = await plane.store.callback_tasks.get(due["id"], tenant_id=world.tenant_id)
    assert row["disposition"] == "no_answer" and row["scheduled_at"] > iso(datetime.now(UTC) + timedelta(minutes=29))
    call = (await final(world, row["last_call_id"]))
    assert (call["status"], call["end_reason"], call["outcome"]) == ("failed", "busy", "no_answer"), call
    assert len(world.rest.calls.created) == 1 and world.rest.calls.created[0].form["From"] == "+15550107000"


async def test_failed_and_abandoned_inbound_calls_put_the_caller_on_the_queue(world) -> None:
    await _desk(world, greeting=None)  # says nothing until spoken to
    caller = world.caller()
    # Twilio completes the call before its media stream started: failed.
    failed_sid, _ = await caller.dial(world.number, from_="+15550002222")
    assert await caller.status(failed_sid, "completed", to=world.number, from_="+15550002222") == 204
    failed = await world.final_call(failed_sid)
    assert (failed["status"], failed["end_reason"]) == ("failed", "stream_not_started")
    # The caller hangs up before the agent said a word: abandoned.
    abandoned_sid, answer = await caller.dial(DESK, from_="+15550003333")
    leg = await caller.open_stream(abandoned_sid, answer)
    await leg.stream([b"\x7f" * 160] * 10)
    await leg.stop(ACCOUNT_SID, abandoned_sid)
    await leg.wait_closed()
    abandoned = await world.final_call(abandoned_sid)
    assert abandoned["status"] == "ended"

    async def queued() -> bool:
        return (await world.api.call("GET", "/api/v1/callbacks", world.key))[1]["total"] == 2
    await until(queued, 10)
    tasks = {t["source"]: t for t in (await world.api.call("GET", "/api/v1/callbacks", world.key))[1]["items"]}
    assert (tasks["failed_call"]["number"], tasks["failed_call"]["call_id"]) == ("+15550002222", failed["id"])
    assert tasks["failed_call"]["reason"] == "the call failed (stream_not_started)"
    assert (tasks["abandoned_call"]["number"], tasks["abandoned_call"]["call_id"]) == ("+15550003333", abandoned["id"])
    for row, source in ((failed, "failed_call"), (abandoned, "abandoned_call")):
        record = (await world.api.call("GET", f"/api/v1/calls/{row['id']}", world.key))[1]
        assert record["outcome"] == ("failed" if source == "failed_call" else "abandoned"), record
        assert record["summary"]["follow_up"]["callback_id"] == tasks[source]["id"]
    assert sorted(e["source"] for e in await _topics(world, "callback.created")) == ["abandoned_call", "failed_call"]
