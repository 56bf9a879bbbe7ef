"""The ElevenLabs multi-context text-to-speech WebSocket, as data: the URL, the messages the
adapter sends, reading the server's messages, and what each failure means.

Sources (each shape below names the one it follows):

- [spec] ElevenLabs' AsyncAPI definition, github.com/elevenlabs/elevenlabs-docs
  ``fern/apis/api/asyncapi.yml`` (channels ``/v1/text-to-speech/{voice_id}/stream-input`` and
  ``.../multi-stream-input``, schemas ``InitialiseContext``, ``SendTextMulti``,
  ``CloseContext``, ``CloseSocket``, ``AudioOutputMulti``, ``FinalOutputMulti``,
  ``RealtimeVoiceSettings``, ``TextToSpeechOutputFormatEnum``); published as
  https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-multi-stream-input
- [sdk] the generated types of the ``elevenlabs`` package (2.78.0, in .venv):
  ``types/initialise_context.py``, ``send_text_multi.py``, ``close_context.py``,
  ``close_socket.py``, ``audio_output_multi.py``, ``final_output_multi.py``,
  ``realtime_voice_settings.py``, ``websocket_tts_server_message_multi.py``,
  ``text_to_dialogue_websocket_error.py``; ``models/raw_client.py`` (``GET v1/models``).
- [guide] "Multi-Context Websocket", elevenlabs-docs ``fern/docs/pages/best-practices/
  conversational-agents.mdx`` (https://elevenlabs.io/docs/eleven-api/guides/how-to/websockets/
  multi-context-web-socket): ``xi-api-key`` header, interruptions, 5 contexts per socket,
  ``inactivity_timeout``; "Generate audio in real-time", ``fern/docs/pages/developer-guides/
  websockets.mdx`` (https://elevenlabs.io/docs/websockets): text ends with a space, ``flush``.
- [help] ElevenLabs help center, "API - Error Code 400 or 401"
  (https://help.elevenlabs.io/hc/en-us/articles/19572237925521) and "API - Error Code 429"
  (https://help.elevenlabs.io/hc/en-us/articles/19571824571921): the ``detail.status`` ids
  ``invalid_api_key``, ``voice_not_found``, ``quota_exceeded``, ``max_character_limit_exceeded``,
  ``too_many_concurrent_requests``, ``system_busy`` and the ``{"detail": {"status", "message"}}``
  body.
- [impl] what two maintained clients of this endpoint do and saw: pipecat
  (github.com/pipecat-ai/pipecat ``src/pipecat/services/elevenlabs/tts.py`` and ``tts_base.py``)
  and LiveKit Agents (github.com/livekit/agents ``livekit-plugins/livekit-plugins-elevenlabs/
  livekit/plugins/elevenlabs/tts.py``), and livekit/agents-js issue #1985.

Not settled by any document (and what is done here):

- The casing of server fields: the schemas say ``contextId`` and ``isFinal``, the spec's
  example shows ``is_final``, and LiveKit reports the server "currently sends snake_case context
  IDs" (``context_id``). Both spellings of both are read.
- The error message of the TTS socket. Only the text-to-dialogue socket documents one
  (``{"message", "error", "code"}``, ``code`` being the close code that follows [sdk]); the same
  shape was seen on this socket (agents-js #1985: ``"error": "max_active_conversations", code
  1008``). It is read with that shape; ``error`` ids are mapped with the REST ids of [help].
- ``{"type": "flush_done", ...}`` messages (seen by LiveKit, in no schema): messages that carry a
  ``type`` and none of the documented fields are ignored.
- Which models take ``language_code`` ("for specific models" [spec]): the v2.5 models and their
  languages, as pipecat's ``tts_base.py`` lists them; other models get none.
- The alignment field names: the spec writes ``charsDurationsMs``, the SDK ``charDurationsMs``.
  Alignment is not used here (see the adapter), so neither matters.
- Several contexts on one socket: whether the server makes them at the same time (their messages
  interleaved, a later context's ``isFinal`` possibly first) or in turn. The spec's channel speaks
  of "concurrent or interleaved audio generations"; the adapter files every message by its
  context id and hands the audio over in piece order either way.
- When a context stops counting against the 5 [guide]: taken to be once its ``isFinal`` came (the
  adapter never has more than ``MAX_CONTEXTS`` sent and not final).
- A message without a context id: [spec] AudioOutputMulti and FinalOutputMulti have ``contextId``
  but do not list it as required. One without it is taken as the only live context's, and
  refused (``protocol``) when several are live.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from runtime.providers.base import ErrorKind

DEFAULT_URL = "wss://api.elevenlabs.io"  # [spec] servers; the REST API is https:// on the same host
DEFAULT_MODEL = "eleven_flash_v2_5"  # [guide] "For use cases where latency is important"
DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"  # "Rachel" [sdk] docstrings; a default ("premade") voice
AUTH_HEADER = "xi-api-key"  # [guide] headers: {'xi-api-key': ...}; [sdk] client_wrapper
STREAM_PATH = "/v1/text-to-speech/{voice_id}/multi-stream-input"  # [spec] channel
MODELS_PATH = "/v1/models"  # [sdk] models/raw_client.py: a JSON list of Model{model_id, ...}
INACTIVITY_TIMEOUT_S = 180  # [spec] inactivity_timeout: "can be up to 180 seconds" (default 20)
MAX_CONTEXTS = 5  # [guide] "Each connection is limited to 5 concurrent contexts": a stream's contexts in flight

# [impl] pipecat tts_base.py ELEVENLABS_V2_5_LANGUAGES / ELEVENLABS_MODEL_LANGUAGES.
V2_5_LANGUAGES = frozenset({
    "ar", "bg", "cs", "da", "de", "el", "en", "es", "fi", "fil", "fr", "hi", "hr", "hu", "id", "it", "ja",
    "ko", "ms", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sv", "ta", "tr", "uk", "vi", "zh",
})
LANGUAGE_MODELS = {"eleven_flash_v2_5": V2_5_LANGUAGES, "eleven_turbo_v2_5": V2_5_LANGUAGES}

# [spec] RealtimeVoiceSettings: speed "Values range from 0.7 to 1.2"; stability and
# similarity_boost are 0..1 (the REST VoiceSettings and the voice settings guide).
SPEED_RANGE = (0.7, 1.2)
UNIT_RANGE = (0.0, 1.0)


class Malformed(Exception):
    """A server message that breaks the protocol (the text says how, never the content)."""


# URLs


@dataclass(frozen=True, slots=True)
class Endpoints:
    ws: str  # wss://host[/prefix], for the WebSocket
    http: str  # https://host[/prefix], for REST (doctor)


def endpoints(url: str) -> Endpoints:
    """The WebSocket and REST bases of a server URL given as ``wss://``, ``ws://``, ``https://``
    or ``http://`` (a trailing ``/v1`` is dropped: both APIs' paths start with it)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("wss", "ws", "https", "http") or not parts.netloc:
        raise ValueError(f"an ElevenLabs URL must be wss://, ws://, https:// or http:// with a host, not {url!r}")
    secure = scheme in ("wss", "https")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return Endpoints(urlunsplit(("wss" if secure else "ws", parts.netloc, path, "", "")),
                     urlunsplit(("https" if secure else "http", parts.netloc, path, "", "")))


