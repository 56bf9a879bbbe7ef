"""Which engines a call gets: the agent version's choice, else the appliance defaults.

One registry per runtime process holds the engines that are expensive to make (the offline
models are loaded once and shared by every call); per-call objects (the rules brain with the
version's ruleset) are cheap and made per call. A provider this build has no adapter for is
not silently replaced: the call uses the offline engine and the swap is reported (the
providers issue adds the cloud adapters and failover chains).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from runtime.config import Settings
from runtime.providers.base import LanguageModel, ProviderError, RetryPolicy, SpeechToText, TextToSpeech

log = logging.getLogger("voicectl.providers")

OFFLINE = {"stt": "local", "llm": "rules", "tts": "local"}
# Offline engines a version may name besides the defaults above.
OFFLINE_CHOICES = {"stt": frozenset({"local", "pocketsphinx"}), "llm": frozenset({"rules"}),
                   "tts": frozenset({"local"})}


@dataclass(frozen=True, slots=True)
class Substitution:
    modality: str
    wanted: str
    used: str
    reason: str


@dataclass(slots=True)
class CallProviders:
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    # Engines the version asked for that this build could not provide (reported as events).
    substitutions: list[Substitution] = field(default_factory=list)


class ProviderRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        conf = settings.providers
        self.policy = RetryPolicy(retries=conf.retries, first_byte_timeout_s=conf.first_byte_timeout_ms / 1000)
        self._stt: SpeechToText | None = None
        self._tts: TextToSpeech | None = None

    def local_stt(self) -> SpeechToText:
        if self._stt is None:
            from runtime.providers.local_stt import LocalWhisperSTT

            self._stt = LocalWhisperSTT(policy=self.policy)
        return self._stt

    def sphinx_stt(self) -> SpeechToText:
        from runtime.providers.sphinx_stt import PocketSphinxSTT

        return PocketSphinxSTT(policy=self.policy)  # cheap: each stream loads its own decoder

    def local_tts(self) -> TextToSpeech:
        if self._tts is None:
            from runtime.providers.local_tts import PiperTTS

            self._tts = PiperTTS(policy=self.policy)
        return self._tts

    async def warm_up(self) -> None:
        """Load the offline models before the first call (a cold load takes seconds). A piper
        voice that cannot load (missing, or failing its hash check) is replaced by espeak-ng,
        the tiny fallback, so calls are still answered."""
        await self.local_stt().warm_up()  # type: ignore[attr-defined]
        try:
            await self.local_tts().warm_up()  # type: ignore[attr-defined]
        except ProviderError as exc:
            from runtime.providers.local_tts import EspeakTTS

            log.error("the piper voice cannot be used; speaking with espeak-ng", extra={"error": str(exc)})
            self._tts = EspeakTTS(policy=self.policy)

    def chosen(self, config: dict[str, Any], modality: str) -> str:
        choice = (config.get(modality) or {}).get("provider")
        return choice or getattr(self.settings.providers.defaults, modality)

    def for_call(self, config: dict[str, Any], timezone: str = "UTC") -> CallProviders:
        """The engines for one call of an agent version (``config``: the version's config dict;
        ``timezone``: the tenant's, for the rules brain's dates)."""
        substitutions: list[Substitution] = []

        def offline(modality: str) -> str:
            wanted = self.chosen(config, modality)
            if wanted in OFFLINE_CHOICES[modality]:
                return wanted
            if wanted != OFFLINE[modality]:
                substitutions.append(Substitution(modality, wanted, OFFLINE[modality],
                                                  f"no {wanted} adapter in this build"))
                log.warning("provider not available; using the offline engine",
                            extra={"modality": modality, "wanted": wanted})
            return OFFLINE[modality]

        stt = self.sphinx_stt() if offline("stt") == "pocketsphinx" else self.local_stt()
        offline("tts")
        offline("llm")
        from runtime.providers.rules import RulesBrain

        return CallProviders(stt, RulesBrain(config.get("rules"), timezone=timezone, policy=self.policy),
                             self.local_tts(), substitutions)

    async def aclose(self) -> None:
        for engine in (self._stt, self._tts):
            if engine is not None:
                await engine.aclose()
