"""Shared setup of the Twilio tests: a live runtime, a tenant with a number and a twilio credential,
and a local peer standing in for Twilio's REST API."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiDict

from peers.loopback import serve_loopback
from runtime.telephony.twilio.caller import TwilioCaller
from tests.api.support import LiveApi, high_limits, start_live_api, stop_live_api, with_overrides
from tests.twilio.calls_peer import CallsPeer, basic_auth

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "twilio-test-auth-token"
NUMBER = "+15550107000"


@dataclass
class RestPeer:
    """Twilio's REST API for calls on loopback, Basic auth checked: records POSTs to
    /2010-04-01/Accounts/{AC}/Calls/{CA}.json (call updates: transfer, hang-up, cancel; a call the
    runtime placed follows them), and places calls on POST .../Calls.json as Twilio does
    (tests/twilio/calls_peer.py)."""

    account_sid: str = ACCOUNT_SID
    token: str = AUTH_TOKEN
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None
    runner: web.AppRunner | None = None
    url: str = ""
    calls: CallsPeer = field(default_factory=lambda: CallsPeer(ACCOUNT_SID, AUTH_TOKEN))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{ac}/Calls.json", self._create)
        app.router.add_post("/2010-04-01/Accounts/{ac}/Calls/{ca}.json", self._update)
        self.runner, port = await serve_loopback(app)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.calls.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return (request.headers.get("Authorization") == basic_auth(self.account_sid, self.token)
                and request.match_info["ac"] == self.account_sid)

    async def _create(self, request: web.Request) -> web.Response:
        form = MultiDict(await request.post())
        if not self._authorized(request):
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        return await self.calls.create(request, form)  # type: ignore[arg-type]

    async def _update(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        authorized = self._authorized(request)
        self.requests.append({"account": request.match_info["ac"], "call": request.match_info["ca"],
                              "form": form, "authorized": authorized, "at": time.monotonic()})
        if not authorized:
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        if self.fail_with:
            return web.json_response({"code": 20404, "message": "not found"}, status=self.fail_with)
        placed = await self.calls.update(request.match_info["ca"], form)  # type: ignore[arg-type]
        if placed is not None:
            return placed
        return web.json_response({"sid": request.match_info["ca"], "status": form.get("Status", "in-progress")})


@dataclass
class TwilioWorld:
    api: LiveApi
    runner: web.AppRunner
    rest: RestPeer
    tenant_id: str
    key: str
    agent_id: str
    number: str = NUMBER

    def caller(self, token: str = AUTH_TOKEN, account_sid: str = ACCOUNT_SID,
               public_url: str | None = None) -> TwilioCaller:
        return TwilioCaller(self.api.base_url, account_sid, token, public_url=public_url, http=self.api.http)

    async def events(self, call_id: str) -> list[str]:
        rows, _ = await self.api.control.store.call_events.list(tenant_id=self.tenant_id,
                                                                equals={"call_id": call_id}, limit=200)
        return [r["topic"] for r in rows]

    async def calls(self) -> list[dict]:
        rows, _ = await self.api.control.store.voice_calls.list(tenant_id=self.tenant_id, limit=200)
        return rows

    async def final_call(self, call_sid: str, timeout: float = 5.0) -> dict:
        """The call row once it is ended or failed (the socket may close just before the archive)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            row = await self.call_by_sid(call_sid)
            if row is not None and row["status"] in ("ended", "failed"):
                return row
            assert asyncio.get_running_loop().time() < deadline, row
            await asyncio.sleep(0.01)

    async def call_by_sid(self, call_sid: str) -> dict | None:
        rows, _ = await self.api.control.store.voice_calls.list(
            tenant_id=self.tenant_id, equals={"provider_call_id": call_sid}, limit=5)
        return rows[0] if rows else None


async def start_world(settings, *, max_calls: int = 200, server: dict | None = None,
                      tenant_limit: int | None = None) -> TwilioWorld:
    rest = RestPeer()
    await rest.start()
    # local_calls: the bridges are under test here, not the offline models' budget (tests/calls).
    built = with_overrides(settings, limits={**high_limits(), "local_calls": settings.limits.local_calls or 50,
                                             "max_calls": max_calls},
                           telephony={"twilio": {**settings.telephony.twilio.model_dump(), "api_base_url": rest.url}},
                           server={"shutdown_grace_s": 0.2, **(server or {})})
    api, runner = await start_live_api(built)
    tenant_id, key = await api.tenant_with_key("twilio-tenant")
    if tenant_limit is not None:
        status, body, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key,
                                         json={"max_concurrent_calls": tenant_limit})
        assert status == 200, body
    agent_id = await api.front_desk(tenant_id, key, NUMBER, "twilio", {"account_sid": ACCOUNT_SID}, AUTH_TOKEN,
                                    escalation_target="+15550109000")
    return TwilioWorld(api, runner, rest, tenant_id, key, agent_id)


async def stop_world(world: TwilioWorld) -> None:
    await stop_live_api(world.api, world.runner)
    await world.rest.stop()
