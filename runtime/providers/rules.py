"""The ``rules`` brain: a deterministic, offline stand-in for a language model.

It is not a language model and does not understand language. It matches the caller's latest
words against the intents of a script (keywords and regular expressions, case-insensitive, in
the script's order: the first match wins), pulls a few kinds of values out of the words with
hand-written parsers (counts, times, dates, names, menu items), and answers with templated
lines, tool calls and yes/no confirmations. It ignores the system prompt and the knowledge
text. Anything outside its script gets the fallback line. It exists so a box with no LLM
credentials can still take a useful call (the demo books tables), and so the pipeline can be
tested against a brain that answers the same way every time.

It is stateless: each request replays the whole history (the caller's turns and the results of
its own tool calls) through the script to rebuild the state (slots, the intent in progress, the
question last asked), then answers the last message. Its own earlier replies are not read, so a
question cut off by barge-in still counts as asked. Replies stream as a few word groups; a
tool call ends the turn with ``stop_reason="tool_use"``; the reply to the tool's result comes
on the next request.

Reading times: "7 pm", "19:30", "half past seven", "quarter to eight", "seven thirty", "noon".
An hour said without am/pm inside the slot's ``pm_hours`` (default 5 to 11) is read as PM
("seven" -> 19:00): a restaurant takes evening bookings, not 7 AM ones. A bare number is only
read as a time (or a count) when the brain has just asked for that slot; otherwise it needs a
cue ("at seven", "for two", "two people"). Dates: today/tonight, tomorrow, the day after
tomorrow, weekday names (the next such day, today included; "next Friday" skips today),
"June 5th" / "the 5th of June" (this year, or next if passed), and ISO dates; in the tenant's
time zone.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from runtime.control.schemas import RuleConfirm, RuleIntent, RuleOutcome, RulesConfig, RuleSlot
from runtime.providers.base import (
    LanguageModel,
    LlmDone,
    LlmEvent,
    LlmRequest,
    Message,
    RetryPolicy,
    TextDelta,
    ToolCall,
    ToolCallRequest,
)

MAX_TEXT = 500  # characters of a caller turn the parsers look at (bounds regex work per turn)
WORDS_PER_DELTA = 4

# Numbers

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_ORDINALS = {w: i for i, w in enumerate(
    ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
     "fifteenth sixteenth seventeenth eighteenth nineteenth").split(), 1)}
_ORDINALS.update({f"twenty {w}": 20 + i for w, i in list(_ORDINALS.items())[:9]})
_ORDINALS.update({"twentieth": 20, "thirtieth": 30, "thirty first": 31})
_NUM = (r"(?:(?:" + "|".join(_TENS) + r")(?: (?:one|two|three|four|five|six|seven|eight|nine))?|"
        + "|".join(sorted(_UNITS, key=len, reverse=True)) + r"|\d{1,3})")
_ORD = r"(?:" + "|".join(sorted(_ORDINALS, key=len, reverse=True)) + r"|\d{1,2}(?:st|nd|rd|th)?)"
_MONTHS = ("january february march april may june july august september october november december").split()
_MONTH = r"(?:" + "|".join(_MONTHS + [m[:3] for m in _MONTHS if m != "may"] + ["sept"]) + r")"
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def word_number(text: str) -> int | None:
    """ "7" -> 7, "seven" -> 7, "twenty two" -> 22; None if not a number."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text in _UNITS:
        return _UNITS.index(text)
    head, _, tail = text.partition(" ")
    if head in _TENS and (not tail or tail in _UNITS[1:10]):
        return _TENS[head] + (_UNITS.index(tail) if tail else 0)
    return None


def number_words(n: int) -> str:
    if 0 <= n < 20:
        return _UNITS[n]
    if 20 <= n < 100:
        tens = next(w for w, v in _TENS.items() if v == n - n % 10)
        return tens if n % 10 == 0 else f"{tens} {_UNITS[n % 10]}"
    return str(n)


def _ordinal(text: str) -> int | None:
    text = text.strip()
    digits = re.match(r"^(\d{1,2})(?:st|nd|rd|th)?$", text)
    return int(digits[1]) if digits else _ORDINALS.get(text)


# Text

