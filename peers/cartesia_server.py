"""A local Cartesia TTS API, driven by the test: the WebSocket the ``cartesia`` SDK connects to
(point the SDK's ``websocket_base_url`` at ``ws_url``: it appends ``/tts/websocket``) and the
REST routes ``doctor`` uses.

Sources (what each behaviour follows):

- docs.cartesia.ai/2024-11-13/api-reference/tts/websocket: the messages. Client: generation
  request ``{model_id, transcript, voice, language, context_id, output_format, add_timestamps,
  continue}`` and cancel ``{context_id, cancel: true}`` ("no more messages are generated for that
  context"). Server: ``chunk{data, done, status_code: 206, step_time, context_id}``,
  ``flush_done{done, flush_done, flush_id, status_code, context_id}``, ``done{done: true,
  status_code, context_id}``, ``timestamps{word_timestamps{words, start, end}}``, ``error{done,
  error, status_code, context_id}``; auth there: ``X-API-Key`` header or ``?api_key=``.
- docs.cartesia.ai/api-reference/tts/working-with-web-sockets/contexts: ``continue`` (default
  false); inputs of a context may arrive over time (input streaming: each with ``continue: true``
  while more may follow), and "if you do not know the last transcript in advance, you can send an
  input with an empty transcript and ``continue`` set to ``false``"; every input of a context
  keeps the same fields except ``transcript``/``continue``/``duration``; transcripts are
  concatenated verbatim; outputs come in the order of the inputs, ``done`` only after the whole
  context.
- docs.cartesia.ai/use-the-api/tts-websocket/buffering: ``max_buffer_delay_ms`` 0-5000 (this
  server never buffers: it generates each input as it arrives, which is what 0 asks for).
- docs.cartesia.ai/use-the-api/tts-websocket/context-flushing-and-flush-i-ds: ``flush: true``
  (with ``continue: true`` and an empty transcript) increments the context's ``flush_id``; chunks
  of transcript 1 carry ``flush_id`` 1, after the flush 2.
- docs.cartesia.ai/use-the-api/api-conventions: ``Authorization: Bearer <key>``, ``Cartesia-Version``
  header or ``?cartesia_version`` (the query wins on WebSockets); ``GET /`` -> ``{"ok", "version"}``
  with no auth (api-reference/api-status/get: ``security: []``).
- cartesia 4.2.0 (the SDK): ``types/websocket_response.py`` (Error: ``title, message, error_code,
  status_code, done, context_id, request_id``; Chunk ``done``/``flush_id``),
  ``types/raw_output_format_param.py`` (encodings ``pcm_f32le, pcm_s16le, pcm_mulaw, pcm_alaw``;
  rates 8000-48000), ``types/generation_config_param.py`` (``speed`` 0.6-1.5, ``volume`` 0.5-2.0),
  ``resources/voices.py`` (``GET /voices/{id}``, ``GET /voices``).

Not settled by any document, chosen here (and labelled in the code): what a refused upgrade's
body looks like (``{"title", "message", "status_code"}``), that a cancelled context gets no reply
at all, that ``flush_done`` is sent after the flushed transcript's audio, the reply to an input
on a finished context (an error 400), and the body of REST errors. Contexts never expire here
(Cartesia: 1 s after their last audio, with "undefined behavior" for a later input).

A context is generated input by input as its inputs arrive: a transcript's audio, ``flush_done``
after a flush (the next transcript's chunks carry the next ``flush_id``), ``done`` after the input
with ``continue: false`` (an empty transcript included), whenever it comes.

The audio for a text is deterministic (``audio_for``: a tone ``ms_per_char`` long per character)
and encoded as asked, so a test can check every sample. Faults are scripted: ``handshakes`` (one
per connection attempt: refuse the upgrade with a status and ``Retry-After``) and ``faults`` (one
per context, in the order contexts start: a slow first chunk, a dropped connection after some
chunks, a malformed frame, an error message, an early done; chunk numbers count a context's
chunks across all of its inputs). Everything received is recorded: connections (path, query,
headers), generation requests (with their arrival time), cancels, REST probes; and every audio
chunk sent (context, flush_id, size, time).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import uuid
import warnings
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

from peers.loopback import serve_loopback

with warnings.catch_warnings():  # as runtime/audio.py: stdlib audioop is deprecated in 3.11/3.12
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

API_VERSION = "2026-08-14"  # the version cartesia 4.x sends (its MIGRATING.md)
ENCODINGS = ("pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
SAME_FIELDS = ("model_id", "voice", "output_format", "language", "generation_config", "add_timestamps",
               "max_buffer_delay_ms")


@dataclass(frozen=True)
class Refusal:
    """Refuse one WebSocket upgrade with this HTTP status."""

    status: int
    retry_after: str | None = None
    message: str = "scripted refusal"


@dataclass(frozen=True)
class Fault:
    """What goes wrong in one context. Chunk numbers count the context's audio chunks from 0."""

    first_chunk_delay_s: float = 0.0
    drop_after_chunks: int | None = None  # abort the TCP connection instead of chunk number N
    malformed: Literal["json", "not_object", "base64", "no_type", "binary"] | None = None
    malformed_at: int = 1  # the malformed frame replaces chunk number N
    error_status: int | None = None  # an error message (done: true) replaces chunk number error_at
    error_at: int = 0
    # A done message replaces chunk number N: the context ends before its input did (UNSETTLED:
    # what Cartesia does with a context that expired while more input was to come).
    done_at: int | None = None


