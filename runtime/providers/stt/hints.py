"""Vocabulary hints: the words a version expects its callers to say, for the recogniser.

Whisper decodes better when its prompt holds the domain's words (measured on the caller set,
bench/offline_stack.py --only wer: see README); Deepgram takes them as keyterms. The terms are
the version's own ``stt.keywords`` first, then what its script and tools name: rules intents'
keywords and slot choices (a menu), HTTP tools' names and the enum values of their arguments, and the
capitalised names in its greeting (the business, the agent). Bounded: a long prompt costs decode
time on every utterance and crowds out what the caller said.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

MAX_TERMS = 50
MAX_PROMPT_CHARS = 400  # ~100 Whisper tokens: a quarter of its text context
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w'’-]+(?:\s+[A-Z][\w'’-]+)*)")
_SMALL_WORDS = frozenset({"i", "a", "an", "the", "to", "of", "and", "or", "for", "is", "it", "my", "me"})


def version_terms(agent: Any, keywords: Iterable[str] = ()) -> tuple[str, ...]:
    """The hint terms of an agent version (an AgentConfig), its own ``keywords`` first; unique
    (case-insensitive), at most MAX_TERMS."""
    return _bounded([*keywords, *_from_greeting(agent.greeting or ""), *_from_rules(agent.rules),
                     *_from_tools(agent.http_tools)])


def whisper_prompt(terms: Iterable[str]) -> str:
    """The terms as Whisper's previous-text prompt, cut to MAX_PROMPT_CHARS at a term boundary."""
    prompt = ""
    for term in terms:
        candidate = f"{prompt}, {term}" if prompt else term
        if len(candidate) + 1 > MAX_PROMPT_CHARS:
            break
        prompt = candidate
    return prompt + "." if prompt else ""


def _bounded(terms: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for term in terms:
        cleaned = " ".join(term.replace("_", " ").split())
        key = cleaned.lower()
        if cleaned and not cleaned.startswith("[") and key not in _SMALL_WORDS and key not in seen:  # [dtmf 0]
            seen[key] = cleaned
        if len(seen) == MAX_TERMS:
            break
    return tuple(seen.values())


def _from_greeting(greeting: str) -> Iterator[str]:
    """Capitalised words that do not start a sentence: names ("Thanks for calling Luigi's")."""
    for match in _NAME.finditer(greeting):
        yield match.group(1)


def spoken_numbers(rules: Any, language: str | None) -> tuple[str, ...]:
    """Counts and times as callers say them, for an English rules script that reads them: examples
    for Whisper's prompt (Deepgram's keyterms are words to boost, not examples). Whisper primed
    with spoken numbers hears "nine people at seven" where it wrote "nine people at heaven" (caller
    set, tune half, base on a clean line: WER 28 % -> 24 %, bookings 9/20 -> 12/20). A handful of
    varied examples: one repeated phrase ("seven thirty") was written for other times."""
    if rules is None or not (language or "en").lower().startswith("en"):
        return ()
    types = {slot.type for slot in rules.slots.values()}
    out: list[str] = []
    if "count" in types and "time" in types:
        out += ["for two people at seven", "four at eight thirty"]
    elif "count" in types:
        out += ["for two people", "four people"]
    elif "time" in types:
        out += ["at seven", "eight thirty"]
    if "time" in types:
        out += ["six fifteen", "nine forty five", "ten o'clock"]
    return tuple(out)


def _from_rules(rules: Any) -> Iterator[str]:
    if rules is None:
        return
    for slot in rules.slots.values():
        yield from slot.choices
    for intent in rules.intents:
        yield from intent.keywords


def _from_tools(http_tools: Iterable[Any]) -> Iterator[str]:
    """The integrator's tools' names and enum values (built-in tools are mechanics, not words)."""
    for tool in http_tools:
        yield tool.name
        for spec in (tool.parameters.get("properties") or {}).values():
            if isinstance(spec, dict):
                yield from (str(v) for v in spec.get("enum") or () if isinstance(v, str | int))
