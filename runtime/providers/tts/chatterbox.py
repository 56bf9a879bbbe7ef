"""Chatterbox TTS through travisvn/chatterbox-tts-api (port 4123 by default), over aiohttp. Other
Chatterbox servers (devnen's Chatterbox-TTS-Server among them) speak other shapes and are not
supported. The wire shapes, with the server's source files, are in chatterbox_wire.py.

Streaming (``stream="wav"``, the default): ``POST /v1/audio/speech/stream``, which always answers
a streamed WAV (the server ignores ``stream_format`` there); ``stream="sse"``: ``POST
/v1/audio/speech`` with ``stream_format: "sse"``, the only route that honours it. Either way
``streaming_strategy`` and ``streaming_chunk_size`` make the server cut a sentence into short
pieces (whole words, "word") and send each piece's audio as soon as it is made, so the caller
hears the start of a sentence before the end is synthesised. ``stream="off"``: ``POST
/v1/audio/speech``, one whole WAV a sentence (16-bit, or 32-bit float when the server saves
without FFmpeg: converted).

Text goes one sentence per request (the first sentence's audio comes sooner, and a failure costs
at most the sentence in progress). Chunk text: streamed audio carries no alignment, so a
sentence's text rides on a zero-length chunk after its last audio: the pipeline's failover counts
a sentence as spoken only when all its audio was handed over, and repeats a sentence cut off by a
broken stream on the fallback engine. Unstreamed, each chunk is a whole sentence with its text.
Either way the texts of the chunks concatenate to the input.

First audio takes seconds on a GPU, so this provider has its own first-byte timeout
(``providers.chatterbox.first_byte_timeout_ms``, 8 s; runtime.providers.chains applies it).

Audio is PCM16 mono at the server's rate (24 kHz for Chatterbox, or what the WAV header or
``speech.audio.info`` says); the pipeline resamples it to the transport's rate. Errors: 401/403
``auth`` (never retried; the server has no keys itself, a proxy in front may), 429 ``rate_limit``
with ``Retry-After``, 5xx ``server``, no connection ``unavailable``, an answer that does not parse
``protocol``. A stream that breaks after audio was handed over raises ``ProviderError`` (the base
class retries only before the first chunk).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal, get_args

import aiohttp

from runtime.egress.aiohttp_client import session_for
from runtime.egress.policy import EgressPolicy, refused
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy, TextToSpeech, with_retries
from runtime.providers.registry import BuildContext
from runtime.providers.tts import chatterbox_wire as wire
from runtime.providers.tts.local import split_sentences
from runtime.providers.wire_errors import egress_refused, redact, status_error

DEFAULT_BASE_URL = "http://127.0.0.1:4123"
SPEECH_PATH = "/v1/audio/speech"
STREAM_PATH = "/v1/audio/speech/stream"
HEALTH_PATH = "/health"
MAX_INPUT = 3000  # the server refuses longer inputs (TTSRequest.input: max_length=3000)
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # between two reads of an answer: a server that stalls mid-sentence
MAX_ERROR_BODY = 4096
StreamMode = Literal["wav", "sse", "off"]
Strategy = Literal["sentence", "paragraph", "fixed", "word"]  # TTSRequest.validate_streaming_strategy


class ChatterboxTTS(TextToSpeech):
    name = "chatterbox"
    rate = wire.NATIVE_RATE
    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, api_key: str | None, *, base_url: str = DEFAULT_BASE_URL, voice: str = "default",
                 exaggeration: float | None = None, cfg_weight: float | None = None,
                 temperature: float | None = None, stream: StreamMode = "wav",
                 streaming_strategy: Strategy | None = "word", streaming_chunk_size: int | None = 50,
                 policy: RetryPolicy | None = None, egress: EgressPolicy | None = None) -> None:
        super().__init__(policy)
        self.egress = egress  # a tenant's server: connect through the egress guard
        # The server's ranges (app/models/requests.py TTSRequest); outside them it answers 422.
        _check_range("exaggeration", exaggeration, 0.25, 2.0)
        _check_range("cfg_weight", cfg_weight, 0.0, 1.0)
        _check_range("temperature", temperature, 0.05, 5.0)
        _check_range("streaming_chunk_size", streaming_chunk_size, 50, 500)
        if stream not in get_args(StreamMode):
            raise ValueError(f"stream must be one of {', '.join(get_args(StreamMode))}, not {stream!r}")
        if streaming_strategy is not None and streaming_strategy not in get_args(Strategy):
            raise ValueError(f"streaming_strategy must be one of {', '.join(get_args(Strategy))}, "
                             f"not {streaming_strategy!r}")
        url = base_url.strip().rstrip("/")
        self.base_url = url[:-3] if url.endswith("/v1") else url  # OpenAI-style base URLs end in /v1
        self.voice, self.stream = voice, stream
        self.streaming_strategy, self.streaming_chunk_size = streaming_strategy, streaming_chunk_size
        self.exaggeration, self.cfg_weight, self.temperature = exaggeration, cfg_weight, temperature
        self._api_key = api_key or None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"ChatterboxTTS(base_url={self.base_url!r}, voice={self.voice!r}, stream={self.stream!r})"

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        for sentence in split_sentences(text):
            for piece in wire.split_input(sentence, MAX_INPUT):
                if not any(ch.isalnum() for ch in piece):  # nothing to say: its text goes on
                    yield AudioChunk(b"", self.rate, piece)
                elif self.stream == "off":
                    yield await self._whole(piece)
                else:
                    async for chunk in self._streamed(piece):
                        yield chunk

    async def _streamed(self, piece: str) -> AsyncIterator[AudioChunk]:
        rate = self.rate
        path = STREAM_PATH if self.stream == "wav" else SPEECH_PATH
        try:
            async with self._http().post(self.base_url + path, json=self._body(piece)) as response:
                if response.status != 200:
                    raise await self._refused(response)
                chunks = response.content.iter_any()
                if response.content_type == "text/event-stream":
                    async for pcm in wire.sse_audio(chunks):
                        rate = pcm.rate
                        yield AudioChunk(pcm.data, pcm.rate, "")
                elif response.content_type.startswith("audio/"):
                    wav = wire.WavStream()
                    async for data in chunks:
                        if pcm := wav.feed(data):
                            rate = wav.rate or rate
                            yield AudioChunk(pcm, rate, "")
                    wav.finish()
                else:
                    raise ProviderError(self.name, "protocol", f"unexpected content type {response.content_type!r}")
        except (aiohttp.ClientError, TimeoutError, wire.Malformed, wire.ServerFailed) as exc:
            raise self._failure(exc) from None
        yield AudioChunk(b"", rate, piece)  # all of the sentence's audio has been handed over

    async def _whole(self, piece: str) -> AudioChunk:
        try:
            async with self._http().post(self.base_url + SPEECH_PATH, json=self._body(piece)) as response:
                if response.status != 200:
                    raise await self._refused(response)
                pcm = wire.whole_wav(await response.read())
        except (aiohttp.ClientError, TimeoutError, wire.Malformed) as exc:
            raise self._failure(exc) from None
        return AudioChunk(pcm.data, pcm.rate, piece)

    async def check(self) -> str:
        """For ``voicectl doctor``: ``GET /health`` answers and says the model is loaded (the
        server answers ``/v1/models`` and every other route while the model is still loading).
        Returns where the model runs; raises ``ProviderError``."""
        return await with_retries(self.name, self.policy, self._probe)

    async def _probe(self) -> str:
        try:
            async with self._http().get(self.base_url + HEALTH_PATH) as response:
                if response.status == 404:
                    raise ProviderError(self.name, "protocol", "no GET /health: not travisvn/chatterbox-tts-api?",
                                        status=404, detail="no /health (not travisvn/chatterbox-tts-api?)")
                if response.status != 200:
                    raise await self._refused(response)
                health = wire.health(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, wire.Malformed) as exc:
            raise self._failure(exc) from None
        except ValueError:
            raise ProviderError(self.name, "protocol", "/health did not answer JSON") from None
        # The server answers, but cannot speak (doctor: "server error" with the reason).
        if health.status == "error":  # initialisation failed: it stays so until the server restarts
            raise ProviderError(self.name, "server", "the server failed to load its model",
                                detail="the model failed to load (status: error)")
        if not health.ready:
            detail = f"model not loaded yet (status: {health.status})"
            raise ProviderError(self.name, "server", detail, detail=detail)
        return f"model loaded on {health.device}" if health.device else "model loaded"

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    # Helpers

    def _http(self) -> aiohttp.ClientSession:
        """The adapter's session, made on first use (it needs the running loop)."""
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = session_for(self.egress, headers=headers, timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self.read_timeout_s))
        return self._session

    def _body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"input": text.strip(), "response_format": "wav"}
        # Without a voice the server uses its configured one ("alloy" fills in and resolves to it,
        # unless the library has a voice or alias of that name: speech.py
        # resolve_voice_path_and_language); an unknown name also gets that voice, silently.
        if self.voice and self.voice != "default":
            body["voice"] = self.voice
        if self.stream == "sse":
            body["stream_format"] = "sse"
        if self.stream != "off":  # the whole-WAV path does not read them (generate_speech_internal)
            if self.streaming_strategy is not None:
                body["streaming_strategy"] = self.streaming_strategy
            if self.streaming_chunk_size is not None:
                body["streaming_chunk_size"] = self.streaming_chunk_size
        for key in ("exaggeration", "cfg_weight", "temperature"):
            if (value := getattr(self, key)) is not None:
                body[key] = value
        return body

    async def _refused(self, response: aiohttp.ClientResponse) -> ProviderError:
        try:
            raw = await asyncio.wait_for(response.content.read(MAX_ERROR_BODY), 1.0)
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        return status_error(self.name, response.status, response.headers, _error_message(raw), self._api_key)

    def _failure(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, wire.Malformed):
            return ProviderError(self.name, "protocol", f"malformed answer: {exc}")
        if isinstance(exc, wire.ServerFailed):
            return ProviderError(self.name, "server", f"the server failed mid-stream: {redact(str(exc), self._api_key)}")
        if isinstance(exc, TimeoutError):  # aiohttp's read and connect timeouts are TimeoutErrors too
            return ProviderError(self.name, "timeout", f"the server stopped answering ({type(exc).__name__})")
        if refused(exc):
            return egress_refused(self.name)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderError(self.name, "unavailable", f"cannot connect ({type(exc).__name__})")
        return ProviderError(self.name, "unavailable", f"the connection failed or broke ({type(exc).__name__})")


def _error_message(raw: bytes) -> str:
    """The message of an error body: FastAPI's ``{"detail": {"error": {"message"}}}``, OpenAI's
    ``{"error": {"message"}}``, a plain ``detail``, or the text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()
    if isinstance(body, dict):
        node: Any = body.get("detail", body)
        if isinstance(node, dict):
            node = node.get("error", node)
        if isinstance(node, dict):
            node = node.get("message", "")
        if isinstance(node, list):  # a validation error list
            node = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in node)
        return str(node)
    return str(body)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")


def build(ctx: BuildContext) -> ChatterboxTTS:
    conf = ctx.settings
    tenant_url = ctx.tenant_url()
    return ChatterboxTTS(ctx.secret, base_url=tenant_url or conf.base_url, voice=ctx.options.voice or conf.voice,
                         **ctx.given("exaggeration", "cfg_weight", "temperature"), stream=conf.stream,
                         streaming_strategy=conf.streaming_strategy, streaming_chunk_size=conf.streaming_chunk_size,
                         policy=ctx.policy, egress=ctx.egress if tenant_url else None)
