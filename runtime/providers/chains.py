"""Which engines a call gets: the agent version's choice and its fallbacks, then the offline
engine as the last resort.

One ``ProviderChains`` per runtime process holds the engines that are expensive to make (the
offline models are loaded once and shared by every call); per-call objects (the rules brain with
the version's ruleset, cloud adapters with their own clients) are made per call by the registry
entry's factory. A modality's chain is ``[provider] + fallback``, ending with the offline default
if it has no offline engine; an entry whose tenant credential is missing (or that refuses its
settings) is skipped and the skip reported (``provider.failed_over`` at the start of the call). A
chain of one engine is that engine; longer ones are wrapped in runtime.providers.failover, which
switches engines during the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from runtime.config import LOCAL_CALLS_PER_CORE, Settings
from runtime.providers import registry
from runtime.providers.base import (
    Engine,
    LanguageModel,
    ProviderError,
    RetryPolicy,
    SpeechToText,
    TextToSpeech,
)
from runtime.providers.failover import FailoverLLM, FailoverSTT, FailoverTTS, Report
from runtime.providers.models import whisper_model
from runtime.providers.options import OwnFirstByteTimeout
from runtime.providers.registry import MODALITIES, BuildContext, CredentialLookup, MissingCredential
from runtime.providers.stt.hints import version_terms

if TYPE_CHECKING:
    from runtime.control.schemas import AgentConfig, ProviderChoice

log = logging.getLogger("voicectl.providers")


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


class NoUsableProvider(ValueError):
    """No engine of a modality's chain can be built here (the call fails pipeline_unavailable)."""


