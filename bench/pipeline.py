"""The conversation pipeline under load: the runtime's own turn latency, barge-in reaction, and
voice-to-voice latency with the offline stack.

Two parts, each against a real runtime process pinned to core 0, with the callers (Twilio
protocol, real-time audio both ways) in a generator process pinned to core 1 (and a
micro-benchmark, ``resample``, in this process):

``fake``   the runtime with instant engines (bench/fake_engines.py): N concurrent calls, each
           saying a line (speech made by the local TTS) and waiting for the reply, T turns; on
           every other turn the caller talks over the reply. Figures: ``first_frame`` (the
           end-of-turn decision -> the first reply frame sent, from the runtime's own
           ``turn.latency`` events: its own time, the engines take none) p50/p99, and barge-in
           reaction (the caller's first frame with speech energy -> Twilio ``clear`` received, at
           the caller)
           p50/p99. Targets: first_frame p50 < 5 ms, p99 < 20 ms at 100 calls; barge-in under
           the minimum interruption length (300 ms) + 40 ms.
``offline`` ``voicectl serve`` with the offline stack (faster-whisper, rules brain, piper) and the
           demo's booking agent: for each concurrency level, that many calls book a table at
           once. Figures: voice-to-voice per turn (the caller's last speech frame -> the first
           reply frame, from ``turn.latency`` ``v2v``), STT/TTS stages, runtime CPU per call;
           calls per core = the most concurrent calls with v2v p50 under 900 ms.
``resample`` (not in ``all``) the old ``audioop.ratecv`` and the pipeline's ``Resampler`` on each
           rate pair of the audio path, fed 20 ms frames: CPU per frame (best of 5 runs of 2000
           frames), the level of a tone at 1.5x the target Nyquist (for upsampling: the image
           of a tone at 0.8x the source Nyquist) and the output's delay behind the input.

    .venv/bin/python bench/pipeline.py                        # both parts, default sizes
    .venv/bin/python bench/pipeline.py --part fake --calls 100 --turns 6
    .venv/bin/python bench/pipeline.py --part offline --levels 1,2,3,4
    .venv/bin/python bench/pipeline.py --part offline --levels 2 --rounds 5 --no-pin --stt-model base
    .venv/bin/python bench/pipeline.py --part offline --levels 2 --rounds 5 --no-pin --stt-model base --interim
    .venv/bin/python bench/pipeline.py --part resample
    .venv/bin/python bench/pipeline.py --quick               # a smoke run (tests/bench/test_bench_pipeline_smoke.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from twilio_common import ACCOUNT_SID, AUTH_TOKEN, NUMBER, Runtime, _log, proc_cpu_s  # noqa: E402

FAKE_GREETING = "Hello."
LINE = "I'd like to book a table for two at seven."
MIN_INTERRUPTION_MS = 300  # the agent versions' default (turn.min_interruption_ms)
BOOKING_LINES = ("I'd like to book a table for two at seven.", "Yes please.", "No thanks, goodbye.")


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(p * len(ordered))) - 1))], 1)


def runtime(fake: bool, pin: bool, stt_model: str | None = None, interim_hook: str | None = None,
            local_calls: int | None = None) -> Runtime:
    """The runtime under test: instant engines and a plain agent, or the offline stack and the
    demo's booking agent (``interim_hook``: a webhook URL taking the tenant's
    ``transcript.interim``, so the offline STT decodes partials while callers speak;
    ``local_calls``: the local admission budget instead of the model's calls per core)."""
    if fake:
        return Runtime(pin=pin, instant=True, agent={"greeting": FAKE_GREETING, "turn": {"silence_reprompt_s": 120}})
    from runtime.providers.llm.rules import DEMO_BOOKING_RULES
    from voicectl.demo import GREETING, PROMPT, TOOLS

    return Runtime(pin=pin, agent={"system_prompt": PROMPT, "greeting": GREETING, "llm": {"provider": "rules"},
                                   "tools": TOOLS, "rules": DEMO_BOOKING_RULES},
                   providers={"local": {"stt_model": stt_model}} if stt_model else None, interim_hook=interim_hook,
                   limits={"local_calls": local_calls} if local_calls else None)


