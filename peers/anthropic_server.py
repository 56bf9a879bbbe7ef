"""A local Anthropic Messages API for tests and benchmarks.

Speaks ``POST /v1/messages`` with ``"stream": true`` as documented (PROTOCOLS.md, "Anthropic
Messages"): ``message_start``, a ``ping``, per block ``content_block_start`` /
``content_block_delta`` (``text_delta`` or ``input_json_delta``) / ``content_block_stop``, then
``message_delta`` (stop_reason, usage) and ``message_stop``. Every event body is an
``anthropic.types`` model dumped to JSON, so the frames are the SDK's own shapes, not ours.
Errors use the API's ``{"type": "error", "error": {"type", "message"}}`` body. ``GET /v1/models``
answers a one-model page (what ``AnthropicLLM.check`` calls).

    async with AnthropicServer(api_key="sk-test") as server:
        server.push(text_reply("Hello there."), tool_reply("lookup", {"q": "x"}))
        llm = AnthropicLLM("sk-test", base_url=server.base_url)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from anthropic.types import (
    ErrorResponse,
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    ModelInfo,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    ToolUseBlock,
    Usage,
)
from anthropic.types import TextDelta as SdkTextDelta
from anthropic.types.raw_message_delta_event import Delta

from peers.sse_script import Recorded, Reply, ScriptedServer, json_reply, split, sse

MODEL = "claude-sonnet-4-6"
_ids = itertools.count(1)


def _frame(event: Any) -> str:
    return sse(event.model_dump_json(exclude_none=True), event.type)


def _start(input_tokens: int, cache_read: int, cache_write: int, model: str) -> list[str]:
    message = Message(id=f"msg_{next(_ids):04d}", type="message", role="assistant", content=[], model=model,
                      stop_reason=None, stop_sequence=None,
                      usage=Usage(input_tokens=input_tokens, output_tokens=1,
                                  cache_read_input_tokens=cache_read, cache_creation_input_tokens=cache_write))
    return [_frame(RawMessageStartEvent(type="message_start", message=message)), sse('{"type": "ping"}', "ping")]


def _end(stop_reason: str, output_tokens: int) -> list[str]:
    return [
        _frame(RawMessageDeltaEvent(type="message_delta", delta=Delta(stop_reason=stop_reason, stop_sequence=None),
                                    usage=MessageDeltaUsage(output_tokens=output_tokens))),
        _frame(RawMessageStopEvent(type="message_stop")),
    ]


def text_block(index: int, pieces: Sequence[str]) -> list[str]:
    frames = [_frame(RawContentBlockStartEvent(type="content_block_start", index=index,
                                               content_block=TextBlock(type="text", text="")))]
    frames += [_frame(RawContentBlockDeltaEvent(type="content_block_delta", index=index,
                                                delta=SdkTextDelta(type="text_delta", text=p))) for p in pieces]
    frames.append(_frame(RawContentBlockStopEvent(type="content_block_stop", index=index)))
    return frames


def tool_block(index: int, tool_id: str, name: str, json_pieces: Sequence[str]) -> list[str]:
    frames = [_frame(RawContentBlockStartEvent(type="content_block_start", index=index,
                                               content_block=ToolUseBlock(type="tool_use", id=tool_id, name=name,
                                                                          input={})))]
    frames += [_frame(RawContentBlockDeltaEvent(type="content_block_delta", index=index,
                                                delta=InputJSONDelta(type="input_json_delta", partial_json=p)))
               for p in json_pieces]
    frames.append(_frame(RawContentBlockStopEvent(type="content_block_stop", index=index)))
    return frames


def text_reply(text: str, *, pieces: int = 4, input_tokens: int = 25, cache_read: int = 0, cache_write: int = 0,
               stop_reason: str = "end_turn", model: str = MODEL, **options: Any) -> Reply:
    events = _start(input_tokens, cache_read, cache_write, model) + text_block(0, split(text, pieces))
    return Reply(events=tuple(events + _end(stop_reason, max(1, len(text) // 4))), **options)


def tool_reply(name: str, arguments: dict[str, Any], *, text: str = "", tool_id: str | None = None,
               json_pieces: int = 3, raw_json: str | None = None, model: str = MODEL, **options: Any) -> Reply:
    """Optional text, then one ``tool_use`` block whose input streams as ``json_pieces``
    fragments (``raw_json`` replaces the encoded arguments, e.g. to send broken JSON)."""
    events = _start(40, 0, 0, model)
    index = 0
    if text:
        events += text_block(0, split(text, 2))
        index = 1
    encoded = raw_json if raw_json is not None else json.dumps(arguments)
    events += tool_block(index, tool_id or f"toolu_{next(_ids):04d}", name, split(encoded, json_pieces))
    return Reply(events=tuple(events + _end("tool_use", 30)), **options)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return ErrorResponse.model_validate({"type": "error", "error": {"type": error_type, "message": message}}
                                        ).model_dump(exclude_none=True)


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
                 529: "overloaded_error"}


def error_reply(status: int, message: str = "scripted failure", *, retry_after: str | None = None,
                **options: Any) -> Reply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    reply = json_reply(status, error_body(_STATUS_TYPES.get(status, "api_error"), message), headers)
    return Reply(status=reply.status, body=reply.body, headers=reply.headers, **options)


def error_event_reply(error_type: str = "overloaded_error", *, text_before: str = "", **options: Any) -> Reply:
    """A 200 stream that carries an ``error`` event (after some text, if given)."""
    events = _start(25, 0, 0, MODEL)
    if text_before:
        start, *deltas, _stop = text_block(0, split(text_before, 2))
        events += [start, *deltas]
    events.append(sse(json.dumps(error_body(error_type, "scripted stream error")), "error"))
    return Reply(events=tuple(events), **options)


def raw_reply(*frames: str, **options: Any) -> Reply:
    """A 200 stream of hand-written frames (malformed events)."""
    return Reply(events=tuple(frames), **options)


def presented_key(headers: Any) -> str | None:
    """The key a request carries: ``x-api-key`` (the documented header) or ``Authorization:
    Bearer`` (what SDK 2.x sends for ``api_key=``)."""
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization") or ""
    return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass
class AnthropicServer(ScriptedServer):
    api_key: str | None = None  # when set, a request with any other key gets the API's 401

    @property
    def base_url(self) -> str:
        return self.origin  # the SDK adds /v1/messages

    @property
    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages), web.get("/v1/models", self._models)]

    def refuse(self, request: web.Request) -> Reply | None:
        if self.api_key is not None and presented_key(request.headers) != self.api_key:
            return error_reply(401, "invalid x-api-key")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        return await self.answer(request, self.refuse(request) or self.next_reply())

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        refused = self.refuse(request)
        if refused is not None:
            return await self.answer(request, refused)
        model = ModelInfo.model_validate({"id": MODEL, "type": "model", "display_name": "Claude Sonnet 4.5",
                                          "created_at": "2025-09-29T00:00:00Z", "lifecycle": "active"})
        page = {"data": [model.model_dump(mode="json", exclude_none=True)], "has_more": False,
                "first_id": MODEL, "last_id": MODEL}
        return await self.answer(request, json_reply(200, page))
