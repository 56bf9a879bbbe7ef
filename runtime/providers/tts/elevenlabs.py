"""ElevenLabs streaming text to speech over its multi-context WebSocket
(``wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/multi-stream-input``), spoken with
aiohttp's WebSocket client. The wire shapes and their sources are in ``elevenlabs_wire``.

Which endpoint, and why: the single-context ``stream-input`` socket marks the end of its audio
(``isFinal``) only after ``{"text": ""}``, which also ends the socket; a ``flush`` there gets the
audio out but says nowhere when it is all out. The pipeline needs each piece's end (a piece's
text is claimed as spoken only after its last audio), so over ``stream-input`` every piece would
cost a new handshake. The multi-context socket has a per-context ``isFinal``: one socket serves
the whole call (ElevenLabs' guide: "Establish one WebSocket connection for each end-user
session"), one context per piece.

Per piece, on its own context ``<adapter id>-<n>``:

1. ``{"text": " ", "context_id", "voice_settings"?}``: the context's first message carries the
   voice settings (speed, stability, similarity_boost: only those the version sets);
2. ``{"text": "<piece> ", "context_id", "flush": true}``;
3. ``{"context_id", "close_context": true}``: a flushed context keeps flushing, and its
   ``isFinal`` follows its last audio.

Audio messages of the context are decoded (``ulaw_8000`` for telephony, decoded to PCM16 8 kHz;
``pcm_16000`` or ``pcm_24000`` otherwise) and handed on with text ``""``; after its ``isFinal``
a zero-length chunk carries the piece's text (as Chatterbox does: the failover counts a piece as
spoken only when all its audio was handed over). The texts concatenate to the input. A piece
without a letter or digit makes no request: just its text chunk, in its place. Alignment is not
asked for (``sync_alignment`` stays off) and is ignored when sent: no document promises that its
``chars`` give back our text exactly (clients strip leading spaces and split multi-character
entries to use it), and the zero-length chunk is exact.

A reply as it is written (``synthesize_stream``, ``streaming_text_input``): the pipeline passes a
segment of the reply's pieces as the model writes them (ending after a 0.5 s pause or with the
reply), on the one socket. Why still a context per piece: within one context nothing documented
marks where a flush's audio ends (the spec's ``is_final`` "is sent when a context is closed"; the
``flush_done`` message LiveKit reports is in no schema), and the pipeline needs each piece's end.
The cost: no prosody is carried from one piece to the next (each is voiced on its own, as before).
So the contexts are pipelined: a taker task reads the pieces as they come; a pump task sends each
at once on a fresh context (steps 1-3, while the audio of earlier pieces is still being made or
handed over: the next piece is being made while this one plays) and files every message it reads
by its context id; the caller's generator hands over the head piece's audio as it comes, keeps
later pieces' audio (the spec calls contexts "independent audio generation streams", for
"concurrent or interleaved audio generations": a later context's audio, even its ``isFinal``, may
come first), and after the head's ``isFinal`` gives its text chunk and moves to the next piece.
At most ``MAX_CONTEXTS`` (5, the guide's limit per socket) are live at once; a sixth piece waits
for the oldest's ``isFinal`` (that a context stops counting once its ``isFinal`` is sent is not
documented). When the pieces end, the contexts still live are finished, then the call returns.
``synthesize`` is the same with one piece. One call at a time per adapter (the ``_busy`` lock).

Cancel (barge-in): when the consumer stops early (the generator is closed: GeneratorExit, or the
task is cancelled; also a missed first byte), the adapter closes the socket (close frame 1000),
and a new socket is opened at once in the background for the next call. Why not
``close_context``: every context was already flushed and closed (steps 2-3), and the docs say a
flushed context "will continue flushing" after ``close_context`` (and after ``close_socket``);
only closing the socket stops the generation for sure. Audio already on the way is never handed
on. The taker is cancelled, which ends the pieces' iteration, except when nothing had been handed
over yet (it may be the base class's first-byte timeout, and the retry or the next engine goes on
with the same pieces): then, as after an error, the taker is let finish the read it is in (the
piece lands in the caller's ``Replay``) and stops there, so the pieces stay usable. That wait lasts
until the next piece or the end of the pieces (in the pipeline at most its 0.5 s pause); the
adapter's lock is released before it. The adapter stays usable: the next call takes the new socket.

Reuse: the socket stays open between calls (``inactivity_timeout=180``, the documented maximum).
Nothing reads it between calls, so a server's close of an idle socket is seen only when the next
call sends or reads: if that happens before any message of the call's contexts, the socket is
replaced once, transparently (no retry, no backoff), and the contexts sent so far go again on new
contexts of the new socket.

Errors: a refused handshake by status (401/403 ``auth``, never retried; 429 ``rate_limit`` with
``Retry-After``; 5xx ``server``); no connection ``unavailable``; an error message from the server
by its id (``invalid_api_key`` and ``quota_exceeded`` ``auth``, ``too_many_concurrent_requests``
``rate_limit``, ``voice_not_found`` ``bad_request``, else ``server``); a close without one by its
code (1011-1014 ``server``, 1008 by its reason, else ``unavailable``); a message that does not
parse ``protocol``; no message for ``read_timeout_s`` while a context is live ``timeout``; a
message without a context id while several are live ``protocol``. A failure mid-stream is raised
after the audio and texts that came before it (so ``FailoverTTS`` gives the next engine the rest:
the piece that broke, whole, and the pieces after it). The base class retries before the first
chunk (the pieces taken are replayed) and times the first byte; after that errors propagate; a
send that fails waits up to ``CLOSE_TIMEOUT_S`` for the reader to say why. The key goes
only in the ``xi-api-key`` header: never in the URL, a message, a log line or ``repr``, and any
text a server echoes is masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from runtime.audio import ulaw_to_pcm16
from runtime.egress.aiohttp_client import session_for
from runtime.egress.policy import EgressPolicy, refused
from runtime.providers.base import (
    RETRYABLE,
    AudioChunk,
    ProviderError,
    RetryPolicy,
    TextToSpeech,
    with_retries,
)
from runtime.providers.registry import BuildContext
from runtime.providers.tts import elevenlabs_wire as wire
from runtime.providers.wire_errors import egress_refused, redact, status_error

log = logging.getLogger("voicectl.providers.elevenlabs")

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 15.0  # between two messages of a piece (the first byte has the policy's own timeout)
CLOSE_TIMEOUT_S = 1.0  # for the server's answer to our close frame
MAX_MESSAGE = 16 * 1024 * 1024  # one audio message (a few seconds of base64 PCM is well under 1 MB)
MAX_ERROR_BODY = 4096

WSMsgType = aiohttp.WSMsgType
Socket = aiohttp.ClientWebSocketResponse


class _Dropped(Exception):
    """The socket ended (closed or broke) without a message saying why it refused the piece."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error))
        self.error = error


