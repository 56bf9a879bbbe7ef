"""Which destinations a tenant's URL may reach: checked when the URL is stored and when it is used.

Every URL a tenant's data holds (webhooks, HTTP tools, a version's ``base_url``, the URL fields of
credentials) is checked twice:

- when it is stored (``EgressPolicy.check_url``, a 422 for the writer): an allowed scheme, no
  user name or password, and no host that is an address of this box or of a private network in
  any spelling the system resolver takes (dotted, decimal, hex, octal, short ``127.1``, IPv6,
  IPv4 inside IPv6), nor a name that always means this box or a cloud metadata service;
- when a connection is made (``EgressPolicy.permits``, through the client modules of this
  package): the address actually connected, after the name was resolved. A name that resolves
  (or re-resolves) to a denied address is refused, and a redirect is a new connection, checked
  again. A refused connection fails as ``egress_refused`` (``EgressRefused``), saying nothing
  about the target.

``security.egress.allow`` opens exceptions (``EgressPolicy.from_entries``): networks in CIDR
notation (any port) and ``host:port`` pairs (that name or address on that port). URLs in the
operator's config file are not checked: the operator owns the box.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger("voicectl.egress")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED = "egress_refused"
WEB = ("http", "https")
WEB_AND_SOCKETS = ("http", "https", "ws", "wss")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# What a tenant URL may not reach, with the word the write-time error uses.
_DENIED: tuple[tuple[Network, str], ...] = tuple((ipaddress.ip_network(net), label) for net, label in (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),  # also some clouds' metadata service (100.100.100.200)
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),  # 169.254.169.254
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # and the broadcast address
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private"),  # unique local; AWS's IPv6 metadata service is fd00:ec2::254
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
))
# IPv6 ranges whose last 32 bits are an IPv4 address a packet can end up at (mapped, compatible,
# NAT64): that address is checked too, as are 6to4's and Teredo's (ipaddress knows those).
_CARRIES_V4 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "64:ff9b::/96", "64:ff9b:1::/48"))
# Names that always mean this box or a cloud metadata service, whatever a resolver says.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata",
                          "metadata.google.internal"})
# What inet_aton (and so getaddrinfo) may read as an IPv4 number: digits, hex and dots.
_NUMERIC = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")


class UrlRefused(ValueError):
    """A URL that may not be stored; the message is for whoever wrote it."""


class EgressRefused(ConnectionRefusedError):
    """A connection the guard did not make. An OSError, so HTTP clients report it as a failed
    connection; its text is only ``egress_refused``: nothing about the target."""

    def __init__(self) -> None:
        super().__init__(REFUSED)

    def __str__(self) -> str:
        return REFUSED


def refusal(host: str, port: int) -> EgressRefused:
    """The error for a connection to ``host:port`` that is not made; the operator's log names the
    target, the error does not."""
    log.warning("egress refused: a tenant URL points at a denied address", extra={"host": host, "port": port})
    return EgressRefused()


def refused(exc: BaseException | None) -> bool:
    """``exc`` is, or was raised from, an ``EgressRefused`` (clients wrap it in their own errors)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, EgressRefused):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the system resolver reads as a number (``127.1``,
    ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``...); None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        text = text.split("%", 1)[0]  # an IPv6 zone: fe80::1%eth0
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    text = text.removesuffix(".")
    if not text or not _NUMERIC.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def canonical_host(host: str) -> str:
    """A host as the policy compares it: an address in its one standard spelling, a name in lower
    case without the trailing dot."""
    ip = ip_literal(host)
    if ip is not None:
        return str(ip)
    return host.strip().strip("[]").lower().removesuffix(".")


def _carried_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    carried = [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)] if any(ip in net for net in _CARRIES_V4) else []
    if ip.sixtofour is not None:
        carried.append(ip.sixtofour)
    if ip.teredo is not None:
        carried.extend(ip.teredo)
    return carried


def _addresses(ip: IPAddress) -> list[IPAddress]:
    """``ip`` and any IPv4 address it carries."""
    return [ip, *_carried_v4(ip)] if isinstance(ip, ipaddress.IPv6Address) else [ip]


def denied_range(ip: IPAddress) -> str | None:
    """What kind of denied address ``ip`` is (``loopback``, ``private``...), None for a public one."""
    for address in _addresses(ip):
        for network, label in _DENIED:
            if address.version == network.version and address in network:
                return label
    return None


