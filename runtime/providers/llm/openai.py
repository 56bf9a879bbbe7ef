"""OpenAI-compatible chat completions (Ollama, llama.cpp server, vLLM, OpenAI) through the
official ``openai`` SDK, streamed, with tools.

Like every adapter, it only speaks its engine: the SDK client has ``max_retries=0`` and the
base class retries, backs off and times the first byte. Text deltas are passed on as they come;
``tool_calls`` deltas are assembled by ``index`` (a new ``id`` on a used index starts a new
call: some servers number every call 0) and yielded when the choice finishes. The arguments
must parse as a JSON object: a call whose arguments do not is a ``protocol`` error, like any
other malformed answer, so the turn goes to the fallback instead of a tool running on guessed
arguments. Usage is asked for with ``stream_options.include_usage`` and reported under the
same keys as Claude's (``input_tokens``, ``output_tokens``, ``cache_read_input_tokens``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai

from runtime.egress.httpx_client import guarded_transport
from runtime.egress.policy import EgressPolicy, refused
from runtime.providers.base import (
    ErrorKind,
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
from runtime.providers.llm import openai_messages as fmt
from runtime.providers.llm.llm_http import is_transport_error, parse_arguments, transport_error
from runtime.providers.registry import BuildContext
from runtime.providers.wire_errors import egress_refused, redact, retry_after, status_kind

DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"  # Ollama
NO_KEY = "not-needed"  # local servers ignore the key, the SDK insists on one
READ_TIMEOUT_S = 20.0  # the longest silence inside a stream (a local model can be slow to start)
CONNECT_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 10.0
_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens"}


class OpenAICompatibleLLM(LanguageModel):
    name = "openai"

    def __init__(self, api_key: str | None, *, base_url: str = DEFAULT_BASE_URL, model: str = "llama3.2",
                 max_tokens: int | None = None, temperature: float | None = None,
                 policy: RetryPolicy | None = None, egress: EgressPolicy | None = None) -> None:
        super().__init__(policy)
        self._api_key = api_key
        self.base_url = base_url
        self.egress = egress  # a tenant's server: connect through the egress guard
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client: openai.AsyncOpenAI | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatibleLLM(base_url={self.base_url!r}, model={self.model!r})"

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            http = None if self.egress is None else openai.DefaultAsyncHttpxClient(
                transport=guarded_transport(self.egress))
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key or NO_KEY, base_url=self.base_url, max_retries=0,
                timeout=openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), http_client=http)
        return self._client

    def params(self, request: LlmRequest) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for ``request`` (its model, max_tokens and
        temperature win over the constructor's)."""
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": fmt.chat_messages(request.system, request.messages),
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            params["tools"] = fmt.tool_params(request.tools)
        max_tokens = request.max_tokens or self.max_tokens
        if max_tokens:
            params["max_tokens"] = max_tokens  # what every compatible server reads
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            params["temperature"] = temperature
        return params

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        params = self.params(request)
        try:
            stream = await self.client().chat.completions.create(**params, stream=True)
        except Exception as exc:
            raise self._error(exc) from None
        reply = _Reply(self.name)
        async with stream:
            try:
                async for chunk in stream:
                    try:
                        events = reply.feed(chunk)
                    except (AttributeError, KeyError, TypeError) as exc:  # valid JSON, wrong shape
                        raise ProviderError(self.name, "protocol", "malformed chunk") from exc
                    for out in events:
                        yield out
            except ProviderError:
                raise
            except Exception as exc:
                if reply.finish is None:
                    raise self._error(exc) from None
                # The reply was complete; only the usage chunk or [DONE] was lost.
        if reply.finish is None:
            raise ProviderError(self.name, "unavailable", "the stream ended before a finish_reason")
        yield reply.done()

    async def check(self) -> None:
        """List the server's models (authenticated where the server checks keys) for
        ``voicectl doctor``; raises ``ProviderError``."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self.client().models.list()
        except TimeoutError:
            raise ProviderError(self.name, "timeout", f"no answer within {CHECK_TIMEOUT_S:g} s") from None
        except Exception as exc:
            raise self._error(exc) from None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _error(self, exc: BaseException) -> ProviderError:
        return sdk_error(self.name, self._api_key, exc)


def sdk_error(provider: str, api_key: str | None, exc: BaseException) -> ProviderError:
    """The ``openai`` SDK's exceptions as ProviderError (statuses, Retry-After, transport
    failures; the key redacted), for every adapter built on the SDK."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        error_type, detail = _describe(exc.body)
        return ProviderError(provider, status_kind(exc.status_code),
                             f"HTTP {exc.status_code}: {error_type} {redact(detail, api_key)}".strip(),
                             status=exc.status_code, retry_after=retry_after(exc.response.headers))
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(provider, "timeout", "the request timed out")
    if isinstance(exc, openai.APIConnectionError):
        if refused(exc):
            return egress_refused(provider)
        return ProviderError(provider, "unavailable", "the connection failed or broke")
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderError(provider, "protocol", "unreadable answer")
    if isinstance(exc, openai.APIError):  # an error object inside the stream
        error_type, detail = _describe(exc.body)
        return ProviderError(provider, _stream_error_kind(error_type),
                             f"error in the stream: {error_type} {redact(detail, api_key)}".strip())
    if is_transport_error(exc):
        return transport_error(provider, exc)  # type: ignore[arg-type]
    if isinstance(exc, ValueError | openai.OpenAIError):  # undecodable SSE data
        return ProviderError(provider, "protocol", f"unreadable answer ({type(exc).__name__})")
    raise exc  # our own bug: not the provider's failure


