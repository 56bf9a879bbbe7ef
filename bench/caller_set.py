"""A harder caller set: booking-desk lines said by espeak-ng voices over a telephone line.

48 lines a booking desk hears (bookings with party sizes, times and dates, hours, transfers,
confirmations and corrections, cancellations, goodbyes, names, orders), each said by two of six
espeak-ng voices (male and female variants, klatt, British, Scottish, Caribbean, rates 140-175
words a minute): 96 utterances. None is the agent's piper voice (no other piper voice is packaged
on PyPI). Each goes the telephone way: band-limited to 300-3400 Hz, down to 8 kHz, line noise at
the wanted SNR (over the speech's active frames), G.711 mu-law and back, up to 16 kHz for the
recogniser. Everything is deterministic (espeak-ng is; the noise has a fixed seed per utterance),
so the set is regenerated, not stored.

Halves by line (lines 0-1, 4-5, ... tune; 2-3, 6-7, ... test), so figures on the test half are on sentences
no tuning saw. Each line carries what the demo's rules brain should do with it: its intent on a
first turn, the booking tool's party size and time, a slot, or a yes/no answer.
"""

from __future__ import annotations

import re
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any, Literal

import numpy as np

from runtime.audio import pcm16_to_ulaw, resample, ulaw_to_pcm16

ESPEAK_RATE = 22_050
LINE_RATE = 8_000
STT_RATE = 16_000
Half = Literal["tune", "test", "all"]


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice+variant
    rate: int  # words a minute
    pitch: int = 50


VOICES = (
    Voice("en-us", 165),
    Voice("en-us+f3", 150, 60),
    Voice("en-gb-x-rp+klatt", 160),
    Voice("en-029+m3", 145, 45),
    Voice("en-gb-scotland+f2", 155),
    Voice("en-us+klatt4", 170),
)


@dataclass(frozen=True)
class Line:
    text: str
    kind: str
    intent: str | None = None  # the demo brain's intent on a first turn
    booking: tuple[int, str] | None = None  # check_availability's (party_size, time) on a first turn
    slots: dict[str, Any] = field(default_factory=dict)  # slots the line says on its own
    answer: Literal["yes", "no"] | None = None  # as the reply to a yes/no question


LINES = (
    Line("I'd like to book a table for two at seven tonight.", "booking", "book", (2, "19:00")),
    Line("What time do you open on Sunday?", "hours", "hours"),
    Line("Can I reserve a table for four people at eight thirty?", "booking", "book", (4, "20:30")),
    Line("Can I speak to a real person please?", "transfer", "transfer"),
    Line("Hi, I want to make a reservation for six at seven fifteen tomorrow.", "booking", "book", (6, "19:15")),
    Line("Yes please, that's perfect.", "confirmation", answer="yes"),
    Line("Do you have a table for three at nine on Friday?", "booking", "book", (3, "21:00")),
    Line("Actually, make it six people instead.", "correction", slots={"party_size": 6}),
    Line("We'd like to book for five people at six o'clock.", "booking", "book", (5, "18:00")),
    Line("I need to cancel my reservation for Friday.", "cancellation"),
    Line("Could I book a table for eight at seven thirty on Saturday?", "booking", "book", (8, "19:30")),
    Line("No thanks, goodbye.", "goodbye", "goodbye"),
    Line("I need a reservation for four tomorrow at six thirty.", "booking", "book", (4, "18:30")),
    Line("My name is Sarah Johnson.", "name", slots={"name": "Sarah Johnson"}),
    Line("Book me a table for one at eight pm.", "booking", "book", (1, "20:00")),
    Line("Are you open on Monday evening?", "hours", "hours"),
    Line("Is there a table free for seven people at nine fifteen?", "booking", "book", (7, "21:15")),
    Line("I'd like to talk to the manager.", "transfer", "transfer"),
    Line("My wife and I would like a table for two at eight.", "booking", "book", (2, "20:00")),
    Line("No, that doesn't work for me.", "confirmation", answer="no"),
    Line("Can we book a table for ten at seven on Sunday?", "booking", "book", (10, "19:00")),
    Line("Change the time to nine o'clock please.", "correction", slots={"time": "21:00"}),
    Line("Table for six at six, please.", "booking", "book", (6, "18:00")),
    Line("Please cancel my booking, something came up.", "cancellation"),
    Line("We are four, can I book at seven forty five?", "booking", "book", (4, "19:45")),
    Line("That's all, thank you very much.", "goodbye", "goodbye"),
    Line("Hello, I'm calling to book a table for five at eight thirty tonight.", "booking", "book", (5, "20:30")),
    Line("This is Maria Lopez speaking.", "name", slots={"name": "Maria Lopez"}),
    Line("I want a table for two on Friday at seven thirty.", "booking", "book", (2, "19:30")),
    Line("What are your opening hours?", "hours", "hours"),
    Line("Could we get a table for three people at eight o'clock?", "booking", "book", (3, "20:00")),
    Line("Put me through to a member of staff.", "transfer", "transfer"),
    Line("I'd like a reservation for nine people at seven.", "booking", "book", (9, "19:00")),
    Line("Sure, go ahead.", "confirmation", answer="yes"),
    Line("Can I book a table for two tomorrow at nine?", "booking", "book", (2, "21:00")),
    Line("Sorry, can we make it at eight thirty instead?", "correction", slots={"time": "20:30"}),
    Line("A table for four at six forty five, please.", "booking", "book", (4, "18:45")),
    Line("Can I cancel the table I booked for tonight?", "cancellation"),
    Line("I want to reserve a table for six people at eight.", "booking", "book", (6, "20:00")),
    Line("Okay, bye bye.", "goodbye", "goodbye"),
    Line("I'd like to order two margheritas and a tiramisu for pickup.", "order", "order"),
    Line("The name is David Miller.", "name", slots={"name": "David Miller"}),
    Line("How late are you open tonight?", "hours", "hours"),
    Line("Could I speak with someone at the front desk?", "transfer", "transfer"),
    Line("Can I get a diavola and a lemonade to take away?", "order", "order"),
    Line("Yes, book it.", "confirmation", answer="yes"),
    Line("Hello, good evening.", "greeting", "greeting"),
    Line("Nothing else, have a good night.", "goodbye", "goodbye"),
)