def normalize(text: str) -> str:
    """Lower case, spoken-form friendly: "7p.m." -> "7 pm", "twenty-two" -> "twenty two", no
    punctuation except ':' and '.' inside numbers, apostrophes and the brackets of "[DTMF 0]"."""
    t = text[:MAX_TEXT].lower().replace("\u2019", "'")
    t = re.sub(r"(?<![a-z])p\.\s?m\b\.?", "pm", t)
    t = re.sub(r"(?<![a-z])a\.\s?m\b\.?", "am", t)
    t = t.replace("o'clock", "oclock")
    t = re.sub(r"(?<=\d)(am|pm)\b", r" \1", t)
    t = re.sub(r"(?<=\d)[.:](?=\d\d)", ":", t)
    t = re.sub(r"[^\w\s:'\[\]+#*-]|(?<!\d)[:-]|[:-](?!\d)", " ", t)
    return " ".join(t.split())


def _phrase(words: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w'])" + r"\s+".join(re.escape(w) for w in normalize(words).split()) + r"(?![\w'])")


Span = tuple[int, int]


def _blank(text: str, spans: Iterable[Span]) -> str:
    """``text`` with the spans already read replaced by spaces (offsets stay valid)."""
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


# Slot parsers: (value, spans read in the normalized text) or None. ``bare``: the brain just asked
# for this slot, so an answer without a cue counts ("seven", "two").

Hit = tuple[Any, tuple[Span, ...]]

_COUNT_CUED = (
    re.compile(r"\b(?:for|party of|table for|group of|we are|we're) (" + _NUM + r")\b"
               r"(?! ?(?:am|pm|oclock|thirty|fifteen|forty|oh |:|\d))"),
    re.compile(r"\b(" + _NUM + r") (?:people|persons|person|guests|adults|pax|diners|of us)\b"),
)
_COUNT_ALONE = re.compile(r"\b(?:just )?(me|myself|" + _NUM + r")\b")


def parse_count(text: str, slot: RuleSlot, bare: bool) -> Hit | None:
    for pattern in _COUNT_CUED:
        match = pattern.search(text)
        if match and (n := word_number(match[1])) and 0 < n < 100:
            return n, (match.span(),)
    if bare and (match := _COUNT_ALONE.search(text)):
        n = 1 if match[1] in ("me", "myself") else word_number(match[1])
        if n and 0 < n < 100:
            return n, (match.span(),)
    return None


def parse_number(text: str, slot: RuleSlot, bare: bool) -> Hit | None:
    if bare and (match := re.search(r"\b" + _NUM + r"\b", text)):
        n = word_number(match[0])
        if n is not None:
            return n, (match.span(),)
    return None


_H = r"(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_MIN = r"((?:oh )?(?:" + _NUM + r"))"
_MARK = r"(am|pm|oclock|in the evening|in the afternoon|in the morning|at night)"
# "tonight" and "this evening" are left to the date: "a table for two tonight" is not 14:00.
_TIME_PATTERNS = (
    ("clock", re.compile(r"\b(\d{1,2}):(\d\d)(?: " + _MARK + r")?\b")),
    ("past", re.compile(r"\b(half|quarter|" + _NUM + r")(?: minutes)? (past|after|to) " + _H
                        + r"(?: " + _MARK + r")?\b")),
    ("word", re.compile(r"\b(noon|midday|midnight)\b")),
    ("marked", re.compile(r"\b" + _H + r"(?: " + _MIN + r")? (am|pm|oclock)\b")),
    # "for two in the evening" is a count and a part of the day, not 14:00.
    ("marked", re.compile(r"(?<!for )(?<!of )\b" + _H + r"(?: " + _MIN + r")? " + _MARK + r"\b")),
    ("cued", re.compile(r"\b(?:at|around|about|by|from|say) " + _H + r"(?: " + _MIN + r")?\b"
                        r"(?! (?:people|persons|person|guests|adults|of us))")),
)
_TIME_BARE = re.compile(r"\b" + _H + r"(?: " + _MIN + r")?\b")


def _hour(h: int, mark: str | None, pm_hours: tuple[int, int]) -> int | None:
    if h > 23:
        return None
    if mark in ("pm", "in the evening", "in the afternoon", "at night"):
        return h % 12 + 12 if h <= 12 else h
    if mark == "am" or mark == "in the morning":
        return h % 12 if h <= 12 else None
    if 1 <= h <= 11 and pm_hours[0] <= h <= pm_hours[1]:
        return h + 12
    return h


def _minute(text: str | None) -> int | None:
    if not text:
        return 0
    n = word_number(text.removeprefix("oh ").strip())
    # "seven two" is not 7:02: spoken minutes under ten need the "oh".
    if n is None or n > 59 or (n < 10 and not text.startswith("oh ")):
        return None
    return n


