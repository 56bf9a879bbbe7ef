"""A local OpenAI speech server (``POST /v1/audio/speech``, ``GET /v1/models``) for tests and
benchmarks, in the style of peers/openai_server.py (the chat peer, which stays as it is).

Request, as documented (the openai SDK's ``resources/audio/speech.py`` and
``types/audio/speech_create_params.py``): a JSON body with ``model``, ``input`` (1 to 4096
characters), ``voice`` (a name, or ``{"id": "voice_..."}`` for a custom voice), and optionally
``response_format`` (mp3, opus, aac, flac, wav, pcm), ``speed`` (0.25 to 4.0), ``instructions``
and ``stream_format`` (audio, sse). A field outside those limits gets a 400 with OpenAI's error
body ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``. This peer speaks
only ``pcm`` with ``stream_format`` ``audio`` (anything else is a 400 here, where OpenAI would
answer in that format).

Answer (``Speech``): the text's audio as raw PCM16 little-endian mono at 24 kHz ("PCM: ... the
raw samples in 24kHz (16-bit signed, low-endian), without the header": OpenAI's text-to-speech
guide), sent with chunked transfer encoding in ``pieces`` writes (cut at odd byte offsets unless
``odd=False``), optionally paced (``gap_s``), late (``delay_s``: a slow first byte), cut off
(``drop_after``: the connection is aborted after that many writes), labelled with another content
type, or replaced by another body (a malformed answer). The content type OpenAI sends for ``pcm``
is not documented; ``audio/pcm`` (PCM_TYPE) is what OpenAI-compatible servers send, and is this
peer's label, not a capture of OpenAI's.

The audio for a text is deterministic (``audio_for``, peers/chatterbox_server.py's tone), so
a test can check every sample. Errors use ``error_reply`` (openai_server.py: the status, OpenAI's
error body, ``retry-after``/``retry-after-ms``). A wrong key gets a 401 whose message echoes the
key it was given, in full (OpenAI masks it; echoing it whole proves the adapter redacts).

Every request is recorded (``requests``: method, path, lower-case headers including
``authorization``, JSON body); ``disconnects`` lists the speech requests whose client went away
before the answer ended (barge-in), ``completed`` those answered in full.

    async with OpenAISpeechServer(api_key="sk-test") as server:
        server.push(Speech(pieces=8, gap_s=0.05), error_reply(429, retry_after="0.2"))
        tts = OpenAITTS("sk-test", base_url=server.base_url)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from openai.types import Model

from peers.chatterbox_server import audio_for
from peers.openai_server import error_body, error_reply
from peers.sse_script import Recorded, Reply, ScriptedServer, json_reply

RATE = 24_000
PCM_TYPE = "audio/pcm"  # OpenAI-compatible servers' label; OpenAI's own is undocumented
MAX_INPUT = 4096
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MODELS = ("gpt-4o-mini-tts", "tts-1", "tts-1-hd")


@dataclass(frozen=True)
class Speech:
    """A 200 answer: the request's audio (or ``body``), streamed."""

    pieces: int = 4  # writes of the body
    odd: bool = True  # cut at odd byte offsets (a sample split across two chunks)
    delay_s: float = 0.0  # before the status line: a slow first byte
    gap_s: float = 0.0  # between two writes
    drop_after: int | None = None  # abort the connection after this many writes
    content_type: str = PCM_TYPE
    body: bytes | None = None  # sent instead of the audio (a malformed answer)


