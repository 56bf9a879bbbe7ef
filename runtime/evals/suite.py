"""A scenario suite: YAML in, validated against runtime.evals.schema, out as typed scenarios.

Errors name the line and the field (``line 14: scenarios[0].turns[2].say: ...``), all of them
at once. The YAML is read with the safe loader and refused when it uses anchors or aliases (a few
lines of aliases can expand to gigabytes) or is larger than MAX_SUITE_BYTES.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from runtime.control.errors import Invalid
from runtime.control.patterns import PatternError, check_pattern
from runtime.evals.schema import SUITE_SCHEMA, TURN_ACTIONS

MAX_SUITE_BYTES = 256 * 1024
MAX_ERRORS = 20
DEFAULT_FROM = "+15550000100"
DEFAULT_QUIET_MS = 900
DEFAULT_MAX_DURATION_S = 120


class SuiteInvalid(Invalid):
    """A suite that does not validate: 422 (exit 2), each error with its line and field."""

    code = "invalid_suite"

    def __init__(self, where: str, errors: list[dict[str, Any]]) -> None:
        lines = [f"line {e['line']}: {e['field']}: {e['message']}" if e.get("line") else
                 f"{e['field']}: {e['message']}" for e in errors]
        super().__init__(f"{where} is not a valid suite:\n  " + "\n  ".join(lines), {"errors": errors})


# Typed suite


@dataclass(frozen=True)
class Caller:
    voice: str = "piper"
    speed: float = 1.0
    noise_db: float | None = None
    from_: str = DEFAULT_FROM
    quiet_ms: int = DEFAULT_QUIET_MS

    def merged(self, data: Mapping[str, Any] | None) -> Caller:
        if not data:
            return self
        return Caller(voice=data.get("voice", self.voice), speed=float(data.get("speed", self.speed)),
                      noise_db=data.get("noise_db", self.noise_db), from_=data.get("from", self.from_),
                      quiet_ms=int(data.get("quiet_ms", self.quiet_ms)))


@dataclass(frozen=True)
class Turn:
    action: str  # say | wav | dtmf | silence
    text: str | None = None  # say: the line; wav: the path; dtmf: the keys
    silence_ms: int | None = None
    barge_in_after_ms: int | None = None
    voice: str = "piper"
    speed: float = 1.0
    expect: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.action == "say":
            return str(self.text)
        if self.action == "wav":
            return f"<{self.text}>"
        if self.action == "dtmf":
            return f"[dtmf {self.text}]"
        return f"[silence {self.silence_ms} ms]"


@dataclass(frozen=True)
class Scenario:
    name: str
    caller: Caller
    turns: tuple[Turn, ...]
    expect: dict[str, Any]
    max_duration_s: int = DEFAULT_MAX_DURATION_S
    rubric: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    scenarios: tuple[Scenario, ...]
    source: str
    sha256: str

    @property
    def wav_paths(self) -> list[str]:
        return sorted({t.text for s in self.scenarios for t in s.turns if t.action == "wav" and t.text})


def digest(source: str, assets: Mapping[str, bytes] | None = None) -> str:
    """The suite's sha256: of the YAML as written, followed (when it plays WAV files) by each file's
    path and sha256 in path order, so a changed recording is a changed suite."""
    h = hashlib.sha256(source.encode("utf-8"))
    for path in sorted(assets or {}):
        h.update(b"\0" + path.encode("utf-8") + b"\0" + hashlib.sha256(assets[path]).hexdigest().encode())
    return h.hexdigest()


# Loading


def load_suite(source: str, *, where: str = "the suite", assets: Mapping[str, bytes] | None = None) -> Suite:
    """Parse and validate ``source``; SuiteInvalid lists every problem with its line."""
    if len(source.encode("utf-8")) > MAX_SUITE_BYTES:
        raise SuiteInvalid(where, [{"field": "(file)", "message": f"larger than {MAX_SUITE_BYTES} bytes"}])
    root, data = _parse(source, where)
    errors = [_located(root, list(e.absolute_path), _message(e)) for e in _validator().iter_errors(data)]
    errors += _semantic_errors(root, data)
    if errors:
        errors.sort(key=lambda e: (e.get("line") or 0, e["field"]))
        raise SuiteInvalid(where, errors[:MAX_ERRORS])
    return _build(data, source, digest(source, assets))


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(SUITE_SCHEMA)


def _parse(source: str, where: str) -> tuple[yaml.Node | None, Any]:
    try:
        for event in yaml.parse(source, Loader=yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1
                raise SuiteInvalid(where, [{"line": line, "field": "(yaml)",
                                            "message": "anchors and aliases (&name, *name) are not allowed"}])
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteInvalid(where, [{"line": mark.line + 1 if mark else None, "field": "(yaml)",
                                    "message": f"not valid YAML: {problem}"}]) from None
    if data is None:
        raise SuiteInvalid(where, [{"field": "(file)", "message": "empty: a suite has a name and scenarios"}])
    return root, data


def _message(error: Any) -> str:
    if error.validator == "anyOf" and "arguments" in error.absolute_path:
        return ("an argument matcher is a value, or an object of equals, regex, one_of, min, max and present; "
                f"not {error.instance!r}")
    if error.validator == "type" and isinstance(error.instance, bool) and "string" in str(error.validator_value):
        return f"{error.message} (quote it: YAML reads yes, no, on and off as true and false)"
    return error.message


def _field(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _node_at(root: yaml.Node | None, path: list[Any]) -> yaml.Node | None:
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
        if node is None:
            return None
    return node


def _located(root: yaml.Node | None, path: list[Any], message: str) -> dict[str, Any]:
    node = _node_at(root, path) or _node_at(root, path[:-1])
    return {"line": node.start_mark.line + 1 if node is not None else None, "field": _field(path),
            "message": message}


def _semantic_errors(root: yaml.Node | None, data: Any) -> list[dict[str, Any]]:
    """What the schema cannot say; parts the schema refused already are skipped."""
    return list(_semantic(root, data)) if isinstance(data, dict) else []


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _semantic(root: yaml.Node | None, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    names: dict[str, int] = {}
    for i, scenario in _items(data.get("scenarios")):
        name = scenario.get("name")
        if isinstance(name, str) and name in names:
            yield _located(root, ["scenarios", i, "name"],
                           f"scenario names are unique; {name!r} is also scenario {names[name]}")
        if isinstance(name, str):
            names.setdefault(name, i)
        for j, turn in _items(scenario.get("turns")):
            actions = [a for a in TURN_ACTIONS if a in turn]
            if len(actions) != 1:
                found = ", ".join(actions) if actions else "none"
                yield _located(root, ["scenarios", i, "turns", j],
                               f"a turn does exactly one of {', '.join(TURN_ACTIONS)} (found: {found})")
            elif "barge_in_after_ms" in turn and actions[0] not in ("say", "wav"):
                yield _located(root, ["scenarios", i, "turns", j, "barge_in_after_ms"],
                               "barge_in_after_ms goes with say or wav (speech over the agent)")
            yield from _pattern_errors(root, ["scenarios", i, "turns", j, "expect"], turn.get("expect"))
        yield from _pattern_errors(root, ["scenarios", i, "expect"], scenario.get("expect"))


def _pattern_errors(root: yaml.Node | None, path: list[Any], expect: Any) -> Iterator[dict]:
    if not isinstance(expect, dict):
        return
    for key in ("said", "not_said"):
        patterns = expect.get(key)
        for k, pattern in enumerate(patterns if isinstance(patterns, list) else []):
            if not isinstance(pattern, str):
                continue
            try:
                check_pattern(pattern)
            except PatternError as exc:
                yield _located(root, [*path, key, k], str(exc))
    for k, tool in _items(expect.get("tools")):
        arguments = tool.get("arguments")
        for name, matcher in (arguments.items() if isinstance(arguments, dict) else []):
            if isinstance(matcher, dict) and isinstance(matcher.get("regex"), str):
                try:
                    check_pattern(matcher["regex"])
                except PatternError as exc:
                    yield _located(root, [*path, "tools", k, "arguments", name, "regex"], str(exc))
            low, high = (matcher.get("min"), matcher.get("max")) if isinstance(matcher, dict) else (None, None)
            if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
                yield _located(root, [*path, "tools", k, "arguments", name], "min is larger than max")


def _build(data: dict[str, Any], source: str, sha256: str) -> Suite:
    base = Caller().merged(data.get("caller"))
    scenarios = []
    for item in data["scenarios"]:
        caller = base.merged(item.get("caller"))
        turns = []
        for turn in item["turns"]:
            action = next(a for a in TURN_ACTIONS if a in turn)
            turns.append(Turn(
                action="silence" if action == "silence_ms" else action,
                text=str(turn[action]) if action != "silence_ms" else None,
                silence_ms=turn.get("silence_ms"), barge_in_after_ms=turn.get("barge_in_after_ms"),
                voice=turn.get("voice", caller.voice), speed=float(turn.get("speed", caller.speed)),
                expect=dict(turn.get("expect") or {})))
        scenarios.append(Scenario(item["name"], caller, tuple(turns), dict(item.get("expect") or {}),
                                  item.get("max_duration_s", DEFAULT_MAX_DURATION_S),
                                  (item.get("judge") or {}).get("rubric")))
    return Suite(data["name"], data.get("description", ""), tuple(scenarios), source, sha256)
