"""What a call's record learns from its conversation (runtime.calls.call_record reads it).

``attach(session, chosen, ...)`` tells the session, once its engines are chosen:

- ``engines_used``: the STT, LLM (and model), TTS and voice answering when the call ends, after
  any failover (``provider_name`` / ``serving`` of a fallback chain);
- ``brain_notes``: the rules brain's intents and slot values, when it is the brain (alone or in
  the chain);
- ``analyst``: with ``analysis.enabled`` and a cloud LLM in the version's LLM chain, an
  ``LlmAnalyst`` that writes the summary after the call through that chain (the tenant's
  credentials, its fallbacks in order; offline engines are no writers and are left out).

The analysis is off the call's path (the record runs after the call) and bounded: a time limit,
at most ``analysis.concurrency`` at once per runtime and ``analysis.max_pending`` waiting (past
that a call is skipped), the transcript cut to its last ``max_transcript_chars``, the answer to
``max_tokens``, and what comes back checked field by field (lengths, counts, the sentiment's
words). A failure raises for the record to note; it never reaches the call.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.providers import registry
from runtime.providers.base import LanguageModel, LlmRequest, Message, TextDelta
from runtime.providers.chains import CallProviders, ProviderChains
from runtime.providers.failover import FailoverLLM
from runtime.providers.llm.rules import RulesBrain
from runtime.providers.registry import MissingCredential, ProviderCredential

if TYPE_CHECKING:
    from runtime.calls.call_record import CallFacts
    from runtime.calls.session import CallSession
    from runtime.control.schemas import AgentConfig

SENTIMENTS = ("positive", "neutral", "negative", "mixed")
MAX_TEXT = 1000
MAX_INTENT = 64
MAX_ENTITIES = 20
MAX_ENTITY_CHARS = 200
MAX_FOLLOW_UP = 500
MAX_TOOL_LINE = 400

SYSTEM = (
    "You write the log entry of a phone call handled by an AI agent, for the business's staff. "
    "Answer with one JSON object and nothing else: "
    '{"text": "what happened, in one to three sentences", '
    '"intent": "what the caller wanted, one to four words in snake_case", '
    '"entities": {"name": "value"} for the facts given in the call (names, dates, times, numbers, references), '
    '"sentiment": "positive" or "neutral" or "negative" or "mixed", '
    '"follow_up": "what someone should do next, or null when nothing"}. '
    "Use only what the call says."
)

CredentialLookup = Callable[[str], Awaitable[ProviderCredential | None]]


class AnalysisFailed(Exception):
    pass


class AnalysisSkipped(Exception):
    """Too many calls wait for an analysis: this one is not analysed."""


class AnalysisGate:
    """Per runtime: how many analyses run and wait."""

    def __init__(self, settings: Any) -> None:  # runtime.config.AnalysisSettings (config: above this layer)
        self.settings = settings
        self.running = asyncio.Semaphore(settings.concurrency)
        self.pending = 0


def attach(session: CallSession, chosen: CallProviders, config: AgentConfig, *, chains: ProviderChains,
           gate: AnalysisGate | None, timezone: str, credentials: CredentialLookup) -> None:
    """Tell the session what its record reads of this conversation (see the module docstring)."""

    def engines() -> dict[str, str | None]:
        return {"stt_provider": chosen.stt.provider_name, "llm_provider": chosen.llm.provider_name,
                "llm_model": chosen.llm.model_name, "tts_provider": chosen.tts.provider_name,
                "tts_voice": chosen.tts.serving.voice_name}  # type: ignore[attr-defined]

    session.engines_used = engines
    brain = _rules_brain(chosen.llm)
    if brain is not None:
        session.brain_notes = brain.notes
    if gate is not None and gate.settings.enabled:
        names = writers(chains, config)
        if names:
            session.analyst = LlmAnalyst(gate, chains, config, names, timezone, credentials)


def _rules_brain(llm: LanguageModel) -> RulesBrain | None:
    engines = [e for _, e in llm.chain.engines] if isinstance(llm, FailoverLLM) else [llm]
    return next((e for e in engines if isinstance(e, RulesBrain)), None)


def writers(chains: ProviderChains, config: AgentConfig) -> list[str]:
    """The cloud LLMs of the version's chain, in order: those that can write a summary."""
    out = []
    for name in chains.chain(config, "llm"):
        entry = registry.find("llm", name)
        if entry is not None and not entry.offline and entry.capabilities.replies:
            out.append(name)
    return out