def denied_name(host: str) -> bool:
    name = canonical_host(host)
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def parse_allow_entry(text: str) -> Network | tuple[str, int]:
    """One ``security.egress.allow`` entry: a network (``10.0.0.0/8``; a bare address is a /32 or
    /128) or ``host:port`` (``minio.internal:9000``, ``127.0.0.1:8080``, ``[::1]:8080``)."""
    value = str(text).strip()
    expected = "expected a network such as 10.0.0.0/8 or host:port such as minio.internal:9000"
    if "/" in value:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network; {expected}") from None
    try:
        return ipaddress.ip_network(value)  # a bare address
    except ValueError:
        pass
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: {expected}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{value!r}: {expected}")
    if host.startswith("["):
        if ip_literal(host) is None:
            raise ValueError(f"{value!r}: {host} is not an IPv6 address")
    elif ip_literal(host) is None and not _HOST_NAME.fullmatch(host.lower()):
        raise ValueError(f"{value!r}: {host!r} is not a host name")
    return canonical_host(host), int(port)


def format_allow_entry(entry: Network | tuple[str, int]) -> str:
    if isinstance(entry, tuple):
        host, port = entry
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(entry)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: its scheme, host (as written, lower case) and port."""

    scheme: str
    host: str
    port: int


def url_target(url: str, schemes: Iterable[str] = WEB) -> Target:
    """The form of a tenant URL, whatever the policy: an allowed scheme, a host, a valid port, no
    user name or password. Raises UrlRefused."""
    allowed = tuple(schemes)
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        raise UrlRefused("the URL contains spaces, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        shown = f"{scheme!r}" if scheme else "none"
        raise UrlRefused(f"URL scheme {shown} is not allowed; expected {', '.join(allowed[:-1])} or {allowed[-1]}")
    if "@" in parts.netloc:
        raise UrlRefused("the URL carries a user name or password: put secrets in a credential, not in the URL")
    host = parts.hostname or ""
    if not host:
        raise UrlRefused("the URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise UrlRefused("the URL's port is not a number from 1 to 65535") from None
    if port == 0:
        raise UrlRefused("the URL's port is not a number from 1 to 65535")
    if "[" in parts.netloc:
        if "%" in host or ip_literal(host) is None:
            raise UrlRefused(f"{host!r} is not an IPv6 address")
    else:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")  # what clients send (NFKC: ⓛⓞⓒⓐⓛⓗⓞⓢⓣ is localhost)
            except UnicodeError:
                raise UrlRefused(f"{host!r} is not a valid host name") from None
        if not _HOST_NAME.fullmatch(host):
            raise UrlRefused(f"{host!r} is not a valid host name")
    return Target(scheme, host, port or DEFAULT_PORTS.get(scheme, 443))


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The denied ranges and names, less the exceptions of ``security.egress.allow``."""

    networks: tuple[Network, ...] = ()
    endpoints: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EgressPolicy:
        parsed = [parse_allow_entry(e) for e in entries]
        return cls(tuple(e for e in parsed if not isinstance(e, tuple)),
                   frozenset(e for e in parsed if isinstance(e, tuple)))

    def _listed(self, host: str, port: int) -> bool:
        return bool(self.endpoints) and (canonical_host(host), port) in self.endpoints

    def _in_allowed_network(self, ip: IPAddress) -> bool:
        return any(address.version == net.version and address in net
                   for address in _addresses(ip) for net in self.networks)

    def permits(self, host: str, port: int, address: str | IPAddress) -> bool:
        """May a connection for ``host:port`` (as the URL names it) go to ``address`` (what it
        resolved to; the address itself for an IP literal)?"""
        if self._listed(host, port):
            return True
        if denied_name(host):
            return False
        ip = address if not isinstance(address, str) else ip_literal(address)
        if ip is None:  # not an address: nothing to connect to
            return False
        if self._listed(str(ip), port):  # an address:port entry, whatever name led there
            return True
        return self._in_allowed_network(ip) or denied_range(ip) is None

    def problem(self, host: str, port: int) -> str | None:
        """Why a URL naming ``host:port`` may not be stored, or None. A name other than the local
        and metadata ones is fine here: where it resolves is checked when connecting."""
        if self._listed(host, port):
            return None
        if denied_name(host):
            return f"{host} always means this box or a cloud metadata service"
        ip = ip_literal(host)
        if ip is None or self._in_allowed_network(ip):
            return None
        kind = denied_range(ip)
        return None if kind is None else f"{host} is a {kind} address ({ip})"

    def check_url(self, url: str, schemes: Iterable[str] = WEB) -> str:
        """``url`` when it may be stored; UrlRefused (its message for the writer) otherwise."""
        target = url_target(url, schemes)
        reason = self.problem(target.host, target.port)
        if reason is not None:
            raise UrlRefused(f"{reason}; this runtime does not send requests to its own or private networks "
                             "(the operator can allow a destination with security.egress.allow)")
        return url
