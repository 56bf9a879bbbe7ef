"""Live call control across instances: NATS request/reply to the instance that holds a call.

The holder of a call, or of a transcribe or speaking session, subscribes ``<prefix>.held.<id>``
while it holds it (a session also for a while after it stopped with its call), so
NATS itself is the directory: a request reaches the one holder, and "no responders" means no live
instance has it. The holder runs the operation with its own code (runtime.calls.live_ops) for the
tenant named in the request (its own checks decide: another tenant's call is a 404 there as here)
and replies with the answer or the error, which the forwarder gives its client as its own.

Each request runs in a task of its own, started in the order its id's subscription delivers them.
Beside the live operations, a carrier bridge can serve requests of its own about the calls it holds
(``serve``: a Twilio callback about an outbound call that reached another instance).
Lists scatter to ``<prefix>.held-lists`` (every instance, this one too) and
gather the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from runtime.calls.live_ops import LISTS, OPS, LiveOps
from runtime.control.errors import ControlError, Invalid

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from runtime.calls.tracker import CallTracker
    from runtime.cluster.link import ClusterLink

log = logging.getLogger("voicectl.cluster")

# Every id this runtime makes (runtime.ids.new_id) fits one subject token; anything else (dots,
# wildcards, spaces from a client's path) is held by no instance and never becomes a subject.
HOLDABLE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Ended sessions this instance still answers for to its peers, newest first (one subscription each,
# about 5 kB in nats-py: the tracker's own 10,000 would cost ~50 MB).
ENDED_SESSIONS_HELD = 1000
# (tenant id, target id, validated body) -> the JSON answer of a request a bridge serves.
Handler = Callable[[str, str, Any], Awaitable[dict[str, Any]]]
# A list waits at most request_timeout_s in all, and no longer than this after the latest answer.
GATHER_QUIET_S = 0.1


class ClusterUnavailable(ControlError):
    status = 503
    code = "cluster_unavailable"


class HolderTimeout(ControlError):
    status = 504
    code = "holder_timeout"


class HolderFailed(ControlError):
    status = 500
    code = "internal_error"


class Relayed(ControlError):
    """The holder's error, answered by the forwarder as its own."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None) -> None:
        super().__init__(message, details)
        self.status, self.code = status, code


def _error(exc: ControlError) -> bytes:
    return orjson.dumps({"error": {"status": exc.status, "code": exc.code, "message": exc.message,
                                   "details": exc.details}})


class ForwardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "voicectl_forwarded_call_ops", "Live call operations sent to the instance holding the call, by outcome "
            "(answered, not_held, timeout, unavailable)", ("op", "outcome"), registry=registry)
        self.latency = Histogram(
            "voicectl_forwarded_call_op_seconds", "Request to answer of a forwarded live call operation",
            registry=registry, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5))


