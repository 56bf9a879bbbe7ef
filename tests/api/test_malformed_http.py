"""Requests aiohttp's own parser refuses (before any middleware) and bodies cut short: the JSON error
shape with the status aiohttp decides, and one warning line in the log, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from peers.loopback import serve_loopback
from runtime.web.http_errors import JsonErrorAppRunner

LONG = 20_000  # past aiohttp's 8190-byte line and field limits


async def _exchange(base_url: str, raw: bytes, *, half_close: bool = False) -> bytes:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        if half_close:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


MALFORMED = {
    "over-long header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * LONG + b"\r\n\r\n",
    "over-long URL": b"GET /" + b"a" * LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad Content-Length": b"POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "duplicate Content-Length": (b"POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                 b"Content-Length: 2\r\n\r\nab"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_request_gets_the_json_error_and_one_warning_line(api, caplog, case: str):
    caplog.set_level(logging.DEBUG)
    status, headers, body = _parse(await _exchange(api.base_url, MALFORMED[case]))

    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers.get("x-request-id")
    error = orjson.loads(body)
    assert set(error) == {"error", "message", "details"} and error["error"] == "bad_request"
    assert "aaaa" not in error["message"] and "Traceback" not in body.decode()  # nothing of the request echoed

    loud = _loud(caplog)
    assert len(loud) == 1, [r.getMessage() for r in loud]
    (line,) = loud
    assert line.levelno == logging.WARNING and line.exc_info is None and line.exc_text is None
    assert "Traceback" not in caplog.text
    assert line.__dict__.get("request_id") == headers["x-request-id"]


async def test_the_server_still_serves_after_malformed_requests(api):
    for raw in MALFORMED.values():
        await _exchange(api.base_url, raw)
    status, body, _ = await api.call("GET", "/healthz")
    assert status == 200, body


async def _one_loud_record(caplog: pytest.LogCaptureFixture, timeout_s: float = 5.0) -> list[logging.LogRecord]:
    """The handler logs after the client is gone: wait (generously) for its line."""
    deadline = time.monotonic() + timeout_s
    while not _loud(caplog) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and nothing more follows
    return _loud(caplog)


@pytest.mark.parametrize("case", ["body shorter than its Content-Length", "broken chunked body"])
async def test_a_body_cut_short_or_malformed_logs_one_warning_line(api, caplog, case: str):
    caplog.set_level(logging.DEBUG)
    head = (b"POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + api.admin_key.encode() + b"\r\n")
    if case == "broken chunked body":
        raw, half_close = head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", False
    else:
        raw, half_close = head + b'Content-Length: 100\r\n\r\n{"name": "acm', True
    response = await _exchange(api.base_url, raw, half_close=half_close)

    if response:  # the client that is still there gets the JSON error shape
        status, headers, body = _parse(response)
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert orjson.loads(body)["error"] == "bad_request"
    loud = await _one_loud_record(caplog)
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert loud[0].levelno == logging.WARNING and loud[0].exc_info is None
    assert "Traceback" not in caplog.text
    status, page, _ = await api.call("GET", "/api/v1/tenants", api.admin_key)
    assert status == 200 and page["total"] == 0  # nothing half-made


async def test_an_error_past_the_apps_error_middleware_still_answers_json(caplog):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()  # no error middleware: as if it had failed
    app.router.add_get("/", broken)
    runner, port = await serve_loopback(app, runner_class=JsonErrorAppRunner)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 500 and resp.content_type == "application/json"
            body = await resp.json()
            request_id = resp.headers["X-Request-ID"]
    finally:
        await runner.cleanup()
    assert body["error"] == "internal_error" and body["details"] == {"request_id": request_id}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info  # a bug of ours: its traceback is wanted
