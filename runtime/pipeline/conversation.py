"""The conversation: one call's turn taking, streamed replies, barge-in, tools, DTMF and silence.

A bridge integrates it in a few lines::

    conv = Conversation(session, stt=..., llm=..., tts=..., transport=transport,
                        settings=ConversationSettings.from_route(session.route), vad=default_vad(8000),
                        toolbox=toolbox, metrics=pipeline_metrics)
    await conv.start()              # opens the STT stream, speaks the greeting
    conv.feed_audio(pcm16, 8000)    # every inbound frame (cheap, never blocks)
    conv.feed_dtmf("5")             # every key press
    await conv.close()              # when the call ends

``Conversation`` is the one entry point; it wires the parts, each owning its state, and keeps
what they share: ``live`` (started, and not closed nor ended by the agent) and ``reply`` (the
agent's utterance on the line; the agent is speaking while it is set).

- The audio path (``feed_audio``, here): per inbound frame, the VAD, the turn detector
  (turns.py), and the gate that queues speech frames for the STT (with the ~300 ms of audio from
  before speech was confirmed; the rest only waits in the pre-roll). Its per-frame work reads
  this object's own attributes and allocates nothing but the frame it queues; the detector's
  signals, and caller speech past ``min_interruption_ms`` over the agent, go to turn taking.
- listening.py ``Listener``: the STT stream (frames and flushes in, transcripts out, reopened).
- turn_taking.py ``TurnTaking``: the caller's turns: barge-in, backchannels, the reply to a turn.
- replies.py ``Replies``: each agent utterance is a ``Reply`` with a new generation id, started,
  played out, or cut by a barge-in (only the words the caller heard are kept).
- responder.py ``Responder``: the model's answer streamed into speech, its tools, the apology.
- keypad.py ``Keypad``: DTMF; silence.py ``SilenceWatch``: re-prompts and the silence hang-up.
- reporting.py ``CallReporter``: events and transcript rows, in one ordered queue to the session
  (a database write never delays audio), turn latency, provider failures.

STT, LLM, TTS, tools and the event writes run in tasks. ``dtmf.received`` is the bridge's to
emit (Twilio's does), unless it passes ``emit_event=True``. Providers are plain objects, so a
failover wrapper can stand in for any of them: an LLM or TTS failure during a reply ends in an
apology, a broken STT stream is reopened (a few times); the call goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from runtime.events.models import DtmfReceived, Payload
from runtime.pipeline.clock import Clock, SystemClock
from runtime.pipeline.frames import AudioFrame, Control, ControlFrame
from runtime.pipeline.history import History
from runtime.pipeline.keypad import Keypad
from runtime.pipeline.lines import LineQueue
from runtime.pipeline.listening import Listener
from runtime.pipeline.metrics import PipelineMetrics
from runtime.pipeline.replies import Replies
from runtime.pipeline.reporting import CallReporter
from runtime.pipeline.responder import Responder
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.silence import SilenceWatch
from runtime.pipeline.speech import Reply, Voice
from runtime.pipeline.transport import Transport
from runtime.pipeline.turn_taking import TurnTaking
from runtime.pipeline.turns import SPEAKING, Signal, TurnDetector
from runtime.providers.base import LanguageModel, SpeechToText, TextToSpeech
from runtime.tools.base import ToolBox, ToolContext

log = logging.getLogger("voicectl.pipeline")

PREROLL_FRAMES = 16  # ~300 ms of audio before speech was confirmed goes to the STT with it
EVENT_DRAIN_S = 5.0  # close() waits this long for queued events and transcripts
_FLUSH = ControlFrame(Control.FLUSH)


class CallSink(Protocol):
    """What the conversation needs from the call (``CallSession`` provides it)."""

    id: str
    tenant_id: str

    async def emit(self, payload: Payload) -> Any: ...

    def observe_latency(self, stage: str, ms: float) -> None: ...

    def listened(self, topic: str) -> bool:
        """Someone outside takes ``topic`` events of this call (costly ones are made only then)."""
        ...

    async def add_transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                             interrupted: bool, segments: list[dict[str, Any]] | None = None) -> None: ...

    async def hangup(self, reason: str) -> None: ...

    async def transfer(self, target: str) -> None: ...


def _other_party(session: Any) -> str | None:
    """The number of whoever the agent talks to: the caller, or the callee of an outbound call."""
    if getattr(session, "direction", None) == "outbound":
        return getattr(session, "to_number", None)
    return getattr(session, "from_number", None)


class VoiceActivity(Protocol):
    def is_speech(self, frame: bytes) -> bool: ...


class Conversation:
    """One call's conversation; see the module's docstring."""

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
            caller=_other_party(session), escalation_target=settings.escalation_target)
        self.detector = TurnDetector(settings.turn)
        self.history = History()
        started_at = self.clock.now()
        self.reporter = CallReporter(session, metrics, started_at)
        self.voice = Voice(tts, transport, self.clock, self.reporter.first_audio)
        # Shared by the parts (read through narrow protocols in their modules)
        self.live = False  # started, and not closed nor ended by the agent: the call is heard and answered
        # Paused by the integrator (PATCH /api/v1/calls/{id} {"ai": "paused"}): the caller is still
        # heard and transcribed, but the agent does not answer, re-prompt or fill silence.
        self.paused = False
        self.reply: Reply | None = None  # the agent's utterance on the line (set: the agent is speaking)
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.Task[None] | None = None
        # Awaited last by close(): what was made for this call only (e.g. its cloud provider clients).
        self.closers: list[Callable[[], Awaitable[Any]]] = []

        # The parts, each with what it uses; the silence watch first: the others mark the quiet in it
        clock, spawn = self.clock, self._spawn
        self.silence = SilenceWatch(self, detector=self.detector, settings=settings, clock=clock, metrics=metrics,
                                    quiet_since=started_at)
        self.replies = Replies(self, session=session, voice=self.voice, history=self.history, transport=transport,
                               reporter=self.reporter, metrics=metrics, mark_quiet=self.silence.mark_quiet,
                               spawn=spawn)
        self.lines = LineQueue(self, self.replies, spawn)
        self.lines.auto_flush = settings.auto_flush
        self.responder = Responder(self, settings=settings, history=self.history, voice=self.voice,
                                   replies=self.replies, toolbox=toolbox, tool_context=self.tool_context, clock=clock,
                                   reporter=self.reporter, spawn=spawn, call_id=session.id)
        self.keypad = Keypad(self, settings=settings, clock=clock, history=self.history, replies=self.replies,
                             responder=self.responder, spawn=spawn)
        self.turn_taking = TurnTaking(self, detector=self.detector, settings=settings, history=self.history,
                                      replies=self.replies, responder=self.responder, silence=self.silence,
                                      reporter=self.reporter, clock=clock, metrics=metrics)
        self.listener = Listener(self, detector=self.detector, clock=clock, reporter=self.reporter,
                                 call_id=session.id, on_turn_end=self._end_caller_turn)

        # The audio path's own state (see feed_audio)
        self._interrupt_ms = settings.turn.min_interruption_ms
        self._stt_queue = self.listener.queue
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        self._gate = False  # caller audio is going to the STT
        self._in_rate = 8000
        self._last_speech_at: float | None = None

    # The bridge's side

    @property
    def speaking(self) -> bool:
        """The agent is speaking: a reply's LLM/TTS/tools are running or its audio is playing."""
        return self.reply is not None

    async def start(self) -> None:
        """Open the STT stream, start the background tasks and speak the greeting."""
        if self.live or self._closed:
            return
        self.live = True
        self.reporter.started_at = self.silence.quiet_since = self.clock.now()
        self._writer = self._spawn(self.reporter.write())
        await self.listener.open()  # on failure the reader retries; DTMF and the greeting still work meanwhile
        self._spawn(self.listener.pump())
        self._spawn(self.listener.read())
        self._spawn(self.silence.watch())
        hooks = getattr(self.session, "on_duration_warning", None)
        if isinstance(hooks, list):
            hooks.append(self._duration_warning)
        if self.settings.external_brain and hasattr(self.session, "start_transcribe"):
            # The integrator's backend answers: its transcripts flow from the moment the call connects.
            await self.session.start_transcribe("in", implicit=True)
        if self.settings.greeting:
            self.replies.start_line(self.settings.greeting, kind="greeting")

    def feed_audio(self, pcm: bytes, rate: int) -> None:
        """One inbound frame (PCM16 mono, ~20 ms). VAD, turn detector and a queue put: no waiting."""
        if not self.live:
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
            if (self.reply is not None and detector.state == SPEAKING
                    and detector.speech_ms >= self._interrupt_ms):
                self.turn_taking.caller_interrupts()

    def feed_dtmf(self, digit: str, *, emit_event: bool = False) -> None:
        """A key press. A digit mapped in ``dtmf_tools`` calls its tool at once; others reach the
        model as user text ``[DTMF 5]`` (digits pressed in quick succession together, ``#`` ends)."""
        if not self.live:
            return
        if emit_event:
            self.reporter.emit(DtmfReceived(digit=digit))
        self.silence.reset_prompts()
        self.silence.mark_quiet()
        self.keypad.press(digit)

    def feed_text(self, text: str) -> None:
        """A whole caller turn as text (a typed chat: ``voicectl call --text``): stored as the
        caller's transcript and answered like a spoken turn; it interrupts the agent."""
        text = text.strip()
        if not self.live or not text:
            return
        self.replies.barge_in()
        self.silence.reset_prompts()
        self.silence.mark_quiet()
        self.reporter.transcript("caller", text, None, None, False)
        self.history.add_user(text)
        if self.answers_turns:
            self.replies.start("text", self.responder.respond)

    async def say(self, text: str) -> None:
        """Speak a line now (e.g. a duration warning): after what the agent is saying, never
        cutting it off. Returns once the line has played (or was interrupted)."""
        while self.live and self.reply is not None and self.reply.task is not None:
            await asyncio.wait({self.reply.task})
        if not self.live:
            return
        reply = self.replies.start_line(text)
        if reply.task is not None:
            await asyncio.wait({reply.task})

    async def say_uninterruptible(self, text: str) -> None:
        """A line the caller's speech does not cut (an outbound call's voicemail message, said to a
        recorder whose noises must not stop it): after what the agent is saying; returns once it
        has played."""
        while self.live and self.reply is not None and self.reply.task is not None:
            await asyncio.wait({self.reply.task})
        if not self.live:
            return
        reply = self.replies.start_line(text)
        reply.interruptible = False
        if reply.task is not None:
            await asyncio.wait({reply.task})

    def say_now(self, text: str, *, interrupt: bool, tts: TextToSpeech | None = None) -> bool:
        """A line the integrator sends, as the agent's own (history and transcript): after what is
        being said and the lines before it, or (``interrupt``) at once, cutting it and dropping
        them; ``tts``: in a speaking session's own voice. False when the call is over or too many
        lines wait (runtime.pipeline.lines)."""
        if not self.live:
            return False
        if interrupt:
            self.lines.flush()
        return self.lines.say(text, tts)

    def flush_lines(self) -> None:
        """Cut what is being said and drop the lines waiting (a speaking session's ``flush``)."""
        if self.live:
            self.lines.flush()

    @property
    def answers_turns(self) -> bool:
        """Whether the agent answers caller turns itself: not while paused, never for an external brain."""
        return not self.paused and not self.settings.external_brain

    @property
    def prompts_silence(self) -> bool:
        """Whether silence draws the re-prompt and the hang-up: never while paused; for an external
        brain only when the version turns them on (``turn.silence_prompts``)."""
        mode = self.settings.silence_prompts
        return not self.paused and (mode == "on" or (mode == "auto" and not self.settings.external_brain))

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.silence.reset_prompts()
        self.silence.mark_quiet()

    def emit(self, payload: Payload) -> None:
        """An event of this call, written in order with the conversation's own."""
        self.reporter.emit(payload)

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
        self._closed, self.live = True, False
        hooks = getattr(self.session, "on_duration_warning", None)
        if isinstance(hooks, list) and self._duration_warning in hooks:
            hooks.remove(self._duration_warning)
        if self.reply is not None:
            self.replies.cut(self.reply, announce=False)
        current = asyncio.current_task()
        writer = self._writer
        stopping = [t for t in self._tasks if t is not current and t is not writer]
        for task in stopping:
            task.cancel()
        await self.listener.close()
        if writer is not None and writer is not current:
            try:
                await asyncio.wait_for(self.reporter.drained(), EVENT_DRAIN_S)
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

    # The audio path's signals: the gate to the STT, and the caller's turn

    def _on_signal(self, signal: Signal) -> None:
        if signal & Signal.STARTED:
            self.turn_taking.caller_started()
            # Offline engines decode partial text at a cost: only when someone reads it.
            self.listener.want_interim(self.settings.external_brain or self.session.listened("transcript.interim"))
            self._open_gate()
        if signal & Signal.RESUMED:
            self._open_gate()
        if signal & Signal.FLUSH:
            self._stt_queue.put_nowait(_FLUSH)
            self._gate = False
            self.turn_taking.flushed()
        if signal & Signal.END:
            self._end_caller_turn()

    def _open_gate(self) -> None:
        if self._gate:
            return
        self._gate = True
        ts, rate, put = self.detector.audio_ms, self._in_rate, self._stt_queue.put_nowait
        for pcm in self._preroll:
            put(AudioFrame(pcm, rate, ts))
        self._preroll.clear()

    def _end_caller_turn(self) -> None:
        """The detector ended the caller's turn (on silence here, or on a final in the listener)."""
        self._gate = False
        self.turn_taking.ended(self._last_speech_at, self.listener.final_at)

    # Tasks and hooks

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("conversation task failed", exc_info=task.exception(), extra={"call_id": self.session.id})

    async def _duration_warning(self, session: Any, remaining_s: int) -> None:
        await self.say(self.settings.phrases.duration_warning(remaining_s))
