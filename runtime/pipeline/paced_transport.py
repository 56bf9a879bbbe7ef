"""The pipeline's way back through a carrier that takes one 20 ms frame at a time (Twilio's
WebSocket, LiveKit's audio source): one transport, parameterised by the carrier's frame.

``send_audio`` encodes the reply's PCM16 (``encode``: mu-law for Twilio, nothing for LiveKit),
cuts it into ``frame_bytes`` frames (the last padded with ``silence``: under 20 ms between
sentences) and queues them on the call's ``Pacer`` with the reply's generation; the loop's shared
ticker hands each one to the carrier's ``send`` on the 20 ms grid. The carrier reports every frame
it really sent (``sent``), so ``sent_ms`` is what the caller has been played, and does its own part
of a barge-in (``on_clear``: Twilio's ``clear`` message, LiveKit's ``clear_queue``).

A carrier that buffers what it was sent and says when it has played it (Twilio echoes a ``mark``
once the audio queued before it has played) is built with ``confirm_s``: ``played_out`` then
sends a mark after the reply and waits for the echo (``confirmed``), at most ``confirm_s``, so a
goodbye is not cut by the hang-up that follows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from runtime.audio import FRAME_MS
from runtime.pipeline.pacer import Frame, Pacer

# (audio frames dropped here, whether audio was sent since the last clear): the carrier's part
OnClear = Callable[[int, bool], Awaitable[None]]


class PacedTransport:
    """runtime.pipeline.transport.Transport over a Pacer; see the module docstring."""

    __slots__ = ("rate", "pacer", "sent_frames", "sent_since_clear", "_frame_bytes", "_encode", "_silence",
                 "_on_clear", "_held", "_confirm_s", "_awaiting")

    def __init__(self, rate: int, frame_bytes: int, send: Callable[[Frame], Awaitable[None]], *,
                 on_clear: OnClear, encode: Callable[[bytes], bytes] | None = None, silence: bytes = b"\x00",
                 held: Callable[[], int] | None = None, confirm_s: float | None = None) -> None:
        self.rate = rate
        self.pacer = Pacer(send)
        self.sent_frames: dict[int, int] = {}  # generation -> audio frames the carrier sent
        self.sent_since_clear = False  # the carrier may still be playing audio we sent
        self._frame_bytes, self._encode, self._silence = frame_bytes, encode, silence
        self._on_clear = on_clear
        self._held = held  # frames the carrier took from the pacer but has not sent yet
        self._confirm_s = confirm_s  # None: the carrier does not confirm playback
        self._awaiting: dict[str, asyncio.Future[None]] = {}  # mark name -> its echo

    # The pipeline's side

    def send_audio(self, pcm: bytes, generation: int) -> None:
        pacer = self.pacer
        if pacer.closed or generation < pacer.generation:
            return  # a stale reply: never queued
        if generation > pacer.generation:
            pacer.generation = generation  # older frames still queued are dropped at the next tick
        wire = self._encode(pcm) if self._encode is not None else pcm
        size = self._frame_bytes
        tail = len(wire) % size
        if tail:
            wire += self._silence * (size - tail)
        push = pacer.push
        for i in range(0, len(wire), size):
            push(wire[i:i + size], generation)

    def sent_ms(self, generation: int) -> int:
        return self.sent_frames.get(generation, 0) * FRAME_MS

    def queued_ms(self) -> int:
        held = self._held() if self._held is not None else 0
        return (self.pacer.queued + held) * FRAME_MS

    async def played_out(self, generation: int) -> bool:
        """Called once everything queued has been sent: until the carrier has played it (a mark
        echoed), at most ``confirm_s``. True at once for carriers that do not confirm; False when
        no echo came in time."""
        if self._confirm_s is None or self.pacer.closed:
            return True
        name = f"played-{generation}"
        echo = self._awaiting[name] = asyncio.get_running_loop().create_future()
        self.pacer.push_mark(name, generation)
        try:
            await asyncio.wait_for(asyncio.shield(echo), self._confirm_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._awaiting.pop(name, None)

    async def clear(self) -> None:
        """Drop everything queued here and, through ``on_clear``, at the carrier."""
        self._release_awaiting()  # cut audio is not waited for
        dropped = self.pacer.clear()
        sent, self.sent_since_clear = self.sent_since_clear, False
        await self._on_clear(dropped, sent)

    def drop_stale(self, generation: int) -> None:
        pacer = self.pacer
        if generation > pacer.generation:
            pacer.generation = generation
        pacer.drop_stale(generation)

    # The carrier's side

    def sent(self, generation: int) -> None:
        """The carrier sent one audio frame of ``generation``."""
        self.sent_frames[generation] = self.sent_frames.get(generation, 0) + 1
        self.sent_since_clear = True

    def confirmed(self, mark: str) -> None:
        """The carrier echoed ``mark``: the audio before it has been played."""
        echo = self._awaiting.get(mark)
        if echo is not None and not echo.done():
            echo.set_result(None)

    def _release_awaiting(self) -> None:
        for echo in self._awaiting.values():
            if not echo.done():
                echo.set_result(None)

    def start(self) -> None:
        self.pacer.start()

    async def close(self) -> None:
        self._release_awaiting()
        await self.pacer.close()

    @property
    def closed(self) -> bool:
        return self.pacer.closed