@dataclass(frozen=True, slots=True)
class OutputFormat:
    name: str  # the output_format query value
    rate: int
    mulaw: bool


def output_format(transport_rate: int) -> OutputFormat:
    """[spec] TextToSpeechOutputFormatEnum: telephony gets ``ulaw_8000`` (what the line carries:
    half the bytes, no resampling), 16 kHz transports ``pcm_16000``, anything else ``pcm_24000``
    (the pipeline resamples). ``pcm_*`` is 16-bit little-endian mono [impl: both clients play it
    as such]."""
    if transport_rate == 8000:
        return OutputFormat("ulaw_8000", 8000, True)
    if transport_rate == 16_000:
        return OutputFormat("pcm_16000", 16_000, False)
    return OutputFormat("pcm_24000", 24_000, False)


def language_code(model: str, language: str | None) -> str | None:
    """The ``language_code`` query value for ``model`` ([spec] "for specific models"), or None."""
    if not language:
        return None
    base = language.replace("_", "-").split("-", 1)[0].lower()
    return base if base in LANGUAGE_MODELS.get(model, ()) else None


def stream_url(base: Endpoints, voice: str, model: str, fmt: OutputFormat, language: str | None) -> str:
    """[spec] multi-stream-input query: ``model_id``, ``output_format``, ``language_code``,
    ``inactivity_timeout``, ``auto_mode`` ("Reduces latency by disabling chunk schedule and
    buffers. Recommended for full sentences/phrases": our pieces are sentences). The key is not in
    the URL: it goes in the ``xi-api-key`` header [guide]."""
    query: dict[str, Any] = {"model_id": model, "output_format": fmt.name}
    if language:
        query["language_code"] = language
    query["inactivity_timeout"] = INACTIVITY_TIMEOUT_S
    query["auto_mode"] = "true"
    return base.ws + STREAM_PATH.format(voice_id=quote(voice, safe="")) + "?" + urlencode(query)


