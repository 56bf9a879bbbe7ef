"""Signed Twilio voice webhooks per second against one `voicectl serve` process (SQLite).

    python bench/webhooks.py [--rates 250,500,1000,1500] [--step 10] [--quick] [--json out.json]
                             [--profile PREFIX] [--quiet-wait S]

Open loop: each webhook is scheduled on an absolute clock at the offered rate and its latency
runs from the scheduled time to the end of the response (no coordinated omission). Every
webhook is a new CallSid for a routed number: signature check, routing, a call row and its
voice.call.started event, TwiML with a stream token. As on a real box, calls also end:
``--hold`` seconds after its voice webhook each call gets its signed status callback
(``CallStatus=completed``), so the live set stays at rate x hold calls instead of growing
without bound (``--hold 0`` keeps every call ringing until the stream-start timeout).
Status callbacks are timed and reported separately. The runtime is on core 0, the generator
(aiohttp client, one process) on core 1; its send lag and CPU (``gen%``) are reported so a saturated
generator shows, and ``oth%`` is the CPU everything else on the box used meanwhile (``noisy`` above 10 % of a core:
not comparable). A full run first waits (``--quiet-wait``, 60 s) for the box to go idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calls import _pct  # noqa: E402


async def _step(caller, rate: float, seconds: float, hold: float = 0.0) -> dict:
    from twilio_common import NUMBER

    from runtime.telephony.twilio.caller import new_sid

    n = int(rate * seconds)
    lat: list[float] = []
    lags: list[float] = []
    status_lat: list[float] = []
    errors: dict[str, int] = {}
    enders: list[asyncio.Task] = []
    prepared = []
    for _ in range(n):
        params = caller.voice_params(NUMBER, "+15550001111", new_sid("CA"))
        prepared.append((params, caller.sign("/webhooks/twilio/voice", params.items())))

    async def one(due: float, params: dict, signature: str) -> None:
        lags.append(time.monotonic() - due)
        try:
            status, _ = await caller.post_signed("/webhooks/twilio/voice", params, signature=signature)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                return
            lat.append(time.monotonic() - due)
            if hold > 0:
                enders.append(asyncio.create_task(end(due + hold, params["CallSid"])))
        except Exception as exc:  # noqa: BLE001
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async def end(due: float, call_sid: str) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        started = time.monotonic()
        try:
            status = await caller.status(call_sid, "completed", NUMBER)
            if status >= 300:
                errors[f"status:{status}"] = errors.get(f"status:{status}", 0) + 1
            else:
                status_lat.append(time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001
            errors["status:" + type(exc).__name__] = errors.get("status:" + type(exc).__name__, 0) + 1

    start = time.monotonic() + 0.05
    tasks = []
    for i, (params, signature) in enumerate(prepared):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, params, signature)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    await asyncio.gather(*enders)
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {"offered": rate, "sent": n, "ok": len(lat), "achieved": round(len(lat) / elapsed, 1),
            "p50_ms": ms(_pct(lat, 0.5)), "p99_ms": ms(_pct(lat, 0.99)), "max_ms": ms(max(lat) if lat else None),
            "send_lag_p99_ms": ms(_pct(lags, 0.99)), "status_p99_ms": ms(_pct(status_lat, 0.99)),
            "errors": errors}


async def _generate(spec: dict) -> list[dict]:
    import gc

    import aiohttp
    from twilio_common import ACCOUNT_SID, AUTH_TOKEN

    from runtime.telephony.twilio.caller import TwilioCaller

    # The generator's own GC passes (its prepared requests and tasks) would stall it and count as
    # server latency (latency runs from the scheduled time): it collects only between steps.
    gc.disable()
    steps = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        caller = TwilioCaller(spec["url"], ACCOUNT_SID, AUTH_TOKEN, http=http)
        await _step(caller, 20, 0.5, spec["hold"])  # warm-up
        for rate in spec["rates"]:
            gc.collect()
            steps.append(await _step(caller, rate, spec["step"], spec["hold"]))
            print(json.dumps(steps[-1]), flush=True)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000,1500")
    parser.add_argument("--step", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="100 and 200/s, 2 s each")
    parser.add_argument("--hold", type=float, default=1.0,
                        help="seconds until each call's status callback ends it (0: never)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--quiet-wait", type=float,
                        help="wait up to this many seconds for the machine to go idle first (default 60, quick 0)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", metavar="PREFIX",
                        help="sample the server with py-spy into PREFIX.sqlite.txt (collapsed stacks)")
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generator:
        asyncio.run(_generate(json.loads(sys.stdin.read())))
        return 0
    rates = [100, 200] if args.quick else [int(r) for r in args.rates.split(",")]
    step = 2.0 if args.quick else args.step
    from api import _start_profiler, _stop_profiler, _wait_quiet
    from loadgen import busy_cpu_s
    from twilio_common import GENERATOR_CORE, Runtime, proc_cpu_s

    _wait_quiet((0.0 if args.quick else 60.0) if args.quiet_wait is None else args.quiet_wait)
    rows = []
    with Runtime(pin=not args.no_pin) as rt:
        profiler = _start_profiler(rt.proc.pid, args, "sqlite", None if args.no_pin else GENERATOR_CORE)
        try:
            gen = rt.generator(Path(__file__), json.dumps({"url": rt.url, "rates": rates, "step": step, "hold": args.hold}))
            cpu, gen_cpu, busy = proc_cpu_s(rt.proc.pid), proc_cpu_s(gen.pid), busy_cpu_s()
            t = time.monotonic()
            for line in gen.stdout:
                row = json.loads(line)
                now_cpu, now_gen, now_busy, now = (proc_cpu_s(rt.proc.pid), proc_cpu_s(gen.pid), busy_cpu_s(),
                                                   time.monotonic())
                row["server_cpu"] = round((now_cpu - cpu) / (now - t), 2)
                # Server CPU per webhook answered (the generator's warm-up falls in the first step).
                row["server_us"] = round((now_cpu - cpu) / row["ok"] * 1e6) if row["ok"] else None
                other = (now_busy - busy) - (now_cpu - cpu) - (now_gen - gen_cpu)
                row["gen%"] = round(100 * (now_gen - gen_cpu) / (now - t))
                row["oth%"] = max(0, round(100 * other / (now - t)))
                cpu, gen_cpu, busy, t = now_cpu, now_gen, now_busy, now
                rows.append(row)
            gen.wait(60)
        finally:
            _stop_profiler(profiler, args)
    cols = ("offered", "achieved", "p50_ms", "p99_ms", "max_ms", "status_p99_ms", "send_lag_p99_ms", "server_cpu",
            "server_us", "gen%", "oth%", "errors")
    print("\n" + "  ".join(f"{c:>15}" for c in cols))
    for row in rows:
        noisy = "  noisy" if row["oth%"] > 10 else ""
        print("  ".join(f"{str(row[c] if row[c] is not None else '-'):>15}" for c in cols) + noisy)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