class ProviderChains:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        conf = settings.providers
        self.policy = RetryPolicy(retries=conf.retries, first_byte_timeout_s=conf.first_byte_timeout_ms / 1000)
        self._shared: dict[str, Engine] = {}

    def policy_for(self, entry: registry.ProviderEntry) -> RetryPolicy:
        """The retry policy of calls to ``entry``: the global one, with the entry's own first-byte
        timeout when its settings section has one (``providers.chatterbox.first_byte_timeout_ms``)."""
        settings = entry.settings(self.settings.providers)
        if isinstance(settings, OwnFirstByteTimeout) and settings.first_byte_timeout_ms is not None:
            return replace(self.policy, first_byte_timeout_s=settings.first_byte_timeout_ms / 1000)
        return self.policy

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """The process's one engine under ``key`` (offline models: loaded once, used by every call)."""
        engine = self._shared.get(key)
        if engine is None:
            engine = self._shared[key] = make()
        return engine

    def engine(self, modality: str, name: str, choice: ProviderChoice | None = None, *,
               credential: registry.ProviderCredential | None = None, agent: AgentConfig | None = None,
               timezone: str = "UTC", transport_rate: int = 8000, policy: RetryPolicy | None = None) -> Any:
        """Engine ``name`` of ``modality`` made by its registry entry. ``choice``: the version's
        choice when ``name`` is its first (its model, base_url and options), else None."""
        entry = registry.get(modality, name)
        first = choice is not None and choice.provider == name
        return entry.build(BuildContext(
            entry=entry, settings=entry.settings(self.settings.providers),
            options=choice.options_for(entry) if first else entry.options(),
            model=choice.model if first else None, base_url=choice.base_url if first else None,
            credential=credential, policy=policy or self.policy_for(entry), transport_rate=transport_rate,
            language=agent.language if agent is not None else "en", timezone=timezone,
            rules=agent.rules if agent is not None else None, shared=self.shared,
            hints=version_terms(agent) if agent is not None and modality == "stt" else (),
            model_dir=self.settings.resolve_path(self.settings.providers.local.model_dir),
            egress=self.settings.security.egress.policy))

    async def warm_up(self) -> None:
        """Load the default offline models before the first call (a cold load takes seconds). An
        engine that cannot load (a piper voice missing or failing its hash check) is replaced by
        its entry's stand-in (espeak-ng), so calls are still answered."""
        for modality in MODALITIES:
            name = self.offline_default(modality)
            entry = registry.get(modality, name)
            if not entry.capabilities.warm_up:
                continue
            try:
                engine = self.engine(modality, name)
            except registry.MissingExtra as exc:  # a cloud-only install: nothing to load here
                log.warning("the offline engine is not installed; calls use their agents' cloud providers",
                            extra={"provider": name, "error": str(exc)})
                continue
            try:
                await engine.warm_up()
            except ProviderError as exc:
                if entry.stand_in is None:
                    raise
                log.error("the offline engine cannot be used; its stand-in speaks instead",
                          extra={"provider": name, "stand_in": entry.stand_in, "error": str(exc)})
                self._shared[f"{modality}.{name}"] = self.engine(modality, entry.stand_in)

    def offline_default(self, modality: str) -> str:
        """The offline engine that ends every chain: the configured default when it is offline."""
        default = getattr(self.settings.providers.defaults, modality)
        return default if registry.get(modality, default).offline else registry.names(modality, offline=True)[0]

    def local_load(self, agent: AgentConfig) -> float:
        """What a call of ``agent`` takes of the local capacity (``limits.local_calls``), in calls of
        the appliance's Whisper model: 0 when its speech (first STT and TTS choice) runs elsewhere;
        a version on a heavier model than the appliance's counts for more, so the admitted calls
        never wait on each other's decodes (dead air). Speech other than local Whisper (piper
        alone, pocketsphinx) counts as a tiny.en call, the lightest."""
        stt = registry.get("stt", self.chosen(agent, "stt"))
        if not stt.offline and not registry.get("tts", self.chosen(agent, "tts")).offline:
            return 0.0
        model = "tiny.en"
        if stt.models:  # local whisper: the models it has are the packaged ones
            try:
                model = whisper_model(self.first_choice(agent, "stt").model or self.settings.providers.local.stt_model,
                                      agent.language)
            except ProviderError:  # no such model: the call will fail over; count it as the appliance's
                model = self.settings.providers.local.stt_model
        return LOCAL_CALLS_PER_CORE[self.settings.providers.local.stt_model] / LOCAL_CALLS_PER_CORE[model]

    def chosen(self, agent: AgentConfig, modality: str) -> str:
        return getattr(agent, modality).provider or getattr(self.settings.providers.defaults, modality)

    def chain(self, agent: AgentConfig, modality: str) -> list[str]:
        """Provider names to try, in order: the version's choice, its fallbacks, and the offline
        default when no offline engine is among them (the call is always answered)."""
        names = [self.chosen(agent, modality), *getattr(agent, modality).fallback]
        if not any((entry := registry.find(modality, name)) is not None and entry.offline for name in names):
            names.append(self.offline_default(modality))
        return list(dict.fromkeys(names))

    def first_choice(self, agent: AgentConfig, modality: str) -> ProviderChoice:
        """The version's choice with its provider resolved (null: the appliance default)."""
        choice = getattr(agent, modality)
        return choice if choice.provider else choice.with_provider(self.chosen(agent, modality))

    async def for_call(self, agent: AgentConfig, timezone: str = "UTC", *, transport_rate: int = 8000,
                       credentials: CredentialLookup | None = None, report: Report | None = None) -> CallProviders:
        """The engines for one call of an agent version (``timezone``: the tenant's, for the rules
        brain's dates; ``credentials``: the tenant's, by credential name; ``report``: told about
        every switch of engine during the call)."""
        substitutions: list[Substitution] = []
        chains: dict[str, tuple[list[tuple[str, Any]], set[str]]] = {}
        for modality in MODALITIES:
            names = self.chain(agent, modality)
            choice = self.first_choice(agent, modality)
            engines: list[tuple[str, Any]] = []
            owned: set[str] = set()
            skipped: list[tuple[str, str]] = []
            for position, name in enumerate(names):
                last = position == len(names) - 1
                try:
                    entry = registry.get(modality, name)
                    # Before the last engine a missed first byte moves on at once rather than retrying.
                    policy = self.policy_for(entry)
                    policy = policy if last else replace(policy, retry_timeouts=False)
                    credential = None
                    if entry.credential is not None and credentials is not None:
                        credential = await credentials(entry.credential_name)
                    engine = self.engine(modality, name, choice, credential=credential, agent=agent,
                                         timezone=timezone, transport_rate=transport_rate, policy=policy)
                except (MissingCredential, ValueError) as exc:
                    skipped.append((name, str(exc)))
                    continue
                if not entry.offline:
                    owned.add(name)
                for wanted, reason in skipped:
                    substitutions.append(Substitution(modality, wanted, name, reason))
                    log.warning("provider not available; using the next in its chain",
                                extra={"modality": modality, "wanted": wanted, "used": name, "reason": reason})
                skipped = []
                engines.append((name, engine))
            if not engines:
                engines.append(self._last_resort(modality, skipped, substitutions))
            chains[modality] = (engines, owned)

        def pick(modality: str, wrapper: Any) -> Any:
            engines, owned = chains[modality]
            return engines[0][1] if len(engines) == 1 else wrapper(engines, report, owned)

        return CallProviders(pick("stt", FailoverSTT), pick("llm", FailoverLLM), pick("tts", FailoverTTS),
                             substitutions)

    def _last_resort(self, modality: str, skipped: list[tuple[str, str]],
                     substitutions: list[Substitution]) -> tuple[str, Any]:
        """Every engine of a chain was skipped (an install without the offline extra whose agent
        names no usable cloud provider): the stand-in of one of them, else a clear error."""
        for wanted, reason in skipped:
            stand_in = registry.get(modality, wanted).stand_in
            if stand_in is None:
                continue
            try:
                engine = self.engine(modality, stand_in)
            except ValueError:
                continue
            substitutions.append(Substitution(modality, wanted, stand_in, reason))
            return stand_in, engine
        raise NoUsableProvider(f"no {modality} provider can serve this call: "
                               + "; ".join(f"{name}: {reason}" for name, reason in skipped))

    async def aclose(self) -> None:
        engines, self._shared = list(self._shared.values()), {}
        for engine in engines:
            await engine.aclose()
