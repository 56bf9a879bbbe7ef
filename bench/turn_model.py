"""Smart Turn v3 against today's end-of-turn rules, on callers who pause mid-sentence (issue 18, section 6).

    .venv/bin/python bench/turn_model.py                       # tiny.en finals, Smart Turn from the wheel
    .venv/bin/python bench/turn_model.py --stt script --items 8 --no-smart   # the quick smoke run
    .venv/bin/python bench/turn_model.py --stt base

The set (made here, deterministic, nothing stored): 18 phrases split where a caller stops to think
("my number is" [600-900 ms] "five five five, one two three four") and 16 finished sentences, each said
by two espeak-ng voices of bench/caller_set.py, then 2.5 s of silence, over the telephone line of
caller_set (300-3400 Hz, 8 kHz, hiss and hum at 20 dB SNR, G.711 mu-law): 68 items, 36 mid-turn pauses
(the turn must NOT end there) and 68 ends of turn (it must); ``--voices piper``: the same phrases once
each by the agent's piper voice, whose prosody is less robotic. Any end of turn before the last word is a
false end; no end within the 2.5 s after it is a missed one.

Today's logic is driven through its real decision code with a simulated clock, frame by frame as
``Conversation.feed_audio`` does it: ``default_vad(8000)`` per 20 ms frame, ``TurnDetector`` with the
default policy (flush at 250 ms of silence, ``completeness()`` of the final, 500 ms / 1.5 s waits), the
gate and 300 ms pre-roll that decide which audio the STT gets, and each flush's audio decoded by the
real local Whisper engine (``--stt tiny.en`` the default model, or ``base``); the final reaches the
detector after the decode's measured wall time. ``--stt script`` gives the words said so far instead
(perfect ears, 120 ms late): the rules' own ceiling, and quick.

Smart Turn v3 (``smart-turn-v3.2-cpu.onnx``, BSD-2-Clause, Daily) is read straight out of the
pipecat-ai wheel (``make install`` downloads it to .venv/extras; the model is hash-pinned; never installed) into one
shared onnxruntime session, one intra-op thread. It runs as pipecat runs it
(pipecat/audio/turn/smart_turn/base_smart_turn.py and local_smart_turn_v3.py): on each pause of
``--trigger-ms`` (pipecat's recommended VAD stop_secs, 0.2 s) over the turn's audio from 500 ms before
its first speech, the last 8 s at 16 kHz, Whisper log-mel features, probability > 0.5 = finished; the
turn ends when the answer arrives (measured inference time later), else at 1.5 s of silence (today's
incomplete wait; pipecat's own is 3 s). Same VAD and the same 60 ms speech confirmation as today.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.caller_set import (  # noqa: E402
    ESPEAK_RATE,
    LINE_RATE,
    VOICES,
    Voice,
    band_limit,
    line_noise,
    speak,
    speech_power,
)
from runtime.audio import Resampler, pcm16_to_ulaw, resample, ulaw_to_pcm16  # noqa: E402
from runtime.pipeline.turns import Signal, TurnDetector, TurnPolicy, completeness  # noqa: E402
from runtime.pipeline.vad import default_vad  # noqa: E402

FRAME_MS = 20
LEAD_MS, TAIL_MS = 400, 2500
SNR_DB = 20.0
PREROLL_FRAMES = 16  # runtime.pipeline.conversation.PREROLL_FRAMES
SCRIPT_LATENCY_MS = 120  # --stt script: tiny.en's flush -> final p50 (README, conversation pipeline)

WHEEL_ENV = "VOICECTL_PIPECAT_WHEEL"
WHEEL_DEFAULT = str(Path(__file__).resolve().parent.parent / ".venv" / "extras" / "pipecat_ai-1.14.0-py3-none-any.whl")  # make install fetches it
MODEL_IN_WHEEL = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
MODEL_RATE, MODEL_WINDOW_S, PRE_SPEECH_MS = 16_000, 8, 500  # local_smart_turn_v3.py, base_smart_turn.py

# Phrases a caller stops in the middle of ("|" = the pause), and sentences said in one go.
SPLIT = (
    "my number is | five five five, one two three four.",
    "I'd like to book a table for | four people at eight.",
    "my name is | Sarah Johnson.",
    "the email is john dot smith at | gmail dot com.",
    "can I book for | tomorrow at seven thirty?",
    "we are | six people, at seven.",
    "I was wondering if | you have a table free tonight.",
    "the card number is four four one two | three three nine nine.",
    "let me see, um | make it half past eight.",
    "I want to cancel my booking for | Friday.",
    "and could we also | get a high chair?",
    "the address is twelve | Baker Street.",
    "it's for my wife and | our two kids.",
    "so the booking is under the name | David Miller.",
    "yes, and | could you note that one of us is vegetarian?",
    "I need a table on | Saturday evening, around seven.",
    "the best number to reach me is oh seven seven | nine one two, three four five.",
    "because | we have a birthday to celebrate.",
)
COMPLETE = (
    "I'd like to book a table for two at seven tonight.",
    "What time do you open on Sunday?",
    "Can I speak to a real person please?",
    "Yes please, that's perfect.",
    "No thanks, goodbye.",
    "My name is Sarah Johnson.",
    "Are you open on Monday evening?",
    "Change the time to nine o'clock please.",
    "Table for six at six, please.",
    "That's all, thank you very much.",
    "Sure, go ahead.",
    "Okay, bye bye.",
    "How late are you open tonight?",
    "Yes, book it.",
    "Hello, good evening.",
    "Please cancel my booking, something came up.",
)


@dataclass(frozen=True)
class Item:
    name: str
    parts: tuple[str, ...]
    pauses_ms: tuple[int, ...]  # the mid-turn pauses, between the parts
    voice: Voice


@dataclass
class Clip:
    item: Item
    line: bytes  # 8 kHz PCM16, what the bridge feeds the pipeline
    wide: np.ndarray  # the same at 16 kHz, float32 (the STT's and Smart Turn's input)
    spans: list[tuple[int, int]]  # each part's [start, end) in ms

    @property
    def speech_end(self) -> int:
        return self.spans[-1][1]


PIPER = Voice("piper", 0)  # the agent's own piper voice (--voices piper): natural-sounding prosody


def items(voices: str = "espeak") -> list[Item]:
    """68 items: each phrase by two espeak-ng voices (three apart, as caller_set does); ``piper``:
    34, each phrase once by the piper voice."""
    out = []
    for index, text in enumerate(SPLIT):
        parts = tuple(p.strip() for p in text.split("|"))
        pause = 600 + zlib.crc32(text.encode()) % 301  # 600-900 ms, fixed per phrase
        pair = (PIPER,) if voices == "piper" else (VOICES[index % len(VOICES)], VOICES[(index + 3) % len(VOICES)])
        out += [Item(f"split{index}/{voice.name}", parts, (pause,) * (len(parts) - 1), voice) for voice in pair]
    for index, text in enumerate(COMPLETE):
        pair = (PIPER,) if voices == "piper" else (VOICES[(index + 1) % len(VOICES)], VOICES[(index + 4) % len(VOICES)])
        out += [Item(f"whole{index}/{voice.name}", (text,), (), voice) for voice in pair]
    return out


def _trimmed(pcm: bytes) -> np.ndarray:
    """espeak-ng's clip without its own leading and trailing silence (so the pauses are ours)."""
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(x) > 200)
    return x[loud[0]:loud[-1] + 1] if len(loud) else x


