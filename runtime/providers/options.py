"""The settings each provider takes, as pydantic models (no SDK imports, so they load fast).

Two kinds per provider, both named in its registry entry (runtime.providers.registry):

- *appliance settings*: its section under ``providers:`` in config.yaml (server URL, default model
  and voice), the operator's defaults for every tenant;
- *version options*: the vendor keys an agent version may set beside ``provider``, ``model``,
  ``base_url`` and ``fallback`` in its ``stt``/``llm``/``tts`` choice (flat in the stored JSON,
  e.g. ``tts: {provider: chatterbox, voice: narrator, exaggeration: 0.7}``).

Unset options are ``None``: the adapter keeps its own default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ProviderSettings(BaseModel):
    """An appliance settings section (config.yaml ``providers.<section>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class VersionOptions(BaseModel):
    """The vendor keys of one provider in an agent version."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoSettings(ProviderSettings):
    pass


class NoOptions(VersionOptions):
    pass


# Speech to text

MAX_KEYWORDS = 50
MAX_KEYWORD_CHARS = 50


def _check_keywords(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    cleaned = [k.strip() for k in value]
    if any(not k or len(k) > MAX_KEYWORD_CHARS for k in cleaned):
        raise ValueError(f"keywords are 1 to {MAX_KEYWORD_CHARS} characters")
    return cleaned


class SttHints(VersionOptions):
    """Words the caller is likely to say that the recogniser might not expect (names, menu items)."""

    keywords: list[str] | None = Field(
        None, max_length=MAX_KEYWORDS,
        description="words and names to listen for (the version's own intents, tools and names are added)")

    _keywords = field_validator("keywords")(_check_keywords)


class LocalSttSettings(ProviderSettings):
    # The packaged Whisper model: base (multilingual; hears the caller set best, 1 call per core) or
    # tiny.en (English only; 4 calls per core, more words misheard): see README. A version's
    # stt.model overrides it; a version in another language gets base.
    stt_model: Literal["base", "tiny.en"] = "base"
    # Where a model shipped in pieces is assembled once; relative to the config file's folder.
    model_dir: str = "models"


class DeepgramSettings(ProviderSettings):
    url: str = "wss://api.deepgram.com"
    model: str = "nova-3"


class DeepgramOptions(SttHints):
    endpointing_ms: int | None = Field(None, ge=10, le=5000,
                                       description="silence (ms) after which Deepgram marks speech final")
    utterance_end_ms: int | None = Field(None, ge=1000, le=5000,
                                         description="gap between words (ms) that sends Deepgram's UtteranceEnd")


# Language models


class AnthropicSettings(ProviderSettings):
    base_url: str = "https://api.anthropic.com"
    model: str = "claude-sonnet-4-6"


class OpenAISettings(ProviderSettings):
    base_url: str = "http://127.0.0.1:11434/v1"
    model: str = "llama3.2"


class SamplingOptions(VersionOptions):
    temperature: float | None = Field(None, ge=0, le=2, description="sampling temperature")
    max_tokens: int | None = Field(None, ge=1, le=32_000, description="longest reply, in tokens")


# Text to speech


class OwnFirstByteTimeout(ProviderSettings):
    """A section with its own first-byte timeout: for that provider only it replaces
    ``providers.first_byte_timeout_ms`` (None: the global one applies)."""

    first_byte_timeout_ms: int | None = Field(None, ge=50)


class ChatterboxSettings(OwnFirstByteTimeout):
    # travisvn/chatterbox-tts-api's default port (its app/config.py: PORT 4123).
    base_url: str = "http://127.0.0.1:4123"
    # A name in the server's voice library; "default" sends none (the server's configured voice).
    voice: str = "default"
    # First audio takes seconds on a GPU (~4.5 s reported on an A100, ~5 s a sentence on a T4).
    first_byte_timeout_ms: int | None = Field(8000, ge=50)
    # wav: POST /v1/audio/speech/stream (a streamed WAV); sse: POST /v1/audio/speech with
    # stream_format "sse"; off: one whole WAV a sentence from /v1/audio/speech.
    stream: Literal["wav", "sse", "off"] = "wav"
    # How the server cuts a sentence before synthesising it piece by piece (streamed answers only):
    # "word" packs whole words up to streaming_chunk_size characters (50-500), so the first piece is
    # short and its audio comes sooner; larger pieces sound smoother. None: the server's default
    # (sentence, 200). Fields of its TTSRequest (app/models/requests.py).
    streaming_strategy: Literal["sentence", "paragraph", "fixed", "word"] | None = "word"
    streaming_chunk_size: int | None = Field(50, ge=50, le=500)


class ChatterboxOptions(VersionOptions):
    voice: str | None = Field(None, min_length=1, max_length=200,
                              description="a name in the server's voice library (an unknown one silently gets its "
                                          "default voice; default: the version's voice profile, else "
                                          "providers.chatterbox.voice)")
    exaggeration: float | None = Field(None, ge=0.25, le=2.0, description="emotion exaggeration")
    cfg_weight: float | None = Field(None, ge=0, le=1, description="pace/guidance weight")
    # The server's own range (app/models/requests.py TTSRequest: ge=0.05, le=5.0).
    temperature: float | None = Field(None, ge=0.05, le=5, description="sampling temperature")


class ElevenLabsSettings(ProviderSettings):
    # "Rachel", a voice of ElevenLabs' default library.
    voice: str = "21m00Tcm4TlvDq8ikWAM"
    model: str = "eleven_flash_v2_5"
    url: str = "wss://api.elevenlabs.io"


class ElevenLabsOptions(VersionOptions):
    voice: str | None = Field(None, min_length=1, max_length=200, description="an ElevenLabs voice id")
    speed: float | None = Field(None, ge=0.7, le=1.2, description="speaking rate (ElevenLabs: 0.7 to 1.2)")
    stability: float | None = Field(None, ge=0, le=1, description="voice stability")
    similarity_boost: float | None = Field(None, ge=0, le=1, description="similarity to the original voice")


class CartesiaSettings(ProviderSettings):
    # "Barbershop Man", a voice of Cartesia's default library.
    voice: str = "a0e99841-438c-4a64-b679-ae501e7d6091"
    # cartesia 4.x lists sonic-3, sonic-3.5 and sonic-latest (types/tts_model.py); speed
    # (generation_config) works on Sonic 3 models only.
    model: str = "sonic-3"
    url: str = "https://api.cartesia.ai"


class CartesiaOptions(VersionOptions):
    voice: str | None = Field(None, min_length=1, max_length=200, description="a Cartesia voice id")
    speed: float | None = Field(None, ge=0.6, le=1.5,
                                description="speaking rate (Cartesia generation_config.speed: 0.6 to 1.5, Sonic 3 models)")


class OpenAITTSSettings(ProviderSettings):
    # The public OpenAI API: providers.openai.base_url points at a local chat server, which has
    # no speech route.
    voice: str = "alloy"
    model: str = "gpt-4o-mini-tts"
    base_url: str = "https://api.openai.com/v1"


class OpenAITTSOptions(VersionOptions):
    voice: str | None = Field(None, min_length=1, max_length=200,
                              description="alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, shimmer, verse, "
                                          "marin, cedar, ... or a custom voice id (voice_...)")
    speed: float | None = Field(None, ge=0.25, le=4.0, description="speaking rate (OpenAI: 0.25 to 4.0)")
    instructions: str | None = Field(None, max_length=4000, description="how to speak (gpt-4o-mini-tts)")
