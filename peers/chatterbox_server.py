"""A local Chatterbox TTS server (the OpenAI-compatible API of travisvn/chatterbox-tts-api), driven
by the test.

Routes as documented (PROTOCOLS.md "Chatterbox TTS server"): ``POST /v1/audio/speech`` (a WAV, or
SSE when ``stream_format`` is ``"sse"``), ``POST /v1/audio/speech/stream`` (SSE when asked for, or
a streamed WAV as travisvn's server sends there: ``stream_answer="wav"``), ``GET /v1/models`` and
``GET /health``. SSE events are ``data:`` lines only, as that server writes them:
``speech.audio.info{sample_rate, channels, bits_per_sample}``, ``speech.audio.delta{audio}``
(base64 int16 PCM), ``speech.audio.done{usage}``. Errors have FastAPI's shapes:
``{"detail": {"error": {"message", "type"}}}`` and 422 ``{"detail": [...]}`` for bad fields.

The audio for a text is deterministic (``audio_for``): a tone ``ms_per_char`` long per character,
so a test can check every sample it got. ``Fault`` entries, one per speech request in order,
make a request fail: a status (with Retry-After), a slow first byte, a dropped connection after
some deltas, or a malformed stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from peers.loopback import serve_loopback


@dataclass(frozen=True)
class Fault:
    status: int | None = None  # answer with this status (and an error body) instead of audio
    retry_after: str | None = None
    first_byte_delay_s: float = 0.0
    drop_after_deltas: int | None = None  # abort the TCP connection after this many deltas
    malformed: Literal["json", "base64", "info", "no_done", "error_event"] | None = None


@dataclass
class ChatterboxScript:
    sample_rate: int = 24_000
    ms_per_char: int = 10
    deltas: int = 3  # audio deltas per streamed answer
    delta_gap_s: float = 0.0  # between deltas: a model still synthesising
    faults: list[Fault | None] = field(default_factory=list)  # per speech request, in order
    stream_answer: Literal["sse", "wav"] = "sse"  # what /v1/audio/speech/stream sends
    api_key: str | None = None  # a required Bearer key (travisvn's server has none by default)


@dataclass(frozen=True)
class SpeechRequest:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


def audio_for(text: str, rate: int = 24_000, ms_per_char: int = 10) -> bytes:
    """The PCM16 the server speaks ``text`` with: a tone whose pitch depends on the text."""
    samples = len(text) * ms_per_char * rate // 1000
    pitch = 200 + sum(text.encode()) % 400
    return array("h", (int(8000 * math.sin(2 * math.pi * pitch * i / rate)) for i in range(samples))).tobytes()


def wav_header(rate: int, data_size: int = 0xFFFFFFFF) -> bytes:
    riff = 0x7FFFFFFF - 36 if data_size == 0xFFFFFFFF else 36 + data_size
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_size))


class ChatterboxServer:
    """``async with ChatterboxServer(script) as server``: ``server.base_url`` for ``ChatterboxTTS``."""

    def __init__(self, script: ChatterboxScript | None = None) -> None:
        self.script = script or ChatterboxScript()
        self.requests: list[SpeechRequest] = []  # speech requests (audio routes)
        self.probes: list[SpeechRequest] = []  # /v1/models and /health
        self.dropped = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def audio(self, text: str) -> bytes:
        return audio_for(text, self.script.sample_rate, self.script.ms_per_char)

    async def __aenter__(self) -> ChatterboxServer:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/speech/stream", self._speech)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner, self.port = await serve_loopback(app, handle_signals=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # Routes

    def _unauthorised(self, request: web.Request) -> web.Response | None:
        key = self.script.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return _error(401, "Invalid API key", "authentication_error")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        self.probes.append(SpeechRequest(request.path, dict(request.headers), None, time.monotonic()))
        if (refused := self._unauthorised(request)) is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": "chatterbox-tts-1", "object": "model", "created": 1700000000, "owned_by": "resemble-ai"}]})

    async def _health(self, request: web.Request) -> web.Response:
        self.probes.append(SpeechRequest(request.path, dict(request.headers), None, time.monotonic()))
        return web.json_response({"status": "healthy", "model_loaded": True, "device": "cpu", "config": {}})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        index = len(self.requests)
        self.requests.append(SpeechRequest(request.path, dict(request.headers), body, time.monotonic()))
        fault = self.script.faults[index] if index < len(self.script.faults) else None
        fault = fault or Fault()
        if fault.first_byte_delay_s:
            await asyncio.sleep(fault.first_byte_delay_s)
        if (refused := self._unauthorised(request)) is not None:
            return refused
        if fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return _error(fault.status, f"scripted failure {fault.status}", "model_error", headers)
        if (invalid := _validate(body)) is not None:
            return invalid
        text = body["input"].strip()
        pcm = self.audio(text)
        stream_format = body.get("stream_format") or "audio"
        if request.path.endswith("/stream"):
            if stream_format == "sse" and self.script.stream_answer == "sse":
                return await self._sse(request, pcm, text, fault)
            return await self._wav_stream(request, pcm, fault)
        if stream_format == "sse":
            return await self._sse(request, pcm, text, fault)
        return web.Response(body=wav_header(self.script.sample_rate, len(pcm)) + pcm, content_type="audio/wav",
                            headers={"Content-Disposition": "attachment; filename=speech.wav"})

    async def _sse(self, request: web.Request, pcm: bytes, text: str, fault: Fault) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        info: dict[str, Any] = {"type": "speech.audio.info", "sample_rate": self.script.sample_rate,
                                "channels": 1, "bits_per_sample": 16}
        if fault.malformed == "info":
            info["sample_rate"] = "fast"
        await response.write(_data(info))
        pieces = _split(pcm, self.script.deltas)
        for number, piece in enumerate(pieces):
            if number and self.script.delta_gap_s:
                await asyncio.sleep(self.script.delta_gap_s)
            if fault.drop_after_deltas is not None and number >= fault.drop_after_deltas:
                return self._drop(request, response)
            audio = base64.b64encode(piece).decode()
            if fault.malformed == "base64" and number == 1:
                audio = "***not base64***"
            if fault.malformed == "json" and number == 1:
                await response.write(b'data: {"type": "speech.audio.delta", "audio": \n\n')
                continue
            if fault.malformed == "error_event" and number == 1:
                await response.write(_data({"type": "error", "error": "CUDA out of memory"}))
                await response.write_eof()
                return response
            await response.write(_data({"type": "speech.audio.delta", "audio": audio}))
        if fault.malformed != "no_done":
            words = len(text.split())
            await response.write(_data({"type": "speech.audio.done", "usage": {
                "input_tokens": words, "output_tokens": len(pieces) * 50, "total_tokens": words + len(pieces) * 50}}))
        await response.write_eof()
        return response

    async def _wav_stream(self, request: web.Request, pcm: bytes, fault: Fault) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav", "Cache-Control": "no-cache",
                                               "Content-Disposition": "attachment; filename=speech_stream.wav"})
        await response.prepare(request)
        await response.write(wav_header(self.script.sample_rate))
        for number, piece in enumerate(_split(pcm, self.script.deltas)):
            if number and self.script.delta_gap_s:
                await asyncio.sleep(self.script.delta_gap_s)
            if fault.drop_after_deltas is not None and number >= fault.drop_after_deltas:
                return self._drop(request, response)
            await response.write(piece)
        await response.write_eof()
        return response

    def _drop(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        self.dropped += 1
        assert request.transport is not None
        request.transport.abort()  # the chunked body never completes
        return response


def _data(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _split(pcm: bytes, parts: int) -> list[bytes]:
    size = max(2, -(-len(pcm) // max(1, parts)) // 2 * 2)
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": {"error": {"message": message, "type": kind}}}, status=status, headers=headers)


def _validate(body: Any) -> web.Response | None:
    """FastAPI's 422 for the fields the real server checks."""
    problems = []
    if not isinstance(body, dict):
        return web.json_response({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]},
                                 status=422)
    text = body.get("input")
    if not isinstance(text, str) or not 1 <= len(text.strip()) <= 3000:
        problems.append({"type": "value_error", "loc": ["body", "input"], "msg": "input must be 1-3000 characters"})
    for name, low, high in (("exaggeration", 0.25, 2.0), ("cfg_weight", 0.0, 1.0), ("temperature", 0.05, 5.0)):
        value = body.get(name)
        if value is not None and not (isinstance(value, int | float) and low <= value <= high):
            problems.append({"type": "value_error", "loc": ["body", name], "msg": f"{name} must be {low}-{high}"})
    if body.get("stream_format") not in (None, "audio", "sse"):
        problems.append({"type": "value_error", "loc": ["body", "stream_format"], "msg": "audio or sse"})
    return web.json_response({"detail": problems}, status=422) if problems else None
