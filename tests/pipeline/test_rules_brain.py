"""The rules brain: slot parsers (table-driven) and conversations driven through LanguageModel.stream
with real history objects, tool results scripted per test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from runtime.control.schemas import AgentConfig, RulesConfig, RuleSlot
from runtime.providers.base import (
    LlmDone,
    LlmRequest,
    Message,
    TextDelta,
    ToolCall,
    ToolCallRequest,
    ToolSpec,
)
from runtime.providers.llm.rules import BASIC_RULES, DEMO_BOOKING_RULES, RulesBrain, parse_result
from runtime.providers.llm.rules_slots import (
    date_spoken,
    extract,
    normalize,
    number_words,
    time_spoken,
    word_number,
)

TODAY = date(2025, 6, 4)  # a Wednesday
NOON = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)
DEMO = RulesConfig.model_validate(DEMO_BOOKING_RULES)
ALL_TOOLS = ("end_call", "transfer_to_human", "log_note", "check_availability", "create_booking", "create_order")


# Parsers


@pytest.mark.parametrize(("said", "expected"), [
    ("I'd like to book a table for two at seven", {"time": "19:00", "party_size": 2}),
    ("a table for 4 people tomorrow at 7:30pm", {"date": "2025-06-05", "time": "19:30", "party_size": 4}),
    ("Can we come at half past seven?", {"time": "19:30"}),
    ("quarter to eight on Friday", {"date": "2025-06-06", "time": "19:45"}),
    ("twenty past six", {"time": "18:20"}),
    ("at 19:30", {"time": "19:30"}),
    ("7.15 pm please", {"time": "19:15"}),
    ("seven thirty p.m.", {"time": "19:30"}),
    ("eight o'clock", {"time": "20:00"}),
    ("11 am", {"time": "11:00"}),
    ("at noon", {"time": "12:00"}),
    ("at seven two people", {"time": "19:00", "party_size": 2}),
    ("7p.m. for 3", {"time": "19:00", "party_size": 3}),
    ("a table for two tonight", {"date": "2025-06-04", "party_size": 2}),
    ("table for two in the evening", {"party_size": 2}),
    ("there will be twenty two of us", {"party_size": 22}),
    ("party of six on saturday", {"date": "2025-06-07", "party_size": 6}),
    ("next wednesday at eight", {"date": "2025-06-11", "time": "20:00"}),
    ("wednesday at eight", {"date": "2025-06-04", "time": "20:00"}),
    ("the day after tomorrow", {"date": "2025-06-06"}),
    ("the 5th of June at noon", {"date": "2025-06-05", "time": "12:00"}),
    ("June the first", {"date": "2026-06-01"}),  # already passed this year
    ("on 2025-07-01", {"date": "2025-07-01"}),
    ("my name is anna smith and we are six", {"party_size": 6, "name": "Anna Smith"}),
    ("Hi, this is McKenzie, I'd like a table", {"name": "McKenzie"}),
    ("this is for tomorrow", {"date": "2025-06-05"}),
    ("two margheritas and a tiramisu for pickup at 6",
     {"time": "18:00", "items": [{"name": "margherita", "qty": 2}, {"name": "tiramisu", "qty": 1}]}),
    ("one garlic bread", {"items": [{"name": "garlic bread", "qty": 1}]}),
    ("what's the weather like", {}),
    ("seven", {}),  # a bare number needs the question first
    # Spanish (a version in Spanish): counts, "a las" times, mañana (not "de la mañana").
    ("quiero reservar una mesa para cuatro personas a las nueve, mañana",
     {"date": "2025-06-05", "time": "21:00", "party_size": 4}),
    ("somos dos, a las 8 y media", {"time": "20:30", "party_size": 2}),
    ("a la una de la tarde", {"time": "13:00"}),
    ("a las diez de la mañana", {"time": "10:00"}),
])
def test_extract(said, expected):
    assert extract(DEMO.slots, said, TODAY, None) == expected


@pytest.mark.parametrize(("asked", "said", "expected"), [
    ("time", "seven", {"time": "19:00"}),
    ("time", "how about eight thirty", {"time": "20:30"}),
    ("time", "9", {"time": "21:00"}),
    ("party_size", "two", {"party_size": 2}),
    ("party_size", "just me", {"party_size": 1}),
    ("name", "It's Bob.", {"name": "Bob"}),
    ("name", "sure, mary jane", {"name": "Mary Jane"}),
    ("name", "no", {}),
])
def test_extract_answers_to_a_question(asked, said, expected):
    assert extract(DEMO.slots, said, TODAY, asked) == expected


def test_pm_hours_rule_is_per_slot():
    """Default: bare 5..11 read as PM; hours outside stay as said; am/pm always wins."""
    default = {"t": RuleSlot(type="time")}
    assert extract(default, "at seven", TODAY, None) == {"t": "19:00"}
    assert extract(default, "at four", TODAY, None) == {"t": "04:00"}
    assert extract(default, "at four pm", TODAY, None) == {"t": "16:00"}
    assert extract(default, "at 7 am", TODAY, None) == {"t": "07:00"}
    assert extract(default, "at twelve", TODAY, None) == {"t": "12:00"}
    assert extract({"t": RuleSlot(type="time", pm_hours=(1, 11))}, "at four", TODAY, None) == {"t": "16:00"}


def test_text_slot_with_a_pattern():
    slots = {"ref": RuleSlot(type="text", pattern=r"reference (?:is )?([a-z0-9]{6})")}
    assert extract(slots, "my reference is K7P2Q9", TODAY, None) == {"ref": "K7P2Q9"}
    assert extract(slots, "no idea", TODAY, None) == {}


@pytest.mark.parametrize(("raw", "expected"), [
    ("Seven.", "seven"), ("7p.m.", "7 pm"), ("twenty-two", "twenty two"), ("[DTMF 0]", "[dtmf 0]"),
    ("It\u2019s 7.30, OK?", "it's 7:30 ok"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_spoken_forms():
    assert [word_number(w) for w in ("7", "seven", "twenty two", "thirty", "lots")] == [7, 7, 22, 30, None]
    assert [number_words(n) for n in (2, 15, 40, 42, 120)] == ["two", "fifteen", "forty", "forty two", "120"]
    assert [time_spoken(t) for t in ("19:00", "19:30", "12:00", "00:15")] == ["7 PM", "7:30 PM", "12 PM",
                                                                            "12:15 AM"]
    assert date_spoken("2025-06-04", TODAY) == "today"
    assert date_spoken("2025-06-05", TODAY) == "tomorrow"
    assert date_spoken("2025-06-07", TODAY) == "on Saturday"
    assert date_spoken("2025-06-20", TODAY) == "on Friday, June 20"
    assert date_spoken("2026-01-02", TODAY) == "on Friday, January 2, 2026"


def test_parse_result_reads_errors_in_every_shape():
    assert parse_result('{"available": true}') == ({"available": True}, False)
    assert parse_result('{"status": "error", "error": "nope"}')[1] is True
    assert parse_result('{"content": {"x": 1}, "status": "timeout"}') == ({"x": 1}, True)
    assert parse_result("not json") == ({"result": "not json"}, False)
    assert parse_result("[1, 2]") == ({"result": [1, 2]}, False)


# Conversations


@dataclass
class Turn:
    text: str
    deltas: list[str]
    calls: list[ToolCall]
    stop: str


@dataclass
class Chat:
    """Drives the brain the way the pipeline does: user turn, stream, run tool calls, stream again."""

    brain: RulesBrain
    tools: tuple[str, ...] = ALL_TOOLS
    history: list[Message] = field(default_factory=list)

    async def stream(self) -> Turn:
        request = LlmRequest("system prompt (ignored)", tuple(self.history),
                             tuple(ToolSpec(n, n) for n in self.tools))
        events = [e async for e in self.brain.stream(request)]
        assert isinstance(events[-1], LlmDone) and all(not isinstance(e, LlmDone) for e in events[:-1])
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        calls = [e.call for e in events if isinstance(e, ToolCallRequest)]
        return Turn("".join(deltas), deltas, calls, events[-1].stop_reason)

    async def say(self, text: str) -> Turn:
        self.history.append(Message("user", text))
        return await self.reply()

    async def reply(self) -> Turn:
        turn = await self.stream()
        self.history.append(Message("assistant", turn.text, tool_calls=tuple(turn.calls)))
        return turn

    async def result(self, call: ToolCall, content: dict[str, Any]) -> Turn:
        self.history.append(Message("tool", json.dumps(content), tool_call_id=call.id, name=call.name))
        return await self.reply()


def demo_chat(**kw: Any) -> Chat:
    return Chat(RulesBrain(DEMO_BOOKING_RULES, clock=lambda: NOON), **kw)


AVAILABLE = {"available": True, "date": "2025-06-04", "time": "19:00", "party_size": 2, "tables_left": 4,
             "alternatives": []}
BOOKED = {"booking_id": "bkg_1", "reference": "K7P2Q9", "date": "2025-06-04", "time": "19:00", "party_size": 2,
          "name": "+15550000001"}


async def test_booking_flow():
    chat = demo_chat()
    hello = await chat.say("Hello")
    assert hello.text.startswith("Hello! I can book a table") and hello.stop == "end_turn" and not hello.calls

    ask = await chat.say("I'd like to book a table for two at seven")
    assert ask.text == "Let me check." and ask.stop == "tool_use"
    (check,) = ask.calls
    assert check.name == "check_availability"
    assert check.arguments == {"date": "2025-06-04", "time": "19:00", "party_size": 2}

    offer = await chat.result(check, AVAILABLE)
    assert offer.text == "I have a table for two at 7 PM today. Shall I book it?"
    assert len(offer.deltas) > 2 and offer.stop == "end_turn"  # streamed as word groups

    book = await chat.say("yes please")
    (create,) = book.calls
    assert create.name == "create_booking" and book.stop == "tool_use"
    assert create.arguments == {"date": "2025-06-04", "time": "19:00", "party_size": 2}  # no name: left out

    done = await chat.result(create, BOOKED)
    assert done.text == ("You're all set: a table for two at 7 PM today. Your reference is K 7 P 2 Q 9. "
                         "Is there anything else I can help with?")

    bye = await chat.say("no thanks")
    assert bye.text == "Thanks for calling Trattoria Demo. Goodbye!"
    assert [c.name for c in bye.calls] == ["end_call"] and bye.stop == "tool_use"
    after = await chat.result(bye.calls[0], {"ending": True})
    assert after.text == "" and after.stop == "end_turn" and not after.calls

    ids = [c.id for m in chat.history for c in m.tool_calls]
    assert len(ids) == len(set(ids)) == 3


async def test_missing_slots_are_asked_for_in_turn():
    chat = demo_chat()
    assert (await chat.say("Can I make a reservation?")).text == "Sure. For how many people?"
    assert (await chat.say("four")).text == "And what time would you like?"
    unclear = await chat.say("hmm let me think")
    assert unclear.text == "Sorry, I didn't catch that. And what time would you like?" and not unclear.calls
    turn = await chat.say("half past seven tomorrow")
    assert turn.calls[0].arguments == {"date": "2025-06-05", "time": "19:30", "party_size": 4}


async def test_name_is_carried_to_the_booking():
    chat = demo_chat()
    await chat.say("Hi, my name is Anna")
    turn = await chat.say("a table for three at 8 pm")
    offer = await chat.result(turn.calls[0], {**AVAILABLE, "party_size": 3, "time": "20:00"})
    assert offer.text == "I have a table for three at 8 PM today. Shall I book it?"
    create = (await chat.say("yes")).calls[0]
    assert create.arguments == {"date": "2025-06-04", "time": "20:00", "party_size": 3, "name": "Anna"}


async def test_declining_then_a_new_time_checks_again():
    chat = demo_chat()
    turn = await chat.say("book a table for two at seven")
    await chat.result(turn.calls[0], AVAILABLE)
    no = await chat.say("no")
    assert no.text == "No problem. What time would suit you better?" and not no.calls
    again = await chat.say("eight")
    assert again.calls[0].arguments == {"date": "2025-06-04", "time": "20:00", "party_size": 2}


async def test_changing_a_detail_while_confirming_checks_again():
    chat = demo_chat()
    turn = await chat.say("book a table for two at seven")
    await chat.result(turn.calls[0], AVAILABLE)
    again = await chat.say("actually make it four people")
    assert again.calls[0].name == "check_availability"
    assert again.calls[0].arguments["party_size"] == 4


async def test_full_slot_offers_alternatives_and_takes_one():
    chat = demo_chat()
    turn = await chat.say("table for two at seven")
    full = await chat.result(turn.calls[0], {"available": False, "reason": "full", "alternatives": ["18:30", "19:30"],
                                             "date": "2025-06-04", "time": "19:00", "party_size": 2})
    assert full.text == "Sorry, we're full at 7 PM. I could do 6:30 PM or 7:30 PM. Would one of those work?"
    pick = await chat.say("7:30 then")
    assert pick.calls[0].arguments["time"] == "19:30"


async def test_closed_and_fully_booked_days():
    chat = demo_chat()
    turn = await chat.say("table for two at 3 am")
    closed = await chat.result(turn.calls[0], {"available": False, "reason": "closed", "alternatives": []})
    assert closed.text.startswith("Sorry, we're open from 5 PM to 11 PM")
    turn = await chat.say("at 9")
    full = await chat.result(turn.calls[0], {"available": False, "reason": "full", "alternatives": [],
                                             "date": "2025-06-04"})
    assert full.text == "Sorry, we're fully booked today. Would another day work?"
    assert (await chat.say("tomorrow")).calls[0].arguments["date"] == "2025-06-05"


@pytest.mark.parametrize("said", ["[DTMF 0]", "Can I talk to a person?", "I want to speak with the manager"])
async def test_transfer_to_a_person(said):
    chat = demo_chat()
    turn = await chat.say(said)
    assert turn.text == "" and [c.name for c in turn.calls] == ["transfer_to_human"]
    done = await chat.result(turn.calls[0], {"transferring": True})
    assert done.text == "Of course. I'm putting you through to a colleague now."


async def test_transfer_without_anyone_to_take_it():
    chat = demo_chat()
    turn = await chat.say("[DTMF 0]")
    failed = await chat.result(turn.calls[0], {"status": "error", "error": "no escalation target"})
    assert failed.text.startswith("Sorry, there's nobody available")
    bye = await chat.say("no")
    assert [c.name for c in bye.calls] == ["end_call"]


async def test_fallback_and_goodbye():
    chat = demo_chat()
    lost = await chat.say("What's the weather like on Mars?")
    assert lost.text == DEMO.fallback and not lost.calls and lost.stop == "end_turn"
    assert (await chat.say("[DTMF 5]")).text == DEMO.fallback
    bye = await chat.say("OK, goodbye")
    assert bye.text == "Thanks for calling Trattoria Demo. Goodbye!" and bye.calls[0].name == "end_call"


async def test_a_tool_the_agent_lacks_is_not_called():
    chat = demo_chat(tools=("end_call",))
    turn = await chat.say("table for two at seven")
    assert not turn.calls and turn.stop == "end_turn"
    assert turn.text == "Let me check. Sorry, I can't check the bookings right now. Please call back a little later."


async def test_pickup_order():
    chat = demo_chat()
    assert (await chat.say("I'd like to place an order")).text.startswith("What would you like?")
    turn = await chat.say("two margheritas and a lemonade")
    (call,) = turn.calls
    assert call.name == "create_order"
    assert call.arguments == {"items": [{"name": "margherita", "qty": 2}, {"name": "lemonade", "qty": 1}]}
    done = await chat.result(call, {"order_id": "ord_1", "reference": "AB12CD", "items": call.arguments["items"],
                                    "total": "25.50", "currency": "USD", "pickup_time": None})
    assert done.text == ("Thanks! That's two margheritas and one lemonade, 25.50 dollars in total. It will be "
                         "ready in about twenty minutes. Your order number is A B 1 2 C D. Anything else?")


async def test_tool_errors_get_the_intent_reply():
    chat = demo_chat()
    turn = await chat.say("table for two at seven")
    await chat.result(turn.calls[0], AVAILABLE)
    create = (await chat.say("yes")).calls[0]
    taken = await chat.result(create, {"status": "error", "error": "not booked", "alternatives": ["19:30"]})
    assert taken.text == "Sorry, that table has just been taken. I could do 7:30 PM. What time would you like?"


async def test_replay_is_deterministic_and_stateless():
    chat = demo_chat()
    turn = await chat.say("table for two at seven")
    await chat.result(turn.calls[0], AVAILABLE)
    await chat.say("yes")
    fresh = RulesBrain(DEMO_BOOKING_RULES, clock=lambda: NOON)
    request = LlmRequest("", tuple(chat.history[:-1]), tuple(ToolSpec(n, n) for n in ALL_TOOLS))
    first = [e async for e in fresh.stream(request)]
    second = [e async for e in chat.brain.stream(request)]
    assert first == second
    assert isinstance(first[0], ToolCallRequest) and first[0].call.name == "create_booking"


async def test_nothing_to_answer_after_its_own_message():
    chat = demo_chat()
    await chat.say("hello")
    turn = await chat.stream()  # the last message is the assistant's
    assert turn.text == "" and turn.stop == "end_turn"


async def test_today_is_the_tenants_day():
    late = datetime(2025, 6, 4, 23, 30, tzinfo=UTC)  # already Thursday in Berlin
    chat = Chat(RulesBrain(DEMO_BOOKING_RULES, timezone="Europe/Berlin", clock=lambda: late))
    turn = await chat.say("table for two at eight")
    assert turn.calls[0].arguments["date"] == "2025-06-05"


async def test_basic_rules_without_a_script():
    chat = Chat(RulesBrain(None))
    hello = await chat.say("hi there")
    assert "automated assistant" in hello.text
    yes = await chat.say("yes please")
    assert yes.calls[0].name == "transfer_to_human"
    assert (await chat.say("tell me a joke")).text == RulesConfig.model_validate(BASIC_RULES).fallback


# Configuration


def test_demo_rules_fit_an_agent_config():
    config = AgentConfig(system_prompt="Luigi's", tools=list(ALL_TOOLS), rules=DEMO_BOOKING_RULES,
                         escalation_target="+15550109999", dtmf_tools={"0": "transfer_to_human"})
    dumped = config.model_dump()
    assert RulesConfig.model_validate(dumped["rules"]) == DEMO
    RulesBrain(dumped["rules"])  # the stored form builds a brain


@pytest.mark.parametrize(("rules", "message"), [
    ({"intents": [{"name": "a", "patterns": [r"(a)\1"]}]}, "backreference"),  # RE2 has none (linear time)
    ({"intents": [{"name": "a", "patterns": ["([unclosed"]}]}, "not a valid regular expression"),
    ({"intents": [{"name": "a", "requires": ["time"]}]}, "unknown slot"),
    ({"intents": [{"name": "a", "confirm": {"yes": "b"}}]}, "unknown intent"),
    ({"intents": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"intents": [{"name": "has space"}]}, "names are letters"),
    ({"slots": {"t": {"type": "time", "pm_hours": [0, 13]}}}, "pm_hours"),
])
def test_bad_scripts_are_refused(rules, message):
    with pytest.raises(ValidationError, match=message):
        RulesConfig.model_validate(rules)


@pytest.mark.parametrize(("dtmf", "message"), [
    ({"0": "transfer_to_human"}, "not one of this agent's tools"),
    ({"x": "end_call"}, "not a keypad key"),
])
def test_dtmf_tools_must_be_enabled_tools(dtmf, message):
    with pytest.raises(ValidationError, match=message):
        AgentConfig(system_prompt="x", tools=["end_call"], dtmf_tools=dtmf)


async def test_a_tool_run_for_a_keypad_digit_gets_its_intents_reply():
    """The pipeline runs dtmf_tools itself, then streams the model with the call and its result."""
    chat = demo_chat()
    call = ToolCall("dtmf_1", "transfer_to_human", {})
    chat.history.append(Message("assistant", tool_calls=(call,)))
    done = await chat.result(call, {"transferring": True})
    assert done.text == "Of course. I'm putting you through to a colleague now."
    other = ToolCall("dtmf_2", "some_http_tool", {})
    chat.history.append(Message("assistant", tool_calls=(other,)))
    assert (await chat.result(other, {"ok": True})).text == ""
