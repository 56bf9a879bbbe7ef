"""Lines the integrator sends (speaking sessions' ``say``, ``POST /api/v1/calls/{id}/say``): spoken
in order, each after what the agent is saying, each as the agent's own line (history, transcript).

``flush`` cuts what is being said and drops the queue; the caller interrupting does the same when
``auto_flush`` is on (a speaking session's default), so an integrator that answers a new turn is
not heard after its stale lines.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from runtime.pipeline.replies import Replies, Reply
from runtime.providers.base import TextToSpeech

MAX_QUEUED = 100  # lines waiting per call; more are refused (the integrator is far ahead of the caller)


class Line(Protocol):
    live: bool
    reply: Reply | None


class LineQueue:
    def __init__(self, conversation: Line, replies: Replies,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self.conversation, self.replies, self.spawn = conversation, replies, spawn
        self.auto_flush = True
        self._queue: deque[tuple[str, TextToSpeech | None]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._speaking = False  # a line of ours is on the line now
        replies.on_barge_in.append(self._caller_interrupted)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def say(self, text: str, tts: TextToSpeech | None = None) -> bool:
        """Queue ``text`` (``tts``: in another voice than the call's); False when the queue is full."""
        if len(self._queue) >= MAX_QUEUED:
            return False
        self._queue.append((text, tts))
        if self._runner is None or self._runner.done():
            self._runner = self.spawn(self._speak())
        return True

    def flush(self) -> None:
        """Cut the line being said (ours or the agent's) and drop the queue."""
        self._queue.clear()
        if self.conversation.reply is not None:
            self.replies.cut(self.conversation.reply, announce=True)

    def _caller_interrupted(self) -> None:
        if self.auto_flush:
            self._queue.clear()  # the reply itself was cut by the barge-in

    async def _speak(self) -> None:
        conversation = self.conversation
        while conversation.live and self._queue:
            current = conversation.reply
            if current is not None and current.task is not None:
                await asyncio.wait({current.task})  # after what is being said
                continue
            text, tts = self._queue.popleft()
            reply = self.replies.start_line(text, tts=tts)
            if reply.task is not None:
                await asyncio.wait({reply.task})
