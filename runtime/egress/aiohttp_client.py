"""The egress guard on aiohttp: sessions and resolvers for connections made for tenant data.

``guarded_session`` is an ``aiohttp.ClientSession`` whose connector checks every address it is
about to connect to (``EgressPolicy.permits``) after resolving the host, so the address checked
is the address connected (no DNS rebinding) and every redirect hop, being a new connection, is
checked again. The check sits in ``TCPConnector._resolve_host`` because aiohttp hands an IP
literal straight to the socket without asking the resolver. ``GuardedResolver`` is the same
check for clients that take only a resolver (aiobotocore); those check a literal host
themselves (``runtime.egress.resolve.check_literal``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from runtime.egress.policy import EgressPolicy, refusal


def _permitted(policy: EgressPolicy, host: str, port: int, hosts: list[ResolveResult]) -> list[ResolveResult]:
    allowed = [h for h in hosts if policy.permits(host, port, h["host"])]
    if not allowed:
        raise refusal(host, port)
    return allowed


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that connects only where ``policy`` permits."""

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.egress = policy

    async def _resolve_host(self, host: str, port: int, traces: Sequence[Any] | None = None) -> list[ResolveResult]:
        return _permitted(self.egress, host, port, await super()._resolve_host(host, port, traces=traces))


class GuardedResolver(AbstractResolver):
    """A resolver whose answers hold only the addresses ``policy`` permits (EgressRefused when none)."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.egress = policy
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        return _permitted(self.egress, host, port, await self._inner.resolve(host, port, family))

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def guarded_session(policy: EgressPolicy, *, resolver: AbstractResolver | None = None, limit: int = 100,
                    **kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession for tenant URLs (``resolver``: tests make names resolve where they like).
    No proxies from the environment (``trust_env`` stays off): a proxy would connect for us."""
    return aiohttp.ClientSession(connector=GuardedConnector(policy, resolver=resolver, limit=limit), **kwargs)


def session_for(policy: EgressPolicy | None, **kwargs: Any) -> aiohttp.ClientSession:
    """A guarded session for a tenant's URL (``policy`` given), a plain one for the operator's."""
    return guarded_session(policy, **kwargs) if policy is not None else aiohttp.ClientSession(**kwargs)