@dataclass(eq=False)
class LlmAnalyst:
    gate: AnalysisGate
    chains: ProviderChains
    config: AgentConfig
    names: list[str]
    timezone: str
    credentials: CredentialLookup

    @property
    def provider(self) -> str:
        return self.names[0]

    async def analyze(self, facts: CallFacts, outcome: str) -> dict[str, Any]:
        gate = self.gate
        if gate.pending >= gate.settings.max_pending:
            raise AnalysisSkipped(f"more than {gate.settings.max_pending} calls wait for an analysis")
        gate.pending += 1
        try:
            async with gate.running, asyncio.timeout(gate.settings.timeout_s):
                llm, owned = await self._llm()
                try:
                    answer = await self._ask(llm, facts, outcome)
                finally:
                    for engine in owned:
                        await engine.aclose()
        except TimeoutError:
            raise AnalysisFailed(f"no answer within {gate.settings.timeout_s:g} s") from None
        finally:
            gate.pending -= 1
        found = parse_answer(answer)
        found["provider"] = llm.provider_name
        return found

    async def _llm(self) -> tuple[LanguageModel, list[LanguageModel]]:
        """The chain of writers, made for this analysis (their clients closed after it)."""
        choice = self.chains.first_choice(self.config, "llm")
        engines: list[tuple[str, LanguageModel]] = []
        problems: list[str] = []
        for name in self.names:
            entry = registry.get("llm", name)
            try:
                credential = await self.credentials(entry.credential_name) if entry.credential else None
                engines.append((name, self.chains.engine("llm", name, choice, credential=credential,
                                                         agent=self.config, timezone=self.timezone)))
            except (MissingCredential, ValueError) as exc:
                problems.append(f"{name}: {exc}")
        if not engines:
            raise AnalysisFailed("no language model to write it: " + "; ".join(problems))
        made = [engine for _, engine in engines]
        if len(engines) == 1:
            return made[0], made
        return FailoverLLM(engines), made

    async def _ask(self, llm: LanguageModel, facts: CallFacts, outcome: str) -> str:
        request = LlmRequest(system=SYSTEM, messages=(Message("user", self._facts_text(facts, outcome)),),
                             temperature=0.0, max_tokens=self.gate.settings.max_tokens)
        parts: list[str] = []
        async for event in llm.stream(request):
            if event.__class__ is TextDelta:
                parts.append(event.text)  # type: ignore[union-attr]
        return "".join(parts)

    def _facts_text(self, facts: CallFacts, outcome: str) -> str:
        lines = [f"Direction: {facts.direction}", f"Ended: {facts.end_reason or facts.status}", f"Outcome: {outcome}"]
        if facts.tools:
            lines.append("Tools the agent used:")
            for tool in facts.tools:
                line = (f"- {tool['name']}({json.dumps(tool['arguments'], default=str)}) -> {tool['status']}: "
                        f"{json.dumps(tool['result'], default=str)}")
                lines.append(line[:MAX_TOOL_LINE])
        said = "\n".join(f"{t['role']}: {t['text']}" for t in facts.transcript)
        limit = self.gate.settings.max_transcript_chars
        if len(said) > limit:
            said = "[...]\n" + said[-limit:]
        lines += ["Transcript:", said or "(nothing was said)"]
        return "\n".join(lines)


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_answer(answer: str) -> dict[str, Any]:
    """The model's JSON object, each field checked and bounded; AnalysisFailed when there is none."""
    match = _OBJECT.search(answer)
    try:
        data = json.loads(match.group(0)) if match else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise AnalysisFailed("the model's answer was not a JSON object")
    text = data.get("text")
    intent = data.get("intent")
    sentiment = str(data.get("sentiment") or "").strip().lower()
    follow_up = data.get("follow_up")
    entities: dict[str, Any] = {}
    raw = data.get("entities")
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        if len(entities) >= MAX_ENTITIES:
            break
        if isinstance(value, bool | int | float) or value is None:
            entities[str(key)[:40]] = value
        elif isinstance(value, str):
            entities[str(key)[:40]] = value[:MAX_ENTITY_CHARS]
        else:
            entities[str(key)[:40]] = json.dumps(value, default=str)[:MAX_ENTITY_CHARS]
    return {
        "text": text.strip()[:MAX_TEXT] if isinstance(text, str) and text.strip() else None,
        "intent": _snake(intent) if isinstance(intent, str) else None,
        "entities": entities,
        "sentiment": sentiment if sentiment in SENTIMENTS else None,
        "follow_up": follow_up.strip()[:MAX_FOLLOW_UP] if isinstance(follow_up, str) and follow_up.strip()
        and follow_up.strip().lower() not in ("null", "none") else None,
    }


def _snake(value: str) -> str | None:
    words = re.findall(r"[a-z0-9]+", value.lower())
    return "_".join(words)[:MAX_INTENT] or None