def generate(rt: Runtime, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the callers (this script with --generator) pinned to the generator core."""
    proc = rt.generator(Path(__file__).resolve(), json.dumps({**spec, "url": rt.url}))
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"generator failed (exit {proc.returncode}); see its stderr above")
    return json.loads(out)


def turn_latency(rt: Runtime) -> list[dict[str, Any]]:
    """Every ``turn.latency`` event the runtime stored."""
    with sqlite3.connect(rt.state / "voicectl.db") as db:
        rows = db.execute("SELECT payload FROM call_events WHERE topic = 'turn.latency'").fetchall()
    return [json.loads(r[0]) for r in rows]


# The callers (generator process)


async def _speech(text: str) -> Any:
    from runtime.audio import Audio
    from runtime.providers.tts.local import PiperTTS

    chunks = [c async for c in PiperTTS().synthesize(text)]
    return Audio(b"".join(c.pcm for c in chunks), chunks[0].rate)


def speech_onset_s(frames: list[bytes], threshold: int = 300) -> float:
    """Seconds of lead-in before the first frame with speech energy (TTS output starts with a
    little silence; barge-in is timed from the first frame a caller's voice is in)."""
    from runtime.audio import rms, ulaw_to_pcm16

    for i, frame in enumerate(frames):
        if rms(ulaw_to_pcm16(frame)) > threshold:
            return i * 0.020
    return 0.0


async def _fake_call(url: str, frames: list[bytes], turns: int, stagger_s: float) -> dict[str, Any]:
    """Say the line, wait for the reply; every other turn talk over the reply 0.4 s into it."""
    from runtime.telephony.scripted_caller import OpenLine, agent_quiet
    from runtime.telephony.twilio.caller import TwilioCaller

    await asyncio.sleep(stagger_s)
    onset = speech_onset_s(frames)
    barge: list[float] = []
    async with TwilioCaller(url, ACCOUNT_SID, AUTH_TOKEN) as caller:
        call_sid, answer = await caller.dial(NUMBER)
        if answer.rejected:
            return {"error": f"rejected: {answer.text[:200]}"}
        leg = await caller.open_stream(call_sid, answer)
        line = OpenLine(leg)
        try:
            await agent_quiet(leg, 0.5, 0.0, 20)  # the greeting
            for turn in range(turns):
                line.say(frames)
                await line.speaking_done.wait()
                ended = time.monotonic()
                if turn % 2 == 1:  # talk over the reply once it is playing
                    while not (leg.result.arrivals and leg.result.arrivals[-1] > ended) and not leg.closed.is_set():
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(0.4)
                    clears = leg.result.clears
                    line.say(frames)
                    while line.first_frame_sent_at is None:
                        await asyncio.sleep(0.002)
                    spoke = line.first_frame_sent_at + onset
                    deadline = time.monotonic() + 3
                    while leg.result.clears == clears and time.monotonic() < deadline:
                        await asyncio.sleep(0.002)
                    if leg.result.clears > clears:
                        barge.append((time.monotonic() - spoke) * 1000)
                    await line.speaking_done.wait()
                await agent_quiet(leg, 0.6, time.monotonic(), 20)
            await leg.stop(caller.account_sid, call_sid)
            await leg.wait_closed(10)
        finally:
            await line.close()
    return {"barge_in_ms": barge, "clears": leg.result.clears}


async def _booking_call(url: str, lines: list[tuple[str, Any]], stagger_s: float) -> dict[str, Any]:
    from runtime.telephony.scripted_caller import scripted_call
    from runtime.telephony.twilio.caller import TwilioCaller

    await asyncio.sleep(stagger_s)
    async with TwilioCaller(url, ACCOUNT_SID, AUTH_TOKEN) as caller:
        result = await scripted_call(caller, NUMBER, lines, quiet_s=0.9)
    if result.call.answer.rejected or len(result.turns) < len(lines):
        # A call the runtime turned away (busy: beyond its local capacity) or ended early is no
        # booking: count it as failed rather than report the latency of fewer calls.
        said = "rejected" if result.call.answer.rejected else f"{len(result.turns)} of {len(lines)} lines said"
        return {"error": f"call not completed: {said}"}
    return {"heard_v2v_ms": [t.voice_to_voice_ms for t in result.turns if t.voice_to_voice_ms is not None],
            "hung_up_by": result.hung_up_by}


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    from runtime.audio import ulaw_frames

    if spec["part"] == "fake":
        frames = ulaw_frames(await _speech(LINE))
        calls = [_fake_call(spec["url"], frames, spec["turns"], i * spec["ramp_s"] / spec["calls"])
                 for i in range(spec["calls"])]
    else:
        lines = [(text, await _speech(text)) for text in BOOKING_LINES]
        results = []
        for _ in range(spec.get("rounds", 1)):  # rounds of ``calls`` calls at once, one after the other
            calls = [_booking_call(spec["url"], lines, i * 0.3) for i in range(spec["calls"])]
            results += await asyncio.gather(*calls, return_exceptions=True)
        return _summary(results)
    return _summary(await asyncio.gather(*calls, return_exceptions=True))


def _summary(results: list[Any]) -> dict[str, Any]:
    errors = [repr(r) if isinstance(r, BaseException) else r["error"] for r in results
              if isinstance(r, BaseException) or "error" in r]
    ok = [r for r in results if isinstance(r, dict) and "error" not in r]
    out: dict[str, Any] = {"calls": len(results), "errors": errors[:5], "failed": len(errors)}
    for key in ("barge_in_ms", "heard_v2v_ms"):
        out[key] = [v for r in ok for v in r.get(key, [])]
    return out


def generator_main() -> int:
    spec = json.loads(sys.stdin.read())  # written by Runtime.generator
    print(json.dumps(asyncio.run(_generate(spec))))
    return 0


# Orchestration


def _stage(events: list[dict[str, Any]], key: str) -> list[float]:
    return [e[key] for e in events if e.get(key) is not None]


def run_fake(args: argparse.Namespace) -> dict[str, Any]:
    with runtime(True, not args.no_pin) as rt:
        cpu0 = proc_cpu_s(rt.proc.pid)
        began = time.monotonic()
        gen = generate(rt, {"part": "fake", "calls": args.calls, "turns": args.turns, "ramp_s": args.ramp})
        wall = time.monotonic() - began
        cpu = proc_cpu_s(rt.proc.pid) - cpu0
        events = turn_latency(rt)
    first = _stage(events, "first_frame_ms")
    return {
        "part": "fake", "calls": args.calls, "turns_per_call": args.turns, "failed_calls": gen["failed"],
        "errors": gen["errors"], "turns": len(first),
        "first_frame_p50_ms": pct(first, 0.5), "first_frame_p99_ms": pct(first, 0.99),
        "first_frame_max_ms": pct(first, 1.0),
        "barge_ins": len(gen["barge_in_ms"]), "barge_in_p50_ms": pct(gen["barge_in_ms"], 0.5),
        "barge_in_p99_ms": pct(gen["barge_in_ms"], 0.99),
        # After the frame that completes the minimum interruption length was sent (it goes out
        # MIN_INTERRUPTION_MS - one frame after the first voiced frame): the runtime's reaction.
        "barge_in_over_min_p50_ms": pct([v - (MIN_INTERRUPTION_MS - 20) for v in gen["barge_in_ms"]], 0.5),
        "barge_in_over_min_p99_ms": pct([v - (MIN_INTERRUPTION_MS - 20) for v in gen["barge_in_ms"]], 0.99),
        "server_cpu_share": round(cpu / wall, 3),
    }


class InterimSink:
    """A webhook receiver on loopback that counts the ``transcript.interim`` deliveries."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.received = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run_offline(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    sink = InterimSink() if args.interim else None
    for level in args.levels:
        received = sink.received if sink else 0
        with runtime(False, not args.no_pin, args.stt_model, sink.url if sink else None, args.local_calls) as rt:
            cpu0 = proc_cpu_s(rt.proc.pid)
            began = time.monotonic()
            gen = generate(rt, {"part": "offline", "calls": level, "rounds": args.rounds})
            wall = time.monotonic() - began
            cpu = proc_cpu_s(rt.proc.pid) - cpu0
            events = turn_latency(rt)
        v2v = _stage(events, "v2v_ms")
        rows.append({
            "part": "offline", "concurrent_calls": level, "failed_calls": gen["failed"], "errors": gen["errors"],
            "turns": len(v2v), "v2v_p50_ms": pct(v2v, 0.5), "v2v_p95_ms": pct(v2v, 0.95),
            "v2v_max_ms": pct(v2v, 1.0),
            "stt_p50_ms": pct(_stage(events, "stt_ms"), 0.5),
            "tts_first_audio_p50_ms": pct(_stage(events, "tts_first_audio_ms"), 0.5),
            "heard_v2v_p50_ms": pct(gen["heard_v2v_ms"], 0.5),
            "server_cpu_s_per_call": round(cpu / (level * args.rounds), 2), "server_cpu_share": round(cpu / wall, 3),
            "interim_webhooks": sink.received - received if sink else None,
        })
    return rows


# Resampling (in this process)

RESAMPLE_PAIRS = ((8000, 16000), (16000, 8000), (22050, 8000), (24000, 8000), (22050, 16000), (24000, 16000),
                  (48000, 8000), (48000, 16000))


def _ratecv(src: int, dst: int) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    state = None

    def convert(pcm: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(pcm, 2, 1, src, dst, state)
        return out
    return convert


def _frames_of(x: Any, rate: int) -> list[bytes]:
    pcm, step = x.astype("<i2").tobytes(), rate * 2 // 50
    return [pcm[i:i + step] for i in range(0, len(pcm) - step + 1, step)]


def _us_per_frame(make: Any, src: int, dst: int) -> float:
    import numpy as np

    t = np.arange(src) / src
    frames = _frames_of(6000 * np.sin(2 * np.pi * 440 * t) + 2000 * np.sin(2 * np.pi * 1900 * t), src)[:50]
    best = float("inf")
    for _ in range(5):
        convert = make(src, dst)
        convert(frames[0])
        began = time.perf_counter()
        for k in range(2000):
            convert(frames[k % 50])
        best = min(best, (time.perf_counter() - began) / 2000 * 1e6)
    return best


def _rejection_db(make: Any, src: int, dst: int) -> float:
    """Downsampling: the output level of a tone at 1.5x the target Nyquist (-83 dB is the floor:
    silence, under half an LSB); upsampling: the image of a tone at 0.8x the source Nyquist
    against the tone (dB)."""
    import numpy as np

    hz = min(0.75 * dst, 0.45 * src) if dst < src else 0.4 * src
    x = 10000 * np.sin(2 * np.pi * hz * np.arange(src) / src)
    convert = make(src, dst)
    y = np.frombuffer(b"".join(convert(f) for f in _frames_of(x, src)), "<i2").astype(float)
    y = y[len(y) // 4: -len(y) // 4]
    if dst < src:
        return round(20 * np.log10(max(float(np.sqrt((y ** 2).mean())), 0.5) / (10000 / np.sqrt(2))), 1)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    image = spectrum[np.fft.rfftfreq(len(y), 1 / dst) > src / 2 + 100].max()
    return round(20 * np.log10(max(image, 1e-9) / spectrum.max()), 1)


def _delay_ms(make: Any, src: int, dst: int) -> float:
    """How far the output runs behind the input after 1 s of 20 ms frames."""
    import numpy as np

    convert = make(src, dst)
    out = sum(len(convert(f)) // 2 for f in _frames_of(np.zeros(src), src))
    return round((dst - out) / dst * 1000, 2)


def run_resample() -> list[dict[str, Any]]:
    from runtime.audio import Resampler

    rows = []
    for src, dst in RESAMPLE_PAIRS:
        rows.append({
            "pair": f"{src}->{dst}",
            "ratecv_us": round(_us_per_frame(_ratecv, src, dst), 2), "new_us": round(_us_per_frame(Resampler, src, dst), 2),
            "ratecv_rejection_db": _rejection_db(_ratecv, src, dst), "new_rejection_db": _rejection_db(Resampler, src, dst),
            "new_delay_ms": _delay_ms(Resampler, src, dst),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=("fake", "offline", "resample", "all"), default="all")
    parser.add_argument("--calls", type=int, default=100, help="fake part: concurrent calls")
    parser.add_argument("--turns", type=int, default=6, help="fake part: caller turns per call")
    parser.add_argument("--ramp", type=float, default=5.0, help="fake part: seconds over which calls start")
    parser.add_argument("--levels", default="1,2,3,4", help="offline part: concurrency levels")
    parser.add_argument("--rounds", type=int, default=1,
                        help="offline part: rounds of calls per level, one after the other (more turns for the p95)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin runtime and callers to cores")
    parser.add_argument("--stt-model", choices=("base", "tiny.en"), help="offline part: providers.local.stt_model (default: the runtime's, base)")
    parser.add_argument("--local-calls", type=int, metavar="N",
                        help="offline part: limits.local_calls (to measure beyond the model's calls per core)")
    parser.add_argument("--interim", action="store_true",
                        help="offline part: a webhook takes transcript.interim, so partials are decoded too")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 fake calls x 2 turns, offline at 1")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.generator:
        return generator_main()
    if args.quick:
        args.calls, args.turns, args.ramp, args.levels = 4, 2, 0.5, "1"
    args.levels = [int(x) for x in str(args.levels).split(",") if x]
    out: dict[str, Any] = {}
    if args.part == "resample":
        out["resample"] = run_resample()
        print(f"{'rate pair':14} {'ratecv us/frame':>16} {'new us/frame':>13} {'ratecv tone dB':>15} {'new tone dB':>12} "
              f"{'new delay ms':>13}")
        for r in out["resample"]:
            print(f"{r['pair']:14} {r['ratecv_us']:16.2f} {r['new_us']:13.2f} {r['ratecv_rejection_db']:15.1f} "
                  f"{r['new_rejection_db']:12.1f} {r['new_delay_ms']:13.2f}", flush=True)
    if args.part in ("fake", "all"):
        _log(f"fake engines: {args.calls} calls x {args.turns} turns ...")
        out["fake"] = run_fake(args)
        f = out["fake"]
        print(f"fake engines, {f['calls']} calls ({f['failed_calls']} failed), {f['turns']} turns: endpoint -> "
              f"first frame p50 {f['first_frame_p50_ms']} ms, p99 {f['first_frame_p99_ms']} ms, max "
              f"{f['first_frame_max_ms']} ms; barge-in (first voiced frame -> clear) p50 {f['barge_in_p50_ms']} ms, "
              f"p99 {f['barge_in_p99_ms']} ms over {f['barge_ins']} (after the {MIN_INTERRUPTION_MS} ms minimum: "
              f"p50 {f['barge_in_over_min_p50_ms']}, p99 {f['barge_in_over_min_p99_ms']} ms); runtime core "
              f"{f['server_cpu_share']:.0%}",
              flush=True)
    if args.part in ("offline", "all"):
        out["offline"] = []
        for level in args.levels:
            _log(f"offline stack: {level} concurrent booking calls ...")
            args_one = argparse.Namespace(**{**vars(args), "levels": [level]})
            row = run_offline(args_one)[0]
            out["offline"].append(row)
            print(f"offline stack, {level} concurrent calls ({row['failed_calls']} failed), {row['turns']} turns: "
                  f"voice to voice p50 {row['v2v_p50_ms']} ms, p95 {row['v2v_p95_ms']} ms, max {row['v2v_max_ms']} "
                  f"ms (as heard p50 {row['heard_v2v_p50_ms']}); STT p50 {row['stt_p50_ms']} ms, TTS first audio "
                  f"p50 {row['tts_first_audio_p50_ms']} ms; runtime {row['server_cpu_s_per_call']} CPU-s per call, "
                  f"core {row['server_cpu_share']:.0%}"
                  + (f"; {row['interim_webhooks']} transcript.interim delivered" if args.interim else ""), flush=True)
            for error in row["errors"]:
                print(f"  failed: {error}")
        held = [r["concurrent_calls"] for r in out["offline"]
                if r["failed_calls"] == 0 and r["v2v_p50_ms"] is not None and r["v2v_p50_ms"] < 900]
        out["offline_calls_per_core"] = max(held) if held else 0
        print(f"offline calls per runtime core with voice-to-voice p50 < 900 ms: {out['offline_calls_per_core']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
