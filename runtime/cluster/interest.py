"""What the event subscribers of the other instances take, so ``EventBus.listened`` answers for the cluster.

Each instance sends its subscribers' (tenant, topic globs, call) set on one core NATS subject
(``<prefix>.interest``): at once when it changes (coalesced within a loop turn), every
``REFRESH_S`` while it lives, and empty when it stops. A set not refreshed within ``EXPIRES_S``
is forgotten, so an instance that died stops counting. A newcomer asks the others to send theirs.
Sets are bounded at both ends: past ``MAX_ENTRIES`` an instance widens its entries (any call,
then any topic of the tenant), which can only make ``listened`` say yes more often, never miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson

from runtime.cluster.link import ClusterLink
from runtime.events.bus import Interest
from runtime.events.topics import matches

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

log = logging.getLogger("voicectl.cluster")

REFRESH_S = 5.0
EXPIRES_S = 3 * REFRESH_S
MAX_ENTRIES = 2000  # per instance, sent and accepted
MAX_INSTANCES = 500


def bounded(entries: Iterable[Interest], limit: int = MAX_ENTRIES) -> list[Interest]:
    """At most ``limit`` entries covering at least ``entries``: calls widened to any call, then
    a tenant's globs to every topic."""
    out = sorted(set(entries), key=lambda e: (e[0], e[1], e[2] or ""))
    if len(out) <= limit:
        return out
    out = sorted({(tenant, topics, None) for tenant, topics, _ in out})
    if len(out) <= limit:
        return out
    return [(tenant, ("*",), None) for tenant in sorted({tenant for tenant, _, _ in out})][:limit]


class ClusterInterest:
    def __init__(self, link: ClusterLink, local: Callable[[], set[Interest]]) -> None:
        self.link = link
        self._local = local  # EventBus.interests
        self._subject = link.subject("interest")
        # instance id -> (monotonic expiry, tenant id -> [(globs, call id or None)])
        self._remote: dict[str, tuple[float, dict[str, list[tuple[tuple[str, ...], str | None]]]]] = {}
        self._sub: NatsSubscription | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._dirty = False
        self._sent: list[Interest] | None = None

    async def start(self) -> None:
        self._sub = await self.link.client.subscribe(self._subject, cb=self._received)
        await self.send(ask=True)
        self._refresher = asyncio.create_task(self._refresh())

    async def stop(self) -> None:
        for task in (self._refresher, self._send_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._sub is not None and self.link.connected:
            try:
                await self._sub.unsubscribe()
                await self._publish({"instance": self.link.instance_id, "entries": [], "ttl_s": 0})
            except Exception:  # noqa: BLE001 - the others forget us within EXPIRES_S anyway
                log.debug("could not withdraw this instance's event interest", exc_info=True)

    def wants(self, tenant_id: str, topic: str, call_id: str | None) -> bool:
        now = time.monotonic()
        for instance, (expires, by_tenant) in list(self._remote.items()):
            if expires < now:
                del self._remote[instance]
                continue
            for topics, wanted in by_tenant.get(tenant_id, ()):
                if wanted in (None, call_id) and matches(topic, topics):
                    return True
        return False

    def changed(self) -> None:
        """Send this instance's set soon: several changes in one loop turn make one message."""
        self._dirty = True
        if self._send_task is None or self._send_task.done():
            self._send_task = asyncio.get_running_loop().create_task(self._send_changed())

    async def _send_changed(self) -> None:
        while self._dirty:  # a change made while a message is being sent gets its own
            await asyncio.sleep(0)  # the rest of this loop turn's changes join this message
            self._dirty = False
            entries = bounded(self._local())
            if entries != self._sent:
                await self.send(entries=entries)

    async def send(self, ask: bool = False, entries: list[Interest] | None = None) -> None:
        entries = bounded(self._local()) if entries is None else entries
        if not self.link.connected:
            return  # sent again, with ask, when NATS is back (back())
        self._sent = entries
        try:
            await self._publish({"instance": self.link.instance_id, "ask": ask, "ttl_s": EXPIRES_S,
                                 "entries": [[t, list(g), c] for t, g, c in entries]})
        except Exception:  # noqa: BLE001 - NATS went away meanwhile: the next refresh sends it
            log.warning("could not send this instance's event interest", exc_info=True)

    async def back(self) -> None:
        """NATS is back: the others may have forgotten us, and we them."""
        await self.send(ask=True)

    async def _publish(self, body: dict) -> None:
        await self.link.client.publish(self._subject, orjson.dumps(body))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.send()

    async def _received(self, msg: Msg) -> None:
        try:
            body = orjson.loads(msg.data)
            instance = str(body["instance"])
            if instance == self.link.instance_id:
                return
            ttl = min(float(body.get("ttl_s", EXPIRES_S)), EXPIRES_S)
            by_tenant: dict[str, list[tuple[tuple[str, ...], str | None]]] = {}
            for tenant, topics, call_id in body["entries"][:MAX_ENTRIES]:
                by_tenant.setdefault(str(tenant), []).append((tuple(map(str, topics)), call_id))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed event-interest message", extra={"subject": msg.subject})
            return
        if ttl <= 0 or not by_tenant:
            self._remote.pop(instance, None)
        elif instance in self._remote or len(self._remote) < MAX_INSTANCES:
            self._remote[instance] = (time.monotonic() + ttl, by_tenant)
        if body.get("ask"):
            await self.send()
