"""A local Chatterbox TTS server speaking travisvn/chatterbox-tts-api's API, driven by the test.

Routes and shapes as that server's source has them (PROTOCOLS.md "Chatterbox TTS server"):

- ``POST /v1/audio/speech/stream``: always a streamed WAV, whatever ``stream_format`` says: 200
  and a 16-bit mono header with unknown sizes at once, then the int16 PCM of each text piece as it
  is made (app/api/endpoints/speech.py ``stream_text_to_speech``, ``generate_speech_streaming``,
  ``create_wav_header``).
- ``POST /v1/audio/speech`` with ``stream_format: "sse"``: ``data:`` lines only,
  ``speech.audio.info``, one ``speech.audio.delta`` per piece, ``speech.audio.done{usage}``
  (speech.py ``text_to_speech``, ``generate_speech_sse``); otherwise one whole WAV, made after the
  whole input is synthesised (``generate_speech_internal``).
- Pieces: the text cut by ``streaming_strategy`` / ``streaming_chunk_size`` /
  ``streaming_quality`` as the server cuts it (peers/chatterbox_text.py).
- ``GET /health`` (``HealthResponse``: status, model_loaded, device, config, ...), ``GET /v1/models``.
- Bad fields: FastAPI's 422 ``{"detail": [...]}`` (app/models/requests.py ``TTSRequest``); other
  errors ``{"detail": {"error": {"message", "type"}}}``. The real server has no API keys;
  ``api_key`` stands for a proxy in front of it that wants a Bearer key.

The "model" makes float32 samples for a piece (``model_audio``: a tone whose pitch depends on the
text, ``ms_per_char`` long a character); they become int16 as the server converts them
(``audio_for``), so a test can check every sample it got. The whole WAV is 16-bit PCM, or 32-bit
float (``whole_wav``): which one the server sends depends on torchaudio's save backend, not on its
source (float when FFmpeg is absent); the float layouts are those of libsndfile (IEEE float tag,
``fact`` and ``PEAK`` chunks) and sox (WAVE_FORMAT_EXTENSIBLE with the float sub-format).
Simplification: the whole WAV is one piece (the server cuts inputs over 280 characters and joins
the audio; the adapter sends sentences).

``Fault`` entries, one per speech request in order, make a request fail: a status (with
Retry-After), a slow model (after the status and WAV header / info event, as the real server
sends those before it synthesises), a cut connection after some pieces (how the real server fails
mid-stream: it raises inside its response generator), or a malformed answer (not from this server:
what another server or a broken proxy could send).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import web

from peers.chatterbox_text import QUALITIES, STRATEGIES, streaming_chunks
from peers.loopback import serve_loopback

Malformed = Literal["json", "base64", "info", "no_done", "error_event", "riff", "wav_format"]
# KSDATAFORMAT_SUBTYPE_IEEE_FLOAT: the float tag, then the GUID's fixed tail.
FLOAT_GUID = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


@dataclass(frozen=True)
class Fault:
    status: int | None = None  # answer with this status (and an error body) instead of audio
    retry_after: str | None = None
    first_byte_delay_s: float = 0.0  # the model's extra time before the first audio
    drop_after_deltas: int | None = None  # cut the connection after this many pieces of audio
    malformed: Malformed | None = None  # SSE: json, base64, info, no_done, error_event; WAV: riff, wav_format


@dataclass
class ChatterboxScript:
    sample_rate: int = 24_000
    ms_per_char: int = 10
    chunk_s: float = 0.0  # the model's time per piece before its audio goes (a T4: seconds)
    faults: list[Fault | None] = field(default_factory=list)  # per speech request, in order
    whole_wav: Literal["pcm16", "float32", "float32_extensible"] = "pcm16"
    # GET /health as the server answers while it loads ("initializing", model_loaded false) or once ready.
    status: str = "healthy"
    model_loaded: bool = True
    api_key: str | None = None  # a Bearer key wanted by a proxy in front (the server itself has none)


@dataclass(frozen=True)
class SpeechRequest:
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    pieces: tuple[str, ...] = ()  # the text pieces the server synthesised, in order


def model_audio(text: str, rate: int = 24_000, ms_per_char: int = 10) -> np.ndarray:
    """The float32 samples the model makes for ``text``: a tone whose pitch depends on the text."""
    samples = len(text) * ms_per_char * rate // 1000
    pitch = 200 + sum(text.encode()) % 400
    return (0.25 * np.sin(2 * np.pi * pitch * np.arange(samples) / rate)).astype(np.float32)


def to_int16(samples: np.ndarray) -> bytes:
    """The server's conversion (speech.py: ``torch.clamp(-1, 1) * 32767``, ``.to(torch.int16)``)."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def audio_for(text: str, rate: int = 24_000, ms_per_char: int = 10) -> bytes:
    """The PCM16 the server speaks ``text`` with (one piece)."""
    return to_int16(model_audio(text, rate, ms_per_char))


