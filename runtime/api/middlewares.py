"""Request id, JSON errors for everything (never a traceback or an HTML page), request metrics."""

from __future__ import annotations

import logging
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runtime.api.appkeys import METRICS
from runtime.control.errors import ControlError
from runtime.providers.registry import MissingExtra
from runtime.store.errors import DatabaseUnavailable
from runtime.web.metrics import Metrics
from runtime.web.responses import error_response

log = logging.getLogger("voicectl.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Per app's Metrics: (method, route, status) -> its request counter and latency histogram children.
# labels() validates and locks on every call; the children never change once made.
_CHILDREN: weakref.WeakKeyDictionary[Metrics, dict[tuple[str, str, int], tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary())
_CHILDREN_MAX = 4096  # methods come from clients: past this, labels() as before, nothing kept


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else secrets.token_hex(8)


def _observe(metrics: Metrics, method: str, route: str, status: int, seconds: float) -> None:
    children = _CHILDREN.get(metrics)
    if children is None:
        children = _CHILDREN[metrics] = {}
    key = (method, route, status)
    pair = children.get(key)
    if pair is None:
        pair = (metrics.requests.labels(method, route, str(status)), metrics.latency.labels(route))
        if len(children) < _CHILDREN_MAX:
            children[key] = pair
    pair[0].inc()
    pair[1].observe(seconds)


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
    except MissingExtra as exc:  # a part whose optional packages this install left out
        response = error_response(501, str(exc), {"extra": exc.extra}, error="not_installed")
    except DatabaseUnavailable:
        log.error("database unavailable", extra={"request_id": request_id})
        response = error_response(503, "the database is unavailable; try again shortly")
    except Exception as exc:
        if exc is request.content.exception():
            # What reading the body ended with (the client left mid-body, a broken chunk): the
            # client's doing, not a bug of ours, so no traceback for strangers to fill the log with.
            log.warning("request body cut short or malformed", extra={
                "request_id": request_id, "path": request.path, "reason": type(exc).__name__})
            response = error_response(400, "the request body was cut short or is malformed")
        else:
            log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
            response = error_response(500, "internal error; the request id identifies it in the logs",
                                      {"request_id": request_id})
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    resource = request.match_info.route.resource
    _observe(request.app[METRICS], request.method, resource.canonical if resource else "unmatched", response.status,
             time.perf_counter() - started)
    return response
