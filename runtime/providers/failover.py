"""Fallback chains: one engine per modality that is really a list of engines, tried in order.

The pipeline holds a ``FailoverSTT`` / ``FailoverLLM`` / ``FailoverTTS`` like any engine. Each
engine of the chain keeps its own retries (``RetryPolicy``: backoff, Retry-After) and first-byte
timeout; when it still fails:

- it cannot connect, its key is refused (``auth``: never retried), or it breaks mid-stream:
  it is dropped for the rest of the call and the next one takes over at once;
- no first byte in time (``timeout``): the next one answers this turn only; the next caller
  turn tries the first engine again (``turn_started``).

A mid-reply break is finished on the next engine: the LLM fallback gets the history with what
was already said as the assistant's unfinished message; the TTS fallback speaks the rest of
the text. Every switch is reported (``provider.failed_over`` event and a metric, by the
conversation engine's ``report`` callback) with the reason; a refused key names the tenant's
credential as the cause.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from runtime.providers.base import (
    AudioChunk,
    Engine,
    LanguageModel,
    LlmDone,
    LlmEvent,
    LlmRequest,
    Message,
    ProviderError,
    Replay,
    SpeechToText,
    SttStream,
    TextDelta,
    TextToSpeech,
    ToolCallRequest,
    Transcript,
)

log = logging.getLogger("voicectl.providers")

E = TypeVar("E", SpeechToText, LanguageModel, TextToSpeech)


@dataclass(frozen=True, slots=True)
class Failover:
    modality: str  # stt | llm | tts
    from_provider: str
    to_provider: str
    reason: str
    kind: str  # the ProviderError kind (auth, timeout, ...) or "exception"
    for_turn_only: bool = False


Report = Callable[[Failover], None]


def failure_reason(exc: BaseException) -> str:
    """Why an engine was left, for the event (no secrets: provider errors never carry keys)."""
    if isinstance(exc, ProviderError):
        if exc.kind == "auth":
            status = f" ({exc.status})" if exc.status else ""
            return f"the tenant's {exc.provider} credential was refused{status}"
        return f"{exc.kind}: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


class _Chain(Generic[E]):
    """The engines of one modality and which one is answering."""

    def __init__(self, modality: str, engines: list[tuple[str, E]], report: Report | None) -> None:
        if not engines:
            raise ValueError(f"an empty {modality} chain")
        self.modality, self.engines, self.report = modality, engines, report
        self.index = 0  # the engine answering from now on
        self.turn_index: int | None = None  # an engine answering this turn only (after a timeout)

    @property
    def current(self) -> tuple[str, E]:
        return self.engines[self.turn_index if self.turn_index is not None else self.index]

    def has_next(self) -> bool:
        return (self.turn_index if self.turn_index is not None else self.index) + 1 < len(self.engines)

    def advance(self, exc: BaseException) -> None:
        """Leave the current engine: for this turn after a timeout, else for the call."""
        position = self.turn_index if self.turn_index is not None else self.index
        temporary = isinstance(exc, ProviderError) and exc.kind == "timeout"
        if temporary:
            self.turn_index = position + 1
        else:
            self.index, self.turn_index = position + 1, None
        switch = Failover(self.modality, self.engines[position][0], self.engines[position + 1][0],
                          failure_reason(exc), getattr(exc, "kind", "exception"), temporary)
        log.warning("provider failed over", extra={"modality": switch.modality, "from_provider": switch.from_provider,
                                                    "to_provider": switch.to_provider, "kind": switch.kind,
                                                    "for_turn_only": temporary})
        if self.report is not None:
            self.report(switch)

    def turn_started(self) -> None:
        self.turn_index = None

    async def aclose(self, owned: set[str]) -> None:
        for name, engine in self.engines:
            if name in owned:
                try:
                    await engine.aclose()
                except Exception:
                    log.exception("closing a provider failed", extra={"provider": name})


class FailoverSTT(SpeechToText):
    name = "failover"

    def __init__(self, engines: list[tuple[str, SpeechToText]], report: Report | None = None,
                 owned: set[str] | None = None) -> None:
        super().__init__()
        self.chain = _Chain("stt", engines, report)
        self.owned = owned or set()

    @property
    def provider_name(self) -> str:
        return self.chain.current[0]

    @property
    def serving(self) -> Engine:
        return self.chain.current[1]

    @property  # type: ignore[override]
    def rate(self) -> int:
        return self.chain.current[1].rate

    @property  # type: ignore[override]
    def interim_results(self) -> bool:
        return self.chain.current[1].interim_results

    async def open(self) -> SttStream:
        """The current engine's stream; one that cannot open hands over to the next engine."""
        while True:
            engine = self.chain.current[1]
            try:
                return _ChainedStream(await engine.open(), self.chain)
            except Exception as exc:
                if not self.chain.has_next():
                    raise
                self.chain.advance(exc)

    async def _open(self) -> SttStream:  # pragma: no cover - open() is overridden
        raise NotImplementedError

    def turn_started(self) -> None:
        self.chain.turn_started()

    async def aclose(self) -> None:
        await self.chain.aclose(self.owned)


