"""The caller's key presses (DTMF).

A digit mapped in the version's ``dtmf_tools`` calls its tool at once; other digits reach the
model as user text ``[DTMF 5]``, those pressed in quick succession (less than ``dtmf_gap_s``
apart) together, ``#`` ending the run at once. A key press is deliberate: it interrupts the
agent. ``dtmf.received`` is the bridge's to emit (``Conversation.feed_dtmf``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from runtime.ids import new_id
from runtime.pipeline.clock import Clock
from runtime.pipeline.history import History
from runtime.pipeline.replies import Replies
from runtime.pipeline.responder import Responder
from runtime.pipeline.settings import ConversationSettings
from runtime.providers.base import ToolCall


class Live(Protocol):
    """What the keypad reads of the conversation (runtime.pipeline.conversation)."""

    live: bool


class Keypad:
    """One call's digits being collected, and what a key press starts."""

    def __init__(self, conversation: Live, *, settings: ConversationSettings, clock: Clock, history: History,
                 replies: Replies, responder: Responder,
                 spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]]) -> None:
        self.conversation, self.settings, self.clock, self.history = conversation, settings, clock, history
        self.replies, self.responder, self.spawn = replies, responder, spawn
        self.digits: list[str] = []  # pressed, not yet given to the model
        self._gap: asyncio.Task[None] | None = None  # delivers the digits after a pause

    @property
    def collecting(self) -> bool:
        return bool(self.digits)

    def press(self, digit: str) -> None:
        if self.settings.external_brain:
            return  # the integrator hears the dtmf.received event and decides
        tool = self.settings.dtmf_tools.get(digit)
        if tool and not self.digits:
            self.replies.barge_in()  # a key press is deliberate: it interrupts
            self.history.add_user(f"[DTMF {digit}]")
            call = ToolCall(new_id("dtmf"), tool, {})
            self.replies.start("dtmf", partial(self.responder.respond, calls=[call]))
            return
        self.digits.append(digit)
        if self._gap is not None:
            self._gap.cancel()
            self._gap = None
        if digit == "#":
            self._deliver()
        else:
            self._gap = self.spawn(self._after_gap())

    async def _after_gap(self) -> None:
        await self.clock.sleep(self.settings.dtmf_gap_s)
        self._gap = None
        self._deliver()

    def _deliver(self) -> None:
        digits, self.digits = "".join(self.digits), []
        if not digits or not self.conversation.live:
            return
        self.replies.barge_in()  # a key press is deliberate: it interrupts
        self.history.add_user(f"[DTMF {digits}]")
        self.replies.start("dtmf", self.responder.respond)
