"""The streaming interfaces every STT, LLM and TTS engine implements, and the failure rules
they share.

Adapters only speak their engine (``_open`` / ``_stream`` / ``_synthesize``); the public
methods here add what is the same for all of them: a first-byte timeout, retries with
exponential backoff and jitter for retryable errors (honouring ``Retry-After``), and one
error type, ``ProviderError``, whose ``kind`` tells the pipeline whether to retry, fail over
at once (bad key) or give up for the turn.

Audio is PCM16 little-endian mono at the rate each object states; the pipeline resamples.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

ErrorKind = Literal["auth", "rate_limit", "server", "timeout", "protocol", "unavailable", "bad_request"]
RETRYABLE: frozenset[str] = frozenset({"rate_limit", "server", "timeout", "unavailable"})


class ProviderError(Exception):
    """A provider failed. ``kind``: auth (401/403: never retried), rate_limit (429), server (5xx),
    timeout (no first byte in time), protocol (a malformed answer), unavailable (cannot connect),
    bad_request (our request was refused: never retried). ``detail``: a short text of the adapter's
    own words, never the server's, that ``voicectl doctor`` may show (e.g. "model not loaded")."""

    def __init__(self, provider: str, kind: ErrorKind, message: str, *, status: int | None = None,
                 retry_after: float | None = None, detail: str | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider, self.kind, self.status, self.retry_after = provider, kind, status, retry_after
        self.detail = detail

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def retry_under(self, policy: RetryPolicy) -> bool:
        return self.retryable and (self.kind != "timeout" or policy.retry_timeouts)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2  # attempts after the first (providers.retries)
    first_byte_timeout_s: float = 2.0  # providers.first_byte_timeout_ms / 1000
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 2.0
    # False in a fallback chain: a missed first byte goes to the next engine at once (for the turn).
    retry_timeouts: bool = True

    def delay(self, attempt: int, error: ProviderError) -> float:
        """Seconds before retry ``attempt`` (1-based): Retry-After when given, else full-jitter backoff."""
        if error.retry_after is not None:
            return min(error.retry_after, self.backoff_cap_s * 4)
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))