class _ChainedStream(SttStream):
    """An engine's stream that, when it breaks, moves the chain on (the pipeline reopens the
    stream and gets the next engine's). The engine has tried to reconnect itself already."""

    def __init__(self, inner: SttStream, chain: _Chain[SpeechToText]) -> None:
        self.inner, self.chain, self.rate = inner, chain, inner.rate
        self._engine = chain.current[1]
        self._failed = False

    def _fail(self, exc: BaseException) -> None:
        if not self._failed and self.chain.current[1] is self._engine and self.chain.has_next():
            self._failed = True
            self.chain.advance(exc)

    async def push(self, pcm: bytes) -> None:
        try:
            await self.inner.push(pcm)
        except Exception as exc:
            self._fail(exc)
            raise

    async def flush(self) -> None:
        try:
            await self.inner.flush()
        except Exception as exc:
            self._fail(exc)
            raise

    async def close(self) -> None:
        await self.inner.close()

    def want_interim(self, on: bool) -> None:
        self.inner.want_interim(on)

    async def __aiter__(self) -> AsyncIterator[Transcript]:
        try:
            async for transcript in self.inner:
                yield transcript
        except Exception as exc:
            self._fail(exc)
            raise


class FailoverLLM(LanguageModel):
    name = "failover"

    def __init__(self, engines: list[tuple[str, LanguageModel]], report: Report | None = None,
                 owned: set[str] | None = None) -> None:
        super().__init__()
        self.chain = _Chain("llm", engines, report)
        self.owned = owned or set()

    @property
    def provider_name(self) -> str:
        return self.chain.current[0]

    @property
    def serving(self) -> Engine:
        return self.chain.current[1]

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        said, called = "", False
        while True:
            first = self.chain.current[1] is self.chain.engines[0][1]
            # The version's model names the first engine's model; fallbacks use their own default.
            asked = request if first else replace(request, model=None)
            if said:
                asked = replace(asked, messages=(*asked.messages, Message("assistant", said)))
            try:
                async for event in self.chain.current[1].stream(asked):
                    if event.__class__ is TextDelta:
                        said += event.text  # type: ignore[union-attr]
                    elif event.__class__ is ToolCallRequest:
                        called = True
                    yield event
                return
            except Exception as exc:  # adapters raise ProviderError; anything else is a broken engine too
                if not self.chain.has_next():
                    raise
                self.chain.advance(exc)
                if called:  # the pipeline runs the call it has; the next round goes to the fallback
                    yield LlmDone("tool_use")
                    return

    def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:  # pragma: no cover
        raise NotImplementedError

    def turn_started(self) -> None:
        self.chain.turn_started()

    async def aclose(self) -> None:
        await self.chain.aclose(self.owned)


class FailoverTTS(TextToSpeech):
    name = "failover"

    def __init__(self, engines: list[tuple[str, TextToSpeech]], report: Report | None = None,
                 owned: set[str] | None = None) -> None:
        super().__init__()
        self.chain = _Chain("tts", engines, report)
        self.owned = owned or set()

    @property
    def provider_name(self) -> str:
        return self.chain.current[0]

    @property
    def serving(self) -> Engine:
        return self.chain.current[1]

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        left = text
        while True:
            spoken = ""
            try:
                async for chunk in self.chain.current[1].synthesize(left):
                    spoken += chunk.text
                    yield chunk
                return
            except Exception as exc:
                if not self.chain.has_next():
                    raise
                self.chain.advance(exc)
                heard, rest = spoken.strip(), left.lstrip()
                if heard and rest.startswith(heard):  # the rest of the text on the next engine
                    left = rest[len(heard):].lstrip()
                    if not left:
                        return

    @property
    def streaming_text_input(self) -> bool:  # type: ignore[override]
        return self.chain.current[1].streaming_text_input

    async def synthesize_stream(self, pieces: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        """As ``synthesize``, for a stream of pieces: on a failure the next engine gets what the
        failed one had not spoken yet (the rest of the pieces it had taken), then the pieces still
        to come."""
        replay, spoken = Replay(pieces), 0
        while True:
            try:
                async for chunk in self.chain.current[1].synthesize_stream(replay.again(spoken)):
                    spoken += len(chunk.text)
                    yield chunk
                return
            except Exception as exc:
                if not self.chain.has_next():
                    raise
                self.chain.advance(exc)

    def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:  # pragma: no cover
        raise NotImplementedError

    @property
    def voice_name(self) -> str | None:
        return self.chain.current[1].voice_name

    def turn_started(self) -> None:
        self.chain.turn_started()

    async def aclose(self) -> None:
        await self.chain.aclose(self.owned)
