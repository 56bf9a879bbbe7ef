"""Cartesia TTS: text -> first audio chunk through ``CartesiaTTS`` (the cartesia SDK's WebSocket,
one socket for all turns, a context a turn) against a bare aiohttp WebSocket client doing the
same exchange (one generation request, read until the context's first chunk, then cancel) with
the same local server (peers/cartesia_server.py).

bench/providers.py calls ``rows(turns, _timed, _row)``; alone:

    .venv/bin/python bench/tts_cartesia.py [--turns 200]

Both paths end each turn the same way: the adapter's generator is closed after the first audio
(barge-in: it sends Cartesia's cancel for the context) and the bare client sends the cancel
itself; frames of earlier contexts are skipped by both. "added" is the adapter's time minus the
bare client's: the SDK, the frame routing, mu-law decoding and the base class's first-byte guard.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from runtime.providers.base import RetryPolicy  # noqa: E402

POLICY = RetryPolicy(retries=0, first_byte_timeout_s=10.0)
KEY = "bench-key"
SENTENCE = "We have a table for two at seven tonight."
VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"

Once = Callable[[], Awaitable[tuple[float, float | None]]]


async def rows(turns: int, timed: Callable[[int, Once], Awaitable[dict[str, list[float]]]],
               row: Callable[[str, list[float], list[float] | None], dict]) -> list[dict]:
    from peers.cartesia_server import API_VERSION, CartesiaScript, CartesiaServer
    from runtime.providers.tts.cartesia import CartesiaTTS
    from runtime.providers.tts.cartesia_wire import generation_request, output_format

    out = []
    for transport, label in ((8000, "pcm_mulaw 8 kHz"), (24_000, "pcm_s16le 24 kHz")):
        async with CartesiaServer(CartesiaScript(api_key=KEY, chunks_per_input=3)) as server:
            engine = CartesiaTTS(KEY, base_url=server.base_url, voice=VOICE, transport_rate=transport, policy=POLICY)

            async def adapter(engine: CartesiaTTS = engine) -> tuple[float, None]:
                t0 = time.perf_counter()
                async with aclosing(engine.synthesize(SENTENCE)) as chunks:
                    async for chunk in chunks:
                        if chunk.pcm:
                            return time.perf_counter() - t0, None
                raise RuntimeError("no audio")

            ours = await timed(turns, adapter)
            await engine.aclose()

            fmt, _ = output_format(transport)
            headers = {"Authorization": f"Bearer {KEY}", "Cartesia-Version": API_VERSION}
            async with aiohttp.ClientSession() as http, \
                    http.ws_connect(server.ws_url + "/tts/websocket", headers=headers) as ws:

                async def bare(ws: Any = ws, fmt: dict = fmt) -> tuple[float, None]:
                    context_id = uuid.uuid4().hex
                    request = generation_request(context_id=context_id, model="sonic-3", voice=VOICE,
                                                 transcript=SENTENCE, output=fmt, language="en", speed=None,
                                                 more=False)
                    t0 = time.perf_counter()
                    await ws.send_str(json.dumps(request))
                    while True:
                        message = json.loads((await ws.receive()).data)
                        if message.get("context_id") == context_id and message.get("type") == "chunk":
                            first = time.perf_counter() - t0
                            break
                    await ws.send_str(json.dumps({"context_id": context_id, "cancel": True}))
                    return first, None

                raw = await timed(turns, bare)
        out.append(row(f"cartesia (cartesia SDK) {label}: first audio", ours["first"], raw["first"]))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from providers import _row, _timed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    for result in asyncio.run(rows(args.turns, _timed, _row)):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