class Engine:
    """What every engine has: a name, a retry policy, and the optional hooks the pipeline and
    ``doctor`` call (each a no-op unless the adapter overrides it)."""

    name: str = "engine"

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()

    async def warm_up(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Load models before the first call (offline engines); the default has none."""

    async def check(self) -> str | None:
        """For ``voicectl doctor``: a cheap proof that the engine can serve (an authenticated
        request, a hash-checked model). Raises ``ProviderError``; returns a detail or None."""
        return None

    def turn_started(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """A new caller turn began (a fallback chain's engines standing in for one turn step back)."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release clients, pools and models; the default has none."""

    @property
    def serving(self) -> Engine:
        """The engine answering now: itself (a fallback chain: the one of its engines in use)."""
        return self

    @property
    def provider_name(self) -> str:
        """The registry name of the engine answering now (the call's record)."""
        return self.name

    @property
    def model_name(self) -> str | None:
        """The model the engine answering now uses, where it names one."""
        model = getattr(self.serving, "model", None)
        return model if isinstance(model, str) else None


# Speech to text


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """A piece of a final (a sentence the engine decoded on its own) and the engine's confidence in it (0-1)."""

    text: str
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """A transcript of the caller. ``final``: this segment's text will not change (a turn's
    text is the finals of its segments joined); interim results have ``final=False``.
    Times are ms from the start of the stream."""

    text: str
    final: bool
    start_ms: int | None = None
    end_ms: int | None = None
    words: tuple[Word, ...] = ()
    confidence: float | None = None
    speech_final: bool = False  # the engine itself saw the end of an utterance (Deepgram speech_final)
    segments: tuple[TranscriptSegment, ...] = ()  # the final's pieces, when the engine decodes in segments


class SttStream(ABC):
    """One call's recognition stream. ``push`` caller audio (20 ms frames at ``rate``); iterate
    for transcripts; ``flush`` when the caller pauses: the engine then emits a final for the
    audio since the last final (an utterance engine decodes it now, a streaming engine sends its
    finalize message). ``close`` ends the stream and the iteration."""

    rate: int

    @abstractmethod
    async def push(self, pcm: bytes) -> None: ...

    @abstractmethod
    async def flush(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    def want_interim(self, on: bool) -> None:  # noqa: B027 (optional hook, not abstract)
        """Someone listens to interim text (or no longer does): an engine that makes it only on
        demand, at a cost, starts (or stops). Streaming engines send it anyway."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Transcript]: ...


class SpeechToText(Engine, ABC):
    name: str = "stt"
    # The rate the engine wants; the pipeline resamples caller audio to it.
    rate: int = 16_000
    # True when the engine produces interim results while the caller speaks.
    interim_results: bool = False

    async def open(self) -> SttStream:
        """A new stream, retried like any request (connecting is the 'first byte')."""
        return await with_retries(self.name, self.policy, self._open)

    @abstractmethod
    async def _open(self) -> SttStream: ...


# Language models


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class Message:
    """One entry of the conversation history. ``role``: user, assistant or tool. An interrupted
    assistant message holds only the words the caller heard."""

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # for role=tool: the call it answers
    name: str | None = None  # for role=tool: the tool's name
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    call: ToolCall


@dataclass(frozen=True, slots=True)
class LlmDone:
    stop_reason: str = "end_turn"  # end_turn | tool_use | max_tokens | ...
    usage: dict[str, int] = field(default_factory=dict)


LlmEvent = TextDelta | ToolCallRequest | LlmDone


@dataclass(frozen=True, slots=True)
class LlmRequest:
    system: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class LanguageModel(Engine, ABC):
    name: str = "llm"

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        """Text deltas and tool calls of one reply, ending with ``LlmDone``. Retries (with
        backoff) happen only before the first event; a stream that breaks after it raises
        ``ProviderError`` so the pipeline can finish the turn elsewhere."""
        async for event in first_byte_guarded(self.name, self.policy, lambda: self._stream(request)):
            yield event

    @abstractmethod
    def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]: ...


# Text to speech


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Synthesised audio and the text it speaks (the pipeline uses the pairing to know which
    words the caller heard when a reply is cut off)."""

    pcm: bytes
    rate: int
    text: str = ""


class TextToSpeech(Engine, ABC):
    name: str = "tts"
    # True when the engine takes a reply's text as it is written, on one connection
    # (``synthesize_stream``): the next piece is being made while this one plays (and, where the
    # provider continues one context across pieces, with the prosody of one utterance). The
    # registry's ``streaming_text_input`` capability says the same.
    streaming_text_input: bool = False

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        """Audio for ``text`` in chunks, the first as early as the engine allows."""
        async for chunk in first_byte_guarded(self.name, self.policy, lambda: self._synthesize(text)):
            yield chunk

    async def synthesize_stream(self, pieces: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        """Audio for text pieces that arrive over time (a reply as the model writes it). The
        chunks' texts concatenate to the pieces', each piece's text with or after its audio and
        never spanning two pieces. Engines without streaming input speak the pieces one by one."""
        if not self.streaming_text_input:
            async for text in pieces:
                async for chunk in self.synthesize(text):
                    yield chunk
            return
        replay = Replay(pieces)  # a retry before the first audio starts over with the pieces taken
        async for chunk in first_byte_guarded(self.name, self.policy, lambda: self._synthesize_stream(replay.again())):
            yield chunk

    @property
    def voice_name(self) -> str | None:
        """The voice the engine speaks with, where it has a choice of them."""
        voice = getattr(self, "voice", None)
        return voice if isinstance(voice, str) else None

    @abstractmethod
    def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]: ...

    def _synthesize_stream(self, pieces: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        """Engines with ``streaming_text_input`` speak ``pieces`` on one context."""
        raise NotImplementedError


class Replay:
    """An async iterator of text pieces that can be iterated again from the start (the pieces
    taken so far, then the rest of the source): one attempt at a time."""

    __slots__ = ("_source", "taken")

    def __init__(self, source: AsyncIterator[str]) -> None:
        self._source = source
        self.taken: list[str] = []

    async def again(self, skip_chars: int = 0) -> AsyncIterator[str]:
        """The pieces from the start, less their first ``skip_chars`` characters (already spoken)."""
        async for text in self._all():
            if skip_chars >= len(text):
                skip_chars -= len(text)
                continue
            yield text[skip_chars:]
            skip_chars = 0

    async def _all(self) -> AsyncIterator[str]:
        for text in list(self.taken):
            yield text
        async for text in self._source:
            self.taken.append(text)
            yield text


# Shared failure handling


async def with_retries(provider: str, policy: RetryPolicy, attempt_once):  # type: ignore[no-untyped-def]
    """``await attempt_once()`` under the first-byte timeout, retried on retryable errors."""
    attempt = 0
    while True:
        try:
            return await asyncio.wait_for(attempt_once(), policy.first_byte_timeout_s)
        except TimeoutError:
            error = ProviderError(provider, "timeout", f"no answer within {policy.first_byte_timeout_s:g} s")
        except ProviderError as exc:
            error = exc
        attempt += 1
        if not error.retry_under(policy) or attempt > policy.retries:
            raise error
        await asyncio.sleep(policy.delay(attempt, error))


async def first_byte_guarded(provider: str, policy: RetryPolicy, start) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    """Iterate ``start()``; until its first item arrives, a timeout or retryable error starts a
    new attempt (with backoff). After the first item, errors propagate as ``ProviderError``."""
    attempt = 0
    while True:
        iterator = start().__aiter__()
        began = time.monotonic()
        try:
            first = await asyncio.wait_for(iterator.__anext__(), policy.first_byte_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await _aclose(iterator)
            error = ProviderError(provider, "timeout",
                                  f"no first byte within {policy.first_byte_timeout_s:g} s "
                                  f"(waited {time.monotonic() - began:.2f} s)")
        except ProviderError as exc:
            await _aclose(iterator)
            error = exc
        else:
            break
        attempt += 1
        if not error.retry_under(policy) or attempt > policy.retries:
            raise error
        await asyncio.sleep(policy.delay(attempt, error))
    try:
        yield first
        async for item in iterator:
            yield item
    finally:
        await _aclose(iterator)


async def _aclose(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a broken stream must not hide the error being handled
            pass
