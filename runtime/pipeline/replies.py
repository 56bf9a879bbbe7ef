"""The agent's replies on the line: started, played to the end, or cut.

Each agent utterance (greeting, fixed line, reply to a turn, DTMF or typed text) is a ``Reply``
(speech.py) with a new generation id, and one at a time holds the line (the conversation's
``reply``): ``start`` cuts whatever is still speaking, then runs the reply's body (a fixed
``line`` here, or ``Responder.respond``) in a task with a ``Speaker``, waits until its audio has
played, stores the agent's transcript, and ends or transfers the call if the reply asked to
(``reply.after``, e.g. the ``end_call`` and ``transfer_to_human`` tools, or the silence hang-up).

``cut`` is the mechanics of barge-in (when to cut is turn_taking.py's call): a new generation,
the reply's LLM/TTS/tool tasks cancelled, stale audio dropped (``drop_stale`` + ``clear``), and
only the words the caller heard kept in the history and the transcript.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from runtime.events.models import AgentInterrupted
from runtime.pipeline.history import History
from runtime.pipeline.metrics import PipelineMetrics, TurnTiming
from runtime.pipeline.reporting import CallReporter
from runtime.pipeline.speech import Reply, Speaker, Voice
from runtime.pipeline.transport import Transport
from runtime.providers.base import LanguageModel, Message, SpeechToText, TextToSpeech

if TYPE_CHECKING:
    from runtime.pipeline.conversation import CallSink

log = logging.getLogger("voicectl.pipeline")

CANCELLED_TOOL = json.dumps({"status": "cancelled", "error": "the caller interrupted before the tool finished"})

ReplyBody = Callable[[Reply, Speaker], Awaitable[None]]


class Line(Protocol):
    """What replies read and change of the conversation (runtime.pipeline.conversation)."""

    live: bool  # set False once the agent ends or transfers the call
    reply: Reply | None  # the reply on the line: set by ``start``, cleared when it ends or is cut
    # Told of a new caller turn (engines standing in for one turn step back); a failover
    # wrapper may be put in their place, so they are read at each use.
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech


class Replies:
    """Starts, plays out and cuts one call's replies."""

    def __init__(self, conversation: Line, *, session: CallSink, voice: Voice, history: History,
                 transport: Transport, reporter: CallReporter, metrics: PipelineMetrics | None,
                 mark_quiet: Callable[[], None], spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]]) -> None:
        self.conversation, self.session, self.voice, self.history = conversation, session, voice, history
        self.transport, self.reporter, self.metrics = transport, reporter, metrics
        self.mark_quiet = mark_quiet  # the silence watch counts quiet from the end of a reply
        self.on_barge_in: list[Callable[[], None]] = []  # the caller interrupted (e.g. queued lines drop)
        self.spawn = spawn

    def start(self, kind: str, body: ReplyBody, timing: TurnTiming | None = None) -> Reply:
        conversation = self.conversation
        if conversation.reply is not None:  # one voice at a time: whatever is still speaking is cut
            self.barge_in()
        if kind != "line":  # a new caller turn: engines standing in for this turn only step back
            for engine in (conversation.stt, conversation.llm, conversation.tts):
                engine.turn_started()
        reply = Reply(self.voice.next_generation(), kind, timing)
        conversation.reply = reply
        reply.task = self.spawn(self._run(reply, body))
        return reply

    def start_line(self, text: str, kind: str = "line", tts: TextToSpeech | None = None) -> Reply:
        """A fixed line (greeting, re-prompt, warning); ``tts``: in another voice than the call's."""
        reply = self.start(kind, partial(self.line, text=text))
        reply.tts = tts  # read once its task runs, on the next loop turn
        return reply

    async def _run(self, reply: Reply, body: ReplyBody) -> None:
        speaker = Speaker(self.voice, reply)
        try:
            await body(reply, speaker)
            await self.voice.wait_played(reply)
        finally:
            speaker.abort()
            if reply.timing is not None and not reply.timing.reported:
                self.reporter.turn_latency(reply.timing)
            if self.conversation.reply is reply:  # it ran to the end (a barge-in would have replaced it)
                self.conversation.reply = None
                self.mark_quiet()
                self.reporter.agent_transcript(reply, reply.ledger.full_text(), reply.ledger.total_ms, False)
        if reply.after is not None and self.conversation.live:
            await self._act(*reply.after)

    async def line(self, reply: Reply, speaker: Speaker, text: str) -> None:
        """A fixed line (greeting, re-prompt, warning): in the history as said by the agent."""
        message = Message("assistant", text)
        reply.messages.append(message)
        self.history.add(message)
        speaker.say(text, message)
        try:
            await speaker.finish()
        except Exception as exc:
            self.reporter.provider_error("tts", exc)
            self.history.keep_heard(reply.messages, reply.ledger, float("inf"), mark=False)

    async def _act(self, action: str, value: str) -> None:
        """End or transfer the call once the agent's last words have played."""
        self.conversation.live = False  # nothing more is said or heard on this call
        try:
            if action == "transfer":
                await self.session.transfer(value)
            else:
                await self.session.hangup(value)
        except Exception:
            log.exception("ending the call failed", extra={"call_id": self.session.id, "action": action})

    # Barge-in

    def barge_in(self) -> None:
        """Cut the reply on the line, if any (the caller spoke, pressed a key or typed)."""
        if self.conversation.reply is not None:
            self.cut(self.conversation.reply, announce=True)
        for hook in self.on_barge_in:
            hook()

    def cut(self, reply: Reply, *, announce: bool) -> None:
        """Stop ``reply`` now: new generation, tasks cancelled, stale audio dropped, and the
        history and transcript keep only what the caller heard. ``announce``: a barge-in (the
        transport is cleared and ``agent.interrupted`` sent), not the call closing."""
        played = self.transport.sent_ms(reply.generation) if reply.first_audio_at is not None else 0
        reply.interrupted = True
        self.voice.next_generation()
        self.conversation.reply = None
        self.mark_quiet()
        if reply.task is not None and reply.task is not asyncio.current_task():
            reply.task.cancel()
        heard = self.history.keep_heard(reply.messages, reply.ledger, played)
        self.cancel_pending_tools(reply)  # they were cancelled with the reply
        self.reporter.agent_transcript(reply, heard, played, True)
        if not announce:
            return
        self.transport.drop_stale(self.voice.generation)
        self.voice.clearing = self.spawn(self._clear_transport())
        self.reporter.emit(AgentInterrupted(heard_text=heard, played_ms=int(played)))
        if self.metrics is not None:
            self.metrics.interruptions.inc()

    def cancel_pending_tools(self, reply: Reply) -> None:
        """The reply's unfinished tool calls get a "cancelled" result in the history (the model
        expects a result for every call)."""
        for call in reply.pending_calls:
            self.history.add(Message("tool", CANCELLED_TOOL, tool_call_id=call.id, name=call.name))
        reply.pending_calls.clear()

    async def _clear_transport(self) -> None:
        try:
            await self.transport.clear()
        except Exception:
            log.exception("clearing the transport failed", extra={"call_id": self.session.id})
        finally:
            if self.voice.clearing is asyncio.current_task():
                self.voice.clearing = None
