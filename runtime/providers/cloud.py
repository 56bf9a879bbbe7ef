"""The cloud and self-hosted adapters: which exist per modality, and how one is built for a call
from the appliance settings, the agent version's choice and the tenant's credential.

Adapters are made per call (each holds its own client and connection; the chain closes them
when the call ends). Modules are imported only when a version names the provider.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime.config import ProvidersSettings
from runtime.providers.base import LanguageModel, RetryPolicy, SpeechToText, TextToSpeech

CLOUD: dict[str, frozenset[str]] = {
    "stt": frozenset({"deepgram"}),
    "llm": frozenset({"anthropic", "openai"}),
    "tts": frozenset({"chatterbox"}),
}
# Providers that cannot answer without the tenant's key (local OpenAI-compatible and Chatterbox
# servers usually need none).
SECRET_REQUIRED = frozenset({"deepgram", "anthropic"})


@dataclass(frozen=True, slots=True)
class ProviderCredential:
    """A tenant's credential for one provider: its fields (database) and secret (keyring)."""

    fields: dict[str, Any]
    secret: str | None


CredentialLookup = Callable[[str], Awaitable[ProviderCredential | None]]


class MissingCredential(Exception):
    pass


def build(modality: str, name: str, settings: ProvidersSettings, choice: dict[str, Any],
          credential: ProviderCredential | None, policy: RetryPolicy, transport_rate: int = 8000,
          language: str = "en") -> SpeechToText | LanguageModel | TextToSpeech:
    """The adapter ``name`` for one call. ``choice``: the version's settings for this modality
    (ProviderChoice: model, base_url, sampling, Deepgram's endpointing, Chatterbox's voice...)
    when ``name`` is its first choice, else empty; ``language``: the version's."""
    secret = credential.secret if credential is not None else None
    fields = credential.fields if credential is not None else {}
    if name in SECRET_REQUIRED and not secret:
        raise MissingCredential(f"the tenant has no {name} credential")
    model, base_url = choice.get("model"), choice.get("base_url")
    if name == "deepgram":
        from runtime.providers.stt.deepgram import DeepgramSTT

        conf = settings.deepgram
        # Telephony audio goes as it arrives (mu-law 8 kHz: half the bytes); wideband as 16 kHz PCM.
        narrow = transport_rate == 8000
        return DeepgramSTT(secret or "", url=base_url or conf.url, model=model or conf.model,
                           encoding="mulaw" if narrow else "linear16", sample_rate=8000 if narrow else 16000,
                           language=language, **_given(choice, "endpointing_ms", "utterance_end_ms"),
                           policy=policy)
    if name == "anthropic":
        from runtime.providers.llm.anthropic import AnthropicLLM

        conf = settings.anthropic
        return AnthropicLLM(secret or "", base_url=base_url or conf.base_url, model=model or conf.model,
                            **_given(choice, "max_tokens", "temperature"), policy=policy)
    if name == "openai":
        from runtime.providers.llm.openai import OpenAICompatibleLLM

        conf = settings.openai
        return OpenAICompatibleLLM(secret, base_url=base_url or fields.get("base_url") or conf.base_url,
                                   model=model or conf.model, **_given(choice, "max_tokens", "temperature"), policy=policy)
    if name == "chatterbox":
        from runtime.providers.tts.chatterbox import ChatterboxTTS

        conf = settings.chatterbox
        return ChatterboxTTS(secret, base_url=base_url or fields.get("base_url") or conf.base_url,
                             voice=choice.get("voice") or conf.voice,
                             **_given(choice, "exaggeration", "cfg_weight", "temperature"), policy=policy)
    raise ValueError(f"no {modality} adapter named {name!r}")


def _given(choice: dict[str, Any], *names: str) -> dict[str, Any]:
    """The settings among ``names`` the version sets (the rest keep the adapter's defaults)."""
    return {name: choice[name] for name in names if choice.get(name) is not None}
