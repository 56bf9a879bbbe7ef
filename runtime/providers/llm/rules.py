"""The ``rules`` brain: a deterministic, offline stand-in for a language model.

It is not a language model and does not understand language. It matches the caller's latest
words against the intents of a script (keywords, as written or misheard by one sound, see
rules_fuzzy.py, and regular expressions, case-insensitive, in the script's order: the first match wins; with none, and no
intent in progress, the first keyworded intent whose two or more required slots the turn says), pulls a
few kinds of values out of the words with
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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from runtime.control.patterns import TenantRegex, usable_pattern
from runtime.control.schemas import RuleConfirm, RuleIntent, RuleOutcome, RulesConfig
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
from runtime.providers.llm.rules_fuzzy import TolerantKeywords
from runtime.providers.llm.rules_slots import (
    FIELD,
    MAX_TEXT,
    WHOLE_FIELD,
    extract,
    normalize,
    phrase,
    render,
    template_values,
)
from runtime.providers.registry import BuildContext

WORDS_PER_DELTA = 4
TOLERANT_CACHE = 256  # turns whose tolerant match is kept (each request replays the call's turns)

@dataclass
class _State:
    slots: dict[str, Any] = field(default_factory=dict)
    active: str | None = None  # the intent in progress
    asked: str | None = None  # the slot the last reply asked for
    confirm: RuleConfirm | None = None  # the yes/no question the last reply asked
    pending: tuple[str, str] | None = None  # (intent, tool) whose result comes next
    seen: dict[str, Any] = field(default_factory=dict)  # every slot value said in the call (never reset)


@dataclass(frozen=True)
class Action:
    reply: str = ""
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    intent: str | None = None  # the script's intent that made this answer (None: the fallback)


@dataclass(frozen=True)
class _Intent:
    rule: RuleIntent
    phrases: tuple[re.Pattern[str], ...]
    patterns: tuple[TenantRegex, ...]
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
        self.tolerant = TolerantKeywords([([normalize(k) for k in i.keywords], 0 if i.exact else i.fuzzy)
                                          for i in config.intents])
        self._misheard: dict[str, int | None] = {}  # turn text -> the first intent it has misheard
        self.yes = tuple(phrase(w) for w in config.yes_words)
        self.no = tuple(phrase(w) for w in config.no_words)

    def today(self) -> date:
        return self.clock().astimezone(self.zone).date()

    def respond(self, messages: Sequence[Message], tools: frozenset[str]) -> Action:
        """The answer to the last message (nothing when the last message is the brain's own)."""
        return self.replay(messages, tools)[0]

    def replay(self, messages: Sequence[Message], tools: frozenset[str]) -> tuple[Action, _State]:
        """``respond``, with the state the history leaves (its slots, and every value said)."""
        state, action = _State(), Action()
        for message in messages:
            if message.role == "user":
                action = self._on_user(state, message.content, tools)
            elif message.role == "tool":
                action = self._on_tool(state, message)
        return (action if messages and messages[-1].role in ("user", "tool") else Action()), state

    # A caller turn

    def _on_user(self, state: _State, original: str, tools: frozenset[str]) -> Action:
        today = self.today()
        text = normalize(original)
        said = extract(self.config.slots, original, today, state.asked)
        changed = {k for k, v in said.items() if state.slots.get(k) != v}
        state.slots.update(said)
        state.seen.update(said)
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
                return self._tagged(self._apply(state, target, self._values(state, None)),
                                    active.rule.name if active is not None else None)
        intent = self._intent(text, original[:MAX_TEXT])
        if intent is not None:
            return self._run(state, intent, tools)
        if active is not None and set(said) & active.uses:
            return self._run(state, active, tools)
        if active is None and (by_slots := self._intent_by_slots(said)) is not None:
            return self._run(state, by_slots, tools)
        if asked is not None and active is not None:
            state.asked = asked
            question = active.rule.ask.get(asked) or _default_question(asked)
            return Action(render(f"{self.config.reprompt} {question}", self._values(state, None)),
                          intent=active.rule.name)
        return Action(self.config.fallback)

    def _intent_by_slots(self, said: Mapping[str, Any]) -> _Intent | None:
        """With no keyword heard, the first intent a caller can name (it has keywords) whose two or
        more required slots this turn says: "we'd like to look for five people at six o'clock" is a
        booking whose "book" speech recognition lost."""
        return next((i for i in self.intents.values() if i.rule.keywords and len(i.rule.requires) >= 2
                     and all(s in said for s in i.rule.requires)), None)

    def _intent(self, text: str, original: str) -> _Intent | None:
        """The first intent in the script's order whose keywords or patterns match the turn, as
        written or misheard (rules_fuzzy.py)."""
        intents = list(self.intents.values())
        written = next((n for n, i in enumerate(intents) if i.matches(text, original)), None)
        if not self.tolerant:
            return None if written is None else intents[written]
        if text not in self._misheard:
            if len(self._misheard) >= TOLERANT_CACHE:
                self._misheard.clear()
            self._misheard[text] = self.tolerant.first(text)
        misheard = self._misheard[text]
        found = [n for n in (written, misheard) if n is not None]
        return intents[min(found)] if found else None

    def _yes_or_no(self, text: str) -> str | None:
        """Whichever of a yes word and a no word comes first."""
        first: list[tuple[int, str]] = []
        for answer, phrases in (("yes", self.yes), ("no", self.no)):
            hits = [m.start() for p in phrases if (m := p.search(text))]
            if hits:
                first.append((min(hits), answer))
        return min(first)[1] if first else None

    def _run(self, state: _State, intent: _Intent, tools: frozenset[str]) -> Action:
        return self._tagged(self._act(state, intent, tools), intent.rule.name)

    @staticmethod
    def _tagged(action: Action, intent: str | None) -> Action:
        return Action(action.reply, action.tool, action.arguments, intent) if intent else action

    def _act(self, state: _State, intent: _Intent, tools: frozenset[str]) -> Action:
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
            return self._tagged(self._apply(state, rule.on_error or RuleOutcome(reply=self.config.error_reply),
                                            values), rule.name)
        outcome = next((o for o in rule.results if _when(o.when, result)), None)
        return self._tagged(self._apply(state, outcome or RuleOutcome(), values), rule.name)

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
            uses.update(FIELD.findall(value))
    # The tenant's patterns on RE2 (linear time, case-insensitive); one RE2 refuses (stored by an
    # earlier release) is left out. Keywords are escaped by the product, so `re` serves them.
    patterns = tuple(filter(None, map(usable_pattern, rule.patterns)))
    return _Intent(rule, tuple(phrase(k) for k in rule.keywords), patterns, frozenset(uses))


def _default_question(slot: str) -> str:
    return f"Could you tell me the {slot.replace('_', ' ')}?"


def _arguments(templates: Mapping[str, Any], raw: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """Tool arguments: "{slot}" alone passes the slot's value as is (a number stays a number) and
    is left out when unknown; other strings are rendered; other JSON values pass unchanged."""
    out: dict[str, Any] = {}
    for key, template in templates.items():
        if isinstance(template, str) and (whole := WHOLE_FIELD.match(template)):
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
        # What the call's record reads (runtime.calls.call_record): the intents that answered, in
        # order, and every slot value the caller said.
        self.intents: list[str] = []
        self.entities: dict[str, Any] = {}

    async def check(self) -> str:
        return "built in"

    def notes(self) -> dict[str, Any]:
        """The call as the brain saw it: its intent (the first that acted with a tool other than
        end_call, else the first that answered), the intents in order, and the slot values said."""
        rules = self.script.intents
        acting = [name for name in self.intents
                  if name in rules and rules[name].rule.tool not in (None, "end_call")]
        intent = (acting or self.intents or [None])[0]
        return {"intent": intent, "intents": list(self.intents), "entities": dict(self.entities)}

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        tools = frozenset(t.name for t in request.tools)
        action, state = self.script.replay(request.messages, tools)
        if action.intent is not None and (not self.intents or self.intents[-1] != action.intent):
            if len(self.intents) < 100:
                self.intents.append(action.intent)
        self.entities = dict(state.seen)
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


def build(ctx: BuildContext) -> RulesBrain:
    """A brain per call: the version's script, the tenant's time zone."""
    return RulesBrain(ctx.rules, timezone=ctx.timezone, policy=ctx.policy)
