"""Signed Twilio voice webhooks per second against one `voicectl serve` process (SQLite).

    python bench/webhooks.py [--rates 250,500,1000,1500] [--step 10] [--quick] [--json out.json]

Open loop: each webhook is scheduled on an absolute clock at the offered rate and its latency
runs from the scheduled time to the end of the response (no coordinated omission). Every
webhook is a new CallSid for a routed number: signature check, routing, a call row and its
voice.call.started event, TwiML with a stream token. The runtime is on core 0, the generator
(aiohttp client, one process) on core 1; its send lag is reported so a saturated generator shows.
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


async def _step(caller, rate: float, seconds: float) -> dict:
    from twilio_common import NUMBER

    from runtime.telephony.twilio_caller import new_sid

    n = int(rate * seconds)
    lat: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
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
        except Exception as exc:  # noqa: BLE001
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

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
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {"offered": rate, "sent": n, "ok": len(lat), "achieved": round(len(lat) / elapsed, 1),
            "p50_ms": ms(_pct(lat, 0.5)), "p99_ms": ms(_pct(lat, 0.99)), "max_ms": ms(max(lat) if lat else None),
            "send_lag_p99_ms": ms(_pct(lags, 0.99)), "errors": errors}


async def _generate(spec: dict) -> list[dict]:
    import aiohttp
    from twilio_common import ACCOUNT_SID, AUTH_TOKEN

    from runtime.telephony.twilio_caller import TwilioCaller

    steps = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        caller = TwilioCaller(spec["url"], ACCOUNT_SID, AUTH_TOKEN, http=http)
        await _step(caller, 20, 0.5)  # warm-up
        for rate in spec["rates"]:
            steps.append(await _step(caller, rate, spec["step"]))
            print(json.dumps(steps[-1]), flush=True)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000,1500")
    parser.add_argument("--step", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="100 and 200/s, 2 s each")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generator:
        asyncio.run(_generate(json.loads(sys.stdin.read())))
        return 0
    rates = [100, 200] if args.quick else [int(r) for r in args.rates.split(",")]
    step = 2.0 if args.quick else args.step
    from twilio_common import Runtime, proc_cpu_s

    rows = []
    with Runtime(pin=not args.no_pin) as rt:
        gen = rt.generator(Path(__file__), json.dumps({"url": rt.url, "rates": rates, "step": step}))
        cpu = proc_cpu_s(rt.proc.pid)
        t = time.monotonic()
        for line in gen.stdout:
            row = json.loads(line)
            now_cpu, now = proc_cpu_s(rt.proc.pid), time.monotonic()
            row["server_cpu"] = round((now_cpu - cpu) / (now - t), 2)
            cpu, t = now_cpu, now
            rows.append(row)
        gen.wait(60)
    cols = ("offered", "achieved", "p50_ms", "p99_ms", "max_ms", "send_lag_p99_ms", "server_cpu", "errors")
    print("\n" + "  ".join(f"{c:>15}" for c in cols))
    for row in rows:
        print("  ".join(f"{str(row[c] if row[c] is not None else '-'):>15}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
