"""Cartesia Sonic text to speech over its WebSocket, with the official ``cartesia`` SDK (4.x).

One WebSocket per adapter object (an adapter lives for one call), opened on the first piece and
reused for every piece after it (Cartesia: "do many generations over a single WebSocket ... use
a separate context for each generation"). Each ``synthesize(text)`` is one *context*: the text
is cut into sentences sent as inputs of that context with ``continue: true`` (prosody carries
across them), a flush between two sentences, and the last sentence with ``continue: false``.
The SDK opens the socket (URL, ``Authorization: Bearer``, ``Cartesia-Version``), serialises what
is sent and reads frames; this module routes frames to their context by ``context_id`` (frames
of a context nobody listens to any more are dropped) and checks every field
(runtime/providers/tts/cartesia_wire.py, which cites the documents the shapes come from; the
[WS], [CTX], [FLUSH] marks below refer to its list).

Audio: telephony (transport at 8 kHz) asks for ``pcm_mulaw`` at 8 kHz and decodes it to PCM16;
other transports get ``pcm_s16le`` at 16 or 24 kHz (the pipeline resamples).

Chunk text: audio chunks carry ``""``; a sentence's text rides on a zero-length chunk once all of
its audio has been handed over, i.e. when the first chunk of a later flush arrives (Cartesia
numbers a context's chunks by flush: ``flush_id`` 1 for the first sentence, 2 after the first
flush, ...) or when the context is done. Chunks without a ``flush_id`` only delay the texts to
the end of the context, never advance them. The chunks' texts concatenate to the input.

Barge-in: when the consumer stops iterating (the generator is closed, or its task cancelled)
before the context is done, ``{"context_id", "cancel": true}`` is sent so Cartesia generates no
more for it; the socket stays open for the next piece, and late frames of the cancelled
context are dropped.

Errors: a refused handshake 401/403 ``auth`` (never retried), 429 ``rate_limit`` with
``Retry-After``, 5xx ``server``; no connection ``unavailable``; a frame that does not parse
``protocol`` (the socket is then closed: which context the frame was for is unknown); an error
message is mapped by its ``status_code``. A socket that drops or breaks is reopened for the next
piece. Before the first chunk, the base class retries retryable errors on a new context; after
it, errors propagate. The key never appears in errors, logs or ``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

# Imported with the module (the registry imports it when a call is set up), not on the first
# piece: importing the SDK takes a few hundred ms.
from cartesia import APIConnectionError, APIStatusError, APITimeoutError, AsyncCartesia
from cartesia.types.websocket_client_event import CancelContextRequest
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from runtime.pipeline.audio import ulaw_to_pcm16
from runtime.providers.base import (
    AudioChunk,
    ErrorKind,
    ProviderError,
    RetryPolicy,
    TextToSpeech,
    with_retries,
)
from runtime.providers.registry import BuildContext
from runtime.providers.tts import cartesia_wire as wire
from runtime.providers.tts.local import split_sentences
from runtime.providers.wire_errors import redact, status_error, status_kind

log = logging.getLogger("voicectl.providers.cartesia")

DEFAULT_VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"  # "Barbershop Man" (CartesiaSettings' default)
DEFAULT_MODEL = "sonic-3"
REST_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # between two frames of a context once it has begun: a stalled server
CANCEL_TIMEOUT_S = 1.0  # sending a cancel on barge-in: a stuck socket must not hold the pipeline
CLOSE_TIMEOUT_S = 1.0


class _KeyMaskingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' connection logger with the key masked: at DEBUG websockets logs every header of
    the handshake, ``Authorization: Bearer <key>`` included (websockets/client.py send_request).
    Given to ``connect(logger=...)`` through the SDK's ``websocket_connection_options``."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        self.logger.log(level, "%s", text.replace(self._secret, "[redacted]"), **kwargs)


class _Socket:
    """One open TTS WebSocket (the SDK's ``AsyncTTSResourceConnection``) and the contexts reading
    from it. Whoever needs a frame reads one under the lock and files it in its context's inbox,
    so contexts on one socket never steal each other's frames and no background task is needed."""

    __slots__ = ("connection", "inboxes", "lock", "failure")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.inboxes: dict[str, deque[wire.Event]] = {}
        self.lock = asyncio.Lock()
        self.failure: tuple[ErrorKind, str] | None = None  # why the socket is unusable

    @property
    def usable(self) -> bool:
        if self.failure is not None:
            return False
        # The SDK's own check before a send (lib/_tts.py _ensure_connected).
        return getattr(self.connection, "_connection", None) is not None and \
            self.connection._connection.state is State.OPEN

    def broken(self, kind: ErrorKind, message: str) -> ProviderError:
        if self.failure is None:
            self.failure = (kind, message)
        return ProviderError(CartesiaTTS.name, *self.failure)

    async def send(self, message: Any) -> None:
        if self.failure is not None:
            raise ProviderError(CartesiaTTS.name, *self.failure)
        try:
            await self.connection.send(message)
        except ConnectionClosed as exc:
            raise self.broken("unavailable", f"the connection closed ({_close_code(exc)})") from None
        except OSError as exc:
            raise self.broken("unavailable", f"the connection broke ({type(exc).__name__})") from None

    async def next_event(self, context_id: str) -> wire.Event:
        inbox = self.inboxes[context_id]
        while not inbox:
            if self.failure is not None:
                raise ProviderError(CartesiaTTS.name, *self.failure)
            async with self.lock:
                if inbox:
                    break
                if self.failure is not None:
                    raise ProviderError(CartesiaTTS.name, *self.failure)
                try:
                    raw = await self.connection.recv_bytes()
                except ConnectionClosed as exc:
                    raise self.broken("unavailable", f"the connection closed ({_close_code(exc)})") from None
                except OSError as exc:
                    raise self.broken("unavailable", f"the connection broke ({type(exc).__name__})") from None
                try:
                    event = wire.parse(raw)
                except wire.Malformed as exc:
                    raise self.broken("protocol", f"malformed frame: {exc}") from None
                self._file(event)
        return inbox.popleft()

    def _file(self, event: wire.Event) -> None:
        if event.context_id is None:  # about the connection: every context listening gets it
            if isinstance(event, wire.Failure):
                for inbox in self.inboxes.values():
                    inbox.append(event)
        elif (inbox := self.inboxes.get(event.context_id)) is not None:
            inbox.append(event)
        # else: a context no longer listened to (cancelled, timed out): its late frames are dropped

    async def close(self) -> None:
        if self.failure is None:
            self.failure = ("unavailable", "the adapter closed the connection")
        try:
            await asyncio.wait_for(self.connection.close(), CLOSE_TIMEOUT_S)
        except (TimeoutError, Exception):  # closing a dead or stuck socket: nothing more to do
            pass


class CartesiaTTS(TextToSpeech):
    name = "cartesia"
    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, api_key: str, *, base_url: str = wire.DEFAULT_URL, voice: str = DEFAULT_VOICE,
                 model: str = DEFAULT_MODEL, speed: float | None = None, language: str = "en",
                 transport_rate: int = 8000, policy: RetryPolicy | None = None) -> None:
        super().__init__(policy)
        if not api_key:
            raise ValueError("Cartesia needs an API key")
        if not voice or not voice.strip():
            raise ValueError("a Cartesia voice id is required")
        if not model or not model.strip():
            raise ValueError("a Cartesia model id is required")
        if speed is not None and not wire.MIN_SPEED <= speed <= wire.MAX_SPEED:
            raise ValueError(f"speed must be between {wire.MIN_SPEED} and {wire.MAX_SPEED}, not {speed}")
        self.rest_url, self.ws_url = wire.endpoints(base_url)
        self.voice, self.model, self.speed = voice.strip(), model.strip(), speed
        self.language = wire.language_code(language)
        self.output, self.rate = wire.output_format(transport_rate)
        self._api_key = api_key
        # The SDK client (its REST client is used only by check(); no connection is made here).
        # max_retries=0: the policy retries (the SDK's own retries would hide the failover).
        self._client: Any = AsyncCartesia(api_key=api_key, base_url=self.rest_url, websocket_base_url=self.ws_url,
                                          max_retries=0, timeout=REST_TIMEOUT_S)
        self._ws_log = _KeyMaskingLogger(logging.getLogger("websockets.client"), api_key)
        self._socket: _Socket | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:  # never the key
        return (f"CartesiaTTS(url={self.rest_url!r}, voice={self.voice!r}, model={self.model!r}, "
                f"encoding={self.output['encoding']!r}, rate={self.rate})")

    # Synthesis

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        sentences = _sentences(text)
        if not sentences:  # nothing to say: its text goes on
            yield AudioChunk(b"", self.rate, text)
            return
        socket = await self._open()
        context_id = uuid.uuid4().hex
        socket.inboxes[context_id] = deque()
        finished = False
        try:
            for index, sentence in enumerate(sentences):
                last = index == len(sentences) - 1
                await socket.send(self._input(context_id, sentence, more=not last))
                if not last:  # [FLUSH]: the next sentence's chunks get the next flush_id
                    await socket.send(self._input(context_id, "", more=True, flush=True))
            released = 0  # sentences whose text has been handed over
            odd = b""  # pcm_s16le: a byte waiting for its sample's other half
            while True:
                try:
                    async with asyncio.timeout(self.read_timeout_s):
                        event = await socket.next_event(context_id)
                except TimeoutError:  # the server stopped mid-context: the socket is not trusted again
                    raise socket.broken("timeout", f"no frame for {self.read_timeout_s:g} s") from None
                if isinstance(event, wire.Chunk):
                    if event.flush_id is not None:  # every sentence before this flush has all its audio out
                        while released < min(event.flush_id - 1, len(sentences)):
                            yield AudioChunk(b"", self.rate, sentences[released])
                            released += 1
                    if self.output["encoding"] == "pcm_mulaw":
                        pcm = ulaw_to_pcm16(event.audio)
                    else:
                        data = odd + event.audio
                        cut = len(data) & ~1
                        pcm, odd = data[:cut], data[cut:]
                    if pcm:
                        yield AudioChunk(pcm, self.rate, "")
                    if not event.done:
                        continue
                elif isinstance(event, wire.Failure):
                    finished = event.done
                    raise self._message_error(event)
                elif not isinstance(event, wire.Done):
                    continue  # flush_done, timestamps, types added later
                finished = True
                for sentence in sentences[released:]:
                    yield AudioChunk(b"", self.rate, sentence)
                return
        finally:
            socket.inboxes.pop(context_id, None)
            if not finished:
                await self._cancel(socket, context_id)

    def _input(self, context_id: str, transcript: str, *, more: bool, flush: bool = False) -> dict[str, Any]:
        return wire.generation_request(context_id=context_id, model=self.model, voice=self.voice,
                                       transcript=transcript, output=self.output, language=self.language,
                                       speed=self.speed, more=more, flush=flush)

    async def _cancel(self, socket: _Socket, context_id: str) -> None:
        """Barge-in, a timeout or a failure before the context was done: Cartesia stops
        generating for it ([WS] "Use this to cancel a context, so that no more messages are
        generated for that context"; the SDK's ``AsyncWebSocketContext.cancel``)."""
        if not socket.usable:
            return
        try:
            await asyncio.wait_for(socket.send(CancelContextRequest(cancel=True, context_id=context_id)),
                                   CANCEL_TIMEOUT_S)
            log.debug("cartesia: cancelled context %s", context_id)
        except (TimeoutError, ProviderError):
            socket.broken("unavailable", "the connection stopped taking messages")

    def _message_error(self, event: wire.Failure) -> ProviderError:
        """An error message, by its ``status_code`` (UNSETTLED: without one it counts as a server
        error, so it is retried before the first audio)."""
        detail = redact(event.detail, self._api_key)
        if event.status is None:
            return ProviderError(self.name, "server", f"error message: {detail}")
        kind = status_kind(event.status)
        message = f"error message {event.status}: {detail}"
        if kind == "auth":
            message += " (the key was refused: check the tenant's credential)"
        return ProviderError(self.name, kind, message, status=event.status)

    # The socket

    async def _open(self) -> _Socket:
        """The adapter's socket, opened (again) when there is none or it broke."""
        socket = self._socket
        if socket is not None and socket.usable:
            return socket
        async with self._opening:
            socket = self._socket
            if socket is not None and socket.usable:
                return socket
            self._socket = None
            if socket is not None:
                await socket.close()
                log.info("cartesia: reopening the WebSocket (%s)", socket.failure[1] if socket.failure else "closed")
            self._socket = _Socket(await self._connect())
            return self._socket

    async def _connect(self) -> Any:
        """The SDK's ``tts.websocket_connect().enter()``; a refused or failed handshake as
        ``ProviderError`` (the SDK lets websockets' exceptions through: ``InvalidStatus`` carries
        the HTTP answer)."""
        failure: ProviderError | None = None
        try:
            options = {"logger": self._ws_log}  # passed on to websockets' connect()
            return await self._client.tts.websocket_connect(websocket_connection_options=options).enter()
        except InvalidStatus as exc:
            response = exc.response
            failure = status_error(self.name, response.status_code, response.headers,
                                   wire.error_text(response.body), self._api_key)
        except InvalidURI:
            failure = ProviderError(self.name, "bad_request", "the configured Cartesia URL is not valid")
        except InvalidMessage:
            failure = ProviderError(self.name, "unavailable", "the connection closed during the handshake")
        except InvalidHandshake as exc:
            failure = ProviderError(self.name, "protocol", f"the WebSocket handshake failed ({type(exc).__name__})")
        except TimeoutError:
            failure = ProviderError(self.name, "timeout", "the WebSocket handshake timed out")
        except OSError as exc:
            failure = ProviderError(self.name, "unavailable", f"cannot connect ({type(exc).__name__})")
        except Exception as exc:  # the SDK's CartesiaError (websockets missing) and the like
            failure = ProviderError(self.name, "unavailable", f"cannot open the WebSocket ({type(exc).__name__})")
        raise failure

    # Doctor

    async def check(self) -> None:
        """For ``voicectl doctor``: ``GET /voices/{voice}`` (the SDK's ``voices.get``), which needs
        the key and also proves the voice exists (404: ``bad_request``). The status endpoint
        ``GET /`` is documented with no security, so it would not test the key. Raises
        ``ProviderError``."""
        await with_retries(self.name, self.policy, self._probe)

    async def _probe(self) -> None:
        failure: ProviderError | None = None
        try:
            await self._client.voices.get(self.voice)
            return
        except APIStatusError as exc:
            try:
                body = exc.response.content  # read by the SDK before it raises
            except Exception:  # httpx.ResponseNotRead: no body to quote
                body = b""
            failure = status_error(self.name, exc.status_code, exc.response.headers, wire.error_text(body),
                                   self._api_key)
        except APITimeoutError:
            failure = ProviderError(self.name, "timeout", "the REST API did not answer in time")
        except APIConnectionError as exc:
            failure = ProviderError(self.name, "unavailable",
                                    f"cannot connect ({type(exc.__cause__ or exc).__name__})")
        raise failure

    async def aclose(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
        try:
            await self._client.close()
        except Exception:  # an HTTP client already closed or broken
            pass


def _sentences(text: str) -> list[str]:
    """``text`` cut into sentences, verbatim (they concatenate to it: Cartesia concatenates a
    context's transcripts verbatim, [CTX]); empty when there is nothing to say. A leading piece
    without a word joins the sentence after it."""
    if not any(ch.isalnum() for ch in text):
        return []
    pieces = split_sentences(text)
    while len(pieces) > 1 and not any(ch.isalnum() for ch in pieces[0]):
        pieces[1] = pieces[0] + pieces[1]
        del pieces[0]
    return pieces


def _close_code(exc: Any) -> str:
    received = getattr(exc, "rcvd", None)
    return f"code {received.code}" if received is not None else "no close frame"


def build(ctx: BuildContext) -> CartesiaTTS:
    conf = ctx.settings
    # URL precedence: the version's base_url, then the tenant credential's, then the appliance's.
    url = ctx.base_url or ctx.fields.get("base_url") or conf.url
    return CartesiaTTS(ctx.require_secret(), base_url=url, voice=getattr(ctx.options, "voice", None) or conf.voice,
                       model=ctx.model or conf.model, **ctx.given("speed"), language=ctx.language,
                       transport_rate=ctx.transport_rate, policy=ctx.policy)