def pieces_of(data: bytes, parts: int, odd: bool = True) -> list[bytes]:
    """``data`` in about ``parts`` pieces; with ``odd``, every piece but the last has an odd length."""
    size = max(1, -(-len(data) // max(1, parts)))
    if odd:
        size |= 1
    return [data[i:i + size] for i in range(0, len(data), size)]


def invalid(param: str, message: str) -> Reply:
    """OpenAI's 400 for a request field it refuses."""
    return json_reply(400, {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                      "code": None}})


@dataclass
class OpenAISpeechServer(ScriptedServer):
    api_key: str | None = None  # when set, any other bearer token gets a 401
    ms_per_char: int = 5  # audio length per character of input
    voices: frozenset[str] | None = None  # when set, other voice names get a 400
    repeat: Speech | Reply | None = Speech()  # the answer once the script is empty
    disconnects: list[int] = field(default_factory=list)  # speech requests cut off by the client
    completed: list[int] = field(default_factory=list)
    dropped: int = 0  # answers the server cut off (drop_after)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def speech_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/audio/speech"]

    def audio(self, text: str) -> bytes:
        """The PCM this server speaks ``text`` with (the request's ``input``)."""
        return audio_for(text, RATE, self.ms_per_char)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/audio/speech", self._speech), web.get("/v1/models", self._models)]

    def refuse(self, request: web.Request) -> Reply | None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return error_reply(401, f"Incorrect API key provided: {given}.")
        return None

    def next_reply(self) -> Speech | Reply:  # type: ignore[override]
        if self.script:
            return self.script.popleft()
        return self.repeat or json_reply(500, error_body("server_error", "the test scripted no reply"))

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        entry = await self.record(request)
        index = len(self.speech_requests) - 1
        refused = self.refuse(request)
        if refused is not None:
            return await self.answer(request, refused)
        reply = self.next_reply()
        if isinstance(reply, Reply):
            return await self.answer(request, reply)
        problem = self._validate(entry.body)
        if problem is not None:
            return await self.answer(request, problem)
        return await self._stream(request, index, reply, entry.body["input"])

    async def _stream(self, request: web.Request, index: int, reply: Speech, text: str) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": reply.content_type})
        response.enable_chunked_encoding()
        body = reply.body if reply.body is not None else self.audio(text)
        try:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            await response.prepare(request)
            for number, piece in enumerate(pieces_of(body, reply.pieces, reply.odd)):
                if reply.drop_after is not None and number >= reply.drop_after:
                    self.dropped += 1
                    assert request.transport is not None
                    request.transport.abort()  # the chunked body never completes
                    return response
                if number and reply.gap_s:
                    await asyncio.sleep(reply.gap_s)
                await response.write(piece)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):  # the client went away (barge-in, timeout)
            self.disconnects.append(index)
            raise
        self.completed.append(index)
        return response

    def _validate(self, body: Any) -> Reply | None:
        """OpenAI's documented limits, as 400 invalid_request_error answers."""
        if not isinstance(body, dict):
            return invalid("", "We could not parse the JSON body of your request.")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return invalid("model", "you must provide a model parameter")
        text = body.get("input")
        if not isinstance(text, str) or not text:
            return invalid("input", "input must be a non-empty string")
        if len(text) > MAX_INPUT:
            return invalid("input", f"input is longer than {MAX_INPUT} characters")
        voice = body.get("voice")
        name = voice.get("id") if isinstance(voice, dict) else voice
        if not isinstance(name, str) or not name:
            return invalid("voice", "voice must be a voice name or {\"id\": ...}")
        if self.voices is not None and name not in self.voices:
            return invalid("voice", f"Invalid value for voice: {name!r}")
        response_format = body.get("response_format", "mp3")
        if response_format not in FORMATS:
            return invalid("response_format", f"response_format must be one of {', '.join(FORMATS)}")
        if response_format != "pcm":
            return invalid("response_format", "this test peer answers pcm only")
        speed = body.get("speed")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)
                                  or not 0.25 <= speed <= 4.0):
            return invalid("speed", "speed must be between 0.25 and 4.0")
        if body.get("instructions") is not None and not isinstance(body["instructions"], str):
            return invalid("instructions", "instructions must be a string")
        if body.get("stream_format") not in (None, "audio"):
            return invalid("stream_format", "this test peer streams raw audio only")
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        refused = self.refuse(request)
        if refused is not None:
            return await self.answer(request, refused)
        data = [Model(id=m, object="model", created=1_760_000_000, owned_by="system").model_dump(mode="json")
                for m in MODELS]
        return await self.answer(request, json_reply(200, {"object": "list", "data": data}))
