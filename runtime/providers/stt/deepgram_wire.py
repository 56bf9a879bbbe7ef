"""The Deepgram live-listen WebSocket through ``deepgram-sdk`` 7.x: connecting (options, the
``Authorization: Token`` header, handshake failures as ``ProviderError`` kinds), sending audio and
control messages, and reading server frames as typed messages.

The SDK builds the URL and header and sends the control messages. Its receive side parses frames
without validating them (``construct_type`` is lenient: a wrong field type passes through), so each
frame is checked here and a malformed one raises ``Malformed`` instead of reaching the stream as
half a message.

Secrets: when the handshake is refused the SDK raises ``ApiError`` carrying *our request headers*
(the key). It is never chained, logged or formatted here: the mapping happens outside the
``except`` block so the new error has no ``__context__`` pointing at it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Literal

PROVIDER = "deepgram"
DEFAULT_URL = "wss://api.deepgram.com"
POLICY_VIOLATION = 1008  # Deepgram closes with it when it cannot decode the audio: reconnecting will not help

Encoding = Literal["mulaw", "linear16"]


@dataclass(frozen=True, slots=True)
class ListenOptions:
    model: str = "nova-3"
    encoding: Encoding = "mulaw"
    sample_rate: int = 8000
    language: str = "en"
    endpointing_ms: int = 300
    utterance_end_ms: int = 1000
    keyterms: tuple[str, ...] = ()  # vocabulary hints (runtime.providers.stt.hints)

    def query(self) -> dict[str, str | list[str]]:
        """The ``/v1/listen`` query parameters (the SDK's parameter names; strings as on the wire; a
        list is a repeated parameter)."""
        query: dict[str, str | list[str]] = {
            "model": self.model, "encoding": self.encoding, "sample_rate": str(self.sample_rate),
            "channels": "1", "language": self.language, "interim_results": "true",
            "endpointing": str(self.endpointing_ms), "utterance_end_ms": str(self.utterance_end_ms),
            "vad_events": "true", "smart_format": "true",
        }
        if self.keyterms:  # nova-3 takes keyterm prompting; earlier models only keyword boosting
            query["keyterm" if self.model.startswith("nova-3") else "keywords"] = list(self.keyterms)
        return query

    @property
    def sample_width(self) -> int:
        return 1 if self.encoding == "mulaw" else 2

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.sample_width


# Server messages (times in seconds from the start of this connection's audio)


@dataclass(frozen=True, slots=True)
class DgWord:
    text: str  # punctuated when smart formatting gave one
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Results:
    start: float
    duration: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    transcript: str
    confidence: float | None
    words: tuple[DgWord, ...]

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    timestamp: float


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    last_word_end: float


@dataclass(frozen=True, slots=True)
class Metadata:
    request_id: str
    duration: float | None


@dataclass(frozen=True, slots=True)
class ServerError:
    variant: str
    description: str


Message = Results | SpeechStarted | UtteranceEnd | Metadata | ServerError


class Malformed(Exception):
    """A server frame that is not a well-formed Deepgram message (the text says what, never the frame)."""


class Closed(Exception):
    """The socket is closed (``code``: the close code received, None when it just dropped)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"socket closed ({code})")
        self.code = code


def environment_urls(url: str) -> tuple[str, str]:
    """(https base, wss base) for a configured URL: ws(s) or http(s), with or without ``/v1/listen``."""
    url = re.sub(r"/v1/listen/?$", "", url.strip().rstrip("/"))
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "wss", url
    secure = scheme in ("wss", "https")
    if scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"unsupported Deepgram URL scheme {scheme!r}")
    return f"{'https' if secure else 'http'}://{rest}", f"{'wss' if secure else 'ws'}://{rest}"


def make_client(api_key: str, url: str) -> Any:
    """An ``AsyncDeepgramClient`` whose environment points at ``url`` (the SDK imported on first use)."""
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    base, socket = environment_urls(url)
    env = DeepgramClientEnvironment(base=base, production=socket, agent=socket, agent_rest=base)
    return AsyncDeepgramClient(api_key=api_key, environment=env)


