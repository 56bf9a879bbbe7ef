"""OpenAI text to speech (``POST /v1/audio/speech``) through the official ``openai`` SDK, streamed
as raw PCM, one request per sentence.

Wire (sources beside each point):

- Request: ``client.audio.speech.with_streaming_response.create(model, input, voice,
  response_format="pcm", speed?, instructions?)``, a JSON POST to ``{base_url}/audio/speech``
  with ``Authorization: Bearer <key>`` and ``Accept: application/octet-stream`` (the SDK's
  ``resources/audio/speech.py``). ``input`` is at most 4096 characters, ``speed`` 0.25 to 4.0,
  ``instructions`` "does not work with tts-1 or tts-1-hd" (the same file's docstrings, and
  ``types/audio/speech_create_params.py``). ``stream_format`` is left out: its default,
  ``audio``, is the raw byte stream we read (``sse`` would wrap it in base64 events, and is not
  supported by tts-1).
- Answer: "PCM: Similar to WAV but contains the raw samples in 24kHz (16-bit signed,
  low-endian), without the header", streamed with chunked transfer encoding so "the audio can be
  played before the full file is generated" (OpenAI's text-to-speech guide,
  developers.openai.com/api/docs/guides/text-to-speech, "Supported output formats" and
  "Streaming realtime audio"). Mono: the guide's Java example opens the line as
  ``AudioFormat(24_000, 16, 1, true, false)`` and the SDK's ``helpers/local_audio_player.py``
  plays it as one channel of int16 at ``SAMPLE_RATE = 24000``.
- The answer's content type for ``pcm`` is not documented (openai/openai-openapi#141: the spec
  says ``application/octet-stream``, the API sends specific ``audio/*`` types). We accept any
  ``audio/*`` type that is not a known container/codec (``audio/pcm`` is what compatible servers
  send), ``application/octet-stream``, or none; anything else (a JSON or HTML page with a 200,
  an MP3 from a server that ignored ``response_format``) is a ``protocol`` error, as is a body
  that starts like a JSON error object or an HTML page whatever its type says.

Streaming: bytes are handed on as the connection delivers them (``iter_bytes()`` without a chunk
size); an odd byte at the end of a network chunk waits for its partner, so every ``AudioChunk``
holds whole samples (a lone byte at the end of an answer is dropped). Text goes one sentence
per request (``split_sentences``; a sentence longer than 4096 characters in several pieces):
the first sentence's audio comes sooner, and a failure costs at most the sentence in progress.
As with Chatterbox, streamed audio carries no alignment: a sentence's text rides on a
zero-length chunk after its last audio, so the chunks' texts concatenate to the input and the
failover counts a sentence as spoken only once all its audio was handed over.

Barge-in: closing the ``synthesize`` generator (the pipeline uses ``aclosing``) exits the
SDK's response context manager, which closes the HTTP response; a response whose body was not
read to the end is not returned to the pool, so its connection is closed and the server stops
sending. Cancelling the task does the same. The client stays usable (the next request opens a
new connection).

Errors: the SDK's own retries are off (``max_retries=0``); the base class retries, backs off and
times the first byte. The SDK's exceptions are mapped by the OpenAI LLM adapter's mapping
(``runtime.providers.llm.openai.sdk_error``): 401/403 ``auth`` (never retried), 429 ``rate_limit`` with
``Retry-After``/``retry-after-ms``, 5xx ``server``, other 4xx ``bad_request`` (an unknown voice, a
too-long input), no connection ``unavailable``, timeouts ``timeout``; the key is masked in any
text a server echoes, and never in ``repr``.

Base URL (``build``): the version's ``base_url``, else ``providers.openai_tts.base_url`` (the
public API by default). Not the ``openai`` credential's ``base_url`` field, although the
credential (and its key) is shared with the LLM: that field points the LLM at a local chat
server (Ollama, llama.cpp, vLLM), which has no speech route. A version that wants a local
OpenAI-compatible speech server names it in its own ``tts.base_url``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any
from urllib.parse import urlparse

import httpx2  # the openai SDK's HTTP client
import openai

from runtime.egress.httpx_client import guarded_transport
from runtime.egress.policy import EgressPolicy
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy, TextToSpeech
from runtime.providers.llm.openai import sdk_error
from runtime.providers.registry import BuildContext, MissingCredential
from runtime.providers.tts.chatterbox_wire import split_input
from runtime.providers.tts.local import split_sentences

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PUBLIC_HOST = "api.openai.com"
NATIVE_RATE = 24_000  # response_format=pcm: 24 kHz, 16-bit signed little-endian, mono
MAX_INPUT = 4096  # characters per request (speech_create_params.input)
SPEED_RANGE = (0.25, 4.0)
NO_KEY = "not-needed"  # the SDK insists on a key (and would read OPENAI_API_KEY); never sent: _headers()
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0  # the longest silence inside an answer (the first byte: the policy's timeout)
CHECK_TIMEOUT_S = 10.0
# Models that take no ``instructions`` ("Does not work with tts-1 or tts-1-hd").
NO_INSTRUCTIONS = re.compile(r"^tts-1(-hd)?(-\d|$)")
# Answers that cannot be our PCM, by content type (a container or codec) or by their first bytes.
NOT_PCM_TYPES = frozenset({"mpeg", "mp3", "ogg", "opus", "aac", "flac", "wav", "wave", "x-wav", "vnd.wave",
                           "webm", "mp4", "x-m4a"})
SNIFF_BYTES = 32
TEXT_BODY = re.compile(rb'^\s*(\{\s*"(error|detail|message)"|<(!doctype|html|\?xml))', re.IGNORECASE)


class OpenAITTS(TextToSpeech):
    name = "openai"
    rate = NATIVE_RATE
    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, api_key: str | None, *, base_url: str = DEFAULT_BASE_URL, model: str = "gpt-4o-mini-tts",
                 voice: str = "alloy", speed: float | None = None, instructions: str | None = None,
                 policy: RetryPolicy | None = None, egress: EgressPolicy | None = None) -> None:
        super().__init__(policy)
        self.egress = egress  # a tenant's server: connect through the egress guard
        if speed is not None and not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise ValueError(f"speed must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}, not {speed}")
        url = base_url.strip().rstrip("/")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
            raise ValueError(f"the speech base URL must be an http(s) URL, not {base_url!r}")
        if not voice:
            raise ValueError("a voice is required")
        self.base_url, self.model, self.voice = url, model, voice
        self.speed, self.instructions = speed, instructions or None
        self._api_key = api_key or None
        self._client: openai.AsyncOpenAI | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAITTS(base_url={self.base_url!r}, model={self.model!r}, voice={self.voice!r})"

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            timeout = openai.Timeout(self.read_timeout_s, connect=CONNECT_TIMEOUT_S)
            # The SDK's own HTTP client, with the process's one TLS context: building a context
            # reads the CA bundle (~30 ms with the event loop blocked), and adapters are per call.
            if self.egress is None:
                http = openai.DefaultAsyncHttpxClient(verify=_tls_context(), timeout=timeout)
            else:
                http = openai.DefaultAsyncHttpxClient(transport=guarded_transport(self.egress), timeout=timeout)
            self._client = openai.AsyncOpenAI(api_key=self._api_key or NO_KEY, base_url=self.base_url,
                                              max_retries=0, timeout=timeout, http_client=http)
        return self._client

    def params(self, text: str) -> dict[str, Any]:
        """The ``audio.speech.create`` arguments for one piece of text."""
        params: dict[str, Any] = {"model": self.model, "input": text, "voice": _voice(self.voice),
                                  "response_format": "pcm", "extra_headers": self._headers()}
        if self.speed is not None:
            params["speed"] = self.speed
        if self.instructions and not NO_INSTRUCTIONS.match(self.model):
            params["instructions"] = self.instructions
        return params

    def _headers(self) -> dict[str, Any]:
        """Without a key (a local server), no Authorization header at all (the SDK insists on a
        key: it gets a placeholder, which this keeps off the wire)."""
        return {} if self._api_key else {"Authorization": openai.omit}

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        for sentence in split_sentences(text):
            for piece in split_input(sentence, MAX_INPUT):
                if any(ch.isalnum() for ch in piece):
                    async for pcm in self._speak(piece.strip()):
                        yield AudioChunk(pcm, self.rate, "")
                yield AudioChunk(b"", self.rate, piece)  # all of the piece's audio has been handed over

    async def _speak(self, text: str) -> AsyncIterator[bytes]:
        """The PCM of one request, whole samples, as it arrives. Closing this generator closes
        the response (and with it the connection)."""
        error: ProviderError | None = None
        try:
            async with self.client().audio.speech.with_streaming_response.create(**self.params(text)) as response:
                _check_content_type(self.name, response.headers.get("content-type"))
                head: bytes | None = b""  # the first bytes, held until SNIFF_BYTES have come
                carry = b""  # an odd byte waiting for its partner
                async with aclosing(response.iter_bytes()) as chunks:
                    async for data in chunks:
                        if head is not None:
                            head += data
                            if len(head) < SNIFF_BYTES:
                                continue
                            _sniff(self.name, head)
                            data, head = head, None
                        data = carry + data
                        cut = len(data) & ~1
                        carry = data[cut:]
                        if cut:
                            yield data[:cut]
                if head:  # an answer shorter than SNIFF_BYTES
                    _sniff(self.name, head)
                    cut = len(head) & ~1
                    carry = head[cut:]
                    if cut:
                        yield head[:cut]
                if carry:
                    log.debug("openai tts: an answer with an odd number of bytes; the last one is dropped")
        except Exception as exc:  # noqa: BLE001 (mapped below: raised outside this block, no context)
            error = self._error(exc)
        if error is not None:
            raise error

    async def check(self) -> None:
        """For ``voicectl doctor``: list the server's models (``GET /models``: cheap, and
        authenticated on the public API). Raises ``ProviderError``."""
        error: ProviderError | None = None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self.client().models.list(extra_headers=self._headers())
        except TimeoutError:
            error = ProviderError(self.name, "timeout", f"no answer within {CHECK_TIMEOUT_S:g} s")
        except Exception as exc:  # noqa: BLE001
            error = self._error(exc)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _error(self, exc: BaseException) -> ProviderError:
        return sdk_error(self.name, self._api_key, exc)


def build(ctx: BuildContext) -> OpenAITTS:
    """The adapter for one call or ``doctor`` check. Base URL: the version's, else
    ``providers.openai_tts.base_url`` (never the ``openai`` credential's ``base_url``, which
    points the LLM at a local chat server without a speech route). The key is optional (a local
    speech server may need none) except on the public API."""
    settings = ctx.settings
    tenant_url = ctx.tenant_url(credential_field=None)
    base_url = tenant_url or settings.base_url
    if not ctx.secret and is_public(base_url):
        raise MissingCredential(f"the tenant has no {ctx.entry.credential_name} credential")
    voice = getattr(ctx.options, "voice", None) or settings.voice
    return OpenAITTS(ctx.secret, base_url=base_url, model=ctx.model or settings.model, voice=voice,
                     **ctx.given("speed", "instructions"), policy=ctx.policy,
                     egress=ctx.egress if tenant_url else None)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS context the SDK would make for each client (httpx2's defaults), made once."""
    return httpx2.create_ssl_context()


def is_public(base_url: str) -> bool:
    """True for OpenAI's own API (which always needs a key)."""
    host = (urlparse(base_url.strip()).hostname or "").lower()
    return host == PUBLIC_HOST or host.endswith(".openai.com")


def _voice(voice: str) -> str | dict[str, str]:
    """A built-in voice goes by name; a custom voice id (``voice_...``) as ``{"id": ...}``
    (speech_create_params.VoiceID). Unknown names are sent as they are: the server decides."""
    return {"id": voice} if voice.startswith("voice_") else voice


def _check_content_type(provider: str, value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if not media or media == "application/octet-stream":
        return
    kind, _, subtype = media.partition("/")
    if kind == "audio" and subtype not in NOT_PCM_TYPES:
        return
    raise ProviderError(provider, "protocol", f"the answer is {media}, not the raw PCM asked for")


def _sniff(provider: str, head: bytes) -> None:
    if TEXT_BODY.match(head):
        raise ProviderError(provider, "protocol", "the answer is a text document, not audio")