def parse_time(text: str, slot: RuleSlot, bare: bool) -> Hit | None:
    """ "HH:MM" (24-hour) from the first time said."""
    for kind, pattern in _TIME_PATTERNS:
        match = pattern.search(text)
        if match is not None and (hit := _time_of(kind, match, slot.pm_hours)) is not None:
            return hit
    if bare and (match := _TIME_BARE.search(text)):
        return _time_of("bare", match, slot.pm_hours)
    return None


def _time_of(kind: str, match: re.Match[str], pm_hours: tuple[int, int]) -> Hit | None:
    span = match.span()
    if kind == "word":
        return ("00:00" if match[1] == "midnight" else "12:00"), (span,)
    if kind == "clock":
        h, m = int(match[1]), int(match[2])
        hour = _hour(h, match[3], pm_hours) if h <= 12 else h
        return None if hour is None or hour > 23 or m > 59 else (f"{hour:02d}:{m:02d}", (span,))
    if kind == "past":
        amount = {"half": 30, "quarter": 15}.get(match[1]) or word_number(match[1])
        h = word_number(match[3])
        hour = None if h is None else _hour(h, match[4], pm_hours)
        if hour is None or not amount or amount >= 60:
            return None
        total = hour * 60 + (amount if match[2] != "to" else -amount)
        return f"{total // 60 % 24:02d}:{total % 60:02d}", (span,)
    h, m = word_number(match[1]), _minute(match[2])
    if m is None:  # "at seven two people": the hour alone, the rest is left for the count
        m, span = 0, (span[0], match.end(1))
    hour = None if h is None else _hour(h, match[3] if kind == "marked" else None, pm_hours)
    return None if hour is None else (f"{hour:02d}:{m:02d}", (span,))


_DATE_PATTERNS = (
    ("iso", re.compile(r"\b(\d{4})-(\d\d)-(\d\d)\b")),
    ("after", re.compile(r"\b(?:the )?day after tomorrow\b")),
    ("today", re.compile(r"\b(?:today|tonight|this evening|this afternoon)\b")),
    ("tomorrow", re.compile(r"\btomorrow\b")),
    ("weekday", re.compile(r"\b(next |this |on |coming )?(" + "|".join(_WEEKDAYS) + r")\b")),
    ("month_day", re.compile(r"\b(" + _MONTH + r") (?:the )?(" + _ORD + r")\b")),
    ("day_month", re.compile(r"\b(?:the )?(" + _ORD + r") (?:of )?(" + _MONTH + r")\b")),
)


def parse_date(text: str, today: date) -> Hit | None:
    """An ISO date from the first date said, relative to ``today`` (the tenant's)."""
    for kind, pattern in _DATE_PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        value = _date_of(kind, match, today)
        if value is not None:
            return value.isoformat(), (match.span(),)
    return None


def _date_of(kind: str, match: re.Match[str], today: date) -> date | None:
    if kind == "today":
        return today
    if kind == "tomorrow":
        return today + timedelta(days=1)
    if kind == "after":
        return today + timedelta(days=2)
    if kind == "weekday":
        ahead = (_WEEKDAYS.index(match[2]) - today.weekday()) % 7
        return today + timedelta(days=ahead or (7 if match[1] == "next " else 0))
    try:
        if kind == "iso":
            return date(int(match[1]), int(match[2]), int(match[3]))
        month_text, day_text = (match[1], match[2]) if kind == "month_day" else (match[2], match[1])
        month = next(i for i, m in enumerate(_MONTHS, 1) if m.startswith(month_text[:3]))
        day = _ordinal(day_text)
        if day is None:
            return None
        found = date(today.year, month, day)
        return found if found >= today else date(today.year + 1, month, day)
    except ValueError:
        return None


_NAME_CUES = r"(?:my name is|my name's|name is|name's|the name is|under the name(?: of)?|call me|this is)"
_NAME_CUES_BARE = r"(?:it's|it is|i'm|i am|that's|that is|yes|sure|ok|okay)?"
_NAME_STOP = frozenset("""a an the and at for to on in with please thanks thank i i'd id i'm im calling looking
here just not so it this that my me we booking book table order today tomorrow tonight yes no okay ok hi hello
hey sure good fine from about wondering trying going ringing phoning is was be really interested after of""".split())
_NAME_WORD = r"([a-z][a-z'\-]*)"


