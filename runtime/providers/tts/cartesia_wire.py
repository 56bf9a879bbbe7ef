"""Cartesia's TTS WebSocket messages, as this adapter sends and reads them (no SDK import here).

Sources read (cited beside each shape below):

- [WS]    docs.cartesia.ai/2024-11-13/api-reference/tts/websocket: the message examples (generation
          request, cancel, chunk, flush_done, done, timestamps, error) and docs.cartesia.ai/
          api-reference/tts/websocket.md (contexts; "do many generations over a single WebSocket").
- [CTX]   docs.cartesia.ai/api-reference/tts/working-with-web-sockets/contexts (the same page in
          github.com/cartesia-ai/docs, fern/api-reference/contexts.mdx): ``continue``; "inputs on
          the same context must keep all fields except transcript, continue, and duration the
          same"; "transcripts are concatenated verbatim"; "To finish a context, just set
          ``continue`` to ``false``. If you do not know the last transcript in advance, you can send
          an input with an empty transcript and ``continue`` set to ``false``"; "You will only
          receive ``done: true`` after outputs for the entire context have been returned";
          "Contexts automatically expire 1 second after the last output has been streamed out.
          Attempting to send another input on the same context ID immediately after expiry has
          undefined behavior".
- [BUF]   docs.cartesia.ai/use-the-api/tts-websocket/buffering: ``max_buffer_delay_ms`` "Range:
          0-5000ms, Default: 3000ms"; "Custom buffering: ... send complete phrases or sentences ...
          Set ``max_buffer_delay_ms`` to ``0`` so the API generates speech immediately"; "Avoid the
          middle ground: ... aggregate text client-side into sentences ... and use the default
          ... the API may wait up to 3000ms for additional input before generating speech".
- [FLUSH] docs.cartesia.ai/use-the-api/tts-websocket/context-flushing-and-flush-i-ds: a flush is
          ``continue: true, flush: true`` with an empty transcript; "all audio chunks from
          transcript 1 will have flush_id=1 ... from transcript 2 ... flush_id=2".
- [CONV]  docs.cartesia.ai/use-the-api/api-conventions: ``Authorization: Bearer <key>``, the
          ``Cartesia-Version`` header (``?cartesia_version`` on WebSockets), and "we may ... add
          variants to enum-like output values" (so unknown message types are ignored here).
- [SDK]   cartesia 4.2.0 (the installed package; github.com/cartesia-ai/cartesia-python):
          ``lib/_tts.py`` (``AsyncWebSocketContext.send``/``cancel``, the URL ``/tts/websocket``),
          ``AsyncWebSocketContext.no_more_inputs`` (``transcript: "", continue: false``),
          ``types/generation_request_param.py``, ``types/raw_output_format_param.py``,
          ``types/raw_encoding.py``, ``types/generation_config_param.py`` (speed 0.6-1.5, Sonic 3
          only), ``types/websocket_response.py`` (Chunk, FlushDone, Done, Timestamps, Error),
          ``types/supported_language.py``; MIGRATING.md ("v4.0 defaults Cartesia-Version to
          2026-08-14"; voice: "Pass a voice ID string. ``{"id": "..."}`` still works").

Labelled UNSETTLED where no document says.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "https://api.cartesia.ai"  # [CONV] base URL; the WebSocket is wss:// on the same host
WS_PATH = "/tts/websocket"  # [SDK] lib/_tts.py _prepare_url
MIN_SPEED, MAX_SPEED = 0.6, 1.5  # [SDK] generation_config_param.py: "[0.6, 1.5] inclusive"
# [SDK] raw_output_format_param.py: sample_rate is one of these.
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
# [BUF] custom buffering: the adapter sends whole sentences, so the server should not hold them
# back waiting for more text (its default would wait up to 3000 ms on every ``continue: true``).
MAX_BUFFER_DELAY_MS = 0


class Malformed(Exception):
    """A frame that is not a Cartesia message (the text says how, never the content)."""


# Where to connect


def endpoints(url: str) -> tuple[str, str]:
    """(REST base, WebSocket base) for a configured URL: ``https://host`` (the documented form),
    ``http://host`` (a local test server), or the WebSocket form ``wss://host[/tts/websocket]``.
    The SDK turns a REST base into ``wss://`` itself, which a plain-HTTP server would refuse,
    so both bases are given to it explicitly. ValueError for anything else."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"the Cartesia URL must be http(s):// or ws(s)://host, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("the Cartesia URL must not have a query or fragment")
    path = parts.path.rstrip("/")
    if path.endswith(WS_PATH):
        path = path[:-len(WS_PATH)]
    secure = scheme in ("https", "wss")
    rest = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    socket = urlunsplit(("wss" if secure else "ws", parts.netloc, path, "", ""))
    return rest, socket


def output_format(transport_rate: int) -> tuple[dict[str, Any], int]:
    """(output_format, PCM rate handed on) for a transport: telephony gets ``pcm_mulaw`` at 8 kHz
    (what the line carries, half the bytes), decoded to PCM16 here; wider transports get
    ``pcm_s16le`` at 16 kHz, or 24 kHz above that (the pipeline resamples). [SDK] raw_encoding.py,
    raw_output_format_param.py; [WS] ``{"container": "raw", "encoding": ..., "sample_rate": ...}``."""
    if transport_rate == 8000:
        return {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}, 8000
    rate = 16000 if transport_rate <= 16000 else 24000
    return {"container": "raw", "encoding": "pcm_s16le", "sample_rate": rate}, rate


