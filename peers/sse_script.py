"""A scripted HTTP server for streaming (SSE) APIs: the common part of the LLM peers.

The test queues ``Reply`` objects; each request to a scripted route takes the next one (an empty
script answers ``repeat`` when set, else 500, so a test that asked more than it scripted fails
loudly). Every request is
recorded (method, path, headers, JSON body). A reply is a status with a body, or a 200 event
stream that can start late (``delay_s``: slow first byte), pace its events (``gap_s``) and drop
the connection after some events (``disconnect_after``: the chunked body never completes).

Usage::

    async with SomePeer() as peer:
        peer.push(reply, ...)
        ... peer.base_url ..., peer.requests
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from peers.loopback import serve_loopback


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    at: float = 0.0  # time.monotonic() when it arrived


@dataclass(frozen=True)
class Reply:
    status: int = 200
    events: tuple[str, ...] = ()  # encoded SSE frames ("event: x\ndata: {...}\n\n") for a 200 stream
    body: bytes = b""  # for a non-streamed answer
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # before the response starts
    gap_s: float = 0.0  # between two events
    disconnect_after: int | None = None  # close the connection after this many events


def sse(data: str, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


def split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` roughly equal pieces (how deltas arrive)."""
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i:i + size] for i in range(0, len(text), size)]


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=json.dumps(payload).encode(),
                 headers=tuple((headers or {}).items()) + (("Content-Type", "application/json"),))


@dataclass
class ScriptedServer:
    """Subclasses add routes in ``routes`` and may check auth in ``refuse``."""

    host: str = "127.0.0.1"
    requests: list[Recorded] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    repeat: Reply | None = None  # answered, every time, once the script is empty (benchmarks)
    port: int = 0
    _runner: web.AppRunner | None = None

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def refuse(self, request: web.Request) -> Reply | None:
        """An answer given before the script (e.g. 401 for a wrong key); None to go on."""
        return None

    async def __aenter__(self) -> ScriptedServer:
        app = web.Application()
        app.add_routes(self.routes())
        # Handlers stop when the client goes away, and teardown never waits on a sleeping one.
        self._runner, self.port = await serve_loopback(app, self.host, handler_cancellation=True,
                                                       shutdown_timeout=0.5, access_log=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        entry = Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body,
                         time.monotonic())
        self.requests.append(entry)
        return entry

    def next_reply(self) -> Reply:
        if not self.script:
            return self.repeat or json_reply(500, {"error": "the test scripted no reply for this request"})
        return self.script.popleft()

    async def answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200 or not reply.events:
            return web.Response(status=reply.status, body=reply.body, headers=dict(reply.headers))
        response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", **dict(reply.headers)})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i, frame in enumerate(reply.events):
            if reply.disconnect_after is not None and i >= reply.disconnect_after:
                # close() flushes what was written, then ends the connection mid-body.
                assert request.transport is not None
                request.transport.close()
                return response
            if i and reply.gap_s:
                await asyncio.sleep(reply.gap_s)
            await response.write(frame.encode())
        await response.write_eof()
        return response
