"""The conversation: one call's turn taking, streamed replies, barge-in, tools, DTMF and silence.

A bridge integrates it in a few lines::

    conv = Conversation(session, stt=..., llm=..., tts=..., transport=transport,
                        settings=ConversationSettings.from_route(session.route), vad=default_vad(8000),
                        toolbox=toolbox, metrics=pipeline_metrics)
    await conv.start()              # opens the STT stream, speaks the greeting
    conv.feed_audio(pcm16, 8000)    # every inbound frame (cheap, never blocks)
    conv.feed_dtmf("5")             # every key press
    await conv.close()              # when the call ends

The audio path (``feed_audio``) runs the VAD and the turn detector and queues speech frames
for the STT task; everything else (STT, LLM, TTS, tools, events) runs in tasks. Each agent
utterance (greeting, reply, line) is a ``Reply`` with a new generation id: its audio goes to
the transport tagged with it, and a barge-in bumps the generation, cancels the reply's
LLM/TTS/tool tasks, drops stale audio (``drop_stale`` + ``clear``) and keeps only the words the
caller heard in the history and the transcript.

Barge-in and backchannels: caller speech of ``min_interruption_ms`` while the agent speaks cuts
it. Shorter speech over the agent's audio is a backchannel: decoded, then dropped (it never
reaches the model). With a streaming STT whose interim text so far is only backchannel words
("mhm", "yeah"), the cut waits up to ``backchannel_max_ms`` for a real word; an utterance engine
has no text that early, so a long "mhmmm" does interrupt. Speech while a reply has not made a
sound yet (the model is thinking) is the caller going on: the reply is dropped and both parts
become one user message.

Events (``speech.*``, ``transcript.*``, ``agent.interrupted``, ``turn.latency``, ``tool.called``
for pipeline timeouts) and transcript rows go through one ordered queue to the session, so a
database write never delays audio. ``dtmf.received`` is the bridge's to emit (Twilio's does),
unless it passes ``emit_event=True``. Transcript times are ms since ``start()``: the caller's on
the inbound audio timeline, the agent's from when its first audio went to the transport.

Provider failures: providers are plain objects, so a failover wrapper can stand in for any of
them. An error from the LLM or TTS during a reply is logged and counted, and the caller hears
an apology; the call goes on. A broken STT stream is reopened (a few times).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from runtime.events.models import (
    AgentInterrupted,
    DtmfReceived,
    Payload,
    SpeechEnded,
    SpeechStarted,
    ToolCalled,
    TranscriptInterim,
    TurnLatency,
)
from runtime.ids import new_id
from runtime.pipeline.audio import Resampler
from runtime.pipeline.chunker import Chunker
from runtime.pipeline.clock import Clock, SystemClock
from runtime.pipeline.frames import AudioFrame, Control, ControlFrame
from runtime.pipeline.history import History
from runtime.pipeline.metrics import PipelineMetrics, TurnTiming
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.speech import Reply, Speaker, Voice
from runtime.pipeline.transport import Transport
from runtime.pipeline.turns import IDLE, SPEAKING, Signal, TurnDetector, is_backchannel
from runtime.providers.base import (
    LanguageModel,
    LlmRequest,
    Message,
    SpeechToText,
    SttStream,
    TextDelta,
    TextToSpeech,
    ToolCall,
    ToolCallRequest,
    Transcript,
)
from runtime.tools.base import ToolBox, ToolContext, ToolResult

log = logging.getLogger("voicectl.pipeline")

PREROLL_FRAMES = 16  # ~300 ms of audio before speech was confirmed goes to the STT with it
STT_REOPENS = 3
EVENT_DRAIN_S = 5.0  # close() waits this long for queued events and transcripts
CANCELLED_TOOL = json.dumps({"status": "cancelled", "error": "the caller interrupted before the tool finished"})
_FLUSH = ControlFrame(Control.FLUSH)


class CallSink(Protocol):
    """What the conversation needs from the call (``CallSession`` provides it)."""

    id: str
    tenant_id: str

    async def emit(self, payload: Payload) -> Any: ...

    def observe_latency(self, stage: str, ms: float) -> None: ...

    async def add_transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                             interrupted: bool) -> None: ...

    async def hangup(self, reason: str) -> None: ...

    async def transfer(self, target: str) -> None: ...


class VoiceActivity(Protocol):
    def is_speech(self, frame: bytes) -> bool: ...


@dataclass(slots=True)
class TurnState:
    """The conversation's view of the caller turn in progress."""

    during_agent: bool = False  # started while the agent was speaking
    continuation: bool = False  # started while the agent's reply had not made a sound yet
    barged: bool = False  # this turn interrupted the agent
    deferred: bool = False  # a barge-in held because the interim text was only a backchannel
    flush_at: float | None = None