@dataclass
class CartesiaScript:
    api_key: str | None = "test-key"  # None: any key (or none) is accepted
    chunks_per_input: int = 3
    chunk_gap_s: float = 0.0  # between two chunks of a context: a model still synthesising
    ms_per_char: int = 10
    handshakes: list[Refusal | None] = field(default_factory=list)  # per connection attempt
    faults: list[Fault | None] = field(default_factory=list)  # per context, in order
    ignore_cancel: bool = False  # keep generating a cancelled context (late frames reach the client)
    done_in_last_chunk: bool = False  # mark the last chunk done: true instead of sending a done message
    voices: frozenset[str] | None = None  # GET /voices/{id}: None = every id exists


@dataclass(frozen=True)
class Connection:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    accepted: bool


@dataclass(frozen=True)
class Received:
    connection: int  # index into ``connections``
    message: dict[str, Any]
    at: float


@dataclass(frozen=True)
class SentChunk:
    context_id: str
    flush_id: int
    size: int
    at: float


def audio_for(text: str, rate: int = 8000, ms_per_char: int = 10) -> bytes:
    """The PCM16 the server speaks ``text`` with: a tone whose pitch depends on the text."""
    samples = len(text) * ms_per_char * rate // 1000
    pitch = 200 + sum(text.encode()) % 400
    return array("h", (int(8000 * math.sin(2 * math.pi * pitch * i / rate)) for i in range(samples))).tobytes()


def encode(pcm: bytes, encoding: str) -> bytes:
    if encoding == "pcm_s16le":
        return pcm
    if encoding == "pcm_mulaw":
        return audioop.lin2ulaw(pcm, 2)
    if encoding == "pcm_alaw":
        return audioop.lin2alaw(pcm, 2)
    return array("f", (sample / 32768 for sample in array("h", pcm))).tobytes()


class _Context:
    def __init__(self, context_id: str, first: dict[str, Any], fault: Fault, connection: int) -> None:
        self.id, self.first, self.fault, self.connection = context_id, first, fault, connection
        self.inputs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.finished = False  # input ended (continue: false), cancelled, or failed


