"""What one conversation is configured with: the agent version's prompt, greeting, turn-taking
and tool settings, and the lines the agent says on its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.control.schemas import NOT_UNDERSTOOD_REPLY, SILENCE_REPROMPT_S, AgentConfig
from runtime.pipeline.turns import TurnPolicy

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 10: "ten", 15: "fifteen", 20: "twenty", 30: "thirty"}
_UNSET: Any = object()


def _integrator_replies(llm: str | None) -> bool:
    """The version's llm is one that does not reply itself (the integrator's backend does)."""
    from runtime.providers import registry

    entry = registry.find("llm", llm) if llm else None
    return entry is not None and not entry.capabilities.replies


@dataclass(frozen=True, slots=True)
class Phrases:
    """What the agent says on its own (English defaults)."""

    reprompt: str = "Are you still there?"
    silence_goodbye: str = "I can't hear anyone, so I'll end the call now. Goodbye."
    filler: str = "One moment please."
    apology: str = "Sorry, I had a problem there. Could you say that again?"
    goodbye: str = "Thank you for calling. Goodbye."
    transferring: str = "I'm transferring you now."

    def duration_warning(self, remaining_s: int) -> str:
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
            "not_understood_reply": turn.not_understood_reply,
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