class Connection:
    """One open listen socket (the SDK's ``AsyncV1SocketClient`` inside its context manager)."""

    __slots__ = ("_context", "_socket", "_closed_error")

    def __init__(self, context: Any, socket: Any) -> None:
        self._context, self._socket = context, socket
        from websockets.exceptions import ConnectionClosed

        self._closed_error = ConnectionClosed

    async def send_audio(self, data: bytes) -> None:
        await self._send(self._socket.send_media, data)

    async def keep_alive(self) -> None:
        await self._send(self._socket.send_keep_alive)

    async def finalize(self) -> None:
        await self._send(self._socket.send_finalize)

    async def close_stream(self) -> None:
        await self._send(self._socket.send_close_stream)

    async def _send(self, method: Any, *args: Any) -> None:
        try:
            await method(*args)
        except self._closed_error as exc:
            raise Closed(exc.rcvd.code if exc.rcvd is not None else None) from None
        except OSError:
            raise Closed(None) from None

    async def receive(self) -> Message | None:
        """The next server message; None for a kind this adapter does not use. Raises ``Closed``
        when the socket closes and ``Malformed`` for a frame that is not a valid message."""
        try:
            frame = await self._socket.recv()
        except self._closed_error as exc:
            raise Closed(exc.rcvd.code if exc.rcvd is not None else None) from None
        except ValueError:  # the SDK's json.loads on a frame that is not JSON
            raise Malformed("a text frame that is not JSON") from None
        return parse(frame)

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close the socket (a clean close handshake when the server still answers)."""
        try:
            await asyncio.wait_for(self._context.__aexit__(None, None, None), timeout)
        except (TimeoutError, Exception):  # closing a dead or stuck socket: nothing more to do
            pass


async def connect(client: Any, options: ListenOptions, secret: str) -> Connection:
    """Open a listen socket; ``ProviderError`` (auth, rate_limit, server, unavailable, ...) when
    the handshake fails."""
    from deepgram.core.api_error import ApiError
    from websockets.exceptions import InvalidHandshake, InvalidMessage, InvalidURI

    from runtime.providers.base import ProviderError
    from runtime.providers.wire_errors import status_error

    failure: ProviderError | None = None
    refused: tuple[int, Any] | None = None
    context = client.listen.v1.connect(**options.query())
    try:
        socket = await context.__aenter__()
    except ApiError as exc:
        # exc.headers are OUR request headers (the key); the response's are on the websockets error.
        original = exc.__context__
        refused = (int(exc.status_code or 0), getattr(original, "headers", None))
    except InvalidURI:
        failure = ProviderError(PROVIDER, "bad_request", "the configured Deepgram URL is not valid")
    except InvalidMessage:
        failure = ProviderError(PROVIDER, "unavailable", "the connection closed during the handshake")
    except InvalidHandshake as exc:
        failure = ProviderError(PROVIDER, "protocol", f"the WebSocket handshake failed ({type(exc).__name__})")
    except OSError as exc:
        failure = ProviderError(PROVIDER, "unavailable", f"cannot connect ({type(exc).__name__})")
    if refused is not None:
        status, headers = refused
        failure = status_error(PROVIDER, status, headers, secret=secret)
    if failure is not None:
        raise failure
    return Connection(context, socket)


# Parsing (the SDK's lenient models, checked field by field)


def parse(frame: Any) -> Message | None:
    from deepgram.listen.v1.types import (
        ListenV1ConfigureFailure,
        ListenV1ConfigureSuccess,
        ListenV1Error,
        ListenV1Metadata,
        ListenV1Results,
        ListenV1SpeechStarted,
        ListenV1UtteranceEnd,
    )

    if isinstance(frame, ListenV1Results):
        return _results(frame)
    if isinstance(frame, ListenV1SpeechStarted):
        return SpeechStarted(_number(frame.timestamp, "timestamp"))
    if isinstance(frame, ListenV1UtteranceEnd):
        return UtteranceEnd(_number(frame.last_word_end, "last_word_end"))
    if isinstance(frame, ListenV1Metadata):
        request_id = frame.request_id
        if not isinstance(request_id, str):
            raise Malformed("Metadata without a request_id")
        duration = frame.duration
        return Metadata(request_id, float(duration) if _is_number(duration) else None)
    if isinstance(frame, ListenV1Error):
        return ServerError(str(frame.variant or "Error")[:80], str(frame.description or "")[:200])
    if isinstance(frame, ListenV1ConfigureSuccess | ListenV1ConfigureFailure):
        return None
    if isinstance(frame, bytes | bytearray):
        raise Malformed("a binary frame")
    # None (the SDK matched no message type) or a raw dict: not something Deepgram sends.
    raise Malformed("a frame of no known message type")


def _results(frame: Any) -> Results:
    channel = frame.channel
    alternatives = getattr(channel, "alternatives", None)
    if not isinstance(alternatives, list) or not alternatives:
        raise Malformed("Results without channel.alternatives")
    best = alternatives[0]
    transcript = getattr(best, "transcript", None)
    if not isinstance(transcript, str):
        raise Malformed("Results without a transcript")
    raw_words = getattr(best, "words", None) or []
    if not isinstance(raw_words, list):
        raise Malformed("Results with words that are not a list")
    words = []
    for word in raw_words:
        text = getattr(word, "punctuated_word", None) or getattr(word, "word", None)
        if not isinstance(text, str):
            raise Malformed("a word without text")
        words.append(DgWord(text, _number(getattr(word, "start", None), "word.start"),
                            _number(getattr(word, "end", None), "word.end")))
    confidence = getattr(best, "confidence", None)
    start = _number(frame.start, "start")
    duration = _number(frame.duration, "duration")
    if start < 0 or duration < 0:
        raise Malformed("Results with a negative time")
    return Results(start=start, duration=duration, is_final=_flag(frame.is_final, "is_final"),
                   speech_final=_flag(frame.speech_final, "speech_final"),
                   from_finalize=_flag(frame.from_finalize, "from_finalize"), transcript=transcript,
                   confidence=float(confidence) if _is_number(confidence) else None, words=tuple(words))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any, name: str) -> float:
    if not _is_number(value):
        raise Malformed(f"{name} is not a number")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Malformed(f"{name} is not a boolean")
    return value
