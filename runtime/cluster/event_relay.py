"""Events across the instances of a cluster, over NATS JetStream (the bus's ``Relay``).

Out: each committed event goes to ``<prefix>.ev.<tenant>.<topic>``, a subject of the JetStream
stream ``events.nats.stream`` (kept ``max_age_s``), with ``Nats-Msg-Id`` = the event id so the
stream stores a re-sent event once. One publisher task per instance sends them in commit order
over the instance's one connection, and NATS keeps one connection's order for every subscriber:
a call's events (made by the instance holding the call) arrive everywhere in per-call order.
The call path only puts the event on a bounded queue; no JetStream ack is awaited (the event is
already committed, and the ack would add a round trip per event to nothing a subscriber sees).

In: one core subscription per instance on ``<prefix>.ev.>`` feeds ``EventBus.fan_out``. An
event made here was already fanned out here at commit (no network hop on the local path, and a
call's own WebRTC page keeps its events while NATS is away), so its echo is skipped by the
origin header: every subscriber gets each event once.

While NATS is lost, events are still committed (and webhooks, from the outbox, still delivered),
but not sent: they are counted as dropped rather than queued without bound. The event sockets
here are closed with 1013 (runtime.api.event_socket.close_for_retry); clients reconnect and
read what they missed from the stored events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CollectorRegistry, Counter

from runtime.cluster.interest import ClusterInterest
from runtime.cluster.link import ClusterLink
from runtime.config import ConfigError
from runtime.events.bus import EventBus
from runtime.events.models import Event

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

log = logging.getLogger("voicectl.cluster")

ORIGIN_HEADER = "Voicectl-Instance"
DUPLICATE_WINDOW_S = 120.0  # JetStream drops a second copy of an event id sent within this
QUEUE_SIZE = 10_000  # events waiting for the publisher; past it they are dropped (counted)
STOP_GRACE_S = 2.0  # at shutdown, how long queued events may take to go out
STREAM_NAME_IN_USE = 10058  # JetStream: the stream exists with another configuration


async def ensure_stream(link: ClusterLink, max_age_s: int) -> None:
    """Create the events stream, or bring an existing one to these settings; a peer creating it at
    the same moment is fine (same configuration: accepted; the loser of a race updates)."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig
    from nats.js.errors import APIError

    subjects = [link.subject("ev", ">")]
    config = StreamConfig(name=link.stream, subjects=subjects, storage=StorageType.FILE,
                          max_age=float(max_age_s), duplicate_window=min(DUPLICATE_WINDOW_S, float(max_age_s)),
                          discard=DiscardPolicy.OLD)
    try:
        try:
            await link.jetstream.add_stream(config)
        except APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            await link.jetstream.update_stream(config)
    except APIError as exc:  # e.g. another stream already takes these subjects: the operator must choose
        raise ConfigError(f"NATS refused the JetStream stream {link.stream} for {subjects[0]} "
                          f"({exc.description or exc}); check events.nats.stream and events.nats.subject_prefix"
                          ) from None


class EventRelay:
    def __init__(self, link: ClusterLink, bus: EventBus, max_age_s: int, registry: CollectorRegistry) -> None:
        self.link = link
        self.bus = bus
        self.max_age_s = max_age_s
        self.interest = ClusterInterest(link, bus.interests)
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._publisher: asyncio.Task[None] | None = None
        self._sub: NatsSubscription | None = None
        self.sent = Counter("voicectl_cluster_events_sent", "Events sent to the other instances over NATS",
                            registry=registry)
        self.received = Counter("voicectl_cluster_events_received",
                                "Events of other instances handed to this instance's subscribers", registry=registry)
        self.dropped = Counter("voicectl_cluster_events_dropped",
                               "Committed events not sent to the other instances (nats_lost, queue_full, error)",
                               ("reason",), registry=registry)

    async def start(self) -> None:
        await ensure_stream(self.link, self.max_age_s)
        self._sub = await self.link.client.subscribe(self.link.subject("ev", ">"), cb=self._received,
                                                     pending_msgs_limit=QUEUE_SIZE * 10)
        self._publisher = asyncio.create_task(self._publish())
        await self.interest.start()
        self.link.on_back(self.interest.back)
        self.bus.relay = self

    async def stop(self) -> None:
        """After the calls are gone: let queued events go out (briefly), then leave."""
        self.bus.relay = None
        if self._publisher is not None:
            if self.link.connected:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained(), STOP_GRACE_S)
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        await self.interest.stop()
        if self._sub is not None and self.link.connected:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _drained(self) -> None:
        while not self._queue.empty():
            await asyncio.sleep(0.01)

    # Relay

    def send(self, events: Sequence[Event]) -> None:
        if not self.link.connected:
            self.dropped.labels("nats_lost").inc(len(events))
            return
        for event in events:
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped.labels("queue_full").inc()

    def wants(self, tenant_id: str, topic: str, call_id: str | None) -> bool:
        return self.interest.wants(tenant_id, topic, call_id)

    def interest_changed(self) -> None:
        self.interest.changed()

    # The two directions

    async def _publish(self) -> None:
        from nats.errors import Error as NatsError

        queue, client, origin = self._queue, self.link.client, self.link.instance_id
        while True:
            event = await queue.get()
            try:
                await client.publish(self.link.subject("ev", event.tenant_id, event.topic),
                                     orjson.dumps(event.to_dict()),
                                     headers={"Nats-Msg-Id": event.id, ORIGIN_HEADER: origin})
                self.sent.inc()
            except (NatsError, OSError) as exc:  # lost meanwhile: the event is committed, subscribers reconnect
                self.dropped.labels("nats_lost" if not self.link.connected else "error").inc()
                log.debug("could not send an event to NATS", extra={"event_id": event.id, "error": str(exc)})

    async def _received(self, msg: Msg) -> None:
        if msg.headers is not None and msg.headers.get(ORIGIN_HEADER) == self.link.instance_id:
            return  # ours: fanned out here at commit
        try:
            event = Event(**orjson.loads(msg.data))
        except (ValueError, TypeError):
            log.warning("ignoring a malformed event message", extra={"subject": msg.subject})
            return
        self.received.inc()
        self.bus.fan_out(event)