class CartesiaServer:
    """``async with CartesiaServer(script) as server``: ``server.base_url`` (REST) and ``server.ws_url``."""

    def __init__(self, script: CartesiaScript | None = None) -> None:
        self.script = script or CartesiaScript()
        self.connections: list[Connection] = []
        self.requests: list[Received] = []  # generation requests, in arrival order
        self.cancels: list[Received] = []
        self.chunks: list[SentChunk] = []  # audio chunks sent, in order
        self.probes: list[Connection] = []  # REST requests
        self.contexts: dict[str, _Context] = {}
        self.dropped = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def audio(self, text: str, encoding: str = "pcm_mulaw", rate: int = 8000) -> bytes:
        """The bytes sent for ``text`` (one input's transcript, verbatim) in ``encoding``."""
        return encode(audio_for(text, rate, self.script.ms_per_char), encoding)

    def pcm(self, text: str, rate: int = 8000, encoding: str = "pcm_mulaw") -> bytes:
        """What a client decoding to PCM16 gets for ``text``."""
        data = self.audio(text, encoding, rate)
        return audioop.ulaw2lin(data, 2) if encoding == "pcm_mulaw" else data

    def context_requests(self, context_id: str) -> list[dict[str, Any]]:
        return [r.message for r in self.requests if r.message.get("context_id") == context_id]

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.connections)

    async def __aenter__(self) -> CartesiaServer:
        app = web.Application()
        app.router.add_get("/tts/websocket", self._websocket)
        app.router.add_get("/", self._status)
        app.router.add_get("/voices", self._voices)
        app.router.add_get("/voices/{id}", self._voice)
        self._runner, self.port = await serve_loopback(app, handle_signals=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for context in self.contexts.values():
            if context.task is not None:
                context.task.cancel()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # Auth

    def _authorised(self, request: web.Request) -> bool:
        key = self.script.api_key
        if key is None:
            return True
        bearer = request.headers.get("Authorization", "")
        # Current docs: Bearer; the 2024-11-13 docs: X-API-Key header, or ?api_key= on WebSockets.
        return key in (bearer.removeprefix("Bearer "), request.headers.get("X-API-Key"), request.query.get("api_key"))

    # REST

    async def _status(self, request: web.Request) -> web.Response:
        self.probes.append(self._record(request, True))
        return web.json_response({"ok": True, "version": API_VERSION})  # documented without auth

    async def _voices(self, request: web.Request) -> web.Response:
        self.probes.append(self._record(request, True))
        if not self._authorised(request):
            return _rest_error(401, "Invalid API key")
        return web.json_response({"data": [_voice("a0e99841-438c-4a64-b679-ae501e7d6091")], "has_more": False})

    async def _voice(self, request: web.Request) -> web.Response:
        self.probes.append(self._record(request, True))
        if not self._authorised(request):
            return _rest_error(401, "Invalid API key")
        voice_id = request.match_info["id"]
        if self.script.voices is not None and voice_id not in self.script.voices:
            return _rest_error(404, "Voice not found")
        return web.json_response(_voice(voice_id))

    # WebSocket

    def _record(self, request: web.Request, accepted: bool) -> Connection:
        return Connection(request.path, dict(request.query), dict(request.headers), time.monotonic(), accepted)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        index = len(self.connections)
        refusal = self.script.handshakes[index] if index < len(self.script.handshakes) else None
        if refusal is None and not self._authorised(request):
            refusal = Refusal(401, message="Invalid API key")
        self.connections.append(self._record(request, refusal is None))
        if refusal is not None:
            headers = {"Retry-After": refusal.retry_after} if refusal.retry_after is not None else None
            # UNSETTLED: the body of a refused upgrade; the error message's fields are used.
            return web.json_response({"title": "Refused", "message": refusal.message, "status_code": refusal.status},
                                     status=refusal.status, headers=headers)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        lock = asyncio.Lock()

        async def send(message: dict[str, Any] | str | bytes) -> None:
            async with lock:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message if isinstance(message, str) else json.dumps(message))

        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    await send(_error(None, 400, "Invalid JSON", "the message is not JSON"))
                    continue
                if not isinstance(message, dict):
                    await send(_error(None, 400, "Invalid request", "the message is not an object"))
                elif message.get("cancel") is True:
                    self._cancel(index, message)
                else:
                    await self._input(index, message, send, request)
        finally:
            self._sockets.discard(ws)
        return ws

    def _cancel(self, index: int, message: dict[str, Any]) -> None:
        self.cancels.append(Received(index, message, time.monotonic()))
        context = self.contexts.get(message.get("context_id"))  # type: ignore[arg-type]
        if context is None or self.script.ignore_cancel:
            return
        context.finished = True
        if context.task is not None:
            context.task.cancel()  # UNSETTLED: nothing is sent for a cancelled context

    async def _input(self, index: int, message: dict[str, Any], send, request: web.Request) -> None:  # type: ignore[no-untyped-def]
        self.requests.append(Received(index, message, time.monotonic()))
        context_id = message.get("context_id")
        problem = _invalid(message)
        context = self.contexts.get(context_id) if isinstance(context_id, str) else None
        if problem is None and context is not None:
            if context.finished:
                problem = "the context is finished"  # UNSETTLED: the real reply to this
            elif any(message.get(key) != context.first.get(key) for key in SAME_FIELDS):
                problem = "inputs of a context must keep the same fields"
        if problem is not None:
            await send(_error(context_id if isinstance(context_id, str) else None, 400, "Invalid request", problem))
            return
        if context is None:
            number = len(self.contexts)
            fault = self.script.faults[number] if number < len(self.script.faults) else None
            context = self.contexts[context_id] = _Context(context_id, message, fault or Fault(), index)
            context.task = asyncio.get_running_loop().create_task(self._generate(context, send, request))
        if not message.get("continue", False):
            context.finished = True
        context.inputs.put_nowait(message)

    async def _generate(self, context: _Context, send, request: web.Request) -> None:  # type: ignore[no-untyped-def]
        """A context's inputs in order: audio chunks per transcript, flush_done after a flush,
        done after the input with ``continue: false``."""
        fault, script = context.fault, self.script
        flush_id, number = 1, 0
        output = context.first["output_format"]
        try:
            while True:
                message = await context.inputs.get()
                transcript = message["transcript"]
                pieces = _split(self.audio(transcript, output["encoding"], output["sample_rate"]),
                                script.chunks_per_input, 4 if output["encoding"] == "pcm_f32le" else 2) \
                    if transcript else []
                last_input = not message.get("continue", False)
                for position, piece in enumerate(pieces):
                    if number == 0 and fault.first_chunk_delay_s:
                        await asyncio.sleep(fault.first_chunk_delay_s)
                    elif number and script.chunk_gap_s:
                        await asyncio.sleep(script.chunk_gap_s)
                    if fault.drop_after_chunks is not None and number >= fault.drop_after_chunks:
                        self.dropped += 1
                        assert request.transport is not None
                        request.transport.abort()
                        return
                    if fault.error_status is not None and number == fault.error_at:
                        context.finished = True
                        await send(_error(context.id, fault.error_status, "Scripted failure",
                                          f"scripted failure {fault.error_status}"))
                        return
                    if fault.done_at is not None and number == fault.done_at:
                        context.finished = True
                        await send({"type": "done", "done": True, "status_code": 206, "context_id": context.id})
                        return
                    if fault.malformed is not None and number == fault.malformed_at:
                        await send(_malformed(fault.malformed, context.id, piece))
                        number += 1
                        continue
                    done = script.done_in_last_chunk and last_input and position == len(pieces) - 1
                    await send({"type": "chunk", "data": base64.b64encode(piece).decode(), "done": done,
                                "status_code": 206, "step_time": 1.0, "context_id": context.id, "flush_id": flush_id})
                    self.chunks.append(SentChunk(context.id, flush_id, len(piece), time.monotonic()))
                    number += 1
                if message.get("flush"):
                    # UNSETTLED: sent here after the flushed audio (the docs only call it an acknowledgement).
                    await send({"type": "flush_done", "done": False, "flush_done": True, "flush_id": flush_id,
                                "status_code": 206, "context_id": context.id})
                    flush_id += 1
                if last_input:
                    if not (script.done_in_last_chunk and pieces):
                        await send({"type": "done", "done": True, "status_code": 206, "context_id": context.id})
                    return
        except (ConnectionResetError, RuntimeError):  # the client went away
            return


