"""Shared setup of the GoTo tests: a local peer standing in for GoTo's API as GoTo documents it, and
a live runtime with a tenant whose channel is registered through it.

Sources of each shape (see runtime/telephony/goto/api.py): the OAuth token endpoint takes the
client in Basic auth and a form of grant_type + refresh_token (guide "Refresh an access token";
screen-pop-demo service/token.ts); notification channels are validated with OPTIONS before the 201
(guide "Use the Notification Channel API") and deleted by nickname and id (screen-pop-demo
service/notification.ts); the call-events subscription answers 207 (guide "Use the Call Events
API"); devices and extensions follow "Make and Receive Calls using the Devices and Calls API".
Notifications are {"data": {"type", "source", "content"}} (both sample apps); a call event's
participants carry the caller as type.caller (screen-pop-demo types/callEvents.ts). Where GoTo
publishes nothing, the peer answers as runtime/telephony/goto/assumptions.py assumes.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from peers.loopback import serve_loopback
from tests.api.support import LiveApi, high_limits, start_live_api, stop_live_api, with_overrides

CLIENT_ID = "goto-client-id"
CLIENT_SECRET = "goto-client-secret"
ACCOUNT_KEY = "1234567890123456789"
ORGANIZATION_ID = "0127d3e5-3d8e-4e3b-9e1c-55a5d0a1f001"
EXTENSION = "7001"
REFRESH_TOKEN = "goto-refresh-token-one"
NUMBER = "+15550108000"
CALLER = "+15550001111"
ALL_SCOPES = ("call-events.v1.notifications.manage call-events.v1.events.read webrtc.v1.read webrtc.v1.write "
              "users.v1.lines.read")


@dataclass
class GotoPeer:
    """GoTo's API on a loopback port. Bearer tokens must be ones it issued; a webhook URL is
    validated with OPTIONS (200 required) before a channel is created."""

    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    refresh_token: str = REFRESH_TOKEN
    account_key: str = ACCOUNT_KEY
    organization_id: str = ORGANIZATION_ID
    scopes: str = ALL_SCOPES
    expires_in: int = 3600
    rotate_to: str | None = None  # issue this new refresh token on the next refresh
    refuse: dict[str, tuple[int, Any]] = field(default_factory=dict)  # step -> (status, body)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    validations: list[int] = field(default_factory=list)  # status of each OPTIONS validation
    webhook_urls: list[str] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=dict)  # channelId -> webhook URL (live ones)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # deviceId -> its registration
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
        app.router.add_delete("/notification-channel/v1/channels/{nickname}/{channel_id}", self._delete_channel)
        app.router.add_post("/call-events/v1/subscriptions", self._subscribe)
        app.router.add_post("/web-calls/v1/devices", self._device)
        app.router.add_post("/web-calls/v1/devices/{id}/extensions", self._extensions)
        app.router.add_delete("/web-calls/v1/devices/{id}", self._delete_device)
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
        self.token_requests.append({**form, "authorization": request.headers.get("Authorization", "")})
        if "token" in self.refuse:
            status, body = self.refuse["token"]
            return web.json_response(body, status=status)
        basic = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != basic:
            return web.json_response({"error": "invalid_client", "error_description": "Bad client credentials"},
                                     status=401)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid refresh token"},
                                     status=400)
        access = f"access-{uuid.uuid4().hex}"
        self.issued.add(access)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in,
                                "scope": self.scopes, "principal": "admin@example.com"}
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
        channel_id = f"Webhook.{uuid.uuid4()}"
        self.channels[channel_id] = url
        return web.json_response({
            "channelId": channel_id, "channelNickname": nickname,
            "webhookChannelData": {"webhook": {"url": url}, "channelType": "Webhook"},
            "channelLifetime": 2147483647, "doNotDisturbAware": False,
        }, status=201)

    async def _delete_channel(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "channel_delete")
        if refused is not None:
            return refused
        gone = self.channels.pop(request.match_info["channel_id"], None)
        return web.Response(status=204 if gone else 404)

    async def _device(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "device")
        if refused is not None:
            return refused
        body = self.requests[-1]["json"] or {}
        callback = body.get("callbackReference") or {}
        incoming, session = callback.get("incomingCallChannelId"), callback.get("sessionManagementChannelId")
        if not isinstance(body.get("clientInformation"), dict) or incoming not in self.channels \
                or session not in self.channels:
            return web.json_response({"errorCode": "INVALID_BODY"}, status=400)
        device_id = f"dev-{uuid.uuid4().hex[:12]}"
        self.devices[device_id] = {"incoming": incoming, "session": session, "extensions": []}
        return web.json_response({"id": device_id, "callbackReference": callback}, status=201)

    async def _extensions(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "extension")
        if refused is not None:
            return refused
        device = self.devices.get(request.match_info["id"])
        body = self.requests[-1]["json"] or {}
        numbers = [e.get("number") for e in body.get("extensions", []) if isinstance(e, dict)]
        if device is None:
            return web.json_response({"errorCode": "NOT_FOUND"}, status=404)
        if body.get("organizationId") != self.organization_id or not numbers or not all(numbers):
            return web.json_response({"errorCode": "INVALID_BODY"}, status=400)
        device["extensions"].extend(numbers)
        return web.Response(status=204)

    async def _delete_device(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request, "device_delete")
        if refused is not None:
            return refused
        gone = self.devices.pop(request.match_info["id"], None)
        return web.Response(status=204 if gone else 404)

    def device_for(self, extension: str) -> tuple[str, dict[str, Any]]:
        [(device_id, device)] = [(k, d) for k, d in self.devices.items() if extension in d["extensions"]]
        return device_id, device

    async def ring(self, extension: str, sdp: str, *, call_id: str | None = None, caller: str | None = CALLER,
                   conversation_id: str | None = None) -> tuple[int, Any]:
        """GoTo offers a web call to the device that registered ``extension``: the incoming-call
        notification goes to the device's incomingCallChannelId's webhook."""
        _, device = self.device_for(extension)
        body = web_call_offer(call_id or f"wc-{uuid.uuid4().hex[:10]}", sdp, conversation_id=conversation_id,
                              caller=caller)
        return await self.notify(device["incoming"], body)

    async def notify(self, channel_id: str, body: Any) -> tuple[int, Any]:
        """POST a notification to a channel's webhook, as GoTo does; its answer (status, JSON)."""
        async with aiohttp.ClientSession() as http, http.post(self.channels[channel_id], json=body) as resp:
            return resp.status, await resp.json(content_type=None)

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


