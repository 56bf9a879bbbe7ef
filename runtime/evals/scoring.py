"""Expectations checked against what a synthetic call observed, and the score.

Each expectation is one check: every ``said`` and ``not_said`` pattern, every ``tools`` entry,
``transferred``, ``max_first_audio_ms``, ``no_talk_over`` and ``ended_by``. A turn's expectations
look at what happened from that turn until the next one began (the agent's words, its tool calls,
a transfer); the call's at the whole call. The score of a run is the fraction of its checks met.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runtime.control.patterns import compile_pattern
from runtime.evals.matchers import describe, matches
from runtime.evals.suite import Scenario

# Agent audio heard while the caller spoke that still counts as not talking over them: a frame or two
# of a reply that began as the caller did, and the time a barge-in needs to be noticed.
TALK_OVER_TOLERANCE_MS = 200
GREETING = -1  # the turn index of what happens before the caller's first turn
EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Said:
    text: str
    turn: int
    interrupted: bool = False


@dataclass(frozen=True)
class ToolUse:
    name: str
    arguments: dict[str, Any]
    status: str
    turn: int


@dataclass(frozen=True)
class TurnHeard:
    """What the caller heard around one of its turns."""

    first_audio_ms: float | None  # its last word (or key) to the agent's first audio after it
    talk_over_ms: float  # agent audio that arrived while the caller was speaking
    speech: bool = True  # a silence turn has no words to answer


@dataclass
class Observation:
    call_id: str | None = None
    status: str | None = None
    end_reason: str | None = None
    hangup_by: str | None = None
    said: list[Said] = field(default_factory=list)
    tools: list[ToolUse] = field(default_factory=list)
    transfers: list[int] = field(default_factory=list)  # turn indices of transfer.requested
    turns: list[TurnHeard] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    what: str
    met: bool
    detail: str = ""
    turn: int | None = None


def check_scenario(scenario: Scenario, seen: Observation) -> list[Check]:
    checks: list[Check] = []
    for index, turn in enumerate(scenario.turns):
        if turn.expect:
            heard = seen.turns[index] if index < len(seen.turns) else None
            checks += _checks(turn.expect, seen, [index], [heard] if heard else [], f"turn {index + 1}", index)
    if scenario.expect:
        every = [GREETING, *range(len(scenario.turns))]
        checks += _checks(scenario.expect, seen, every, seen.turns, "call", None)
        if "ended_by" in scenario.expect:
            wanted = scenario.expect["ended_by"]
            checks.append(Check(f"call: ended by the {wanted}", seen.hangup_by == wanted,
                                f"ended by {seen.hangup_by or 'nobody'} ({seen.end_reason or seen.status})"))
    return checks


def _checks(expect: dict[str, Any], seen: Observation, turns: list[int], heard: list[TurnHeard], where: str,
            turn: int | None) -> list[Check]:
    lines = [s for s in seen.said if s.turn in turns]
    out: list[Check] = []
    for pattern in expect.get("said", []):
        regex = compile_pattern(pattern)
        out.append(Check(f"{where}: said /{pattern}/", any(regex.search(s.text) for s in lines),
                         f"the agent did not say it; it said: {_excerpt(lines)}", turn))
    for pattern in expect.get("not_said", []):
        regex = compile_pattern(pattern)
        hit = next((s for s in lines if regex.search(s.text)), None)
        out.append(Check(f"{where}: did not say /{pattern}/", hit is None, f"the agent said: {hit.text if hit else ''}",
                         turn))
    for spec in expect.get("tools", []):
        out.append(_tool_check(spec, [t for t in seen.tools if t.turn in turns], where, turn))
    if "transferred" in expect:
        happened = any(t in turns for t in seen.transfers) or (turn is None and seen.end_reason == "transferred")
        wanted = expect["transferred"]
        out.append(Check(f"{where}: {'transferred' if wanted else 'not transferred'}", happened == wanted,
                         "the call was transferred" if happened else "no transfer was requested", turn))
    if "max_first_audio_ms" in expect:
        limit = expect["max_first_audio_ms"]
        measured = [h.first_audio_ms for h in heard if h.speech and h.first_audio_ms is not None]
        worst = max(measured) if measured else None
        met = worst is not None and worst <= limit
        detail = "the agent never answered" if worst is None else f"first audio after {worst:.0f} ms"
        out.append(Check(f"{where}: first audio within {limit} ms", met, detail, turn))
    if expect.get("no_talk_over") is not None:
        over = max((h.talk_over_ms for h in heard), default=0.0)
        talked_over = over > TALK_OVER_TOLERANCE_MS
        wanted = bool(expect["no_talk_over"])
        out.append(Check(f"{where}: {'no agent speech over the caller' if wanted else 'agent speech over the caller'}",
                         talked_over != wanted, f"{over:.0f} ms of agent audio while the caller spoke", turn))
    return out


def _tool_check(spec: dict[str, Any], used: list[ToolUse], where: str, turn: int | None) -> Check:
    name, arguments, wanted = spec["name"], spec.get("arguments") or {}, spec.get("called", True)
    same_name = [t for t in used if t.name == name]
    hit = next((t for t in same_name if all(matches(m, t.arguments, arg) for arg, m in arguments.items())), None)
    args = ", ".join(f"{arg} {describe(m)}" for arg, m in arguments.items())
    what = f"{where}: {name}{f'({args})' if args else ''} {'called' if wanted else 'not called'}"
    if wanted:
        detail = ("it was not called" if not same_name else
                  "called with " + "; ".join(_arguments(t.arguments) for t in same_name))
        return Check(what, hit is not None, detail, turn)
    return Check(what, hit is None, f"called with {_arguments(hit.arguments)}" if hit else "", turn)


def _arguments(arguments: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in arguments.items()) + "}"


def _excerpt(lines: Iterable[Said]) -> str:
    text = " / ".join(s.text for s in lines)
    return (text[:EXCERPT_CHARS - 1] + "…") if len(text) > EXCERPT_CHARS else (text or "(nothing)")


def excerpt(seen: Observation, turn: int | None) -> str:
    """What the agent said where a check failed (its turn, else the last lines of the call)."""
    if turn is not None:
        return _excerpt([s for s in seen.said if s.turn == turn])
    return _excerpt(seen.said[-3:])


def score(checks: Iterable[Check]) -> float | None:
    """The fraction of checks met (None: nothing was checked)."""
    results = [c.met for c in checks]
    return round(sum(results) / len(results), 4) if results else None