# Client messages


def voice_settings(*, stability: float | None = None, similarity_boost: float | None = None,
                   speed: float | None = None) -> dict[str, float] | None:
    """[spec] RealtimeVoiceSettings with the values given (the rest keep the API's defaults);
    None when nothing is given (the voice's own settings then apply)."""
    given = {"stability": stability, "similarity_boost": similarity_boost, "speed": speed}
    settings = {key: value for key, value in given.items() if value is not None}
    return settings or None


def initialise(context: str, settings: dict[str, float] | None) -> str:
    """[spec] InitialiseContext / [sdk] initialise_context.py: the context's first message, a
    single space with the voice settings. [impl] pipecat: voice settings must come in a
    context's first message (a later one that differs is closed with 1008)."""
    message: dict[str, Any] = {"text": " ", "context_id": context}
    if settings:
        message["voice_settings"] = settings
    return json.dumps(message)


def text(context: str, piece: str) -> str:
    """[spec] SendTextMulti: the text ("Should end with a single space") and ``flush: true``
    ("flushes the audio buffer for the specified context"; [guide] "use the flush: true flag at
    the end of complete sentences")."""
    return json.dumps({"text": piece.strip() + " ", "context_id": context, "flush": True})


def close_context(context: str) -> str:
    """[spec] CloseContext: "If it has already been set to flush it will continue flushing"; the
    server's ``isFinal`` for the context follows its last audio ([impl] pipecat: "Sends
    close_context so isFinal arrives immediately after the last audio byte")."""
    return json.dumps({"context_id": context, "close_context": True})


CLOSE_SOCKET = json.dumps({"close_socket": True})  # [spec] CloseSocket: ends every context and the socket


# Server messages


@dataclass(frozen=True, slots=True)
class Frame:
    """Audio and/or the end of a context. [spec] AudioOutputMulti{audio (base64, in
    output_format), normalizedAlignment?, alignment?, contextId} and FinalOutputMulti{isFinal:
    true, contextId} ("audio will be null or empty")."""

    context: str | None
    audio: bytes
    final: bool


@dataclass(frozen=True, slots=True)
class ServerError:
    """An error message (shape: see the module docstring); ``code`` is the close code that
    follows it."""

    error: str
    message: str
    code: int | None
    context: str | None


@dataclass(frozen=True, slots=True)
class Other:
    """A message with a ``type`` and none of the documented fields (e.g. ``flush_done``)."""

    kind: str


