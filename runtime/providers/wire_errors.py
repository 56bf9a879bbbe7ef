"""Provider HTTP statuses as ``ProviderError`` kinds, ``Retry-After``, and keeping a key out of
error text: shared by every adapter (Deepgram, Chatterbox, and the LLMs through llm_http).

401/403: a bad key (never retried); 429 and 529: rate limited (retried, honouring
``Retry-After``); 408: timed out; other 5xx: the server; other 4xx: our request was refused
(never retried).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from runtime.egress.policy import REFUSED
from runtime.providers.base import ErrorKind, ProviderError

MAX_DETAIL = 200


def status_kind(status: int) -> ErrorKind:
    if status in (401, 403):
        return "auth"
    if status in (429, 529):  # 529: Anthropic's "overloaded"
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server"
    return "bad_request"


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI), or ``Retry-After`` as seconds or an HTTP
    date; None when absent or unreadable. ``headers`` must look names up case-insensitively (as
    aiohttp's, httpx's and websockets' do)."""
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
    """``text`` cut short, with the key masked in case a server echoed it."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return text[:MAX_DETAIL]


def egress_refused(provider: str) -> ProviderError:
    """A tenant's URL the egress guard did not connect to (runtime.egress): no detail about the
    target, and never retried (another attempt is refused the same way)."""
    return ProviderError(provider, "bad_request", REFUSED)


def status_error(provider: str, status: int, headers: Mapping[str, str] | None = None, detail: str = "",
                 secret: str | None = None) -> ProviderError:
    kind = status_kind(status)
    message = f"HTTP {status}" + (f": {redact(detail, secret)}" if detail else "")
    if kind == "auth":
        message += " (the key was refused: check the tenant's credential)"
    return ProviderError(provider, kind, message, status=status,
                         retry_after=retry_after(headers) if kind in ("rate_limit", "server") else None)
