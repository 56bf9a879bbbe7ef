"""What the HTTP language-model adapters (Anthropic, OpenAI-compatible) share: turning HTTP
transport failures into ``ProviderError`` kinds and parsing a tool call's JSON arguments
(statuses, ``Retry-After`` and key redaction are wire_errors', as for every adapter).

Both official SDKs are generated the same way on ``httpx2``; each adapter maps its SDK's
exception classes and calls these helpers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2  # the HTTP client of both SDKs (anthropic>=2, openai>=3): mid-stream failures surface raw

from runtime.egress.policy import refused
from runtime.providers.base import ProviderError
from runtime.providers.wire_errors import egress_refused

FAILED_TOOL_STATUSES = frozenset({"error", "timeout", "cancelled"})


def transport_error(provider: str, exc: httpx2.HTTPError | httpx2.StreamError) -> ProviderError:
    """A connection that failed or broke mid-stream (no status to go by)."""
    if refused(exc):
        return egress_refused(provider)
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(provider, "timeout", f"the connection timed out ({type(exc).__name__})")
    return ProviderError(provider, "unavailable", f"the connection failed or broke ({type(exc).__name__})")


def is_transport_error(exc: BaseException) -> bool:
    return isinstance(exc, httpx2.HTTPError | httpx2.StreamError)


def parse_arguments(provider: str, raw: str, tool: str) -> dict[str, Any]:
    """A tool call's accumulated JSON arguments as a dict ('' means none). Anything that is not a
    JSON object is a protocol error: the reply is broken, not merely a wrong argument."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ProviderError(provider, "protocol", f"the arguments of tool call {tool!r} are not valid JSON") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProviderError(provider, "protocol", f"the arguments of tool call {tool!r} are not a JSON object")
    return value


def tool_failed(content: str) -> bool:
    """True when a tool result (the JSON the pipeline's tool layer writes) reports a failure."""
    if not content.startswith("{"):
        return False
    try:
        value = json.loads(content)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("status") in FAILED_TOOL_STATUSES
