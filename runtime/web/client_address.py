"""The client's address of a request: the peer, or behind a trusted reverse proxy the address
that proxy saw (X-Forwarded-For read from the right, past every trusted hop).

Only hops added by trusted proxies are believed: anything left of the first untrusted hop was
written by the client and may be forged. With no trusted proxies (the default) the header is
never read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: compare them as IPv4.
    return getattr(address, "ipv4_mapped", None) or address


class ClientAddresses:
    """``ClientAddresses(settings.server.trusted_proxies).of(request)``."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.trusted: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, request: web.Request) -> str:
        return self.resolve(request.remote or "", request.headers.getall("X-Forwarded-For", ()))

    def resolve(self, peer: str, forwarded_for: Iterable[str] = ()) -> str:
        """The client address given the TCP peer and the X-Forwarded-For header values, in order."""
        address = _parse(peer) if self.trusted else None
        if address is None or not self._trusted(address):
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            parsed = _parse(hop)
            if parsed is None:  # a trusted proxy wrote something unreadable: stay with the last sure hop
                break
            address = parsed
            if not self._trusted(parsed):
                break
        return address.compressed
