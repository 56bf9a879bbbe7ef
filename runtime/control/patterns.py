"""Regular expressions that tenants write, on RE2: matching time grows linearly with the text.

A tenant's pattern runs on the event loop every call shares (the rules brain's intent ``patterns``
and text slot ``pattern`` over each caller turn, an HTTP tool schema's ``pattern`` over each
argument), so one pattern that backtracks (``(a|aa)*c``) must not be able to stall every call on
the box. RE2 has no backtracking, and so none of the syntax that needs it: backreferences,
lookaheads and lookbehinds, atomic groups, possessive quantifiers. A pattern that uses them is
refused when written (``check_pattern``, worded for a 422) and, in a version an earlier release
stored, skipped with one warning (``usable_pattern``). The regexes the product builds itself from
escaped keywords stay on ``re``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

log = logging.getLogger("voicectl.patterns")

MAX_PATTERN = 200
# RE2's own default; a pattern whose compiled program needs more is refused ("too large").
MAX_PROGRAM_BYTES = 8 << 20

# RE2's parse errors -> what a tenant needs to know (the first prefix that fits).
_UNSUPPORTED = (
    ("invalid perl operator: (?=", "a lookahead ((?=...) or (?!...))"),
    ("invalid perl operator: (?!", "a lookahead ((?=...) or (?!...))"),
    ("invalid perl operator: (?<=", "a lookbehind ((?<=...) or (?<!...))"),
    ("invalid perl operator: (?<!", "a lookbehind ((?<=...) or (?<!...))"),
    ("invalid perl operator: (?>", "an atomic group ((?>...))"),
    ("bad repetition operator: ++", "a possessive quantifier (++, *+, ?+)"),
    ("bad repetition operator: *+", "a possessive quantifier (++, *+, ?+)"),
    ("bad repetition operator: ?+", "a possessive quantifier (++, *+, ?+)"),
)


class PatternError(ValueError):
    """A pattern RE2 cannot run; the message says why, for the tenant who wrote it."""


@lru_cache(maxsize=2)
def _options(ignore_case: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False  # the error comes back as PatternError, not on stderr
    return options


@dataclass(frozen=True, slots=True)
class TenantRegex:
    """A compiled tenant pattern. ``search`` returns None or a match with ``[0]``, ``[1]`` and
    ``groups()``, as ``re``'s."""

    pattern: str
    compiled: Any

    def search(self, text: str) -> Any:
        try:
            return self.compiled.search(text)
        except UnicodeEncodeError:  # RE2 reads UTF-8: a lone surrogate (undecodable input) is read as "?"
            return self.compiled.search(text.encode("utf-8", "replace").decode("utf-8"))


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str, *, ignore_case: bool = True) -> TenantRegex:
    """``pattern`` compiled by RE2. Cached: the rules brain is built per call from the same stored
    patterns."""
    try:
        return TenantRegex(pattern, re2.compile(pattern, _options(ignore_case)))
    except re2.error as exc:
        raise PatternError(_explain(pattern, exc)) from None
    except UnicodeEncodeError:
        raise PatternError(f"pattern {pattern!r} holds a character that is not text (a lone surrogate)") from None


def _explain(pattern: str, exc: Exception) -> str:
    reason = exc.args[0] if exc.args else str(exc)
    reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    for prefix, what in _UNSUPPORTED:
        if reason.startswith(prefix):
            return (f"pattern {pattern!r} uses {what}, which tenant patterns cannot: they run on RE2, a "
                    "linear-time engine without lookarounds, backreferences, atomic groups or possessive "
                    "quantifiers")
    if reason.startswith("invalid escape sequence: \\") and reason[-1:].isdigit():
        return (f"pattern {pattern!r} uses a backreference ({reason.rsplit(' ', 1)[-1]}), which tenant patterns "
                "cannot: they run on RE2, a linear-time engine without backreferences or lookarounds")
    if reason.startswith("invalid repetition size"):
        return (f"pattern {pattern!r} repeats more than RE2 takes: a count is at most 1000, and nested counts "
                "multiply")
    if "too large" in reason:
        return f"pattern {pattern!r} is too large to compile (repetitions of repetitions multiply)"
    return f"pattern {pattern!r} is not a valid regular expression: {reason}"


def check_pattern(value: str, *, ignore_case: bool = True) -> str:
    """A tenant pattern as written: at most MAX_PATTERN characters and one RE2 compiles."""
    if len(value) > MAX_PATTERN:
        raise PatternError(f"patterns are at most {MAX_PATTERN} characters")
    compile_pattern(value, ignore_case=ignore_case)
    return value


@lru_cache(maxsize=1024)
def usable_pattern(pattern: str) -> TenantRegex | None:
    """A stored pattern compiled for matching, or None (logged once) when RE2 refuses it: a version
    written before patterns ran on RE2 still loads, without that one pattern."""
    try:
        return compile_pattern(pattern)
    except PatternError as exc:
        log.warning("a stored pattern is skipped", extra={"reason": str(exc)})
        return None
