"""Fakes for the conversation pipeline: scripted STT/LLM/TTS, a transport that plays audio out
in real time on a ``ManualClock``, a recording session, a tool box and an energy VAD, plus a
``Harness`` that feeds the conversation 20 ms frames of loud or silent audio while moving the
clock with them. Used by tests/pipeline/test_pipeline_*.py and reusable by bench/pipeline.py."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from runtime.audio import rms
from runtime.control.schemas import AgentConfig
from runtime.events.models import Payload
from runtime.pipeline.clock import ManualClock
from runtime.pipeline.conversation import Conversation
from runtime.pipeline.metrics import PipelineMetrics
from runtime.pipeline.settings import ConversationSettings
from runtime.providers.base import (
    AudioChunk,
    LanguageModel,
    LlmDone,
    LlmEvent,
    LlmRequest,
    RetryPolicy,
    SpeechToText,
    SttStream,
    TextDelta,
    TextToSpeech,
    ToolCall,
    ToolCallRequest,
    ToolSpec,
    Transcript,
)
from runtime.tools.base import ToolContext, ToolResult

RATE = 8000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
LOUD = (3000).to_bytes(2, "little", signed=True) * (FRAME_BYTES // 2)
QUIET = bytes(FRAME_BYTES)
NO_RETRY = RetryPolicy(retries=0, first_byte_timeout_s=30.0)


class EnergyVad:
    """Speech when the frame's RMS passes a threshold: exact on synthetic loud/silent frames."""

    def __init__(self, threshold: int = 500) -> None:
        self.threshold = threshold

    def is_speech(self, frame: bytes) -> bool:
        return rms(frame) > self.threshold


# STT