@dataclass(frozen=True)
class Utterance:
    line: Line
    voice: Voice
    index: int  # the line's
    pcm: bytes  # 16 kHz PCM16 as the recogniser gets it
    snr_db: float | None  # None: the telephone line without noise


def half_of(index: int) -> Literal["tune", "test"]:
    return "tune" if index // 2 % 2 == 0 else "test"  # pairs of lines: each half gets every kind


def voices_of(index: int) -> tuple[Voice, Voice]:
    return VOICES[index % len(VOICES)], VOICES[(index + 3) % len(VOICES)]


def utterances(half: Half = "test", snr_db: float | None = None) -> Iterator[Utterance]:
    """The half's utterances (two voices a line) over the line at ``snr_db`` (None: no noise)."""
    for index, line in enumerate(LINES):
        if half != "all" and half_of(index) != half:
            continue
        for voice in voices_of(index):
            seed = zlib.crc32(f"{index}/{voice.name}/{snr_db}".encode())
            yield Utterance(line, voice, index, telephone(speak(line.text, voice), snr_db, seed), snr_db)


@cache
def speak(text: str, voice: Voice) -> bytes:
    """espeak-ng's PCM16 at 22.05 kHz."""
    out = subprocess.run(["espeak-ng", "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch),
                          "--stdout", text], capture_output=True, check=True).stdout
    start = out.index(b"data") + 8  # after the WAV header
    return out[start:]


def telephone(pcm: bytes, snr_db: float | None, seed: int) -> bytes:
    """22.05 kHz speech -> 300-3400 Hz -> 8 kHz (+ line noise) -> mu-law and back -> 16 kHz."""
    line, _ = on_the_line(pcm, snr_db, seed)
    return resample(ulaw_to_pcm16(line), LINE_RATE, STT_RATE)


def on_the_line(pcm: bytes, snr_db: float | None, seed: int, idle_s: float = 0.0) -> tuple[bytes, bytes]:
    """22.05 kHz speech as the caller's phone sends it (300-3400 Hz, 8 kHz, line noise, mu-law),
    and ``idle_s`` of that line with no one speaking (its noise at the same level; silence on a
    clean line)."""
    narrow = np.frombuffer(resample(band_limit(pcm, ESPEAK_RATE), ESPEAK_RATE, LINE_RATE), dtype="<i2")
    signal = narrow.astype(np.float64)
    idle = np.zeros(int(idle_s * LINE_RATE))
    if snr_db is not None:
        power = speech_power(signal) / 10 ** (snr_db / 10)
        signal = signal + line_noise(len(signal), power, seed)
        if len(idle):
            idle = line_noise(len(idle), power, seed + 1)
    return _ulaw(signal), _ulaw(idle)