def language_code(language: str) -> str:
    """Cartesia's ``language`` is a bare ISO 639-1 code ([SDK] supported_language.py: "en", "fr",
    ...); an agent's "pt-BR" is sent as "pt"."""
    code = language.strip().replace("_", "-").split("-")[0].lower()
    if not code.isalpha() or not 2 <= len(code) <= 3:
        raise ValueError(f"not a language code: {language!r}")
    return code


# What the adapter sends


def generation_request(*, context_id: str, model: str, voice: str, transcript: str, output: dict[str, Any],
                       language: str, speed: float | None, more: bool, flush: bool = False) -> dict[str, Any]:
    """One input of a context. [WS] example request: ``model_id, transcript, voice, language,
    context_id, output_format, add_timestamps, continue``; [CTX] every input of a context repeats
    the same fields, only ``transcript``/``continue`` change. ``voice``: ``{"id": ...}``, the shape
    [SDK] MIGRATING.md gives for Cartesia-Version 2026-08-14 (the version the SDK sends; the
    2024-11-13 docs show ``{"mode": "id", "id": ...}``). ``flush``: [FLUSH]. ``speed``:
    ``generation_config.speed`` ([SDK] generation_config_param.py; Sonic 3 models only).
    ``max_buffer_delay_ms``: 0, [BUF] (sent on every input: [CTX] a context's inputs keep their
    fields). Word timestamps are not asked for (the text is paired with audio through flush ids).
    The end of a context whose last transcript was not known when it was sent: ``transcript=""``,
    ``more=False`` ([CTX]; the SDK's ``no_more_inputs`` sends the same)."""
    request: dict[str, Any] = {
        "context_id": context_id,
        "model_id": model,
        "transcript": transcript,
        "voice": {"id": voice},
        "output_format": output,
        "language": language,
        "continue": more,
        "max_buffer_delay_ms": MAX_BUFFER_DELAY_MS,
    }
    if flush:
        request["flush"] = True
    if speed is not None:
        request["generation_config"] = {"speed": speed}
    return request


# What the server sends ([WS] examples; [SDK] types/websocket_response.py)


@dataclass(frozen=True, slots=True)
class Chunk:
    """``{"type": "chunk", "data": base64, "done": false, "status_code": 206, "step_time",
    "context_id", "flush_id"?}``."""

    context_id: str
    audio: bytes
    flush_id: int | None
    done: bool  # [SDK] Chunk.done: "whether this is the final chunk for this context"


@dataclass(frozen=True, slots=True)
class Done:
    """``{"type": "done", "done": true, "status_code", "context_id"}``: the context is finished."""

    context_id: str


@dataclass(frozen=True, slots=True)
class Failure:
    """``{"type": "error", "done", "status_code"?, "title"?, "message"?, "error"?, "error_code"?,
    "context_id"?}`` ([WS] shows ``error``; [SDK] Error has title/message/error_code/doc_url/
    request_id). Without a ``context_id`` it concerns the whole connection."""

    context_id: str | None
    status: int | None
    detail: str
    done: bool


@dataclass(frozen=True, slots=True)
class Other:
    """``flush_done``, ``timestamps``, ``phoneme_timestamps`` and types added later ([CONV]): not
    used by this adapter. UNSETTLED: whether ``flush_done`` follows the flushed transcript's
    audio or only acknowledges the flush ("Acknowledgment that flush command was received"), so
    nothing here relies on it."""

    context_id: str | None
    kind: str


Event = Chunk | Done | Failure | Other


def parse(raw: bytes | str) -> Event:
    """One server frame; ``Malformed`` when it is not a message this protocol defines."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("a frame that is not JSON") from None
    if not isinstance(message, dict):
        raise Malformed("a frame that is not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise Malformed("a message without a type")
    context_id = message.get("context_id")
    if context_id is not None and not isinstance(context_id, str):
        raise Malformed(f"a {kind} message whose context_id is not a string")
    if kind == "chunk":
        data = message.get("data")
        if not isinstance(data, str) or context_id is None:
            raise Malformed("a chunk without base64 data or a context_id")
        try:
            audio = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("a chunk whose data is not base64") from None
        flush_id = message.get("flush_id")
        if not _is_int(flush_id):
            flush_id = None
        return Chunk(context_id, audio, flush_id, message.get("done") is True)
    if kind == "done":
        if context_id is None:
            raise Malformed("a done message without a context_id")
        return Done(context_id)
    if kind == "error":
        status = message.get("status_code")
        # done: the context is over (no cancel needed); when not said, it is cancelled to be sure.
        return Failure(context_id, status if _is_int(status) else None, _error_detail(message),
                       message.get("done") is True)
    return Other(context_id, kind)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _error_detail(message: dict[str, Any]) -> str:
    """``title: message`` (the SDK's ``Error.error``), else ``error``, else the error code."""
    title, text = message.get("title"), message.get("message")
    parts = [str(part) for part in (title, text) if isinstance(part, str) and part]
    if parts:
        return ": ".join(parts)
    for key in ("error", "error_code", "detail"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return "error message"


def error_text(raw: bytes | str | None) -> str:
    """The message of a refused handshake's or REST answer's body. UNSETTLED: the body of a
    refused WebSocket upgrade is not documented; the error message's fields are read when it is
    JSON, else the text."""
    if not raw:
        return ""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", errors="replace").strip() if isinstance(raw, bytes | bytearray) else raw.strip()
    if isinstance(body, dict):
        return _error_detail(body) if any(k in body for k in ("title", "message", "error", "error_code", "detail")) \
            else ""
    return str(body)