def parse_name(original: str, slot: RuleSlot, bare: bool) -> str | None:
    """A name of one or two words after a cue ("my name is ..."), or the whole answer when asked."""
    text = original[:MAX_TEXT].replace("\u2019", "'")
    cue = re.search(r"(?i)\b" + _NAME_CUES + r"\s+" + _NAME_WORD + r"(?:\s+" + _NAME_WORD + r")?", text)
    if cue is None and bare:
        cue = re.match(r"(?i)\s*" + _NAME_CUES_BARE + r"[\s,]*" + _NAME_WORD + r"(?:\s+" + _NAME_WORD + r")?", text)
    if cue is None:
        return None
    words = []
    for word in (cue[1], cue[2]):
        if not word or word.lower() in _NAME_STOP:
            break
        words.append(word if not word.islower() else word.capitalize())
    return " ".join(words) or None


def parse_items(text: str, slot: RuleSlot) -> Hit | None:
    """Menu items said with an optional quantity: [{"name", "qty"}] in the order said."""
    found: list[tuple[int, str, int]] = []
    spans: list[Span] = []
    for choice in sorted(slot.choices, key=len, reverse=True):  # "garlic bread" before "bread"
        pattern = re.compile(r"\b(?:(a|an|" + _NUM + r") )?" + re.escape(normalize(choice)) + r"(?:e?s)?\b")
        matches = list(pattern.finditer(_blank(text, spans)))
        for match in matches:
            qty = 1 if match[1] in (None, "a", "an") else word_number(match[1]) or 1
            found.append((match.start(), choice, qty))
        spans.extend(m.span() for m in matches)
    if not found:
        return None
    return [{"name": name, "qty": qty} for _, name, qty in sorted(found)], tuple(spans)


def parse_text(original: str, slot: RuleSlot, bare: bool) -> str | None:
    text = original[:MAX_TEXT].strip()
    if slot.pattern:
        match = re.search(slot.pattern, text, re.IGNORECASE)
        if match:
            return (match[1] if match.groups() and match[1] is not None else match[0]).strip() or None
        return None
    return text or None if bare else None


_ORDER = {"date": 0, "time": 1, "items": 2, "count": 3, "number": 4, "name": 5, "text": 6}


def extract(slots: Mapping[str, RuleSlot], original: str, today: date, asked: str | None) -> dict[str, Any]:
    """Every slot value said in one caller turn. Dates and times are taken first and blanked out,
    so "for two at seven" gives a count of 2 and a time of 19:00."""
    text = normalize(original)
    found: dict[str, Any] = {}
    for name, slot in sorted(slots.items(), key=lambda kv: _ORDER[kv[1].type]):
        bare = name == asked
        hit: Hit | None
        if slot.type == "date":
            hit = parse_date(text, today)
        elif slot.type == "time":
            hit = parse_time(text, slot, bare)
        elif slot.type == "items":
            hit = parse_items(text, slot)
        elif slot.type == "count":
            hit = parse_count(text, slot, bare)
        elif slot.type == "number":
            hit = parse_number(text, slot, bare)
        else:
            value = (parse_name if slot.type == "name" else parse_text)(original, slot, bare)
            hit = None if value is None else (value, ())
        if hit is not None:
            found[name] = hit[0]
            text = _blank(text, hit[1])
    return found


# Speaking values

def time_spoken(hhmm: str) -> str:
    h, m = int(hhmm[:2]), int(hhmm[3:])
    suffix = "AM" if h < 12 else "PM"
    h12 = h % 12 or 12
    return f"{h12} {suffix}" if m == 0 else f"{h12}:{m:02d} {suffix}"


def date_spoken(iso: str, today: date) -> str:
    day = date.fromisoformat(iso)
    ahead = (day - today).days
    if ahead == 0:
        return "today"
    if ahead == 1:
        return "tomorrow"
    weekday = _WEEKDAYS[day.weekday()].capitalize()
    if 1 < ahead < 7:
        return f"on {weekday}"
    year = f", {day.year}" if day.year != today.year else ""
    return f"on {weekday}, {_MONTHS[day.month - 1].capitalize()} {day.day}{year}"


def spoken(value: Any, today: date) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return number_words(value)
    if isinstance(value, str):
        if re.fullmatch(r"\d\d:\d\d", value):
            return time_spoken(value)
        if re.fullmatch(r"\d{4}-\d\d-\d\d", value):
            try:
                return date_spoken(value, today)
            except ValueError:
                return value
        return value
    if isinstance(value, list):
        parts = [_item_spoken(v, today) for v in value]
        if len(parts) < 2:
            return "".join(parts)
        # Things ordered are listed with "and"; anything else (alternative times) with "or".
        joiner = "and" if all(isinstance(v, dict) for v in value) else "or"
        return f"{', '.join(parts[:-1])} {joiner} {parts[-1]}"
    return "" if value is None else str(value)


