"""Turn taking: what the conversation does with the caller's turns (``TurnDetector`` in turns.py
says when they start and end): barge-in, backchannels, and the reply to a finished turn.

Barge-in and backchannels: caller speech of ``min_interruption_ms`` while the agent speaks cuts
it (the per-frame path in conversation.py measures it and calls ``caller_interrupts``). Shorter
speech over the agent's audio is a backchannel: decoded, then dropped (it never reaches the
model). With a streaming STT whose interim text so far is only backchannel words ("mhm",
"yeah"), the cut waits up to ``backchannel_max_ms`` for a real word; an utterance engine has no
text that early, so a long "mhmmm" does interrupt. Speech while a reply has not made a sound yet
(the model is thinking) is the caller going on: the reply is dropped and both parts become one
user message. Cutting a reply (new generation, stale audio dropped, only the words heard kept)
is ``Replies.cut``'s job.

A turn with text that is answered goes to the history and the transcript, and its reply starts
with the turn's ``TurnTiming`` (the latency figures). A turn with speech (``heard_speech_ms`` of it)
but no words (the STT heard nothing it could accept) gets the version's ``not_understood_reply``
at once, through the same reply path: the caller is never left in silence until the re-prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from runtime.events.models import SpeechEnded, SpeechStarted
from runtime.pipeline.clock import Clock
from runtime.pipeline.history import History
from runtime.pipeline.metrics import PipelineMetrics, TurnTiming
from runtime.pipeline.replies import Replies
from runtime.pipeline.reporting import CallReporter
from runtime.pipeline.responder import Responder
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.silence import SilenceWatch
from runtime.pipeline.speech import Reply
from runtime.pipeline.turns import TurnDetector, is_backchannel
from runtime.providers.base import SpeechToText


@dataclass(slots=True)
class TurnState:
    """The conversation's view of the caller turn in progress."""

    during_agent: bool = False  # started while the agent was speaking
    continuation: bool = False  # started while the agent's reply had not made a sound yet
    barged: bool = False  # this turn interrupted the agent
    deferred: bool = False  # a barge-in held because the interim text was only a backchannel
    flush_at: float | None = None


class Floor(Protocol):
    """What turn taking reads of the conversation (runtime.pipeline.conversation)."""

    reply: Reply | None  # the agent's reply on the line (None: the agent is silent)
    answers_turns: bool  # False: paused, or an external brain: caller turns are kept, not answered
    stt: SpeechToText  # whether it sends interim text (a failover wrapper may be put in its place)


class TurnTaking:
    """The caller's turn in progress (``turn``) and what its start, flush and end do."""

    def __init__(self, conversation: Floor, *, detector: TurnDetector, settings: ConversationSettings,
                 history: History, replies: Replies, responder: Responder, silence: SilenceWatch,
                 reporter: CallReporter, clock: Clock, metrics: PipelineMetrics | None) -> None:
        self.conversation, self.detector, self.settings, self.history = conversation, detector, settings, history
        self.replies, self.responder, self.silence, self.reporter = replies, responder, silence, reporter
        self.clock, self.metrics = clock, metrics
        self.turn: TurnState | None = None

    def caller_started(self) -> None:
        """The detector's ``Signal.STARTED``: a new caller turn."""
        reply = self.conversation.reply
        self.turn = TurnState(during_agent=reply is not None,
                              continuation=reply is not None and reply.first_audio_at is None)
        self.silence.reset_prompts()
        self.reporter.emit(SpeechStarted(role="caller", offset_ms=self.detector.start_ms))

    def flushed(self) -> None:
        """The STT was asked for the final of the turn so far (``Signal.FLUSH``)."""
        if self.turn is not None:
            self.turn.flush_at = self.clock.now()

    def caller_interrupts(self) -> None:
        """Caller speech past ``min_interruption_ms`` while the agent speaks."""
        turn = self.turn
        if turn is None or turn.barged or not self.conversation.reply.interruptible:  # type: ignore[union-attr]
            return
        detector = self.detector
        # A streaming engine already hears "mhm" / "yeah": hold the barge-in for a while.
        if (self.conversation.stt.interim_results and is_backchannel(detector.interim)
                and detector.speech_ms < self.settings.turn.backchannel_max_ms):
            turn.deferred = True
            return
        turn.barged = True
        self.replies.barge_in()

    def ended(self, last_speech_at: float | None, final_at: float | None) -> None:
        """The detector's ``Signal.END``: answer the turn, or drop it (empty, or a backchannel).
        ``last_speech_at`` and ``final_at`` (clock times) are for the reply's latency figures."""
        finished = self.detector.take()
        turn, self.turn = self.turn or TurnState(), None
        self.reporter.emit(SpeechEnded(role="caller", offset_ms=finished.end_ms))
        self.silence.mark_quiet()
        text = finished.text
        if not text:
            return self._not_understood(finished.speech_ms, turn)
        reply = self.conversation.reply
        if reply is not None and not turn.barged and reply.interruptible:
            if turn.continuation or reply.first_audio_at is None or (turn.deferred and not is_backchannel(text)):
                # The agent had not made a sound yet, or the held words were more than a backchannel.
                turn.barged = True
                self.replies.barge_in()
            else:
                return self._count("backchannel")  # short speech over the agent: listening noises
        elif turn.during_agent and not turn.barged and is_backchannel(text):
            return self._count("backchannel")
        self.reporter.transcript("caller", text, finished.start_ms, finished.end_ms, False, finished.segments)
        self.history.add_user(text)
        if not self.conversation.answers_turns:  # heard and kept; the integrator answers
            return self._count("kept")
        self._count("replied")
        timing = TurnTiming(end_at=self.clock.now(), last_speech_at=last_speech_at, flush_at=turn.flush_at,
                            final_at=final_at if final_at is not None and turn.flush_at is not None
                            and final_at >= turn.flush_at else None)
        self.replies.start("turn", self.responder.respond, timing)

    def _not_understood(self, speech_ms: int, turn: TurnState) -> None:
        """Speech with no accepted words: say so at once, unless it was noise under the agent's
        voice (the agent still speaking, not cut) or too short to be a word."""
        line = self.settings.not_understood_reply
        agent_on = self.conversation.reply is not None and not turn.barged
        if (not line or agent_on or speech_ms < self.settings.turn.heard_speech_ms
                or not self.conversation.answers_turns):
            return self._count("empty")
        self._count("not_understood")
        self.replies.start_line(line, kind="not_understood")

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.turns.labels(outcome).inc()
