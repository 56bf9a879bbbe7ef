"""The ``rules`` brain's reading and speaking of values: numbers, counts, times, dates, names
and menu items pulled out of a caller's words, and the spoken forms and templates of replies.
Hand-written parsers (see runtime.providers.llm.rules for what they accept)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from runtime.control.patterns import usable_pattern
from runtime.control.schemas import RuleSlot

MAX_TEXT = 500  # characters of a caller turn the parsers look at (bounds regex work per turn)

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
# Spanish numbers a booking needs (a version in Spanish; "once", 11, is left out: it is an English word).
_ES_UNITS = {"un": 1, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
             "ocho": 8, "nueve": 9, "diez": 10, "doce": 12}
_NUM = (r"(?:(?:" + "|".join(_TENS) + r")(?: (?:one|two|three|four|five|six|seven|eight|nine))?|"
        + "|".join(sorted([*_UNITS, *_ES_UNITS], key=len, reverse=True)) + r"|\d{1,3})")
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
    if text in _ES_UNITS:
        return _ES_UNITS[text]
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


def phrase(words: str) -> re.Pattern[str]:
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
    re.compile(r"\b(?:para|somos|mesa para) (" + _NUM + r")\b(?! ?(?:y media|y cuarto|:|\d))"),
    re.compile(r"\b(" + _NUM + r") (?:personas|persona|comensales|adultos)\b"),
)
_COUNT_ALONE = re.compile(r"\b(?:just )?(me|myself|" + _NUM + r")\b")
# What speech recognition writes for "two" and "four" in a count: "to people", "for people", "a table
# for too at seven". Only beside a people word, or after "for" at the end of the phrase.
_READ = r"\s{3,}"  # a time or date already read, blanked (normalized text has single spaces)
# "for for tomorrow" (for four) and "we are for, can I book" (we are four) too.
_COUNT_HOMOPHONES = {"to": 2, "too": 2, "for": 4}
_COUNT_MISHEARD = (
    re.compile(r"\b(to|too|for) (?:people|persons|guests|adults|diners|of us)\b"),
    re.compile(r"\b(?:table for|party of|for) (to|too|for)(?=\s+(?:at|on|tonight|tomorrow|please)\b|\s*$|" + _READ + ")"),
    re.compile(r"\b(?:we are|we're) (to|too|for)(?=\s+(?:can|could|and|at|on|tonight|tomorrow|please)\b|\s*$|"
               + _READ + ")"),
)


def parse_count(text: str, slot: RuleSlot, bare: bool) -> Hit | None:
    for pattern in _COUNT_CUED:
        match = pattern.search(text)
        if match and (n := word_number(match[1])) and 0 < n < 100:
            return n, (match.span(),)
    for pattern in _COUNT_MISHEARD:
        if match := pattern.search(text):
            return _COUNT_HOMOPHONES[match[1]], (match.span(),)
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
    # Speech recognition hears "at seven" as "at heaven" (the caller set's espeak voices, often).
    ("cued", re.compile(r"\bat (heaven)(?: " + _MIN + r")?\b")),
    # The "at" lost to a comma: "a table for ten, seven on Sunday", "a table for 4.6, 45, please"
    # (for four, six forty five). Only right after a count and before the end of the request.
    ("after_count", re.compile(r"\bfor (?:\d{1,2}|" + "|".join(_UNITS[19:0:-1]) + r") " + _H + r"(?: " + _MIN + r")?"
                               r"(?=\s+(?:on|tonight|tomorrow|this|please)\b|\s*$)")),  # the date may be blanked
    # A clock reading with its "at" lost: "for four tomorrow, six thirty", "we are for caribou car,
    # seven forty five" (caller set, tune half). Only an hour word with a minute word no count is
    # said with ("thirty five people" is, "six thirty people" is not).
    ("reading", re.compile(r"\b" + _H + r" (fifteen|twenty|thirty|forty(?: five)?|fifty|oh (?:"
                           + "|".join(_UNITS[1:10]) + r"))\b(?! (?:people|persons|person|guests|adults|of us))")),
    # Spanish: "a las ocho", "a las ocho y media de la tarde", "a la una".
    ("es", re.compile(r"\ba las? (\d{1,2}|" + "|".join(_ES_UNITS) + r")(?: y (media|cuarto))?"
                      r"(?: de la (tarde|noche|mañana))?\b")),
)
_TIME_BARE = re.compile(r"\b" + _H + r"(?: " + _MIN + r")?\b")


_HOUR_MISHEARD = {"heaven": 7}


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
    if kind == "es":
        h = word_number(match[1])
        mark = {"tarde": "pm", "noche": "pm", "mañana": "am"}.get(match[3] or "")
        hour = None if h is None else _hour(h, mark, pm_hours)
        minute = {"media": 30, "cuarto": 15}.get(match[2] or "", 0)
        return None if hour is None else (f"{hour:02d}:{minute:02d}", (span,))
    if kind == "past":
        amount = {"half": 30, "quarter": 15}.get(match[1]) or word_number(match[1])
        h = word_number(match[3])
        hour = None if h is None else _hour(h, match[4], pm_hours)
        if hour is None or not amount or amount >= 60:
            return None
        total = hour * 60 + (amount if match[2] != "to" else -amount)
        return f"{total // 60 % 24:02d}:{total % 60:02d}", (span,)
    if kind == "after_count":  # the count is left for parse_count
        h, m, span = word_number(match[1]), _minute(match[2]), (match.start(1), match.end())
    else:
        h, m = _HOUR_MISHEARD.get(match[1]) or word_number(match[1]), _minute(match[2])
    if m is None:  # "at seven two people": the hour alone, the rest is left for the count
        m, span = 0, (span[0], match.end(1))
    hour = None if h is None else _hour(h, match[3] if kind == "marked" else None, pm_hours)
    return None if hour is None else (f"{hour:02d}:{m:02d}", (span,))


_DATE_PATTERNS = (
    ("iso", re.compile(r"\b(\d{4})-(\d\d)-(\d\d)\b")),
    ("after", re.compile(r"\b(?:the )?day after tomorrow\b")),
    ("today", re.compile(r"\b(?:today|tonight|this evening|this afternoon)\b")),
    ("tomorrow", re.compile(r"\b(?:tomorrow|(?<!de la )(?<!pasado )mañana)\b")),
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
        compiled = usable_pattern(slot.pattern)  # RE2; None: stored, and RE2 refuses it
        match = compiled.search(text) if compiled is not None else None
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


FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
WHOLE_FIELD = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


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
    text = FIELD.sub(lambda m: values.get(m[1], ""), template)
    return re.sub(r"\s+([.,?!])", r"\1", " ".join(text.split()))


# The script, replayed
