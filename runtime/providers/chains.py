"""Which engines a call gets: the agent version's choice and its fallbacks, then the offline
engine as the last resort.

One registry per runtime process holds the engines that are expensive to make (the offline
models are loaded once and shared by every call); per-call objects (the rules brain with the
version's ruleset, cloud adapters with their own clients) are made per call. A modality's chain
is ``[provider] + fallback``, ending with the offline default if it has no offline engine; an entry this build has no adapter for, or
whose tenant credential is missing, is skipped and the skip reported (``provider.failed_over``
at the start of the call). A chain of one engine is that engine; longer ones are wrapped in
runtime.providers.failover, which switches engines during the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.config import Settings
from runtime.providers.base import LanguageModel, ProviderError, RetryPolicy, SpeechToText, TextToSpeech
from runtime.providers.cloud import CLOUD, CredentialLookup, MissingCredential, build
from runtime.providers.failover import FailoverLLM, FailoverSTT, FailoverTTS, Report

log = logging.getLogger("voicectl.providers")

OFFLINE = {"stt": "local", "llm": "rules", "tts": "local"}
# Offline engines a version may name besides the defaults above.
OFFLINE_CHOICES = {"stt": frozenset({"local", "pocketsphinx"}), "llm": frozenset({"rules"}),
                   "tts": frozenset({"local"})}
MODALITIES = ("stt", "llm", "tts")


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
    # Engines the version asked for that this call cannot have (reported as events).
    substitutions: list[Substitution] = field(default_factory=list)

    async def aclose(self) -> None:
        """Close what was made for this call (cloud clients); shared offline engines stay."""
        for engine in (self.stt, self.llm, self.tts):
            if isinstance(engine, FailoverSTT | FailoverLLM | FailoverTTS):
                await engine.aclose()


class ProviderRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        conf = settings.providers
        self.policy = RetryPolicy(retries=conf.retries, first_byte_timeout_s=conf.first_byte_timeout_ms / 1000)
        self._stt: SpeechToText | None = None
        self._tts: TextToSpeech | None = None

    def local_stt(self) -> SpeechToText:
        if self._stt is None:
            from runtime.providers.stt.local import LocalWhisperSTT

            self._stt = LocalWhisperSTT(policy=self.policy)
        return self._stt

    def sphinx_stt(self) -> SpeechToText:
        from runtime.providers.stt.sphinx import PocketSphinxSTT

        return PocketSphinxSTT(policy=self.policy)  # cheap: each stream loads its own decoder

    def local_tts(self) -> TextToSpeech:
        if self._tts is None:
            from runtime.providers.tts.local import PiperTTS

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
            from runtime.providers.tts.local import EspeakTTS

            log.error("the piper voice cannot be used; speaking with espeak-ng", extra={"error": str(exc)})
            self._tts = EspeakTTS(policy=self.policy)

    def chosen(self, config: dict[str, Any], modality: str) -> str:
        choice = (config.get(modality) or {}).get("provider")
        return choice or getattr(self.settings.providers.defaults, modality)

    def chain(self, config: dict[str, Any], modality: str) -> list[str]:
        """Provider names to try, in order: the version's choice, its fallbacks, and the offline
        default when no offline engine is among them (the call is always answered)."""
        names = [self.chosen(config, modality), *((config.get(modality) or {}).get("fallback") or [])]
        if not any(name in OFFLINE_CHOICES[modality] for name in names):
            names.append(OFFLINE[modality])
        return list(dict.fromkeys(names))

    async def for_call(self, config: dict[str, Any], timezone: str = "UTC", *, transport_rate: int = 8000,
                       credentials: CredentialLookup | None = None, report: Report | None = None) -> CallProviders:
        """The engines for one call of an agent version (``config``: the version's config dict;
        ``timezone``: the tenant's, for the rules brain's dates; ``credentials``: the tenant's,
        by provider; ``report``: told about every switch of engine during the call)."""
        substitutions: list[Substitution] = []
        chains: dict[str, tuple[list[tuple[str, Any]], set[str]]] = {}
        for modality in MODALITIES:
            names = self.chain(config, modality)
            engines: list[tuple[str, Any]] = []
            owned: set[str] = set()
            skipped: list[tuple[str, str]] = []
            for position, name in enumerate(names):
                last = position == len(names) - 1
                # Before the last engine a missed first byte moves on at once rather than retrying.
                policy = self.policy if last else replace(self.policy, retry_timeouts=False)
                choice = (config.get(modality) or {}) if position == 0 else {}
                try:
                    engine = await self._engine(modality, name, config, choice, timezone, transport_rate,
                                                credentials, policy)
                except (MissingCredential, ValueError) as exc:
                    skipped.append((name, str(exc)))
                    continue
                if name in CLOUD[modality]:
                    owned.add(name)
                for wanted, reason in skipped:
                    substitutions.append(Substitution(modality, wanted, name, reason))
                    log.warning("provider not available; using the next in its chain",
                                extra={"modality": modality, "wanted": wanted, "used": name, "reason": reason})
                skipped = []
                engines.append((name, engine))
            chains[modality] = (engines, owned)

        def pick(modality: str, wrapper: Any) -> Any:
            engines, owned = chains[modality]
            return engines[0][1] if len(engines) == 1 else wrapper(engines, report, owned)

        return CallProviders(pick("stt", FailoverSTT), pick("llm", FailoverLLM), pick("tts", FailoverTTS),
                             substitutions)

    async def _engine(self, modality: str, name: str, config: dict[str, Any], choice: dict[str, Any],
                      timezone: str, transport_rate: int, credentials: CredentialLookup | None,
                      policy: RetryPolicy) -> Any:
        if name in CLOUD[modality]:
            credential = await credentials(name) if credentials is not None else None
            return build(modality, name, self.settings.providers, choice, credential, policy, transport_rate,
                         language=config.get("language") or "en")
        if name not in OFFLINE_CHOICES[modality]:
            raise ValueError(f"no {name} {modality} adapter in this build")
        if modality == "stt":
            return self.sphinx_stt() if name == "pocketsphinx" else self.local_stt()
        if modality == "tts":
            return self.local_tts()
        from runtime.providers.llm.rules import RulesBrain

        return RulesBrain(config.get("rules"), timezone=timezone, policy=policy)

    async def aclose(self) -> None:
        for engine in (self._stt, self._tts):
            if engine is not None:
                await engine.aclose()
