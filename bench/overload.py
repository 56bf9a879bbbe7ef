"""Overload: N callers dial the offline stack at the same moment.

``.venv/bin/python bench/overload.py --calls 40`` serves the real runtime (`voicectl serve`, the
offline stack: faster-whisper, the rules brain, piper) pinned to core 0, and from this process
(core 1) dials N calls at once through the Twilio bridge. Admitted calls keep their line open
with silence in real time for ``--hold`` seconds. Printed: how many were admitted and how many
got the busy answer, and for the admitted ones the time from dialling to the first frame of the
greeting (p50, p95, max) and how many heard nothing within 5 s.

``--local-calls N`` sets ``limits.local_calls`` (default: the runtime's own, its model's
LOCAL_CALLS_PER_CORE for each core it may use: 1 with base, 4 with tiny.en; the server is pinned
to one core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from twilio_common import ACCOUNT_SID, AUTH_TOKEN, GENERATOR_CORE, NUMBER, Runtime  # noqa: E402

GREETING = "Hello, thanks for calling Trattoria Demo. How can I help you today?"
SILENT_AFTER_S = 5.0


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * (len(ordered) - 1))))]


async def _call(caller: Any, started: float, hold_s: float) -> dict[str, Any]:
    from runtime.audio import ULAW_FRAME_BYTES, ULAW_SILENCE

    call_sid, answer = await caller.dial(NUMBER)
    if answer.rejected:
        return {"busy": 'reason="busy"' in answer.text, "answered_ms": (time.monotonic() - started) * 1000}
    leg = await caller.open_stream(call_sid, answer)
    streaming = asyncio.create_task(leg.stream([ULAW_SILENCE * ULAW_FRAME_BYTES] * int(hold_s * 50)))
    await streaming
    arrivals = leg.result.arrivals
    await leg.stop(caller.account_sid, call_sid)
    await leg.wait_closed(10)
    first = (arrivals[0] - started) * 1000 if arrivals else None
    return {"admitted": True, "first_greeting_ms": first}


async def _dial_all(url: str, calls: int, hold_s: float) -> list[dict[str, Any]]:
    import aiohttp

    from runtime.telephony.twilio.caller import TwilioCaller

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        caller = TwilioCaller(url, ACCOUNT_SID, AUTH_TOKEN, http=http)
        started = time.monotonic()
        return await asyncio.gather(*(_call(caller, started, hold_s) for _ in range(calls)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--local-calls", type=int, default=None, help="limits.local_calls (default: the runtime's)")
    parser.add_argument("--hold", type=float, default=8.0, help="seconds each admitted call stays on the line")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    limits = {"local_calls": args.local_calls} if args.local_calls else {}
    agent = {"greeting": GREETING, "llm": {"provider": "rules"}, "turn": {"silence_reprompt_s": 120}}
    with Runtime(pin=not args.no_pin, agent=agent, limits=limits) as rt:
        if not args.no_pin:
            os.sched_setaffinity(0, {GENERATOR_CORE})
        results = asyncio.run(_dial_all(rt.url, args.calls, args.hold))
    admitted = [r for r in results if r.get("admitted")]
    firsts = [r["first_greeting_ms"] for r in admitted if r["first_greeting_ms"] is not None]
    silent = sum(1 for r in admitted if r["first_greeting_ms"] is None or r["first_greeting_ms"] > SILENT_AFTER_S * 1000)
    busy = [r for r in results if not r.get("admitted")]
    figures = {
        "calls": args.calls, "admitted": len(admitted), "busy": sum(1 for r in busy if r["busy"]),
        "rejected_other": sum(1 for r in busy if not r["busy"]),
        "busy_answer_p95_ms": round(_percentile([r["answered_ms"] for r in busy], 0.95), 1) if busy else None,
        "greeting_p50_ms": round(_percentile(firsts, 0.5), 1) if firsts else None,
        "greeting_p95_ms": round(_percentile(firsts, 0.95), 1) if firsts else None,
        "greeting_max_ms": round(max(firsts), 1) if firsts else None,
        f"silent_over_{SILENT_AFTER_S:g}s": silent,
    }
    print("  ".join(f"{k}={v}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
