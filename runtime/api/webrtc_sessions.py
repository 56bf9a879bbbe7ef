"""What the WebRTC routes do: mint browser tokens, take offers, hand out ICE servers.

``POST /api/v1/webrtc/sessions`` and ``GET /api/v1/webrtc/ice-servers`` take either an API key
(runtime key: its tenant; admin key: the tenant named in X-Tenant-ID) or a browser token in
``Authorization: Bearer``. A token only reaches the agent or number it was minted for, and only
while the key that minted it is valid and its tenant active. Offers count against the
``session`` rate class of that key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from runtime.api.appkeys import CONTROL, RATE_LIMITER, SETTINGS
from runtime.api.endpoint import authenticate, bearer_key
from runtime.control.errors import BadRequest, Forbidden, Invalid, NotFound, Unauthorized
from runtime.store.tables import ALL_TENANTS
from runtime.telephony.webrtc.bridge import CallTarget, bridge, open_browser_call
from runtime.telephony.webrtc.ice import browser_ice_servers
from runtime.telephony.webrtc.models import (
    SESSION_PATH,
    BrowserToken,
    BrowserTokenRequest,
    IceServers,
    SessionAnswer,
    SessionRequest,
)
from runtime.telephony.webrtc.tokens import BrowserGrant, is_browser_token
from runtime.web.responses import error_response, json_response

# Tokens


async def mint_token(request: web.Request, tenant_id: str, key_id: str, req: BrowserTokenRequest) -> BrowserToken:
    settings = request.app[SETTINGS].telephony.webrtc
    if req.ttl_s > settings.token_max_ttl_s:
        raise Invalid(f"ttl_s is at most {settings.token_max_ttl_s} s here", {"max_ttl_s": settings.token_max_ttl_s})
    store = request.app[CONTROL].store
    if req.agent_id is not None and await store.agents.get(req.agent_id, tenant_id=tenant_id) is None:
        raise NotFound(f"agent {req.agent_id} not found", {"agent_id": req.agent_id})
    if req.number is not None and await store.phone_numbers.find(tenant_id=tenant_id, e164=req.number) is None:
        raise NotFound(f"number {req.number} not found", {"number": req.number})
    grant = BrowserGrant(tenant_id, key_id, req.agent_id, req.number, int(time.time()) + req.ttl_s)
    return BrowserToken(bridge(request.app).tokens.mint(grant), grant.expires_at, req.agent_id, req.number,
                        SESSION_PATH, browser_ice_servers(settings))


# Who is offering


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    scope: str
    grant: BrowserGrant | None  # set for a browser token


async def _caller(request: web.Request) -> Caller:
    presented = bearer_key(request)
    if presented is not None and is_browser_token(presented):
        grant = bridge(request.app).tokens.verify(presented)
        key = await request.app[CONTROL].store.api_keys.get(grant.key_id, tenant_id=ALL_TENANTS)
        if key is None or key["revoked_at"] is not None:
            raise Unauthorized("the key that minted this browser token was revoked")
        tenant = await request.app[CONTROL].store.tenants.get(grant.tenant_id, tenant_id=ALL_TENANTS)
        if tenant is None or tenant["status"] != "active":
            raise Forbidden("tenant is disabled", {"tenant_id": grant.tenant_id})
        return Caller(grant.tenant_id, grant.key_id, key["scope"], grant)
    principal = await authenticate(request)
    if not principal.is_admin:
        return Caller(principal.tenant_id or "", principal.key_id, principal.scope, None)
    tenant_id = request.headers.get("X-Tenant-ID", "").strip()
    if not tenant_id:
        raise BadRequest("admin keys name the tenant with the X-Tenant-ID header", {"header": "X-Tenant-ID"})
    if await request.app[CONTROL].store.tenants.get(tenant_id, tenant_id=ALL_TENANTS) is None:
        raise NotFound(f"tenant {tenant_id} not found", {"tenant_id": tenant_id})
    return Caller(tenant_id, principal.key_id, principal.scope, None)


def _target(caller: Caller, req: SessionRequest) -> CallTarget:
    grant = caller.grant
    if grant is None:
        if (req.agent_id is None) == (req.number is None):
            raise Invalid("name exactly one of agent_id or number", {"fields": ["agent_id", "number"]})
        return CallTarget(req.agent_id, req.number)
    if (req.agent_id is not None and req.agent_id != grant.agent_id) or (
            req.number is not None and req.number != grant.number):
        raise Forbidden("this browser token is for another agent or number")
    return CallTarget(grant.agent_id, grant.number)


async def create_session(request: web.Request, read_body: Callable[[], Awaitable[SessionRequest]]) -> web.Response:
    caller = await _caller(request)
    req = await read_body()  # after the caller is known: strangers learn nothing of the body's shape
    target = _target(caller, req)
    headers: dict[str, str] = {}
    decision = await request.app[RATE_LIMITER].check(caller.key_id, caller.scope, "session")
    if decision is not None:
        headers = decision.headers()
        if not decision.allowed:
            retry = int(headers["Retry-After"])
            return error_response(429, f"rate limit for session requests reached; retry in {retry} s",
                                  {"route_class": "session", "retry_after": retry, "limit": decision.limit,
                                   "remaining": 0, "reset": decision.reset_at}, headers=headers)
    session, answer = await open_browser_call(request.app, caller.tenant_id, target, req.sdp)
    return json_response(SessionAnswer(session.id, "answer", answer), status=201, headers=headers)


async def ice_servers(request: web.Request) -> IceServers:
    await _caller(request)
    return IceServers(browser_ice_servers(request.app[SETTINGS].telephony.webrtc))
