"""Property-based fuzzing of the whole HTTP API with schemathesis, against its own OpenAPI document.

The app runs for real: an aiohttp server on a loopback port, served from a background thread
with its own event loop, on a fresh SQLite database (one per module). Rate limits are set far
out of reach: the fuzz is not about them.

Every operation of the document runs in three auth modes (one pytest item per operation and mode):

* ``runtime``   - the tenant's runtime key;
* ``admin``     - an admin key with ``X-Tenant-ID`` naming the tenant;
* ``anonymous`` - no valid key: no Authorization header, a malformed one, an unknown key, a
  revoked key or the key of a disabled tenant (picked from the case's content, so a replay of a
  failing case sends the same one).

Each mode provisions its own tenant: an agent with two versions, a voice profile, a number, a
webhook, two credentials and a call with a transcript and an event, plus spare rows for the
destructive operations. Hooks make the path parameters name those rows part of the time and
mix a valid body into the generated ones, so the fuzz reaches the 2xx and 409 paths, not only
the 404 and 422 ones.

Checks on every response: no 5xx; every 4xx/5xx body is exactly {"error": str, "message": str,
"details": object}; the status code is documented for the operation; the content type is the
documented one; the body conforms to the documented schema.

VOICECTL_FUZZ_EXAMPLES sets the generated examples per operation and auth mode (default 25);
generation is derandomized, so CI runs are reproducible.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runtime.api.app import create_app
from runtime.api.appkeys import ROUTES
from runtime.api.openapi import openapi_document
from runtime.api.routes import all_routes
from runtime.config import Settings, build_settings
from runtime.control.plane import ControlPlane
from runtime.control.schemas import ApiKeyCreate
from runtime.ids import new_id, now_iso
from runtime.secrets import write_master_key

EXAMPLES = int(os.environ.get("VOICECTL_FUZZ_EXAMPLES", "25"))
AUTH_MODES = ("runtime", "admin", "anonymous")
ROUTE_CLASSES = ("read", "write", "session", "realtime", "recording", "control", "outbound")
PATH_PARAM = re.compile(r"{(\w+)}")
# Markers the hooks draw in place of ids (URL-safe: path parameters are sent quoted); the test
# swaps in the ids of its auth mode's rows. REAL rows stay; SPARE rows are there to be deleted.
REAL, SPARE = "fuzz-real-row", "fuzz-spare-row"
_e164 = itertools.count(1000)
MAX_URL = 6000  # bytes of path and query, and of a header value (aiohttp's parser limit is 8190)

# A valid body per operation, mixed into the generated ones (REAL: the mode's row of that field).
VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST /api/v1/tenants": {"name": "fuzz-made-tenant", "timezone": "Europe/Berlin", "metadata": {"k": "v"}},
    "PATCH /api/v1/tenants/{tenant_id}": {"max_concurrent_calls": 5, "recording_enabled": True},
    "POST /api/v1/auth/api-keys": {"scope": "runtime", "tenant_id": REAL, "name": "fuzz-made-key"},
    "POST /api/v1/agents": {
        "name": "fuzz-made-agent", "system_prompt": "p", "voice_profile_id": REAL, "tools": ["end_call"],
        "hours": {"schedule": {"mon": ["09:00-17:30"]}}, "escalation_target": "+1 555 010 0099",
    },
    "PATCH /api/v1/agents/{agent_id}": {"greeting": "changed", "voice_profile_id": REAL, "note": "fuzz"},
    "POST /api/v1/agents/{agent_id}/promote": {"version": 1},
    "POST /api/v1/voice-profiles": {"name": "fuzz-made-voice", "provider": "chatterbox", "speed": 1.5},
    "PATCH /api/v1/voice-profiles/{profile_id}": {"speed": 0.75, "language": "de"},
    "POST /api/v1/numbers": {"e164": "+15557770001", "provider": "webrtc", "agent_id": REAL},
    "PATCH /api/v1/numbers/{number_id}": {"agent_id": REAL, "pinned_version": 1, "label": "main"},
    "PUT /api/v1/credentials/{provider}": {"fields": {"account_sid": "ACfuzz"}, "secret": "fuzz-token"},
    "POST /api/v1/webhooks": {"url": "https://hooks.example.test/made", "events": ["voice.call.*"]},
    "PATCH /api/v1/webhooks/{webhook_id}": {"active": False, "description": "paused by the fuzz"},
    "POST /api/v1/webrtc/tokens": {"agent_id": REAL, "ttl_s": 60},
}


# The live server


class LiveServer:
    """The app on 127.0.0.1:<free port>, served from a private event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="voicectl-fuzz-server", daemon=True)
        self.control: ControlPlane | None = None
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (the control plane's connections live there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        self.control = await ControlPlane.open(self.settings)
        self.runner = web.AppRunner(create_app(self.settings, self.control), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.control is not None:
            await self.control.close()


@dataclass
class Live:
    server: LiveServer
    admin_key: str
    http: requests.Session

    @property
    def url(self) -> str:
        return self.server.base_url

    def request(self, method: str, path: str, key: str, *, tenant_id: str | None = None, expect: int = 200,
                **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if tenant_id is not None:
            headers["X-Tenant-ID"] = tenant_id
        response = self.http.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, self.admin_key, **kwargs)


def _fuzz_settings(tmp: Path) -> Settings:
    unlimited = {"limit": 1_000_000, "window_s": 60}
    built = build_settings({
        "database": {"url": f"sqlite:///{tmp}/fuzz.db"},
        "secrets": {"backend": "cryptfile"},
        "limits": {"rate_limits": {
            "runtime": dict.fromkeys(ROUTE_CLASSES, unlimited),
            "admin": dict.fromkeys(ROUTE_CLASSES, unlimited),
        }},
        # A call the fuzz manages to place is dialled nowhere: a closed loopback port, not Twilio.
        "telephony": {"twilio": {"api_base_url": "http://127.0.0.1:9"}},
    }, tmp)
    write_master_key(built.master_key_path)
    return built


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = LiveServer(_fuzz_settings(tmp_path_factory.mktemp("fuzz")))
    server.start()
    try:
        assert server.control is not None
        _, admin_key = server.run(server.control.keys.create(ApiKeyCreate(scope="admin", name="fuzz")))
        with requests.Session() as http:
            yield Live(server, admin_key, http)
    finally:
        server.stop()


# Each auth mode's tenant and rows


@dataclass
class World:
    tenant_id: str
    runtime_key: str
    real: dict[str, str]
    spare: dict[str, str]
    bad_credentials: list[dict[str, str]]

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """Replace the REAL/SPARE markers the hooks drew with the ids of this world's rows."""
        rows = {REAL: self.real, SPARE: self.spare}
        return {name: rows[value].get(name, value) if isinstance(value, str) and value in rows else value
                for name, value in values.items()}


async def _insert_call(control: ControlPlane, tenant_id: str, agent_id: str, number_id: str) -> str:
    """A finished call with a transcript line and an event, as the runtime plane writes them."""
    store, now, call_id = control.store, now_iso(), new_id("call")
    await store.voice_calls.insert({
        "id": call_id, "tenant_id": tenant_id, "agent_id": agent_id, "agent_version": 1, "number_id": number_id,
        "provider": "twilio", "provider_call_id": "CAfuzz", "direction": "inbound", "from_number": "+15550000001",
        "to_number": "+15550000002", "status": "ended", "end_reason": "hangup", "hangup_by": "caller",
        "started_at": now, "connected_at": now, "ended_at": now, "duration_ms": 1000, "summary": {"outcome": "ok"},
        "latency": {}, "metadata": {}, "trace_id": "tr", "created_at": now, "updated_at": now,
    })
    await store.transcripts.insert({
        "id": new_id("trn"), "tenant_id": tenant_id, "call_id": call_id, "seq": 1, "role": "caller",
        "text": "hello", "start_ms": 0, "end_ms": 900, "interrupted": False, "created_at": now,
    })
    await store.call_events.insert({
        "id": new_id("evt"), "tenant_id": tenant_id, "call_id": call_id, "seq": 1,
        "topic": "voice.call.completed", "payload": {}, "trace_id": "tr", "created_at": now,
    })
    return call_id


def _provision(live: Live, mode: str) -> World:
    def tenant(name: str) -> tuple[str, dict[str, Any]]:
        tenant_id = live.admin("POST", "/api/v1/tenants", json={"name": name}, expect=201)["id"]
        key = live.admin("POST", "/api/v1/auth/api-keys", json={"scope": "runtime", "tenant_id": tenant_id},
                         expect=201)
        return tenant_id, key

    tenant_id, key = tenant(f"fuzz-{mode}")

    def create(path: str, body: dict[str, Any]) -> str:
        return live.admin("POST", path, tenant_id=tenant_id, json=body, expect=201)["id"]

    def number(agent_id: str) -> str:
        return create("/api/v1/numbers", {"e164": f"+1555{next(_e164):07d}", "provider": "twilio",
                                          "agent_id": agent_id})

    real: dict[str, str] = {"tenant_id": tenant_id, "key_id": key["id"], "provider": "twilio", "version": "2"}
    real["profile_id"] = real["voice_profile_id"] = create("/api/v1/voice-profiles", {"name": "voice"})
    real["agent_id"] = create("/api/v1/agents", {
        "name": "agent", "system_prompt": "You are a test agent.", "greeting": "hi",
        "voice_profile_id": real["profile_id"], "tools": ["end_call"],
    })
    # A draft version 2, so the version routes and promote have something to find.
    live.admin("PATCH", f"/api/v1/agents/{real['agent_id']}", tenant_id=tenant_id,
               json={"greeting": "hello again", "note": "v2"})
    real["number_id"] = number(real["agent_id"])  # so deleting the real agent is a 409
    real["webhook_id"] = create("/api/v1/webhooks", {"url": "https://hooks.example.test/real"})
    live.admin("PUT", "/api/v1/credentials/twilio", tenant_id=tenant_id,
               json={"fields": {"account_sid": "ACfuzz"}, "secret": "fuzz-token"})
    live.admin("PUT", "/api/v1/credentials/openai", tenant_id=tenant_id, json={"fields": {}})
    assert live.server.control is not None
    real["call_id"] = live.server.run(
        _insert_call(live.server.control, tenant_id, real["agent_id"], real["number_id"]))

    spare_tenant, spare_key = tenant(f"fuzz-{mode}-spare")
    spare = {
        "tenant_id": spare_tenant, "key_id": spare_key["id"], "provider": "openai",
        "profile_id": create("/api/v1/voice-profiles", {"name": "spare-voice"}),
        "agent_id": create("/api/v1/agents", {"name": "spare-agent", "system_prompt": "p"}),  # no numbers
        "number_id": number(real["agent_id"]),
        "webhook_id": create("/api/v1/webhooks", {"url": "https://hooks.example.test/spare"}),
    }

    _, revoked = tenant(f"fuzz-{mode}-revoked")
    live.admin("DELETE", f"/api/v1/auth/api-keys/{revoked['id']}")
    disabled_tenant, disabled = tenant(f"fuzz-{mode}-disabled")
    live.admin("PATCH", f"/api/v1/tenants/{disabled_tenant}", json={"status": "disabled"})
    # The runtime key works, so the runtime mode fuzzes past authentication.
    live.request("GET", "/api/v1/agents", key["key"])

    return World(
        tenant_id=tenant_id,
        runtime_key=key["key"],
        real=real,
        spare=spare,
        bad_credentials=[
            {},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "Bearer "},
            {"Authorization": "Bearer vk_rt_" + "x" * 40},
            {"Authorization": f"Bearer {revoked['key']}"},
            {"Authorization": f"Bearer {disabled['key']}"},
        ],
    )


@pytest.fixture(scope="module", params=AUTH_MODES)
def auth_mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def world(live: Live, auth_mode: str) -> World:
    return _provision(live, auth_mode)


# The schema: the document the router serves (test_served_document_is_the_fuzzed_one checks it).


def _document() -> dict[str, Any]:
    app = web.Application()
    app[ROUTES] = all_routes()
    return openapi_document(app)


schema = schemathesis.openapi.from_dict(_document(), config=schemathesis.Config.from_dict({
    "generation": {
        "mode": "all",  # valid and invalid inputs
        # The auth modes set Authorization; schemathesis does not generate (or drop) it.
        "with-security-parameters": False,
    },
    # The coverage phase enumerates boundary cases without a cap; the fuzz is bounded by EXAMPLES.
    "phases": {"coverage": {"enabled": False}},
}))


def _label(operation: schemathesis.APIOperation) -> str:
    return f"{operation.method.upper()} {operation.path}"


@schema.hook("before_generate_path_parameters")
def real_rows_sometimes(ctx: schemathesis.HookContext, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Path parameters are generated, or name the mode's real rows (deletes: its spare rows)."""
    operation = ctx.operation
    names = PATH_PARAM.findall(operation.path)
    if not names:
        return strategy
    if operation.method.upper() != "DELETE":
        markers = [REAL]
    elif operation.path == "/api/v1/agents/{agent_id}":
        markers = [REAL, SPARE]  # the real agent answers a number: 409; the spare one: 204
    else:
        markers = [SPARE]  # the real rows stay for the operations after this one
    return st.one_of(strategy, st.sampled_from([dict.fromkeys(names, marker) for marker in markers]))


@schema.hook("filter_case")
def fits_the_http_parser(ctx: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """aiohttp's HTTP parser answers a request line or header field over 8190 bytes itself, with a
    text/plain 400, before any route or middleware runs: outside the API's contract, so the fuzz
    stays well below that (the generator builds such URLs from long lists of query values)."""
    url = len(case.formatted_path) + len(urlencode(case.query or {}, doseq=True))
    return url < MAX_URL and all(len(str(value)) < MAX_URL for value in (case.headers or {}).values())


@schema.hook("before_generate_body")
def valid_body_sometimes(ctx: schemathesis.HookContext, strategy: st.SearchStrategy) -> st.SearchStrategy:
    body = VALID_BODIES.get(_label(ctx.operation))
    return strategy if body is None else st.one_of(strategy, st.just(body))


# Checks


def error_shape(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx/5xx body is exactly {"error": str, "message": str, "details": object}."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.text[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error", "message", "details"}, (
        f"{response.status_code} body is not exactly {{error, message, details}}: {body!r}"
    )
    assert isinstance(body["error"], str) and body["error"], f"error is not a non-empty string: {body!r}"
    assert isinstance(body["message"], str) and body["message"], f"message is not a non-empty string: {body!r}"
    assert isinstance(body["details"], dict), f"details is not an object: {body!r}"


CHECKS = [not_a_server_error, error_shape, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _credentials(mode: str, world: World, live: Live, case: schemathesis.Case) -> dict[str, str]:
    if mode == "runtime":
        return {"Authorization": f"Bearer {world.runtime_key}"}
    if mode == "admin":
        return {"Authorization": f"Bearer {live.admin_key}", "X-Tenant-ID": world.tenant_id}
    # A bad credential chosen by the generated input (before the ids go in), so runs and replays agree.
    body = None if isinstance(case.body, NotSet) else case.body
    digest = zlib.crc32(repr((case.path, case.path_parameters, case.query, body)).encode())
    return world.bad_credentials[digest % len(world.bad_credentials)]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_fuzz(case: schemathesis.Case, live: Live, world: World, auth_mode: str) -> None:
    headers = _credentials(auth_mode, world, live, case)
    if case.path_parameters:
        case.path_parameters = world.resolve(case.path_parameters)
    if isinstance(case.body, dict):
        case.body = world.resolve(case.body)
    case.call_and_validate(base_url=live.url, session=live.http, headers=headers, checks=CHECKS, timeout=30)


def test_served_document_is_the_fuzzed_one(live: Live) -> None:
    response = live.http.get(live.url + "/api/v1/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.json() == _document()
