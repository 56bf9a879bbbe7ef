"""``external``: the customer's own backend is the brain (bring your own brain, seed 001).

A version with ``llm: {provider: external}`` gets the runtime's ears and mouth only: VAD,
endpointing, STT, TTS, pacing, barge-in, recording. Caller turns become ``transcript.created``
events for the integrator, and the agent says what the integrator sends (speaking sessions, or
``POST /api/v1/calls/{id}/say``). The conversation never asks this engine for a reply; should
anything ask, it refuses, so no fallback line, filler or apology is ever spoken in its name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from runtime.providers.base import LanguageModel, LlmEvent, LlmRequest, ProviderError


class ExternalBrain(LanguageModel):
    name = "external"

    def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        raise ProviderError(self.name, "bad_request", "the external brain replies through the API, not here")

    async def check(self) -> str | None:
        return "the integrator's backend replies (transcripts out, speaking sessions in)"


def build(ctx: Any) -> ExternalBrain:
    return ExternalBrain(ctx.policy)
