"""Argument matchers of a ``tools`` expectation: a plain value (equal to it) or an object of

- ``equals``: the value (numbers compare as numbers: 2 equals 2.0; "2" does not);
- ``regex``: an RE2 pattern (case-insensitive) found in the value as text;
- ``one_of``: equal to one of the values;
- ``min`` / ``max``: a number within the bounds (a numeric string counts as its number);
- ``present``: the argument is (true) or is not (false) there.

Every key given must hold. A missing argument matches only ``present: false``.
"""

from __future__ import annotations

from typing import Any

from runtime.control.patterns import compile_pattern

_MISSING = object()


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return float(expected) == float(actual)
    return type(expected) is type(actual) and expected == actual


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def matches(matcher: Any, arguments: dict[str, Any], name: str) -> bool:
    """Whether argument ``name`` of ``arguments`` satisfies ``matcher``."""
    actual = arguments.get(name, _MISSING) if isinstance(arguments, dict) else _MISSING
    if not isinstance(matcher, dict):
        return actual is not _MISSING and _same(matcher, actual)
    if "present" in matcher and (actual is not _MISSING) != matcher["present"]:
        return False
    if actual is _MISSING:
        return matcher.get("present") is False and len(matcher) == 1
    if "equals" in matcher and not _same(matcher["equals"], actual):
        return False
    if "one_of" in matcher and not any(_same(option, actual) for option in matcher["one_of"]):
        return False
    if "regex" in matcher and compile_pattern(matcher["regex"]).search(_text(actual)) is None:
        return False
    if "min" in matcher or "max" in matcher:
        number = _number(actual)
        if number is None:
            return False
        if "min" in matcher and number < matcher["min"]:
            return False
        if "max" in matcher and number > matcher["max"]:
            return False
    return True


def describe(matcher: Any) -> str:
    """A matcher as a short text for a failed expectation's message."""
    if not isinstance(matcher, dict):
        return repr(matcher)
    return " and ".join(f"{key} {value!r}" for key, value in matcher.items())
