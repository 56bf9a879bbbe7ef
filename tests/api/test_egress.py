"""Issue 14, section 2: a tenant's URLs cannot point the runtime at this box or a private network.

Write time: every URL a tenant's data holds (webhooks, HTTP tools, a version's base_url, the URL
fields of credentials) is refused with 422 naming the field when it is an address of this box or a
private network in any spelling, a local or metadata name, another scheme, or carries a password.
Connect time: the address a name resolves to is checked; a refused delivery is egress_refused;
and the webhook test reports delivered or not and an allowed target's status code, nothing that
tells a closed port from Postgres from an HTTP service. ``security.egress.allow`` opens exactly
what it names. Names resolve through a resolver the test puts in aiohttp's place.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp.connector
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from peers.loopback import serve_loopback
from runtime.api.appkeys import BUS
from runtime.control.schemas import WebhookCreate
from runtime.control.webhooks import WebhookService
from runtime.egress.policy import EgressPolicy
from runtime.events.models import CallFailed, Event
from tests.api.support import LiveApi, high_limits, start_live_api, stop_live_api, with_overrides

# The URLs the issue names, and more spellings of the same places.
DENIED = [
    "http://127.0.0.1/hook", "http://[::1]/hook", "http://0.0.0.0/hook", "http://localhost/hook",
    "http://2130706433/hook", "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/",
    "http://localhost:5432/", "http://127.1/", "http://0x7f000001/", "http://0177.0.0.1/",
    "http://[::ffff:127.0.0.1]/", "http://10.0.0.8/", "http://192.168.0.10/", "http://100.64.1.1/",
    "http://224.0.0.251/", "http://metadata/", "http://api.localhost/",
]
# Names that resolve to this box (a rebinding DNS server could answer this at connect time).
LOOPBACK_NAMES = {"pg.rebind.test", "redis.rebind.test", "closed.rebind.test", "http.rebind.test"}


class LoopbackNames(AbstractResolver):
    """The system resolver, except that LOOPBACK_NAMES resolve to 127.0.0.1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._system = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        if host in LOOPBACK_NAMES:
            return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                     "flags": 0}]
        return await self._system.resolve(host, port, family)

    async def close(self) -> None:
        await self._system.close()


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", LoopbackNames)


@asynccontextmanager
async def live_api(settings, allow: list[str]) -> AsyncIterator[LiveApi]:
    live, runner = await start_live_api(with_overrides(
        settings, limits=high_limits(), security={"egress": {"allow": allow}},
        events={"webhooks": {"attempts": 1, "backoff_cap_s": 0.05, "timeout_s": 2.0}}))
    try:
        yield live
    finally:
        await stop_live_api(live, runner)


@asynccontextmanager
async def http_service() -> AsyncIterator[tuple[int, list[str]]]:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, port = await serve_loopback(app)
    try:
        yield port, hits
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused_fields(body: dict[str, Any]) -> list[str]:
    assert body["error"] == "validation_error", body
    return [e["field"] for e in body["details"]["errors"]]


async def test_every_spelling_of_a_denied_url_is_refused_when_saved(settings):
    async with live_api(settings, allow=[]) as live:
        tenant_id, key = await live.tenant_with_key("acme")
        status, hook, _ = await live.call("POST", "/api/v1/webhooks", key, json={"url": "https://hooks.example.com/"})
        assert status == 201, hook
        status, agent, _ = await live.call("POST", "/api/v1/agents", key, json={"name": "a", "system_prompt": "x"})
        assert status == 201, agent
        for url in DENIED:
            status, body, _ = await live.call("POST", "/api/v1/webhooks", key, json={"url": url})
            assert status == 422 and refused_fields(body) == ["url"], (url, body)
            status, body, _ = await live.call("PATCH", f"/api/v1/webhooks/{hook['id']}", key, json={"url": url})
            assert status == 422 and refused_fields(body) == ["url"], (url, body)
            tool = {"name": "book", "description": "books", "url": url}
            status, body, _ = await live.call("POST", "/api/v1/agents", key, json={
                "name": "b", "system_prompt": "x", "http_tools": [tool], "llm": {"base_url": url}})
            assert status == 422 and refused_fields(body) == ["llm.base_url", "http_tools.0.url"], (url, body)
            status, body, _ = await live.call("PATCH", f"/api/v1/agents/{agent['id']}", key,
                                              json={"tts": {"provider": "chatterbox", "base_url": url}})
            assert status == 422 and refused_fields(body) == ["tts.base_url"], (url, body)
            for provider, fields in (("openai", {"base_url": url}), ("chatterbox", {"base_url": url}),
                                     ("n8n", {"url": url, "header_name": "X-Key"}),
                                     ("livekit", {"url": url.replace("http", "ws", 1), "api_key": "k"}),
                                     ("elevenlabs", {"base_url": url.replace("http", "wss", 1)})):
                status, body, _ = await live.call("PUT", f"/api/v1/credentials/{provider}", live.admin_key,
                                                  tenant_id=tenant_id, json={"fields": fields, "secret": "s"})
                field = "fields.url" if "url" in fields else "fields.base_url"
                assert status == 422 and refused_fields(body) == [field], (provider, url, body)
        # An s3 endpoint may be a bare host.
        status, body, _ = await live.call("PUT", "/api/v1/credentials/s3", live.admin_key, tenant_id=tenant_id, json={
            "fields": {"endpoint": "127.0.0.1:9000", "region": "r", "bucket": "b", "access_key_id": "k"},
            "secret": "s"})
        assert status == 422 and refused_fields(body) == ["fields.endpoint"], body
        assert (await live.control.store.credentials.list(tenant_id=tenant_id))[1] == 0