class RemoteCalls:
    """This instance's side of call control across the cluster: it serves what it holds and forwards the rest."""

    def __init__(self, link: ClusterLink, tracker: CallTracker, ops: LiveOps, timeout_s: float,
                 registry: CollectorRegistry) -> None:
        self.link, self.tracker, self.ops, self.timeout_s = link, tracker, ops, timeout_s
        self.metrics = ForwardMetrics(registry)
        self._subs: dict[str, Subscription] = {}
        # hold/release come from sync code (the tracker, a call's sessions): one task applies them in order.
        self._changes: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._ended: OrderedDict[str, None] = OrderedDict()  # ended sessions still held, oldest first
        self._worker: asyncio.Task[None] | None = None
        self._list_sub: Subscription | None = None
        self._serving: set[asyncio.Task[None]] = set()  # forwarded requests being run here
        self._handlers: dict[str, tuple[type[BaseModel], Handler]] = {}

    def serve(self, name: str, body: type[BaseModel], handler: Handler) -> None:
        """Answer forwarded requests ``name`` with ``handler``, their bodies re-validated as ``body``."""
        self._handlers[name] = (body, handler)

    def _subject(self, target_id: str) -> str:
        return self.link.subject("held", target_id)

    # Holding: what this instance answers for.

    def hold(self, target_id: str) -> None:
        self._changes.put_nowait((True, target_id))

    def release(self, target_id: str) -> None:
        self._changes.put_nowait((False, target_id))

    def ended(self, session_id: str) -> None:
        self._ended[session_id] = None
        while len(self._ended) > ENDED_SESSIONS_HELD:
            self.release(self._ended.popitem(last=False)[0])

    async def _apply_changes(self) -> None:
        client = self.link.client
        while True:
            held, target_id = await self._changes.get()
            try:
                if held and target_id not in self._subs:
                    self._subs[target_id] = await client.subscribe(self._subject(target_id), cb=self._serve)
                elif not held and (sub := self._subs.pop(target_id, None)) is not None:
                    await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - NATS closing or lost: it re-subscribes what it has on reconnect
                log.warning("NATS subscription change failed", extra={"target_id": target_id, "held": held})

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._apply_changes())
        self._list_sub = await self.link.client.subscribe(self.link.subject("held-lists"), cb=self._serve_list)
        self.tracker.holdings = self
        for call in list(self.tracker.live.values()):  # none yet at start-up; kept for a late start
            self.tracker.hold_call(call)

    async def close(self) -> None:
        self.tracker.holdings = None
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for sub in [*self._subs.values(), *([self._list_sub] if self._list_sub else [])]:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        self._subs.clear()
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)

    # The holder's side.

    async def _serve(self, msg: Msg) -> None:
        """The subscription's callback: each request runs in a task of its own, because releasing the id
        (the call ended, maybe by this very request) cancels the subscription's task, and a slow
        operation (a hang-up waiting for its carrier) must not hold up the next ones."""
        task = asyncio.create_task(self._answer(msg))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = orjson.loads(msg.data)
            body = request.get("body")
            if (served := self._handlers.get(request["op"])) is not None:
                model, handler = served
                result = await handler(request["tenant_id"], request["target_id"], model.model_validate(body or {}))
            else:
                op = OPS[request["op"]]
                if op.body is not None:
                    body = op.body.model_validate(body or {})
                result = await self.ops.run_here(op.name, request["tenant_id"], request["target_id"], body)
            answer = orjson.dumps({"ok": result})
        except ControlError as exc:
            answer = _error(exc)
        except ValidationError as exc:
            answer = _error(Invalid(f"invalid forwarded request body: {exc.error_count()} errors"))
        except Exception:  # a bug here must still answer, or the forwarder waits its whole timeout
            log.exception("forwarded call operation failed", extra={"subject": msg.subject})
            answer = _error(HolderFailed("the instance holding the call failed to run the operation"))
        await self._reply(msg, answer)

    async def _serve_list(self, msg: Msg) -> None:
        try:
            request = orjson.loads(msg.data)
            items = self.ops.list_here(request["list"], request["tenant_id"]) if request["list"] in LISTS else []
        except Exception:  # noqa: BLE001 - a malformed request gets an empty answer, never a crash
            log.warning("bad list request over NATS", extra={"subject": msg.subject})
            items = []
        await self._reply(msg, orjson.dumps({"items": items}))

    @staticmethod
    async def _reply(msg: Msg, data: bytes) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):  # NATS lost: the forwarder times out, as it must
                await msg.respond(data)

    # The forwarder's side.

    @staticmethod
    def _unreachable() -> ClusterUnavailable:
        return ClusterUnavailable("NATS is unreachable: calls held by other instances cannot be reached now; "
                                  "retry shortly", {"retry": True})

    async def forward(self, name: str, tenant_id: str, target_id: str, body: Any) -> dict[str, Any] | None:
        """The holder's answer (its error raised as Relayed), or None when no instance holds ``target_id``."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        outcomes = self.metrics.outcomes
        if not HOLDABLE_ID.fullmatch(target_id):
            outcomes.labels(name, "not_held").inc()
            return None
        if not self.link.connected:
            outcomes.labels(name, "unavailable").inc()
            raise self._unreachable()
        payload = orjson.dumps({"op": name, "tenant_id": tenant_id, "target_id": target_id,
                                "body": body.model_dump(mode="json") if body is not None else None})
        began = time.perf_counter()
        try:
            msg = await self.link.client.request(self._subject(target_id), payload, timeout=self.timeout_s)
        except NoRespondersError:
            outcomes.labels(name, "not_held").inc()
            return None
        except NatsTimeout:
            outcomes.labels(name, "timeout").inc()
            raise HolderTimeout(f"the instance holding {target_id} did not answer within {self.timeout_s:g} s",
                                {"target_id": target_id, "timeout_s": self.timeout_s}) from None
        except Exception as exc:  # noqa: BLE001 - the connection dropped mid-request
            outcomes.labels(name, "unavailable").inc()
            raise ClusterUnavailable(f"NATS request failed ({type(exc).__name__}); retry shortly",
                                     {"retry": True}) from None
        self.metrics.latency.observe(time.perf_counter() - began)
        outcomes.labels(name, "answered").inc()
        answer = orjson.loads(msg.data)
        if "error" in answer:
            error = answer["error"]
            raise Relayed(error["status"], error["code"], error["message"], error.get("details"))
        return answer["ok"]

    async def gather(self, name: str, tenant_id: str) -> list[dict[str, Any]]:
        """Every instance's items of list ``name`` for the tenant (this one's too: it answers like the others)."""
        if not self.link.connected:
            raise self._unreachable()
        client = self.link.client
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        items: list[dict[str, Any]] = []
        try:
            await client.publish(self.link.subject("held-lists"),
                                 orjson.dumps({"list": name, "tenant_id": tenant_id}), reply=inbox)
            async for answer in _answers(sub, self.timeout_s):
                items.extend(orjson.loads(answer.data).get("items", []))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return items


async def _answers(sub: Subscription, total_s: float) -> AsyncIterator[Msg]:
    """Answers until none came for GATHER_QUIET_S after the latest one, or ``total_s`` in all."""
    from nats.errors import TimeoutError as NatsTimeout

    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s
    wait = total_s
    while wait > 0:
        try:
            yield await sub.next_msg(timeout=wait)
        except NatsTimeout:
            return
        wait = min(GATHER_QUIET_S, deadline - loop.time())


REMOTE_CALLS: web.AppKey[RemoteCalls] = web.AppKey("remote_calls", RemoteCalls)
