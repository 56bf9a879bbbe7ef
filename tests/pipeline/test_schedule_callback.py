"""schedule_callback and the call's record, through the conversation engine (typed chats: the same
engine, brain and tools as a phone call, no audio), on both backends: the tool's bounded
arguments, the task it makes, the call's outcome, summary and engine columns; with Claude (a local
Anthropic Messages server) as the brain: a refused key fails over to the rules brain, and the
summary records the engines really used and why no model wrote it; with a working key the model
writes the summary after the call."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from peers.anthropic_server import AnthropicServer, text_reply
from runtime.calls.routing import stored_config
from runtime.control.pagination import PageRequest
from runtime.control.schemas import AgentCreate, CredentialSet, NumberCreate, TenantCreate
from runtime.ids import new_id
from runtime.pipeline.call_analysis import SYSTEM, parse_answer
from runtime.pipeline.text_chat import text_chat
from runtime.providers.base import ToolCall
from runtime.store.tables import ALL_TENANTS
from runtime.tools.base import ToolContext
from runtime.tools.toolbox import CallToolBox
from tests.api.support import with_overrides
from tests.calls.support import insert_call

NUMBER = "+15550104343"
CALLER = "+15550123456"
RULES: dict[str, Any] = {
    "slots": {"time": {"type": "time"}, "date": {"type": "date"}},
    "intents": [
        {"name": "callback", "keywords": ["call me back", "call back"], "tool": "schedule_callback",
         "arguments": {"reason": "the caller asked for a call back", "date": "{date}", "time": "{time}"},
         "results": [{"reply": "Sure, we will call you back."}],
         "on_error": {"reply": "Sorry, I could not put you on the list."}},
        {"name": "goodbye", "keywords": ["bye"], "reply": "Goodbye!", "tool": "end_call", "on_error": {}},
    ],
}


async def _tenant(control, **agent: Any) -> tuple[str, str]:
    tenant = await control.tenants.create(TenantCreate(name=new_id("t")))
    made = await control.agents.create(tenant.id, AgentCreate(
        name="desk", system_prompt="You take call backs.", greeting="Hello, desk.",
        tools=["schedule_callback", "end_call"], rules=RULES, **agent))
    await control.numbers.add(tenant.id, NumberCreate(e164=NUMBER, provider="twilio", agent_id=made.id))
    return tenant.id, made.id


async def _call(control, settings, lines: list[str]) -> tuple[dict, list[dict]]:
    call_id = await text_chat(control, settings, NUMBER, lines, from_number=CALLER)
    row = await control.store.voice_calls.get(call_id, tenant_id=ALL_TENANTS)
    events, _ = await control.store.call_events.list(tenant_id=row["tenant_id"], equals={"call_id": call_id},
                                                     limit=500)
    return row, events


async def test_the_tool_takes_only_bounded_arguments_and_makes_one_task_per_number(control) -> None:
    tenant_id, agent_id = await _tenant(control)
    call_id = await insert_call(control, tenant_id)
    row = await control.store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=1)

    emitted: list[Any] = []

    async def emit(payload, batch=None):
        emitted.append(payload)
        if batch is not None:
            await batch.commit()

    moment = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    box = CallToolBox.for_call(stored_config(row), store=control.store, emit=emit, callbacks=control.callbacks,
                               clock=lambda: moment)
    ctx = ToolContext(tenant_id=tenant_id, call_id=call_id, agent_id=agent_id, caller=CALLER)

    async def run(**arguments: Any) -> dict:
        result = await box.call(ToolCall(new_id("t"), "schedule_callback", arguments), ctx)
        return result.content if isinstance(result.content, dict) else {"raw": result.content}

    refused = [
        ({}, "reason is required"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "x", "phone": "call me on my mobile"}, "phone"),
        ({"reason": "x", "date": "next week"}, "date"),
        ({"reason": "x", "time": "25:00"}, "time"),
        ({"reason": "x", "sneaky": True}, "not an argument"),
        ({"reason": "x", "date": "2030-05-31", "time": "09:00"}, "already passed"),
        ({"reason": "x", "date": "2031-06-01"}, "90 days"),
        ({"reason": "x", "phone": "+1 555"}, "phone"),
    ]
    for arguments, word in refused:
        answer = await run(**arguments)
        assert answer.get("status") == "error" and word in answer["error"], (arguments, answer)
    assert (await control.callbacks.list(tenant_id, PageRequest())).total == 0
    made = await run(reason="about the party", date="2030-06-02", time="18:30")
    assert made["status"] == "scheduled" and made["call_back_at"] == "2030-06-02 18:30" and made["number"] == CALLER
    again = await run(reason="again")
    assert again["callback_id"] == made["callback_id"] and again["already_on_the_list"] is True
    other = await run(reason="for my wife", phone="+1 (555) 012-9999")
    assert other["number"] == "+15550129999" and other["already_on_the_list"] is False and "call_back_by" in other
    capped = await run(reason="a fourth")
    assert capped["status"] == "error" and "at most 3" in capped["error"]
    task = await control.callbacks.get(tenant_id, made["callback_id"])
    assert (task["call_id"], task["agent_id"], task["source"], task["reason"]) == (
        call_id, agent_id, "tool", "about the party")
    assert [p.name for p in emitted].count("schedule_callback") == len(refused) + 4  # every call is a tool.called


async def test_a_chat_that_asks_for_a_call_back_is_recorded_with_its_task(control, settings) -> None:
    tenant_id, agent_id = await _tenant(control)
    row, events = await _call(control, settings, ["Please call me back tomorrow at 10 am.", "Bye."])
    tomorrow = date.today() + timedelta(days=1)
    assert (row["status"], row["end_reason"], row["outcome"]) == ("ended", "agent_ended", "callback_scheduled"), row
    tasks = (await control.callbacks.list(tenant_id, PageRequest())).items
    assert len(tasks) == 1
    task = tasks[0]
    assert (task["number"], task["source"], task["call_id"], task["agent_id"], task["status"]) == (
        CALLER, "tool", row["id"], agent_id, "scheduled")
    assert task["scheduled_at"] == f"{tomorrow.isoformat()}T10:00:00.000000Z"
    summary = row["summary"]
    assert summary["intent"] == "callback" and summary["outcome"] == "callback_scheduled"
    assert summary["entities"] == {"date": tomorrow.isoformat(), "time": "10:00", "callback_id": task["id"]}
    assert summary["follow_up"] == {"needed": True, "callback_id": task["id"], "note": task["reason"]}
    assert summary["sentiment"] is None and summary["analysis"] == {"by": "rules", "status": "done"}
    assert "outcome callback_scheduled" in summary["text"] and "schedule_callback" in summary["text"]
    assert (row["stt_provider"], row["llm_provider"], row["llm_model"], row["tts_provider"], row["tts_voice"]) == (
        "text", "rules", None, "text", None)
    assert row["escalated_to"] is None
    created = [e for e in (await control.store.call_events.list(tenant_id=tenant_id,
                                                                equals={"topic": "callback.created"}))[0]]
    assert [e["payload"]["callback_id"] for e in created] == [task["id"]]
    tools = (await control.calls.tool_calls(tenant_id, row["id"], PageRequest())).items
    assert [(t["name"], t["status"]) for t in tools] == [("schedule_callback", "ok"), ("end_call", "ok")]


async def test_a_refused_llm_key_fails_over_and_the_record_says_which_engine_answered(control, settings) -> None:
    async with AnthropicServer(api_key="the-right-key") as claude:
        conf = with_overrides(settings, providers={"anthropic": {"base_url": claude.base_url}})
        tenant_id, _ = await _tenant(control, llm={"provider": "anthropic", "fallback": ["rules"]})
        await control.credentials.set(tenant_id, "anthropic", CredentialSet(secret="a-wrong-key"))
        row, events = await _call(control, conf, ["Please call me back.", "Bye."])
    switched = [e["payload"] for e in events if e["topic"] == "provider.failed_over"]
    assert switched and switched[0]["modality"] == "llm" and switched[0]["to_provider"] == "rules", switched
    assert (row["llm_provider"], row["llm_model"], row["outcome"]) == ("rules", None, "callback_scheduled"), row
    analysis = row["summary"]["analysis"]
    assert (analysis["by"], analysis["status"], analysis["provider"]) == ("llm", "failed", "anthropic"), analysis
    assert "anthropic" in analysis["error"] and "a-wrong-key" not in json.dumps(row)
    assert row["summary"]["intent"] == "callback"  # the rules summary stays


async def test_with_a_working_model_the_summary_is_written_after_the_call(control, settings) -> None:
    written = {"text": "The caller asked to be called back tomorrow morning.", "intent": "Callback request",
               "entities": {"time": "10:00", "nested": {"a": 1}}, "sentiment": "Positive",
               "follow_up": "Call back tomorrow at 10."}
    async with AnthropicServer(api_key="the-key") as claude:
        claude.push(text_reply("Sure, I will put you on the list."), text_reply("Goodbye!"),
                    text_reply("Here it is: " + json.dumps(written)))
        conf = with_overrides(settings, providers={"anthropic": {"base_url": claude.base_url}})
        tenant_id, _ = await _tenant(control, llm={"provider": "anthropic"})
        await control.credentials.set(tenant_id, "anthropic", CredentialSet(secret="the-key"))
        row, _ = await _call(control, conf, ["Can you call me back tomorrow at 10?", "Thanks, bye."])
        asked = claude.message_requests
    assert len(asked) == 3, [r.body for r in asked]
    analysis_request = asked[-1].body
    system = analysis_request["system"]
    assert (system if isinstance(system, str) else system[0]["text"]) == SYSTEM
    facts = analysis_request["messages"][0]["content"]
    facts = facts if isinstance(facts, str) else facts[0]["text"]
    assert "caller: Can you call me back tomorrow at 10?" in facts and "Outcome: completed" in facts
    assert analysis_request["max_tokens"] == settings.analysis.max_tokens and "tools" not in analysis_request
    summary = row["summary"]
    assert summary["text"] == written["text"] and summary["intent"] == "callback_request"
    assert summary["sentiment"] == "positive" and summary["entities"] == {"time": "10:00", "nested": '{"a": 1}'}
    assert summary["follow_up"] == {"needed": True, "callback_id": None, "note": "Call back tomorrow at 10."}
    assert summary["analysis"] == {"by": "llm", "status": "done", "provider": "anthropic"}
    assert (row["llm_provider"], row["llm_model"]) == ("anthropic", conf.providers.anthropic.model)


def test_what_a_model_answers_is_checked_field_by_field() -> None:
    found = parse_answer('```json\n{"text": "' + "x" * 5000 + '", "intent": "Book a TABLE!", "sentiment": "angry",'
                         ' "entities": ' + json.dumps({f"k{n}": n for n in range(50)}) + ', "follow_up": "null"}\n```')
    assert len(found["text"]) == 1000 and found["intent"] == "book_a_table" and found["sentiment"] is None
    assert len(found["entities"]) == 20 and found["follow_up"] is None
    for bad in ("no json here", "[1, 2]", '{"text": '):
        try:
            parse_answer(bad)
        except Exception as exc:  # noqa: BLE001 - the type is the point
            assert type(exc).__name__ == "AnalysisFailed"
        else:
            raise AssertionError(bad)


async def test_an_after_hours_caller_is_queued_for_the_next_opening_when_the_version_says_so(control,
                                                                                            settings) -> None:
    today = datetime.now(UTC)
    closed_today = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[today.weekday()]
    schedule = {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if day != closed_today}
    tenant_id, _ = await _tenant(control, hours={"schedule": schedule},
                                 after_hours={"greeting": "We are closed.", "callback": True})
    row, _ = await _call(control, settings, ["Hello?", "Bye."])
    assert row["metadata"] == {"after_hours": True} and row["outcome"] == "completed"
    task = (await control.callbacks.list(tenant_id, PageRequest())).items[0]
    tomorrow = (today + timedelta(days=1)).date()
    assert (task["source"], task["number"], task["call_id"], task["status"]) == ("after_hours", CALLER, row["id"],
                                                                               "scheduled")
    assert task["scheduled_at"] == f"{tomorrow.isoformat()}T09:00:00.000000Z" and task["reason"] == "called after hours"
    assert row["summary"]["follow_up"]["callback_id"] == task["id"]
    # Without the version's say-so, no task.
    quiet = await control.tenants.create(TenantCreate(name=new_id("t")))
    made = await control.agents.create(quiet.id, AgentCreate(
        name="desk", system_prompt="p", rules=RULES, tools=["end_call"], hours={"schedule": schedule}))
    await control.numbers.add(quiet.id, NumberCreate(e164="+15550104344", provider="twilio", agent_id=made.id))
    await text_chat(control, settings, "+15550104344", ["Hello?", "Bye."], from_number=CALLER)
    assert (await control.callbacks.list(quiet.id, PageRequest())).total == 0
