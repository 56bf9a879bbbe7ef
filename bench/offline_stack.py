"""Figures for the embedded offline speech stack: whisper STT, piper TTS, the VADs.

    .venv/bin/python bench/offline_stack.py              # everything
    .venv/bin/python bench/offline_stack.py --only vad   # stt | tts | wer | own-voice | vad
    .venv/bin/python bench/offline_stack.py --repeats 9 --concurrency 2 --model tiny.en
    .venv/bin/python bench/offline_stack.py --only wer --half test --snrs clean,20,10 --hints both

All audio is made here by the piper voice (speech) and numpy (silence, white noise, line
hum); nothing is downloaded. STT decodes go through the real ``LocalWhisperSTT`` worker pool,
the input made the telephony way (22.05 kHz -> 8 kHz -> 16 kHz). Run on a quiet machine:
other load on the 2 cores shows up directly in every wall-clock figure; the CPU columns
(this process's CPU time per decode / per second of audio) are the steadier ones.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from runtime.audio import FRAME_MS, resample  # noqa: E402
from runtime.pipeline.turns import Signal, TurnDetector  # noqa: E402
from runtime.pipeline.vad import NoiseFloorGate, SileroVad, VoiceActivity, WebRtcVad  # noqa: E402
from runtime.providers.models import WHISPER_MODELS  # noqa: E402
from runtime.providers.stt.local import LocalWhisperSTT, model_for  # noqa: E402
from runtime.providers.tts.local import PiperTTS  # noqa: E402

SENTENCES = (
    "I would like to book a table for two at seven tonight.",
    "Can you tell me when you open on Sunday?",
    "My name is Alex, and my number is five five five, one two three four.",
    "Thanks, that is all for now.",
)
LONG_TEXT = ("Thanks for calling the restaurant, we are open every day from noon until ten in the evening, "
             "and on weekends we also serve brunch from nine.")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def speak(tts: PiperTTS, text: str) -> tuple[bytes, int]:
    chunks = [c async for c in tts.synthesize(text)]
    return b"".join(c.pcm for c in chunks), chunks[0].rate


def telephony_16k(pcm: bytes, rate: int) -> bytes:
    return resample(resample(pcm, rate, 8000), 8000, 16000)


# STT


async def bench_stt(tts: PiperTTS, repeats: int, concurrency: int, model: str, model_dir: Path) -> None:
    stt = LocalWhisperSTT(model=model_for(model), model_dir=model_dir)
    began = time.perf_counter()
    await stt.warm_up()
    print(f"whisper {model} int8: load + warm-up {time.perf_counter() - began:.2f} s")
    speech = b"".join([telephony_16k(*await speak(tts, s)) for s in SENTENCES])
    print(f"{'utterance':>10} {'p50 ms':>8} {'p95 ms':>8} {'RTF p50':>8} {'CPU ms':>7}  text")
    for seconds in (1, 2, 4):
        pcm = speech[:seconds * 16000 * 2]
        latencies, cpu, text = [], [], ""
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            transcript = await stt.transcribe(pcm)
            latencies.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
            text = transcript.text if transcript else ""
        print(f"{seconds:>9}s {pct(latencies, .5) * 1000:8.0f} {pct(latencies, .95) * 1000:8.0f} "
              f"{pct(latencies, .5) / seconds:8.3f} {pct(cpu, .5) * 1000:7.0f}  {text[:60]!r}")
    pcm = speech[:2 * 16000 * 2]
    for parallel in sorted({1, concurrency}):
        start = time.perf_counter()
        latencies = []

        async def one(into: list[float]) -> None:
            t0 = time.perf_counter()
            await stt.transcribe(pcm)
            into.append(time.perf_counter() - t0)

        for _ in range(repeats):
            await asyncio.gather(*(one(latencies) for _ in range(parallel)))
        wall = time.perf_counter() - start
        print(f"2 s utterances, {parallel} at once: p50 {pct(latencies, .5) * 1000:.0f} ms, "
              f"{len(latencies) / wall:.2f} decodes/s")
    silence = await stt.transcribe(bytes(32000 * 2))
    print(f"2 s of silence -> {silence!r}")
    await bench_interim(stt, [telephony_16k(*await speak(tts, s)) for s in SENTENCES], max(1, repeats // 3))


async def _collect(stream) -> list:
    return [t async for t in stream]


async def bench_interim(stt: LocalWhisperSTT, utterances: list[bytes], repeats: int) -> None:
    """What partial decoding (``transcript.interim`` wanted) costs: each utterance fed in real time
    (20 ms frames), then flushed; this process's CPU per second of speech with it off and on."""
    audio_s = sum(len(u) for u in utterances) / 32000 * repeats
    for wanted in (False, True):
        stream = await stt.open()
        stream.want_interim(wanted)
        reader = asyncio.create_task(_collect(stream))
        cpu_start = time.process_time()
        for _ in range(repeats):
            for pcm in utterances:
                for i in range(0, len(pcm), 640):
                    await stream.push(pcm[i:i + 640])
                    await asyncio.sleep(0.02)
                await stream.flush()
        await stream.close()
        got = await reader
        interims, finals = sum(not t.final for t in got), sum(t.final for t in got)
        cpu = time.process_time() - cpu_start
        print(f"interim {'on ' if wanted else 'off'}: {cpu / audio_s * 1000:5.0f} CPU-ms per s of speech "
              f"({interims} partials, {finals} finals, {audio_s:.0f} s of speech)")


