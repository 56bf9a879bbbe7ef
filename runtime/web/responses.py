"""JSON responses: orjson bodies and the error shape {"error", "message", "details"}."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

# HTTP status -> the short "error" word of the body.
ERROR_WORDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


def _default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if hasattr(payload, "to_dict"):
        payload = payload.to_dict()
    return web.Response(
        body=orjson.dumps(payload, default=_default),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, message: str, details: dict[str, Any] | None = None, *, error: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": error or ERROR_WORDS.get(status, "error"), "message": message, "details": details or {}}
    return json_response(body, status=status, headers=headers)