def _describe(body: object) -> tuple[str, str]:
    """(type or code, message) of an OpenAI-style error object."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            kind = error.get("type") or error.get("code") or "error"
            return str(kind), str(error.get("message") or "")
        if isinstance(error, str):
            return "error", error
    return "error", ""


def _stream_error_kind(error_type: str) -> ErrorKind:
    lowered = error_type.lower()
    if "rate" in lowered or "overload" in lowered or "quota" in lowered:
        return "rate_limit"
    if "auth" in lowered or "permission" in lowered:
        return "auth"
    if "invalid_request" in lowered:
        return "bad_request"
    return "server"


@dataclass
class _Call:
    id: str
    name: str = ""
    parts: list[str] = field(default_factory=list)


class _Reply:
    """One streamed completion (choice 0): chunks in, our events out."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.calls: list[_Call] = []  # in the order they started
        self.slots: dict[int, _Call] = {}  # the call each index currently builds
        self.finish: str | None = None
        self.usage: dict[str, int] = {}

    def feed(self, chunk: Any) -> list[LlmEvent]:
        if chunk.usage is not None:
            self._usage(chunk.usage)
        out: list[LlmEvent] = []
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    out.append(TextDelta(delta.content))
                for piece in delta.tool_calls or ():
                    self._tool_piece(piece)
            if choice.finish_reason and self.finish is None:
                self.finish = choice.finish_reason
                out += self._flush()
        return out

    def done(self) -> LlmDone:
        reason = _STOP_REASONS.get(self.finish or "stop", self.finish or "end_turn")
        return LlmDone(reason, dict(self.usage))

    def _tool_piece(self, piece: Any) -> None:
        call = self.slots.get(piece.index)
        if call is None or (piece.id and piece.id != call.id):
            call = _Call(piece.id or f"call_{uuid.uuid4().hex[:16]}")
            self.calls.append(call)
            self.slots[piece.index] = call
        function = piece.function
        if function is None:
            return
        if function.name and function.name != call.name:
            call.name += function.name  # a name sent whole once, in pieces, or repeated per chunk
        if function.arguments:
            call.parts.append(function.arguments)

    def _flush(self) -> list[LlmEvent]:
        out: list[LlmEvent] = []
        for call in self.calls:
            if not call.name:
                raise ProviderError(self.provider, "protocol", "a tool call without a function name")
            arguments = parse_arguments(self.provider, "".join(call.parts), call.name)
            out.append(ToolCallRequest(ToolCall(call.id, call.name, arguments)))
        if out and self.finish == "stop":
            self.finish = "tool_calls"  # servers that say "stop" after calling tools
        self.calls, self.slots = [], {}
        return out

    def _usage(self, usage: Any) -> None:
        if isinstance(usage.prompt_tokens, int):
            self.usage["input_tokens"] = usage.prompt_tokens
        if isinstance(usage.completion_tokens, int):
            self.usage["output_tokens"] = usage.completion_tokens
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None)
        if isinstance(cached, int):
            self.usage["cache_read_input_tokens"] = cached


def build(ctx: BuildContext) -> OpenAICompatibleLLM:
    """Local OpenAI-compatible servers usually need no key; the tenant's credential may name its
    own server (``base_url`` field)."""
    conf = ctx.settings
    tenant_url = ctx.tenant_url()
    return OpenAICompatibleLLM(ctx.secret, base_url=tenant_url or conf.base_url,
                               model=ctx.model or conf.model, **ctx.given("max_tokens", "temperature"),
                               policy=ctx.policy, egress=ctx.egress if tenant_url else None)