def _invalid(message: dict[str, Any]) -> str | None:
    """What is wrong with a generation request (the fields the SDK types mark Required)."""
    if not isinstance(message.get("context_id"), str) or not message["context_id"]:
        return "context_id is required"
    if not isinstance(message.get("model_id"), str) or not message["model_id"]:
        return "model_id is required"
    if not isinstance(message.get("transcript"), str):
        return "transcript is required"
    voice = message.get("voice")
    if not (isinstance(voice, str) and voice) and not (isinstance(voice, dict) and isinstance(voice.get("id"), str)):
        return "voice must be an id or {id}"
    output = message.get("output_format")
    if not isinstance(output, dict) or output.get("container") != "raw" or output.get("encoding") not in ENCODINGS \
            or output.get("sample_rate") not in SAMPLE_RATES:
        return "output_format must be raw with a known encoding and sample_rate"
    if "language" in message and not isinstance(message["language"], str):
        return "language must be a string"
    config = message.get("generation_config")
    if config is not None:
        speed, volume = config.get("speed"), config.get("volume")
        if speed is not None and not (isinstance(speed, int | float) and 0.6 <= speed <= 1.5):
            return "generation_config.speed must be between 0.6 and 1.5"
        if volume is not None and not (isinstance(volume, int | float) and 0.5 <= volume <= 2.0):
            return "generation_config.volume must be between 0.5 and 2.0"
    delay = message.get("max_buffer_delay_ms")
    if delay is not None and not (isinstance(delay, int) and not isinstance(delay, bool) and 0 <= delay <= 5000):
        return "max_buffer_delay_ms must be an integer between 0 and 5000"
    for flag in ("continue", "flush", "add_timestamps"):
        if flag in message and not isinstance(message[flag], bool):
            return f"{flag} must be a boolean"
    return None


