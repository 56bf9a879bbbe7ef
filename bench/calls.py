"""N concurrent Twilio-protocol calls against one `voicectl serve` process, audio both ways.

    python bench/calls.py [--calls 200] [--duration 60] [--quick] [--json out.json]

The runtime runs on core 0 (taskset), the callers in one process on core 1. The runtime is the
real app (bridge, conversation pipeline, store, events) with bench/fake_engines.py's instant
engines: the agent's greeting is spoken with a generated speech-like WAV (a syllable-rate
amplitude envelope over a gliding tone plus noise: every 20 ms frame distinct) as long as the
call, so every call carries outbound audio for its whole length. The callers stream 20 ms
mu-law frames of quiet line noise inbound in real time for the whole duration, from one shared
absolute 20 ms clock: every frame goes through the pipeline's VAD, none starts a turn.

Measured at the caller (arrival = when the bytes reach the call's socket protocol; the callers'
own 20 ms clock runs half a frame off the runtime's grid), per call and over all calls (first 1 s of each call's outbound audio
skipped as warm-up, i.e. after the first frame arrived):
  jitter       |arrival gap - 20 ms| (p50/p99/max)
  sched dev    arrival - ideal absolute schedule (first-frame-anchored t0 + k * 20 ms, with t0
               the earliest the schedule was met), p50/p99/max
  late         arrival gaps > 40 ms
  dropped      frames missing from the sequence: each received frame is located in the WAV,
               so a skipped frame is counted even if the gaps look regular
Server: CPU share of its core over the steady window (all calls up), RSS delta / calls.
Generator: its CPU share of core 1 and the lag of its own 20 ms clock, so a generator that
cannot keep up is visible rather than blamed on the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import math
import random
import resource
import sys
import tempfile
import time
import wave
from array import array
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WARMUP_S = 1.0
TARGET_P99_MS = 20.0
FRAME_S = 0.020


def _pct(values, p: float) -> float | None:
    if not len(values):
        return None
    values = sorted(values)
    return values[min(len(values), max(1, math.ceil(p * len(values)))) - 1]


def make_line_noise(path: Path, seconds: float = 10.0, rate: int = 8000, seed: int = 11) -> None:
    """Quiet line noise (about -50 dBFS): what an open phone line sends while the caller listens."""
    rnd = random.Random(seed)
    samples = array("h", (int(rnd.gauss(0, 100)) for _ in range(int(seconds * rate))))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def make_wav(path: Path, seconds: float = 10.0, rate: int = 8000, seed: int = 7) -> None:
    """Speech-like test audio: 4-6 Hz syllable envelope, gliding 110-330 Hz tone + harmonics, noise."""
    rnd = random.Random(seed)
    out = array("h")
    phase = 0.0
    for i in range(int(seconds * rate)):
        t = i / rate
        f0 = 220 + 110 * math.sin(2 * math.pi * 0.37 * t)
        phase += 2 * math.pi * f0 / rate
        env = 0.5 + 0.5 * math.sin(2 * math.pi * 4.7 * t + math.sin(2 * math.pi * 0.9 * t))
        s = env * (0.55 * math.sin(phase) + 0.25 * math.sin(2 * phase) + 0.1 * math.sin(3 * phase))
        s += rnd.uniform(-0.04, 0.04)
        out.append(max(-32767, min(32767, int(s * 12000))))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(out.tobytes())


async def _generate(spec: dict) -> dict:
    import aiohttp
    import orjson
    from twilio_common import ACCOUNT_SID, AUTH_TOKEN, NUMBER

    from runtime.audio import read_wav, ulaw_frames
    from runtime.telephony.twilio.caller import TwilioCaller

    n, duration, ramp = spec["calls"], spec["duration"], spec["ramp"]
    wav_frames = ulaw_frames(read_wav(spec["wav"]))
    index = {base64.b64encode(f).decode(): i for i, f in enumerate(wav_frames)}
    loop_len = len(wav_frames)
    unique = len(index) == loop_len
    inbound = [base64.b64encode(f).decode() for f in ulaw_frames(read_wav(spec["inbound_wav"]))]
    inbound_len = len(inbound)
    connector = aiohttp.TCPConnector(limit=0)
    results: list[dict] = []
    legs: dict[int, list] = {}  # i -> [ws, stream_sid, seq, sent]
    gen = {"ticks": 0, "lag": array("d"), "stalls": []}

    async def inbound_clock(stop_at: float) -> None:
        """One shared absolute 20 ms clock sends every live call's inbound frame."""
        # Half a frame off the runtime's 20 ms grid: inbound and outbound bursts do not collide here.
        anchor = math.ceil(time.monotonic() / FRAME_S) * FRAME_S + FRAME_S / 2
        k = 0
        while time.monotonic() < stop_at:
            due = anchor + k * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = time.monotonic() - due
            gen["lag"].append(lag)
            if lag > 2 * FRAME_S:
                gen["stalls"].append(round(due - stop_at + ramp + duration + 1, 1))
            gen["ticks"] += 1
            k += 1
            for leg in list(legs.values()):
                ws, sid, seq = leg[0], leg[1], leg[2]
                leg[2] = seq + 1
                try:
                    await ws.send_str('{"event":"media","sequenceNumber":"' + str(seq + 3) + '","streamSid":"'
                                      + sid + '","media":{"track":"inbound","chunk":"' + str(seq + 1)
                                      + '","timestamp":"' + str(seq * 20) + '","payload":"'
                                      + inbound[seq % inbound_len] + '"}}')
                    leg[3] += 1
                except (ConnectionError, RuntimeError):
                    pass

    async with aiohttp.ClientSession(connector=connector) as http:
        caller = TwilioCaller(spec["url"], ACCOUNT_SID, AUTH_TOKEN, http=http)

        async def one(i: int) -> None:
            await asyncio.sleep(ramp * i / max(1, n))
            try:
                call_sid, answer = await caller.dial(NUMBER)
                if answer.rejected:
                    results.append({"ok": False, "why": f"rejected {answer.status}"})
                    return
                ws = await http.ws_connect(caller.ws_url(answer.stream_url), autoping=True, max_msg_size=0)
                sid = "MZ" + f"{i:032x}"
                await ws.send_str(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                                  .decode())
                await ws.send_str(orjson.dumps({
                    "event": "start", "sequenceNumber": "1", "streamSid": sid,
                    "start": {"streamSid": sid, "accountSid": ACCOUNT_SID, "callSid": call_sid,
                              "tracks": ["inbound"], "customParameters": answer.parameters,
                              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
                }).decode())
                leg = legs[i] = [ws, sid, 0, 0]
                # Arrival = when the socket's bytes reach the protocol (data_received), not when this
                # call's reader task gets its turn on the loop: less of the generator's own latency.
                rx = [0.0]
                proto = ws._writer.transport.get_protocol()
                data_received = proto.data_received

                def stamped(data: bytes, _rx: list = rx, _orig=data_received) -> None:
                    _rx[0] = time.monotonic()
                    _orig(data)

                proto.data_received = stamped
                arrivals = array("d")
                seqs = array("i")
                end_at = time.monotonic() + duration
                marks = 0
                closed_early = False

                async def read() -> None:
                    nonlocal marks, closed_early
                    async for msg in ws:
                        if msg.type is not aiohttp.WSMsgType.TEXT:
                            continue
                        now = rx[0] or time.monotonic()
                        data = orjson.loads(msg.data)
                        event = data.get("event")
                        if event == "media":
                            arrivals.append(now)
                            seqs.append(index.get(data["media"]["payload"], -1))
                        elif event == "mark":
                            marks += 1
                            await ws.send_str('{"event":"mark","streamSid":"' + sid + '","mark":{"name":"'
                                              + data["mark"]["name"] + '"}}')
                    closed_early = True

                reader = asyncio.get_running_loop().create_task(read())
                await asyncio.sleep(max(0.0, end_at - time.monotonic()))
                legs.pop(i, None)
                early = closed_early
                await ws.send_str(orjson.dumps({"event": "stop", "sequenceNumber": "999999", "streamSid": sid,
                                                "stop": {"accountSid": ACCOUNT_SID, "callSid": call_sid}})
                                  .decode())
                try:
                    await asyncio.wait_for(reader, 30)
                except TimeoutError:
                    reader.cancel()
                results.append({"ok": not early and ws.close_code == 1000, "close": ws.close_code,
                                "sent": leg[3], "arrivals": arrivals, "seqs": seqs, "marks": marks})
            except Exception as exc:  # noqa: BLE001 - a failed call is a figure, not a crash
                legs.pop(i, None)
                results.append({"ok": False, "why": f"{type(exc).__name__}: {exc}"})

        started = time.monotonic()
        cpu0 = time.process_time()
        clock = asyncio.get_running_loop().create_task(inbound_clock(started + ramp + duration + 1))
        await asyncio.gather(*(one(i) for i in range(n)))
        clock.cancel()
        wall = time.monotonic() - started
        gen_cpu = (time.process_time() - cpu0) / wall

    all_jit, all_dev, per_call = array("d"), array("d"), []
    late = dropped = received = 0
    late_times: Counter[float] = Counter()  # seconds since the first call started -> late gaps then
    for r in results:
        arr = r.get("arrivals")
        if arr is None or not len(arr):
            continue
        t_first = arr[0]
        keep = [k for k in range(len(arr)) if arr[k] - t_first >= WARMUP_S]
        if len(keep) < 2:
            continue
        a = [arr[k] for k in keep]
        s = [r["seqs"][k] for k in keep]
        gaps = [b - x for x, b in zip(a, a[1:], strict=False)]
        jit = [abs(g - FRAME_S) * 1000 for g in gaps]
        t0 = min(t - k * FRAME_S for k, t in enumerate(a))
        dev = [(t - t0 - k * FRAME_S) * 1000 for k, t in enumerate(a)]
        late_at = [round(a[k + 1] - started, 1) for k, g in enumerate(gaps) if g > 2 * FRAME_S]
        c_late = len(late_at)
        late_times.update(late_at)
        if unique:
            c_drop = sum((y - x - 1) % loop_len for x, y in zip(s, s[1:], strict=False) if x >= 0 and y >= 0)
        else:  # regular-gap estimate
            c_drop = max(0, round((a[-1] - a[0]) / FRAME_S) + 1 - len(a))
        late += c_late
        dropped += c_drop
        received += len(a)
        all_jit.extend(jit)
        all_dev.extend(dev)
        per_call.append({"frames": len(a), "jitter_p99_ms": _pct(jit, 0.99), "jitter_max_ms": max(jit),
                         "dev_p99_ms": _pct(dev, 0.99), "late": c_late, "dropped": c_drop})
    lag = sorted(x * 1000 for x in gen["lag"])
    worst = sorted(per_call, key=lambda c: c["jitter_p99_ms"])
    return {
        "calls": n, "sustained": sum(1 for r in results if r["ok"]), "wall_s": round(wall, 2),
        "frames_in_sent": sum(r.get("sent", 0) for r in results),
        "frames_out_received": sum(len(r.get("arrivals", ())) for r in results),
        "frames_out_measured": received, "sequence_check": unique,
        "late": late, "dropped": dropped,
        "jitter_p50_ms": _pct(all_jit, 0.5), "jitter_p99_ms": _pct(all_jit, 0.99),
        "jitter_max_ms": max(all_jit) if all_jit else None,
        "dev_p50_ms": _pct(all_dev, 0.5), "dev_p99_ms": _pct(all_dev, 0.99),
        "dev_max_ms": max(all_dev) if all_dev else None,
        "call_jitter_p99_median_ms": worst[len(worst) // 2]["jitter_p99_ms"] if worst else None,
        "call_jitter_p99_worst_ms": worst[-1]["jitter_p99_ms"] if worst else None,
        "calls_with_late": sum(1 for c in per_call if c["late"]),
        "calls_with_dropped": sum(1 for c in per_call if c["dropped"]),
        "generator_cpu_share": round(gen_cpu, 3),
        "generator_clock_lag_p99_ms": _pct(lag, 0.99), "generator_clock_lag_max_ms": lag[-1] if lag else None,
        "generator_stalls_at_s": gen["stalls"][:20],
        "generator_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "late_at_s": dict(sorted(late_times.items())[:20]),
        "errors": sorted({r["why"] for r in results if "why" in r})[:5],
        "per_call": per_call,
    }


def _server_pacing(db: Path) -> dict:
    """The runtime's own count (archived per call): frames it sent > 40 ms behind its clock.
    Tells a runtime stall from a generator stall (both show as late arrivals here)."""
    import sqlite3

    time.sleep(1.0)  # the last calls' archive writes
    try:
        with sqlite3.connect(db) as conn:
            rows = [json.loads(r[0] or "{}").get("media", {}) for r in conn.execute("SELECT summary FROM voice_calls")]
    except sqlite3.Error as exc:
        return {"server_late": None, "server_error": str(exc)}
    return {"server_calls_archived": len(rows), "server_late": sum(int(r.get("outbound_late", 0)) for r in rows),
            "server_calls_late": sum(1 for r in rows if r.get("outbound_late")),
            "server_backlogged": sum(int(r.get("outbound_backlogged", 0)) for r in rows)}


def generator_main() -> int:
    spec = json.loads(sys.stdin.read())
    # The load generator, not the runtime under test: no cyclic-GC pauses in the arrival stamps
    # (it lives one run; its peak RSS is reported).
    gc.disable()
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
    from twilio_common import Runtime, proc_cpu_s, proc_rss_kb, stall_figures

    with tempfile.TemporaryDirectory(prefix="voicectl-bench-wav-") as tmp:
        wav = Path(tmp) / "speech-like.wav"
        make_wav(wav, seconds=args.duration + ramp + 10)
        noise = Path(tmp) / "line-noise.wav"
        make_line_noise(noise)
        with Runtime(pin=not args.no_pin, clip=wav,
                     agent={"greeting": "Hello.", "turn": {"silence_reprompt_s": 120}}) as rt:
            pid = rt.proc.pid
            rss0 = proc_rss_kb(pid)
            gen = rt.generator(Path(__file__), json.dumps(
                {"url": rt.url, "calls": args.calls, "duration": args.duration, "ramp": ramp, "wav": str(wav),
                 "inbound_wav": str(noise)}))
            time.sleep(ramp + 1.5)
            cpu0, gcpu0, t0 = proc_cpu_s(pid), proc_cpu_s(gen.pid), time.monotonic()
            peak_rss = rss0
            while gen.poll() is None and time.monotonic() - t0 < max(1.0, args.duration - ramp - 2):
                peak_rss = max(peak_rss, proc_rss_kb(pid))
                time.sleep(0.5)
            cpu1, gcpu1, t1 = proc_cpu_s(pid), proc_cpu_s(gen.pid), time.monotonic()
            out = gen.stdout.read()
            gen.wait(args.duration + 120)
            stalls = stall_figures(rt.url)
            server_side = _server_pacing(rt.state / "voicectl.db")
    res = json.loads(out.strip().splitlines()[-1])
    steady_cpu = (cpu1 - cpu0) / max(1e-6, t1 - t0)
    res.update(server_side)
    res["runtime_stalls"] = stalls
    res.update({
        "duration_s": args.duration, "ramp_s": ramp, "server_cpu_core_share": round(steady_cpu, 3),
        "server_cpu_ms_per_call_s": round(steady_cpu * 1000 / max(1, args.calls), 3),
        "generator_cpu_steady_share": round((gcpu1 - gcpu0) / max(1e-6, t1 - t0), 3),
        "rss_idle_mb": round(rss0 / 1024, 1), "rss_peak_mb": round(peak_rss / 1024, 1),
        "rss_per_call_kb": round((peak_rss - rss0) / max(1, args.calls), 1),
    })
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    cols = ("calls", "sustained", "jitter_p50_ms", "jitter_p99_ms", "jitter_max_ms", "dev_p99_ms", "late",
            "dropped", "server_cpu_core_share", "rss_per_call_kb", "generator_cpu_steady_share")
    print("\n" + "  ".join(f"{c:>13}" for c in cols))
    print("  ".join(f"{fmt(res[c]):>13}" for c in cols))
    print(f"inbound frames sent {res['frames_in_sent']}, outbound frames received {res['frames_out_received']} "
          f"(measured after {WARMUP_S:.0f} s warm-up: {res['frames_out_measured']}, sequence-checked: "
          f"{res['sequence_check']}); dev p50/max {fmt(res['dev_p50_ms'])}/{fmt(res['dev_max_ms'])} ms; per-call "
          f"jitter p99 median/worst {fmt(res['call_jitter_p99_median_ms'])}/{fmt(res['call_jitter_p99_worst_ms'])} "
          f"ms; calls with late/dropped {res['calls_with_late']}/{res['calls_with_dropped']}; server "
          f"{res['server_cpu_ms_per_call_s']} ms CPU per call-second; generator clock lag p99/max "
          f"{fmt(res['generator_clock_lag_p99_ms'])}/{fmt(res['generator_clock_lag_max_ms'])} ms; "
          f"errors {res['errors'] or 'none'}")
    print(f"runtime-side late frames (sent > 40 ms behind its own clock, from the call archive): "
          f"{res.get('server_late')} in {res.get('server_calls_late')} of {res.get('server_calls_archived')} "
          f"calls; backlogged drops "
          f"{res.get('server_backlogged')}")
    print(f"runtime stalls (its /metrics, whole run): {stalls}")
    if res["generator_stalls_at_s"]:
        print(f"generator clock stalls > 40 ms at (s): {res['generator_stalls_at_s']}")
    if res["late_at_s"]:
        print(f"late gaps by time since the first call started (s: count): {res['late_at_s']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    held = res["late"] == 0 and res["dropped"] == 0 and (res["jitter_p99_ms"] or 0) < TARGET_P99_MS
    print(f"target (all sustained, p99 jitter < {TARGET_P99_MS:.0f} ms, 0 late, 0 dropped): "
          f"{'held' if held and res['sustained'] == res['calls'] else 'NOT held'}")
    return 0 if res["sustained"] == res["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
