"""Reading the Chatterbox TTS server's answers as PCM16 as the bytes arrive.

The server is travisvn/chatterbox-tts-api; each shape below is as its source writes it:

- ``POST /v1/audio/speech/stream``: a streamed WAV whatever ``stream_format`` says: a 16-bit mono
  header whose sizes are unknown (data 0xFFFFFFFF, RIFF 0x7FFFFFFF - 36), then the raw int16 PCM
  of each text chunk as it is made (app/api/endpoints/speech.py: ``stream_text_to_speech``,
  ``generate_speech_streaming``, ``create_wav_header``).
- ``POST /v1/audio/speech`` with ``stream_format: "sse"``: ``data:`` lines only, events
  ``speech.audio.info{sample_rate, channels, bits_per_sample}``, one ``speech.audio.delta{audio:
  base64 int16 PCM}`` per text chunk, ``speech.audio.done{usage}`` (speech.py
  ``generate_speech_sse``; app/models/responses.py ``SSEAudio*``).
- ``POST /v1/audio/speech`` otherwise: one whole WAV written by ``torchaudio.save`` of the model's
  float tensor (speech.py ``generate_speech_internal``). Which encoding that gives is torchaudio's
  choice, not settled by the server's source: 16-bit PCM through FFmpeg, 32-bit float
  (WAVE_FORMAT_IEEE_FLOAT, or EXTENSIBLE with the float sub-format) through soundfile or sox when
  FFmpeg is missing. Both are read; float becomes int16 as the server converts its streamed audio.
- ``GET /health``: ``status`` (starting | initializing | healthy | error), ``model_loaded``,
  ``device``, ... (app/api/endpoints/health.py, responses.py ``HealthResponse``).

A failure after the server has begun answering (a 200 is sent before synthesis starts) is not
an event or a status: the server raises inside its response generator and the connection is cut
short, which the client sees as a broken transfer. Anything that does not parse raises
``Malformed``; the adapter turns it into a ``protocol`` error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import numpy as np

NATIVE_RATE = 24_000
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one SSE event (a base64 delta of a few seconds is ~0.5 MB)
WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE
UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF - 36)  # streamed WAV headers: the length is not known yet
HEALTH_STATES = ("starting", "initializing", "healthy", "error")  # health.py's status values


class Malformed(Exception):
    """The server's answer does not follow the protocol (the text says how, never the content)."""


@dataclass(frozen=True, slots=True)
class Pcm:
    """Audio from the server: PCM16 mono at ``rate``."""

    data: bytes
    rate: int


class ServerFailed(Exception):
    """The server reported a failure inside a 200 stream."""


class _Samples:
    """Keeps samples whole (a partial one waits for the rest in the next piece) and hands them on
    as PCM16."""

    __slots__ = ("_carry", "_convert", "_width")

    def __init__(self, width: int = 2, convert: Callable[[bytes], bytes] | None = None) -> None:
        self._carry = b""
        self._width, self._convert = width, convert

    def take(self, data: bytes) -> bytes:
        data = self._carry + data
        cut = len(data) - len(data) % self._width
        self._carry = data[cut:]
        return self._convert(data[:cut]) if self._convert is not None else data[:cut]


def float_to_pcm16(data: bytes) -> bytes:
    """32-bit float samples as int16, the server's own conversion of its streamed audio
    (speech.py: ``torch.clamp(audio, -1.0, 1.0)``, ``* 32767``, ``.to(torch.int16)``, which truncates)."""
    samples = np.nan_to_num(np.frombuffer(data, dtype="<f4"), nan=0.0)
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict]:
    """The JSON object of each SSE event (``data:`` lines joined; ``event:``/``id:``/comments
    ignored: the JSON's ``type`` names the event). Lines are split here rather than with the
    client's ``readline``, whose limit a long base64 line exceeds."""
    buffer = bytearray()
    data: list[str] = []
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[:end + 1]
            if (event := _line(line, data)) is not None:
                yield event
        if len(buffer) + sum(map(len, data)) > MAX_EVENT_BYTES:
            raise Malformed("an SSE event larger than 16 MB")
    for line in (bytes(buffer), b""):  # a last line without its newline, then the event's end
        if (event := _line(line, data)) is not None:
            yield event


def _line(line: bytes, data: list[str]) -> dict | None:
    """One SSE line into ``data``; the event's JSON when the line ends an event."""
    line = line.rstrip(b"\r")
    if not line:
        if not data:
            return None
        joined = "\n".join(data)
        data.clear()
        return _event(joined)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("an SSE line that is not UTF-8") from None
    name, _, value = text.partition(":")
    if name == "data":
        data.append(value[1:] if value.startswith(" ") else value)
    return None


def _event(data: str) -> dict | None:
    if data.strip() == "[DONE]":  # some OpenAI-style servers end with it; the done event already said so
        return None
    try:
        event = json.loads(data)
    except ValueError:
        raise Malformed("an SSE event whose data is not JSON") from None
    if not isinstance(event, dict):
        raise Malformed("an SSE event whose data is not a JSON object")
    return event