@cache
def piper(text: str) -> bytes:
    """The piper voice's PCM16, at espeak-ng's 22.05 kHz (piper's own rate)."""
    import asyncio

    from runtime.providers.tts.local import PIPER_RATE, PiperTTS

    async def say() -> bytes:
        return b"".join([chunk.pcm async for chunk in PiperTTS().synthesize(text)])

    pcm = asyncio.run(say())
    return pcm if PIPER_RATE == ESPEAK_RATE else resample(pcm, PIPER_RATE, ESPEAK_RATE)


def clip(item: Item, fragment_end: str = ",") -> Clip:
    """The item's speech with our pauses, over the telephone line (caller_set's, kept at 8 kHz). A part
    before a mid-turn pause is spoken ending in ``fragment_end``: "," gives espeak-ng's continuation
    intonation (a caller who is not done), "" its full stop (a fragment said as if finished)."""
    pieces, spans, at = [np.zeros(LEAD_MS * ESPEAK_RATE // 1000, "<i2")], [], LEAD_MS
    for k, part in enumerate(item.parts):
        spoken = part + (fragment_end if k < len(item.pauses_ms) else "")
        voiced = _trimmed(piper(spoken) if item.voice is PIPER else speak(spoken, item.voice))
        length = len(voiced) * 1000 // ESPEAK_RATE
        spans.append((at, at + length))
        pieces.append(voiced)
        at += length
        gap = item.pauses_ms[k] if k < len(item.pauses_ms) else TAIL_MS
        pieces.append(np.zeros(gap * ESPEAK_RATE // 1000, "<i2"))
        at += gap
    raw = np.concatenate(pieces).tobytes()
    narrow = np.frombuffer(resample(band_limit(raw, ESPEAK_RATE), ESPEAK_RATE, LINE_RATE), "<i2").astype(np.float64)
    seed = zlib.crc32(f"{item.name}/{fragment_end}".encode())
    narrow = narrow + line_noise(len(narrow), speech_power(narrow) / 10 ** (SNR_DB / 10), seed)
    line = ulaw_to_pcm16(pcm16_to_ulaw(np.clip(narrow, -32768, 32767).astype("<i2").tobytes()))
    line = line[: len(line) // 320 * 320]
    wide = np.frombuffer(resample(line, LINE_RATE, MODEL_RATE), "<i2").astype(np.float32) / 32768.0
    return Clip(item, line, wide, spans)


def frames(line: bytes) -> Iterator[bytes]:
    for start in range(0, len(line), 320):
        yield line[start:start + 320]


@dataclass
class Run:
    ends: list[int] = field(default_factory=list)  # audio ms at which a turn ended
    decisions_ms: list[float] = field(default_factory=list)  # flush -> final, or one inference
    cpu_ms: list[float] = field(default_factory=list)  # the decision's CPU (Smart Turn: features + model)
    notes: list[str] = field(default_factory=list)  # finals (with their verdict) or probabilities, in order


# Today's rules: VAD -> TurnDetector, gate and pre-roll -> STT decode on each flush -> final -> detector

Finalizer = Callable[[Clip, bytes, int], tuple[str, float]]  # (clip, 16 kHz audio since flush, ms) -> text, ms


def whisper_finals(model: str, latency_ms: float | None = None, model_dir: Path | None = None) -> Finalizer:
    """Each flush's audio decoded by the real local engine (one call: the decode has the box); the
    final arrives after the decode's wall time, or after ``latency_ms`` (a faster STT, same words)."""
    from runtime.providers.stt.local import LocalWhisperSTT, model_for

    stt = LocalWhisperSTT(model=model_for(model), model_dir=model_dir)
    engine, options = stt._engine, stt.options
    engine.model()

    def final(_clip: Clip, pcm: bytes, _at: int) -> tuple[str, float]:
        started = time.perf_counter()
        transcript = engine.decode(pcm, 0, options)
        took = (time.perf_counter() - started) * 1000 if latency_ms is None else latency_ms
        return (transcript.text if transcript else ""), took

    return final


def script_finals() -> Finalizer:
    """Perfect ears: the words said by the flush and not yet given (each part's words evenly over
    its span; a part's own punctuation with its last word), ``SCRIPT_LATENCY_MS`` late."""
    given: dict[int, int] = {}

    def final(clip: Clip, _pcm: bytes, at: int) -> tuple[str, float]:
        words: list[str] = []
        for (start, end), part in zip(clip.spans, clip.item.parts, strict=True):
            tokens = part.split()
            for n, word in enumerate(tokens):
                if start + (end - start) * (n + 1) / len(tokens) <= at:
                    words.append(word)
        key = id(clip)
        done = given.get(key, 0)
        given[key] = len(words)
        return " ".join(words[done:]), float(SCRIPT_LATENCY_MS)

    return final


def run_rules(clip: Clip, finalize: Finalizer) -> Run:
    run = Run()
    vad, detector = default_vad(LINE_RATE), TurnDetector(TurnPolicy())
    gate, preroll, buffer = False, deque(maxlen=PREROLL_FRAMES), bytearray()
    to_16k = Resampler(LINE_RATE, MODEL_RATE)
    pending: deque[tuple[float, str]] = deque()  # finals in flight: (arrival ms, text)
    stt_free_at = 0.0  # one decode at a time per stream
    for frame in frames(clip.line):
        now = detector.audio_ms
        while pending and pending[0][0] <= now:
            _, text = pending.popleft()
            started = time.thread_time()
            if detector.final(text) & Signal.END:
                run.ends.append(now)
                detector.take()
                gate = False
            run.cpu_ms.append((time.thread_time() - started) * 1000)
        signal = detector.frame(vad.is_speech(frame), FRAME_MS)
        if gate:
            buffer += to_16k(frame)
        else:
            preroll.append(frame)
        if signal & (Signal.STARTED | Signal.RESUMED) and not gate:
            gate = True
            for held in preroll:
                buffer += to_16k(held)
            preroll.clear()
        if signal & Signal.FLUSH:
            gate = False
            text, took = finalize(clip, bytes(buffer), detector.audio_ms)
            buffer.clear()
            stt_free_at = max(stt_free_at, detector.audio_ms) + took
            pending.append((stt_free_at, text))
            run.notes.append(f"{detector.audio_ms}:{text!r}={completeness(text).value[:3]}")
            run.decisions_ms.append(took)
        if signal & Signal.END:
            run.ends.append(detector.audio_ms)
            detector.take()
            gate = False
    return run


# Smart Turn v3: features as pipecat computes them, the model from the wheel

@cache
def _features() -> Any:
    """faster-whisper's own Whisper feature extractor (the offline extra has it): the same
    Slaney mel bank, 400-point STFT hop 160 and log scaling as pipecat's vendored copy."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=MODEL_RATE)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel features of 8 s of 16 kHz audio, (80, 800) float32, as pipecat computes them
    for Smart Turn (pipecat-ai 1.14.0, pipecat/audio/turn/smart_turn/_whisper_features.py,
    compute_whisper_log_mel_features with do_normalize=True): the waveform made zero-mean and
    unit-variance, then Whisper's log-mel (faster-whisper's extractor agrees with pipecat's to 1e-7)."""
    n = MODEL_RATE * MODEL_WINDOW_S
    x = np.asarray(audio, np.float32)
    x = np.pad(x, (0, n - x.size)) if x.size < n else x[:n]
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    return _features()(x.astype(np.float32), padding=0).astype(np.float32)


def model_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s, zero-padded at the front (local_smart_turn_v3.truncate_audio_to_last_n_seconds)."""
    n = MODEL_RATE * MODEL_WINDOW_S
    return audio[-n:] if audio.size >= n else np.pad(audio, (n - audio.size, 0))


def wheel_path() -> Path:
    return Path(os.environ.get(WHEEL_ENV, WHEEL_DEFAULT))


class SmartTurn:
    """One shared onnxruntime session over the model read from the wheel (hash-checked)."""

    def __init__(self, wheel: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        with zipfile.ZipFile(wheel) as archive:
            blob = archive.read(MODEL_IN_WHEEL)
        digest = hashlib.sha256(blob).hexdigest()
        if digest != MODEL_SHA256:
            raise RuntimeError(f"{MODEL_IN_WHEEL} in {wheel}: sha256 {digest}, expected {MODEL_SHA256}")
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads, options.intra_op_num_threads = 1, threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(blob, sess_options=options)
        self.size = len(blob)

    def probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        features = np.stack([log_mel(model_window(w)) for w in windows])
        return self.session.run(None, {"input_features": features})[0][:, 0]


def run_smart(clip: Clip, model: SmartTurn, trigger_ms: int, fallback_ms: int, threshold: float = 0.5) -> Run:
    run = Run()
    vad = default_vad(LINE_RATE)
    # The detector only confirms speech here (60 ms) and counts the pause: its own endpointing is off.
    detector = TurnDetector(TurnPolicy(endpoint_ms=10 ** 9))
    asked, answer = False, None  # this pause: inference done; (arrival ms, finished?)
    turn_start = 0
    for frame in frames(clip.line):
        signal = detector.frame(vad.is_speech(frame), FRAME_MS)
        now = detector.audio_ms
        if signal & Signal.STARTED:
            turn_start = detector.start_ms
        if signal & (Signal.STARTED | Signal.RESUMED):
            asked, answer = False, None  # speech again: a pending answer is stale
        if detector.state != 2:  # not PAUSED
            continue
        if not asked and detector.silence_ms >= trigger_ms:
            asked = True
            begin = max(0, turn_start - PRE_SPEECH_MS) * MODEL_RATE // 1000
            audio = clip.wide[begin:now * MODEL_RATE // 1000]
            wall, cpu = time.perf_counter(), time.process_time()
            probability = float(model.probabilities([audio])[0])
            finished = probability > threshold
            run.notes.append(f"{now}:p={probability:.2f}")
            took = (time.perf_counter() - wall) * 1000
            run.cpu_ms.append((time.process_time() - cpu) * 1000)
            run.decisions_ms.append(took)
            answer = (now + took, finished)
        if (answer is not None and answer[1] and now >= answer[0]) or detector.silence_ms >= fallback_ms:
            run.ends.append(now)
            detector.reset()
            asked, answer = False, None
    return run


def batch_cpu_ms(model: SmartTurn, clips: list[Clip], size: int, repeats: int = 3) -> float:
    """CPU per inference when ``size`` calls' windows go through the session together."""
    windows = [c.wide[: c.speech_end * MODEL_RATE // 1000 + 3200] for c in clips[:size]]
    model.probabilities(windows)
    started = time.process_time()
    for _ in range(repeats):
        model.probabilities(windows)
    return (time.process_time() - started) * 1000 / repeats / len(windows)


# Scoring

@dataclass
class Score:
    pauses: int = 0
    false_in_pause: int = 0
    items: int = 0
    false_items: int = 0  # any end before the last word
    missed: int = 0
    waits: list[int] = field(default_factory=list)  # last word -> end of turn, ms
    decisions: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    audio_s: float = 0.0


def score(clip: Clip, run: Run, into: Score) -> None:
    into.items += 1
    into.audio_s += len(clip.line) / 2 / LINE_RATE
    into.decisions += run.decisions_ms
    into.cpu += run.cpu_ms
    spans = clip.spans
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        into.pauses += 1
        into.false_in_pause += any(end <= e < start + 100 for e in run.ends)
    into.false_items += any(e < clip.speech_end for e in run.ends)
    after = [e - clip.speech_end for e in run.ends if e >= clip.speech_end]
    if after:
        into.waits.append(after[0])
    else:
        into.missed += 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def table(rows: list[tuple[str, Score, float]]) -> str:
    """``rows``: (name, score, inferences per call-second counted as CPU)."""
    head = ("| end of turn by | false end in a mid-turn pause | any false end | missed end | wait p50 / p95 "
            "(last word -> end) | decision p50 | CPU per decision | decisions per call-s | CPU per call-s "
            "| 200 calls |")
    lines = [head, "| " + " | ".join("---" for _ in range(10)) + " |"]
    for name, s, _ in rows:
        per_s = len(s.decisions) / s.audio_s if s.audio_s else 0.0
        cpu = sum(s.cpu) / len(s.cpu) if s.cpu else 0.0
        lines.append(
            f"| {name} | {s.false_in_pause}/{s.pauses} ({100 * s.false_in_pause / max(1, s.pauses):.0f} %) "
            f"| {s.false_items}/{s.items} | {s.missed}/{s.items} "
            f"| {pct(s.waits, 0.5):.0f} / {pct(s.waits, 0.95):.0f} ms | {pct(s.decisions, 0.5):.1f} ms "
            f"| {cpu:.2f} ms | {per_s:.2f} | {per_s * cpu:.2f} ms | {per_s * cpu * 200 / 1000:.2f} cores |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stt", default="tiny.en", help="tiny.en | base | script (perfect ears)")
    parser.add_argument("--stt-latency-ms", type=float, default=None,
                        help="whisper's words, but each final this long after its flush (default: the decode's time)")
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/voicectl-bench-models"),
                        help="where base (shipped in two pieces) is assembled, as bench/offline_stack.py does")
    parser.add_argument("--items", type=int, default=0, help="the first N of each kind (0: all)")
    parser.add_argument("--no-smart", action="store_true", help="today's rules only")
    parser.add_argument("--wheel", type=Path, default=None, help=f"pipecat-ai wheel (default ${WHEEL_ENV} or "
                        f"{WHEEL_DEFAULT})")
    parser.add_argument("--trigger-ms", type=int, default=200, help="Smart Turn runs after this much silence")
    parser.add_argument("--fallback-ms", type=int, default=TurnPolicy().incomplete_ms,
                        help="Smart Turn's 'not finished' ends the turn after this much silence")
    parser.add_argument("--batch", type=int, default=8, help="also measure CPU per inference in batches of N")
    parser.add_argument("--fragment-end", default=",", help='how a part before a pause is spoken: "," '
                        '(continuation intonation) or "" (as a finished sentence)')
    parser.add_argument("--voices", choices=("espeak", "piper"), default="espeak",
                        help="six espeak-ng voices (68 items), or the agent's piper voice (34)")
    parser.add_argument("--verbose", action="store_true", help="each item's ends, finals and probabilities")
    args = parser.parse_args(argv)

    every = items(args.voices)
    if args.items:
        split = [i for i in every if i.pauses_ms][: args.items]
        every = split + [i for i in every if not i.pauses_ms][: args.items]
    clips = [clip(i, args.fragment_end) for i in every]
    finalize = script_finals() if args.stt == "script" else whisper_finals(args.stt, args.stt_latency_ms, args.model_dir)
    latency = "" if args.stt_latency_ms is None or args.stt == "script" else f", {args.stt_latency_ms:.0f} ms late"
    rules = Score()
    for c in clips:
        score(c, run := run_rules(c, finalize), rules)
        if args.verbose:
            print(f"rules {c.item.name}: spans {c.spans} ends {run.ends} {' '.join(run.notes)}")
    rows = [(f"today's rules ({args.stt} finals{latency})", rules, 0.0)]
    batch_note = ""
    if not args.no_smart:
        model = SmartTurn(args.wheel or wheel_path())
        smart = Score()
        for c in clips:
            score(c, run := run_smart(c, model, args.trigger_ms, args.fallback_ms), smart)
            if args.verbose:
                print(f"smart {c.item.name}: spans {c.spans} ends {run.ends} {' '.join(run.notes)}")
        rows.append((f"Smart Turn v3.2 ({args.trigger_ms} ms pause, 1 thread)", smart, 0.0))
        if args.batch > 1 and len(clips) >= args.batch:
            batch_note = (f"Smart Turn batched {args.batch} calls a run: "
                          f"{batch_cpu_ms(model, clips, args.batch):.1f} ms CPU per inference\n")
    speakers = len({c.item.voice for c in clips})
    print(f"{len(clips)} items ({sum(bool(c.item.pauses_ms) for c in clips)} with a mid-turn pause), "
          f"{speakers} voices, {sum(len(c.line) for c in clips) / 2 / LINE_RATE:.0f} s of caller audio")
    print(table(rows))
    print(batch_note, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
