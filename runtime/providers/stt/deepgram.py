"""Deepgram live speech to text (nova-3 by default) over the listen WebSocket, with ``deepgram-sdk``.

The pipeline pushes PCM16 at ``rate``; telephony audio goes as mu-law 8 kHz (half the bytes, and
what the caller's line carried anyway), wideband as linear16. Interim results, endpointing,
``utterance_end_ms``, VAD events and smart formatting are on.

What the pipeline gets (runtime/pipeline/turns.py): interim transcripts while the caller speaks
(backchannel detection, ``transcript.interim``), finals as Deepgram makes them, and exactly one
final for each ``flush()``: the pipeline counts one final per flush. ``flush`` sends ``Finalize``;
the finals Deepgram returns after it are held and handed over as one transcript when Deepgram
marks the answer (``from_finalize``), when a final covers all audio sent before the flush, on
``UtteranceEnd``, or after ``finalize_timeout_s`` (Deepgram does not always answer a Finalize
when little audio is pending: "not guaranteed"). A flush with nothing unfinalized gets an empty
final at once. ``SpeechStarted`` and ``Metadata`` are logged, not passed on: the pipeline's own
VAD decides when the caller speaks.

Silence: the pipeline pushes only while it hears speech (its gate closes at the flush), so
a ``KeepAlive`` goes every ``keepalive_s`` without audio (Deepgram closes an idle socket after
10 s). ``close`` sends ``CloseStream`` and waits briefly for the last results.

A dropped socket is reopened at once (the policy's retries and backoff), and the audio sent since
the last final, kept in a bounded buffer, is sent again first, so nothing said is lost.
Transcript times stay on one timeline: ms of audio pushed since the stream opened (each
connection's times are offset by where its audio starts).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from runtime.audio import pcm16_to_ulaw
from runtime.providers.base import (
    ProviderError,
    RetryPolicy,
    SpeechToText,
    SttStream,
    Transcript,
    Word,
    with_retries,
)
from runtime.providers.registry import BuildContext
from runtime.providers.stt import deepgram_wire as wire
from runtime.providers.stt import hints

log = logging.getLogger("voicectl.providers.deepgram")

KEEPALIVE_S = 4.0  # Deepgram: every 3-5 s of silence
FINALIZE_TIMEOUT_S = 1.0  # words were pending: wait this long for the Finalize answer
QUIET_FINALIZE_S = 0.3  # no words pending (no interim text since the last final): barely wait
CLOSE_WAIT_S = 1.0  # after CloseStream, for the last results
REPLAY_MAX_S = 30.0  # audio kept for a replay after a drop
REPLAY_CHUNK_S = 0.5
COVER_TOLERANCE_S = 0.06  # a final ending this close to the flush point covers it
MAX_MALFORMED = 5  # consecutive malformed frames before the stream gives up (protocol)
MAX_RECONNECTS = 5  # consecutive drops with no result in between before it gives up


class DeepgramSTT(SpeechToText):
    """Deepgram live STT. One SDK client per adapter; one socket per ``open()`` stream."""

    name = "deepgram"
    interim_results = True
    keepalive_s: float = KEEPALIVE_S
    finalize_timeout_s: float = FINALIZE_TIMEOUT_S
    quiet_finalize_s: float = QUIET_FINALIZE_S

    def __init__(self, api_key: str, *, url: str = wire.DEFAULT_URL, model: str = "nova-3",
                 encoding: wire.Encoding = "mulaw", sample_rate: int = 8000, language: str = "en",
                 endpointing_ms: int = 300, utterance_end_ms: int = 1000, keyterms: tuple[str, ...] = (),
                 policy: RetryPolicy | None = None) -> None:
        super().__init__(policy)
        if encoding not in ("mulaw", "linear16"):
            raise ValueError(f"encoding must be mulaw or linear16, not {encoding!r}")
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        wire.environment_urls(url)  # a bad URL is a configuration error: say so now
        self.url = url
        self.options = wire.ListenOptions(model=model, encoding=encoding, sample_rate=sample_rate,
                                          language=language, endpointing_ms=endpointing_ms,
                                          utterance_end_ms=utterance_end_ms, keyterms=keyterms)
        self.rate = sample_rate
        self._api_key = api_key
        self._client: object | None = None
        self._streams: weakref.WeakSet[DeepgramStream] = weakref.WeakSet()

    def __repr__(self) -> str:  # never the key
        return f"DeepgramSTT(url={self.url!r}, model={self.options.model!r}, encoding={self.options.encoding!r})"

    async def connect(self) -> wire.Connection:
        """One socket, one attempt (``open`` and reconnects add the retries)."""
        if self._client is None:
            self._client = wire.make_client(self._api_key, self.url)
        return await wire.connect(self._client, self.options, self._api_key)

    async def _open(self) -> SttStream:
        stream = DeepgramStream(self, await self.connect())
        self._streams.add(stream)
        return stream

    async def check(self) -> None:
        """For ``voicectl doctor``: an authenticated handshake (no audio, nothing billed), then
        CloseStream. Raises ``ProviderError`` (auth, rate_limit, unavailable, ...)."""
        connection = await with_retries(self.name, self.policy, self.connect)
        try:
            await connection.close_stream()
        except wire.Closed:
            pass
        await connection.aclose()

    async def aclose(self) -> None:
        """Close streams still open (normally the pipeline has) and drop the client."""
        for stream in list(self._streams):
            await stream.close()
        self._client = None


@dataclass(slots=True, eq=False)
class _Flush:
    """One ``flush()`` waiting for its final: the finals that came after it, held."""

    cover: int  # stream position (bytes) of the audio pushed before the flush
    held: list[Transcript] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    speech_final: bool = False


class DeepgramStream(SttStream):
    """One call's recognition stream (see the module docstring)."""

    def __init__(self, stt: DeepgramSTT, connection: wire.Connection) -> None:
        self._stt = stt
        self.rate = stt.rate
        options = stt.options
        self._mulaw = options.encoding == "mulaw"
        self._bps = options.bytes_per_second
        self._width = options.sample_width
        self._conn: wire.Connection | None = connection
        self._conn_offset = 0  # stream position (bytes) where the current socket's audio starts
        self._buffer = bytearray()  # audio since the last final: replayed after a drop
        self._buffer_start = 0  # stream position of the buffer's first byte (= end of the last final)
        self._pushed = 0  # stream position: bytes pushed so far
        self._flushes: deque[_Flush] = deque()
        self._interim = ""  # latest interim text since the last final
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._closing = False
        self._failed: ProviderError | None = None
        self._malformed = 0
        self._drops = 0
        self.request_ids: list[str] = []  # Deepgram's, one per socket: for support tickets
        self.reconnects = 0
        self._reader: asyncio.Task[None] | None = self._loop.create_task(self._read(connection))
        self._reconnecting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keepalive = self._loop.create_task(self._keep_alive())

    # Audio in

    async def push(self, pcm: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closing or not pcm:
            return
        data = pcm16_to_ulaw(pcm) if self._mulaw else pcm
        self._buffer += data
        self._pushed += len(data)
        excess = len(self._buffer) - int(REPLAY_MAX_S * self._bps)
        if excess > 0:  # a very long final-less stretch: only the latest audio can be replayed
            del self._buffer[:excess]
            self._buffer_start += excess
        connection = self._conn
        if connection is None:
            return  # reconnecting: this audio goes with the replay
        try:
            await connection.send_audio(data)
        except wire.Closed:
            return  # the reader sees the drop and reconnects; the audio is in the buffer
        self._last_sent = self._loop.time()

    async def flush(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closing:
            return
        tolerance = int(COVER_TOLERANCE_S * self._bps)
        if not self._flushes and self._pushed - self._buffer_start <= tolerance:
            at = self._ms(self._pushed)
            self._emit(Transcript("", True, start_ms=at, end_ms=at))  # nothing unfinalized: nothing to wait for
            return
        pending = _Flush(cover=self._pushed)
        wait = self._stt.finalize_timeout_s if self._interim else self._stt.quiet_finalize_s
        pending.timer = self._loop.call_later(wait, self._expire, pending)
        self._flushes.append(pending)
        connection = self._conn
        if connection is None:
            return  # sent again after the reconnect
        try:
            await connection.finalize()
        except wire.Closed:
            return
        self._last_sent = self._loop.time()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._keepalive.cancel()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        connection, reader = self._conn, self._reader
        if connection is not None:
            try:
                await connection.close_stream()  # Deepgram answers with its last results, Metadata, then closes
            except wire.Closed:
                pass
            if reader is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(reader), CLOSE_WAIT_S)
                except (TimeoutError, Exception):
                    pass
            await connection.aclose()
        if reader is not None and not reader.done():
            reader.cancel()
        self._conn = None
        self._release_all()
        self._results.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Transcript]:
        while (item := await self._results.get()) is not None:
            if isinstance(item, ProviderError):
                raise item
            yield item

    # Server messages

    async def _read(self, connection: wire.Connection) -> None:
        while True:
            try:
                message = await connection.receive()
            except wire.Malformed as exc:
                self._malformed += 1
                log.warning("deepgram: malformed frame skipped (%s)", exc, extra={"consecutive": self._malformed})
                if self._malformed > MAX_MALFORMED:
                    self._fail(ProviderError(self._stt.name, "protocol",
                                             f"{self._malformed} malformed frames in a row (last: {exc})"))
                    return
                continue
            except wire.Closed as exc:
                if self._closing:
                    return
                if exc.code == wire.POLICY_VIOLATION:
                    self._fail(ProviderError(self._stt.name, "bad_request",
                                             "Deepgram closed the socket: it cannot decode the audio"))
                    return
                self._lost(connection)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything else from the socket layer: treat it as a drop
                log.warning("deepgram: the socket failed (%s)", type(exc).__name__)
                if not self._closing:
                    self._lost(connection)
                return
            self._malformed = 0
            if message is not None:
                self._handle(message)

    def _handle(self, message: wire.Message) -> None:
        if isinstance(message, wire.Results):
            self._drops = 0
            self._on_results(message)
        elif isinstance(message, wire.UtteranceEnd):
            if self._flushes:  # Deepgram saw the utterance end: everything said is final
                self._flushes[0].speech_final = True
                self._release(self._flushes[0])
        elif isinstance(message, wire.SpeechStarted):
            log.debug("deepgram: speech started", extra={"offset_ms": self._at(message.timestamp)})
        elif isinstance(message, wire.Metadata):
            self.request_ids.append(message.request_id)
            log.debug("deepgram: metadata", extra={"request_id": message.request_id})
        elif isinstance(message, wire.ServerError):
            log.warning("deepgram: error message %s", message.variant, extra={"description": message.description})

    def _on_results(self, results: wire.Results) -> None:
        words = tuple(Word(w.text, self._at(w.start), self._at(w.end)) for w in results.words)
        text = results.transcript.strip()
        start_ms, end_ms = self._at(results.start), self._at(results.end)
        if not results.is_final:
            self._interim = text
            if text:
                self._emit(Transcript(text, False, start_ms, end_ms, words, results.confidence))
            return
        self._interim = ""
        end = min(self._pushed, self._conn_offset + int(results.end * self._bps) // self._width * self._width)
        if end > self._buffer_start:  # audio up to here is final: no need to replay it
            del self._buffer[:end - self._buffer_start]
            self._buffer_start = end
        transcript = Transcript(text, True, start_ms, end_ms, words, results.confidence if text else None,
                                speech_final=results.speech_final)
        if not self._flushes:
            if text:
                self._emit(transcript)
            return
        head = self._flushes[0]
        head.held.append(transcript)
        if results.from_finalize or self._buffer_start >= head.cover - int(COVER_TOLERANCE_S * self._bps):
            self._release(head)

    # Flushes

    def _expire(self, pending: _Flush) -> None:
        while self._flushes and pending in self._flushes:
            self._release(self._flushes[0])

    def _release(self, pending: _Flush) -> None:
        """Hand over a flush's final: its held finals as one (empty when none came)."""
        if not self._flushes or self._flushes[0] is not pending:
            return
        self._flushes.popleft()
        if pending.timer is not None:
            pending.timer.cancel()
        self._emit(_merge(pending, self._ms(pending.cover)))
        # A later flush whose audio is already final needs no answer of its own.
        tolerance = int(COVER_TOLERANCE_S * self._bps)
        if self._flushes and self._flushes[0].cover - tolerance <= self._buffer_start and not self._interim:
            self._release(self._flushes[0])

    def _release_all(self) -> None:
        while self._flushes:
            self._release(self._flushes[0])

    # Keepalive, drops and failures

    async def _keep_alive(self) -> None:
        interval = self._stt.keepalive_s
        while not self._closing:
            wait = self._last_sent + interval - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            connection = self._conn
            if connection is not None:
                try:
                    await connection.keep_alive()
                except wire.Closed:
                    pass  # the reader handles the drop
            self._last_sent = self._loop.time()

    def _lost(self, connection: wire.Connection) -> None:
        if self._conn is not connection or self._failed is not None:
            return
        self._conn = None
        self._reconnecting = self._loop.create_task(self._reconnect(connection))

    async def _reconnect(self, dropped: wire.Connection) -> None:
        began = time.monotonic()
        await dropped.aclose(timeout=0.2)
        while not self._closing:
            self._drops += 1
            if self._drops > MAX_RECONNECTS:
                self._fail(ProviderError(self._stt.name, "unavailable",
                                         f"the socket dropped {MAX_RECONNECTS} times without a result"))
                return
            try:
                connection = await with_retries(self._stt.name, self._stt.policy, self._stt.connect)
            except ProviderError as exc:
                self._fail(exc)
                return
            offset = self._buffer_start
            try:
                replayed = await self._replay(connection, offset)
                if self._flushes:
                    await connection.finalize()
            except wire.Closed:
                await connection.aclose(timeout=0.2)
                continue
            except asyncio.CancelledError:  # close() during the replay: do not leave the socket open
                self._background(connection.aclose(timeout=0.2))
                raise
            if self._closing:
                await connection.aclose(timeout=0.2)
                return
            # No await between the replay catching up and this: pushes from now on go to the socket.
            self._conn_offset, self._conn = offset, connection
            self._last_sent = self._loop.time()
            deadline = self._loop.time()
            for pending in self._flushes:  # their wait starts again with the new socket
                if pending.timer is not None:
                    pending.timer.cancel()
                pending.timer = self._loop.call_at(deadline + self._stt.finalize_timeout_s, self._expire, pending)
            self.reconnects += 1
            self._reader = self._loop.create_task(self._read(connection))
            log.info("deepgram: reconnected after a drop", extra={
                "reconnect_ms": round((time.monotonic() - began) * 1000), "replayed_ms": self._ms(replayed)})
            return

    async def _replay(self, connection: wire.Connection, offset: int) -> int:
        """Send the buffered audio from ``offset``, then whatever was pushed meanwhile; bytes sent."""
        position, chunk = offset, max(self._width, int(REPLAY_CHUNK_S * self._bps))
        while position < self._pushed:
            low = max(position, self._buffer_start) - self._buffer_start
            data = bytes(self._buffer[low:low + chunk])
            if not data:
                break
            await connection.send_audio(data)
            position = self._buffer_start + low + len(data)
        return position - offset

    def _fail(self, error: ProviderError) -> None:
        if self._failed is not None:
            return
        self._failed = error
        connection, self._conn = self._conn, None
        self._keepalive.cancel()
        for pending in self._flushes:
            if pending.timer is not None:
                pending.timer.cancel()
        self._flushes.clear()
        if connection is not None:
            self._background(connection.aclose(timeout=0.2))
        self._results.put_nowait(error)

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)  # a reference until done (the loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)

    # Helpers

    def _emit(self, transcript: Transcript) -> None:
        if self._failed is None:
            self._results.put_nowait(transcript)

    def _ms(self, position: int) -> int:
        return position * 1000 // self._bps

    def _at(self, seconds: float) -> int:
        """A time on the current socket, as ms on the stream's timeline."""
        return round(self._conn_offset * 1000 / self._bps + seconds * 1000)