class ElevenLabsTTS(TextToSpeech):
    name = "elevenlabs"
    streaming_text_input = True  # synthesize_stream: the pieces of a reply pipelined on the socket
    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, api_key: str, *, voice: str = wire.DEFAULT_VOICE, model: str = wire.DEFAULT_MODEL,
                 url: str = wire.DEFAULT_URL, transport_rate: int = 8000, speed: float | None = None,
                 stability: float | None = None, similarity_boost: float | None = None,
                 language: str | None = None, policy: RetryPolicy | None = None,
                 egress: EgressPolicy | None = None) -> None:
        super().__init__(policy)
        self.egress = egress  # a tenant's server: connect through the egress guard
        if not api_key:
            raise ValueError("ElevenLabs needs an API key")
        if not voice or not model:
            raise ValueError("ElevenLabs needs a voice id and a model id")
        _check_range("speed", speed, *wire.SPEED_RANGE)
        _check_range("stability", stability, *wire.UNIT_RANGE)
        _check_range("similarity_boost", similarity_boost, *wire.UNIT_RANGE)
        self.endpoints = wire.endpoints(url)
        self.format = wire.output_format(transport_rate)
        self.rate = self.format.rate
        self.voice, self.model = voice, model
        self.language_code = wire.language_code(model, language)
        self.voice_settings = wire.voice_settings(stability=stability, similarity_boost=similarity_boost, speed=speed)
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._ws: Socket | None = None
        self._reused = False  # the current socket has served a call (a message of one of its contexts came)
        self._connecting: asyncio.Task[Socket] | None = None  # the socket opened after a cancel
        self._busy = asyncio.Lock()  # one piece at a time on the socket
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.connects = 0  # handshakes that succeeded
        self.cancels = 0  # pieces cut off by their consumer

    def __repr__(self) -> str:  # never the key
        return (f"ElevenLabsTTS(url={self.endpoints.ws!r}, voice={self.voice!r}, model={self.model!r}, "
                f"output_format={self.format.name!r})")

    # Synthesis

    def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        """One piece: a stream of one (a text without words makes no request)."""
        return _Stream(self, _once(text)).chunks()

    def _synthesize_stream(self, pieces: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        return _Stream(self, pieces).chunks()

    async def _send_piece(self, ws: Socket, context: str, text: str) -> None:
        try:
            await ws.send_str(wire.initialise(context, self.voice_settings))
            await ws.send_str(wire.text(context, text))
            await ws.send_str(wire.close_context(context))
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise _Dropped(ProviderError(self.name, "unavailable",
                                         f"the socket closed while sending ({type(exc).__name__})")) from None

    async def _read(self, ws: Socket) -> wire.Frame:
        """The next audio or isFinal message, of any context (unknown message types skipped)."""
        while True:
            message = await ws.receive()
            kind = message.type
            if kind == WSMsgType.TEXT:
                try:
                    frame = wire.parse(message.data)
                except wire.Malformed as exc:
                    raise ProviderError(self.name, "protocol", f"malformed message: {exc}") from None
                if isinstance(frame, wire.ServerError):
                    raise self._server_error(frame)
                if isinstance(frame, wire.Other):
                    log.debug("elevenlabs: %s message ignored", frame.kind[:40])
                    continue
                return frame
            if kind == WSMsgType.BINARY:
                raise ProviderError(self.name, "protocol", "a binary message (the protocol sends JSON text)")
            if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                # The close frame's own code first: aiohttp overwrites ``close_code`` with 1006 when its
                # answering close frame cannot be written (the server may drop the TCP right away).
                code = message.data if kind == WSMsgType.CLOSE else ws.close_code
                reason = message.extra if kind == WSMsgType.CLOSE and isinstance(message.extra, str) else ""
                raise _Dropped(self._close_error(code, reason))
            if kind == WSMsgType.ERROR:
                raise _Dropped(ProviderError(self.name, "unavailable",
                                             f"the connection broke ({type(message.data).__name__})"))
            # PING/PONG: aiohttp answers pings itself

    def _context_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _decoder(self) -> Callable[[bytes], bytes]:
        if self.format.mulaw:
            return lambda data: ulaw_to_pcm16(data) if data else b""
        carry = b""

        def whole_samples(data: bytes) -> bytes:  # an odd byte waits for its partner
            nonlocal carry
            data = carry + data
            cut = len(data) & ~1
            carry = data[cut:]
            return data[:cut]

        return whole_samples

    # The socket

    async def _socket(self) -> tuple[Socket, bool]:
        """(socket, reused): the one opened after a cancel, the current one, or a new one."""
        pending, self._connecting = self._connecting, None
        if pending is not None:
            try:
                ws = await pending
            except asyncio.CancelledError:
                if pending.done() and not pending.cancelled() and pending.exception() is None:
                    self._background(_close(pending.result()))
                raise
            if self._ws is not None and self._ws is not ws:
                self._background(_close(self._ws))
            self._ws, self._reused = ws, False
            return ws, False
        if self._ws is not None and not self._ws.closed:
            return self._ws, self._reused
        self._ws, self._reused = await self._connect(), False
        return self._ws, False

    async def _connect(self) -> Socket:
        url = wire.stream_url(self.endpoints, self.voice, self.model, self.format, self.language_code)
        try:
            ws = await self._http().ws_connect(url, headers={wire.AUTH_HEADER: self._api_key}, autoping=True,
                                               max_msg_size=MAX_MESSAGE,
                                               timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S))
        except aiohttp.WSServerHandshakeError as exc:
            error = status_error(self.name, exc.status or 0, exc.headers, "the WebSocket handshake was refused",
                                 self._api_key)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = self._failure(exc)
        else:
            self.connects += 1
            return ws
        raise error  # outside the except: no chained exception to carry anything of the request

    def _cancelled(self, ws: Socket | None) -> None:
        """The consumer stopped before the end: close the socket (no more audio is made for its
        contexts) and open the next one now."""
        self.cancels += 1
        log.debug("elevenlabs: speech cut off; closing its socket")
        self._discard(ws, reopen=True)

    def _discard(self, ws: Socket | None, *, reopen: bool = False) -> None:
        if ws is not None:
            if self._ws is ws:
                self._ws = None
            self._background(_close(ws))
        if reopen and not self._closed and self._connecting is None:
            try:
                task = asyncio.get_running_loop().create_task(self._connect())
            except RuntimeError:  # no loop (a generator finalised at shutdown)
                return
            task.add_done_callback(_retrieve)
            self._connecting = task

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:
            coroutine.close()
            return
        self._tasks.add(task)  # a reference until done (the loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)

    def _http(self) -> aiohttp.ClientSession:
        """The adapter's session, made on first use (it needs the running loop)."""
        if self._session is None or self._session.closed:
            self._session = session_for(self.egress, timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S))
        return self._session

    # Doctor and shutdown

    async def check(self) -> None:
        """For ``voicectl doctor``: ``GET /v1/models`` with the key (nothing billed), and the
        configured model among them. Raises ``ProviderError``."""
        await with_retries(self.name, self.policy, self._probe)

    async def _probe(self) -> None:
        error: ProviderError | None = None
        body: Any = None
        try:
            async with self._http().get(self.endpoints.http + wire.MODELS_PATH,
                                        headers={wire.AUTH_HEADER: self._api_key}) as response:
                if response.status != 200:
                    raw = await response.content.read(MAX_ERROR_BODY)
                    error = status_error(self.name, response.status, response.headers, wire.detail_text(raw),
                                         self._api_key)
                else:
                    body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = self._failure(exc)
        except ValueError:
            error = ProviderError(self.name, "protocol", "the models list is not JSON")
        if error is not None:
            raise error
        if not isinstance(body, list):
            raise ProviderError(self.name, "protocol", "the models list is not a JSON list")
        models = {m.get("model_id"): m for m in body if isinstance(m, dict)}
        if self.model not in models:
            raise ProviderError(self.name, "bad_request", f"the account has no model {self.model!r}")
        if models[self.model].get("can_do_text_to_speech") is False:
            raise ProviderError(self.name, "bad_request", f"the model {self.model!r} does not do text to speech")

    async def aclose(self) -> None:
        """Say goodbye on the socket (``close_socket``), close it and the session."""
        self._closed = True
        pending, self._connecting = self._connecting, None
        if pending is not None:
            pending.cancel()
            await asyncio.wait([pending])
            if not pending.cancelled() and pending.exception() is None:
                await _close(pending.result())
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                await ws.send_str(wire.CLOSE_SOCKET)
            await _close(ws)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    # Errors

    def _server_error(self, frame: wire.ServerError) -> Exception:
        kind = wire.error_kind(frame.error, frame.message)
        text = redact(": ".join(part for part in (frame.error, frame.message) if part) or "an error message",
                      self._api_key)
        error = ProviderError(self.name, kind, f"the server refused the piece: {text}")
        if kind != "auth" and wire.is_idle_close(frame.error, frame.message):
            return _Dropped(ProviderError(self.name, "unavailable", f"the server closed the idle socket: {text}"))
        return error

    def _close_error(self, code: int | None, reason: str) -> ProviderError:
        kind = wire.close_kind(code, reason)
        detail = f" ({redact(reason, self._api_key)})" if reason else ""
        return ProviderError(self.name, kind, f"the server closed the socket mid-piece: code {code}{detail}")

    def _failure(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, TimeoutError):
            return ProviderError(self.name, "timeout", f"the server stopped answering ({type(exc).__name__})")
        if refused(exc):
            return egress_refused(self.name)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderError(self.name, "unavailable", f"cannot connect ({type(exc).__name__})")
        return ProviderError(self.name, "unavailable", f"the connection failed or broke ({type(exc).__name__})")


