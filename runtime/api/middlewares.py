"""Request id, JSON errors for everything (never a traceback or an HTML page), request metrics."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from runtime.api.appkeys import METRICS
from runtime.api.responses import error_response
from runtime.control.errors import ControlError
from runtime.store.errors import DatabaseUnavailable

log = logging.getLogger("voicectl.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else secrets.token_hex(8)


def _http_error(exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return error_response(404, "no such route")
    if exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        return error_response(405, f"method not allowed; use {', '.join(allowed)}", {"allowed": allowed},
                              headers={"Allow": ", ".join(allowed)})
    if exc.status == 413:
        return error_response(413, "request body too large")
    return error_response(exc.status, exc.reason or "request failed")


@web.middleware
async def errors_and_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _request_id(request)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ControlError as exc:
        response = error_response(exc.status, exc.message, exc.details, error=exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_error(exc)
    except DatabaseUnavailable:
        log.error("database unavailable", extra={"request_id": request_id})
        response = error_response(503, "the database is unavailable; try again shortly")
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = error_response(500, "internal error; the request id identifies it in the logs",
                                  {"request_id": request_id})
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    metrics = request.app[METRICS]
    metrics.requests.labels(request.method, route, str(response.status)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - started)
    return response
