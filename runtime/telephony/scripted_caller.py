"""A scripted caller over the Twilio protocol: it listens, and says its next line when the agent
has stopped talking, like a person on the phone.

The line is open the whole call: between lines it streams silence in real time (a phone
never stops sending audio), so the runtime's endpointing and barge-in see what they would
see from a real caller. ``voicectl call``, the end-to-end tests and the pipeline benchmark
use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runtime.audio import ULAW_FRAME_BYTES, ULAW_SILENCE, Audio, ulaw_frames
from runtime.telephony.twilio.caller import FRAME_S, CallerStream, CallResult, TwilioCaller

SILENCE_FRAME = ULAW_SILENCE * ULAW_FRAME_BYTES


@dataclass
class Turn:
    """One line of the caller: when it started and ended (monotonic) and the first agent
    audio after it (for voice-to-voice latency as the caller hears it)."""

    text: str
    started: float = 0.0
    ended: float = 0.0
    agent_answered: float | None = None

    @property
    def voice_to_voice_ms(self) -> float | None:
        return None if self.agent_answered is None else (self.agent_answered - self.ended) * 1000


@dataclass
class ScriptedCallResult:
    call: CallResult
    turns: list[Turn] = field(default_factory=list)
    hung_up_by: str = "caller"  # or "agent" when the runtime ended the call first


class OpenLine:
    """Streams frames to the leg on an absolute 20 ms clock: queued speech, else silence (or, with
    ``idle``, those frames over and over: a line's noise)."""

    def __init__(self, leg: CallerStream, idle: Sequence[bytes] = ()) -> None:
        self.leg = leg
        self._idle = list(idle) or [SILENCE_FRAME]
        self._idle_pos = 0
        self._queue: list[bytes] = []
        self._pos = 0
        self.first_frame_sent_at: float | None = None  # of the line being said
        self.speaking_done = asyncio.Event()
        self.speaking_done.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def say(self, frames: Sequence[bytes]) -> None:
        self._queue, self._pos = list(frames), 0
        self.first_frame_sent_at = None
        self.speaking_done.clear()

    async def _run(self) -> None:
        anchor, n = time.monotonic(), 0
        leg = self.leg
        while not leg.closed.is_set():
            delay = anchor + n * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if self._pos < len(self._queue):
                frame = self._queue[self._pos]
                self._pos += 1
                if self._pos == len(self._queue):
                    self.speaking_done.set()
            else:
                frame = self._idle[self._idle_pos]
                self._idle_pos = (self._idle_pos + 1) % len(self._idle)
            try:
                await leg.media(frame)
            except (ConnectionError, RuntimeError):
                return
            if self._pos == 1 and self.first_frame_sent_at is None and self._queue:
                self.first_frame_sent_at = time.monotonic()

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def agent_quiet(leg: CallerStream, quiet_s: float, since: float, timeout_s: float) -> float | None:
    """Wait until the agent has said something after ``since`` and then been quiet for ``quiet_s``;
    returns the arrival time of its first frame after ``since`` (None on timeout or hang-up)."""
    result = leg.result
    deadline = time.monotonic() + timeout_s
    first: float | None = None
    while not leg.closed.is_set() and time.monotonic() < deadline:
        arrivals = result.arrivals
        if first is None and arrivals and arrivals[-1] > since:
            first = next(t for t in arrivals if t > since)  # arrivals are in order
        if first is not None and time.monotonic() - arrivals[-1] >= quiet_s:
            return first
        await asyncio.sleep(0.02)
    return first


async def hang_up(caller: TwilioCaller, call_sid: str, leg: CallerStream) -> str | None:
    """The caller hangs up, unless the agent already ended the call; returns ``"agent"`` then.
    Waits for the stream to close."""
    ended_by = "agent" if leg.closed.is_set() else None
    if ended_by is None:
        await leg.stop(caller.account_sid, call_sid)
    await leg.wait_closed(10.0)
    return ended_by


async def release(leg: CallerStream, line: OpenLine) -> None:
    """The caller's line and stream closed, whatever happened to the call."""
    await line.close()
    if not leg.closed.is_set():
        await leg.close()


async def scripted_call(caller: TwilioCaller, to: str, lines: Sequence[tuple[str, Audio]], *,
                        from_: str = "+15550001111", quiet_s: float = 0.9, answer_timeout_s: float = 20.0,
                        on_dial: Callable[[str], None] | None = None,
                        on_turn: Callable[[Turn], None] | None = None) -> ScriptedCallResult:
    """Dial ``to``, wait for the greeting, say each line after the agent stops talking, wait for
    the last answer, hang up (unless the agent has already ended the call)."""
    call_sid, answer = await caller.dial(to, from_)
    if on_dial is not None:
        on_dial(call_sid)
    if answer.rejected:
        return ScriptedCallResult(CallResult(call_sid, answer), hung_up_by="agent")
    leg = await caller.open_stream(call_sid, answer)
    line = OpenLine(leg)
    out = ScriptedCallResult(leg.result)
    try:
        await agent_quiet(leg, quiet_s, 0.0, answer_timeout_s)  # the greeting
        for text, audio in lines:
            if leg.closed.is_set():
                break
            turn = Turn(text, started=time.monotonic())
            line.say(ulaw_frames(audio))
            await line.speaking_done.wait()
            turn.ended = time.monotonic()
            turn.agent_answered = await agent_quiet(leg, quiet_s, turn.ended, answer_timeout_s)
            out.turns.append(turn)
            if on_turn is not None:
                on_turn(turn)
        out.hung_up_by = await hang_up(caller, call_sid, leg) or out.hung_up_by
    finally:
        await release(leg, line)
    return out
