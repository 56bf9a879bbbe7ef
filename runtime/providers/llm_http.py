"""What the HTTP language-model adapters (Anthropic, OpenAI-compatible) share: turning HTTP
statuses and transport failures into ``ProviderError`` kinds, reading ``Retry-After``, parsing a
tool call's JSON arguments, and keeping API keys out of error messages.

Both official SDKs are generated the same way on ``httpx2``; each adapter maps its SDK's
exception classes and calls these helpers.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx2  # the HTTP client of both SDKs (anthropic>=2, openai>=3): mid-stream failures surface raw

from runtime.providers.base import ErrorKind, ProviderError

MAX_DETAIL = 200
FAILED_TOOL_STATUSES = frozenset({"error", "timeout", "cancelled"})


def status_kind(status: int) -> ErrorKind:
    """401/403: a bad key (never retried); 429 and Anthropic's 529 (overloaded): rate limited;
    408: timed out; other 5xx: the server; other 4xx: our request was refused."""
    if status in (401, 403):
        return "auth"
    if status in (429, 529):
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server"
    return "bad_request"


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI), or ``Retry-After`` as seconds or an
    HTTP date; None when absent or unreadable."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def redact(text: str, secret: str | None) -> str:
    """``text`` cut to a log-friendly length, with the API key (if a server echoed it) masked."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return text[:MAX_DETAIL]


def transport_error(provider: str, exc: httpx2.HTTPError | httpx2.StreamError) -> ProviderError:
    """A connection that failed or broke mid-stream (no status to go by)."""
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
