"""The egress guard on httpx2 (the HTTP client of the openai and anthropic SDKs).

``guarded_transport`` is an ``httpx2.AsyncHTTPTransport`` whose connection pool connects through
``GuardedBackend``: the host is resolved here, each address checked (``EgressPolicy.permits``),
and the connection made to the checked address itself (TLS still verifies the URL's host name),
so DNS rebinding cannot pass and every redirect hop, a new connection, is checked again. Given
as ``transport=``, it also keeps the client from using proxies from the environment.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2  # the connection pool under httpx2
import httpx2

from runtime.egress.policy import EgressPolicy
from runtime.egress.resolve import Resolve, permitted_addresses


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to addresses ``policy`` permits; the rest is the anyio backend's."""

    def __init__(self, policy: EgressPolicy, resolve: Resolve | None = None) -> None:
        self.egress = policy
        self._resolve = resolve
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await permitted_addresses(self.egress, host, port, self._resolve)
        except OSError as exc:  # EgressRefused, or a name that does not resolve
            raise httpcore2.ConnectError(str(exc)) from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not tenant destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx2's default TLS context, made once: making one reads the CA bundle (tens of ms with
    the event loop blocked), and clients are made per call."""
    return httpx2.create_ssl_context()


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport with a pool on ``GuardedBackend`` (httpx2 takes no backend argument, so
    the pool it made is replaced by the same pool on the guarded backend)."""

    def __init__(self, policy: EgressPolicy, *, resolve: Resolve | None = None,
                 limits: httpx2.Limits = httpx2.Limits(max_connections=100, max_keepalive_connections=20)) -> None:
        context = _tls_context()
        super().__init__(verify=context, trust_env=False, limits=limits)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolve),
        )


def guarded_transport(policy: EgressPolicy, *, resolve: Resolve | None = None) -> GuardedTransport:
    """A transport for an SDK client pointed at a tenant's URL (``resolve``: tests make names
    resolve where they like)."""
    return GuardedTransport(policy, resolve=resolve)
