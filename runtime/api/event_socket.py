"""``GET /api/v1/events/ws``: live event subscriptions for a tenant's runtime key.

The key comes in ``Authorization: Bearer`` or ``?token=`` (browsers cannot set
headers on a WebSocket); it is checked, and the realtime rate class counted,
before the upgrade, so refusals are ordinary JSON errors. Then:

    -> {"type": "subscribe", "topics": ["voice.call.*", "transcript.*"], "call_id": "call_..."}
    <- {"type": "subscribed", "topics": [...], "call_id": ...}
    -> {"type": "unsubscribe", "topics": [...], "call_id": ...}
    <- {"type": "unsubscribed", "topics": [...], "call_id": ...}
    <- {"type": "event", "event": {...}}
    <- {"type": "error", "message": "..."}   (bad messages; the socket stays open)

Commands, for the lowest latency (a speaking session's say and flush, as over REST):

    -> {"type": "say", "speaking_id", "text", "ref"}  /  {"type": "flush", "speaking_id", "ref"}
    <- {"type": "ack", "ref"}  or  {"type": "error", "ref", "error": "not_found" | "conflict" |
       "rate_limited" | "bad_request" | "cluster_unavailable" | "holder_timeout", "message"}

Topics may also be named as VoIPBIN names them: ``<tenant id>::transcription:*`` and
``<tenant id>::call:*`` (a tenant may only name itself) stand for our groups (TOPIC_ALIASES).

One bus subscription per socket with a bounded queue: a socket that falls behind
is closed with code 4008, never waited for. aiohttp's heartbeat pings the peer. The
socket follows its key (runtime.api.key_watch): revoking the key closes it with 4401,
disabling the tenant with 4403.

In cluster mode the socket hears every instance's events (runtime.cluster.event_relay). While
this instance has lost NATS it would hear only its own, so its sockets are closed with 1013
(try again later) and new ones refused with 503 until NATS is back: clients reconnect, through
the load balancer, to an instance that has it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from runtime.api.appkeys import BUS, CONTROL, EVENT_SOCKETS, METRICS, RATE_LIMITER
from runtime.api.endpoint import Ctx, bearer_key
from runtime.api.key_watch import KEY_WATCH
from runtime.control.errors import BadRequest, Forbidden, Unauthorized
from runtime.events.bus import Subscription
from runtime.events.models import Event
from runtime.events.topics import TOPICS, matches, unknown_patterns
from runtime.web.responses import error_response

log = logging.getLogger("voicectl.events")

QUEUE_SIZE = 1000  # events buffered per socket before it counts as too slow
HEARTBEAT_S = 20.0
MAX_MESSAGE_BYTES = 64 * 1024
MAX_FILTERS = 100
MAX_TOPICS = 50
CLOSE_TOO_SLOW = 4008
CLOSE_TRY_AGAIN = 1013

FilterKey = tuple[tuple[str, ...], str | None]


@dataclass(eq=False)
class SocketSubscription(Subscription):
    """Several topic/call filters of one socket over one bounded queue (an event is sent once)."""

    filters: dict[FilterKey, None] = field(default_factory=dict)

    def wants(self, event: Event) -> bool:
        if event.tenant_id != self.tenant_id:
            return False
        return any((call_id is None or event.call_id == call_id) and matches(event.topic, topics)
                   for topics, call_id in self.filters)

    def interests(self) -> list[FilterKey]:
        return list(self.filters)


# Seed 001's topic groups (``<customer>::<group>:*``) -> our topic globs.
TOPIC_ALIASES = {"transcription": ("transcript.*", "transcription.*", "speech.*"),
                 "call": ("voice.call.*", "call.*"), "speaking": ("speaking.*",)}


def _expand_aliases(topics: list[str], tenant_id: str) -> list[str]:
    out: list[str] = []
    for topic in topics:
        owner, sep, rest = topic.partition("::")
        if not sep:
            out.append(topic)
            continue
        group, _, glob = rest.partition(":")
        if owner != tenant_id:
            raise ValueError(f"{topic!r} names another tenant: a socket hears only its own ({tenant_id}::...)")
        if group not in TOPIC_ALIASES or glob != "*":
            raise ValueError(f"{topic!r}: known groups are {', '.join(f'{tenant_id}::{g}:*' for g in TOPIC_ALIASES)}")
        out.extend(TOPIC_ALIASES[group])
    return out


def _parse_filter(message: dict[str, Any], tenant_id: str) -> FilterKey:
    topics = message.get("topics")
    if not isinstance(topics, list) or not topics or len(topics) > MAX_TOPICS or not all(
        isinstance(t, str) and t and len(t) <= 200 for t in topics
    ):
        raise ValueError(f"topics must be a list of 1 to {MAX_TOPICS} topic patterns (strings)")
    topics = _expand_aliases(topics, tenant_id)
    unknown = unknown_patterns(topics)
    if unknown:
        raise ValueError(f"patterns {unknown} match no topic; topics are: {', '.join(TOPICS)}")
    call_id = message.get("call_id")
    if call_id is not None and (not isinstance(call_id, str) or not call_id or len(call_id) > 200):
        raise ValueError("call_id must be a call id (string)")
    return tuple(sorted(set(topics))), call_id


def _dumps(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


async def events_ws(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    app = request.app
    key = bearer_key(request) or (request.query.get("token") or "").strip() or None
    if key is None:
        app[METRICS].auth_failures.inc()
        raise Unauthorized("missing API key: send Authorization: Bearer <key> or ?token=<key>")
    try:
        principal = await app[CONTROL].keys.authenticate(key)
    except Unauthorized:
        app[METRICS].auth_failures.inc()
        raise
    if principal.is_admin or principal.tenant_id is None:
        raise Forbidden("event subscriptions need a tenant runtime key, not an admin key")
    headers: dict[str, str] = {}
    decision = await app[RATE_LIMITER].check(principal.key_id, principal.scope, "realtime")
    if decision is not None:
        headers = decision.headers()
        if not decision.allowed:
            app[METRICS].rate_limited.labels("realtime").inc()
            retry = int(headers["Retry-After"])
            return error_response(
                429, f"rate limit for realtime requests reached; retry in {retry} s",
                {"route_class": "realtime", "retry_after": retry, "limit": decision.limit, "remaining": 0,
                 "reset": decision.reset_at},
                headers=headers,
            )
    if nats_lost(app):
        return error_response(503, "events from the other instances are unavailable here for now (NATS "
                                   "unreachable); retry, or connect to another instance", {"retry_after": 1},
                              headers={"Retry-After": "1"})
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE_BYTES)
    if not ws.can_prepare(request).ok:
        raise BadRequest("this endpoint speaks WebSocket: send an Upgrade request")
    ws.headers.update(headers)
    await ws.prepare(request)
    await EventSocket(ws, app, principal.tenant_id, principal.key_id).serve()
    return ws


class EventSocket:
    def __init__(self, ws: web.WebSocketResponse, app: web.Application, tenant_id: str, key_id: str) -> None:
        self.ws = ws
        self.app = app
        self.key_id = key_id
        self.bus = app[BUS]
        self.sub = SocketSubscription(tenant_id=tenant_id, queue=asyncio.Queue(QUEUE_SIZE),
                                      on_overflow=self._overflow)
        self._sender: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[Any] | None = None

    def _overflow(self, _sub: Subscription) -> None:
        log.warning("closing a slow event socket", extra={"tenant_id": self.sub.tenant_id})
        self._close_soon(CLOSE_TOO_SLOW, "subscriber too slow: events were dropped")

    def refuse(self, code: int, reason: str) -> None:
        log.info("closing an event socket", extra={"tenant_id": self.sub.tenant_id, "code": code, "reason": reason})
        self._close_soon(code, reason)

    def _close_soon(self, code: int, reason: str) -> None:
        """No event is sent from now on; the close itself may wait for the peer, so it runs apart."""
        if self._sender is not None:
            self._sender.cancel()
        if self._closer is None:
            self._closer = asyncio.create_task(self.ws.close(code=code, message=reason.encode()))

    async def _send_events(self) -> None:
        queue = self.sub.queue
        while True:
            event = await queue.get()
            await self.ws.send_str(_dumps({"type": "event", "event": event.to_dict()}))

    async def serve(self) -> None:
        sockets = self.app[EVENT_SOCKETS]  # closed on shutdown (aiohttp would wait for them)
        sockets.add(self)
        watch = self.app[KEY_WATCH]
        watch.watch(self, self.key_id, self.refuse)
        self.bus.subscribe(self.sub)
        self._sender = asyncio.create_task(self._send_events())
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._error("send JSON text messages")
                elif msg.type == WSMsgType.ERROR:
                    break
        except ConnectionResetError:
            pass
        finally:
            watch.unwatch(self)
            self.bus.unsubscribe(self.sub)
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)
            sockets.discard(self)

    async def _error(self, message: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(_dumps({"type": "error", "message": message}))

    async def _handle(self, raw: str) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self._error("message is not valid JSON")
            return
        if not isinstance(message, dict):
            await self._error("message must be a JSON object")
            return
        kind = message.get("type")
        if kind in ("say", "flush"):
            await self._command(kind, message)
            return
        if kind not in ("subscribe", "unsubscribe"):
            await self._error(f"unknown message type {kind!r}; expected subscribe, unsubscribe, say or flush")
            return
        try:
            key = _parse_filter(message, self.sub.tenant_id)
        except ValueError as exc:
            await self._error(str(exc))
            return
        topics, call_id = key
        if kind == "subscribe":
            if key not in self.sub.filters and len(self.sub.filters) >= MAX_FILTERS:
                await self._error(f"at most {MAX_FILTERS} subscriptions per socket")
                return
            self.sub.filters[key] = None
            reply = "subscribed"
        else:
            if key not in self.sub.filters:
                await self._error("no such subscription (unsubscribe with the same topics and call_id)")
                return
            del self.sub.filters[key]
            reply = "unsubscribed"
        self.bus.interest_changed()
        await self.ws.send_str(_dumps({"type": reply, "topics": list(topics), "call_id": call_id}))


    async def _command(self, kind: str, message: dict[str, Any]) -> None:
        """A speaking session's say or flush, answered with ack or error (carrying the sender's ref)."""
        from runtime.api.live import live_ops
        from runtime.calls.integrator_control import SayText
        from runtime.calls.live_control import MAX_SAY_CHARS
        from runtime.control.errors import ControlError

        ref = message.get("ref")
        ref = ref if isinstance(ref, (str, int)) and not isinstance(ref, bool) and len(str(ref)) <= 200 else None

        async def answer(error: str | None = None, text: str = "") -> None:
            body: dict[str, Any] = {"type": "ack", "ref": ref} if error is None else {
                "type": "error", "ref": ref, "error": error, "message": text}
            if not self.ws.closed:
                await self.ws.send_str(_dumps(body))

        decision = await self.app[RATE_LIMITER].check(self.key_id, "runtime", "control")
        if decision is not None and not decision.allowed:
            self.app[METRICS].rate_limited.labels("control").inc()
            return await answer("rate_limited", f"rate limit for control requests reached; retry in "
                                                f"{decision.headers()['Retry-After']} s")
        speaking_id, text = message.get("speaking_id"), message.get("text")
        if not isinstance(speaking_id, str) or not speaking_id or len(speaking_id) > 200:
            return await answer("bad_request", "speaking_id must be a speaking session id")
        if kind == "say" and (not isinstance(text, str) or not text.strip() or len(text) > MAX_SAY_CHARS):
            return await answer("bad_request", f"text must be 1 to {MAX_SAY_CHARS} characters")
        body = SayText(text=text) if kind == "say" else None
        try:  # on the instance holding the session, as over REST
            await live_ops(self.app).run(f"speaking.{kind}", self.sub.tenant_id, speaking_id, body)
        except ControlError as exc:
            # 503 cluster_unavailable / 504 holder_timeout keep their code: the client may retry those.
            error = {404: "not_found", 409: "conflict", 422: "bad_request"}.get(exc.status, exc.code)
            return await answer(error, exc.message)
        await answer()


async def close_event_sockets(app: web.Application) -> None:
    """on_shutdown: close every open event socket (1001 going away)."""
    for socket in list(app[EVENT_SOCKETS]):
        await socket.ws.close(code=1001, message=b"server shutting down")


def nats_lost(app: web.Application) -> bool:
    from runtime.cluster.link import CLUSTER

    return CLUSTER in app and not app[CLUSTER].connected


def close_for_retry(app: web.Application) -> None:
    """NATS lost (cluster mode): close every event socket here with 1013 so its client reconnects."""
    for socket in list(app[EVENT_SOCKETS]):
        socket.refuse(CLOSE_TRY_AGAIN, "events from the other instances are unavailable here (NATS lost): "
                                        "reconnect")
