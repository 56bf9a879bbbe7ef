"""A live API server on a loopback port for tests, with an admin key and helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from peers.loopback import serve_loopback
from runtime.api.app import create_app
from runtime.config import Settings, build_settings
from runtime.control.plane import ControlPlane
from runtime.control.schemas import ApiKeyCreate
from runtime.web.http_errors import JsonErrorAppRunner


@dataclass
class LiveApi:
    base_url: str
    admin_key: str
    control: ControlPlane
    http: aiohttp.ClientSession
    app: web.Application

    def auth(self, key: str, tenant_id: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"}
        if tenant_id:
            headers["X-Tenant-ID"] = tenant_id
        return headers

    async def call(self, method: str, path: str, key: str | None = None, *, tenant_id: str | None = None,
                   json: Any = None, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key:
            headers.update(self.auth(key, tenant_id))
        async with self.http.request(method, self.base_url + path, json=json, headers=headers, **kwargs) as resp:
            body = await resp.read()
            data: Any = None
            if body and resp.content_type == "application/json":
                data = await resp.json()
            elif body:
                data = body.decode()
            return resp.status, data, resp

    async def tenant_with_key(self, name: str) -> tuple[str, str]:
        status, tenant, _ = await self.call("POST", "/api/v1/tenants", self.admin_key, json={"name": name})
        assert status == 201, tenant
        status, key, _ = await self.call(
            "POST", "/api/v1/auth/api-keys", self.admin_key, json={"tenant_id": tenant["id"], "scope": "runtime"}
        )
        assert status == 201, key
        return tenant["id"], key["key"]

    async def front_desk(self, tenant_id: str, key: str, e164: str, provider: str, fields: dict[str, Any],
                         secret: str, **agent: Any) -> str:
        """A "front-desk" agent answering ``e164`` through ``provider``, with the tenant's
        ``provider`` credential set; the agent's id."""
        status, made, _ = await self.call("POST", "/api/v1/agents", key, json={
            "name": "front-desk", "system_prompt": "be brief", "greeting": "Hello, front desk.", **agent})
        assert status == 201, made
        status, body, _ = await self.call("POST", "/api/v1/numbers", self.admin_key, tenant_id=tenant_id,
                                          json={"e164": e164, "provider": provider, "agent_id": made["id"]})
        assert status == 201, body
        status, body, _ = await self.call("PUT", f"/api/v1/credentials/{provider}", self.admin_key,
                                          tenant_id=tenant_id, json={"fields": fields, "secret": secret})
        assert status == 200, body
        return made["id"]


def high_limits() -> dict[str, Any]:
    unlimited = {"limit": 1_000_000, "window_s": 60}
    classes = ("read", "write", "session", "realtime", "recording", "control", "outbound")
    return {"rate_limits": {"runtime": dict.fromkeys(classes, unlimited)}}


def with_overrides(settings: Settings, **sections: Any) -> Settings:
    data = settings.model_dump(exclude={"base_dir"})
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    return build_settings(data, settings.base_dir)


async def start_live_api(settings: Settings) -> tuple[LiveApi, web.AppRunner]:
    control = await ControlPlane.open(settings)
    _, admin_key = await control.keys.create(ApiKeyCreate(scope="admin"))
    app = create_app(settings, control)
    runner, port = await serve_loopback(app, runner_class=JsonErrorAppRunner)  # as `voicectl serve` serves it
    http = aiohttp.ClientSession()
    return LiveApi(f"http://127.0.0.1:{port}", admin_key, control, http, app), runner


async def stop_live_api(api: LiveApi, runner: web.AppRunner) -> None:
    await api.http.close()
    await runner.cleanup()
    await api.control.close()
