"""A local OpenAI-compatible chat completions server (what Ollama, llama.cpp, vLLM and OpenAI
speak) for tests and benchmarks.

``POST /v1/chat/completions`` with ``"stream": true`` answers ``data: <chunk>`` frames, each an
``openai.types.chat.ChatCompletionChunk`` dumped to JSON (the SDK's own shapes): a role chunk,
content deltas, ``tool_calls`` deltas (first with id and name, then argument fragments), a chunk
with ``finish_reason``, a usage chunk with no choices, then ``data: [DONE]``. Errors use the
``{"error": {"message", "type", "param", "code"}}`` body. ``GET /v1/models`` lists one model.

    async with OpenAIServer(api_key="sk-test") as server:
        server.push(text_reply("Hello there."))
        llm = OpenAICompatibleLLM("sk-test", base_url=server.base_url)
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from openai.types import CompletionUsage, Model
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import (
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

from peers.sse_script import Recorded, Reply, ScriptedServer, json_reply, split, sse

MODEL = "llama3.2"
DONE = sse("[DONE]")
_ids = itertools.count(1)


def _chunk(cid: str, model: str, delta: ChoiceDelta | None = None, finish: str | None = None,
           usage: CompletionUsage | None = None) -> str:
    choices = [] if delta is None else [Choice(index=0, delta=delta, finish_reason=finish)]
    chunk = ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=1_760_000_000, model=model,
                                choices=choices, usage=usage)
    return sse(chunk.model_dump_json(exclude_none=True))


def _usage(prompt: int, completion: int) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def text_reply(text: str, *, pieces: int = 4, finish: str = "stop", model: str = MODEL, usage: bool = True,
               **options: Any) -> Reply:
    cid = f"chatcmpl-{next(_ids)}"
    frames = [_chunk(cid, model, ChoiceDelta(role="assistant", content=""))]
    frames += [_chunk(cid, model, ChoiceDelta(content=p)) for p in split(text, pieces)]
    frames.append(_chunk(cid, model, ChoiceDelta(), finish))
    if usage:
        frames.append(_chunk(cid, model, usage=_usage(30, max(1, len(text) // 4))))
    return Reply(events=tuple(frames + [DONE]), **options)


def tool_reply(calls: list[tuple[str, dict[str, Any]]], *, text: str = "", json_pieces: int = 3,
               raw_json: str | None = None, ids: list[str | None] | None = None, same_index: bool = False,
               finish: str = "tool_calls", model: str = MODEL, **options: Any) -> Reply:
    """Optional text, then ``calls`` as (name, arguments), each streamed as a first delta with
    id and name and then ``json_pieces`` argument fragments. ``raw_json`` replaces the first
    call's encoded arguments; ``ids`` entries of None send no id; ``same_index`` numbers every
    call 0 (as some servers do)."""
    cid = f"chatcmpl-{next(_ids)}"
    frames = [_chunk(cid, model, ChoiceDelta(role="assistant", content=""))]
    frames += [_chunk(cid, model, ChoiceDelta(content=p)) for p in (split(text, 2) if text else [])]
    for n, (name, arguments) in enumerate(calls):
        index = 0 if same_index else n
        call_id = (ids[n] if ids is not None else f"call_{next(_ids):04d}")
        encoded = raw_json if (raw_json is not None and n == 0) else json.dumps(arguments)
        first = ChoiceDeltaToolCall(index=index, id=call_id, type="function",
                                    function=ChoiceDeltaToolCallFunction(name=name, arguments=""))
        frames.append(_chunk(cid, model, ChoiceDelta(tool_calls=[first])))
        frames += [_chunk(cid, model, ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(
            index=index, function=ChoiceDeltaToolCallFunction(arguments=p))])) for p in split(encoded, json_pieces)]
    frames.append(_chunk(cid, model, ChoiceDelta(), finish))
    frames.append(_chunk(cid, model, usage=_usage(50, 20)))
    return Reply(events=tuple(frames + [DONE]), **options)


_STATUS_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                 404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}


def error_body(error_type: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def error_reply(status: int, message: str = "scripted failure", *, retry_after: str | None = None,
                retry_after_ms: str | None = None, **options: Any) -> Reply:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    code = "invalid_api_key" if status == 401 else None
    reply = json_reply(status, error_body(_STATUS_TYPES.get(status, "server_error"), message, code), headers)
    return Reply(status=reply.status, body=reply.body, headers=reply.headers, **options)


def error_event_reply(error_type: str = "server_error", *, text_before: str = "", **options: Any) -> Reply:
    """A 200 stream that carries an error object (vLLM does this when generation fails)."""
    cid = f"chatcmpl-{next(_ids)}"
    frames = [_chunk(cid, MODEL, ChoiceDelta(role="assistant", content=""))]
    frames += [_chunk(cid, MODEL, ChoiceDelta(content=p)) for p in (split(text_before, 2) if text_before else [])]
    frames.append(sse(json.dumps(error_body(error_type, "scripted stream error"))))
    return Reply(events=tuple(frames), **options)


def raw_reply(*frames: str, **options: Any) -> Reply:
    """A 200 stream of hand-written frames (malformed chunks)."""
    return Reply(events=tuple(frames), **options)


@dataclass
class OpenAIServer(ScriptedServer):
    api_key: str | None = None  # when set, any other bearer token gets a 401

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def completion_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._completions), web.get("/v1/models", self._models)]

    def refuse(self, request: web.Request) -> Reply | None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided.")
        return None

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        return await self.answer(request, self.refuse(request) or self.next_reply())

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        refused = self.refuse(request)
        if refused is not None:
            return await self.answer(request, refused)
        model = Model(id=MODEL, object="model", created=1_760_000_000, owned_by="library")
        return await self.answer(request, json_reply(200, {"object": "list", "data": [model.model_dump(mode="json")]}))
