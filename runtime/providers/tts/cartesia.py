"""Cartesia Sonic text to speech over its WebSocket, with the official ``cartesia`` SDK (4.x).

One WebSocket per adapter object (an adapter lives for one call), opened on the first piece and
reused for every piece after it (Cartesia: "do many generations over a single WebSocket ... use
a separate context for each generation"). The SDK opens the socket (URL, ``Authorization:
Bearer``, ``Cartesia-Version``), serialises what is sent and reads frames; this module routes
frames to their context by ``context_id`` (frames of a context nobody listens to any more are
dropped) and checks every field (runtime/providers/tts/cartesia_wire.py, which cites the
documents the shapes come from; the [WS], [CTX], [FLUSH], [BUF] marks below refer to its list).
Every input asks for ``max_buffer_delay_ms: 0`` ([BUF]: the adapter sends whole sentences, so
Cartesia should not hold them back waiting for more text).

Two ways in, one context each:

- ``synthesize(text)``: the text is cut into sentences sent as inputs of one context with
  ``continue: true`` (prosody carries across them), a flush between two sentences, and the last
  sentence with ``continue: false``.
- ``synthesize_stream(pieces)`` (``streaming_text_input``): a reply's text as the model writes
  it, ONE context for the whole stream ([CTX] input streaming). A sender task beside the reading
  takes each piece as it arrives and sends its sentences at once (sentences are cut within a
  piece, never across two), each with ``continue: true`` and followed by a flush; so the next
  piece is being made while this one plays. When the pieces end, the context is ended as [CTX]
  documents for a last transcript not known in advance: an empty transcript with ``continue:
  false`` (the SDK's ``no_more_inputs`` sends the same). A piece without a word is not sent; its
  text follows the text before it. A stream with no word at all begins no context.

Chunk text: audio chunks carry ``""``; a sentence's text rides on a zero-length chunk once all of
its audio has been handed over, i.e. when the first chunk of a later flush arrives (Cartesia
numbers a context's chunks by flush: ``flush_id`` 1 for the first sentence, 2 after the first
flush, ...) or when the context is done. Texts of wordless pieces come right after the sentence
before them (before the first sentence's audio when none came before), each its own chunk.
Chunks without a ``flush_id`` only delay the texts to the end of the context, never advance
them. The chunks' texts concatenate to the input, and a piece's text never comes before its
last audio (the pipeline learns from them what the caller heard).

Barge-in: when the consumer stops iterating (the generator is closed, or its task cancelled)
before the context is done, ``{"context_id", "cancel": true}`` is sent so Cartesia generates no
more for it, and a stream's sender is cancelled at once (the pieces it was reading are closed:
nobody wants them any more); the socket stays open for the next piece, and late frames of the
cancelled context are dropped.

Errors: a refused handshake 401/403 ``auth`` (never retried), 429 ``rate_limit`` with
``Retry-After``, 5xx ``server``; no connection ``unavailable``; a frame that does not parse
``protocol`` (the socket is then closed: which context the frame was for is unknown); an error
message is mapped by its ``status_code``; no frame for ``read_timeout_s`` ``timeout`` (the socket
is not trusted again). A socket that drops or breaks is reopened for the next piece. Before the
first chunk, the base class retries retryable errors on a new context (a stream starts over
with the pieces taken so far: ``Replay``); after it, errors propagate as ``ProviderError`` after
the audio handed over so far, and ``FailoverTTS`` gives the text not yet handed over to the next
engine. So that they can, a failed stream does not cancel its sender while it waits for a piece:
the piece may arrive first (up to SOURCE_WAIT_S) and is kept by ``Replay`` for them; the sender
sends nothing more. The key never appears in errors, logs or ``repr``.

UNSETTLED (no document says): whether a flush alone would make Cartesia generate text it
buffers (moot with ``max_buffer_delay_ms: 0``); what a context that expires while more text is
to come does ([CTX]: contexts expire 1 s after their last audio and a later input has "undefined
behavior"; the pipeline ends a stream after a 0.5 s pause in its text, so the context gets its
next input or its end within 0.5 s of the last one, wordless pieces, which are not sent, aside).
A ``done`` before the stream's
last input is taken as the context having ended early: ``ProviderError`` ``server``, with the
texts of the sentences not yet confirmed left for the next attempt (a sentence may be said
twice, never skipped).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import SplitResult, urlsplit

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

from runtime.audio import ulaw_to_pcm16
from runtime.egress.policy import EgressPolicy, EgressRefused
from runtime.egress.resolve import open_socket, permitted_addresses
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
from runtime.providers.wire_errors import egress_refused, redact, status_error, status_kind

log = logging.getLogger("voicectl.providers.cartesia")

DEFAULT_VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"  # "Barbershop Man" (CartesiaSettings' default)
DEFAULT_MODEL = "sonic-3"
REST_TIMEOUT_S = 10.0
# Between two frames of a context once it has begun (a stream: since the wait began or the last
# input was sent): a stalled server.
READ_TIMEOUT_S = 30.0
CANCEL_TIMEOUT_S = 1.0  # sending a cancel on barge-in: a stuck socket must not hold the pipeline
CLOSE_TIMEOUT_S = 1.0
# A stream that failed lets the piece its sender is waiting for arrive (at most this long) before
# stopping it: cancelling the wait would close the caller's source of pieces, which the retry or
# the next engine of a fallback chain goes on reading. The pipeline's source answers within 0.5 s.
SOURCE_WAIT_S = 1.0


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


class _Flow:
    """What the sender of one context has sent, for its reader: the texts each flush's audio
    speaks, whether Cartesia knows the context yet and whether its last input is out."""

    __slots__ = ("slots", "leading", "begun", "ended", "stop", "last_sent")

    def __init__(self) -> None:
        # slots[k - 1]: the sentence whose audio carries flush_id k, then the texts of wordless
        # pieces that came after it (handed over with it, each as its own chunk).
        self.slots: list[list[str]] = []
        self.leading: list[str] = []  # wordless pieces before the first sentence
        self.begun = False  # an input was sent: Cartesia knows the context (a cancel is due)
        self.ended = False  # the input with continue: false is out (or going out)
        self.stop = False  # the reading is over: the sender sends nothing more
        self.last_sent = 0.0  # loop time of the last input sent (the read timeout runs from it)


class _Stopped(Exception):
    """The sender was told to stop (its context is being given up)."""


_Sender = Callable[[_Socket, str, _Flow], Awaitable[None]]


async def _sending(send: _Sender, socket: _Socket, context_id: str, flow: _Flow) -> None:
    try:
        await send(socket, context_id, flow)
    except _Stopped:
        pass


async def _stop(sender: asyncio.Task[None], *, at_once: bool) -> None:
    """Stop a context's sender (``flow.stop`` is set: it sends nothing more). When the consumer
    went away (``at_once``), it is cancelled now, wherever it is, closing the pieces it was
    reading with it (barge-in: nobody wants them any more). Otherwise (the stream ended, or failed)
    a piece it is waiting for may arrive first, up to SOURCE_WAIT_S, so that the source of pieces
    stays whole for whoever reads it next (Replay keeps the piece for them)."""
    try:
        if not at_once and not sender.done():
            await asyncio.wait((sender,), timeout=SOURCE_WAIT_S)
    finally:
        if not sender.done():
            sender.cancel()
        await asyncio.wait((sender,))
        if not sender.cancelled():
            sender.exception()  # retrieved: a failure of the sender is the reader's too, raised there


class CartesiaTTS(TextToSpeech):
    name = "cartesia"
    streaming_text_input = True  # one context per stream of pieces (_synthesize_stream)
    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, api_key: str, *, base_url: str = wire.DEFAULT_URL, voice: str = DEFAULT_VOICE,
                 model: str = DEFAULT_MODEL, speed: float | None = None, language: str = "en",
                 transport_rate: int = 8000, policy: RetryPolicy | None = None,
                 egress: EgressPolicy | None = None) -> None:
        super().__init__(policy)
        self.egress = egress  # a tenant's server: connect through the egress guard
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
        """One text on one context: its sentences, a flush between two, the last with
        ``continue: false`` (the end is known, so no separate end input)."""
        sentences = _sentences(text)
        if not sentences:  # nothing to say: its text goes on
            yield AudioChunk(b"", self.rate, text)
            return

        async def send(socket: _Socket, context_id: str, flow: _Flow) -> None:
            for index, sentence in enumerate(sentences):
                last = index == len(sentences) - 1
                flow.slots.append([sentence])
                flow.ended = last
                await self._send(socket, flow, self._input(context_id, sentence, more=not last))
                if not last:  # [FLUSH]: the next sentence's chunks get the next flush_id
                    await self._send(socket, flow, self._input(context_id, "", more=True, flush=True))

        async for chunk in self._speak(send, background=False):
            yield chunk

    async def _synthesize_stream(self, pieces: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        """Pieces arriving over time on one context: a sender task sends each piece's sentences
        as it arrives, each with ``continue: true`` and followed by a flush, and ends the context
        with an empty transcript and ``continue: false`` when the pieces end ([CTX])."""

        async def send(socket: _Socket, context_id: str, flow: _Flow) -> None:
            async for piece in pieces:
                sentences = _sentences(piece)
                if not sentences:  # no words: its text follows the text before it, unsent
                    (flow.slots[-1] if flow.slots else flow.leading).append(piece)
                    continue
                for sentence in sentences:
                    flow.slots.append([sentence])
                    await self._send(socket, flow, self._input(context_id, sentence, more=True))
                    # [FLUSH] right away: this sentence's audio keeps its flush_id, the next
                    # sentence (whenever it comes) gets the next one.
                    await self._send(socket, flow, self._input(context_id, "", more=True, flush=True))
            if flow.begun:  # else nothing was said: Cartesia never heard of the context
                flow.ended = True
                await self._send(socket, flow, self._input(context_id, "", more=False))

        async for chunk in self._speak(send, background=True):
            yield chunk

    async def _speak(self, send: _Sender, *, background: bool) -> AsyncIterator[AudioChunk]:
        """One context: ``send`` puts its inputs on the socket (at once, or as a task running
        beside the reading when ``background``); the frames of the context become chunks.

        A sentence's text (with the texts of wordless pieces after it) is handed over once all of
        its audio has been: when the first chunk of a later flush arrives, or the context is done.
        Wordless pieces before the first sentence go before its audio."""
        socket = await self._open()
        context_id = uuid.uuid4().hex
        socket.inboxes[context_id] = deque()
        flow = _Flow()
        sender: asyncio.Task[None] | None = None
        read: asyncio.Future[wire.Event] | None = None  # a frame being read while the sender runs
        finished = False  # Cartesia has ended the context: nothing to cancel
        gone = False  # the consumer stopped iterating (barge-in, a cancelled task)
        try:
            if background:
                sender = asyncio.get_running_loop().create_task(_sending(send, socket, context_id, flow))
            else:
                await send(socket, context_id, flow)
            released = 0  # slots whose texts have been handed over
            odd = b""  # pcm_s16le: a byte waiting for its sample's other half
            while True:
                if sender is not None and sender.done():
                    ended, sender = sender, None
                    ended.result()  # the sender's failure: a broken socket, or the pieces' own error
                    if not flow.begun:  # no piece had a word: their texts go on, no context begun
                        for text in flow.leading:
                            yield AudioChunk(b"", self.rate, text)
                        return
                if sender is None and read is None:
                    event = await self._next_event(socket, context_id)
                else:
                    if read is None:
                        read = asyncio.ensure_future(socket.next_event(context_id))
                    if not read.done() and not await self._await_frame(socket, read, sender, flow):
                        continue  # the sender ended first
                    taken, read = read, None
                    event = taken.result()
                if isinstance(event, wire.Chunk):
                    while flow.leading:  # wordless pieces before the first sentence: before its audio
                        yield AudioChunk(b"", self.rate, flow.leading.pop(0))
                    if event.flush_id is not None:  # every sentence before this flush has all its audio out
                        while released < min(event.flush_id - 1, len(flow.slots)):
                            for text in flow.slots[released]:
                                yield AudioChunk(b"", self.rate, text)
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
                if not flow.ended:
                    # UNSETTLED: [CTX] promises done only after the whole context; a context that
                    # idled past its expiry (1 s after its last audio) may end like this.
                    raise ProviderError(self.name, "server", "the context ended before its text did")
                for text in flow.leading:
                    yield AudioChunk(b"", self.rate, text)
                for slot in flow.slots[released:]:
                    for text in slot:
                        yield AudioChunk(b"", self.rate, text)
                return
        except (GeneratorExit, asyncio.CancelledError):
            gone = True
            raise
        finally:
            socket.inboxes.pop(context_id, None)
            flow.stop = True  # from here the sender sends nothing (an input already on its way goes first)
            if read is not None:
                read.cancel()  # recv is cancellation-safe (the SDK's recv_bytes)
            if flow.begun and not finished:
                await self._cancel(socket, context_id)
            if sender is not None:
                await _stop(sender, at_once=gone)

    async def _send(self, socket: _Socket, flow: _Flow, message: dict[str, Any]) -> None:
        if flow.stop:  # the reading is over: nothing more goes out for this context
            raise _Stopped
        flow.begun = True
        await socket.send(message)
        flow.last_sent = asyncio.get_running_loop().time()

    async def _next_event(self, socket: _Socket, context_id: str) -> wire.Event:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await socket.next_event(context_id)
        except TimeoutError:  # the server stopped mid-context: the socket is not trusted again
            raise socket.broken("timeout", f"no frame for {self.read_timeout_s:g} s") from None

    async def _await_frame(self, socket: _Socket, read: asyncio.Future[wire.Event],
                           sender: asyncio.Task[None] | None, flow: _Flow) -> bool:
        """Until ``read`` has a frame (True) or the sender ends (False). No frame for
        ``read_timeout_s`` since the wait began or the last input was sent is a timeout (a text
        source idle that long is one too: the context expired at Cartesia long before, [CTX])."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            left = max(began, flow.last_sent) + self.read_timeout_s - loop.time()
            if left <= 0:
                raise socket.broken("timeout", f"no frame for {self.read_timeout_s:g} s")
            waits = (read,) if sender is None else (read, sender)
            done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if read in done:
                return True
            if sender is not None and sender in done:
                return False

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
        sock = None
        try:
            options: dict[str, Any] = {"logger": self._ws_log}  # passed on to websockets' connect()
            if self.egress is not None:  # a tenant's server: websockets gets a socket the guard connected
                target = urlsplit(self.ws_url)
                sock = await open_socket(self.egress, target.hostname or "", target.port or _default_port(target))
                options["sock"] = sock
            return await self._client.tts.websocket_connect(websocket_connection_options=options).enter()
        except EgressRefused:
            failure = egress_refused(self.name)
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
        if sock is not None:
            sock.close()  # never taken over by a connection (a failed one has closed it already)
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
            if self.egress is not None:
                # The SDK's REST client cannot take the guard: its host is checked just before (doctor only).
                target = urlsplit(self.rest_url)
                await permitted_addresses(self.egress, target.hostname or "", target.port or _default_port(target))
            await self._client.voices.get(self.voice)
            return
        except EgressRefused:
            failure = egress_refused(self.name)
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
    tenant_url = ctx.tenant_url()
    return CartesiaTTS(ctx.require_secret(), base_url=tenant_url or conf.url,
                       voice=getattr(ctx.options, "voice", None) or conf.voice, model=ctx.model or conf.model,
                       **ctx.given("speed"), language=ctx.language, transport_rate=ctx.transport_rate,
                       policy=ctx.policy, egress=ctx.egress if tenant_url else None)


def _default_port(url: SplitResult) -> int:
    return 443 if url.scheme in ("https", "wss") else 80
