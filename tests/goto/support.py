"""Shared setup of the GoTo tests: a local peer standing in for GoTo's API (OAuth token endpoint,
notification channels with their OPTIONS URL validation, call-events subscriptions, web calls) as
documented in PROTOCOLS.md, and a live runtime with a tenant whose channel is registered through it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from peers.loopback import serve_loopback
from tests.api.support import LiveApi, high_limits, start_live_api, stop_live_api, with_overrides

CLIENT_ID = "goto-client-id"
ACCOUNT_KEY = "1234567890123456789"
REFRESH_TOKEN = "goto-refresh-token-one"
NUMBER = "+15550108000"
CALLER = "+15550001111"


@dataclass
class GotoPeer:
    """GoTo's API on a loopback port. Bearer tokens must be ones it issued; a webhook URL is
    validated with OPTIONS (200 required) before a channel is created."""

    client_id: str = CLIENT_ID
    refresh_token: str = REFRESH_TOKEN
    account_key: str = ACCOUNT_KEY
    expires_in: int = 3600
    rotate_to: str | None = None  # issue this new refresh token on the next refresh
    refuse: dict[str, tuple[int, Any]] = field(default_factory=dict)  # step -> (status, body)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    validations: list[int] = field(default_factory=list)  # status of each OPTIONS validation
    webhook_urls: list[str] = field(default_factory=list)
    on_answer: Callable[[str, str], Awaitable[None]] | None = None
    issued: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    runner: web.AppRunner | None = None
    url: str = ""

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_post("/notification-channel/v1/channels/{nickname}", self._channel)
        app.router.add_post("/call-events/v1/subscriptions", self._subscribe)
        app.router.add_post("/web-calls/v1/calls/{id}/{action}", self._web_call)
        app.router.add_delete("/web-calls/v1/calls/{id}", self._hangup)
        self.runner, port = await serve_loopback(app)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def calls_to(self, path_part: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if path_part in r["path"]]

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append(form)
        if "token" in self.refuse:
            status, body = self.refuse["token"]
            return web.json_response(body, status=status)
        if (form.get("grant_type") != "refresh_token" or form.get("client_id") != self.client_id
                or form.get("refresh_token") != self.refresh_token):
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid refresh token"},
                                     status=400)
        access = f"access-{uuid.uuid4().hex}"
        self.issued.add(access)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in,
                                "scope": "call-events.v1.notifications.manage webrtc.v1.write",
                                "principal": "admin@example.com"}
        if self.rotate_to:
            body["refresh_token"] = self.refresh_token = self.rotate_to
            self.rotate_to = None
        return web.json_response(body)

    async def _authorized(self, request: web.Request, step: str) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        body = await request.json() if request.can_read_body else None
        self.requests.append({"method": request.method, "path": request.raw_path, "json": body,
                              "authorized": token in self.issued and token not in self.revoked})
        if token not in self.issued or token in self.revoked:
            return web.json_response({"errorCode": "AUTHN_INVALID_TOKEN", "message": "invalid token"}, status=401)
        if step in self.refuse:
            status, payload = self.refuse[step]
            return web.json_response(payload, status=status)
        return None

    async def _channel(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "channel")
        if refused is not None:
            return refused
        body = self.requests[-1]["json"] or {}
        url = body.get("webhookChannelData", {}).get("webhook", {}).get("url")
        if body.get("channelType") != "Webhook" or not url:
            return web.json_response({"errorCode": "INVALID_BODY"}, status=400)
        async with aiohttp.ClientSession() as http, http.options(url) as resp:
            self.validations.append(resp.status)
            if resp.status != 200:
                return web.json_response({"errorCode": "WEBHOOK_VALIDATION_FAILED",
                                          "message": f"OPTIONS {resp.status}"}, status=400)
        self.webhook_urls.append(url)
        nickname = request.match_info["nickname"]
        return web.json_response({
            "channelId": f"Webhook.{uuid.uuid4()}", "channelNickname": nickname,
            "webhookChannelData": {"webhook": {"url": url}, "channelType": "Webhook"},
            "channelLifetime": 2147483647, "doNotDisturbAware": False,
        }, status=201)

    async def _subscribe(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "subscription")
        if refused is not None:
            return refused
        body = self.requests[-1]["json"] or {}
        accounts = [{"id": a.get("id"), "status": 200 if a.get("id") == self.account_key else 403,
                     "message": "Success" if a.get("id") == self.account_key else "Forbidden"}
                    for a in body.get("accountKeys", [])]
        return web.json_response({"accountKeys": accounts}, status=207)

    async def _web_call(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        refused = await self._authorized(request, action)
        if refused is not None:
            return refused
        if action == "answer" and self.on_answer is not None:
            await self.on_answer(request.match_info["id"], (self.requests[-1]["json"] or {}).get("sdp", ""))
        return web.Response(status=204)

    async def _hangup(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "hangup")
        return refused if refused is not None else web.Response(status=204)


def call_event(conversation_id: str, state: str, sequence: int, *, dialled: str | None = NUMBER,
               caller: str | None = CALLER, direction: str = "INBOUND", caller_status: str = "RINGING",
               wrapped: bool = False) -> dict[str, Any]:
    """A call-events notification as PROTOCOLS.md gives it (plus our assumed number fields)."""
    participants = []
    if caller is not None:
        participants.append({"id": "p1", "type": {"value": "PHONE_NUMBER", "number": caller},
                             "status": {"value": caller_status}})
    if dialled is not None:
        participants.append({"id": "p2", "type": {"value": "LINE", "number": dialled, "lineId": "line-1"},
                             "status": {"value": "RINGING" if state == "STARTING" else "ACTIVE"}})
    content = {
        "metadata": {"conversationSpaceId": conversation_id, "direction": direction,
                     "callCreated": "2026-01-16T10:00:00.000Z", "accountKey": ACCOUNT_KEY},
        "state": {"id": f"state-{sequence}", "type": state, "sequenceNumber": sequence,
                  "timestamp": "2026-01-16T10:00:01.000Z", "participants": participants},
    }
    return {"data": {"content": content}} if wrapped else {"content": content}


def web_call_offer(conversation_id: str, call_id: str, sdp: str) -> dict[str, Any]:
    return {"content": {"callId": call_id, "conversationSpaceId": conversation_id, "sdp": sdp}}


@dataclass
class GotoWorld:
    api: LiveApi
    runner: web.AppRunner
    peer: GotoPeer
    tenant_id: str
    key: str
    agent_id: str
    webhook_path: str
    number: str = NUMBER

    async def deliver(self, payload: Any, *, path: str | None = None, raw: bytes | None = None,
                      method: str = "POST") -> tuple[int, Any]:
        data = raw if raw is not None else None
        status, body, _ = await self.api.call(method, path or self.webhook_path,
                                              json=payload if raw is None else None, data=data,
                                              headers={"Content-Type": "application/json"})
        return status, body

    async def calls(self) -> list[dict]:
        rows, _ = await self.api.control.store.voice_calls.list(tenant_id=self.tenant_id, limit=200)
        return rows

    async def call(self, call_id: str) -> dict:
        return await self.api.control.store.voice_calls.get(call_id, tenant_id=self.tenant_id)

    async def events(self, call_id: str) -> list[str]:
        rows, _ = await self.api.control.store.call_events.list(tenant_id=self.tenant_id,
                                                                equals={"call_id": call_id}, limit=200)
        return [r["topic"] for r in sorted(rows, key=lambda r: r["seq"])]

    async def metrics(self) -> str:
        _, text, _ = await self.api.call("GET", "/metrics")
        return text


async def add_goto_tenant(api: LiveApi, peer: GotoPeer, name: str, number: str) -> tuple[str, str, str]:
    tenant_id, key = await api.tenant_with_key(name)
    agent_id = await api.front_desk(tenant_id, key, number, "goto",
                                    {"client_id": peer.client_id, "account_key": peer.account_key},
                                    peer.refresh_token)
    return tenant_id, key, agent_id


async def register(api: LiveApi, tenant_id: str, peer: GotoPeer) -> str:
    """Register the tenant's channel through the peer (which validates against the live runtime);
    the webhook path the peer was given."""
    from runtime.api.appkeys import SETTINGS
    from runtime.telephony.goto.channels import register_channel

    public = with_overrides(api.app[SETTINGS], server={"public_url": api.base_url})
    before = len(peer.webhook_urls)
    await register_channel(api.control, public, tenant_id)
    assert len(peer.webhook_urls) == before + 1
    return peer.webhook_urls[-1].removeprefix(api.base_url)


def goto_settings(settings: Any, peer: GotoPeer, **sections: Any) -> Any:
    return with_overrides(settings, limits={**high_limits(), **sections.pop("limits", {})},
                          telephony={"goto": {"api_base_url": peer.url, "auth_url": peer.token_url}},
                          server={"shutdown_grace_s": 0.2, **sections.pop("server", {})}, **sections)


async def start_world(settings: Any, **sections: Any) -> GotoWorld:
    peer = GotoPeer()
    await peer.start()
    built = goto_settings(settings, peer, **sections)
    api, runner = await start_live_api(built)
    tenant_id, key, agent_id = await add_goto_tenant(api, peer, "goto-tenant", NUMBER)
    path = await register(api, tenant_id, peer)
    return GotoWorld(api, runner, peer, tenant_id, key, agent_id, path)


async def stop_world(world: GotoWorld) -> None:
    await stop_live_api(world.api, world.runner)
    await world.peer.stop()
