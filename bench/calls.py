"""N concurrent Twilio-protocol calls against one `voicectl serve` process.

    python bench/calls.py [--calls 200] [--duration 60] [--quick] [--json out.json]

The runtime runs on core 0, the callers (runtime.telephony.twilio_caller) in one process on
core 1. Every call streams 20 ms mu-law frames in real time for the whole duration (inbound)
and receives the runtime's outbound audio: until the pipeline issue lands that is the packaged
greeting (~4.6 s, played once per call), so the outbound pacing figures cover the first seconds
of every call, overlapping because call starts are spread over a short ramp. Reported: calls
sustained (connected the whole time, closed 1000), outbound pacing jitter (inter-arrival at
the caller minus 20 ms, p50/p99 of the absolute value), late (> 40 ms gap) and dropped
(greeting frames never received) frames, server CPU (per core, per call) and RSS per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values), max(1, math.ceil(p * len(values)))) - 1]


async def _generate(spec: dict) -> dict:
    import aiohttp
    from twilio_common import ACCOUNT_SID, AUTH_TOKEN, NUMBER

    from runtime.pipeline.audio import GREETING_WAV, read_wav, ulaw_frames
    from runtime.telephony.twilio_caller import TwilioCaller

    n, duration, ramp = spec["calls"], spec["duration"], spec["ramp"]
    greeting = ulaw_frames(read_wav(GREETING_WAV))
    frames = (greeting * (int(duration / 0.02) // len(greeting) + 1))[: int(duration / 0.02)]
    connector = aiohttp.TCPConnector(limit=0)
    results: list[dict] = []
    async with aiohttp.ClientSession(connector=connector) as http:
        caller = TwilioCaller(spec["url"], ACCOUNT_SID, AUTH_TOKEN, http=http)

        async def one(i: int) -> None:
            await asyncio.sleep(ramp * i / max(1, n))
            try:
                call_sid, answer = await caller.dial(NUMBER)
                if answer.rejected:
                    results.append({"ok": False, "why": f"rejected {answer.status}"})
                    return
                leg = await caller.open_stream(call_sid, answer)
                await leg.stream(frames)
                closed_early = leg.closed.is_set()
                await leg.stop(ACCOUNT_SID, call_sid)
                await leg.wait_closed(30)
                r = leg.result
                gaps = [b - a for a, b in zip(r.arrivals, r.arrivals[1:], strict=False)]
                results.append({"ok": not closed_early and r.close_code == 1000, "sent": r.frames_sent,
                                "received": r.frames_received, "gaps": gaps, "marks": r.marks,
                                "close": r.close_code})
            except Exception as exc:  # noqa: BLE001 - a failed call is a figure, not a crash
                results.append({"ok": False, "why": f"{type(exc).__name__}: {exc}"})

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.monotonic() - started
    gaps = [abs(g - 0.02) * 1000 for r in results for g in r.get("gaps", ())]
    expected = len(greeting)
    return {
        "calls": n, "sustained": sum(1 for r in results if r["ok"]), "wall_s": round(wall, 2),
        "frames_in_sent": sum(r.get("sent", 0) for r in results),
        "frames_out_received": sum(r.get("received", 0) for r in results),
        "dropped": sum(max(0, expected - r.get("received", 0)) for r in results if "received" in r),
        "late": sum(1 for r in results for g in r.get("gaps", ()) if g > 0.040),
        "jitter_p50_ms": _pct(gaps, 0.5), "jitter_p99_ms": _pct(gaps, 0.99),
        "jitter_max_ms": max(gaps) if gaps else None,
        "errors": sorted({r["why"] for r in results if "why" in r})[:5],
    }


def generator_main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_generate(spec))), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--ramp", type=float, default=None, help="spread call starts over this many seconds")
    parser.add_argument("--quick", action="store_true", help="10 s, 10 calls")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generator:
        return generator_main()
    if args.quick:
        args.calls, args.duration = min(args.calls, 10), 10.0
    ramp = args.ramp if args.ramp is not None else min(5.0, args.duration / 4)
    from twilio_common import Runtime, proc_cpu_s, proc_rss_kb

    with Runtime(pin=not args.no_pin) as rt:
        pid = rt.proc.pid
        rss0 = proc_rss_kb(pid)
        gen = rt.generator(Path(__file__), json.dumps(
            {"url": rt.url, "calls": args.calls, "duration": args.duration, "ramp": ramp}))
        time.sleep(ramp + 1)
        cpu0, t0 = proc_cpu_s(pid), time.monotonic()
        peak_rss = rss0
        while gen.poll() is None and time.monotonic() - t0 < max(1.0, args.duration - ramp - 2):
            peak_rss = max(peak_rss, proc_rss_kb(pid))
            time.sleep(0.5)
        cpu1, t1 = proc_cpu_s(pid), time.monotonic()
        out = gen.stdout.read()
        gen.wait(args.duration + 120)
    res = json.loads(out.strip().splitlines()[-1])
    steady_cpu = (cpu1 - cpu0) / max(1e-6, t1 - t0)
    res.update({
        "duration_s": args.duration, "ramp_s": ramp, "server_cpu_core_share": round(steady_cpu, 3),
        "server_cpu_ms_per_call_s": round(steady_cpu * 1000 / max(1, args.calls), 3),
        "rss_idle_mb": round(rss0 / 1024, 1), "rss_peak_mb": round(peak_rss / 1024, 1),
        "rss_per_call_kb": round((peak_rss - rss0) / max(1, args.calls), 1),
    })
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    cols = ("calls", "sustained", "jitter_p50_ms", "jitter_p99_ms", "jitter_max_ms", "late", "dropped",
            "server_cpu_core_share", "server_cpu_ms_per_call_s", "rss_per_call_kb", "rss_peak_mb")
    print("\n" + "  ".join(f"{c:>12}" for c in cols))
    print("  ".join(f"{fmt(res[c]):>12}" for c in cols))
    print(f"inbound frames sent {res['frames_in_sent']}, outbound frames received {res['frames_out_received']}, "
          f"server core share (steady window) {res['server_cpu_core_share']}, errors {res['errors'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if res["sustained"] == res["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