class FakeSttStream(SttStream):
    """Each flush pops the next scripted text and returns it as a final after ``decode_s`` on the
    clock (an empty script entry: no final at all, like the local engine hearing noise)."""

    def __init__(self, stt: FakeStt) -> None:
        self.stt, self.rate = stt, stt.rate
        self.pushed = 0  # bytes
        self.flushes = 0
        self.interim_asks: list[bool] = []  # want_interim() calls, in order
        self._results: asyncio.Queue[Transcript | Exception | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    async def push(self, pcm: bytes) -> None:
        self.pushed += len(pcm)

    async def flush(self) -> None:
        self.flushes += 1
        text = self.stt.script.popleft() if self.stt.script else ""
        task = asyncio.get_running_loop().create_task(self._decode(text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _decode(self, text: str | Transcript) -> None:
        await self.stt.clock.sleep(self.stt.decode_s)
        if isinstance(text, Transcript):  # a final with its segments, as an engine decoding in segments sends it
            self._results.put_nowait(text)
        elif text:
            self._results.put_nowait(Transcript(text, final=True, speech_final=True))

    def interim(self, text: str) -> None:
        self._results.put_nowait(Transcript(text, final=False))

    def want_interim(self, on: bool) -> None:
        self.interim_asks.append(on)

    def fail(self, error: Exception) -> None:
        self._results.put_nowait(error)

    async def close(self) -> None:
        self._results.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Transcript]:
        while (item := await self._results.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item


class FakeStt(SpeechToText):
    name = "fake-stt"
    rate = 16000

    def __init__(self, clock: ManualClock, script: Iterable[str | Transcript] = (), *, decode_s: float = 0.1,
                 interim_results: bool = False) -> None:
        super().__init__(NO_RETRY)
        self.clock, self.script, self.decode_s = clock, deque(script), decode_s
        self.interim_results = interim_results
        self.streams: list[FakeSttStream] = []

    async def _open(self) -> SttStream:
        stream = FakeSttStream(self)
        self.streams.append(stream)
        return stream

    @property
    def stream(self) -> FakeSttStream:
        return self.streams[-1]


# LLM

Step = LlmEvent | float | Exception  # an event, a pause on the clock (seconds), or a failure


def say(text: str, *, delay_s: float = 0.0, split: bool = True) -> list[Step]:
    """A reply streamed word by word (``split``) after ``delay_s``."""
    steps: list[Step] = [delay_s] if delay_s else []
    if split:
        words = text.split(" ")
        steps += [TextDelta(w if i == 0 else " " + w) for i, w in enumerate(words)]
    else:
        steps.append(TextDelta(text))
    return [*steps, LlmDone()]


def tool_call(name: str, arguments: dict[str, Any] | None = None, *, text: str = "", call_id: str = "") -> list[Step]:
    steps: list[Step] = [TextDelta(text)] if text else []
    return [*steps, ToolCallRequest(ToolCall(call_id or f"call_{name}", name, arguments or {})), LlmDone("tool_use")]


class FakeLlm(LanguageModel):
    """Plays scripted replies in order (each a list of steps); when the script runs out, answers
    "You said: <last user text>."."""

    name = "fake-llm"

    def __init__(self, clock: ManualClock, replies: Iterable[list[Step]] = ()) -> None:
        super().__init__(NO_RETRY)
        self.clock = clock
        self.replies: deque[list[Step]] = deque(replies)
        self.requests: list[LlmRequest] = []

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        self.requests.append(request)
        if self.replies:
            steps = self.replies.popleft()
        else:
            last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            steps = say(f"You said: {last}.", split=False)
        for step in steps:
            if isinstance(step, (int, float)):
                await self.clock.sleep(step)
            elif isinstance(step, Exception):
                raise step
            else:
                yield step


# TTS


class FakeTts(TextToSpeech):
    """``ms_per_char`` of silence per character at 16 kHz, one chunk per text carrying the text
    (``per_word``: one chunk per word); texts containing ``fail_on`` raise after a first chunk."""

    name = "fake-tts"

    def __init__(self, clock: ManualClock, *, ms_per_char: float = 50.0, rate: int = 16000, delay_s: float = 0.0,
                 per_word: bool = False, fail_on: str | None = None, error: Exception | None = None) -> None:
        super().__init__(NO_RETRY)
        self.clock, self.ms_per_char, self.rate, self.delay_s = clock, ms_per_char, rate, delay_s
        self.per_word, self.fail_on, self.error = per_word, fail_on, error
        self.texts: list[str] = []

    def _pcm(self, text: str) -> bytes:
        return bytes(int(len(text) * self.ms_per_char * self.rate / 1000) * 2)

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        self.texts.append(text)
        if self.delay_s:
            await self.clock.sleep(self.delay_s)
        pieces = [w + " " for w in text.split(" ")] if self.per_word else [text]
        fail = self.fail_on is not None and self.fail_on in text
        for piece in pieces:
            yield AudioChunk(self._pcm(piece), self.rate, piece.strip())
            if fail:  # after the first chunk: a failure mid-utterance
                raise self.error or RuntimeError("tts broke")


class FakeStreamingTts(FakeTts):
    """A FakeTts that takes a reply's pieces on one stream (``streaming_text_input``), as the
    streaming engines do: each piece's audio (text ``""``), then a zero-length chunk with its
    text. ``streams``: the pieces each stream got, in order."""

    name = "fake-streaming-tts"
    streaming_text_input = True

    def __init__(self, clock: ManualClock, **kwargs: Any) -> None:
        super().__init__(clock, **kwargs)
        self.streams: list[list[str]] = []

    async def _synthesize_stream(self, pieces: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        stream: list[str] = []
        self.streams.append(stream)
        async for text in pieces:
            stream.append(text)
            self.texts.append(text)
            if self.delay_s:
                await self.clock.sleep(self.delay_s)
            yield AudioChunk(self._pcm(text), self.rate, "")
            if self.fail_on is not None and self.fail_on in text:
                raise self.error or RuntimeError("tts broke")
            yield AudioChunk(b"", self.rate, text)


# Transport


@dataclass
class Sent:
    generation: int
    ms: float
    at: float


class FakeTransport:
    """Queues audio and plays it out in real time on the clock (evaluated lazily on each call)."""

    def __init__(self, clock: ManualClock, rate: int = RATE) -> None:
        self.clock, self.rate = clock, rate
        self.sent: list[Sent] = []
        self.clears = 0
        self.stale_drops: list[int] = []
        self._queue: deque[list[float]] = deque()  # [generation, ms left]
        self._played: dict[int, float] = {}
        self._t = clock.now()

    def _advance(self) -> None:
        now = self.clock.now()
        elapsed, self._t = (now - self._t) * 1000, now
        while elapsed > 0 and self._queue:
            head = self._queue[0]
            take = min(elapsed, head[1])
            head[1] -= take
            elapsed -= take
            self._played[int(head[0])] = self._played.get(int(head[0]), 0.0) + take
            if head[1] <= 1e-9:
                self._queue.popleft()

    def send_audio(self, pcm: bytes, generation: int) -> None:
        self._advance()
        ms = len(pcm) * 500 / self.rate
        self._queue.append([generation, ms])
        self.sent.append(Sent(generation, ms, self.clock.now()))

    def sent_ms(self, generation: int) -> int:
        self._advance()
        return round(self._played.get(generation, 0.0))

    def queued_ms(self) -> int:
        self._advance()
        return round(sum(item[1] for item in self._queue))

    async def clear(self) -> None:
        self._advance()
        self._queue.clear()
        self.clears += 1

    async def played_out(self, generation: int) -> bool:
        return True  # nothing confirms playback on this way back

    def drop_stale(self, generation: int) -> None:
        self._advance()
        self.stale_drops.append(generation)
        self._queue = deque(item for item in self._queue if item[0] >= generation)

    def queued_generations(self) -> set[int]:
        self._advance()
        return {int(item[0]) for item in self._queue}

    def generations(self) -> list[int]:
        """Generations in the order their first audio arrived."""
        return list(dict.fromkeys(s.generation for s in self.sent))


# Session and tools


@dataclass
class TranscriptRow:
    role: str
    text: str
    start_ms: int | None
    end_ms: int | None
    interrupted: bool
    segments: list[dict[str, Any]] | None = None


@dataclass
class FakeSession:
    id: str = "call_test"
    tenant_id: str = "ten_test"
    from_number: str | None = "+15550001111"
    events: list[Payload] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)
    transcripts: list[TranscriptRow] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    on_duration_warning: list[Callable[..., Awaitable[None]]] = field(default_factory=list)
    listened_topics: tuple[str, ...] = ()  # what a subscriber outside takes (listened())

    async def emit(self, payload: Payload) -> None:
        self.events.append(payload)

    def listened(self, topic: str) -> bool:
        return topic in self.listened_topics

    def observe_latency(self, stage: str, ms: float) -> None:
        self.latency.setdefault(stage, []).append(ms)

    async def add_transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                             interrupted: bool, segments: list[dict[str, Any]] | None = None) -> None:
        self.transcripts.append(TranscriptRow(role, text, start_ms, end_ms, interrupted, segments))

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    async def transfer(self, target: str) -> None:
        self.transfers.append(target)

    def of(self, topic: str) -> list[Payload]:
        return [e for e in self.events if e.topic == topic]


ToolHandler = Callable[[dict[str, Any]], ToolResult | Awaitable[ToolResult]]


class FakeToolBox:
    """Tools by name -> handler(arguments); ``delay_s`` per tool waits on the clock first."""

    def __init__(self, clock: ManualClock, handlers: dict[str, ToolHandler], delays: dict[str, float] | None = None):
        self.clock, self.handlers, self.delays = clock, handlers, delays or {}
        self.calls: list[tuple[ToolCall, ToolContext]] = []
        self.cancelled: list[str] = []

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(ToolSpec(name, f"the {name} tool") for name in self.handlers)

    async def call(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        self.calls.append((call, ctx))
        try:
            if self.delays.get(call.name):
                await self.clock.sleep(self.delays[call.name])
        except asyncio.CancelledError:
            self.cancelled.append(call.name)
            raise
        result = self.handlers[call.name](call.arguments)
        return await result if inspect.isawaitable(result) else result


# The harness


class Harness:
    """A conversation wired to the fakes. ``speak``/``silence`` feed 20 ms frames and move the
    clock 20 ms with each one; ``wait`` moves the clock with no audio."""

    def __init__(self, *, script: Iterable[str | Transcript] = (), replies: Iterable[list[Step]] = (), greeting: str | None = None,
                 tools: dict[str, ToolHandler] | None = None, tool_delays: dict[str, float] | None = None,
                 decode_s: float = 0.1, interim_results: bool = False, tts: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None, **settings: Any) -> None:
        self.clock = ManualClock()
        self.session = FakeSession()
        self.stt = FakeStt(self.clock, script, decode_s=decode_s, interim_results=interim_results)
        self.llm = FakeLlm(self.clock, replies)
        tts = dict(tts or {})
        self.tts = (FakeStreamingTts if tts.pop("streaming", False) else FakeTts)(self.clock, **tts)
        self.transport = FakeTransport(self.clock)
        self.toolbox = FakeToolBox(self.clock, tools or {}, tool_delays) if tools is not None else None
        conf = {"system_prompt": "You are a test agent.", "greeting": greeting, **(config or {})}
        self.settings = ConversationSettings.from_config(AgentConfig.model_validate(conf), agent_id="agt_test",
                                                         **settings)
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)
        self.conv = Conversation(self.session, stt=self.stt, llm=self.llm, tts=self.tts, transport=self.transport,
                                 settings=self.settings, vad=EnergyVad(), toolbox=self.toolbox, clock=self.clock,
                                 metrics=self.metrics)

    async def start(self) -> None:
        await self.conv.start()
        await self.clock.advance(0)

    async def frames(self, frame: bytes, ms: int) -> None:
        for _ in range(ms // FRAME_MS):
            self.conv.feed_audio(frame, RATE)
            await self.clock.advance(FRAME_MS / 1000)

    async def speak(self, ms: int) -> None:
        await self.frames(LOUD, ms)

    async def silence(self, ms: int) -> None:
        await self.frames(QUIET, ms)

    async def wait(self, seconds: float) -> None:
        await self.clock.advance(seconds)

    async def until_quiet(self, step_ms: int = 20, limit_ms: int = 60_000) -> None:
        """Feed silence until the agent has finished speaking (reply played out)."""
        waited = 0
        while self.conv.speaking and waited < limit_ms:
            await self.silence(step_ms)
            waited += step_ms
        assert not self.conv.speaking, "the agent was still speaking"

    async def close(self) -> None:
        await self.conv.close()

    def topics(self) -> list[str]:
        return [e.topic for e in self.session.events]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0