@pytest.mark.parametrize(("field", "url"), [
    ("llm.base_url", "file:///etc/passwd"), ("llm.base_url", "gopher://127.0.0.1:6379/_INFO"),
    ("tts.base_url", "ftp://files.example.com/"), ("url", "https://user:pass@hooks.example.com/"),
    ("http_tools.0.url", "https://token@tools.example.com/book"),
])
async def test_other_schemes_and_passwords_in_urls_are_refused(api, field, url):
    tenant_id, key = await api.tenant_with_key("acme")
    if field == "url":
        status, body, _ = await api.call("POST", "/api/v1/webhooks", key, json={"url": url})
    else:
        modality = field.split(".")[0]
        config = {modality: {"base_url": url}} if modality != "http_tools" else {
            "http_tools": [{"name": "book", "description": "books", "url": url}]}
        status, body, _ = await api.call("POST", "/api/v1/agents", key, json={"name": "a", "system_prompt": "x",
                                                                              **config})
    assert status == 422 and refused_fields(body) == [field], body


async def test_the_allow_list_opens_exactly_what_it_names(settings):
    async with http_service() as (port, hits), live_api(settings, allow=[f"127.0.0.1:{port}", "10.9.0.0/16"]) as live:
        _, key = await live.tenant_with_key("acme")
        for url, expected in ((f"http://127.0.0.1:{port}/hook", 201), (f"http://127.1:{port}/hook", 201),
                              (f"http://127.0.0.1:{port + 1}/hook", 422), ("http://10.9.200.1/hook", 201),
                              ("http://10.10.0.1/hook", 422), (f"http://localhost:{port}/hook", 422)):
            status, body, _ = await live.call("POST", "/api/v1/webhooks", key, json={"url": url})
            assert status == expected, (url, body)
        hooks = (await live.call("GET", "/api/v1/webhooks", key))[1]["items"]
        status, result, _ = await live.call("POST", f"/api/v1/webhooks/{hooks[0]['id']}/test", key)
        assert status == 200 and result["delivered"] and result["status_code"] == 200, result
        assert hits == ["/hook"]


async def test_the_webhook_test_is_no_port_scanner(settings, rebinding_dns):
    """Postgres, Redis, a closed port and an HTTP service on this box, behind names that resolve here
    (or stored before the guard): the test answers the same for all, and nothing is connected."""
    async with http_service() as (port, hits), live_api(settings, allow=[]) as live:
        tenant_id, key = await live.tenant_with_key("acme")
        urls = ["http://pg.rebind.test:5432/", "http://redis.rebind.test:6379/",
                f"http://closed.rebind.test:{closed_port()}/", f"http://http.rebind.test:{port}/hook"]
        for url in urls:  # names: where they point is found when connecting
            status, body, _ = await live.call("POST", "/api/v1/webhooks", key, json={"url": url})
            assert status == 201, body
        # Rows written before the guard (or before the operator took an allow entry out).
        before = WebhookService(live.control.store, live.control.secrets, EgressPolicy.from_entries(["127.0.0.0/8"]))
        for url in ("http://127.0.0.1:5432/", f"http://127.0.0.1:{closed_port()}/", f"http://127.0.0.1:{port}/hook"):
            await before.create(tenant_id, WebhookCreate(url=url))
        hooks = (await live.call("GET", "/api/v1/webhooks", key))[1]["items"]
        assert len(hooks) == 7
        answers = []
        for hook in hooks:
            status, result, _ = await live.call("POST", f"/api/v1/webhooks/{hook['id']}/test", key)
            assert status == 200, result
            answers.append((result["delivered"], result["status_code"], result["error"]))
        assert answers == [(False, None, "egress_refused")] * 7
        assert hits == []


async def test_a_refused_delivery_fails_as_egress_refused(settings, rebinding_dns):
    async with http_service() as (port, hits), live_api(settings, allow=[]) as live:
        tenant_id, key = await live.tenant_with_key("acme")
        status, hook, _ = await live.call("POST", "/api/v1/webhooks", key,
                                          json={"url": f"http://http.rebind.test:{port}/hook"})
        assert status == 201, hook
        await live.app[BUS].publish(Event.of(CallFailed(reason="busy", message="line busy"), tenant_id=tenant_id,
                                             call_id=None, seq=1, trace_id="tr"))
        for _ in range(200):
            items = (await live.call("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", key))[1]["items"]
            if items and items[0]["attempt_log"]:
                break
            await asyncio.sleep(0.02)
        attempt = items[0]["attempt_log"][0]
        assert attempt["error"] == "egress_refused" and attempt["status_code"] is None
        assert items[0]["last_error"] == "egress_refused" and hits == []
        # Refused by the policy: failed at once, not retried for a day (redeliver once it is allowed).
        assert items[0]["status"] == "failed" and len(items[0]["attempt_log"]) == 1, items[0]


async def test_an_allowed_target_reports_only_delivered_and_its_status(settings):
    down = closed_port()
    async with http_service() as (port, hits), live_api(settings, allow=["127.0.0.1/32"]) as live:
        _, key = await live.tenant_with_key("acme")
        answers = []
        for url in (f"http://127.0.0.1:{port}/hook", f"http://127.0.0.1:{down}/", "http://127.0.0.1:5432/"):
            status, hook, _ = await live.call("POST", "/api/v1/webhooks", key, json={"url": url})
            assert status == 201, hook
            status, result, _ = await live.call("POST", f"/api/v1/webhooks/{hook['id']}/test", key)
            answers.append((result["delivered"], result["status_code"], result["error"]))
        # Postgres and a closed port look alike: unreachable, no reason given.
        assert answers == [(True, 200, None), (False, None, "unreachable"), (False, None, "unreachable")]
