"""OpenAI speech: what OpenAITTS (the openai SDK, streamed PCM) adds between the server's bytes and
the pipeline, against peers/openai_speech_server.py answering at once.

For one sentence, the adapter (``synthesize``: request -> first audio chunk, and -> the end of
the sentence) and a bare aiohttp POST of the same request to the same server (-> the first
bytes of the body, and -> its end). Both read every answer to its end, so both reuse their
keep-alive connection. bench/providers.py's ``_timed`` and ``_row`` do the timing and the table:

    rows = await tts_openai.rows(turns, _timed, _row)

or on its own: ``.venv/bin/python bench/tts_openai.py [--turns 200]``.
"""

from __future__ import annotations

import sys
import time
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
Timed = Callable[[int, Callable[[], Awaitable[tuple[float, float | None]]]], Awaitable[dict[str, list[float]]]]


async def rows(turns: int, timed: Timed, row: Callable[[str, list[float], list[float] | None], dict]) -> list[dict]:
    from peers.openai_speech_server import OpenAISpeechServer, Speech
    from runtime.providers.tts.openai import OpenAITTS

    async with OpenAISpeechServer(api_key=KEY) as server, aiohttp.ClientSession() as http:
        server.repeat = Speech(pieces=8)
        engine = OpenAITTS(KEY, base_url=server.base_url, policy=POLICY)

        async def adapter() -> tuple[float, float]:
            t0 = time.perf_counter()
            first = None
            async with aclosing(engine.synthesize(SENTENCE)) as chunks:
                async for chunk in chunks:
                    if first is None and chunk.pcm:
                        first = time.perf_counter() - t0
            return first or 0.0, time.perf_counter() - t0

        body: dict[str, Any] = {"model": engine.model, "input": SENTENCE, "voice": engine.voice,
                                "response_format": "pcm"}
        headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/octet-stream"}

        async def bare() -> tuple[float, float]:
            t0 = time.perf_counter()
            async with http.post(server.base_url + "/audio/speech", json=body, headers=headers) as resp:
                await resp.content.readany()
                first = time.perf_counter() - t0
                await resp.read()
            return first, time.perf_counter() - t0

        ours, raw = await timed(turns, adapter), await timed(turns, bare)
        await engine.aclose()
    name = "openai speech (openai SDK, streamed PCM)"
    return [row(f"{name}: first audio", ours["first"], raw["first"]),
            row(f"{name}: whole sentence", ours["whole"], raw["whole"])]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from providers import _row, _timed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    for line in asyncio.run(rows(args.turns, _timed, _row)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
