"""The event bus: commit first, then publish in-process; never blocks a call.

``publish`` writes the event to ``call_events`` and, in the same transaction, one
outbox row per matching active webhook config of the tenant (so a delivery can
never be lost between the two). Only then is the event handed to in-process
subscribers, each through a bounded queue: a subscriber that falls behind is
dropped (its ``on_overflow`` is called), never waited for.

In cluster mode a ``Relay`` (runtime.cluster.event_relay) also sends each committed event to
the other instances, hands theirs to ``fan_out`` here, and tells ``listened`` what their
subscribers take; without one, everything stays in this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.events.models import Event
from runtime.events.topics import matches
from runtime.ids import new_id, now_iso
from runtime.store.errors import ForeignKeyViolation
from runtime.store.store import Store, Tables, WriteBatch
from runtime.store.tables import WRITES

log = logging.getLogger("voicectl.events")

DEFAULT_QUEUE = 1000
# The active webhook configs of a tenant are read once per HOOKS_TTL_S at most (see EventBus._hooks).
HOOKS_TTL_S = 1.0
HOOKS_CACHE_MAX = 10_000


@dataclass(eq=False)
class Subscription:
    """In-process listener: events of one tenant matching its topic globs (optionally one call)."""

    tenant_id: str | None  # None: every tenant (runtime internals only)
    topics: list[str] = field(default_factory=lambda: ["*"])
    call_id: str | None = None
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE))
    on_overflow: Callable[[Subscription], None] | None = None
    dropped: bool = False

    def wants(self, event: Event) -> bool:
        if self.tenant_id is not None and event.tenant_id != self.tenant_id:
            return False
        if self.call_id is not None and event.call_id != self.call_id:
            return False
        return matches(event.topic, self.topics)

    def interests(self) -> Iterable[tuple[Sequence[str], str | None]]:
        """(topic globs, call id or None) pairs this subscription takes: what ``listened`` reads."""
        return ((self.topics, self.call_id),)


# (tenant id, topic globs, call id or None): one thing a subscriber of this instance takes.
Interest = tuple[str, tuple[str, ...], str | None]


class Relay(Protocol):
    """Events to and from the other instances of a cluster."""

    def send(self, events: Sequence[Event]) -> None:
        """Committed events made here, in order; never blocks."""

    def wants(self, tenant_id: str, topic: str, call_id: str | None) -> bool:
        """Whether a subscriber on another instance takes the topic."""

    def interest_changed(self) -> None:
        """What this instance's subscribers take has changed (``EventBus.interests``)."""