def _ulaw(x: np.ndarray) -> bytes:
    return pcm16_to_ulaw(np.clip(x, -32768, 32767).astype("<i2").tobytes())


def band_limit(pcm: bytes, rate: int) -> bytes:
    """The telephone band: flat from 300 to 3400 Hz with raised-cosine skirts (200-300 and 3400-3700
    Hz), as a channel filter rolls off (a brick wall would ring through the whole clip)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    gain = np.interp(freqs, [0, 200, 300, 3400, 3700, rate], [0, 0, 1, 1, 0, 0])
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)  # smooth the linear ramps
    return np.clip(np.fft.irfft(np.fft.rfft(x) * gain, len(x)), -32768, 32767).astype("<i2").tobytes()


def speech_power(x: np.ndarray, frame: int = 160) -> float:
    """Mean power of the frames within 35 dB of the loud ones (the speech, not its pauses)."""
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    energy = (frames ** 2).mean(axis=1)
    active = energy > np.percentile(energy, 95) * 10 ** (-35 / 10)
    return float(energy[active].mean())


def line_noise(n: int, power: float, seed: int) -> np.ndarray:
    """Hiss in the telephone band with a little 60 Hz hum, at ``power``."""
    rng = np.random.default_rng(seed)
    hiss = rng.standard_normal(n)
    spectrum = np.fft.rfft(hiss)
    freqs = np.fft.rfftfreq(n, 1 / LINE_RATE)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    hiss = np.fft.irfft(spectrum, n)
    hum = np.sin(2 * np.pi * 60 * np.arange(n) / LINE_RATE) * 0.3
    noise = hiss / np.sqrt((hiss ** 2).mean()) + hum
    return noise * np.sqrt(power / float((noise ** 2).mean()))


# Scoring

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50}
_NUMBER = {w: i for i, w in enumerate(_UNITS)} | _TENS


def words(text: str) -> list[str]:
    """Lower-case words for WER, numbers as digits ("seven thirty" and "7:30" both 7 30; "forty
    five" 45), "p.m." as pm."""
    text = text.lower().replace("p.m.", "pm").replace("a.m.", "am").replace("-", " ")
    raw = re.findall(r"[a-z']+|\d+", text)
    out: list[str] = []
    for word in raw:
        value = _NUMBER.get(word)
        if value is not None and out and out[-1].isdigit() and int(out[-1]) in _TENS.values() and value < 10:
            out[-1] = str(int(out[-1]) + value)
        else:
            out.append(str(value) if value is not None else word.strip("'"))
    return [w for w in out if w]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


@dataclass(frozen=True)
class Understood:
    """What the demo's rules brain did with a heard line, against what the line expects."""

    booked: bool | None  # a booking line: check_availability with the right party size and time
    right: bool  # every expectation of the line met


class DemoBrain:
    """The demo's rules script, asked about one line at a time (a first turn, or an answer)."""

    TODAY = date(2026, 6, 3)

    def __init__(self) -> None:
        from runtime.control.schemas import RulesConfig
        from runtime.providers.llm.rules import DEMO_BOOKING_RULES, Script

        self.script = Script(RulesConfig.model_validate(DEMO_BOOKING_RULES))
        self.tools = frozenset({"check_availability", "create_booking", "create_order", "transfer_to_human",
                                "end_call"})

    def judge(self, line: Line, heard: str) -> Understood:
        from runtime.providers.base import Message
        from runtime.providers.llm.rules_slots import extract, normalize

        action = self.script.respond([Message("user", heard)], self.tools)
        checks: list[bool] = []
        booked = None
        if line.intent is not None:
            checks.append(action.intent == line.intent)
        if line.booking is not None:
            party, time = line.booking
            booked = (action.tool == "check_availability" and action.arguments.get("party_size") == party
                      and action.arguments.get("time") == time)
            checks.append(booked)
        if line.slots:
            said = extract(self.script.config.slots, heard, self.TODAY, None)
            checks.append(all(said.get(k) == v for k, v in line.slots.items()))
        if line.answer is not None:
            checks.append(self.script._yes_or_no(normalize(heard)) == line.answer)
        return Understood(booked, all(checks))