# TTS


async def bench_tts(tts: PiperTTS, repeats: int) -> None:
    began = time.perf_counter()
    await tts.warm_up()
    print(f"piper joe medium: load + warm-up {time.perf_counter() - began:.2f} s")
    print(f"{'text':>22} {'first ms p50':>13} {'total ms p50':>13} {'audio s':>8} {'RTF':>6} {'CPU RTF':>8}")
    for label, text in (("short (1 sentence)", SENTENCES[0]), ("long (1 sentence)", LONG_TEXT),
                        ("4 sentences", " ".join(SENTENCES))):
        firsts, totals, cpu, audio_s = [], [], [], 0.0
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            first, samples, rate = None, 0, 1
            async for chunk in tts.synthesize(text):
                first = first if first is not None else time.perf_counter() - start
                samples, rate = samples + len(chunk.pcm) // 2, chunk.rate
            totals.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
            firsts.append(first or 0.0)
            audio_s = samples / rate
        total = pct(totals, .5)
        print(f"{label:>22} {pct(firsts, .5) * 1000:13.0f} {total * 1000:13.0f} {audio_s:8.2f} {total / audio_s:6.3f} "
              f"{pct(cpu, .5) / audio_s:8.3f}")


# VAD


@dataclass(frozen=True)
class Scene:
    name: str
    pcm: bytes  # PCM16 at the bench rate
    truth: np.ndarray  # bool per 20 ms frame: speech in the clean signal


def frames_of(pcm: bytes, rate: int) -> list[bytes]:
    size = rate * FRAME_MS // 1000 * 2
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]