@dataclass(eq=False, slots=True)
class _Piece:
    """A piece of a stream: its text, its context once sent, its audio not handed over yet."""

    text: str
    decode: Callable[[bytes], bytes] | None  # None: nothing to say (no context)
    context: str | None = None
    audio: deque[bytes] = field(default_factory=deque)
    final: bool = False  # its isFinal came (or it has nothing to say): all its audio is in ``audio``


class _Stream:
    """One ``synthesize`` / ``synthesize_stream`` call. Three parties:

    - the taker (a task) reads the pieces as they come and queues them (``order``: every piece, in
      order, until handed over; ``unsent``: those with words, until sent);
    - the pump (a task) owns the socket: it opens (or reuses) it, sends each queued piece on a new
      context (``initialise``, ``text`` with ``flush``, ``close_context``) as soon as fewer than
      ``MAX_CONTEXTS`` contexts are live, and files every message it reads under its context
      (``live``: contexts sent whose isFinal has not come);
    - ``chunks`` (the caller's generator) hands over the head piece's audio as it comes, then, after
      its isFinal, a zero-length chunk with its text, and moves on to the next piece.
    """

    def __init__(self, tts: ElevenLabsTTS, pieces: AsyncIterator[str]) -> None:
        self.tts, self.pieces = tts, pieces
        self.order: deque[_Piece] = deque()
        self.unsent: deque[_Piece] = deque()
        self.live: dict[str, _Piece] = {}
        self.error: BaseException | None = None
        self.taken_all = False  # the pieces ended
        self.stopping = False  # the taker stops after the piece it is waiting for
        self.ws: Socket | None = None
        self.reused = False  # the socket had served an earlier call
        self.heard = False  # a message of one of our contexts came (the socket works)
        self.replaced = False
        self._changed = asyncio.Event()  # for chunks: a piece, audio, an isFinal, an error, the end
        self._news = asyncio.Event()  # for the pump: a piece to send, or the end of the pieces
        self._taker: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._locked = False  # holds the adapter's ``_busy``

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        tts = self.tts
        tts._closed = False
        await tts._busy.acquire()  # one call at a time on the socket
        self._locked = True
        loop = asyncio.get_running_loop()
        self._taker = loop.create_task(self._take())
        self._pump = loop.create_task(self._run_pump())
        handed = False
        try:
            while True:
                if self.order:
                    head = self.order[0]
                    if head.audio:
                        handed = True
                        yield AudioChunk(head.audio.popleft(), tts.rate, "")
                        continue
                    if head.final:  # all of the piece's audio has been handed over
                        self.order.popleft()
                        handed = True
                        yield AudioChunk(b"", tts.rate, head.text)
                        continue
                if self.error is not None:  # after the audio that came before it
                    raise self.error
                if self.taken_all and not self.order:
                    break
                self._changed.clear()
                await self._changed.wait()
            # Every context has had its isFinal: the pump is returning, the taker has returned.
            await asyncio.wait([self._pump, self._taker])
        except GeneratorExit:  # the consumer stopped (barge-in)
            await self._stop(prompt=True, cancelled=True)
            raise
        except asyncio.CancelledError:
            # Before the first chunk this may be the first-byte timeout, and a retry (or the next
            # engine) goes on with the pieces: the taker must not be cancelled inside them.
            await self._stop(prompt=handed, cancelled=True)
            raise
        except BaseException:
            await self._stop(prompt=False, cancelled=False)
            raise
        finally:
            self._unlock()

    async def _stop(self, *, prompt: bool, cancelled: bool) -> None:
        """End the pump (closing the socket if it still had work: no more audio is made for our
        contexts), free the adapter, and end the taker: at once (``prompt``), or after the piece it
        is waiting for (the pieces taken are kept by the caller's ``Replay``; cancelling the taker
        inside the pieces would end them for a retry or the next engine too)."""
        pump, taker = self._pump, self._taker
        if pump is not None and not pump.done():
            pump.cancel()
            if cancelled:
                self.tts._cancelled(self.ws)
            else:
                self.tts._discard(self.ws, reopen=True)
            await asyncio.wait([pump])
        self._unlock()  # the socket is done with: the next call need not wait for the taker
        if taker is not None and not taker.done():
            if prompt:
                taker.cancel()
            self.stopping = True
            try:
                await asyncio.wait([taker])
            except asyncio.CancelledError:
                taker.cancel()
                raise

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            self.tts._busy.release()

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._changed.set()

    # The taker

    async def _take(self) -> None:
        try:
            async for text in self.pieces:
                piece = _Piece(text, self.tts._decoder() if _speakable(text) else None)
                self.order.append(piece)
                if piece.decode is None:
                    piece.final = True
                else:
                    self.unsent.append(piece)
                    self._news.set()
                self._changed.set()
                if self.stopping:
                    return
        except Exception as exc:  # the pieces' source broke: its error goes to the consumer as it is
            self._fail(exc)
        finally:
            if not self.stopping:
                self.taken_all = True
                self._news.set()
                self._changed.set()

    # The pump

    async def _run_pump(self) -> None:
        try:
            await self._pump_socket()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.tts._discard(self.ws)
            self._fail(exc.error if isinstance(exc, _Dropped) else exc)

    async def _pump_socket(self) -> None:
        tts, loop = self.tts, asyncio.get_running_loop()
        read: asyncio.Task[wire.Frame] | None = None
        news: asyncio.Task[Any] | None = None
        waiting_since = loop.time()  # of the last message, or since a context went out with none live
        broken: ProviderError | None = None  # a send failed: the reader may still say why
        broken_at = 0.0
        try:
            while True:
                try:
                    if news is None:  # armed before looking at ``unsent``: a piece queued meanwhile wakes us
                        self._news.clear()
                        news = loop.create_task(self._news.wait())
                    if self.ws is None and self.unsent:
                        self.ws, self.reused = await tts._socket()
                    while broken is None and self.unsent and len(self.live) < wire.MAX_CONTEXTS:
                        piece = self.unsent.popleft()
                        if not self.live:
                            waiting_since = loop.time()
                        piece.context = tts._context_id()
                        self.live[piece.context] = piece
                        try:
                            await tts._send_piece(self.ws, piece.context, piece.text)  # type: ignore[arg-type]
                        except _Dropped as exc:
                            broken, broken_at = exc.error, loop.time()
                    if self.taken_all and not self.unsent and not self.live:
                        return
                    if read is None and self.ws is not None:
                        read = loop.create_task(tts._read(self.ws))
                    deadline = None
                    if self.live:
                        deadline = waiting_since + tts.read_timeout_s
                    if broken is not None:
                        deadline = min(deadline or math.inf, broken_at + CLOSE_TIMEOUT_S)
                    timeout = None if deadline is None else max(0.0, deadline - loop.time())
                    done, _ = await asyncio.wait([news] if read is None else [read, news], timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if news in done:
                        news = None
                    if read is not None and read in done:
                        task, read = read, None
                        self._route(task.result())
                        waiting_since = loop.time()
                    elif not done:
                        if broken is not None:
                            raise _Dropped(broken)
                        raise ProviderError(tts.name, "timeout", f"no message for {tts.read_timeout_s:g} s")
                except _Dropped as exc:
                    if not (self.reused and not self.heard and not self.replaced and exc.error.kind in RETRYABLE):
                        raise
                    # The socket kept from an earlier call was closed while idle: a new one, once, with
                    # the contexts sent so far sent again (no message of theirs came: nothing was heard).
                    log.info("elevenlabs: the idle socket was closed; reconnecting", extra={"why": str(exc.error)})
                    if read is not None:
                        read.cancel()
                        read = None
                    tts._discard(self.ws)
                    self.replaced, broken = True, None
                    self.unsent.extendleft(reversed(list(self.live.values())))
                    self.live.clear()
                    self.ws, self.reused = await tts._socket()
        finally:
            pending = [t for t in (read, news) if t is not None]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                for task in pending:
                    if not task.cancelled():
                        task.exception()  # seen (a read that failed as it was given up)

    def _route(self, frame: wire.Frame) -> None:
        """File a message under its context (messages of contexts not live are skipped)."""
        if frame.context is None:  # no id: only one context can be meant
            if len(self.live) > 1:
                raise ProviderError(self.tts.name, "protocol",
                                    f"a message without a context id while {len(self.live)} contexts are live")
            piece = next(iter(self.live.values()), None)
        else:
            piece = self.live.get(frame.context)
        if piece is None:
            return  # a context given up on earlier, or finished
        if not self.heard:
            self.heard = True
            if self.tts._ws is self.ws:
                self.tts._reused = True  # it has served: if found closed by the next call, replaced
        if frame.audio and (pcm := piece.decode(frame.audio)):  # type: ignore[misc]
            piece.audio.append(pcm)
        if frame.final:
            piece.final = True
            del self.live[piece.context]  # type: ignore[arg-type]
        self._changed.set()


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


async def _once(text: str) -> AsyncIterator[str]:
    yield text


async def _close(ws: Socket) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S + 0.5)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background connect's failure as seen (the next piece re-raises it)."""
    if not task.cancelled():
        task.exception()


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")


def build(ctx: BuildContext) -> ElevenLabsTTS:
    """The adapter for one call or ``doctor`` check. The key is required (MissingCredential).
    Server: the version's ``base_url``, else the credential's ``base_url``, else
    ``providers.elevenlabs.url``. Voice: the version's, else ``providers.elevenlabs.voice``."""
    key = ctx.require_secret()
    settings = ctx.settings
    tenant_url = ctx.tenant_url()
    return ElevenLabsTTS(key, voice=getattr(ctx.options, "voice", None) or settings.voice,
                         model=ctx.model or settings.model, url=tenant_url or settings.url,
                         transport_rate=ctx.transport_rate, language=ctx.language,
                         **ctx.given("speed", "stability", "similarity_boost"), policy=ctx.policy,
                         egress=ctx.egress if tenant_url else None)
