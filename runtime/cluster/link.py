"""One NATS connection per instance (cluster mode): the path every cross-instance message takes.

Events fan out over JetStream, call control and revocations over core NATS request/reply and
subjects. Everything that needs NATS takes the instance's ``ClusterLink`` (app key ``CLUSTER``;
absent outside cluster mode) instead of connecting on its own, so "is NATS up" has one answer:
``ClusterLink.connected``, which /readyz reports and the event sockets follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from runtime.config import NatsSettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = logging.getLogger("voicectl.cluster")

CONNECT_TIMEOUT_S = 3.0
RECONNECT_WAIT_S = 0.5

Listener = Callable[[], Awaitable[None] | None]


class ClusterLink:
    """The instance's NATS client, its JetStream context and its subjects."""

    def __init__(self, settings: NatsSettings, instance_id: str) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._on_lost: list[Listener] = []
        self._on_back: list[Listener] = []
        self._closing = False

    # Subjects: everything under the configured prefix, so one NATS account can hold several clusters
    # (and each test run its own).
    def subject(self, *parts: str) -> str:
        return ".".join((self.settings.subject_prefix, *parts))

    @property
    def stream(self) -> str:
        return self.settings.stream

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("ClusterLink is not connected (call connect() first)")
        return self._client

    @property
    def jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("ClusterLink is not connected (call connect() first)")
        return self._js

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    def on_lost(self, listener: Listener) -> None:
        """Called (once per loss) when the connection to NATS drops."""
        self._on_lost.append(listener)

    def on_back(self, listener: Listener) -> None:
        """Called when NATS is reachable again after a loss."""
        self._on_back.append(listener)

    async def connect(self) -> None:
        import nats

        async def disconnected() -> None:
            if not self._closing:
                log.warning("NATS connection lost", extra={"url": self.settings.url})
                await _notify(self._on_lost)

        async def reconnected() -> None:
            log.warning("NATS connection back", extra={"url": self.settings.url})
            await _notify(self._on_back)

        async def error(exc: BaseException) -> None:  # nats-py logs a traceback unless given its own callback
            log.warning("NATS error", extra={"url": self.settings.url, "error": str(exc) or type(exc).__name__})

        self._client = await nats.connect(
            self.settings.url, name=f"voicectl {self.instance_id}", connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=RECONNECT_WAIT_S, max_reconnect_attempts=-1,  # keep trying for the whole run
            disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
        )
        self._js = self._client.jetstream()

    async def close(self) -> None:
        self._closing = True
        if self._client is not None and not self._client.is_closed:
            try:
                await self._client.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self._client.close()


async def _notify(listeners: list[Listener]) -> None:
    for listener in listeners:
        try:
            result = listener()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("cluster listener failed")


CLUSTER: web.AppKey[ClusterLink] = web.AppKey("cluster")


def cluster_link_ctx(settings: NatsSettings, instance_id: Callable[[], str]):
    """cleanup_ctx: connect at startup (before the call engine), drain at cleanup (after it)."""

    async def ctx(app: web.Application):
        link = ClusterLink(settings, instance_id())
        await link.connect()
        app[CLUSTER] = link
        try:
            yield
        finally:
            await link.close()

    return ctx