def parse(data: str) -> Frame | ServerError | Other:
    try:
        message = json.loads(data)
    except ValueError:
        raise Malformed("a message that is not JSON") from None
    if not isinstance(message, dict):
        raise Malformed("a message that is not a JSON object")
    context = message.get("contextId", message.get("context_id"))
    if context is not None and not isinstance(context, str):
        raise Malformed("a context id that is not a string")
    error = message.get("error")
    if error:
        code = message.get("code")
        return ServerError(_short(error), _short(message.get("message") or ""),
                           code if isinstance(code, int) and not isinstance(code, bool) else None, context)
    final_key = "isFinal" if "isFinal" in message else "is_final"
    if "audio" not in message and final_key not in message:
        if isinstance(message.get("message"), str):  # an error without an id
            return ServerError("", _short(message["message"]), None, context)
        kind = message.get("type")
        if isinstance(kind, str):
            return Other(kind)
        raise Malformed("a message with none of audio, isFinal or error")
    audio = message.get("audio")
    if audio is None:
        pcm = b""
    elif isinstance(audio, str):
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("audio that is not base64") from None
    else:
        raise Malformed("audio that is not a base64 string")
    final = message.get(final_key)
    if final not in (None, True, False):
        raise Malformed("an isFinal that is not a boolean")
    return Frame(context, pcm, final is True)


def _short(value: Any) -> str:
    if isinstance(value, dict):  # {"status", "message"} like the REST detail
        value = value.get("message") or value.get("status") or ""
    return str(value)[:200]


# Failures

_AUTH = frozenset({"invalid_api_key", "authentication_required", "auth_error", "unauthorized", "missing_api_key",
                   "quota_exceeded", "missing_permissions", "payment_required", "detected_unusual_activity"})
_RATE = frozenset({"too_many_concurrent_requests", "system_busy", "rate_limit_exceeded", "max_active_conversations"})
_REQUEST = frozenset({"voice_not_found", "model_not_found", "invalid_request", "input_error", "value_error",
                      "max_character_limit_exceeded", "invalid_voice_settings", "unsupported_model"})


def error_kind(error: str, message: str = "") -> ErrorKind:
    """The kind of an error id [help] (``quota_exceeded`` is a 401 there: it fails over like a
    refused key, since retrying cannot help), else of its message."""
    ident = error.strip().lower()
    if ident in _AUTH:
        return "auth"
    if ident in _RATE:
        return "rate_limit"
    if ident in _REQUEST:
        return "bad_request"
    text_ = f"{ident} {message}".lower()
    if "api key" in text_ or "api_key" in text_ or "unauthori" in text_ or "authenticat" in text_ or "quota" in text_:
        return "auth"
    if "concurren" in text_ or "rate limit" in text_ or "too many" in text_:
        return "rate_limit"
    return "server"


def is_idle_close(error: str, message: str) -> bool:
    """The socket was closed for inactivity ([help] "the connection will automatically close
    after 20 seconds of inactivity"; the 1008 reason text is quoted in elevenlabs-docs#426:
    "Have not received a new text input within the timeout of 20 seconds")."""
    text_ = f"{error} {message}".lower()
    return "timeout" in text_ or "inactiv" in text_


# RFC 6455 section 7.4.1 / IANA: 1011 internal error, 1012 service restart, 1013 try again later,
# 1014 bad gateway. 1008 (policy violation) is what ElevenLabs closes with for refusals, with the
# reason in the close frame [impl: pipecat#1426, #4541] and its error message before it.
_SERVER_CLOSE = frozenset({1011, 1012, 1013, 1014})


def close_kind(code: int | None, reason: str) -> ErrorKind:
    if code in _SERVER_CLOSE:
        return "rate_limit" if code == 1013 else "server"
    if code == 1008 or (code is not None and code >= 4000):
        return error_kind("", reason)
    return "unavailable"


def detail_text(raw: bytes) -> str:
    """The message of a REST error body ([help] ``{"detail": {"status", "message"}}``, or a
    plain ``detail``), else the text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()
    node: Any = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(node, dict):
        status, message = node.get("status"), node.get("message")
        return ": ".join(str(part) for part in (status, message) if part)
    return str(node)
