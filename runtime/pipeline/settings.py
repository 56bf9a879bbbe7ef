"""What one conversation is configured with: the agent version's prompt, greeting, turn-taking
and tool settings, and the lines the agent says on its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from runtime.control.schemas import NOT_UNDERSTOOD_REPLY, SILENCE_REPROMPT_S, AgentConfig
from runtime.pipeline.turns import TurnPolicy
from runtime.providers.models import language_code

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 10: "ten", 15: "fifteen", 20: "twenty", 30: "thirty"}
_UNSET: Any = object()


def _integrator_replies(llm: str | None) -> bool:
    """The version's llm is one that does not reply itself (the integrator's backend does)."""
    from runtime.providers import registry

    entry = registry.find("llm", llm) if llm else None
    return entry is not None and not entry.capabilities.replies


# The built-in lines in other languages (a version in that language that did not set its own
# not-understood reply gets them; English stays the default for any other language).
_LOCALIZED: dict[str, dict[str, str]] = {
    "es": {"reprompt": "¿Sigue ahí?",
           "silence_goodbye": "No oigo a nadie, así que voy a terminar la llamada. Adiós.",
           "filler": "Un momento, por favor.",
           "apology": "Perdone, he tenido un problema. ¿Puede repetirlo?",
           "goodbye": "Gracias por llamar. Adiós.",
           "transferring": "Le paso con un compañero ahora.",
           "not_understood": "Perdone, no le he entendido.",
           "minute_left": "Nos queda un minuto.", "minutes_left": "Nos quedan unos {n} minutos.",
           "seconds_left": "Nos quedan unos {n} segundos."},
    "de": {"reprompt": "Sind Sie noch da?",
           "silence_goodbye": "Ich höre niemanden, deshalb beende ich den Anruf jetzt. Auf Wiederhören.",
           "filler": "Einen Moment bitte.",
           "apology": "Entschuldigung, da gab es ein Problem. Können Sie das bitte wiederholen?",
           "goodbye": "Danke für Ihren Anruf. Auf Wiederhören.",
           "transferring": "Ich verbinde Sie jetzt.",
           "not_understood": "Entschuldigung, das habe ich nicht verstanden.",
           "minute_left": "Wir haben noch etwa eine Minute.", "minutes_left": "Wir haben noch etwa {n} Minuten.",
           "seconds_left": "Wir haben noch etwa {n} Sekunden."},
    "fr": {"reprompt": "Vous êtes toujours là ?",
           "silence_goodbye": "Je n'entends personne, je vais donc mettre fin à l'appel. Au revoir.",
           "filler": "Un instant, s'il vous plaît.",
           "apology": "Désolé, j'ai eu un problème. Pouvez-vous répéter ?",
           "goodbye": "Merci de votre appel. Au revoir.",
           "transferring": "Je vous transfère maintenant.",
           "not_understood": "Désolé, je n'ai pas compris.",
           "minute_left": "Il nous reste environ une minute.", "minutes_left": "Il nous reste environ {n} minutes.",
           "seconds_left": "Il nous reste environ {n} secondes."},
}


@dataclass(frozen=True, slots=True)
class Phrases:
    """What the agent says on its own (English defaults; ``for_language`` for es, de, fr)."""

    reprompt: str = "Are you still there?"
    silence_goodbye: str = "I can't hear anyone, so I'll end the call now. Goodbye."
    filler: str = "One moment please."
    apology: str = "Sorry, I had a problem there. Could you say that again?"
    goodbye: str = "Thank you for calling. Goodbye."
    transferring: str = "I'm transferring you now."
    language: str = "en"

    @classmethod
    def for_language(cls, language: str | None) -> Phrases:
        code = language_code(language)
        local = _LOCALIZED.get(code)
        if local is None:
            return cls()
        return cls(**{f.name: local[f.name] for f in fields(cls) if f.name in local}, language=code)

    def duration_warning(self, remaining_s: int) -> str:
        local = _LOCALIZED.get(self.language)
        if local is not None:
            minutes = round(remaining_s / 60)
            if remaining_s < 60:
                return local["seconds_left"].format(n=remaining_s)
            return local["minute_left"] if minutes == 1 else local["minutes_left"].format(n=minutes)
        if remaining_s >= 60:
            minutes = round(remaining_s / 60)
            amount = "one minute" if minutes == 1 else f"{_WORDS.get(minutes, str(minutes))} minutes"
        else:
            amount = f"{_WORDS.get(remaining_s, str(remaining_s))} seconds"
        return f"We have about {amount} left."


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    system_prompt: str
    greeting: str | None = None
    turn: TurnPolicy = field(default_factory=TurnPolicy)
    silence_reprompt_s: float = SILENCE_REPROMPT_S
    silence_prompts: str = "auto"  # on | off | auto (on unless the brain is external)
    not_understood_reply: str = NOT_UNDERSTOOD_REPLY  # to speech with no words understood; "" = off
    escalation_target: str | None = None
    agent_id: str | None = None
    dtmf_tools: Mapping[str, str] = field(default_factory=dict)  # digit -> tool called directly
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_tool_rounds: int = 4  # per turn; the round after the last is asked without tools
    filler_after_s: float = 1.0  # a tool running longer than this gets one filler line
    tool_timeout_s: float = 15.0  # backstop over the tools' own limits
    dtmf_gap_s: float = 1.5  # digits pressed closer than this reach the model together
    phrases: Phrases = field(default_factory=Phrases)
    # The version's llm is ``external``: the integrator's backend answers, never the pipeline.
    external_brain: bool = False
    # The caller interrupting drops the integrator's lines still waiting (speaking sessions).
    auto_flush: bool = True

    @classmethod
    def from_config(cls, config: AgentConfig, *, agent_id: str | None = None, greeting: Any = _UNSET,
                    system_prompt: str | None = None, **overrides: Any) -> ConversationSettings:
        """From an agent version's config; ``overrides`` set fields."""
        turn, llm = config.turn, config.llm.option_values
        prompt = system_prompt or config.system_prompt
        if config.knowledge:
            prompt = f"{prompt}\n\nReference information:\n{config.knowledge}"
        return cls(**{
            "system_prompt": prompt,
            "greeting": config.greeting if greeting is _UNSET else greeting,
            "turn": TurnPolicy(endpoint_ms=turn.endpointing_silence_ms, min_interruption_ms=turn.min_interruption_ms),
            "silence_reprompt_s": turn.silence_reprompt_s,
            "silence_prompts": turn.silence_prompts,
            "not_understood_reply": _not_understood(config),
            "phrases": Phrases.for_language(config.language),
            "escalation_target": config.escalation_target,
            "agent_id": agent_id,
            "dtmf_tools": dict(config.dtmf_tools),
            "model": config.llm.model, "temperature": llm.get("temperature"), "max_tokens": llm.get("max_tokens"),
            "external_brain": _integrator_replies(config.llm.provider),
            "auto_flush": config.auto_flush,
            **overrides,
        })

    @classmethod
    def from_route(cls, route: Any, **overrides: Any) -> ConversationSettings:
        """From a ``CallRoute`` (after-hours greeting and prompt applied)."""
        overrides.setdefault("greeting", route.greeting)
        overrides.setdefault("system_prompt", route.system_prompt)
        return cls.from_config(route.config, agent_id=route.agent_id, **overrides)


def _not_understood(config: AgentConfig) -> str:
    """The version's own reply, else the built-in one in its language (a stored version may carry
    the English default written out: that counts as not set)."""
    turn = config.turn
    local = _LOCALIZED.get(language_code(config.language))
    if local is None or turn.not_understood_reply != NOT_UNDERSTOOD_REPLY:
        return turn.not_understood_reply
    return local["not_understood"]