def _item_spoken(value: Any, today: date) -> str:
    if isinstance(value, dict) and "name" in value:
        qty = value.get("qty", 1)
        qty = qty if isinstance(qty, int) else 1
        return f"{number_words(qty)} {value['name']}{'s' if qty > 1 else ''}"
    return spoken(value, today)


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_FIELD = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def template_values(values: Mapping[str, Any], today: date) -> dict[str, str]:
    """What ``{key}`` can name in a reply: each value as is, ``{key_spoken}`` (words a caller
    hears: "two", "7 PM", "tomorrow", "19:00 or 19:30" -> "7 PM or 7:30 PM") and, for text,
    ``{key_spelled}`` (character by character, for references)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, (list, dict)):
            out[key] = json.dumps(value)
        else:
            out[key] = "" if value is None else str(value)
        out[f"{key}_spoken"] = spoken(value, today)
        if isinstance(value, str):
            out[f"{key}_spelled"] = " ".join(value.replace(" ", ""))
    return out


def render(template: str, values: Mapping[str, str]) -> str:
    text = _FIELD.sub(lambda m: values.get(m[1], ""), template)
    return re.sub(r"\s+([.,?!])", r"\1", " ".join(text.split()))


# The script, replayed

@dataclass
class _State:
    slots: dict[str, Any] = field(default_factory=dict)
    active: str | None = None  # the intent in progress
    asked: str | None = None  # the slot the last reply asked for
    confirm: RuleConfirm | None = None  # the yes/no question the last reply asked
    pending: tuple[str, str] | None = None  # (intent, tool) whose result comes next


@dataclass(frozen=True)
class Action:
    reply: str = ""
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Intent:
    rule: RuleIntent
    phrases: tuple[re.Pattern[str], ...]
    patterns: tuple[re.Pattern[str], ...]
    uses: frozenset[str]  # slots its tool arguments or requirements name

    def matches(self, normalized: str, original: str) -> bool:
        return any(p.search(normalized) for p in self.phrases) or any(p.search(original) for p in self.patterns)


class Script:
    """A validated RulesConfig, compiled, with the clock and time zone that resolve dates."""

    def __init__(self, config: RulesConfig, timezone: str = "UTC",
                 clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.zone = ZoneInfo(timezone)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.intents = {i.name: _compile(i) for i in config.intents}
        self.yes = tuple(_phrase(w) for w in config.yes_words)
        self.no = tuple(_phrase(w) for w in config.no_words)

    def today(self) -> date:
        return self.clock().astimezone(self.zone).date()

    def respond(self, messages: Sequence[Message], tools: frozenset[str]) -> Action:
        """The answer to the last message (nothing when the last message is the brain's own)."""
        state, action = _State(), Action()
        for message in messages:
            if message.role == "user":
                action = self._on_user(state, message.content, tools)
            elif message.role == "tool":
                action = self._on_tool(state, message)
        return action if messages and messages[-1].role in ("user", "tool") else Action()

    # A caller turn

    def _on_user(self, state: _State, original: str, tools: frozenset[str]) -> Action:
        today = self.today()
        text = normalize(original)
        said = extract(self.config.slots, original, today, state.asked)
        changed = {k for k, v in said.items() if state.slots.get(k) != v}
        state.slots.update(said)
        confirm, asked = state.confirm, state.asked
        state.confirm = state.asked = state.pending = None
        active = self.intents.get(state.active) if state.active else None

        if confirm is not None:
            if active is not None and changed & active.uses:  # "no, make it eight": ask again
                return self._run(state, active, tools)
            answer = self._yes_or_no(text)
            target = confirm.yes if answer == "yes" else confirm.no if answer == "no" else None
            if isinstance(target, str):
                return self._run(state, self.intents[target], tools)
            if isinstance(target, RuleOutcome):
                return self._apply(state, target, self._values(state, None))
        intent = next((i for i in self.intents.values() if i.matches(text, original[:MAX_TEXT])), None)
        if intent is not None:
            return self._run(state, intent, tools)
        if active is not None and set(said) & active.uses:
            return self._run(state, active, tools)
        if asked is not None and active is not None:
            state.asked = asked
            question = active.rule.ask.get(asked) or _default_question(asked)
            return Action(render(f"{self.config.reprompt} {question}", self._values(state, None)))
        return Action(self.config.fallback)

    def _yes_or_no(self, text: str) -> str | None:
        """Whichever of a yes word and a no word comes first."""
        first: list[tuple[int, str]] = []
        for answer, phrases in (("yes", self.yes), ("no", self.no)):
            hits = [m.start() for p in phrases if (m := p.search(text))]
            if hits:
                first.append((min(hits), answer))
        return min(first)[1] if first else None

    def _run(self, state: _State, intent: _Intent, tools: frozenset[str]) -> Action:
        rule = intent.rule
        if rule.tool or rule.requires:
            state.active = rule.name
        values = self._raw(state)
        missing = [s for s in rule.requires if values.get(s) is None]
        if missing:
            state.asked = missing[0]
            question = rule.ask.get(missing[0]) or _default_question(missing[0])
            return Action(render(question, self._values(state, None)))
        spoken_values = self._values(state, None)
        reply = render(rule.reply, spoken_values)
        if rule.tool is None:
            state.confirm = rule.confirm
            return Action(reply)
        if rule.tool not in tools:  # the agent does not have this tool: say so, do not pretend
            after = self._apply(state, rule.on_error or RuleOutcome(reply=self.config.error_reply), spoken_values)
            return Action(" ".join(filter(None, (reply, after.reply))))
        state.pending = (rule.name, rule.tool)
        return Action(reply, rule.tool, _arguments(rule.arguments, values, spoken_values))

    # A tool result

    def _on_tool(self, state: _State, message: Message) -> Action:
        pending, state.pending = state.pending, None
        result, failed = parse_result(message.content)
        if pending is not None and message.name in (None, pending[1]):
            rule = self.intents[pending[0]].rule
        else:  # a call the script did not make (a keypad digit mapped to a tool): the intent with that tool
            rule = next((i.rule for i in self.intents.values() if i.rule.tool and i.rule.tool == message.name), None)
            if rule is None:
                return Action(self.config.error_reply if failed else "")
        values = self._values(state, result)
        if failed:
            return self._apply(state, rule.on_error or RuleOutcome(reply=self.config.error_reply), values)
        outcome = next((o for o in rule.results if _when(o.when, result)), None)
        return self._apply(state, outcome or RuleOutcome(), values)

    def _apply(self, state: _State, outcome: RuleOutcome, values: Mapping[str, str]) -> Action:
        reply = render(outcome.reply, values)
        if outcome.reset:
            state.slots.clear()
            state.active = None
        state.confirm = outcome.confirm
        state.asked = outcome.ask
        return Action(reply)

    # Values

    def _raw(self, state: _State) -> dict[str, Any]:
        """The slots, with defaults for those never said."""
        values = dict(state.slots)
        for name, slot in self.config.slots.items():
            if values.get(name) is None and slot.default is not None:
                default = extract({name: slot}, str(slot.default), self.today(), name).get(name)
                values[name] = default if default is not None else slot.default
        return values

    def _values(self, state: _State, result: Mapping[str, Any] | None) -> dict[str, str]:
        return template_values({**self._raw(state), **(result or {})}, self.today())


def _compile(rule: RuleIntent) -> _Intent:
    uses = set(rule.requires)
    for value in rule.arguments.values():
        if isinstance(value, str):
            uses.update(_FIELD.findall(value))
    return _Intent(rule, tuple(_phrase(k) for k in rule.keywords),
                   tuple(re.compile(p, re.IGNORECASE) for p in rule.patterns), frozenset(uses))


def _default_question(slot: str) -> str:
    return f"Could you tell me the {slot.replace('_', ' ')}?"


def _arguments(templates: Mapping[str, Any], raw: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """Tool arguments: "{slot}" alone passes the slot's value as is (a number stays a number) and
    is left out when unknown; other strings are rendered; other JSON values pass unchanged."""
    out: dict[str, Any] = {}
    for key, template in templates.items():
        if isinstance(template, str) and (whole := _WHOLE_FIELD.match(template)):
            if raw.get(whole[1]) is not None:
                out[key] = raw[whole[1]]
        elif isinstance(template, str):
            out[key] = render(template, values)
        else:
            out[key] = template
    return out


def _when(expected: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
    for key, want in expected.items():
        have = result.get(key)
        if isinstance(want, bool):
            if bool(have) != want:
                return False
        elif have != want:
            return False
    return True


def parse_result(content: str) -> tuple[dict[str, Any], bool]:
    """A tool message's content as fields, and whether the tool failed. Accepts the result's
    content (our error results carry ``status`` and ``error``) or a whole serialised ToolResult."""
    try:
        data = json.loads(content)
    except (TypeError, ValueError):
        return {"result": content}, False
    failed = False
    if isinstance(data, dict) and "content" in data and data.get("status") in ("ok", "error", "timeout"):
        failed = data["status"] != "ok"
        data = data["content"]
    if not isinstance(data, dict):
        return {"result": data}, failed
    return data, failed or "error" in data or data.get("status") in ("error", "timeout")


# The provider

class RulesBrain(LanguageModel):
    """The ``rules`` LLM provider. ``rules``: the agent version's ``rules`` (a RulesConfig or its
    dict); None: BASIC_RULES. ``timezone``: the tenant's, for "today" and weekdays."""

    name = "rules"

    def __init__(self, rules: RulesConfig | Mapping[str, Any] | None = None, *, timezone: str = "UTC",
                 clock: Callable[[], datetime] | None = None, policy: RetryPolicy | None = None) -> None:
        super().__init__(policy)
        config = rules if isinstance(rules, RulesConfig) else RulesConfig.model_validate(rules or BASIC_RULES)
        self.script = Script(config, timezone, clock)

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        tools = frozenset(t.name for t in request.tools)
        action = self.script.respond(request.messages, tools)
        words = action.reply.split()
        for start in range(0, len(words), WORDS_PER_DELTA):
            chunk = " ".join(words[start:start + WORDS_PER_DELTA])
            yield TextDelta(chunk if start + WORDS_PER_DELTA >= len(words) else chunk + " ")
            await asyncio.sleep(0)  # let the pipeline's chunker run between pieces, as with a real stream
        if action.tool is None:
            yield LlmDone("end_turn")
            return
        # Named by the position of the turn it answers: unique in the call, the same on every replay.
        yield ToolCallRequest(ToolCall(f"rules_{len(request.messages)}", action.tool, action.arguments))
        yield LlmDone("tool_use")


# Scripts

# What an agent without a script gets: greet, hand over to a person, say goodbye.
BASIC_RULES: dict[str, Any] = {
    "intents": [
        {"name": "transfer", "keywords": ["[dtmf 0]", "person", "human", "someone", "operator", "agent",
                                          "representative", "staff"],
         "tool": "transfer_to_human",
         "results": [{"reply": "Of course. I'm putting you through now."}],
         "on_error": {"reply": "Sorry, there's nobody available to take your call right now."}},
        {"name": "goodbye", "keywords": ["goodbye", "bye", "no thanks", "no thank you", "that's all", "that's it",
                                         "nothing else"],
         "reply": "Thanks for calling. Goodbye!", "tool": "end_call", "on_error": {}},
        {"name": "greeting", "keywords": ["hello", "hi", "hey", "good morning", "good afternoon", "good evening"],
         "reply": "Hello! I'm an automated assistant. I can put you through to a person. Would you like that?",
         "confirm": {"yes": "transfer", "no": {"reply": "Alright. Is there anything else?"}}},
    ],
    "fallback": "Sorry, I'm an automated assistant and I can't help with that. "
                "Say 'a person' to be put through, or 'goodbye' to end the call.",
}

_MENU_WORDS = ["margherita", "marinara", "diavola", "quattro formaggi", "garlic bread", "tiramisu", "lemonade"]
_ANYTHING_ELSE = {"no": "goodbye", "yes": {"reply": "Sure, what else can I do for you?"}}

# The demo: a restaurant that books tables and takes pickup orders (runtime.tools.booking).
DEMO_BOOKING_RULES: dict[str, Any] = {
    "slots": {
        "party_size": {"type": "count"},
        "time": {"type": "time", "pm_hours": [1, 11]},  # a dinner place: "at four" is 16:00
        "date": {"type": "date", "default": "today"},
        "name": {"type": "name"},
        "items": {"type": "items", "choices": _MENU_WORDS},
    },
    "intents": [
        {"name": "transfer",
         "keywords": ["[dtmf 0]", "a person", "real person", "a human", "operator", "manager", "representative",
                      "member of staff"],
         "patterns": [r"\b(talk|speak)\s+(to|with)\b"],
         "tool": "transfer_to_human",
         "results": [{"reply": "Of course. I'm putting you through to a colleague now."}],
         "on_error": {"reply": "Sorry, there's nobody available to take your call right now. "
                               "Can I help you with anything else?", "confirm": _ANYTHING_ELSE}},
        {"name": "goodbye",
         "keywords": ["goodbye", "bye", "no thanks", "no thank you", "that's all", "that is all", "that's it",
                      "nothing else"],
         "reply": "Thanks for calling Trattoria Demo. Goodbye!", "tool": "end_call", "on_error": {}},
        {"name": "book", "keywords": ["book", "booking", "table", "reservation", "reserve"],
         "requires": ["party_size", "time"],
         "ask": {"party_size": "Sure. For how many people?", "time": "And what time would you like?"},
         "reply": "Let me check.",
         "tool": "check_availability",
         "arguments": {"date": "{date}", "time": "{time}", "party_size": "{party_size}"},
         "results": [
             {"when": {"available": True},
              "reply": "I have a table for {party_size_spoken} at {time_spoken} {date_spoken}. Shall I book it?",
              "confirm": {"yes": "confirm_booking",
                          "no": {"reply": "No problem. What time would suit you better?", "ask": "time"}}},
             {"when": {"reason": "closed"},
              "reply": "Sorry, we're open from 5 PM to 11 PM, and the last table is at 10:30. "
                       "What time would suit you?", "ask": "time"},
             {"when": {"reason": "party_too_large"},
              "reply": "For groups larger than eight, our staff arrange the booking. Shall I put you through?",
              "confirm": {"yes": "transfer", "no": {"reply": "Alright. Is there anything else I can do?",
                                                    "reset": True}}},
             {"when": {"reason": "past"},
              "reply": "Sorry, that time has already passed. What time would you like?", "ask": "time"},
             {"when": {"alternatives": []},
              "reply": "Sorry, we're fully booked {date_spoken}. Would another day work?", "ask": "date"},
             {"reply": "Sorry, we're full at {time_spoken}. I could do {alternatives_spoken}. Would one of those "
                       "work?", "ask": "time"},
         ],
         "on_error": {"reply": "Sorry, I can't check the bookings right now. Please call back a little later.",
                      "reset": True}},
        {"name": "confirm_booking", "requires": ["party_size", "time"],
         "tool": "create_booking",
         "arguments": {"date": "{date}", "time": "{time}", "party_size": "{party_size}", "name": "{name}"},
         "results": [{"reply": "You're all set: a table for {party_size_spoken} at {time_spoken} {date_spoken}. "
                               "Your reference is {reference_spelled}. Is there anything else I can help with?",
                      "confirm": _ANYTHING_ELSE, "reset": True}],
         "on_error": {"reply": "Sorry, that table has just been taken. I could do {alternatives_spoken}. "
                               "What time would you like?", "ask": "time"}},
        {"name": "order", "keywords": ["order", "takeaway", "take away", "pick up", "pickup", "collect"],
         "requires": ["items"],
         "ask": {"items": "What would you like? We have margherita, marinara, diavola, quattro formaggi, "
                          "garlic bread, tiramisu and lemonade."},
         "tool": "create_order",
         "arguments": {"items": "{items}", "pickup_time": "{time}", "name": "{name}"},
         "results": [
             {"when": {"pickup_time": None},
              "reply": "Thanks! That's {items_spoken}, {total} dollars in total. It will be ready in about twenty "
                       "minutes. Your order number is {reference_spelled}. Anything else?",
              "confirm": _ANYTHING_ELSE, "reset": True},
             {"reply": "Thanks! That's {items_spoken}, {total} dollars in total, ready at {pickup_time_spoken}. "
                       "Your order number is {reference_spelled}. Anything else?",
              "confirm": _ANYTHING_ELSE, "reset": True},
         ],
         "on_error": {"reply": "Sorry, I couldn't place that order. We have margherita, marinara, diavola, "
                               "quattro formaggi, garlic bread, tiramisu and lemonade. What would you like?",
                      "ask": "items"}},
        {"name": "hours", "keywords": ["opening hours", "open", "close", "closing", "hours"],
         "reply": "We're open every day from 5 PM to 11 PM."},
        {"name": "greeting", "keywords": ["hello", "hi", "hey", "good morning", "good afternoon", "good evening"],
         "reply": "Hello! I can book a table, take a pickup order, or put you through to a member of staff. "
                  "What would you like?"},
        {"name": "thanks", "keywords": ["thank you", "thanks", "great", "perfect"],
         "reply": "You're welcome! Is there anything else I can help with?", "confirm": _ANYTHING_ELSE},
    ],
    "fallback": "Sorry, I didn't catch that. I can book a table, take a pickup order, or put you through to a "
                "member of staff.",
}
