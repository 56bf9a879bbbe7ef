"""Resolving a tenant URL's host to the addresses a connection may use, and connecting to one
(for clients that take a connected socket: the websockets library, the LiveKit check)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from runtime.egress.policy import EgressPolicy, ip_literal, refusal

Resolve = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def permitted_addresses(policy: EgressPolicy, host: str, port: int, resolve: Resolve | None = None) -> list[str]:
    """Where a connection for ``host:port`` may go: the addresses it resolves to that ``policy``
    permits (an IP literal is its own address). EgressRefused when there are none; a name that
    does not resolve raises the resolver's OSError."""
    literal = ip_literal(host)
    addresses = [str(literal)] if literal is not None else await (resolve or system_resolve)(host, port)
    allowed = [a for a in addresses if policy.permits(host, port, a)]
    if not allowed:
        raise refusal(host, port)
    return allowed


def check_literal(policy: EgressPolicy, host: str, port: int) -> None:
    """EgressRefused when ``host`` is an IP literal ``policy`` does not permit (for a client that
    takes only a resolver: it connects to a literal without asking it)."""
    ip = ip_literal(host)
    if ip is not None and not policy.permits(host, port, ip):
        raise refusal(host, port)


async def open_socket(policy: EgressPolicy, host: str, port: int, *, resolve: Resolve | None = None) -> socket.socket:
    """A TCP socket connected to a permitted address of ``host:port`` (the first that answers);
    the caller bounds the time and owns the socket."""
    loop = asyncio.get_running_loop()
    failure: OSError | None = None
    for address in await permitted_addresses(policy, host, port, resolve):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (address, port))
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert failure is not None
    raise failure
