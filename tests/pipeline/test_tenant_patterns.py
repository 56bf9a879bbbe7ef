"""Tenant-written regexes (intent ``patterns``, text slot ``pattern``) run on RE2 (issue 14): patterns
that backtrack for ever on ``re`` answer at once through the rules brain; syntax RE2 lacks is refused
when written, naming the field; a version stored before still loads, the pattern skipped, logged once
and flagged."""

from __future__ import annotations

import logging
import time

import pytest
from pydantic import ValidationError

from runtime.control.patterns import compile_pattern
from runtime.control.schemas import AgentConfig, RulesConfig
from runtime.control.version_warnings import version_warnings
from runtime.providers.base import LlmRequest, Message, TextDelta
from runtime.providers.llm.rules import RulesBrain

# Each backtracks exponentially on `re` over a line without its last character: a 35-character
# caller line stalled the process for seconds.
BACKTRACKING = [r"(.|..)*~", r"(a|aa)*c", r"(\w|\w\w)*!"]
TEN_KB = "a" * 10_000


async def _reply(brain: RulesBrain, text: str) -> str:
    request = LlmRequest("ignored", (Message("user", text),), ())
    return "".join([e.text async for e in brain.stream(request) if isinstance(e, TextDelta)])


@pytest.mark.parametrize("pattern", BACKTRACKING)
async def test_backtracking_patterns_answer_in_linear_time_through_the_rules_brain(pattern):
    rules = {"slots": {"ref": {"type": "text", "pattern": pattern}},
             "intents": [{"name": "trap", "patterns": [pattern], "reply": "Matched."}],
             "fallback": "No match."}
    RulesConfig.model_validate(rules)  # a tenant may store it: it cannot hurt anyone now
    brain = RulesBrain(rules)
    started = time.perf_counter()
    reply = await _reply(brain, TEN_KB)
    elapsed = time.perf_counter() - started
    assert reply == "No match."
    assert elapsed < 0.2, f"{pattern} took {elapsed * 1000:.0f} ms over 10 kB"


@pytest.mark.parametrize("pattern", BACKTRACKING)
def test_the_compiled_patterns_are_linear_over_the_whole_text(pattern):
    """The brain reads a bounded prefix of a turn; the engine itself needs no bound."""
    compiled = compile_pattern(pattern)
    started = time.perf_counter()
    assert compiled.search(TEN_KB * 10) is None
    assert time.perf_counter() - started < 0.2


async def test_patterns_stay_case_insensitive_and_capture():
    rules = {"slots": {"ref": {"type": "text", "pattern": r"reference (?:is )?([a-z0-9]{6})"}},
             "intents": [{"name": "find", "patterns": [r"\bwhere\s+is\b"], "requires": ["ref"],
                          "reply": "Looking up {ref}."}]}
    assert await _reply(RulesBrain(rules), "WHERE IS my booking, Reference K7P2Q9") == "Looking up K7P2Q9."


@pytest.mark.parametrize(("pattern", "words"), [
    (r"(\w+) \1", "backreference (\\1)"),
    (r"book(?=ing)", "lookahead"),
    (r"book(?!ing)", "lookahead"),
    (r"(?<=a )table", "lookbehind"),
    (r"(?<!no )table", "lookbehind"),
    (r"(?>a+)b", "atomic group"),
    (r"a++b", "possessive quantifier"),
    (r"([unclosed", "not a valid regular expression"),
    (r"a{1001}", "a count is at most 1000"),
    (r"((a{100}){100}){100}", "nested counts multiply"),
])
def test_syntax_re2_lacks_is_refused_naming_the_field(pattern, words):
    with pytest.raises(ValidationError) as refused:
        RulesConfig.model_validate({"intents": [{"name": "a", "patterns": ["fine", pattern]}]})
    (error,) = refused.value.errors()
    assert error["loc"] == ("intents", 0, "patterns", 1)
    assert words in error["msg"]
    with pytest.raises(ValidationError) as refused:
        RulesConfig.model_validate({"slots": {"ref": {"type": "text", "pattern": pattern}}})
    (error,) = refused.value.errors()
    assert error["loc"] == ("slots", "ref", "pattern") and words in error["msg"]


async def test_a_stored_version_with_a_pattern_re2_refuses_still_loads(caplog):
    """Stored by a release that ran patterns on `re`: it loads, the pattern is skipped (one warning
    however many calls build a brain from it) and the version is flagged."""
    raw = AgentConfig(system_prompt="x", rules={
        "slots": {"ref": {"type": "text", "pattern": "ref (\\w+)"}},
        "intents": [{"name": "book", "keywords": ["book"], "reply": "Booking."},
                    {"name": "refs", "patterns": ["ref"], "requires": ["ref"], "reply": "Ref {ref}."}]}).model_dump()
    raw["rules"]["intents"][0]["patterns"] = [r"(stored\w+) \1", r"table(?=s)"]
    raw["rules"]["slots"]["ref"]["pattern"] = r"(?<=stored ref )(\w+)"
    with pytest.raises(ValidationError):
        AgentConfig.model_validate(raw)  # never written like this again
    config = AgentConfig.from_stored(raw)
    with caplog.at_level(logging.WARNING, logger="voicectl.patterns"):
        for _ in range(3):  # a brain per call
            brain = RulesBrain(config.rules)
            assert await _reply(brain, "I'd like to book") == "Booking."  # the keyword still works
            assert await _reply(brain, "tables please") != "Booking."  # the skipped pattern matches nothing
    skipped = [r for r in caplog.records if r.name == "voicectl.patterns"]
    assert len(skipped) == 3, [r.reason for r in skipped]  # type: ignore[attr-defined]
    warnings = version_warnings(raw)
    assert len(warnings) == 3
    assert warnings[0].startswith("rules.slots.ref.pattern: skipped: ") and "lookbehind" in warnings[0]
    assert warnings[1].startswith("rules.intents.0.patterns.0: skipped: ") and "backreference" in warnings[1]
    assert warnings[2].startswith("rules.intents.0.patterns.1: skipped: ") and "lookahead" in warnings[2]
    assert version_warnings(AgentConfig(system_prompt="x", rules={"intents": [
        {"name": "a", "patterns": ["fine"]}]}).model_dump()) == []


async def test_undecodable_caller_text_is_matched_not_a_crash():
    """RE2 reads UTF-8; a line read with surrogateescape (bad bytes on stdin) holds lone surrogates."""
    rules = {"intents": [{"name": "book", "patterns": [r"book\s+\S+"], "reply": "Booking."}]}
    assert await _reply(RulesBrain(rules), "book \udcff table") == "Booking."
