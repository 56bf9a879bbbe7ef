"""The egress guard on the HTTP clients: the address actually connected is checked, names are
resolved by the guard (so a name that resolves to this box is refused), and redirects are checked
again. Names resolve through a resolver the test injects; the peers listen on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import httpx2
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from peers.loopback import serve_loopback
from runtime.egress.aiohttp_client import GuardedResolver, guarded_session
from runtime.egress.httpx_client import guarded_transport
from runtime.egress.policy import EgressPolicy, EgressRefused, refused
from runtime.egress.resolve import check_literal, open_socket, permitted_addresses

STRICT = EgressPolicy()


@dataclass
class Peer:
    port: int
    hits: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _peer(redirect_to: str | None = None) -> tuple[web.AppRunner, Peer]:
    peer = Peer(0)

    async def handle(request: web.Request) -> web.StreamResponse:
        peer.hits.append(request.headers.get("Host", ""))
        if redirect_to is not None:
            raise web.HTTPFound(redirect_to)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, peer.port = await serve_loopback(app)
    return runner, peer


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[Peer]:
    runner, found = await _peer()
    yield found
    await runner.cleanup()


class NamesResolver(AbstractResolver):
    """Resolves the names it is given (a rebinding DNS server, say) and nothing else."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"unknown name {host}")
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
                for address in self.names[host]]

    async def close(self) -> None:
        pass


def names(mapping: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in mapping:
            raise OSError(f"unknown name {host}")
        return mapping[host]
    return resolve


def only(peer: Peer) -> EgressPolicy:
    return EgressPolicy.from_entries([f"127.0.0.1:{peer.port}"])


# aiohttp (webhooks, HTTP tools, Chatterbox, ElevenLabs, LiveKit's API)


async def test_aiohttp_refuses_a_denied_literal_before_connecting(peer):
    async with guarded_session(STRICT) as http:
        for url in (peer.url, f"http://[::ffff:127.0.0.1]:{peer.port}/", f"http://localhost:{peer.port}/"):
            with pytest.raises(aiohttp.ClientError) as caught:
                await http.get(url)
            assert refused(caught.value) and "egress_refused" in str(caught.value.__cause__)
    assert peer.hits == []


async def test_aiohttp_checks_where_a_name_resolves(peer):
    resolver = NamesResolver({"rebind.test": ["127.0.0.1"]})
    async with guarded_session(STRICT, resolver=resolver) as http:
        with pytest.raises(aiohttp.ClientError) as caught:
            await http.get(f"http://rebind.test:{peer.port}/")
        assert refused(caught.value)
    assert peer.hits == []
    # Allowed by address and port: the name connects to the address it was checked at.
    async with guarded_session(only(peer), resolver=resolver) as http, \
            http.get(f"http://rebind.test:{peer.port}/x") as resp:
        assert resp.status == 200
    assert peer.hits == [f"rebind.test:{peer.port}"]


async def test_aiohttp_checks_every_redirect(peer):
    runner, entry = await _peer(redirect_to=f"{peer.url}/inside")
    try:
        async with guarded_session(only(entry)) as http:
            with pytest.raises(aiohttp.ClientError) as caught:
                await http.get(entry.url + "/start")
            assert refused(caught.value)
    finally:
        await runner.cleanup()
    assert entry.hits and peer.hits == []


async def test_the_resolver_for_clients_that_take_only_a_resolver(peer):
    resolver = GuardedResolver(STRICT, NamesResolver({"rebind.test": ["127.0.0.1"], "mixed.test": ["10.1.1.1",
                                                                                                   "8.8.8.8"]}))
    with pytest.raises(EgressRefused):
        await resolver.resolve("rebind.test", peer.port)
    assert [r["host"] for r in await resolver.resolve("mixed.test", 443)] == ["8.8.8.8"]  # the denied one dropped
    with pytest.raises(EgressRefused):
        check_literal(STRICT, "2130706433", 80)
    check_literal(STRICT, "example.com", 80)  # a name: the resolver's to check


# httpx2 (the openai and anthropic SDKs)


async def test_httpx_refuses_denied_literals_and_names(peer):
    transport = guarded_transport(STRICT, resolve=names({"rebind.test": ["127.0.0.1"]}))
    async with httpx2.AsyncClient(transport=transport) as http:
        for url in (peer.url, f"http://rebind.test:{peer.port}/", f"http://[::1]:{peer.port}/"):
            with pytest.raises(httpx2.ConnectError) as caught:
                await http.get(url)
            assert refused(caught.value) and str(caught.value) == "egress_refused"
    assert peer.hits == []


async def test_httpx_connects_to_the_address_it_checked_and_checks_redirects(peer):
    transport = guarded_transport(only(peer), resolve=names({"rebind.test": ["127.0.0.1"]}))
    async with httpx2.AsyncClient(transport=transport) as http:
        resp = await http.get(f"http://rebind.test:{peer.port}/v1")
        assert resp.status_code == 200 and peer.hits == [f"rebind.test:{peer.port}"]
    runner, entry = await _peer(redirect_to=f"http://127.1:{peer.port}/inside")
    try:
        transport = guarded_transport(only(entry))
        async with httpx2.AsyncClient(transport=transport, follow_redirects=True) as http:
            with pytest.raises(httpx2.ConnectError) as caught:
                await http.get(entry.url + "/v1/chat/completions")
            assert refused(caught.value)
    finally:
        await runner.cleanup()
    assert entry.hits and len(peer.hits) == 1


# Connected sockets (websockets for Cartesia; LiveKit's check before its SDK connects)


async def test_sockets_only_to_permitted_addresses(peer):
    with pytest.raises(EgressRefused):
        await open_socket(STRICT, "127.0.0.1", peer.port)
    with pytest.raises(EgressRefused):
        await permitted_addresses(STRICT, "rebind.test", peer.port, names({"rebind.test": ["127.0.0.1", "::1"]}))
    sock = await open_socket(only(peer), "127.0.0.1", peer.port)
    assert sock.getpeername() == ("127.0.0.1", peer.port)
    sock.close()
