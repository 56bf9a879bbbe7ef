"""Turn taking: when the caller has finished speaking, and whether they are interrupting.

``TurnDetector`` is fed one VAD decision per inbound frame and the STT finals; it owns the
inbound audio timeline (milliseconds of audio received) and answers with ``Signal`` flags.
It does no I/O: the conversation acts on the signals.

Endpointing, with ``endpoint_ms`` the version's ``turn.endpointing_silence_ms`` (default 500):

- speech counts once a run of speech frames lasts ``confirm_ms`` (a click is not a caller);
- after ``endpoint_ms / 2`` of silence the STT is flushed (speculative decoding) and the final
  it returns decides: text that looks complete (``.``/``?``/``!`` at the end, nothing dangling)
  ends the turn the moment it arrives; neutral text (no punctuation) ends it at ``endpoint_ms``;
  text that looks unfinished ("... and", "my number is 555 12", "john dot", a trailing comma)
  waits for ``incomplete_ms`` (3 x endpoint, at least 1.5 s);
- a flush that yields no final within ``final_timeout_ms`` more ends the turn with what there is;
  an empty final ends it at once when the speech was shorter than ``heard_speech_ms`` (a click, a
  breath), and at ``endpoint_ms`` otherwise (speech not understood, or a caller hesitating who may
  go on: the turn is answered with the not-understood line only when they do not);
- speech resuming before the end continues the same turn; its segments' finals are joined, and
  so are their pieces (an engine that decodes in segments gives several per final, each with its
  confidence; another gives one per final): the turn's ``segments``.

Barge-in is the conversation's call (it knows whether the agent is speaking); the detector
exposes the turn's speech so far (``speech_ms``) and the latest interim text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, IntFlag

from runtime.control.schemas import ENDPOINTING_SILENCE_MS, MIN_INTERRUPTION_MS
from runtime.providers.base import TranscriptSegment

IDLE, SPEAKING, PAUSED = 0, 1, 2


class Signal(IntFlag):
    NONE = 0
    STARTED = 1  # a new turn: the caller started speaking
    RESUMED = 2  # speech again within the open turn
    PAUSED = 4  # speech stopped (silence counting from here)
    FLUSH = 8  # ask the STT for the final of the audio so far
    END = 16  # the turn is over: ``take()`` it


class Completeness(Enum):
    COMPLETE = "complete"
    NEUTRAL = "neutral"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    endpoint_ms: int = ENDPOINTING_SILENCE_MS
    min_interruption_ms: int = MIN_INTERRUPTION_MS
    confirm_ms: int = 60
    incomplete_min_ms: int = 1500
    final_timeout_ms: int = 1500
    # A streaming engine's interim that is only a backchannel holds a barge-in up to this long.
    backchannel_max_ms: int = 1000
    # A turn with this much speech and no accepted words was a caller not understood (less: a
    # cough or a click that the VAD let through, left unanswered).
    heard_speech_ms: int = 250

    @property
    def flush_ms(self) -> int:
        return max(self.confirm_ms, self.endpoint_ms // 2)

    @property
    def incomplete_ms(self) -> int:
        return max(self.incomplete_min_ms, 3 * self.endpoint_ms)


@dataclass(frozen=True, slots=True)
class Turn:
    text: str
    start_ms: int  # inbound audio timeline
    end_ms: int  # end of the last speech frame
    speech_ms: int
    segments: tuple[TranscriptSegment, ...] = ()  # the pieces of ``text``, in order, with their confidence


@dataclass(slots=True)
class TurnDetector:
    policy: TurnPolicy = field(default_factory=TurnPolicy)
    audio_ms: int = 0  # inbound audio received so far
    state: int = IDLE
    start_ms: int = 0
    end_ms: int = 0
    speech_ms: int = 0  # confirmed speech in this turn
    silence_ms: int = 0  # current pause
    interim: str = ""  # latest interim text of the open segment
    _run_ms: int = 0  # unconfirmed speech run
    _flushed: bool = False  # this pause has been flushed
    _pending: int = 0  # finals still expected for flushes of this turn
    _segments: list[str] = field(default_factory=list)
    _pieces: list[TranscriptSegment] = field(default_factory=list)
    _verdict: Completeness = Completeness.NEUTRAL

    def frame(self, speech: bool, ms: int) -> Signal:
        """One inbound frame of ``ms`` milliseconds and its VAD decision."""
        self.audio_ms += ms
        state = self.state
        if speech:
            if state == SPEAKING:
                self.speech_ms += ms
                self.end_ms = self.audio_ms
                return Signal.NONE
            self._run_ms += ms
            if self._run_ms < self.policy.confirm_ms:
                return Signal.NONE
            self.end_ms = self.audio_ms
            run, self._run_ms = self._run_ms, 0
            self.speech_ms += run
            self.state = SPEAKING
            if state == IDLE:
                self.start_ms = self.audio_ms - run
                return Signal.STARTED
            self.silence_ms, self._flushed = 0, False
            return Signal.RESUMED
        if state == IDLE:
            self._run_ms = 0
            return Signal.NONE
        # A speech run too short to count is silence (a click, a breath).
        gap, self._run_ms = ms + self._run_ms, 0
        if state == SPEAKING:
            self.state, self.silence_ms = PAUSED, gap
            return Signal.PAUSED | self._check()
        self.silence_ms += gap
        return self._check()

    def final(self, text: str, segments: tuple[TranscriptSegment, ...] = (), confidence: float | None = None) -> Signal:
        """A final transcript of the caller arrived (``segments``: its pieces, if the engine gave them)."""
        if self.state == IDLE:
            return Signal.NONE  # late (the turn ended without it) or stray: nothing to attach it to
        if text.strip():
            self._segments.append(text.strip())
            if segments:
                self._pieces.extend(s for s in segments if s.text.strip())
            else:
                self._pieces.append(TranscriptSegment(text.strip(), confidence))
            self._verdict = completeness(self.text)
        self.interim = ""
        self._pending = max(0, self._pending - 1)
        return self._check() if self.state == PAUSED else Signal.NONE

    def interim_text(self, text: str) -> None:
        self.interim = text.strip()

    @property
    def text(self) -> str:
        return " ".join(self._segments)

    @property
    def awaiting_final(self) -> bool:
        return self._pending > 0

    def take(self) -> Turn:
        """The ended turn; the detector is ready for the next one."""
        turn = Turn(self.text, self.start_ms, self.end_ms, self.speech_ms, tuple(self._pieces))
        self.reset()
        return turn

    def reset(self) -> None:
        self.state, self.speech_ms, self.silence_ms, self._run_ms = IDLE, 0, 0, 0
        self._flushed, self._pending, self.interim = False, 0, ""
        self._segments, self._pieces = [], []
        self._verdict = Completeness.NEUTRAL

    def _check(self) -> Signal:
        policy, silence = self.policy, self.silence_ms
        signal = Signal.NONE
        if not self._flushed:
            if silence < policy.flush_ms:
                return signal
            self._flushed = True
            self._pending += 1
            signal = Signal.FLUSH
        if self._pending:
            if silence >= policy.endpoint_ms + policy.final_timeout_ms:
                return signal | Signal.END
            return signal
        if not self._segments:  # the flush heard nothing
            if self.speech_ms < policy.heard_speech_ms or silence >= policy.endpoint_ms:
                return signal | Signal.END
            return signal
        verdict = self._verdict
        if (verdict is Completeness.COMPLETE
                or (verdict is Completeness.NEUTRAL and silence >= policy.endpoint_ms)
                or silence >= policy.incomplete_ms):
            return signal | Signal.END
        return signal


# End-of-turn heuristics on the text

# Words a finished sentence almost never ends with, whatever the punctuation.
_DANGLING = frozenset("""
and or but because cause if than nor plus whether unless although the a an my your his her our their
to of for with from into onto between during um uh er erm ah dot underscore dash hyphen at
""".split())
# Words that end a finished sentence only when the STT punctuated it ("It's what I asked about.").
# Auxiliaries are not here: "yes I do" and "I can" are whole answers.
_OPEN_ENDED = frozenset("""
so that which who where when while though as like this these those is are was were am i'm i'd i'll i've
we're you're it's that's there's let's want wanna gonna need in on by about over under through after
before without also then since until
""".split())
_DIGIT_WORDS = frozenset("zero oh one two three four five six seven eight nine".split())
_NUMBER_CONTEXT = ("number", "phone", "code", "zip", "account", "card", "digit", "pin")
_TRAILING_OPEN = re.compile(r"(?:[,;:\-–—]|\.\.\.|…)\s*$")
_END_PUNCT = re.compile(r"[.!?]+[\"')\]]*\s*$")
_QUESTION = re.compile(r"\?[\"')\]]*\s*$")
_TOKENS = re.compile(r"[a-z0-9@']+(?:[.\-][a-z0-9@]+)*")
_TLDS = frozenset("com org net edu gov io co uk de fr ca au".split())


def completeness(text: str) -> Completeness:
    """Does the caller's text read like a finished turn?"""
    stripped = text.strip()
    if not stripped:
        return Completeness.NEUTRAL
    if _TRAILING_OPEN.search(stripped):
        return Completeness.INCOMPLETE
    if _QUESTION.search(stripped):
        return Completeness.COMPLETE  # "Where are you calling from?" ends on a preposition, and is done
    lower = stripped.lower()
    tokens = _TOKENS.findall(lower)
    if not tokens:
        return Completeness.NEUTRAL
    punctuated = bool(_END_PUNCT.search(stripped))
    last = tokens[-1]
    if last in _DANGLING or (last in _OPEN_ENDED and not punctuated):
        return Completeness.INCOMPLETE
    digits = _trailing_digits(tokens)
    if 5 <= digits <= 9 or (3 <= digits <= 4 and any(w in lower for w in _NUMBER_CONTEXT)):
        return Completeness.INCOMPLETE  # a number still being given (a phone number has more digits)
    if ("email" in lower or "e-mail" in lower) and " at " in f" {lower} " and last.split(".")[-1] not in _TLDS:
        return Completeness.INCOMPLETE  # an address being spelled out, its domain not finished
    return Completeness.COMPLETE if punctuated else Completeness.NEUTRAL


def _trailing_digits(tokens: list[str]) -> int:
    count = 0
    for token in reversed(tokens):
        token = token.replace("-", "").replace(".", "")
        if token.isdigit():
            count += len(token)
        elif token in _DIGIT_WORDS:
            count += 1
        else:
            break
    return count


BACKCHANNELS = frozenset("""
mhm mhmm mm mmm mm-hmm hmm hm uh-huh uhhuh uh huh yeah yep yup okay ok right sure alright aha ah oh i see got it cool
""".split())


def is_backchannel(text: str) -> bool:
    """Only listening noises ("mhm", "yeah", "okay", "uh-huh", "right"): not a bid for the turn.
    "yes" and "no" are answers, never backchannels."""
    words = re.findall(r"[a-z\-']+", text.lower())
    return bool(words) and all(w in BACKCHANNELS for w in words)