def _merge(pending: _Flush, at_ms: int) -> Transcript:
    held = pending.held
    if not held:
        return Transcript("", True, start_ms=at_ms, end_ms=at_ms, speech_final=pending.speech_final)
    spoken = [t for t in held if t.text]
    confidences = [t.confidence for t in spoken if t.confidence is not None]
    return Transcript(" ".join(t.text for t in spoken), True, held[0].start_ms, held[-1].end_ms,
                      tuple(w for t in held for w in t.words),
                      round(sum(confidences) / len(confidences), 3) if confidences else None,
                      speech_final=pending.speech_final or any(t.speech_final for t in held))


def build(ctx: BuildContext) -> DeepgramSTT:
    conf = ctx.settings
    # Telephony audio goes as it arrives (mu-law 8 kHz: half the bytes); wideband as 16 kHz PCM.
    narrow = ctx.transport_rate == 8000
    return DeepgramSTT(ctx.require_secret(), url=ctx.base_url or conf.url, model=ctx.model or conf.model,
                       encoding="mulaw" if narrow else "linear16", sample_rate=8000 if narrow else 16000,
                       language=ctx.language, **ctx.given("endpointing_ms", "utterance_end_ms"),
                       keyterms=keyterms(ctx), policy=ctx.policy)


def keyterms(ctx: BuildContext) -> tuple[str, ...]:
    """The version's keywords and its derived vocabulary hints, at most hints.MAX_TERMS."""
    return tuple(dict.fromkeys([*(ctx.options.keywords or ()), *ctx.hints]))[:hints.MAX_TERMS]
