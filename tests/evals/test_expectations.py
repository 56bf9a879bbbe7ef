"""Argument matchers, expectations checked against what a call observed (per turn and per call),
and the score: the fraction of expectations met."""

from __future__ import annotations

import pytest

from runtime.evals.matchers import matches
from runtime.evals.scoring import (
    GREETING,
    TALK_OVER_TOLERANCE_MS,
    Observation,
    Said,
    ToolUse,
    TurnHeard,
    check_scenario,
    excerpt,
    score,
)
from runtime.evals.suite import load_suite


@pytest.mark.parametrize(("matcher", "arguments", "expected"), [
    (2, {"n": 2}, True),
    (2, {"n": 2.0}, True),
    (2, {"n": "2"}, False),
    (True, {"n": 1}, False),
    (None, {"n": None}, True),
    (None, {}, False),
    ("19:00", {"n": "19:00"}, True),
    ({"equals": "a"}, {"n": "A"}, False),
    ({"regex": "^19:[03]0$"}, {"n": "19:30"}, True),
    ({"regex": "trattoria"}, {"n": "TRATTORIA demo"}, True),
    ({"regex": "^2$"}, {"n": 2}, True),
    ({"one_of": [2, 3]}, {"n": 3.0}, True),
    ({"one_of": [2, 3]}, {"n": 4}, False),
    ({"min": 9}, {"n": 12}, True),
    ({"min": 9}, {"n": "12"}, True),
    ({"min": 9, "max": 10}, {"n": 12}, False),
    ({"max": 1}, {"n": "many"}, False),
    ({"min": 0}, {"n": True}, False),
    ({"present": True}, {"n": 0}, True),
    ({"present": True}, {}, False),
    ({"present": False}, {}, True),
    ({"present": False}, {"n": 1}, False),
    ({"min": 1}, {}, False),
    ({"present": True, "regex": "x"}, {"n": "y"}, False),
])
def test_argument_matchers(matcher, arguments, expected) -> None:
    assert matches(matcher, arguments, "n") is expected


SUITE = load_suite("""
name: s
scenarios:
  - name: book
    turns:
      - say: a table for two at seven
        expect:
          said: ["table for two", "shall i book"]
          not_said: [sorry]
          tools: [{name: check_availability, arguments: {party_size: 2, time: "19:00"}}]
          max_first_audio_ms: 1000
      - say: "yes"
        expect:
          tools: [{name: create_booking, arguments: {party_size: 2}}, {name: transfer_to_human, called: false}]
          no_talk_over: true
      - say: goodbye
    expect:
      said: ["goodbye"]
      tools: [{name: end_call}]
      transferred: false
      ended_by: agent
      no_talk_over: true
      max_first_audio_ms: 1500
""")


def observation(**changes) -> Observation:
    seen = Observation(
        call_id="call_1", status="ended", end_reason="agent_ended", hangup_by="agent",
        said=[Said("Hello, how can I help?", GREETING), Said("I have a table for two at 7 PM. Shall I book it?", 0),
              Said("You're all set.", 1), Said("Goodbye!", 2)],
        tools=[ToolUse("check_availability", {"party_size": 2, "time": "19:00"}, "ok", 0),
               ToolUse("create_booking", {"party_size": 2, "time": "19:00"}, "ok", 1), ToolUse("end_call", {}, "ok", 2)],
        turns=[TurnHeard(800.0, 0.0), TurnHeard(900.0, 40.0), TurnHeard(700.0, 0.0)])
    for key, value in changes.items():
        setattr(seen, key, value)
    return seen


def test_a_call_that_did_everything_meets_every_expectation() -> None:
    checks = check_scenario(SUITE.scenarios[0], observation())
    assert all(c.met for c in checks), [c for c in checks if not c.met]
    assert len(checks) == 5 + 3 + 6 and score(checks) == 1.0


def test_words_and_tools_count_only_in_their_turn() -> None:
    # The reply to turn 1 came after turn 2 began: turn 1 did not get it, the call did.
    seen = observation(said=[Said("Hello", GREETING), Said("Shall I book a table for two?", 1), Said("Goodbye", 2)],
                       tools=[ToolUse("check_availability", {"party_size": 2, "time": "19:00"}, "ok", 1),
                              ToolUse("create_booking", {"party_size": 2}, "ok", 1), ToolUse("end_call", {}, "ok", 2)])
    failed = [c for c in check_scenario(SUITE.scenarios[0], seen) if not c.met]
    assert [c.what for c in failed] == [
        "turn 1: said /table for two/", "turn 1: said /shall i book/",
        "turn 1: check_availability(party_size 2, time '19:00') called"]
    assert failed[0].turn == 0 and "it said: (nothing)" in failed[0].detail
    assert failed[2].detail == "it was not called"


def test_failures_name_what_was_seen_instead() -> None:
    seen = observation(
        said=[*observation().said[:3], Said("Sorry, goodbye", 2)],
        tools=[ToolUse("check_availability", {"party_size": 3, "time": "19:00"}, "ok", 0),
               ToolUse("transfer_to_human", {}, "ok", 1)],
        transfers=[1], end_reason="transferred", hangup_by="caller",
        turns=[TurnHeard(1200.0, 0.0), TurnHeard(None, TALK_OVER_TOLERANCE_MS + 20), TurnHeard(1600.0, 0.0)])
    failed = {c.what: c for c in check_scenario(SUITE.scenarios[0], seen) if not c.met}
    assert "called with {party_size: 3, time: '19:00'}" in failed[
        "turn 1: check_availability(party_size 2, time '19:00') called"].detail
    assert failed["turn 1: first audio within 1000 ms"].detail == "first audio after 1200 ms"
    assert failed["turn 2: create_booking(party_size 2) called"].detail == "it was not called"
    assert failed["turn 2: transfer_to_human not called"].detail == "called with {}"
    assert "220 ms of agent audio" in failed["turn 2: no agent speech over the caller"].detail
    assert failed["call: not transferred"].detail == "the call was transferred"
    assert failed["call: ended by the agent"].detail == "ended by caller (transferred)"
    assert "call: end_call called" in failed and "call: first audio within 1500 ms" in failed
    checks = check_scenario(SUITE.scenarios[0], seen)
    assert score(checks) == round(sum(c.met for c in checks) / len(checks), 4) < 1
    assert excerpt(seen, failed["turn 1: first audio within 1000 ms"].turn) == \
        "I have a table for two at 7 PM. Shall I book it?"


def test_not_said_and_silence_turns() -> None:
    suite = load_suite("""
name: s
scenarios:
  - name: quiet
    turns:
      - silence_ms: 2000
        expect: {not_said: ["sorry"], max_first_audio_ms: 500}
""")
    seen = Observation(said=[Said("Sorry, I didn't catch that.", 0)], turns=[TurnHeard(None, 0.0, speech=False)])
    checks = check_scenario(suite.scenarios[0], seen)
    assert [(c.what, c.met) for c in checks] == [("turn 1: did not say /sorry/", False),
                                                 ("turn 1: first audio within 500 ms", False)]
    assert checks[0].detail == "the agent said: Sorry, I didn't catch that."
    assert checks[1].detail == "the agent never answered"  # a silence has nothing to answer


def test_no_expectations_scores_nothing() -> None:
    assert score([]) is None
