"""Bring your own brain: how fast the integrator hears the caller and the caller hears the integrator.

    python bench/byob.py [--calls 20] [--turns 5] [--quick] [--no-pin] [--json out.json]

The runtime (instant engines, bench/fake_engines.py; its agent version's llm is ``external``) runs
on core 0; on core 1 one process plays N callers (Twilio protocol, real-time audio both ways) and
the integrator's backend (one events WebSocket, a speaking session per call, ``say`` over the
socket). Each turn the caller says a line; when its ``transcript.created`` reaches the socket, the
backend says a short line, and the caller hears it. Figures, p50/p99/max in ms:

  transcript   the runtime's end-of-turn decision (its ``speech.ended`` event) -> ``transcript.created``
               read from the socket (event timestamps are the runtime's wall clock, in ms)
  say_to_audio the backend sending ``say`` -> the caller's first frame of that line
               (a quiet call's first frame goes out at once; the rest follow the 20 ms grid)

Targets (the issue): p99 < 20 ms each, with instant engines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from twilio_common import ACCOUNT_SID, AUTH_TOKEN, NUMBER, Runtime  # noqa: E402

LINE = "I'd like to book a table for two at seven."
REPLY = "Sure."


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(p * len(ordered))) - 1))], 1)


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


# The generator process: callers and the backend


async def _speech(text: str) -> Any:
    from runtime.audio import Audio
    from runtime.providers.tts.local import PiperTTS

    chunks = [c async for c in PiperTTS().synthesize(text)]
    return Audio(b"".join(c.pcm for c in chunks), chunks[0].rate)


class Backend:
    """The integrator: one socket; per call a speaking session; a reply to each caller turn."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.speakings: dict[str, str] = {}
        self.ended_at: dict[str, float] = {}  # call id -> speech.ended's runtime timestamp
        self.transcript_ms: list[float] = []
        self.said_at: dict[str, float] = {}  # call id -> monotonic time of the last say
        self.call_ids: dict[str, str] = {}  # Twilio CallSid -> call id
        self.ready = asyncio.Event()

    async def run(self, http: Any) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with http.ws_connect(self.url.replace("http", "ws", 1) + "/api/v1/events/ws", headers=headers) as ws:
            await ws.send_json({"type": "subscribe", "topics": ["call.connected", "speech.ended", "transcript.created"]})
            async for msg in ws:
                data = json.loads(msg.data)
                if data["type"] == "subscribed":
                    self.ready.set()
                if data["type"] != "event":
                    continue
                event = data["event"]
                call_id, topic = event["call_id"], event["topic"]
                if topic == "call.connected":
                    async with http.post(self.url + "/api/v1/speakings", headers=headers,
                                         json={"reference_id": call_id}) as resp:
                        self.speakings[call_id] = (await resp.json())["id"]
                    async with http.get(f"{self.url}/api/v1/calls/{call_id}", headers=headers) as resp:
                        self.call_ids[(await resp.json())["provider_call_id"]] = call_id
                elif topic == "speech.ended":
                    self.ended_at[call_id] = _ts(event)
                elif topic == "transcript.created" and event["data"].get("direction") == "in":
                    if call_id in self.ended_at:
                        self.transcript_ms.append((time.time() - self.ended_at.pop(call_id)) * 1000)
                    self.said_at[call_id] = time.monotonic()
                    await ws.send_json({"type": "say", "speaking_id": self.speakings[call_id], "text": REPLY,
                                        "ref": call_id})


async def _call(url: str, frames: list[bytes], turns: int, backend: Backend, stagger_s: float,
                out: list[float]) -> None:
    from runtime.telephony.scripted_caller import OpenLine, agent_quiet
    from runtime.telephony.twilio.caller import TwilioCaller

    await asyncio.sleep(stagger_s)
    async with TwilioCaller(url, ACCOUNT_SID, AUTH_TOKEN) as caller:
        call_sid, answer = await caller.dial(NUMBER)
        leg = await caller.open_stream(call_sid, answer)
        line = OpenLine(leg)
        try:
            await agent_quiet(leg, 0.5, 0.0, 20)  # the greeting
            for _ in range(turns):
                heard = len(leg.result.arrivals)
                line.say(frames)
                await line.speaking_done.wait()
                deadline = time.monotonic() + 10
                while len(leg.result.arrivals) == heard and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                call_id = backend.call_ids.get(call_sid)
                said = backend.said_at.get(call_id or "")
                if len(leg.result.arrivals) > heard and said is not None and said <= leg.result.arrivals[heard]:
                    out.append((leg.result.arrivals[heard] - said) * 1000)
                await agent_quiet(leg, 0.4, time.monotonic(), 10)
            await leg.stop(caller.account_sid, call_sid)
            await leg.wait_closed(10)
        finally:
            await line.close()


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from runtime.audio import ulaw_frames

    frames = ulaw_frames(await _speech(LINE))
    async with aiohttp.ClientSession() as http:
        backend = Backend(spec["url"], spec["key"])
        runner = asyncio.create_task(backend.run(http))
        await asyncio.wait_for(backend.ready.wait(), 10)
        say_ms: list[float] = []
        calls = [_call(spec["url"], frames, spec["turns"], backend, i * 0.1, say_ms) for i in range(spec["calls"])]
        results = await asyncio.gather(*calls, return_exceptions=True)
        runner.cancel()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"calls": spec["calls"], "failed": len(errors), "errors": errors[:3],
            "transcript_ms": backend.transcript_ms, "say_to_audio_ms": say_ms}


def generator_main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_generate(spec))))
    return 0


# Orchestration


async def _runtime_key(config: Path) -> str:
    from runtime.config import load_settings
    from runtime.control.plane import ControlPlane
    from runtime.control.schemas import ApiKeyCreate

    control = await ControlPlane.open(load_settings(config, environ={}))
    try:
        tenant = (await control.tenants.resolve("bench-twilio"))
        _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
        return key
    finally:
        await control.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 calls, 2 turns")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        return generator_main()
    calls, turns = (2, 2) if args.quick else (args.calls, args.turns)
    agent = {"greeting": "Hello.", "llm": {"provider": "external"}, "turn": {"silence_reprompt_s": 120}}
    with Runtime(pin=not args.no_pin, instant=True, agent=agent) as rt:
        key = asyncio.run(_runtime_key(rt.state / "config.yaml"))
        proc = rt.generator(Path(__file__).resolve(), json.dumps({"url": rt.url, "key": key, "calls": calls,
                                                                  "turns": turns}))
        result = json.loads(proc.stdout.read())
        if proc.wait() != 0:
            raise RuntimeError("generator failed")
    figures = {name: {"n": len(result[key_]), "p50": pct(result[key_], 0.5), "p99": pct(result[key_], 0.99),
                      "max": round(max(result[key_]), 1) if result[key_] else None}
               for name, key_ in (("transcript", "transcript_ms"), ("say_to_audio", "say_to_audio_ms"))}
    report = {"calls": calls, "turns": turns, "failed": result["failed"], "errors": result["errors"], **figures}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
