"""What the cloud adapters cost per turn, against local servers that answer at once.

    .venv/bin/python bench/providers.py [--turns 200]

For each adapter (the real SDK or HTTP client inside it) and a bare client reading the same
local server's same answer (aiohttp, no SDK, no parsing beyond finding the first item):

- LLM (Claude, OpenAI-compatible): request -> first text delta, and -> end of the reply;
- STT (Deepgram): ``flush()`` (Finalize) -> the final transcript, on one open stream;
- TTS (Chatterbox SSE, Chatterbox streamed WAV, Chatterbox non-streamed, ElevenLabs
  stream-input WebSocket, Cartesia WebSocket, OpenAI streamed speech, piper, espeak-ng): text ->
  first audio chunk (the vendors' rows come from bench/tts_<vendor>.py).

"added" is the adapter's p50/p99 minus the bare client's p50 for the same exchange: the time
our code and the SDK add between the provider's bytes and the pipeline. The servers are
peers/ (the protocol servers the tests use); everything runs in this one process, on one
event loop, as in the runtime. Wall-clock figures: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from calls import _pct  # noqa: E402

from runtime.providers.base import LlmRequest, Message, RetryPolicy, TextDelta  # noqa: E402

POLICY = RetryPolicy(retries=0, first_byte_timeout_s=10.0)
KEY = "bench-key"
REPLY = "Sure, I can help with that. We have a table for two at seven tonight. Shall I book it?"
SENTENCE = "We have a table for two at seven tonight."


async def _timed(turns: int, once: Callable[[], Awaitable[tuple[float, float | None]]]) -> dict[str, list[float]]:
    first, whole = [], []
    for _ in range(3):  # warm-up: connections, SDK clients
        await once()
    for _ in range(turns):
        a, b = await once()
        first.append(a * 1000)
        if b is not None:
            whole.append(b * 1000)
    return {"first": first, "whole": whole}


def _row(name: str, adapter: list[float], bare: list[float] | None) -> dict:
    p50, p99 = _pct(adapter, 0.5), _pct(adapter, 0.99)
    row = {"path": name, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    if bare:
        base = statistics.median(bare)
        row.update({"bare_p50_ms": round(base, 2), "added_p50_ms": round(p50 - base, 2),
                    "added_p99_ms": round(p99 - base, 2)})
    return row


# LLM


async def _llm_rows(turns: int) -> list[dict]:
    from peers import anthropic_server, openai_server
    from peers.anthropic_server import AnthropicServer
    from peers.openai_server import OpenAIServer
    from runtime.providers.llm.anthropic import AnthropicLLM
    from runtime.providers.llm.openai import OpenAICompatibleLLM

    rows = []
    request = LlmRequest(system="You are a booking agent.", messages=(Message("user", "A table for two at seven?"),))
    async with AnthropicServer(api_key=KEY) as claude, OpenAIServer() as local, aiohttp.ClientSession() as http:
        claude.repeat = anthropic_server.text_reply(REPLY, pieces=12)
        local.repeat = openai_server.text_reply(REPLY, pieces=12)
        for name, engine, url, headers, body, marker in (
            ("claude (anthropic SDK)", AnthropicLLM(KEY, base_url=claude.base_url, policy=POLICY),
             claude.base_url + "/v1/messages", {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
             {"model": "m", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
             b"text_delta"),
            ("openai-compatible (openai SDK)", OpenAICompatibleLLM(None, base_url=local.base_url, policy=POLICY),
             local.base_url + "/chat/completions", {},
             {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, b'"content"'),
        ):
            async def adapter(engine=engine) -> tuple[float, float]:
                t0 = time.perf_counter()
                first = None
                async for event in engine.stream(request):
                    if first is None and isinstance(event, TextDelta):
                        first = time.perf_counter() - t0
                return first or 0.0, time.perf_counter() - t0

            async def bare(url=url, headers=headers, body=body, marker=marker) -> tuple[float, float]:
                t0 = time.perf_counter()
                first = None
                async with http.post(url, json=body, headers=headers) as resp:
                    async for line in resp.content:
                        if first is None and marker in line:
                            first = time.perf_counter() - t0
                return first or 0.0, time.perf_counter() - t0

            ours, raw = await _timed(turns, adapter), await _timed(turns, bare)
            rows.append(_row(f"{name}: first text", ours["first"], raw["first"]))
            rows.append(_row(f"{name}: whole reply", ours["whole"], raw["whole"]))
            await engine.aclose()
    return rows


# STT


async def _stt_rows(turns: int) -> list[dict]:
    from peers.deepgram_server import DeepgramScript, DeepgramServer
    from runtime.audio import pcm16_to_ulaw
    from runtime.providers.stt.deepgram import DeepgramSTT

    speech = (3000).to_bytes(2, "little", signed=True) * 160  # 20 ms of loud audio at 8 kHz
    utterance = [speech] * 15  # 300 ms
    async with DeepgramServer(DeepgramScript(utterances=["a table for two please"] * (turns * 3 + 20),
                                             api_key=KEY, interim_every_ms=10_000)) as server:
        stt = DeepgramSTT(KEY, url=server.url, policy=POLICY)
        stream = await stt.open()
        finals: asyncio.Queue[float] = asyncio.Queue()

        async def read() -> None:
            async for transcript in stream:
                if transcript.final and transcript.text:
                    finals.put_nowait(time.perf_counter())

        reader = asyncio.create_task(read())

        async def adapter() -> tuple[float, None]:
            for frame in utterance:
                await stream.push(frame)
            await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            await stream.flush()
            return await asyncio.wait_for(finals.get(), 5) - t0, None

        ours = await _timed(turns, adapter)
        await stream.close()
        reader.cancel()
        await stt.aclose()
        async with aiohttp.ClientSession() as http:
            url = (f"{server.url.replace('ws://', 'http://')}/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000"
                   "&channels=1&interim_results=false&endpointing=300")
            async with http.ws_connect(url, headers={"Authorization": f"Token {KEY}"}) as ws:
                ulaw = [pcm16_to_ulaw(frame) for frame in utterance]

                async def bare() -> tuple[float, None]:
                    for frame in ulaw:
                        await ws.send_bytes(frame)
                    await asyncio.sleep(0.01)
                    t0 = time.perf_counter()
                    await ws.send_str(json.dumps({"type": "Finalize"}))
                    while True:
                        msg = json.loads((await ws.receive()).data)
                        if msg.get("type") == "Results" and msg.get("is_final"):
                            return time.perf_counter() - t0, None

                raw = await _timed(turns, bare)
    return [_row("deepgram (deepgram-sdk): flush -> final", ours["first"], raw["first"])]


# TTS


async def _tts_rows(turns: int) -> list[dict]:
    from peers.chatterbox_server import ChatterboxScript, ChatterboxServer
    from runtime.providers.tts.chatterbox import ChatterboxTTS
    from runtime.providers.tts.local import EspeakTTS, PiperTTS

    async def first_chunk(engine) -> tuple[float, None]:
        t0 = time.perf_counter()
        async for _ in engine.synthesize(SENTENCE):
            first = time.perf_counter() - t0
            break
        return first, None

    rows = []
    async with aiohttp.ClientSession() as http:
        # The three answers of travisvn's server: SSE from /v1/audio/speech, a streamed WAV from
        # /v1/audio/speech/stream, one whole WAV from /v1/audio/speech.
        for stream in ("sse", "wav", "off"):
            async with ChatterboxServer(ChatterboxScript()) as server:
                engine = ChatterboxTTS(None, base_url=server.base_url, stream=stream, policy=POLICY)
                ours = await _timed(turns, lambda engine=engine: first_chunk(engine))
                path = "/v1/audio/speech/stream" if stream == "wav" else "/v1/audio/speech"
                body = {"input": SENTENCE, "response_format": "wav"}  # the adapter's request (voice: the default)
                if stream != "off":
                    body |= {"streaming_strategy": "word", "streaming_chunk_size": 50}
                if stream == "sse":
                    body["stream_format"] = "sse"

                async def bare(path=path, body=body, server=server) -> tuple[float, None]:
                    t0 = time.perf_counter()
                    async with http.post(server.base_url + path, json=body) as resp:
                        await resp.content.readany()
                        return time.perf_counter() - t0, None

                raw = await _timed(turns, bare)
                await engine.aclose()
            label = f"chatterbox {'streamed ' + stream.upper() if stream != 'off' else 'non-streamed WAV'}: first audio"
            rows.append(_row(label, ours["first"], raw["first"]))
    import tts_cartesia
    import tts_elevenlabs
    import tts_openai

    for vendor in (tts_elevenlabs, tts_cartesia, tts_openai):  # one module per vendor: its peer and bare client
        rows += await vendor.rows(turns, _timed, _row)
    for name, engine in (("piper (local): first audio", PiperTTS(policy=POLICY)),
                         ("espeak-ng (local): first audio", EspeakTTS(policy=POLICY))):
        try:
            ours = await _timed(max(10, turns // 10), lambda engine=engine: first_chunk(engine))
        except Exception as exc:  # noqa: BLE001 (a missing engine is reported, the rest still runs)
            rows.append({"path": name, "error": str(exc)[:80]})
            continue
        rows.append(_row(name, ours["first"], None))
    return rows


async def _main(turns: int, only: str | None) -> list[dict]:
    rows: list[dict] = []
    for part, fn in (("llm", _llm_rows), ("stt", _stt_rows), ("tts", _tts_rows)):
        if only in (None, part):
            rows += await fn(turns)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--only", choices=("llm", "stt", "tts"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = asyncio.run(_main(args.turns, args.only))
    cols = ("p50_ms", "p99_ms", "bare_p50_ms", "added_p50_ms", "added_p99_ms")
    width = max(len(r["path"]) for r in rows) + 2
    print("\n" + "path".ljust(width) + "".join(f"{c:>14}" for c in cols))
    for row in rows:
        if "error" in row:
            print(row["path"].ljust(width) + "  " + row["error"])
            continue
        print(row["path"].ljust(width) + "".join(f"{str(row.get(c, '-')):>14}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