async def sse_audio(chunks: AsyncIterator[bytes]) -> AsyncIterator[Pcm]:
    """PCM from the SSE stream, one piece per delta; raises ``Malformed`` when the stream breaks
    the protocol, ``ServerFailed`` for an error event; returns after ``speech.audio.done``."""
    rate = NATIVE_RATE
    samples = _Samples()
    async for event in sse_events(chunks):
        kind = event.get("type")
        if kind == "speech.audio.delta":
            audio = event.get("audio")
            if not isinstance(audio, str):
                raise Malformed("speech.audio.delta without base64 audio")
            try:
                pcm = samples.take(base64.b64decode(audio, validate=True))
            except (binascii.Error, ValueError):
                raise Malformed("speech.audio.delta whose audio is not base64") from None
            if pcm:
                yield Pcm(pcm, rate)
        elif kind == "speech.audio.info":
            rate = _format(event.get("sample_rate"), event.get("channels"), event.get("bits_per_sample"))
        elif kind == "speech.audio.done":
            return
        elif kind == "error" or "error" in event:
            raise ServerFailed(_error_text(event))
        # other event types: not ours to interpret
    raise Malformed("the stream ended before speech.audio.done")


def _error_text(event: dict) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or "error event")[:200]


def _format(rate: object, channels: object, bits: object) -> int:
    if not isinstance(rate, int) or isinstance(rate, bool) or not 4000 <= rate <= 192_000:
        raise Malformed("speech.audio.info without a usable sample_rate")
    if channels not in (1, None) or bits not in (16, None):
        raise Malformed("audio that is not 16-bit mono")
    return rate


class WavStream:
    """A WAV read as it arrives: ``feed`` bytes, get PCM16 out once the header has passed. Mono
    16-bit PCM or 32-bit float (converted)."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._samples = _Samples()
        self.rate: int | None = None
        self._left: int | None = None  # data bytes still expected (None: until the end)

    def feed(self, data: bytes) -> bytes:
        if self.rate is None:
            self._head += data
            parsed = _wav_header(bytes(self._head))
            if parsed is None:
                if len(self._head) > 64 * 1024:
                    raise Malformed("no WAV data chunk in the first 64 KB")
                return b""
            self.rate, offset, size, is_float = parsed
            if is_float:
                self._samples = _Samples(4, float_to_pcm16)
            self._left = None if size in UNKNOWN_SIZES else size
            data = bytes(self._head[offset:])
            self._head.clear()
        if self._left is not None:
            data = data[:self._left]
            self._left -= len(data)
        return self._samples.take(data)

    def finish(self) -> None:
        if self.rate is None:
            raise Malformed("the answer ended inside the WAV header")


def _wav_header(raw: bytes) -> tuple[int, int, int, bool] | None:
    """(rate, offset of the samples, declared data size, float samples) once the header is
    complete, else None."""
    if len(raw) < 12:
        return None
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise Malformed("audio that is not a RIFF/WAVE file")
    position, fmt = 12, None
    while position + 8 <= len(raw):
        chunk_id, size = raw[position:position + 4], struct.unpack_from("<I", raw, position + 4)[0]
        body = position + 8
        if chunk_id == b"data":
            if fmt is None:
                raise Malformed("a WAV data chunk before its fmt chunk")
            return fmt[0], body, size, fmt[1]
        if body + size > len(raw):
            return None
        if chunk_id == b"fmt ":
            fmt = _fmt(raw[body:body + size])
        position = body + size + (size & 1)  # other chunks (fact, PEAK, LIST) are skipped
    return None


def _fmt(chunk: bytes) -> tuple[int, bool]:
    """(rate, float samples) of a fmt chunk that is 16-bit PCM or 32-bit float mono."""
    if len(chunk) < 16:
        raise Malformed("a WAV fmt chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == WAVE_FORMAT_EXTENSIBLE:  # the real format is the first two bytes of the sub-format GUID
        if len(chunk) < 26:
            raise Malformed("a WAVE_FORMAT_EXTENSIBLE fmt chunk without its sub-format")
        tag = struct.unpack_from("<H", chunk, 24)[0]
    if channels != 1 or (tag, bits) not in ((WAVE_FORMAT_PCM, 16), (WAVE_FORMAT_IEEE_FLOAT, 32)):
        raise Malformed("audio that is not 16-bit PCM or 32-bit float mono")
    if not 4000 <= rate <= 192_000:
        raise Malformed("a WAV without a usable sample rate")
    return rate, tag == WAVE_FORMAT_IEEE_FLOAT


def whole_wav(raw: bytes) -> Pcm:
    wav = WavStream()
    pcm = wav.feed(raw)
    wav.finish()
    assert wav.rate is not None
    return Pcm(pcm, wav.rate)


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /health``: ``status`` one of HEALTH_STATES (else "unknown"); the device the model runs
    on, when it is a plain name ("cuda", "cpu", "mps")."""

    status: str
    model_loaded: bool
    device: str | None

    @property
    def ready(self) -> bool:
        # health.py: "healthy" once initialisation is "ready"; model_loaded: the model object exists.
        return self.status == "healthy" and self.model_loaded


def health(body: object) -> Health:
    if not isinstance(body, dict) or not isinstance(body.get("status"), str) \
            or not isinstance(body.get("model_loaded"), bool):
        raise Malformed("/health without a status and model_loaded")
    status = body["status"] if body["status"] in HEALTH_STATES else "unknown"
    device = body.get("device")
    plain = isinstance(device, str) and re.fullmatch(r"[A-Za-z0-9:._-]{1,32}", device) is not None
    return Health(status, body["model_loaded"], device if plain else None)


def split_input(text: str, limit: int) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a space where there is one."""
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit) + 1 or limit
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text
