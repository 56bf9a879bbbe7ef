"""The rules brain's tolerant keywords: speech-recognition errors still reach the caller's intent,
near misses do not reach another one, and a script can turn the tolerance off or widen it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from runtime.control.schemas import RulesConfig
from runtime.providers.llm.rules import DEMO_BOOKING_RULES, Script
from runtime.providers.llm.rules_fuzzy import MAX_WORDS, TolerantKeywords, default_budget
from runtime.providers.llm.rules_slots import normalize
from tests.pipeline.test_rules_brain import demo_chat

# A booking desk with a cancel intent and a few short-keyword neighbours, as a tenant would write it.
DESK: dict[str, Any] = {
    "slots": {"party_size": {"type": "count"}, "time": {"type": "time"}},
    "intents": [
        {"name": "transfer", "keywords": ["operator", "a person", "manager"], "reply": "Putting you through."},
        {"name": "cancel", "keywords": ["cancel my booking", "cancel", "cancellation"], "reply": "Cancelled."},
        {"name": "book", "keywords": ["book", "booking", "table", "reservation", "reserve"], "reply": "Booked."},
        {"name": "order", "keywords": ["order", "takeaway"], "reply": "Ordering."},
        {"name": "hours", "keywords": ["opening hours", "hours", "open"], "reply": "Five to eleven."},
        {"name": "menu", "keywords": ["menu", "vegetarian"], "reply": "Pizza and pasta."},
    ],
    "fallback": "Sorry?",
}



def _first_intent(script: Script, said: str) -> str | None:
    from runtime.providers.base import Message

    return script.respond([Message("user", said)], frozenset()).intent


@pytest.mark.parametrize(("said", "intent"), [
    # ASR-style errors from synthetic telephony callers: one sound wrong, swapped or run together.
    ("I'd like to book a tabel", "book"),
    ("can I make a reservashun", "book"),
    ("a reservaton for friday please", "book"),
    ("council my booking please", "cancel"),
    ("cancel my booking", "cancel"),
    ("I want a cancelation", "cancel"),
    ("I'd like to reserv", "book"),
    ("can I get the opperator", "transfer"),
    ("let me speak to the manajer", "transfer"),
    ("what are your openning hours", "hours"),
    ("is there anything vegeterian", "menu"),
    ("I want a take away", None),  # two words for a one-word keyword: not the same window, left alone
])
def test_misheard_keywords_reach_their_intent(said: str, intent: str | None) -> None:
    assert _first_intent(Script(RulesConfig.model_validate(DESK)), said) == intent


@pytest.mark.parametrize("said", [
    "is that yours",  # one letter from "hours", another sound
    "I am older now",  # one letter from "order"
    "look at that",  # "book" is too short for any tolerance
    "I want a tablet",
    "we have cable",
    "the console is broken",  # sounds like "cancel" but four letters away
    "my resident card",
    "the weather is nice",
    "eight eight eight five",
])
def test_near_misses_do_not_reach_another_intent(said: str) -> None:
    assert _first_intent(Script(RulesConfig.model_validate(DESK)), said) is None


@pytest.mark.parametrize("said", ["what is all that", "is that yours", "I am older", "we had a fine time",
                                  "my son is at home", "that is tall", "the tablet", "it's a good boy"])
def test_the_demo_script_is_not_steered_by_near_misses(said: str) -> None:
    # Nothing here is a goodbye, a transfer, a booking or an order: the demo answers with its fallback.
    assert _first_intent(Script(RulesConfig.model_validate(DEMO_BOOKING_RULES)), said) is None


def test_the_script_order_decides_between_written_and_misheard_keywords() -> None:
    desk = Script(RulesConfig.model_validate(DESK))
    # "booking" is written, "cancel my booking" misheard: cancel comes first in the script.
    assert _first_intent(desk, "council my booking please") == "cancel"
    assert _first_intent(desk, "are you open, or is it a cancelation") == "cancel"
    assert _first_intent(desk, "are you open, or is it a reservashun") == "book"
    tolerant = TolerantKeywords([(["preservation"], None), (["reservation"], None)])
    assert tolerant.first("a reservashun") == 1  # sounds like the second only
    assert tolerant.first("preservatoin") == 0
    assert tolerant.first("nothing like it") is None


def test_exact_turns_the_tolerance_off_and_fuzzy_sets_the_budget() -> None:
    exact = {**DESK, "intents": [{**i, "exact": True} if i["name"] == "book" else i for i in DESK["intents"]]}
    assert _first_intent(Script(RulesConfig.model_validate(exact)), "I'd like to book a tabel") == "book"  # "book"
    assert _first_intent(Script(RulesConfig.model_validate(exact)), "a reservashun please") is None
    zero = {**DESK, "intents": [{**i, "fuzzy": 0} for i in DESK["intents"]]}
    assert _first_intent(Script(RulesConfig.model_validate(zero)), "council my booking") == "book"  # as written
    wide = {**DESK, "intents": [{"name": "menu", "keywords": ["pizza"], "fuzzy": 2, "reply": "Yes."}]}
    assert _first_intent(Script(RulesConfig.model_validate(wide)), "do you have piza") == "menu"
    assert _first_intent(Script(RulesConfig.model_validate(DESK)), "do you have piza") is None  # no keyword "pizza"
    assert [default_budget(k) for k in ("book", "table", "booking", "reservation")] == [0, 1, 1, 2]


def test_the_budget_is_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RulesConfig.model_validate({"intents": [{"name": "x", "keywords": ["a"], "fuzzy": 9}]})


def test_the_match_is_bounded_on_long_turns() -> None:
    keywords = [[f"keyword{chr(97 + i)}{chr(97 + j)}" for j in range(26)] for i in range(8)]
    tolerant = TolerantKeywords([(k, None) for k in keywords])
    turn = " ".join(f"keywrd{i}" for i in range(5000))
    started = time.perf_counter()
    assert tolerant.first(normalize(turn)) is None
    assert time.perf_counter() - started < 0.5
    long_words = " ".join(["keywordaa"] * 10 + ["x"] * (MAX_WORDS - 10) + ["keywordbx"])
    assert tolerant.first(long_words) == 0  # within the first MAX_WORDS words
    assert tolerant.first(" ".join(["x"] * MAX_WORDS + ["keywordbx"])) is None  # past them: not looked at


async def test_a_misheard_booking_call_books_the_right_table() -> None:
    chat = demo_chat()
    ask = await chat.say("I'd like to book a tabel for to people at seven")
    (check,) = ask.calls
    assert check.name == "check_availability"
    assert check.arguments == {"date": "2025-06-04", "time": "19:00", "party_size": 2}
    chat = demo_chat()
    ask = await chat.say("a reservashun for for people at eight")
    assert ask.calls and ask.calls[0].arguments == {"date": "2025-06-04", "time": "20:00", "party_size": 4}
    assert (await demo_chat().say("Can I talk to the opperator")).calls[0].name == "transfer_to_human"
    assert DEMO_BOOKING_RULES["intents"]  # the demo's own script gets the tolerance by default


@pytest.mark.parametrize(("heard", "party", "hhmm"), [
    # What whisper wrote for the caller set's tune half (bench/caller_set.py), over a clean line.
    ("I need a reservation for for tomorrow at 6.30", 4, "18:30"),  # "for four"
    ("Can we book a table for ten, seven on Sunday?", 10, "19:00"),  # "at" heard as a comma
    ("A table for 4.6, 45, please.", 4, "18:45"),  # "for four at six forty five"
    ("I'd like a reservation for nine people at heaven.", 9, "19:00"),  # "at seven"
    ("We are for, can I book at 7?", 4, "19:00"),  # "we are four"
    ("I need a renovation for four tomorrow, six thirty.", 4, "18:30"),  # the "at" lost to a comma
])
def test_misheard_numbers_still_book(heard: str, party: int, hhmm: str) -> None:
    from runtime.providers.base import Message

    script = Script(RulesConfig.model_validate(DEMO_BOOKING_RULES))
    action = script.respond([Message("user", heard)], frozenset({"check_availability"}))
    assert action.tool == "check_availability"
    assert (action.arguments["party_size"], action.arguments["time"]) == (party, hhmm)


@pytest.mark.parametrize(("said", "slots"), [
    ("a table for twenty seven on sunday", {"party_size": 27}),  # a count, not 20 at 7
    ("a table for two tonight", {"party_size": 2}),
    ("we are for the terrace", {}),
    ("six thirty people", {"party_size": 30}),  # a reading of the clock is never a count's
    ("a table for six thirty", {"time": "18:30"}),
    ("my number is five five five one two three four", {}),  # digits in a row are no clock reading
])
def test_the_misheard_number_readings_stay_narrow(said: str, slots: dict[str, Any]) -> None:
    from datetime import date

    from runtime.providers.llm.rules_slots import extract

    config = RulesConfig.model_validate(DEMO_BOOKING_RULES)
    found = extract({k: v for k, v in config.slots.items() if k in ("party_size", "time")}, said,
                    date(2026, 6, 3), None)
    assert found == slots


def test_a_request_with_every_required_slot_but_no_keyword_is_that_intent() -> None:
    from runtime.providers.base import Message

    script = Script(RulesConfig.model_validate(DEMO_BOOKING_RULES))
    tools = frozenset({"check_availability"})
    # "book" heard as "look", "table" as "payable": the count and the time still make it a booking.
    for heard, party, hhmm in (("We'd like to look for five people at six o'clock.", 5, "18:00"),
                               ("A payable for for at 6 45, clean.", 4, "18:45")):
        action = script.respond([Message("user", heard)], tools)
        assert action.intent == "book" and action.arguments["party_size"] == party and action.arguments["time"] == hhmm
    # One slot alone is not enough to guess an intent.
    assert script.respond([Message("user", "for five people please")], tools).intent is None
