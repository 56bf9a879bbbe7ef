"""A local ElevenLabs text-to-speech server, driven by the test: the multi-context WebSocket
(``GET /v1/text-to-speech/{voice_id}/multi-stream-input``) and ``GET /v1/models``.

Sources: the AsyncAPI definition in github.com/elevenlabs/elevenlabs-docs
``fern/apis/api/asyncapi.yml`` (the channel, its query parameters, the client messages
``InitialiseContext``/``SendTextMulti``/``FlushContext``/``CloseContext``/``CloseSocket``/
``KeepContextAlive`` and the server's ``AudioOutputMulti``/``FinalOutputMulti``); the same
shapes as the ``elevenlabs`` package's generated types (.venv ``elevenlabs/types/*.py``); the
multi-context guide (``fern/docs/pages/best-practices/conversational-agents.mdx``: the
``xi-api-key`` header, contexts, ``close_context``); the help center's error bodies
(``{"detail": {"status", "message"}}``, help.elevenlabs.io articles 19572237925521 and
19571824571921). Where no document speaks, the peer does what was reported of the real server,
and says so: the error message ``{"message", "error", "code"}`` before a 1008 close (the
text-to-dialogue socket's documented error, seen on this socket in livekit/agents-js#1985), the
1008 "voice_settings field must be provided in the first message and then either be not
provided or not change" (pipecat#4541), snake_case ``context_id``/``is_final`` and
``{"type": "flush_done"}`` (LiveKit's plugin, ``snake_case=True`` here), the idle close
(elevenlabs-docs#426), and whether a bad key is refused at the handshake or in the socket
(``key_check``).

Behaviour: a context's first message opens it (its ``voice_settings`` are kept); text is
buffered; ``flush`` generates audio for the buffer (in ``chunks`` messages, ``chunk_gap_s``
apart, base64 of ``ulaw_8000`` or ``pcm_<rate>`` as ``output_format`` asks);
``close_context`` ends the context: at once when nothing is being generated, else after its
audio (a flushed context "will continue flushing"), then ``isFinal``. The client closing the
socket stops every generation at once (``cut``). The audio for a text is deterministic
(``audio_for``: a tone ``ms_per_char`` long per character), so a test can check every sample.

Several contexts on one socket: each is its own stream (the spec: "multiple independent audio
generation streams (contexts) over a single WebSocket connection ... concurrent or interleaved
audio generations"), and at most ``max_contexts`` (5, the guide's limit) are open at once; one
more is refused with the error agents-js#1985 quotes (``max_active_conversations``, code 1008)
and the socket closed. Not settled by any document, so chosen here: whether the server generates
contexts at the same time (``generation="interleaved"``, the default: each flush's audio goes out
as it is made, messages of different contexts interleaved, a short context's ``isFinal`` possibly
before a longer, earlier one's) or one after the other in flush order (``"sequential"``); and
when a context stops counting against the limit (here: once its ``isFinal`` is sent). The peer
records when each client message came (``Connection.received_at``), and per context when it was
opened, flushed and closed and when each audio message and its ``isFinal`` went out.

``Refusal`` entries (one per connection attempt, in order) answer the handshake with a status
(and ``Retry-After``); ``Fault`` entries (one per context, in order) delay the first audio, drop
the TCP connection, send a malformed message, an error message, or close with a code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

from peers.loopback import serve_loopback
from runtime.audio import pcm16_to_ulaw, ulaw_to_pcm16

IDLE_REASON = ("Have not received a new text input within the timeout of 20 seconds. Streaming input terminated. "
               "Please make sure to either feed the input in the timely manner, or to send the end of input text "
               "(empty string \"\") when done.")
VOICE_SETTINGS_REASON = ("voice_settings field must be provided in the first message and then either be not "
                         "provided or not change.")
# The refusal of a context beyond the limit, as agents-js#1985 quotes it (error, message and code).
TOO_MANY_CONTEXTS = ("Maximum simultaneous contexts per WebSocket connection exceeded (5). Please close an existing "
                     "context before opening a new one.")


@dataclass(frozen=True)
class Refusal:
    status: int
    retry_after: str | None = None
    detail: str = "system_busy"  # detail.status of the body


@dataclass(frozen=True)
class Fault:
    first_byte_delay_s: float = 0.0
    drop_after_chunks: int | None = None  # abort the TCP connection after this many audio messages
    malformed: Literal["json", "base64", "not_object", "audio_type", "no_fields", "binary"] | None = None
    error: str | None = None  # {"message", "error": this, "code": 1008}, then close 1008
    close_code: int | None = None  # close with this code (reason "scripted close") instead
    at_chunk: int = 1  # where the malformed message, error or close goes


@dataclass
class ElevenLabsScript:
    api_key: str | None = "el-test-key"
    key_check: Literal["handshake", "message"] = "handshake"
    ms_per_char: int = 10
    chunks: int = 3  # audio messages per flush
    chunk_gap_s: float = 0.0
    refusals: list[Refusal | None] = field(default_factory=list)  # per connection attempt
    faults: list[Fault | None] = field(default_factory=list)  # per context opened
    snake_case: bool = False  # context_id / is_final (and flush_done) instead of contextId / isFinal
    alignment: bool = True  # alignment and normalizedAlignment on audio messages
    idle_close_s: float | None = None  # close a socket idle this long (no message, nothing generating)
    # Several contexts flushed on one socket: generated at the same time, their audio messages
    # interleaved ("interleaved"), or one after the other in the order of their flushes
    # ("sequential"). No document says which the server does (see the module docstring).
    generation: Literal["interleaved", "sequential"] = "interleaved"
    max_contexts: int = 5  # open contexts per socket ([guide] "limited to 5 concurrent contexts")
    models: tuple[str, ...] = ("eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_multilingual_v2")
    probe_refusals: list[Refusal | None] = field(default_factory=list)  # per GET /v1/models


@dataclass(eq=False)
class Context:
    id: str
    connection: int
    voice_settings: Any = None
    buffer: str = ""
    texts: list[str] = field(default_factory=list)  # what each flush generated
    flushes: int = 0
    closed: bool = False  # close_context received
    generating: int = 0
    chunks_sent: int = 0
    chunks_planned: int = 0
    final_sent: bool = False
    cut: bool = False  # the socket closed before its isFinal
    fault: Fault = field(default_factory=Fault)
    opened_at: float = 0.0  # when its first message came
    flushed_at: float | None = None  # when its first flush came
    close_at: float | None = None  # when its close_context came
    first_audio_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # when each audio message went out
    final_at: float | None = None  # when its isFinal went out


@dataclass(eq=False)
class Connection:
    index: int
    path: str
    voice: str
    query: dict[str, str]
    headers: dict[str, str]
    opened_at: float
    refused: int | None = None  # the handshake status when refused
    messages: list[Any] = field(default_factory=list)  # what the client sent, parsed
    received_at: list[float] = field(default_factory=list)  # when each of ``messages`` came
    contexts: list[str] = field(default_factory=list)
    most_open: int = 0  # the most contexts open at once (opened, isFinal not sent yet)
    client_closed: bool = False  # the client sent a close frame
    client_close_code: int | None = None
    server_closed: str | None = None  # why the server closed it
    closed_at: float | None = None


@dataclass(frozen=True)
class Probe:
    path: str
    headers: dict[str, str]
    at: float


def audio_for(text: str, rate: int, ms_per_char: int = 10) -> bytes:
    """The PCM16 the server speaks ``text`` with: a tone whose pitch depends on the text."""
    samples = len(text) * ms_per_char * rate // 1000
    pitch = 200 + sum(text.encode()) % 400
    return array("h", (int(8000 * math.sin(2 * math.pi * pitch * i / rate)) for i in range(samples))).tobytes()


def format_rate(output_format: str) -> tuple[int, bool]:
    """(rate, mu-law) of an output_format the peer can make."""
    kind, _, rate = output_format.partition("_")
    if kind not in ("ulaw", "pcm") or not rate.isdigit():
        raise ValueError(output_format)
    return int(rate), kind == "ulaw"


class ElevenLabsServer:
    """``async with ElevenLabsServer(script) as server``: ``server.url`` for ``ElevenLabsTTS``."""

    def __init__(self, script: ElevenLabsScript | None = None) -> None:
        self.script = script or ElevenLabsScript()
        self.connections: list[Connection] = []
        self.contexts: dict[str, Context] = {}
        self.probes: list[Probe] = []
        self.dropped = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def speech(self, text: str, output_format: str = "ulaw_8000") -> bytes:
        """The bytes the server sends for ``text`` (mu-law or PCM16, as the format says)."""
        rate, mulaw = format_rate(output_format)
        pcm = audio_for(text.strip(), rate, self.script.ms_per_char)
        return pcm16_to_ulaw(pcm) if mulaw else pcm

    def expected(self, text: str, output_format: str = "ulaw_8000") -> bytes:
        """The PCM16 an adapter should hand over for ``text``."""
        data = self.speech(text, output_format)
        return ulaw_to_pcm16(data) if format_rate(output_format)[1] else data

    def context_list(self) -> list[Context]:
        return list(self.contexts.values())

    async def __aenter__(self) -> ElevenLabsServer:
        app = web.Application()
        app.router.add_get("/v1/text-to-speech/{voice_id}/multi-stream-input", self._stream)
        app.router.add_get("/v1/models", self._models)
        self._runner, self.port = await serve_loopback(app, handle_signals=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # REST

    async def _models(self, request: web.Request) -> web.Response:
        index = len(self.probes)
        self.probes.append(Probe(request.path, dict(request.headers), time.monotonic()))
        refusal = self.script.probe_refusals[index] if index < len(self.script.probe_refusals) else None
        if refusal is not None:
            return _refuse(refusal)
        key = self.script.api_key
        if key is not None and request.headers.get("xi-api-key") != key:
            return _detail(401, "invalid_api_key", "Invalid API key")
        return web.json_response([{"model_id": model, "name": model, "can_do_text_to_speech": True,
                                   "can_be_finetuned": False, "token_cost_factor": 1.0}
                                  for model in self.script.models])

    # The WebSocket

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        script = self.script
        index = len(self.connections)
        conn = Connection(index, request.path, request.match_info["voice_id"], dict(request.query),
                          dict(request.headers), time.monotonic())
        self.connections.append(conn)
        refusal = script.refusals[index] if index < len(script.refusals) else None
        if refusal is not None:
            conn.refused = refusal.status
            return _refuse(refusal)
        header_ok = script.api_key is None or request.headers.get("xi-api-key") == script.api_key
        if script.key_check == "handshake" and not header_ok:
            conn.refused = 401
            return _detail(401, "invalid_api_key", "Invalid API key")
        try:
            rate, mulaw = format_rate(request.query.get("output_format", "mp3_44100_128"))
        except ValueError:
            conn.refused = 400
            return _detail(400, "invalid_output_format", "the peer makes ulaw_* and pcm_* only")
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, autoping=True)
        await ws.prepare(request)
        session = _Session(self, conn, ws, request, rate, mulaw, key_ok=header_ok)
        try:
            await session.run()
        finally:
            session.stop()
            conn.closed_at = time.monotonic()
        return ws

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _Session:
    """One socket: reads the client's messages, runs each flush's generation."""

    def __init__(self, server: ElevenLabsServer, conn: Connection, ws: web.WebSocketResponse, request: web.Request,
                 rate: int, mulaw: bool, *, key_ok: bool) -> None:
        self.server, self.script, self.conn, self.ws, self.request = server, server.script, conn, ws, request
        self.rate, self.mulaw, self.key_ok = rate, mulaw, key_ok
        self.contexts: dict[str, Context] = {}
        self.generations: set[asyncio.Task[Any]] = set()
        self.first = True
        self.done = False
        self.last_activity = time.monotonic()
        self.turn = asyncio.Lock()  # generation="sequential": one generation at a time, in flush order

    async def run(self) -> None:
        idle = self.script.idle_close_s
        while not self.done:
            wait = None if idle is None else max(0.01, self.last_activity + idle - time.monotonic())
            try:
                message = await self.ws.receive(timeout=wait)
            except TimeoutError:
                if not self.generations and time.monotonic() - self.last_activity >= idle:  # type: ignore[operator]
                    await self.close(1008, IDLE_REASON, why="idle")
                    return
                continue
            self.last_activity = time.monotonic()
            if message.type == WSMsgType.TEXT:
                await self.handle(message.data)
            elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if message.type == WSMsgType.CLOSE:
                    self.conn.client_closed = True
                    self.conn.client_close_code = message.data
                self.cut_all()
                return

    async def handle(self, data: str) -> None:
        self.conn.received_at.append(time.monotonic())
        try:
            message = json.loads(data)
        except ValueError:
            self.conn.messages.append(data)
            await self.error("invalid_request", "the message is not JSON")
            return
        self.conn.messages.append(message)
        if not isinstance(message, dict):
            await self.error("invalid_request", "the message is not a JSON object")
            return
        if self.first:
            self.first = False
            given = message.get("xi_api_key", message.get("xi-api-key"))
            if not self.key_ok and given != self.script.api_key:
                await self.error("invalid_api_key", "Invalid API key")
                return
        if message.get("close_socket") is True:
            for ctx in self.contexts.values():
                ctx.closed = True
            while self.generations:
                await asyncio.gather(*list(self.generations), return_exceptions=True)
            for ctx in self.contexts.values():
                await self.finish(ctx)
            await self.close(1000, "", why="close_socket")
            return
        context_id = message.get("context_id", message.get("contextId")) or ""
        ctx = self.contexts.get(context_id)
        if ctx is None:
            if self.open_contexts() >= self.script.max_contexts:
                await self.error("max_active_conversations", TOO_MANY_CONTEXTS)
                return
            faults = self.script.faults
            number = len(self.server.contexts)
            fault = faults[number] if number < len(faults) else None
            ctx = Context(context_id, self.conn.index, message.get("voice_settings"), fault=fault or Fault(),
                          opened_at=time.monotonic())
            self.contexts[context_id] = ctx
            self.server.contexts[f"{self.conn.index}:{context_id}"] = ctx
            self.conn.contexts.append(context_id)
            self.conn.most_open = max(self.conn.most_open, self.open_contexts())
        elif "voice_settings" in message and message["voice_settings"] != ctx.voice_settings:
            await self.close(1008, VOICE_SETTINGS_REASON, why="voice_settings")
            return
        if message.get("close_context") is True:
            ctx.closed = True
            ctx.close_at = time.monotonic()
            if not ctx.generating:
                await self.finish(ctx)
            return
        text = message.get("text")
        if isinstance(text, str):
            ctx.buffer += text  # "" is a keepalive: nothing to add
        if message.get("flush") is True:
            spoken, ctx.buffer = ctx.buffer.strip(), ""
            if spoken:
                if ctx.flushed_at is None:
                    ctx.flushed_at = time.monotonic()
                ctx.flushes += 1
                ctx.texts.append(spoken)
                ctx.generating += 1
                task = self.server._spawn(self.generate(ctx, spoken, ctx.flushes == 1))
                self.generations.add(task)
                task.add_done_callback(self.generations.discard)

    def open_contexts(self) -> int:
        """Contexts that count against the limit: opened, isFinal not sent. When the real server
        frees a context's place is not documented; here, when its isFinal goes out."""
        return sum(1 for ctx in self.contexts.values() if not ctx.final_sent and not ctx.cut)

    async def generate(self, ctx: Context, text: str, first_flush: bool) -> None:
        try:
            if self.script.generation == "sequential":
                async with self.turn:  # FIFO: the flushes' order
                    await self.speak(ctx, text, first_flush)
            else:
                await self.speak(ctx, text, first_flush)
        except (ConnectionError, RuntimeError):
            return
        finally:
            ctx.generating -= 1
            self.last_activity = time.monotonic()
        if ctx.closed and not ctx.generating:
            await self.finish(ctx)

    async def speak(self, ctx: Context, text: str, first_flush: bool) -> None:
        """One flush's audio messages (``chunk_gap_s`` apart), with the context's fault if any."""
        script, fault = self.script, ctx.fault if first_flush else Fault()
        data = self.server.speech(text, f"{'ulaw' if self.mulaw else 'pcm'}_{self.rate}")
        pieces = _split(data, script.chunks, 1 if self.mulaw else 2)
        ctx.chunks_planned += len(pieces)
        if fault.first_byte_delay_s:
            await asyncio.sleep(fault.first_byte_delay_s)
        for number, piece in enumerate(pieces):
            if number and script.chunk_gap_s:
                await asyncio.sleep(script.chunk_gap_s)
            if self.ws.closed or self.done:
                return
            if fault.drop_after_chunks is not None and number >= fault.drop_after_chunks:
                self.drop()
                return
            if number == fault.at_chunk:
                if fault.error is not None:
                    await self.error(fault.error, f"scripted {fault.error}", context=ctx.id)
                    return
                if fault.close_code is not None:
                    await self.close(fault.close_code, "scripted close", why="scripted")
                    return
                if fault.malformed is not None:
                    await self.malformed(fault.malformed, ctx)
            await self.ws.send_str(json.dumps(self.audio_message(ctx, piece, text, number, len(pieces))))
            ctx.chunks_sent += 1
            ctx.chunk_times.append(time.monotonic())
            if ctx.first_audio_at is None:
                ctx.first_audio_at = ctx.chunk_times[-1]
        if script.snake_case:
            await self.ws.send_str(json.dumps({"type": "flush_done", "context_id": ctx.id}))

    def audio_message(self, ctx: Context, piece: bytes, text: str, number: int, count: int) -> dict[str, Any]:
        snake = self.script.snake_case
        message: dict[str, Any] = {"audio": base64.b64encode(piece).decode(), "is_final" if snake else "isFinal": False}
        if self.script.alignment:
            share = text[number * len(text) // count:(number + 1) * len(text) // count]
            step = self.script.ms_per_char
            alignment = {"chars": list(share), "charStartTimesMs": [i * step for i in range(len(share))],
                         "charDurationsMs": [step] * len(share)}
            message["normalizedAlignment"] = alignment
            message["alignment"] = alignment
        message["context_id" if snake else "contextId"] = ctx.id
        return message

    async def finish(self, ctx: Context) -> None:
        if ctx.final_sent or self.ws.closed:
            return
        ctx.final_sent = True
        ctx.final_at = time.monotonic()
        key = ("is_final", "context_id") if self.script.snake_case else ("isFinal", "contextId")
        await self.ws.send_str(json.dumps({key[0]: True, key[1]: ctx.id}))

    async def malformed(self, kind: str, ctx: Context) -> None:
        id_key = "context_id" if self.script.snake_case else "contextId"
        if kind == "json":
            await self.ws.send_str('{"audio": "AAAA", "contextId": ')
        elif kind == "base64":
            await self.ws.send_str(json.dumps({"audio": "***not base64***", id_key: ctx.id}))
        elif kind == "not_object":
            await self.ws.send_str(json.dumps(["audio", ctx.id]))
        elif kind == "audio_type":
            await self.ws.send_str(json.dumps({"audio": 12345, id_key: ctx.id}))
        elif kind == "no_fields":
            await self.ws.send_str(json.dumps({id_key: ctx.id}))
        elif kind == "binary":
            await self.ws.send_bytes(b"\x00\x01")

    async def error(self, error: str, message: str, *, context: str | None = None) -> None:
        payload: dict[str, Any] = {"message": message, "error": error, "code": 1008}
        if context is not None:
            payload["context_id" if self.script.snake_case else "contextId"] = context
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(payload))
        await self.close(1008, message, why=error)

    async def close(self, code: int, reason: str, *, why: str) -> None:
        self.conn.server_closed = why
        self.done = True
        self.cut_all()
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])

    def drop(self) -> None:
        self.server.dropped += 1
        self.conn.server_closed = "dropped"
        self.done = True
        self.cut_all()
        assert self.request.transport is not None
        self.request.transport.abort()

    def cut_all(self) -> None:
        for ctx in self.contexts.values():
            if not ctx.final_sent:
                ctx.cut = True
        current = asyncio.current_task()
        for task in list(self.generations):
            if task is not current:
                task.cancel()

    def stop(self) -> None:
        self.done = True
        self.cut_all()


def _split(data: bytes, parts: int, width: int) -> list[bytes]:
    size = max(width, -(-len(data) // max(1, parts)) // width * width)
    return [data[i:i + size] for i in range(0, len(data), size)]


def _detail(status: int, detail: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": {"status": detail, "message": message}}, status=status, headers=headers)


def _refuse(refusal: Refusal) -> web.Response:
    headers = {"Retry-After": refusal.retry_after} if refusal.retry_after is not None else None
    return _detail(refusal.status, refusal.detail, f"scripted refusal {refusal.status}", headers)