class Conversation:
    def __init__(self, session: CallSink, *, stt: SpeechToText, llm: LanguageModel, tts: TextToSpeech,
                 transport: Transport, settings: ConversationSettings, vad: VoiceActivity,
                 toolbox: ToolBox | None = None, clock: Clock | None = None,
                 metrics: PipelineMetrics | None = None, tool_context: ToolContext | None = None) -> None:
        self.session, self.stt, self.llm, self.tts = session, stt, llm, tts
        self.transport, self.settings, self.vad, self.toolbox = transport, settings, vad, toolbox
        self.clock: Clock = clock or SystemClock()
        self.metrics = metrics
        self.tool_context = tool_context or ToolContext(
            tenant_id=session.tenant_id, call_id=session.id, agent_id=settings.agent_id,
            caller=getattr(session, "from_number", None), escalation_target=settings.escalation_target)
        self.detector = TurnDetector(settings.turn)
        self.history = History()
        self.voice = Voice(tts, transport, self.clock, self._first_audio)
        self._interrupt_ms = settings.turn.min_interruption_ms
        self._reply: Reply | None = None  # the agent is speaking while this is set
        self._turn: TurnState | None = None
        self._stt_stream: SttStream | None = None
        self._stt_queue: asyncio.Queue[AudioFrame | ControlFrame] = asyncio.Queue()
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        self._gate = False  # caller audio is going to the STT
        self._in_rate = 8000
        self._events: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.Task[None] | None = None
        # Awaited last by close(): what was made for this call only (e.g. its cloud provider clients).
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._last_speech_at: float | None = None
        self._final_at: float | None = None
        self._t0 = self._quiet_since = self.clock.now()
        self._silence_prompts = 0
        self._live = False
        self._closed = False

    # The bridge's side

    @property
    def speaking(self) -> bool:
        """The agent is speaking: a reply's LLM/TTS/tools are running or its audio is playing."""
        return self._reply is not None

    async def start(self) -> None:
        """Open the STT stream, start the background tasks and speak the greeting."""
        if self._live or self._closed:
            return
        self._live = True
        self._t0 = self._quiet_since = self.clock.now()
        self._writer = self._spawn(self._write_events())
        try:
            self._stt_stream = await self.stt.open()
        except Exception as exc:  # the reader retries; DTMF and the greeting still work meanwhile
            self._provider_error("stt", exc)
        self._spawn(self._pump_stt())
        self._spawn(self._read_stt())
        self._spawn(self._watch_silence())
        hooks = getattr(self.session, "on_duration_warning", None)
        if isinstance(hooks, list):
            hooks.append(self._duration_warning)
        if self.settings.greeting:
            self._start_reply("greeting", partial(self._line, text=self.settings.greeting))

    def feed_audio(self, pcm: bytes, rate: int) -> None:
        """One inbound frame (PCM16 mono, ~20 ms). VAD, turn detector and a queue put: no waiting."""
        if not self._live:
            return
        detector = self.detector
        speech = self.vad.is_speech(pcm)
        signal = detector.frame(speech, len(pcm) * 500 // rate)
        self._in_rate = rate
        if self._gate:
            self._stt_queue.put_nowait(AudioFrame(pcm, rate, detector.audio_ms))
        else:
            self._preroll.append(pcm)
        if signal:
            self._on_signal(signal)
        if speech:
            self._last_speech_at = self.clock.now()
            if (self._reply is not None and detector.state == SPEAKING
                    and detector.speech_ms >= self._interrupt_ms):
                self._caller_interrupts()

    def feed_dtmf(self, digit: str, *, emit_event: bool = False) -> None:
        """A key press. A digit mapped in ``dtmf_tools`` calls its tool at once; others reach the
        model as user text ``[DTMF 5]`` (digits pressed in quick succession together, ``#`` ends)."""
        if not self._live:
            return
        if emit_event:
            self._emit(DtmfReceived(digit=digit))
        self._silence_prompts = 0
        self._mark_quiet()
        tool = self.settings.dtmf_tools.get(digit)
        if tool and not self._dtmf:
            self._barge_in()  # a key press is deliberate: it interrupts
            self.history.add_user(f"[DTMF {digit}]")
            call = ToolCall(new_id("dtmf"), tool, {})
            self._start_reply("dtmf", partial(self._respond, calls=[call]))
            return
        self._dtmf.append(digit)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
            self._dtmf_task = None
        if digit == "#":
            self._deliver_dtmf()
        else:
            self._dtmf_task = self._spawn(self._dtmf_after_gap())

    def feed_text(self, text: str) -> None:
        """A whole caller turn as text (a typed chat: ``voicectl call --text``): stored as the
        caller's transcript and answered like a spoken turn; it interrupts the agent."""
        text = text.strip()
        if not self._live or not text:
            return
        self._barge_in()
        self._silence_prompts = 0
        self._mark_quiet()
        self._store_transcript("caller", text, None, None, False)
        self.history.add_user(text)
        self._start_reply("text", self._respond)

    async def say(self, text: str) -> None:
        """Speak a line now (e.g. a duration warning): after what the agent is saying, never
        cutting it off. Returns once the line has played (or was interrupted)."""
        while self._live and self._reply is not None and self._reply.task is not None:
            await asyncio.wait({self._reply.task})
        if not self._live:
            return
        reply = self._start_reply("line", partial(self._line, text=text))
        if reply.task is not None:
            await asyncio.wait({reply.task})

    async def close(self) -> None:
        """Stop: cancel the work in flight (the words played so far are kept in the transcript),
        close the STT stream, and write the events still queued. Never raises: it runs in every
        bridge's teardown, which must go on (a failure is logged)."""
        if self._closed:
            return
        try:
            await self._close()
        except Exception:
            log.exception("closing the conversation failed", extra={"call_id": self.session.id})

    async def _close(self) -> None:
        self._closed, self._live = True, False
        hooks = getattr(self.session, "on_duration_warning", None)
        if isinstance(hooks, list) and self._duration_warning in hooks:
            hooks.remove(self._duration_warning)
        if self._reply is not None:
            self._cut(self._reply, announce=False)
        current = asyncio.current_task()
        writer = self._writer
        stopping = [t for t in self._tasks if t is not current and t is not writer]
        for task in stopping:
            task.cancel()
        stream, self._stt_stream = self._stt_stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:
                log.exception("closing the STT stream failed", extra={"call_id": self.session.id})
        if writer is not None and writer is not current:
            try:
                await asyncio.wait_for(self._events.join(), EVENT_DRAIN_S)
            except TimeoutError:
                log.error("call events still queued at close were dropped", extra={"call_id": self.session.id})
            writer.cancel()
            stopping.append(writer)
        if stopping:
            await asyncio.wait(stopping, timeout=EVENT_DRAIN_S)
        for closer in self.closers:
            try:
                await closer()
            except Exception:
                log.exception("releasing the call's providers failed", extra={"call_id": self.session.id})

    # Caller audio -> turns

    def _on_signal(self, signal: Signal) -> None:
        if signal & Signal.STARTED:
            reply = self._reply
            self._turn = TurnState(during_agent=reply is not None,
                                   continuation=reply is not None and reply.first_audio_at is None)
            self._silence_prompts = 0
            self._emit(SpeechStarted(role="caller", offset_ms=self.detector.start_ms))
            self._open_gate()
        if signal & Signal.RESUMED:
            self._open_gate()
        if signal & Signal.FLUSH:
            self._stt_queue.put_nowait(_FLUSH)
            self._gate = False
            if self._turn is not None:
                self._turn.flush_at = self.clock.now()
        if signal & Signal.END:
            self._end_turn()

    def _open_gate(self) -> None:
        if self._gate:
            return
        self._gate = True
        ts, rate, put = self.detector.audio_ms, self._in_rate, self._stt_queue.put_nowait
        for pcm in self._preroll:
            put(AudioFrame(pcm, rate, ts))
        self._preroll.clear()

    def _caller_interrupts(self) -> None:
        """Caller speech past ``min_interruption_ms`` while the agent speaks."""
        turn = self._turn
        if turn is None or turn.barged:
            return
        detector = self.detector
        # A streaming engine already hears "mhm" / "yeah": hold the barge-in for a while.
        if (self.stt.interim_results and is_backchannel(detector.interim)
                and detector.speech_ms < self.settings.turn.backchannel_max_ms):
            turn.deferred = True
            return
        turn.barged = True
        self._barge_in()

    def _end_turn(self) -> None:
        detector = self.detector
        finished = detector.take()
        turn, self._turn = self._turn or TurnState(), None
        self._gate = False
        self._emit(SpeechEnded(role="caller", offset_ms=finished.end_ms))
        self._mark_quiet()
        text = finished.text
        if not text:
            return self._count_turn("empty")
        reply = self._reply
        if reply is not None and not turn.barged:
            if turn.continuation or reply.first_audio_at is None or (turn.deferred and not is_backchannel(text)):
                # The agent had not made a sound yet, or the held words were more than a backchannel.
                turn.barged = True
                self._barge_in()
            else:
                return self._count_turn("backchannel")  # short speech over the agent: listening noises
        elif turn.during_agent and not turn.barged and is_backchannel(text):
            return self._count_turn("backchannel")
        self._count_turn("replied")
        self._store_transcript("caller", text, finished.start_ms, finished.end_ms, False)
        self.history.add_user(text)
        final_at = self._final_at
        timing = TurnTiming(end_at=self.clock.now(), last_speech_at=self._last_speech_at, flush_at=turn.flush_at,
                            final_at=final_at if final_at is not None and turn.flush_at is not None
                            and final_at >= turn.flush_at else None)
        self._start_reply("turn", self._respond, timing)

    def _count_turn(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.turns.labels(outcome).inc()

    # STT

    async def _pump_stt(self) -> None:
        """Caller speech frames (and flushes) to the STT stream, resampled to its rate."""
        queue, resampler, broken = self._stt_queue, None, None
        while True:
            item = await queue.get()
            stream = self._stt_stream
            if stream is None or stream is broken:
                continue  # dropped until the reader has reopened the stream
            try:
                if item.__class__ is ControlFrame:
                    await stream.flush()
                    continue
                if resampler is None or resampler.src != item.rate or resampler.dst != stream.rate:
                    resampler = Resampler(item.rate, stream.rate)  # a fallback engine may want another rate
                await stream.push(resampler(item.pcm))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # once per stream: the reader sees it broken too and reopens
                broken = stream
                self._provider_error("stt", exc)

    async def _read_stt(self) -> None:
        """Transcripts to the turn detector; a stream that fails (or ends while the call is
        live) is reopened up to ``STT_REOPENS`` times, with a growing pause."""
        failures = 0
        while self._live:
            stream = self._stt_stream
            if stream is None:
                try:
                    stream = self._stt_stream = await self.stt.open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._provider_error("stt", exc)
                    failures += 1
                    if failures > STT_REOPENS:
                        return
                    await self.clock.sleep(float(failures))
                    continue
            try:
                async for transcript in stream:
                    self._on_transcript(transcript)
                if not self._live:
                    return  # closed by close()
                raise ConnectionError("the STT stream ended during the call")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._provider_error("stt", exc)
                if self._stt_stream is stream:
                    self._stt_stream = None
                try:
                    await stream.close()
                except Exception:
                    pass
                failures += 1
                if failures > STT_REOPENS:
                    log.error("the STT stream keeps failing: this call is no longer heard",
                              extra={"call_id": self.session.id})
                    return

    def _on_transcript(self, transcript: Transcript) -> None:
        if not self._live:
            return
        if not transcript.final:
            text = transcript.text.strip()
            if text and text != self.detector.interim:
                self.detector.interim_text(text)
                self._emit(TranscriptInterim(role="caller", text=text))
            return
        self._final_at = self.clock.now()
        if self.detector.final(transcript.text) & Signal.END:
            self._end_turn()

    # Agent speech

    def _start_reply(self, kind: str, body: Callable[[Reply, Speaker], Awaitable[None]],
                     timing: TurnTiming | None = None) -> Reply:
        if self._reply is not None:  # one voice at a time: whatever is still speaking is cut
            self._barge_in()
        if kind != "line":  # a new caller turn: engines standing in for this turn only step back
            for engine in (self.stt, self.llm, self.tts):
                engine.turn_started()
        reply = Reply(self.voice.next_generation(), kind, timing)
        self._reply = reply
        reply.task = self._spawn(self._run_reply(reply, body))
        return reply

    async def _run_reply(self, reply: Reply, body: Callable[[Reply, Speaker], Awaitable[None]]) -> None:
        speaker = Speaker(self.voice, reply)
        try:
            await body(reply, speaker)
            await self.voice.wait_played(reply)
        finally:
            speaker.abort()
            if reply.timing is not None and not reply.timing.reported:
                self._report_latency(reply.timing)
            if self._reply is reply:  # it ran to the end (a barge-in would have replaced it)
                self._reply = None
                self._mark_quiet()
                self._store_agent_transcript(reply, reply.ledger.full_text(), reply.ledger.total_ms, False)
        if reply.after is not None and self._live:
            await self._act(*reply.after)

    async def _line(self, reply: Reply, speaker: Speaker, text: str) -> None:
        """A fixed line (greeting, re-prompt, warning): in the history as said by the agent."""
        message = Message("assistant", text)
        reply.messages.append(message)
        self.history.add(message)
        speaker.say(text, message)
        try:
            await speaker.finish()
        except Exception as exc:
            self._provider_error("tts", exc)
            self.history.keep_heard(reply.messages, reply.ledger, float("inf"), mark=False)

    async def _respond(self, reply: Reply, speaker: Speaker, calls: list[ToolCall] | None = None) -> None:
        """Answer the caller: stream the model, speak as it writes, run its tools; an apology
        when a provider fails on the way."""
        try:
            await self._converse(reply, speaker, calls or [])
            await speaker.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if exc is speaker.error:
                self._provider_error("tts", exc)
            else:  # the model broke: the whole sentences it wrote before are still said
                self._provider_error("llm", exc)
                try:
                    await speaker.finish()
                except Exception as tts_exc:
                    self._provider_error("tts", tts_exc)
            speaker.abort()
            await self._apologize(reply)

    async def _converse(self, reply: Reply, speaker: Speaker, calls: list[ToolCall]) -> None:
        settings, rounds = self.settings, 0
        if calls:  # a DTMF-mapped tool: called as if the model had asked for it
            message = Message("assistant", tool_calls=tuple(calls))
            reply.messages.append(message)
            self.history.add(message)
            if await self._run_tools(reply, speaker, calls):
                return
            rounds = 1
        while True:
            tools = self.toolbox.specs() if self.toolbox is not None and rounds < settings.max_tool_rounds else ()
            request = LlmRequest(system=settings.system_prompt, messages=self.history.snapshot(), tools=tools,
                                 model=settings.model, temperature=settings.temperature,
                                 max_tokens=settings.max_tokens)
            message = Message("assistant")
            reply.messages.append(message)
            chunker, calls, timing = Chunker(), [], reply.timing
            async with aclosing(self.llm.stream(request)) as events:
                async for event in events:
                    if speaker.error is not None:
                        raise speaker.error
                    if timing is not None and timing.llm_first_at is None:
                        timing.llm_first_at = self.clock.now()
                    if isinstance(event, TextDelta):
                        message.content += event.text
                        for chunk in chunker.push(event.text):
                            speaker.say(chunk, message)
                    elif isinstance(event, ToolCallRequest):
                        calls.append(event.call)
            for chunk in chunker.flush():
                speaker.say(chunk, message)
            if calls and not tools:  # asked without tools (the round cap), it called one anyway
                log.warning("model called a tool past the round limit; ignored", extra={"call_id": self.session.id})
                calls = []
            message.tool_calls = tuple(calls)
            if message.content or calls:
                self.history.add(message)
            if not calls or await self._run_tools(reply, speaker, calls):
                return
            rounds += 1

    async def _run_tools(self, reply: Reply, speaker: Speaker, calls: list[ToolCall]) -> bool:
        """Run the calls in order, results into the history; True when one ends or transfers the
        call (no further model round: the model says its goodbye with the call, or a default line)."""
        reply.pending_calls = list(calls)
        filler = None if reply.filler_said else self._spawn(self._filler(reply, speaker))
        try:
            for call in calls:
                result = await self._call_tool(call)
                self.history.add(Message("tool", _tool_content(result.content), tool_call_id=call.id, name=call.name))
                reply.pending_calls.remove(call)
                if result.transfer_to:
                    reply.after = ("transfer", result.transfer_to)
                elif result.end_call and reply.after is None:
                    reply.after = ("hangup", "agent_ended")
        finally:
            if filler is not None:
                filler.cancel()
        if reply.after is None:
            return False
        if speaker.pieces == 0:
            phrases = self.settings.phrases
            line = phrases.transferring if reply.after[0] == "transfer" else phrases.goodbye
            message = Message("assistant", line)
            reply.messages.append(message)
            self.history.add(message)
            speaker.say(line, message)
        return True

    async def _filler(self, reply: Reply, speaker: Speaker) -> None:
        await self.clock.sleep(self.settings.filler_after_s)
        reply.filler_said = True
        speaker.say(self.settings.phrases.filler, None)

    async def _call_tool(self, call: ToolCall) -> ToolResult:
        if self.toolbox is None:
            return ToolResult({"status": "error", "error": "this agent has no tools"}, status="error")
        started = self.clock.now()
        work = asyncio.ensure_future(self.toolbox.call(call, self.tool_context))
        timer = asyncio.ensure_future(self.clock.sleep(self.settings.tool_timeout_s))
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            if work.exception() is None:
                return work.result()
            log.error("tool failed", exc_info=work.exception(), extra={"call_id": self.session.id, "tool": call.name})
            return ToolResult({"status": "error", "error": "the tool failed"}, status="error")
        latency = int((self.clock.now() - started) * 1000)
        self._emit(ToolCalled(name=call.name, arguments=call.arguments, status="timeout", latency_ms=latency))
        return ToolResult({"status": "timeout", "error": "the tool did not answer in time"}, status="timeout",
                          latency_ms=latency)

    async def _apologize(self, reply: Reply) -> None:
        """After a provider failure: keep what was said, then say sorry (if the TTS can)."""
        self.history.keep_heard(reply.messages, reply.ledger, float("inf"), mark=False)
        for call in reply.pending_calls:
            self.history.add(Message("tool", CANCELLED_TOOL, tool_call_id=call.id, name=call.name))
        reply.pending_calls.clear()
        text = self.settings.phrases.apology
        message = Message("assistant", text)
        reply.messages.append(message)
        self.history.add(message)
        speaker = Speaker(self.voice, reply)
        speaker.say(text, message)
        try:
            await speaker.finish()
        except Exception as exc:
            self._provider_error("tts", exc)
        finally:
            speaker.abort()

    # Barge-in

    def _barge_in(self) -> None:
        if self._reply is not None:
            self._cut(self._reply, announce=True)

    def _cut(self, reply: Reply, *, announce: bool) -> None:
        """Stop ``reply`` now: new generation, tasks cancelled, stale audio dropped, and the
        history and transcript keep only what the caller heard."""
        played = self.transport.sent_ms(reply.generation) if reply.first_audio_at is not None else 0
        reply.interrupted = True
        self.voice.next_generation()
        self._reply = None
        self._mark_quiet()
        if reply.task is not None and reply.task is not asyncio.current_task():
            reply.task.cancel()
        heard = self.history.keep_heard(reply.messages, reply.ledger, played)
        for call in reply.pending_calls:  # the tool was cancelled with the reply
            self.history.add(Message("tool", CANCELLED_TOOL, tool_call_id=call.id, name=call.name))
        reply.pending_calls.clear()
        self._store_agent_transcript(reply, heard, played, True)
        if not announce:
            return
        self.transport.drop_stale(self.voice.generation)
        self.voice.clearing = self._spawn(self._clear_transport())
        self._emit(AgentInterrupted(heard_text=heard, played_ms=int(played)))
        if self.metrics is not None:
            self.metrics.interruptions.inc()

    async def _clear_transport(self) -> None:
        try:
            await self.transport.clear()
        except Exception:
            log.exception("clearing the transport failed", extra={"call_id": self.session.id})
        finally:
            if self.voice.clearing is asyncio.current_task():
                self.voice.clearing = None

    # DTMF, silence, warnings

    async def _dtmf_after_gap(self) -> None:
        await self.clock.sleep(self.settings.dtmf_gap_s)
        self._dtmf_task = None
        self._deliver_dtmf()

    def _deliver_dtmf(self) -> None:
        digits, self._dtmf = "".join(self._dtmf), []
        if not digits or not self._live:
            return
        self._barge_in()  # a key press is deliberate: it interrupts
        self.history.add_user(f"[DTMF {digits}]")
        self._start_reply("dtmf", self._respond)

    def _mark_quiet(self) -> None:
        self._quiet_since = self.clock.now()

    async def _watch_silence(self) -> None:
        """Re-prompt after ``silence_reprompt_s`` of quiet on both sides; after a second one, say
        goodbye and hang up. Caller speech or a key press starts the count again."""
        limit, phrases = self.settings.silence_reprompt_s, self.settings.phrases
        while self._live:
            now = self.clock.now()
            due = self._quiet_since + limit
            if now < due:
                await self.clock.sleep(due - now)
                continue
            if self._reply is not None or self.detector.state != IDLE or self._dtmf:
                self._mark_quiet()  # busy: ending that activity marks the quiet again
                continue
            self._silence_prompts += 1
            self._mark_quiet()
            if self._silence_prompts == 1:
                self._count_silence("reprompt")
                self._start_reply("line", partial(self._line, text=phrases.reprompt))
            else:
                self._count_silence("hangup")
                reply = self._start_reply("line", partial(self._line, text=phrases.silence_goodbye))
                reply.after = ("hangup", "silence")
                self._silence_prompts = 0

    def _count_silence(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics.silence_prompts.labels(action).inc()

    async def _duration_warning(self, session: Any, remaining_s: int) -> None:
        await self.say(self.settings.phrases.duration_warning(remaining_s))

    async def _act(self, action: str, value: str) -> None:
        """End or transfer the call once the agent's last words have played."""
        self._live = False  # nothing more is said or heard on this call
        try:
            if action == "transfer":
                await self.session.transfer(value)
            else:
                await self.session.hangup(value)
        except Exception:
            log.exception("ending the call failed", extra={"call_id": self.session.id, "action": action})

    # Events, transcripts, latency

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("conversation task failed", exc_info=task.exception(), extra={"call_id": self.session.id})

    def _emit(self, payload: Payload) -> None:
        self._events.put_nowait(partial(self.session.emit, payload))

    def emit(self, payload: Payload) -> None:
        """An event of this call, written in order with the conversation's own."""
        self._emit(payload)

    async def _write_events(self) -> None:
        queue = self._events
        while True:
            job = await queue.get()
            try:
                await job()
            except Exception:
                log.exception("writing a call event failed", extra={"call_id": self.session.id})
            finally:
                queue.task_done()

    def _store_transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                          interrupted: bool) -> None:
        self._events.put_nowait(partial(self.session.add_transcript, role, text, start_ms, end_ms, interrupted))

    def _store_agent_transcript(self, reply: Reply, text: str, played_ms: float, interrupted: bool) -> None:
        if not text or reply.first_audio_at is None:
            return
        start = round((reply.first_audio_at - self._t0) * 1000)
        self._store_transcript("agent", text, start, start + int(played_ms), interrupted)

    def _first_audio(self, reply: Reply) -> None:
        if reply.timing is not None:
            self._report_latency(reply.timing)

    def _report_latency(self, timing: TurnTiming) -> None:
        timing.reported = True
        stages = timing.stages()
        for stage, ms in stages.items():
            if ms is not None:
                self.session.observe_latency(stage, ms)
                if self.metrics is not None:
                    self.metrics.observe(stage, ms)
        self._emit(TurnLatency(stt_ms=stages["stt"], llm_first_token_ms=stages["llm_first_token"],
                               tts_first_audio_ms=stages["tts_first_audio"], first_frame_ms=stages["first_frame"],
                               v2v_ms=stages["v2v"]))

    def _provider_error(self, modality: str, exc: BaseException) -> None:
        kind = getattr(exc, "kind", "exception")
        log.warning("provider failed during a call", extra={
            "call_id": self.session.id, "modality": modality, "provider": getattr(exc, "provider", None),
            "kind": kind, "error": str(exc)[:300]})
        if self.metrics is not None:
            self.metrics.provider_errors.labels(modality, kind).inc()


def _tool_content(content: dict[str, Any] | str) -> str:
    return content if isinstance(content, str) else json.dumps(content, default=str)
