"""Claude through the official ``anthropic`` SDK: the Messages API, streamed, with tools.

The SDK client is made with ``max_retries=0``: retries, backoff and the first-byte timeout are
the base class's (``LanguageModel.stream``). Here we only speak the engine: build the request
(``anthropic_messages``), read the SSE events (``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``; the SDK drops ``ping`` and raises on ``error``), and
translate failures into ``ProviderError`` kinds.

Text deltas are passed on as they come; a ``tool_use`` block's ``input_json_delta`` pieces are
joined and the call is yielded when its block stops. The reply's first event (text or tool
call) is the base class's "first byte": a stream that fails before it is retried like a failed
request, one that fails after it raises (the pipeline finishes the turn on the fallback).
``temperature`` goes in ``extra_body``: SDK 1.0 dropped it from the typed signature and newer
models refuse it, so it is sent only when the agent version sets it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic

from runtime.egress.httpx_client import guarded_transport
from runtime.egress.policy import EgressPolicy, refused
from runtime.providers.base import (
    LanguageModel,
    LlmDone,
    LlmEvent,
    LlmRequest,
    ProviderError,
    RetryPolicy,
    TextDelta,
    ToolCall,
    ToolCallRequest,
)
from runtime.providers.llm import anthropic_messages as fmt
from runtime.providers.llm.llm_http import is_transport_error, parse_arguments, transport_error
from runtime.providers.registry import BuildContext
from runtime.providers.wire_errors import egress_refused, redact, retry_after, status_kind

DEFAULT_BASE_URL = "https://api.anthropic.com"
# The longest silence inside a stream (Anthropic sends pings while the model thinks) and the
# time to open a connection; the first-byte limit itself is the base class's.
READ_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 10.0

# ``error`` events arrive inside a 200 stream: their body's type says what happened.
_ERROR_TYPES: dict[str, Any] = {
    "overloaded_error": "rate_limit", "rate_limit_error": "rate_limit",
    "authentication_error": "auth", "permission_error": "auth",
    "invalid_request_error": "bad_request", "not_found_error": "bad_request", "request_too_large": "bad_request",
    "api_error": "server", "timeout_error": "timeout",
}
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicLLM(LanguageModel):
    name = "anthropic"

    def __init__(self, api_key: str, *, base_url: str = DEFAULT_BASE_URL, model: str = "claude-sonnet-4-6",
                 max_tokens: int = 1024, temperature: float | None = None,
                 policy: RetryPolicy | None = None, egress: EgressPolicy | None = None) -> None:
        super().__init__(policy)
        self._api_key = api_key
        self.base_url = base_url
        self.egress = egress  # a tenant's server: connect through the egress guard
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client: anthropic.AsyncAnthropic | None = None

    def __repr__(self) -> str:  # never the key
        return f"AnthropicLLM(base_url={self.base_url!r}, model={self.model!r})"

    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            http = None if self.egress is None else anthropic.DefaultAsyncHttpxClient(
                transport=guarded_transport(self.egress))
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key, base_url=self.base_url, max_retries=0,
                timeout=anthropic.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), http_client=http)
        return self._client

    def params(self, request: LlmRequest) -> dict[str, Any]:
        """The ``messages.create`` arguments for ``request`` (its model, max_tokens and
        temperature win over the constructor's)."""
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": fmt.turns(request.messages),
        }
        system = fmt.system_blocks(request.system)
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = fmt.tool_params(request.tools)
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            params["extra_body"] = {"temperature": temperature}
        return params

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        params = self.params(request)
        try:
            stream = await self.client().messages.create(**params, stream=True)
        except Exception as exc:
            raise self._error(exc) from None
        reply = _Reply(self.name)
        async with stream:
            try:
                async for event in stream:
                    try:
                        events = reply.feed(event)
                    except (AttributeError, KeyError, TypeError) as exc:  # valid JSON, wrong shape
                        raise ProviderError(self.name, "protocol", f"malformed {type(event).__name__}") from exc
                    for out in events:
                        yield out
                    if reply.stopped:
                        yield reply.done()
                        return
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc) from None
        raise ProviderError(self.name, "unavailable", "the stream ended before message_stop")

    async def check(self) -> None:
        """One cheap authenticated call (list one model) for ``voicectl doctor``; raises
        ``ProviderError`` (``auth`` for a refused key)."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self.client().models.list(limit=1)
        except TimeoutError:
            raise ProviderError(self.name, "timeout", f"no answer within {CHECK_TIMEOUT_S:g} s") from None
        except Exception as exc:
            raise self._error(exc) from None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _error(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, anthropic.APIStatusError):
            body_type = _body_error_type(exc.body)
            if exc.status_code < 400:  # an ``error`` event inside the stream
                kind = _ERROR_TYPES.get(body_type or "", "server")
                where = "error event in the stream"
            else:
                kind = status_kind(exc.status_code)
                where = f"HTTP {exc.status_code}"
            detail = redact(exc.api_message or "", self._api_key)
            return ProviderError(self.name, kind, f"{where}: {body_type or 'error'} {detail}".strip(),
                                 status=exc.status_code if exc.status_code >= 400 else None,
                                 retry_after=retry_after(exc.response.headers))
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderError(self.name, "timeout", "the request timed out")
        if isinstance(exc, anthropic.APIConnectionError):
            if refused(exc):
                return egress_refused(self.name)
            return ProviderError(self.name, "unavailable", "the connection failed or broke")
        if is_transport_error(exc):
            return transport_error(self.name, exc)  # type: ignore[arg-type]
        if isinstance(exc, ValueError | anthropic.AnthropicError):
            # Undecodable SSE data (JSONDecodeError is a ValueError) or a response the SDK could not read.
            return ProviderError(self.name, "protocol", f"unreadable answer ({type(exc).__name__})")
        raise exc  # our own bug: not the provider's failure


def _body_error_type(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return error["type"]
    return None


@dataclass
class _ToolBlock:
    id: str
    name: str
    parts: list[str] = field(default_factory=list)


class _Reply:
    """One streamed message: events in, our events out."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.tools: dict[int, _ToolBlock] = {}
        self.stop_reason = "end_turn"
        self.usage: dict[str, int] = {}
        self.stopped = False

    def feed(self, event: Any) -> list[LlmEvent]:
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            delta = event.delta
            if delta is None:
                raise ProviderError(self.provider, "protocol", "content_block_delta without a delta")
            delta_type = getattr(delta, "type", None)
            if delta_type == "text_delta":
                return [TextDelta(delta.text)] if delta.text else []
            if delta_type == "input_json_delta":
                self._tool(event.index).parts.append(delta.partial_json)
            return []  # thinking, signature, citation and future deltas are not spoken
        if kind == "content_block_start":
            block = event.content_block
            if block is None:
                raise ProviderError(self.provider, "protocol", "content_block_start without a block")
            block_type = getattr(block, "type", None)
            if block_type == "tool_use":
                self.tools[event.index] = _ToolBlock(block.id, block.name)
                if block.input:  # the API starts with {} and streams the input; take a full one too
                    self.tools[event.index].parts.append(json.dumps(block.input))
            elif block_type == "text" and block.text:
                return [TextDelta(block.text)]
            return []
        if kind == "content_block_stop":
            tool = self.tools.pop(event.index, None)
            if tool is None:
                return []
            arguments = parse_arguments(self.provider, "".join(tool.parts), tool.name)
            return [ToolCallRequest(ToolCall(tool.id, tool.name, arguments))]
        if kind == "message_start":
            self._usage(event.message.usage)
        elif kind == "message_delta":
            if event.delta.stop_reason:
                self.stop_reason = event.delta.stop_reason
            self._usage(event.usage)
        elif kind == "message_stop":
            self.stopped = True
        return []

    def done(self) -> LlmDone:
        return LlmDone(self.stop_reason, dict(self.usage))

    def _tool(self, index: int) -> _ToolBlock:
        tool = self.tools.get(index)
        if tool is None:
            raise ProviderError(self.provider, "protocol", f"input_json_delta for block {index}, not a tool_use")
        return tool

    def _usage(self, usage: Any) -> None:
        for key in _USAGE_KEYS:
            value = getattr(usage, key, None)
            if isinstance(value, int):
                self.usage[key] = value


def build(ctx: BuildContext) -> AnthropicLLM:
    conf = ctx.settings
    tenant_url = ctx.tenant_url(credential_field=None)
    return AnthropicLLM(ctx.require_secret(), base_url=tenant_url or conf.base_url, model=ctx.model or conf.model,
                        **ctx.given("max_tokens", "temperature"), policy=ctx.policy,
                        egress=ctx.egress if tenant_url else None)
