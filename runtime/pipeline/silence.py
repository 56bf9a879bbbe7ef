"""Silence on the line: re-prompt the caller, then hang up.

After ``silence_reprompt_s`` of quiet on both sides (no reply playing, no caller turn open, no
digits being collected) the agent says the re-prompt; after a second such silence, the goodbye,
and the call ends (``reason=silence``). The quiet counts from the latest ``mark_quiet`` (a reply
ending or cut, a caller turn ending, a key press, typed text); the caller starting to speak,
pressing a key or typing starts the prompt count again (``reset_prompts``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from runtime.pipeline.clock import Clock
from runtime.pipeline.metrics import PipelineMetrics
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.speech import Reply
from runtime.pipeline.turns import IDLE, TurnDetector

if TYPE_CHECKING:
    from runtime.pipeline.keypad import Keypad
    from runtime.pipeline.replies import Replies


class Activity(Protocol):
    """What the silence watch reads of the conversation (runtime.pipeline.conversation); its
    parts are read from it because they, in turn, mark the quiet here."""

    live: bool
    reply: Reply | None
    prompts_silence: bool  # False (paused; off; an external brain unless on): no re-prompts
    replies: Replies
    keypad: Keypad


class SilenceWatch:
    """How long the line has been quiet, and the prompts that silence has drawn."""

    def __init__(self, conversation: Activity, *, detector: TurnDetector, settings: ConversationSettings, clock: Clock,
                 metrics: PipelineMetrics | None, quiet_since: float) -> None:
        self.conversation, self.detector, self.settings = conversation, detector, settings
        self.clock, self.metrics = clock, metrics
        self.quiet_since = quiet_since  # clock time
        self.prompts = 0  # re-prompts said since the caller last spoke, pressed a key or typed

    def mark_quiet(self) -> None:
        self.quiet_since = self.clock.now()

    def reset_prompts(self) -> None:
        self.prompts = 0

    async def watch(self) -> None:
        """Re-prompt after ``silence_reprompt_s`` of quiet on both sides; after a second one, say
        goodbye and hang up. Caller speech or a key press starts the count again."""
        conversation, clock = self.conversation, self.clock
        limit, phrases = self.settings.silence_reprompt_s, self.settings.phrases
        while conversation.live:
            now = clock.now()
            due = self.quiet_since + limit
            if now < due:
                await clock.sleep(due - now)
                continue
            if (conversation.reply is not None or self.detector.state != IDLE or conversation.keypad.collecting
                    or not conversation.prompts_silence):
                self.mark_quiet()  # busy: ending that activity marks the quiet again
                continue
            self.prompts += 1
            self.mark_quiet()
            if self.prompts == 1:
                self._count("reprompt")
                conversation.replies.start_line(phrases.reprompt)
            else:
                self._count("hangup")
                reply = conversation.replies.start_line(phrases.silence_goodbye)
                reply.after = ("hangup", "silence")
                self.prompts = 0

    def _count(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics.silence_prompts.labels(action).inc()
