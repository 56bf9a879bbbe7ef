"""ElevenLabs TTS: text -> first audio chunk through the adapter (runtime.providers.tts.elevenlabs)
and through a bare aiohttp WebSocket client doing the same exchange, against the local protocol
server (peers/elevenlabs_server.py: answers at once, ``ulaw_8000`` as on a phone line).

Two paths, each a row:

- one socket for the call: every turn is one context (``text " "`` + voice settings, the text
  with ``flush``, ``close_context``) on the socket the previous turns used; the whole piece is
  read to ``isFinal`` (the bare client does the same, on its own single socket);
- after a barge-in: every turn stops reading after the first chunk, so the adapter closes the
  socket and opens the next at once in the background; the bare client opens a new socket per
  turn (handshake included in its time).

``rows(turns, timed, row)`` takes bench/providers.py's ``_timed`` and ``_row``; run alone:

    .venv/bin/python bench/tts_elevenlabs.py [--turns 200]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

KEY = "bench-key"
SENTENCE = "We have a table for two at seven tonight."

Timed = Callable[[int, Callable[[], Awaitable[tuple[float, float | None]]]], Awaitable[dict[str, list[float]]]]
Row = Callable[[str, list[float], "list[float] | None"], dict]


async def rows(turns: int, timed: Timed, row: Row) -> list[dict]:
    import aiohttp

    from peers.elevenlabs_server import ElevenLabsScript, ElevenLabsServer
    from runtime.providers.base import RetryPolicy
    from runtime.providers.tts import elevenlabs_wire as wire
    from runtime.providers.tts.elevenlabs import ElevenLabsTTS

    policy = RetryPolicy(retries=0, first_byte_timeout_s=10.0)
    out = []
    async with ElevenLabsServer(ElevenLabsScript(api_key=KEY, alignment=False)) as server, \
            aiohttp.ClientSession() as http:
        fmt = wire.output_format(8000)
        url = wire.stream_url(wire.endpoints(server.url), wire.DEFAULT_VOICE, wire.DEFAULT_MODEL, fmt, "en")
        headers = {wire.AUTH_HEADER: KEY}
        contexts = iter(range(1, 10**9))

        async def bare_turn(ws: Any, drain: bool, t0: float | None = None) -> float:
            """Seconds from ``t0`` (default: now) to the context's first audio message."""
            context = f"bare-{next(contexts)}"
            t0 = time.perf_counter() if t0 is None else t0
            await ws.send_str(wire.initialise(context, None))
            await ws.send_str(wire.text(context, SENTENCE))
            await ws.send_str(wire.close_context(context))
            first = None
            while True:
                message = json.loads((await ws.receive()).data)
                if first is None and message.get("audio"):
                    first = time.perf_counter() - t0
                    if not drain:
                        return first
                if message.get("isFinal"):
                    return first or 0.0

        # One socket for the call.
        engine = ElevenLabsTTS(KEY, url=server.url, transport_rate=8000, language="en", policy=policy)

        async def adapter_reused() -> tuple[float, None]:
            t0 = time.perf_counter()
            first = None
            async for chunk in engine.synthesize(SENTENCE):
                if first is None and chunk.pcm:
                    first = time.perf_counter() - t0
            return first or 0.0, None

        ours = await timed(turns, adapter_reused)
        await engine.aclose()
        async with http.ws_connect(url, headers=headers) as ws:
            async def bare_reused(ws: Any = ws) -> tuple[float, None]:
                return await bare_turn(ws, True), None

            raw = await timed(turns, bare_reused)
        out.append(row("elevenlabs multi-stream (aiohttp WebSocket), one socket: first audio", ours["first"],
                       raw["first"]))

        # A barge-in every turn.
        engine = ElevenLabsTTS(KEY, url=server.url, transport_rate=8000, language="en", policy=policy)

        async def adapter_cut() -> tuple[float, None]:
            t0 = time.perf_counter()
            generator = engine.synthesize(SENTENCE)
            try:
                async for chunk in generator:
                    if chunk.pcm:
                        return time.perf_counter() - t0, None
            finally:
                await generator.aclose()
            return 0.0, None

        ours = await timed(turns, adapter_cut)
        await engine.aclose()

        async def bare_fresh() -> tuple[float, None]:
            t0 = time.perf_counter()  # the handshake counts: the adapter's socket is (re)opened too
            async with http.ws_connect(url, headers=headers) as ws:
                return await bare_turn(ws, False, t0), None

        raw = await timed(turns, bare_fresh)
        out.append(row("elevenlabs multi-stream, after a barge-in (socket reopened): first audio", ours["first"],
                       raw["first"]))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))
    sys.path.insert(0, str(here))
    from providers import _row, _timed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    for result in asyncio.run(rows(args.turns, _timed, _row)):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