def wav_header(rate: int, data_size: int = 0xFFFFFFFF) -> bytes:
    """speech.py ``create_wav_header``: 16-bit mono; unknown sizes for a stream."""
    riff = 0x7FFFFFFF - 36 if data_size == 0xFFFFFFFF else 36 + data_size
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_size))


def float_wav(samples: np.ndarray, rate: int, layout: Literal["float32", "float32_extensible"]) -> bytes:
    """A whole 32-bit float mono WAV as libsndfile ("float32") or sox ("float32_extensible") write it."""
    data = samples.astype("<f4").tobytes()
    frames = len(samples)
    if layout == "float32":  # WAVE_FORMAT_IEEE_FLOAT, cbSize 0, fact, PEAK (value, position)
        fmt = struct.pack("<HHIIHHH", 3, 1, rate, rate * 4, 4, 32, 0)
        peak_at = int(np.argmax(np.abs(samples))) if frames else 0
        peak = float(abs(samples[peak_at])) if frames else 0.0
        extra = _chunk(b"fact", struct.pack("<I", frames)) + _chunk(b"PEAK", struct.pack("<IIfI", 1, 0, peak, peak_at))
    else:  # WAVE_FORMAT_EXTENSIBLE: cbSize 22, valid bits, channel mask (front centre), sub-format GUID
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 4, 4, 32, 22, 32, 4) + FLOAT_GUID
        extra = _chunk(b"fact", struct.pack("<I", frames))
    body = b"WAVE" + _chunk(b"fmt ", fmt) + extra + _chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


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
        """The PCM16 of one piece."""
        return audio_for(text, self.script.sample_rate, self.script.ms_per_char)

    def spoken(self, request: SpeechRequest) -> bytes:
        """All the PCM16 the server made for ``request`` (its pieces, in order)."""
        return b"".join(self.audio(piece) for piece in request.pieces)

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
        """models.py: a fixed list, answered whether or not the model is loaded."""
        self.probes.append(SpeechRequest(request.path, dict(request.headers), None, time.monotonic()))
        if (refused := self._unauthorised(request)) is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": "chatterbox-tts-1", "object": "model", "created": 1677649963, "owned_by": "resemble-ai"}]})

    async def _health(self, request: web.Request) -> web.Response:
        """health.py ``health_check``: always 200; the state says whether the model is ready."""
        self.probes.append(SpeechRequest(request.path, dict(request.headers), None, time.monotonic()))
        if (refused := self._unauthorised(request)) is not None:
            return refused
        state = {"healthy": "ready", "initializing": "initializing", "error": "error"}.get(self.script.status,
                                                                                           "not_started")
        return web.json_response({
            "status": self.script.status, "model_loaded": self.script.model_loaded, "device": "cuda",
            "config": {"max_chunk_length": 280, "max_total_length": 3000, "voice_sample_path": "./voice-sample.mp3",
                       "default_exaggeration": 0.5, "default_cfg_weight": 0.5, "default_temperature": 0.8},
            "memory_info": {"cpu_memory_mb": 2048.0, "gpu_memory_allocated_mb": 3100.0},
            "initialization_state": state,
            "initialization_progress": "Model ready" if state == "ready" else "Loading TTS model (this may take a while)...",
            "initialization_error": "CUDA out of memory" if state == "error" else None})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        index = len(self.requests)
        fault = (self.script.faults[index] if index < len(self.script.faults) else None) or Fault()
        if (refused := self._unauthorised(request)) is not None:
            self.requests.append(SpeechRequest(request.path, dict(request.headers), body, time.monotonic()))
            return refused
        if (invalid := _validate(body)) is not None:
            self.requests.append(SpeechRequest(request.path, dict(request.headers), body, time.monotonic()))
            return invalid
        text = body["input"].strip()
        stream = request.path.endswith("/stream") or body.get("stream_format") == "sse"
        pieces = tuple(streaming_chunks(text, body.get("streaming_chunk_size"), body.get("streaming_strategy"),
                                        body.get("streaming_quality"))) if stream else (text,)
        self.requests.append(SpeechRequest(request.path, dict(request.headers), body, time.monotonic(), pieces))
        if fault.status is not None:
            if fault.first_byte_delay_s:
                await asyncio.sleep(fault.first_byte_delay_s)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return _error(fault.status, f"scripted failure {fault.status}", "model_error", headers)
        if request.path.endswith("/stream"):  # stream_format is not read on this route
            return await self._wav_stream(request, pieces, fault)
        if stream:
            return await self._sse(request, pieces, text, fault)
        await asyncio.sleep(fault.first_byte_delay_s + self.script.chunk_s)  # the whole input first
        samples = model_audio(text, self.script.sample_rate, self.script.ms_per_char)
        if self.script.whole_wav == "pcm16":
            pcm = to_int16(samples)
            wav = wav_header(self.script.sample_rate, len(pcm)) + pcm
        else:
            wav = float_wav(samples, self.script.sample_rate, self.script.whole_wav)
        return web.Response(body=wav, content_type="audio/wav",
                            headers={"Content-Disposition": "attachment; filename=speech.wav"})

    async def _synthesised(self, pieces: tuple[str, ...], fault: Fault):  # type: ignore[no-untyped-def]
        """Each piece's number and PCM16 once the model has made it."""
        for number, piece in enumerate(pieces):
            await asyncio.sleep(self.script.chunk_s + (fault.first_byte_delay_s if number == 0 else 0.0))
            yield number, self.audio(piece)

    async def _sse(self, request: web.Request, pieces: tuple[str, ...], text: str,
                   fault: Fault) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "Connection": "keep-alive", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        info: dict[str, Any] = {"type": "speech.audio.info", "sample_rate": self.script.sample_rate,
                                "channels": 1, "bits_per_sample": 16}
        if fault.malformed == "info":
            info["sample_rate"] = "fast"
        await response.write(_data(info))
        async for number, pcm in self._synthesised(pieces, fault):
            if fault.drop_after_deltas is not None and number >= fault.drop_after_deltas:
                return self._drop(request, response)
            audio = base64.b64encode(pcm).decode()
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

    async def _wav_stream(self, request: web.Request, pieces: tuple[str, ...], fault: Fault) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav", "Cache-Control": "no-cache",
                                               "Content-Disposition": "attachment; filename=speech_stream.wav",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        header = wav_header(self.script.sample_rate)
        if fault.malformed == "riff":
            header = b"<html>Bad Gateway</html>"
        elif fault.malformed == "wav_format":  # 8-bit stereo
            header = header[:22] + struct.pack("<HIIHH", 2, self.script.sample_rate, self.script.sample_rate * 2, 2, 8) \
                + header[36:]
        await response.write(header)
        async for number, pcm in self._synthesised(pieces, fault):
            if fault.drop_after_deltas is not None and number >= fault.drop_after_deltas:
                return self._drop(request, response)
            await response.write(pcm)
        await response.write_eof()
        return response

    def _drop(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        self.dropped += 1
        assert request.transport is not None
        request.transport.abort()  # the chunked body never completes
        return response


def _data(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": {"error": {"message": message, "type": kind}}}, status=status, headers=headers)


def _validate(body: Any) -> web.Response | None:
    """FastAPI's 422 for the fields TTSRequest checks (app/models/requests.py)."""
    problems = []
    if not isinstance(body, dict):
        return web.json_response({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]},
                                 status=422)
    text = body.get("input")
    if not isinstance(text, str) or not 1 <= len(text) <= 3000 or not text.strip():
        problems.append({"type": "value_error", "loc": ["body", "input"], "msg": "input must be 1-3000 characters"})
    if body.get("voice") is not None and not isinstance(body.get("voice"), str):
        problems.append({"type": "string_type", "loc": ["body", "voice"], "msg": "Input should be a valid string"})
    for name, low, high in (("exaggeration", 0.25, 2.0), ("cfg_weight", 0.0, 1.0), ("temperature", 0.05, 5.0),
                            ("streaming_chunk_size", 50, 500), ("streaming_buffer_size", 1, 10)):
        value = body.get(name)
        whole = name.startswith("streaming_")
        if value is not None and not (isinstance(value, int if whole else int | float) and not isinstance(value, bool)
                                      and low <= value <= high):
            problems.append({"type": "value_error", "loc": ["body", name], "msg": f"{name} must be {low}-{high}"})
    for name, allowed in (("stream_format", ("audio", "sse")), ("streaming_strategy", STRATEGIES),
                          ("streaming_quality", QUALITIES)):
        if body.get(name) is not None and body.get(name) not in allowed:
            problems.append({"type": "value_error", "loc": ["body", name], "msg": f"one of {', '.join(allowed)}"})
    return web.json_response({"detail": problems}, status=422) if problems else None