def _error(context_id: str | None, status: int, title: str, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"type": "error", "done": True, "status_code": status, "title": title, "message": message,
                             "error_code": title.lower().replace(" ", "_"), "request_id": uuid.uuid4().hex}
    if context_id is not None:
        error["context_id"] = context_id
    return error


def _malformed(kind: str, context_id: str, piece: bytes) -> str | bytes | dict[str, Any]:
    if kind == "json":
        return '{"type": "chunk", "data": '
    if kind == "not_object":
        return "[1, 2, 3]"
    if kind == "base64":
        return {"type": "chunk", "data": "***not base64***", "done": False, "status_code": 206,
                "context_id": context_id}
    if kind == "no_type":
        return {"context_id": context_id, "data": base64.b64encode(piece).decode()}
    return b"\x00\x01\x02"


def _split(data: bytes, parts: int, width: int) -> list[bytes]:
    size = max(width, -(-len(data) // max(1, parts)) // width * width)
    return [data[i:i + size] for i in range(0, len(data), size)]


def _voice(voice_id: str) -> dict[str, Any]:
    return {"id": voice_id, "name": "Barbershop Man", "description": "a test voice", "access": "public",
            "visibility": "all", "is_owner": False, "language": "en", "locales": [], "tagline": "",
            "created_at": "2024-01-01T00:00:00Z"}


def _rest_error(status: int, message: str) -> web.Response:
    # UNSETTLED: the REST error body; the WebSocket error message's fields are used.
    return web.json_response({"title": message, "message": message, "status_code": status}, status=status)