def call_event(conversation_id: str, state: str, sequence: int, *, company: str | None = NUMBER,
               caller: str | None = CALLER, extension: str | None = EXTENSION, direction: str = "INBOUND",
               caller_status: str = "RINGING", account_key: str = ACCOUNT_KEY, bare: bool = False) -> dict[str, Any]:
    """A call-events notification: the content's metadata and state as the Call Events guide and
    screen-pop-demo's types give them, in the {"data": {...}} envelope of the sample apps (``bare``:
    the content alone at the top level)."""
    participants: list[dict[str, Any]] = []
    if company is not None or caller is not None:
        kind: dict[str, Any] = {"value": "PHONE_NUMBER", "name": "External"}
        if company is not None:
            kind["number"] = company
        if caller is not None:
            kind["caller"] = {"name": "Pat Caller", "number": caller}
        participants.append({"id": "p1", "type": kind, "status": {"value": caller_status}})
    if extension is not None:
        participants.append({"id": "p2", "type": {"value": "LINE", "name": "Front desk", "lineId": "line-1",
                                                  "extensionNumber": extension},
                             "status": {"value": "RINGING" if state == "STARTING" else "ACTIVE"}})
    content = {
        "metadata": {"conversationSpaceId": conversation_id, "direction": direction,
                     "callCreated": "2026-01-16T10:00:00.000Z", "accountKey": account_key},
        "state": {"id": f"state-{sequence}", "type": state, "sequenceNumber": sequence,
                  "timestamp": "2026-01-16T10:00:01.000Z", "participants": participants},
    }
    # The source and type values of call-event notifications are not published (illustrative here).
    return {"content": content} if bare else {"data": {"source": "call-events", "type": "call-state",
                                                        "content": content}}


def web_call_offer(call_id: str, sdp: str, *, conversation_id: str | None = None,
                   caller: str | None = CALLER) -> dict[str, Any]:
    """An incoming web call: the envelope the web-calls guide documents (source WebRTC, type
    incoming) around the content runtime.telephony.goto.assumptions.incoming_call assumes."""
    content: dict[str, Any] = {"callId": call_id, "sdp": sdp}
    if conversation_id is not None:
        content["conversationSpaceId"] = conversation_id
    if caller is not None:
        content["caller"] = {"name": "Pat Caller", "number": caller}
    return {"data": {"source": "WebRTC", "type": "incoming", "content": content}}


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


def goto_fields(peer: GotoPeer, extension: str = EXTENSION) -> dict[str, str]:
    return {"account_key": peer.account_key, "organization_id": peer.organization_id, "extension": extension}


async def add_goto_tenant(api: LiveApi, peer: GotoPeer, name: str, number: str,
                          extension: str = EXTENSION) -> tuple[str, str, str]:
    """A tenant with a goto credential (the appliance's OAuth client) and a front-desk agent on ``number``."""
    from runtime.telephony.goto.api import APPLIANCE_CLIENT_SECRET_REF

    await api.control.secrets.set(APPLIANCE_CLIENT_SECRET_REF, peer.client_secret)
    tenant_id, key = await api.tenant_with_key(name)
    agent_id = await api.front_desk(tenant_id, key, number, "goto", goto_fields(peer, extension), peer.refresh_token)
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
                          telephony={"goto": {"api_base_url": peer.url, "webrtc_base_url": peer.url,
                                              "auth_url": peer.token_url, "client_id": peer.client_id}},
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