def make_scenes(speech: list[bytes], rate: int, seed: int = 7) -> list[Scene]:
    """The sentences with 0.8 s gaps, then: clean; + white noise at 15 dB SNR; + a 60 Hz mains
    buzz (odd harmonics 60/180/300 Hz) 20 dB and 10 dB below the speech; 6 s of the noise
    alone and of the loud buzz alone. Truth: frames within 35 dB of the loud clean speech."""
    rng = np.random.default_rng(seed)
    gap = np.zeros(int(0.8 * rate), dtype=np.float64)
    parts = [gap]
    for pcm in speech:
        parts += [np.frombuffer(pcm, dtype="<i2").astype(np.float64), gap]
    clean = np.concatenate(parts)
    n = rate * FRAME_MS // 1000
    frames = clean[: len(clean) // n * n].reshape(-1, n)
    energy = np.sqrt((frames ** 2).mean(axis=1))
    truth = energy > np.percentile(energy, 95) * 10 ** (-35 / 20)
    speech_power = float((frames[truth] ** 2).mean())
    clean = frames.reshape(-1)
    t = np.arange(len(clean)) / rate
    noise = rng.standard_normal(len(clean)) * np.sqrt(speech_power / 10 ** (15 / 10))
    loud = noise * 10 ** (5 / 20)  # 10 dB SNR
    buzz = sum(np.sin(2 * np.pi * 60 * k * t) / k for k in (1, 3, 5))
    buzz *= np.sqrt(speech_power / float((buzz ** 2).mean()))  # now at the speech's power

    def pcm16(x: np.ndarray) -> bytes:
        return np.clip(x, -32768, 32767).astype("<i2").tobytes()

    six = 6 * rate // n * n
    none = np.zeros(six // n, dtype=bool)
    return [Scene("clean", pcm16(clean), truth),
            Scene("noise 15 dB SNR", pcm16(clean + noise), truth),
            Scene("buzz -20 dB", pcm16(clean + buzz * 0.1), truth),
            Scene("buzz -10 dB", pcm16(clean + buzz * 10 ** -0.5), truth),
            Scene("noise 10 dB SNR", pcm16(clean + loud), truth),
            Scene("noise alone", pcm16(noise[:six]), none),
            Scene("noise 10 dB alone", pcm16(loud[:six]), none),
            Scene("buzz -10 alone", pcm16(buzz[:six] * 10 ** -0.5), none)]


def score(vad: VoiceActivity, scene: Scene, rate: int) -> tuple[float, float, float, float]:
    """(accuracy, speech recall, false-positive rate, CPU µs per frame)."""
    vad.reset()
    frames = frames_of(scene.pcm, rate)
    start = time.process_time()
    said = np.array([vad.is_speech(f) for f in frames], dtype=bool)
    cpu_us = (time.process_time() - start) / len(frames) * 1e6
    truth = scene.truth[: len(said)]
    recall = float(said[truth].mean()) if truth.any() else float("nan")
    fpr = float(said[~truth].mean()) if (~truth).any() else float("nan")
    return float((said == truth).mean()), recall, fpr, cpu_us


def gate_starts(vad: VoiceActivity, scene: Scene, rate: int) -> int:
    """Speech starts (new turn or speech resuming) the pipeline's turn detector sees over this
    VAD (4 sentences: 4 or a few more; noise: 0)."""
    vad.reset()
    detector = TurnDetector()
    return sum(bool(detector.frame(vad.is_speech(f), 20) & (Signal.STARTED | Signal.RESUMED))
               for f in frames_of(scene.pcm, rate))


async def bench_vad(tts: PiperTTS) -> None:
    spoken = [await speak(tts, s) for s in SENTENCES]
    for rate in (8000, 16000):
        scenes = make_scenes([resample(pcm, r, rate) for pcm, r in spoken], rate)
        print(f"{rate} Hz, {sum(len(s.truth) for s in scenes)} frames of 20 ms")
        print(f"{'engine':>16} {'scene':>16} {'accuracy':>9} {'recall':>7} {'FPR':>6} {'µs/frame':>9} {'starts':>7}")
        engines: list[tuple[str, VoiceActivity]] = [(f"webrtc agg={a}", WebRtcVad(rate, a)) for a in (1, 2, 3)]
        engines += [(f"webrtc 3 +{m:g} dB", NoiseFloorGate(WebRtcVad(rate, 3), m)) for m in (4.0, 6.0)]
        engines += [(f"silero t={t}", SileroVad(rate, t)) for t in (0.5,)]
        for label, vad in engines:
            for scene in scenes:
                acc, recall, fpr, cpu = score(vad, scene, rate)
                print(f"{label:>16} {scene.name:>16} {acc:9.3f} {recall:7.3f} {fpr:6.3f} {cpu:9.1f} "
                      f"{gate_starts(vad, scene, rate):7d}")


# The caller set (bench/caller_set.py): espeak-ng voices over a telephone line with noise.


def demo_prompt(model: str = "base") -> str:
    """The demo version's vocabulary hints as the local STT gives them to ``model`` (local.version_prompt)."""
    from runtime.control.schemas import AgentConfig
    from runtime.providers.llm.rules import DEMO_BOOKING_RULES
    from runtime.providers.stt.hints import version_terms
    from runtime.providers.stt.local import version_prompt
    from voicectl.demo import GREETING, PROMPT

    agent = AgentConfig(system_prompt=PROMPT, greeting=GREETING, rules=DEMO_BOOKING_RULES)
    return version_prompt(model_for(model), (), agent.rules, agent.language, version_terms(agent))


async def bench_wer(model: str, half: str, snrs: list[float | None], hints: list[bool], model_dir: Path) -> None:
    """WER, lines understood and bookings right per line condition, with and without hints."""
    from bench import caller_set

    brain = caller_set.DemoBrain()
    prompt = demo_prompt(model)
    print(f"\ncaller set, {half} half, whisper {model} (digits normalised; understood: the demo's rules brain "
          f"does what the line asks; booked: check_availability with the right party size and time)")
    print(f"{'line':>6} {'hints':>5} {'WER':>6} {'understood':>11} {'booked':>7} {'CPU ms/utt':>10} {'ms/utt':>7}")
    for snr in snrs:
        audio = list(caller_set.utterances(half, snr))
        for hinted in hints:
            stt = LocalWhisperSTT(model=model_for(model), model_dir=model_dir, prompt=prompt if hinted else "")
            await stt.warm_up()
            errors = words = right = booked = bookings = 0
            cpu = wall = 0.0
            for utterance in audio:
                start, cpu_start = time.perf_counter(), time.process_time()
                heard = await stt.transcribe(utterance.pcm)
                wall += time.perf_counter() - start
                cpu += time.process_time() - cpu_start
                text = heard.text if heard else ""
                ref = caller_set.words(utterance.line.text)
                errors += caller_set.edit_distance(ref, caller_set.words(text))
                words += len(ref)
                judged = brain.judge(utterance.line, text)
                right += judged.right
                if judged.booked is not None:
                    bookings += 1
                    booked += judged.booked
                if VERBOSE:
                    print(f"    {utterance.voice.name:>18} {'ok ' if judged.right else 'BAD'} {text!r}")
            label = "clean" if snr is None else f"{snr:g} dB"
            n = len(audio)
            print(f"{label:>6} {'on' if hinted else 'off':>5} {errors / words:6.1%} {right / n:10.0%} "
                  f"{booked:>3}/{bookings:<3} {cpu / n * 1000:10.0f} {wall / n * 1000:7.0f}")


# The agent's own voice: caller lines said by the piper voice (too easy: the figure in bench/README.md).
WER_LINES = (
    "I'd like to book a table for two at seven.", "Yes please.", "No thanks, goodbye.",
    "Can you tell me when you open on Sunday?", "My name is Sarah Johnson.",
    "Do you have anything available tomorrow evening?", "I want to order two pizzas and a salad for pickup.",
    "What time do you close tonight?", "Could I speak to a person please?", "That's all, thank you very much.",
    "We are four people, around eight thirty.", "Is there parking near the restaurant?", "Cancel my booking for Friday.",
    "Do you have vegetarian options?", "Okay, that works for me.", "Can we sit outside on the terrace?",
    "I'm calling about my reservation.", "Actually make it six people instead.", "How much is the tasting menu?",
    "No.", "Sure.", "Maybe later.",
)


async def bench_wer_own_voice(tts: PiperTTS, model: str, model_dir: Path) -> None:
    """Word error rate and time per utterance with the short (10 s) and whisper's own (30 s) window."""
    from bench import caller_set

    audio = []
    for text in WER_LINES:
        pcm, rate = await speak(tts, text)
        audio.append(telephony_16k(pcm, rate))
    print(f"\nWER over {len(WER_LINES)} caller lines (piper voice, telephony path; digits normalised)")
    for context in (10.0, 30.0):
        stt = LocalWhisperSTT(context_s=context, model=model_for(model), model_dir=model_dir)
        await stt.warm_up()
        errors = words = 0
        began = time.perf_counter()
        for text, pcm in zip(WER_LINES, audio, strict=True):
            heard = await stt.transcribe(pcm)
            ref = caller_set.words(text)
            errors += caller_set.edit_distance(ref, caller_set.words(heard.text if heard else ""))
            words += len(ref)
        per = (time.perf_counter() - began) / len(WER_LINES) * 1000
        print(f"  encoder window {context:>4.0f} s: WER {errors / words:.3f} ({errors}/{words} words), "
              f"{per:.0f} ms per utterance")


VERBOSE = False


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("stt", "tts", "vad", "wer", "own-voice"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=2, help="parallel decodes in the throughput run")
    parser.add_argument("--model", choices=tuple(WHISPER_MODELS), default="base", help="the whisper model")
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/voicectl-bench-models"),
                        help="where a model in pieces is assembled")
    parser.add_argument("--half", choices=("tune", "test", "all"), default="test", help="of the caller set")
    parser.add_argument("--snrs", default="clean,20,10", help="line conditions: clean and/or SNRs in dB")
    parser.add_argument("--hints", choices=("on", "off", "both"), default="both",
                        help="the demo version's vocabulary hints as whisper's prompt")
    parser.add_argument("--verbose", action="store_true", help="print every utterance's transcript")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    tts = PiperTTS()
    if args.only in (None, "tts"):
        await bench_tts(tts, args.repeats)
    if args.only in (None, "stt"):
        await bench_stt(tts, args.repeats, args.concurrency, args.model, args.model_dir)
    if args.only in (None, "wer"):
        snrs = [None if s.strip() == "clean" else float(s) for s in args.snrs.split(",")]
        hints = {"on": [True], "off": [False], "both": [False, True]}[args.hints]
        await bench_wer(args.model, args.half, snrs, hints, args.model_dir)
    if args.only in (None, "own-voice"):
        await bench_wer_own_voice(tts, args.model, args.model_dir)
    if args.only in (None, "vad"):
        await bench_vad(tts)


if __name__ == "__main__":
    asyncio.run(main())
