"""The synthetic caller of an evaluation: one scenario's turns over the Twilio protocol.

It behaves as ``voicectl call``'s scripted caller does (runtime.telephony.scripted_caller): the line
is open the whole call, each line is said once the agent has been quiet for ``quiet_ms``, and the
caller hears what the runtime sends in real time. On top of that a turn may press keys, stay silent,
or speak over the agent (``barge_in_after_ms`` after it starts talking), and the caller measures,
per turn, the agent's first audio after its last word and any agent audio heard while it spoke.

Caller speech is made here with the offline TTS: piper (the packaged voice, ``speed`` through its
length scale) or espeak-ng with a named voice; a WAV line is played as recorded. Line noise is
white noise at ``noise_db`` dBFS mixed under everything the caller sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.audio import TELEPHONY_RATE, Audio, parse_wav, pcm16_to_ulaw, ulaw_frames
from runtime.evals.suite import Scenario, Turn
from runtime.ids import now_iso
from runtime.providers.base import RetryPolicy
from runtime.telephony.scripted_caller import OpenLine, agent_quiet, hang_up, release
from runtime.telephony.twilio.caller import FRAME_S, CallerStream, TwilioCaller, new_sid, parse_twiml
from runtime.telephony.twilio.twiml import REJECT_BUSY

# The first stretch of a barge-in that the agent may still be heard in (it stops once it has heard
# min_interruption_ms of the caller; the rest is the way there and back).
BARGE_IN_GRACE_MS = 1000
DTMF_GAP_S = 0.15
ANSWER_TIMEOUT_S = 20.0
NOISE_SECONDS = 2.0
# Caller speech is made before any call is placed: no hurry (loading the piper voice takes seconds).
CALLER_POLICY = RetryPolicy(retries=1, first_byte_timeout_s=60.0)


class Voices:
    """Caller speech made once per (text, voice, speed) for a whole run."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, float], Audio] = {}
        self._engines: dict[tuple[str, float], Any] = {}

    def _engine(self, voice: str, speed: float) -> Any:
        key = (voice, speed)
        engine = self._engines.get(key)
        if engine is None:
            if voice == "piper":
                from runtime.providers.tts.local import PiperTTS

                engine = PiperTTS(CALLER_POLICY, length_scale=None if speed == 1.0 else 1.0 / speed)
            else:
                from runtime.providers.tts.local import EspeakTTS

                name = voice.partition(":")[2] or "en-us"
                engine = EspeakTTS(CALLER_POLICY, voice=name, words_per_minute=int(165 * speed))
            self._engines[key] = engine
        return engine

    async def speak(self, text: str, voice: str, speed: float) -> Audio:
        key = (text, voice, speed)
        audio = self._cache.get(key)
        if audio is None:
            pcm, rate = bytearray(), 22050
            async for chunk in self._engine(voice, speed).synthesize(text):
                pcm += chunk.pcm
                rate = chunk.rate
            audio = self._cache[key] = Audio(bytes(pcm), rate)
        return audio

    async def aclose(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.aclose()


def _noise(samples: int, db: float, seed: int) -> bytes:
    import numpy as np

    amplitude = 32767 * 10 ** (db / 20)
    return np.random.default_rng(seed).uniform(-amplitude, amplitude, samples).astype("<i2").tobytes()


def with_noise(audio: Audio, db: float | None) -> Audio:
    if db is None or not audio.pcm:
        return audio
    import numpy as np

    speech = np.frombuffer(audio.pcm, dtype="<i2").astype(np.int32)
    noise = np.frombuffer(_noise(len(speech), db, len(speech)), dtype="<i2")
    return Audio(np.clip(speech + noise, -32768, 32767).astype("<i2").tobytes(), audio.rate)


def idle_frames(db: float | None) -> list[bytes]:
    """What the line carries while the caller is silent: nothing, or its noise."""
    if db is None:
        return []
    ulaw = pcm16_to_ulaw(_noise(int(TELEPHONY_RATE * NOISE_SECONDS), db, 7))
    return [ulaw[i:i + 160] for i in range(0, len(ulaw), 160)]


@dataclass(frozen=True)
class Line:
    """A turn made ready to play: its frames (speech), keys or silence."""

    turn: Turn
    frames: tuple[bytes, ...] = ()


async def prepare(scenario: Scenario, voices: Voices, assets: Mapping[str, bytes]) -> list[Line]:
    """Each turn's audio, made before the call is placed (no TTS while the agent waits)."""
    lines = []
    for turn in scenario.turns:
        audio: Audio | None = None
        if turn.action == "say":
            audio = await voices.speak(turn.text or "", turn.voice, turn.speed)
        elif turn.action == "wav":
            raw = assets.get(turn.text or "")
            if raw is None:
                raise ValueError(f"{turn.text}: the WAV file was not given with the suite")
            audio = parse_wav(raw, turn.text or "")
        if audio is not None:
            lines.append(Line(turn, tuple(ulaw_frames(with_noise(audio, scenario.caller.noise_db)))))
        else:
            lines.append(Line(turn))
    return lines


@dataclass
class TurnRecord:
    started_at: str  # wall clock (the store's timestamps attribute the agent's words to turns by it)
    first_audio_ms: float | None = None
    talk_over_ms: float = 0.0
    speech: bool = True


@dataclass
class ScriptResult:
    call_sid: str
    rejected: str | None = None  # busy, or the TwiML of another refusal
    turns: list[TurnRecord] = field(default_factory=list)
    hung_up_by: str = "caller"
    timed_out: bool = False


def _heard_between(leg: CallerStream, start: float, end: float) -> float:
    """Milliseconds of agent audio that arrived between two monotonic times."""
    return sum(1 for t in leg.result.arrivals if start <= t <= end) * FRAME_S * 1000


async def _agent_starts(leg: CallerStream, since: float, timeout_s: float) -> float | None:
    """The arrival time of the agent's first audio after ``since`` (None: none in time, or hung up)."""
    deadline = time.monotonic() + timeout_s
    while not leg.closed.is_set() and time.monotonic() < deadline:
        arrivals = leg.result.arrivals
        if arrivals and arrivals[-1] > since:
            return next(t for t in arrivals if t > since)
        await asyncio.sleep(0.01)
    return None


class _Script:
    """One call's turns. A turn waits for the agent to finish what it is saying, unless it barges
    in: then the turn before it waits only for the agent to start answering."""

    def __init__(self, leg: CallerStream, line: OpenLine, lines: list[Line], quiet_s: float) -> None:
        self.leg, self.line, self.lines, self.quiet_s = leg, line, lines, quiet_s
        self.last_end = 0.0  # when the caller last finished (0: the greeting)
        self.records: list[TurnRecord] = []

    def _barges_in(self, index: int) -> bool:
        return index < len(self.lines) and self.lines[index].turn.barge_in_after_ms is not None

    async def _answer(self, after: float, index: int) -> float | None:
        """The agent's first audio after ``after``; unless the next turn barges in, once it has finished."""
        if self._barges_in(index + 1):
            return await _agent_starts(self.leg, after, ANSWER_TIMEOUT_S)
        return await agent_quiet(self.leg, self.quiet_s, after, ANSWER_TIMEOUT_S)

    async def run(self) -> None:
        await self._answer(0.0, -1)  # the greeting
        for index, ready in enumerate(self.lines):
            if self.leg.closed.is_set():
                break
            self.records.append(await self._turn(index, ready))

    async def _turn(self, index: int, ready: Line) -> TurnRecord:
        turn, leg = ready.turn, self.leg
        record = TurnRecord(started_at=now_iso(), speech=turn.action != "silence")
        if turn.action == "silence":
            await asyncio.sleep((turn.silence_ms or 0) / 1000)
            self.last_end = time.monotonic()
            arrivals = leg.result.arrivals
            if not self._barges_in(index + 1) and arrivals and self.last_end - arrivals[-1] < self.quiet_s:
                await agent_quiet(leg, self.quiet_s, arrivals[-1] - 0.001, ANSWER_TIMEOUT_S)  # a re-prompt
            return record
        if turn.action == "dtmf":
            for key in turn.text or "":
                await leg.dtmf(key)
                await asyncio.sleep(DTMF_GAP_S)
        else:
            grace_until = 0.0
            if turn.barge_in_after_ms is not None:
                started = await _agent_starts(leg, self.last_end, ANSWER_TIMEOUT_S)
                if started is not None:
                    await asyncio.sleep(max(0.0, started + turn.barge_in_after_ms / 1000 - time.monotonic()))
                grace_until = time.monotonic() + BARGE_IN_GRACE_MS / 1000
                record.started_at = now_iso()
            self.line.say(ready.frames)
            begun = time.monotonic()
            await self.line.speaking_done.wait()
            record.talk_over_ms = _heard_between(leg, max(begun, grace_until), time.monotonic())
        self.last_end = time.monotonic()
        answered = await self._answer(self.last_end, index)
        record.first_audio_ms = None if answered is None else round((answered - self.last_end) * 1000, 1)
        return record


async def run_script(caller: TwilioCaller, voice_path: str, to: str, lines: list[Line], scenario: Scenario, *,
                     on_dial: Any = None) -> ScriptResult:
    """Dial through ``voice_path`` (the voice webhook with the call's pin), play the turns, hang up
    unless the agent did. ``max_duration_s`` bounds the whole call."""
    call_sid = new_sid("CA")
    status, text = await caller.post_signed(voice_path, caller.voice_params(to, scenario.caller.from_, call_sid))
    if on_dial is not None:
        on_dial(call_sid)
    answer = parse_twiml(status, text)
    out = ScriptResult(call_sid)
    if answer.rejected:
        out.rejected = "busy" if REJECT_BUSY in text else (f"HTTP {status}: {text.strip()[:300]}")
        out.hung_up_by = "agent"
        return out
    leg = await caller.open_stream(call_sid, answer)
    line = OpenLine(leg, idle_frames(scenario.caller.noise_db))
    script = _Script(leg, line, lines, scenario.caller.quiet_ms / 1000)
    try:
        try:
            await asyncio.wait_for(script.run(), scenario.max_duration_s)
        except TimeoutError:
            out.timed_out = True
        out.turns = script.records
        out.hung_up_by = await hang_up(caller, call_sid, leg) or out.hung_up_by
    finally:
        await release(leg, line)
    return out
