"""A local Deepgram live-listen server (``/v1/listen`` WebSocket), driven by the test.

It speaks the documented protocol (PROTOCOLS.md "Deepgram live STT") with messages built from
``deepgram-sdk``'s own types (``ListenV1Results``, ``ListenV1SpeechStarted``, ...): auth by
``Authorization: Token <key>``, binary audio frames, the KeepAlive / Finalize / CloseStream
control messages, and Results / SpeechStarted / UtteranceEnd / Metadata answers.

"Recognition" is scripted: the server measures the audio it receives (decoded per the query's
encoding, 20 ms frames, loud = speech) and each run of speech is the next text of
``DeepgramScript.utterances``. While a run lasts it sends interim Results (a growing prefix);
``endpointing`` ms of silence ends it with a final (``speech_final``), ``Finalize`` ends it with a
final marked ``from_finalize``, and ``utterance_end_ms`` of silence after the last word sends
UtteranceEnd. Times are seconds of audio received on that connection, as Deepgram's are. A text is
used up only when its final is sent, so an utterance cut by a dropped socket is heard again
(whole) on the next connection.

Failures, per connection attempt, in order: ``rejects`` (an HTTP status instead of the upgrade,
with Deepgram's error body and an optional Retry-After), ``handshake_delays`` (seconds before
answering: a slow first byte), ``drops`` (abort the TCP connection once that many audio bytes
arrived, no close frame), ``garbage`` (frames that are not valid messages, sent after the first
audio) and ``garbage_only`` (answer audio only with such frames).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from peers.loopback import serve_loopback
from runtime.audio import rms, ulaw_to_pcm16

FRAME_MS = 20

# The examples of PROTOCOLS.md, for tests that check the peer's messages keep their shape.
DOCUMENTED_EXAMPLES: dict[str, dict[str, Any]] = {
    "Results": {"type": "Results", "is_final": True, "speech_final": True, "start": 0.0, "duration": 1.0,
                "channel": {"alternatives": [{"transcript": "hi", "confidence": 0.98, "words": [
                    {"word": "hi", "start": 0.1, "end": 0.4, "confidence": 0.98, "punctuated_word": "Hi."}]}]}},
    "UtteranceEnd": {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.3},
    "SpeechStarted": {"type": "SpeechStarted", "channel": [0], "timestamp": 0.5},
    "Metadata": {"type": "Metadata", "request_id": "...", "duration": 0.0, "channels": 1},
}

DEFAULT_GARBAGE: tuple[str | bytes, ...] = (
    "this is not json",
    '{"type": "Results", "channel": "not an object"}',
    '{"type": "Results", "start": "zero", "duration": 1.0, "is_final": true, '
    '"channel": {"alternatives": [{"transcript": "x", "confidence": 1, "words": []}]}}',
    "[1, 2, 3]",
    b"\x00\x01binary",
)


@dataclass(frozen=True)
class Reject:
    status: int
    retry_after: str | None = None
    err_code: str = ""


@dataclass
class DeepgramScript:
    utterances: list[str] = field(default_factory=list)
    api_key: str | None = "test-deepgram-key"  # the key accepted; None accepts any
    rejects: list[Reject | None] = field(default_factory=list)
    handshake_delays: list[float] = field(default_factory=list)
    drops: list[int | None] = field(default_factory=list)  # per accepted connection
    garbage: list[str | bytes] = field(default_factory=list)  # sent once, on the first connection
    garbage_only: bool = False
    answer_idle_finalize: bool = True  # Deepgram "may" not answer a Finalize with little audio pending
    interim_every_ms: int = 200
    speech_rms: int = 300
    request_delay_s: float = 0.0  # each result waits this long (a slow recognizer)


@dataclass
class ListenConnection:
    """What one accepted socket received and sent."""

    headers: dict[str, str]
    query: dict[str, str]
    request_id: str
    keyterms: list[str] = field(default_factory=list)  # the repeated keyterm parameters, in order
    audio: bytearray = field(default_factory=bytearray)
    controls: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    control_times: list[float] = field(default_factory=list)  # time.monotonic() per control message
    opened_at: float = 0.0
    ended: str = ""  # "closed" (CloseStream), "dropped" (by the script), "client" (the client went away)

    def control_types(self) -> list[str]:
        return [c.get("type", "?") for c in self.controls]

    def results(self, *, final: bool | None = None) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == "Results"
                and (final is None or bool(m.get("is_final")) == final)]


class _Recognizer:
    """Scripted recognition of one connection's audio (times in seconds of its audio)."""

    def __init__(self, server: DeepgramServer, conn: ListenConnection) -> None:
        self.server, self.conn = server, conn
        query = conn.query
        self.rate = int(query.get("sample_rate", "16000"))
        self.mulaw = query.get("encoding") == "mulaw"
        self.width = 1 if self.mulaw else 2
        self.frame_bytes = self.rate * FRAME_MS // 1000 * self.width
        self.endpointing_ms = int(query["endpointing"]) if query.get("endpointing", "false").isdigit() else None
        self.utterance_end_ms = int(query["utterance_end_ms"]) if query.get("utterance_end_ms") else None
        self.interims = query.get("interim_results") == "true"
        self.vad_events = query.get("vad_events") == "true"
        self.pending = bytearray()
        self.position_ms = 0  # audio received, in whole frames
        self.window_start_ms = 0  # where the next Results window starts (end of the last final)
        self.speaking = False  # speech since the last final
        self.utterance_start_ms = 0
        self.last_speech_end_ms = 0
        self.silence_ms = 0
        self.speech_ms = 0
        self.interims_sent = 0
        self.utterance_end_due: int | None = None  # last word end (ms) awaiting its UtteranceEnd

    def audio(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self.pending += data
        while len(self.pending) >= self.frame_bytes:
            frame = bytes(self.pending[:self.frame_bytes])
            del self.pending[:self.frame_bytes]
            pcm = ulaw_to_pcm16(frame) if self.mulaw else frame
            out += self._frame(rms(pcm) >= self.server.script.speech_rms)
        return out

    def _frame(self, speech: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = self.position_ms
        self.position_ms += FRAME_MS
        if speech:
            if not self.speaking:
                self.speaking, self.utterance_start_ms, self.speech_ms, self.interims_sent = True, start, 0, 0
                self.utterance_end_due = None
                if self.vad_events:
                    out.append(self.server.speech_started(start / 1000))
            self.speech_ms += FRAME_MS
            self.last_speech_end_ms, self.silence_ms = self.position_ms, 0
            every = self.server.script.interim_every_ms
            if self.interims and self.speech_ms // every > self.interims_sent:
                self.interims_sent = self.speech_ms // every
                out.append(self._results(final=False))
            return out
        self.silence_ms += FRAME_MS
        if self.speaking and self.endpointing_ms is not None and self.silence_ms >= self.endpointing_ms:
            out.append(self._results(final=True, speech_final=True))
        if (self.utterance_end_due is not None and self.utterance_end_ms is not None
                and self.position_ms - self.utterance_end_due >= self.utterance_end_ms):
            out.append(self.server.utterance_end(self.utterance_end_due / 1000))
            self.utterance_end_due = None
        return out

    def finalize(self) -> list[dict[str, Any]]:
        if self.speaking:
            return [self._results(final=True, from_finalize=True)]
        if self.server.script.answer_idle_finalize:
            return [self._results(final=True, from_finalize=True, text="")]
        return []

    def close(self) -> list[dict[str, Any]]:
        out = [self._results(final=True)] if self.speaking else []
        return out + [self.server.metadata(self.conn.request_id, self.position_ms / 1000)]

    def _results(self, *, final: bool, speech_final: bool = False, from_finalize: bool = False,
                 text: str | None = None) -> dict[str, Any]:
        words_text = (self.server.next_text() if text is None else text).split()
        if not final:  # a growing prefix while the caller speaks
            words_text = words_text[:max(1, min(len(words_text) - 1, self.interims_sent))] if words_text else []
        begin, end = self.utterance_start_ms, self.last_speech_end_ms
        step = (end - begin) / max(1, len(words_text))
        words = [(w, (begin + i * step) / 1000, (begin + (i + 1) * step) / 1000) for i, w in enumerate(words_text)]
        message = self.server.results(
            start=self.window_start_ms / 1000, duration=(self.position_ms - self.window_start_ms) / 1000,
            is_final=final, speech_final=speech_final, from_finalize=from_finalize,
            transcript=" ".join(words_text), words=words, request_id=self.conn.request_id)
        if final:
            if words_text:
                self.server.take_text()
                self.utterance_end_due = self.last_speech_end_ms
            self.window_start_ms, self.speaking = self.position_ms, False
        return message


class DeepgramServer:
    """``async with DeepgramServer(script) as server``: ``server.url`` for ``DeepgramSTT(url=...)``."""

    def __init__(self, script: DeepgramScript | None = None) -> None:
        self.script = script or DeepgramScript()
        self.attempts = 0  # handshakes seen (accepted or not)
        self.attempt_times: list[float] = []
        self.connections: list[ListenConnection] = []
        self._text_index = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> DeepgramServer:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        self._runner, self.port = await serve_loopback(app, handle_signals=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # Scripted texts

    def next_text(self) -> str:
        utterances = self.script.utterances
        return utterances[self._text_index] if self._text_index < len(utterances) else ""

    def take_text(self) -> None:
        self._text_index += 1

    # Messages, built with the SDK's types

    @staticmethod
    def results(*, start: float, duration: float, is_final: bool, speech_final: bool, from_finalize: bool,
                transcript: str, words: list[tuple[str, float, float]], request_id: str) -> dict[str, Any]:
        from deepgram.listen.v1.types import (
            ListenV1Results,
            ListenV1ResultsChannel,
            ListenV1ResultsChannelAlternativesItem,
            ListenV1ResultsChannelAlternativesItemWordsItem,
            ListenV1ResultsMetadata,
            ListenV1ResultsMetadataModelInfo,
        )

        items = [ListenV1ResultsChannelAlternativesItemWordsItem(
            word=w.strip(".,?!").lower(), start=round(s, 3), end=round(e, 3), confidence=0.97, punctuated_word=w)
            for w, s, e in words]
        message = ListenV1Results(
            channel_index=[0, 1], start=round(start, 3), duration=round(duration, 3), is_final=is_final,
            speech_final=speech_final, from_finalize=from_finalize or None,
            channel=ListenV1ResultsChannel(alternatives=[ListenV1ResultsChannelAlternativesItem(
                transcript=transcript, confidence=0.97 if transcript else 0.0, words=items)]),
            metadata=ListenV1ResultsMetadata(
                request_id=request_id, model_uuid=str(uuid.uuid4()),
                model_info=ListenV1ResultsMetadataModelInfo(name="general-nova-3", version="test", arch="nova-3")))
        return json.loads(message.json())

    @staticmethod
    def speech_started(timestamp: float) -> dict[str, Any]:
        from deepgram.listen.v1.types import ListenV1SpeechStarted

        return json.loads(ListenV1SpeechStarted(channel=[0], timestamp=round(timestamp, 3)).json())

    @staticmethod
    def utterance_end(last_word_end: float) -> dict[str, Any]:
        from deepgram.listen.v1.types import ListenV1UtteranceEnd

        return json.loads(ListenV1UtteranceEnd(channel=[0, 1], last_word_end=round(last_word_end, 3)).json())

    @staticmethod
    def metadata(request_id: str, duration: float) -> dict[str, Any]:
        from deepgram.listen.v1.types import ListenV1Metadata

        return json.loads(ListenV1Metadata(
            transaction_key="deprecated", request_id=request_id, sha256="0" * 64,
            created="2025-01-01T00:00:00.000Z", duration=round(duration, 3), channels=1).json())

    # The socket

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        index = self.attempts
        self.attempts += 1
        self.attempt_times.append(time.monotonic())
        script = self.script
        if index < len(script.handshake_delays):
            await asyncio.sleep(script.handshake_delays[index])
        reject = script.rejects[index] if index < len(script.rejects) else None
        key = script.api_key
        if reject is None and key is not None and request.headers.get("Authorization") != f"Token {key}":
            reject = Reject(401, err_code="INVALID_AUTH")
        if reject is not None:
            return self._refuse(reject)
        conn = ListenConnection(headers=dict(request.headers), query=dict(request.query),
                                request_id=str(uuid.uuid4()), opened_at=time.monotonic(),
                                keyterms=request.query.getall("keyterm", []))
        number = len(self.connections)
        self.connections.append(conn)
        ws = web.WebSocketResponse(autoping=True)
        try:
            await ws.prepare(request)
        except (ConnectionResetError, RuntimeError):  # the client gave up during a slow handshake
            conn.ended = "client"
            return ws
        self._sockets.add(ws)
        recognizer = _Recognizer(self, conn)
        drop_at = script.drops[number] if number < len(script.drops) else None
        garbage = list(script.garbage) if number == 0 else []
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    conn.audio += msg.data
                    if drop_at is not None and len(conn.audio) >= drop_at:
                        conn.ended = "dropped"
                        assert request.transport is not None
                        request.transport.abort()  # no close frame: a dropped socket
                        break
                    out = recognizer.audio(msg.data)
                    if script.garbage_only:
                        for frame in DEFAULT_GARBAGE:
                            await self._send_raw(ws, frame)
                        continue
                    for frame in garbage:
                        await self._send_raw(ws, frame)
                    garbage = []
                    await self._send(ws, conn, out)
                elif msg.type == WSMsgType.TEXT:
                    control = json.loads(msg.data)
                    conn.controls.append(control)
                    conn.control_times.append(time.monotonic())
                    kind = control.get("type")
                    if kind == "Finalize":
                        await self._send(ws, conn, recognizer.finalize())
                    elif kind == "CloseStream":
                        await self._send(ws, conn, recognizer.close())
                        conn.ended = "closed"
                        await ws.close(code=1000)
                        break
                else:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._sockets.discard(ws)
            if not conn.ended:
                conn.ended = "client"
        return ws

    def _refuse(self, reject: Reject) -> web.Response:
        headers = {"dg-error": reject.err_code or f"HTTP {reject.status}"}
        if reject.retry_after is not None:
            headers["Retry-After"] = reject.retry_after
        body = {"err_code": reject.err_code or ("TOO_MANY_REQUESTS" if reject.status == 429 else "ERROR"),
                "err_msg": "Invalid credentials." if reject.status == 401 else f"scripted {reject.status}",
                "request_id": str(uuid.uuid4())}
        return web.json_response(body, status=reject.status, headers=headers)

    async def _send(self, ws: web.WebSocketResponse, conn: ListenConnection, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if self.script.request_delay_s:
                await asyncio.sleep(self.script.request_delay_s)
            conn.sent.append(message)
            await ws.send_str(json.dumps(message))

    @staticmethod
    async def _send_raw(ws: web.WebSocketResponse, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
