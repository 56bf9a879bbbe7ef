"""One call's media leg: the lifecycle every bridge shares, between its carrier and the call's
conversation.

A bridge is a wire codec and a carrier: it decodes what the carrier delivers into PCM16 at the
leg's rate, hands it to ``audio`` (the hot path: counters, the call's recording taps, the
conversation), and gives the leg the way back (a ``Transport``). The leg does the rest, the same
for every bridge:

- ``open``: build the conversation (``pipeline_unavailable`` when it cannot be);
- ``connect``: the call is connected, the way back starts, the conversation starts (greeting),
  then the session's ``on_connected`` hooks run;
- ``finish``: the media side ended the call: stop sending, close the conversation first (its
  transcripts and events are written before the call's final event), then end or fail the
  session with the reason (``transferred`` when a transfer was under way); the first reason wins;
- whoever ends the call (the caller, the agent, the watchdog, the carrier's status callback), its
  media counters are read into ``summary.media`` and the bridge's ``release`` tears the carrier
  down once (the session's ``on_end``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from runtime.calls.session import Steerable

if TYPE_CHECKING:
    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.calls")


class Conversation(Steerable, Protocol):
    """What the leg needs of the pipeline's conversation (runtime.pipeline.conversation); live
    call control reaches the rest of it (``Steerable``) through the session."""

    def feed_audio(self, pcm: bytes, rate: int) -> None: ...
    def feed_dtmf(self, digit: str, *, emit_event: bool = False) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class WayBack(Protocol):
    """The leg's view of the bridge's transport (runtime.pipeline.transport.Transport and its
    carrier side): started when the call connects, closed when the media side finishes."""

    def start(self) -> None: ...
    async def close(self) -> None: ...


OpenConversation = Callable[["CallSession", Any], Awaitable[Conversation]]


class LegFailed(Exception):
    """The leg could not be set up; ``reason`` is the call's failure reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(slots=True)
class LegCounters:
    inbound_frames: int = 0
    inbound_bytes: int = 0  # PCM16 at the leg's rate
    dtmf: int = 0


class MediaLeg:
    __slots__ = ("session", "rate", "way_back", "conversation", "counters", "_open_conversation",
                 "_carrier_counts", "_release", "_finishing", "_released")

    def __init__(self, session: CallSession, rate: int, way_back: WayBack, open_conversation: OpenConversation, *,
                 carrier_counts: Callable[[], dict[str, Any]] | None = None,
                 release: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.session, self.rate, self.way_back = session, rate, way_back
        self.conversation: Conversation | None = None
        self.counters = LegCounters()
        self._open_conversation = open_conversation
        self._carrier_counts = carrier_counts
        self._release = release
        self._finishing = False
        self._released = False
        session.media_counts = self.media_counts
        session.on_end.append(self._on_session_end)

    # Setup

    async def open(self) -> Conversation:
        """Build the call's conversation (not started)."""
        try:
            self.conversation = await self._open_conversation(self.session, self.way_back)
        except Exception as exc:
            log.exception("the call's conversation could not be set up", extra={"call_id": self.session.id})
            raise LegFailed("pipeline_unavailable", "the agent could not be started") from exc
        self.session.conversation = self.conversation  # live control reaches it there
        return self.conversation

    async def connect(self) -> None:
        """The media is up: connect the call, start the way back and the conversation."""
        conversation = self.conversation
        if conversation is None:
            conversation = await self.open()
        await self.session.connect()
        self.way_back.start()
        await conversation.start()
        for hook in list(self.session.on_connected):  # e.g. an outbound call's answering-machine handling
            try:
                result = hook(self.session)
                if result is not None:
                    await result
            except Exception:
                log.exception("call connected hook failed", extra={"call_id": self.session.id})

    # Media (the hot path: no awaits, no objects per frame)

    def audio(self, pcm: bytes) -> None:
        """One frame of the caller's audio, PCM16 mono at the leg's rate."""
        counters = self.counters
        counters.inbound_frames += 1
        counters.inbound_bytes += len(pcm)
        session = self.session
        if session.audio_sinks:
            session.tap_inbound(pcm, self.rate)
        conversation = self.conversation
        if conversation is not None:
            conversation.feed_audio(pcm, self.rate)

    def sent(self, pcm: bytes) -> None:
        """One frame of the agent's audio went out (the recording's outbound tap)."""
        session = self.session
        if session.audio_sinks:
            session.tap_outbound(pcm, self.rate)

    def dtmf(self, digit: str) -> None:
        """A key press (``dtmf.received``, then the conversation's DTMF handling)."""
        self.counters.dtmf += 1
        if self.conversation is not None:
            self.conversation.feed_dtmf(digit, emit_event=True)

    # The end

    async def finish(self, kind: str, reason: str, message: str | None = None, hangup_by: str | None = None) -> None:
        """The media side ended the call (``kind`` "end" or "fail"); see the module docstring."""
        session = self.session
        if self._finishing:
            return
        self._finishing = True
        if session.live:
            await self.way_back.close()  # nothing more is sent, so the counts are final
            await self.close_conversation()
            if kind == "fail":
                await session.fail(reason, message)
            elif session.state == "transferring":
                await session.end("transferred")
            else:
                await session.end(reason, hangup_by=hangup_by)
        await self.release(reason)  # normally done already by the session's on_end

    async def close_conversation(self) -> None:
        conversation, self.conversation = self.conversation, None
        if conversation is not None:
            await conversation.close()

    async def release(self, reason: str | None = None) -> None:
        """Tear the leg down once: the way back, the conversation, then the carrier."""
        if self._released:
            return
        self._released = True
        await self.way_back.close()
        await self.close_conversation()
        if self._release is not None:
            await self._release(reason or self.session.state)

    async def _on_session_end(self, session: CallSession) -> None:
        # Ended elsewhere too (status callback, the agent's hang-up, the watchdog): the archive is
        # written, the counters were read; release the carrier.
        await self.release(session.state)

    def media_counts(self) -> dict[str, Any]:
        """The leg's counters and the carrier's (the call's ``summary.media``, read when it ends)."""
        c = self.counters
        counts: dict[str, Any] = {"inbound_frames": c.inbound_frames, "inbound_bytes": c.inbound_bytes,
                                  "dtmf": c.dtmf}
        if self._carrier_counts is not None:
            counts.update(self._carrier_counts())
        return counts