class EventBus:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._subscriptions: set[Subscription] = set()
        self.relay: Relay | None = None  # cluster mode: set before the first event
        self.published = 0
        # Called after each commit that queued outbox rows (the delivery worker wakes up).
        self.on_outbox: Callable[[], None] | None = None
        self._hooks_cache: dict[str, tuple[tuple[int, int], float, list[dict]]] = {}

    def subscribe(self, subscription: Subscription) -> Subscription:
        self._subscriptions.add(subscription)
        self.interest_changed()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self.interest_changed()

    def interest_changed(self) -> None:
        """A subscription's topics or call changed (event sockets call this after (un)subscribe)."""
        if self.relay is not None:
            self.relay.interest_changed()

    def interests(self) -> set[Interest]:
        """What the tenants' subscribers here take (the runtime's own, tenant None, do not count)."""
        return {(sub.tenant_id, tuple(topics), call_id) for sub in self._subscriptions
                if sub.tenant_id is not None and not sub.dropped for topics, call_id in sub.interests()}

    def listened(self, tenant_id: str, topic: str, call_id: str | None = None) -> bool:
        """Whether a tenant's subscriber takes ``topic`` (of ``call_id``): a live socket here or on
        another instance, or an active webhook config as last read. Events that cost work to make
        (``transcript.interim`` from an offline engine) are made only then."""
        for sub in self._subscriptions:
            if sub.tenant_id != tenant_id or sub.dropped:
                continue
            if any(wanted in (None, call_id) and matches(topic, topics) for topics, wanted in sub.interests()):
                return True
        cached = self._hooks_cache.get(tenant_id)
        if cached is not None and any(matches(topic, hook["events"]) for hook in cached[2]):
            return True
        return self.relay is not None and self.relay.wants(tenant_id, topic, call_id)

    async def publish(self, event: Event, batch: WriteBatch | None = None) -> None:
        """Commit, then fan out. ``batch``: writes of the caller committed in the event's own
        transaction, before it (a call's row with its voice.call.started)."""
        await self.publish_all((event,), batch)

    async def publish_all(self, events: tuple[Event, ...] | list[Event], batch: WriteBatch | None = None) -> None:
        """Several events of one tenant (in order) committed in one transaction with ``batch``,
        then fanned out in that order."""
        queued = await self._commit(events, batch)
        self.committed(events, queued)

    def committed(self, events: tuple[Event, ...] | list[Event], queued: int) -> None:
        """Hand out events that are committed (``queued``: the outbox rows they added), in order."""
        self.published += len(events)
        if queued and self.on_outbox is not None:
            self.on_outbox()
        for event in events:
            self.fan_out(event)
        if self.relay is not None:
            # Subscribers here first (no network hop); the copy NATS brings back here is skipped.
            self.relay.send(events)

    async def _hooks(self, tenant_id: str, fresh: bool = False) -> tuple[list[dict], bool]:
        """The tenant's active webhook configs, and whether they came from the cache. Cached for
        HOOKS_TTL_S, and dropped at once when this process writes webhook_configs or tenants (so
        the API's changes apply to the next event); the CLI's, from another process, within the TTL."""
        generation = (WRITES.get("webhook_configs", 0), WRITES.get("tenants", 0))
        now = time.monotonic()
        cached = None if fresh else self._hooks_cache.get(tenant_id)
        if cached is not None and cached[0] == generation and now < cached[1]:
            return cached[2], True
        hooks, _ = await self.store.webhook_configs.list(
            tenant_id=tenant_id, equals={"active": True}, limit=200, count=False
        )
        if len(self._hooks_cache) >= HOOKS_CACHE_MAX:
            self._hooks_cache.clear()
        self._hooks_cache[tenant_id] = (generation, now + HOOKS_TTL_S, hooks)
        return hooks, False

    async def _commit(self, events: tuple[Event, ...] | list[Event], batch: WriteBatch | None = None) -> int:
        tenant_id = events[0].tenant_id
        hooks, cached = await self._hooks(tenant_id)
        # One batch: the caller's writes, the event and its outbox rows commit together
        # (one writer hop on SQLite).
        tx = batch if batch is not None else self.store.batch()
        before = list(tx.statements)
        targets = await self._stage_all(tx, events, hooks)
        try:
            await tx.commit()
        except ForeignKeyViolation:
            if not cached or not targets:
                raise
            # A cached webhook config was deleted (by another process): read them again, once.
            tx.statements[:] = before
            hooks, _ = await self._hooks(tenant_id, fresh=True)
            targets = await self._stage_all(tx, events, hooks)
            await tx.commit()
        return len(targets)

    @classmethod
    async def _stage_all(cls, tx: WriteBatch, events: tuple[Event, ...] | list[Event],
                         hooks: list[dict]) -> list[dict]:
        targets: list[dict] = []
        for event in events:
            targets += await cls._stage(tx, event, hooks)
        return targets

    @staticmethod
    async def _stage(tx: Tables, event: Event, hooks: list[dict]) -> list[dict]:
        targets = [h for h in hooks if matches(event.topic, h["events"])]
        await tx.call_events.insert({
            "id": event.id, "tenant_id": event.tenant_id, "call_id": event.call_id, "seq": event.seq,
            "topic": event.topic, "payload": event.data, "trace_id": event.trace_id, "created_at": event.ts,
        })
        now = now_iso() if targets else None  # for the delivery rows alone
        for hook in targets:
            await tx.webhook_deliveries.insert({
                "id": new_id("dlv"), "tenant_id": event.tenant_id, "webhook_id": hook["id"],
                "event_id": event.id, "topic": event.topic, "payload": event.to_dict(), "status": "pending",
                "attempts": 0, "next_attempt_at": now, "last_status_code": None, "last_error": None,
                "created_at": now, "updated_at": now, "delivered_at": None,
            })
        return targets

    def fan_out(self, event: Event) -> None:
        for sub in list(self._subscriptions):
            if sub.dropped or not sub.wants(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped = True
                self.unsubscribe(sub)
                log.warning("dropping a slow event subscriber", extra={"tenant_id": sub.tenant_id})
                if sub.on_overflow is not None:
                    sub.on_overflow(sub)


async def stage_in(tx: Tables, event: Event) -> int:
    """Write ``event`` and one outbox row per matching active webhook config of its tenant in the
    caller's open transaction (the configs read in it, so they are current); once it commits the
    caller hands the event to ``EventBus.committed``. The number of outbox rows."""
    hooks, _ = await tx.webhook_configs.list(tenant_id=event.tenant_id, equals={"active": True}, limit=200,
                                             count=False)
    return len(await EventBus._stage(tx, event, hooks))
