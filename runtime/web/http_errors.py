"""Requests aiohttp refuses before any middleware sees them (an over-long URL or header, a bad
Content-Length, a malformed request line, header or chunked body) get the JSON error shape and one
warning line, not aiohttp's text/plain answer and an error-level traceback per request: strangers
must not fill the error log.

aiohttp answers these in its protocol's ``RequestHandler.handle_error`` and offers no hook for them
(aio-libs/aiohttp#3287): here is that protocol with ``handle_error`` overridden, the server that
makes it for each connection, and the app runner that serves with that server.
"""

from __future__ import annotations

import logging
import secrets
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler

from runtime.web.responses import error_response

log = logging.getLogger("voicectl.http")

# What was wrong, most specific first; never anything the client sent (its bytes are not echoed).
_REASONS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "the request line or a header is too long"),
    (InvalidURLError, "invalid URL"),
    (BadHttpMethod, "invalid HTTP method"),
    (BadStatusLine, "invalid request line"),
    (InvalidHeader, "invalid header"),
    (PayloadEncodingError, "invalid body encoding"),
)
# The rest are plain BadHttpMessage: what aiohttp's own message names.
_MESSAGE_REASONS = (("Content-Length", "invalid Content-Length"), ("Too many headers", "too many headers"))


def malformed_reason(exc: HttpProcessingError) -> str | None:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    for fragment, reason in _MESSAGE_REASONS:
        if fragment in (exc.message or ""):
            return reason
    return None


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's HTTP protocol, answering the errors it handles itself in the JSON error shape."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response was started, only closing is left
            raise ConnectionError("a response was already sent; cannot send the error")
        request_id = secrets.token_hex(8)
        fields = {"remote": request.remote, "status": status, "request_id": request_id}
        if isinstance(exc, HttpProcessingError):
            reason = malformed_reason(exc)
            # Not HTTP at all (TLS to this port, scanners): debug, as aiohttp has it.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING
            log.log(level, "malformed HTTP request refused", extra={**fields, "reason": reason})
            text = f"malformed HTTP request: {reason}" if reason else "malformed HTTP request"
            response = error_response(status, text, headers={"X-Request-ID": request_id})
        else:
            # An error past the app's own error middleware (a bug of ours: its traceback is wanted)
            # or a handler that timed out.
            log.error("request failed", exc_info=exc, extra=fields)
            response = error_response(status, f"{HTTPStatus(status).phrase.lower()}; the request id identifies it "
                                      "in the logs", {"request_id": request_id}, headers={"X-Request-ID": request_id})
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, making each connection's protocol a ``JsonErrorRequestHandler``."""

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """``web.AppRunner`` serving with ``JsonErrorServer``: use it wherever the app is served."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup
        # The same arguments aiohttp gave its own server: the app's handler and request factory, and
        # every protocol option (the app's handler_args, the runner's access log and timeouts).
        return JsonErrorServer(plain.request_handler, request_factory=plain.request_factory,
                               handler_cancellation=plain.handler_cancellation, loop=plain._loop, **plain._kwargs)
