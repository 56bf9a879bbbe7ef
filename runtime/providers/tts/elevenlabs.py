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

Per piece (one ``synthesize`` call; pieces are spoken one at a time, in order), on context
``<adapter id>-<n>``:

1. ``{"text": " ", "context_id", "voice_settings"?}``: the context's first message carries the
   voice settings (speed, stability, similarity_boost: only those the version sets);
2. ``{"text": "<piece> ", "context_id", "flush": true}``;
3. ``{"context_id", "close_context": true}``: a flushed context keeps flushing, and its
   ``isFinal`` follows its last audio.

Audio messages of the context are decoded (``ulaw_8000`` for telephony, decoded to PCM16 8 kHz;
``pcm_16000`` or ``pcm_24000`` otherwise) and handed on as they come, with text ``""``; after
``isFinal`` a zero-length chunk carries the piece's text (as Chatterbox does: the failover counts
a piece as spoken only when all its audio was handed over). The texts concatenate to the input.
Alignment is not asked for (``sync_alignment`` stays off) and is ignored when sent: no document
promises that its ``chars`` give back our text exactly (clients strip leading spaces and split
multi-character entries to use it), and the zero-length chunk is exact.

Cancel (barge-in): when the consumer stops early (the generator is closed: GeneratorExit, or the
task is cancelled; also a missed first byte), the adapter closes the socket (close frame 1000),
and a new socket is opened at once in the background for the next piece. Why not
``close_context``: the piece's context was already flushed and closed (steps 2-3), and the docs
say a flushed context "will continue flushing" after ``close_context`` (and after
``close_socket``); only closing the socket stops the generation for sure. Audio already on the
way is never handed on. The adapter stays usable: the next ``synthesize`` takes the new socket.

Reuse: the socket stays open between pieces (``inactivity_timeout=180``, the documented maximum).
Nothing reads it between pieces, so a server's close of an idle socket is seen only when the next
piece sends or reads: if that happens before the piece's first message, the socket is replaced
once, transparently (no retry, no backoff). Pieces go one at a time per adapter (a lock; the
pipeline speaks a reply's pieces in order).

Errors: a refused handshake by status (401/403 ``auth``, never retried; 429 ``rate_limit`` with
``Retry-After``; 5xx ``server``); no connection ``unavailable``; an error message from the server
by its id (``invalid_api_key`` and ``quota_exceeded`` ``auth``, ``too_many_concurrent_requests``
``rate_limit``, ``voice_not_found`` ``bad_request``, else ``server``); a close without one by its
code (1011-1014 ``server``, 1008 by its reason, else ``unavailable``); a message that does not
parse ``protocol``; no message for ``read_timeout_s`` mid-piece ``timeout``. The base class
retries and times the first byte; after audio was handed over errors propagate. The key goes
only in the ``xi-api-key`` header: never in the URL, a message, a log line or ``repr``, and any
text a server echoes is masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp

from runtime.pipeline.audio import ulaw_to_pcm16
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
from runtime.providers.wire_errors import redact, status_error

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
    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, api_key: str, *, voice: str = wire.DEFAULT_VOICE, model: str = wire.DEFAULT_MODEL,
                 url: str = wire.DEFAULT_URL, transport_rate: int = 8000, speed: float | None = None,
                 stability: float | None = None, similarity_boost: float | None = None,
                 language: str | None = None, policy: RetryPolicy | None = None) -> None:
        super().__init__(policy)
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
        self._reused = False  # the current socket has finished a piece
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

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        self._closed = False
        if not any(ch.isalnum() for ch in text):  # nothing to say: its text goes on
            yield AudioChunk(b"", self.rate, text)
            return
        async with self._busy:
            ws, context, frame = await self._open_piece(text)
            decode = self._decoder()
            try:
                while not frame.final:
                    if pcm := decode(frame.audio):
                        yield AudioChunk(pcm, self.rate, "")
                    frame = await self._receive(ws, context)
            except _Dropped as exc:
                self._discard(ws)
                raise exc.error from None
            except (GeneratorExit, asyncio.CancelledError):
                self._cancelled(ws, context)
                raise
            except BaseException:
                self._discard(ws)
                raise
            if self._ws is ws:
                self._reused = True
        yield AudioChunk(b"", self.rate, text)  # all of the piece's audio has been handed over

    async def _open_piece(self, text: str) -> tuple[Socket, str, wire.Frame]:
        """Send the piece on the socket (opened or reused) and wait for its first message; a
        reused socket found closed is replaced once."""
        for attempt in (1, 2):
            ws: Socket | None = None
            reused = False
            context = f"{self._prefix}-{next(self._ids)}"
            try:
                ws, reused = await self._socket()
                await self._send_piece(ws, context, text)
                return ws, context, await self._receive(ws, context)
            except _Dropped as exc:
                self._discard(ws)
                if reused and attempt == 1 and exc.error.kind in RETRYABLE:
                    log.info("elevenlabs: the idle socket was closed; reconnecting", extra={"why": str(exc.error)})
                    continue
                error = exc.error
            except asyncio.CancelledError:  # a missed first byte, or the consumer gave up
                self._cancelled(ws, context)
                raise
            except BaseException:
                self._discard(ws)
                raise
            raise error
        raise AssertionError("unreachable")

    async def _send_piece(self, ws: Socket, context: str, text: str) -> None:
        try:
            await ws.send_str(wire.initialise(context, self.voice_settings))
            await ws.send_str(wire.text(context, text))
            await ws.send_str(wire.close_context(context))
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise _Dropped(ProviderError(self.name, "unavailable",
                                         f"the socket closed while sending ({type(exc).__name__})")) from None

    async def _receive(self, ws: Socket, context: str) -> wire.Frame:
        """The next message of ``context`` (other contexts' messages and unknown types skipped)."""
        while True:
            try:
                message = await ws.receive(timeout=self.read_timeout_s)
            except TimeoutError:
                raise ProviderError(self.name, "timeout", f"no message for {self.read_timeout_s:g} s") from None
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
                if frame.context is not None and frame.context != context:
                    continue  # a context given up on earlier
                return frame
            if kind == WSMsgType.BINARY:
                raise ProviderError(self.name, "protocol", "a binary message (the protocol sends JSON text)")
            if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                code = ws.close_code if ws.close_code is not None else (message.data if kind == WSMsgType.CLOSE else None)
                reason = message.extra if kind == WSMsgType.CLOSE and isinstance(message.extra, str) else ""
                raise _Dropped(self._close_error(code, reason))
            if kind == WSMsgType.ERROR:
                raise _Dropped(ProviderError(self.name, "unavailable",
                                             f"the connection broke ({type(message.data).__name__})"))
            # PING/PONG: aiohttp answers pings itself

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

    def _cancelled(self, ws: Socket | None, context: str) -> None:
        """The consumer stopped before the piece's end: close the socket (no more audio is made for
        it) and open the next one now."""
        self.cancels += 1
        log.debug("elevenlabs: piece cut off; closing its socket", extra={"context": context})
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
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
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
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderError(self.name, "unavailable", f"cannot connect ({type(exc).__name__})")
        return ProviderError(self.name, "unavailable", f"the connection failed or broke ({type(exc).__name__})")


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
    url = ctx.base_url or ctx.fields.get("base_url") or settings.url
    return ElevenLabsTTS(key, voice=getattr(ctx.options, "voice", None) or settings.voice,
                         model=ctx.model or settings.model, url=url, transport_rate=ctx.transport_rate,
                         language=ctx.language, **ctx.given("speed", "stability", "similarity_boost"),
                         policy=ctx.policy)
