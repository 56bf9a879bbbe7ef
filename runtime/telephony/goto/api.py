"""GoTo Connect's REST API: OAuth access tokens from a tenant's refresh token, and the calls voicectl
makes (notification channel, call-events subscription, web-call device and extension, web-call
ringing/answer/reject/hang-up).

Sources, cited beside each call: GoTo's developer guides "Use the Notification Channel API" (N),
"Use the Call Events API" (C), "Make and Receive Calls using the Devices and Calls API" (W),
"Refresh an access token" (R), and GoTo's sample apps LogMeIn/screen-pop-demo and
goto-developers/call-events-report-demo (S). What none of them settles is marked ASSUMPTION and
listed in the README.

The OAuth client is confidential (R, S: ``Authorization: Basic base64(client_id:client_secret)``):
the appliance's (``telephony.goto.client_id``, its secret set by ``voicectl goto
set-client-secret``), or a tenant's own (``client_id`` on its ``goto`` credential, its secret set
by ``voicectl goto set-client-secret --tenant T``). The tenant's refresh token is the credential's
secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from runtime.control.errors import ControlError, NotFound
from runtime.control.schemas import CredentialSet

log = logging.getLogger("voicectl.goto")

CALL_EVENTS = ("STARTING", "ACTIVE", "ENDING")
# What a tenant's token must carry (C: call events, with a super-admin token; W: web calls; the
# lines scope reads the account's lines). ``voicectl doctor`` names any that is missing.
REQUIRED_SCOPES = ("call-events.v1.notifications.manage", "call-events.v1.events.read", "webrtc.v1.read",
                   "webrtc.v1.write", "users.v1.lines.read")
APPLIANCE_CLIENT_SECRET_REF = "appliance/goto/client_secret"
# An access token is refreshed this long before GoTo says it expires (clock skew, request time).
EXPIRY_MARGIN_S = 60.0
DEFAULT_EXPIRES_IN_S = 3600  # GoTo's documented access-token lifetime, when a response omits it
_MAX_ERROR_BODY = 300
# Answers to the assumed hang-up (see GotoApi.hangup) that are no failure of ours.
HANGUP_UNSUPPORTED = (404, 405)


class GotoApiError(ControlError):
    """GoTo refused a request or could not be reached. The API answers 502; the CLI exits 8."""

    status = 502
    code = "provider_error"
    exit_code = 8

    def __init__(self, step: str, http_status: int | None, body: str = "") -> None:
        what = f"HTTP {http_status}" if http_status is not None else "no answer"
        detail = body.strip().replace("\n", " ")[:_MAX_ERROR_BODY]
        super().__init__(f"GoTo {step} failed ({what}){': ' + detail if detail else ''}",
                         {"step": step, "status": http_status})
        self.step = step
        self.http_status = http_status


def tenant_client_secret_ref(tenant_id: str) -> str:
    """Where a tenant that brings its own OAuth client keeps that client's secret."""
    return f"tenant/{tenant_id}/goto/client_secret"


@dataclass(frozen=True, slots=True)
class OAuthClient:
    client_id: str
    client_secret: str

    def basic_auth(self) -> str:
        # R, S (token.ts getBasicAuth): Basic base64(client_id:client_secret).
        pair = f"{self.client_id}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode()


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float  # on the cache's clock
    # GoTo replaced the refresh token this was looked up with: its holder should use this one now.
    rotated_refresh_token: str | None
    scopes: frozenset[str] = frozenset()  # the token answer's space-separated ``scope``


@dataclass(frozen=True, slots=True)
class Lookup:
    token: AccessToken
    refreshed: bool  # a token request was made for this lookup (not a cache hit)


class TokenCache:
    """Access tokens per (client id, refresh token), reused until EXPIRY_MARGIN_S before expiry;
    one refresh at a time per key, so a burst of calls makes one token request.

    After a rotation the token is cached under both refresh tokens: under the new one with no
    rotation pending, under the old one pointing at the new one (for holders of the old token),
    so neither makes another token request while the access token lasts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self._clock = clock
        self._tokens: dict[str, AccessToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.max_entries = max_entries
        self.requests = 0  # token requests made (for tests and metrics)

    @staticmethod
    def _key(client_id: str, refresh_token: str) -> str:
        # Hashed: the refresh token itself is not kept as a dict key.
        return hashlib.sha256(f"{client_id}\0{refresh_token}".encode()).hexdigest()

    def drop(self, access_token: str) -> None:
        """Forget a refused access token under every refresh token it is cached for."""
        for key in [k for k, t in self._tokens.items() if t.value == access_token]:
            del self._tokens[key]

    def _fresh(self, key: str) -> AccessToken | None:
        cached = self._tokens.get(key)
        return cached if cached is not None and self._clock() < cached.expires_at else None

    async def get(self, http: aiohttp.ClientSession, auth_url: str, client: OAuthClient, refresh_token: str,
                  timeout: aiohttp.ClientTimeout) -> Lookup:
        key = self._key(client.client_id, refresh_token)
        cached = self._fresh(key)
        if cached is not None:
            return Lookup(cached, refreshed=False)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._fresh(key)
            if cached is not None:
                return Lookup(cached, refreshed=False)
            token = await self._refresh(http, auth_url, client, refresh_token, timeout)
            if len(self._tokens) >= self.max_entries - 1:
                self._tokens.clear()
                self._locks = {key: lock}
            self._tokens[key] = token
            if token.rotated_refresh_token is not None:
                self._tokens[self._key(client.client_id, token.rotated_refresh_token)] = AccessToken(
                    token.value, token.expires_at, None, token.scopes)
            return Lookup(token, refreshed=True)

    async def _refresh(self, http: aiohttp.ClientSession, auth_url: str, client: OAuthClient, refresh_token: str,
                       timeout: aiohttp.ClientTimeout) -> AccessToken:
        self.requests += 1
        # R, S (token.ts performTokenRefresh): a form with grant_type and refresh_token, the client
        # in Basic auth; an answer without refresh_token keeps the old one.
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        headers = {"Accept": "application/json", "Authorization": client.basic_auth()}
        try:
            async with http.post(auth_url, data=form, headers=headers, timeout=timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise GotoApiError("OAuth token refresh", resp.status, _oauth_error(text))
                data = _json(text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GotoApiError("OAuth token refresh", None, f"cannot reach {auth_url}: {exc}") from None
        value, expires_in = data.get("access_token"), data.get("expires_in", DEFAULT_EXPIRES_IN_S)
        if not isinstance(value, str) or not value:
            raise GotoApiError("OAuth token refresh", 200, "the answer has no access_token")
        if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN_S
        rotated = data.get("refresh_token")
        rotated = rotated if isinstance(rotated, str) and rotated and rotated != refresh_token else None
        scope = data.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        return AccessToken(value, self._clock() + max(0.0, float(expires_in) - EXPIRY_MARGIN_S), rotated, scopes)


def _json(text: str) -> dict[str, Any]:
    import orjson

    try:
        data = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _oauth_error(text: str) -> str:
    """OAuth errors as ``error: description`` (never echoing the request, which holds the token)."""
    data = _json(text)
    if data.get("error"):
        return f"{data['error']}: {data.get('error_description', '')}".rstrip(": ")
    return text


@dataclass(frozen=True)
class GotoAccount:
    """A tenant's ``goto`` credential, opened: fields from the database, the refresh token and the
    OAuth client's secret from the keyring."""

    tenant_id: str
    account_key: str
    organization_id: str
    extension: str  # the extension number the web-call device registers (W)
    client: OAuthClient
    refresh_token: str
    fields: dict[str, str]


CREDENTIAL_HOW = ("set it with `voicectl credential set --tenant T goto --field account_key=... "
                  "--field organization_id=... --field extension=...` and the OAuth refresh token on stdin")


async def open_account(credentials: Any, tenant_id: str, settings: Any) -> GotoAccount:
    """The tenant's GoTo credential with its OAuth client (the tenant's own when its credential
    names a client_id, else the appliance's), or NotFound saying what is missing."""
    try:
        cred = await credentials.get(tenant_id, "goto")
    except NotFound:
        raise NotFound(f"this tenant has no goto credential: {CREDENTIAL_HOW}", {"provider": "goto"}) from None
    refresh_token = await credentials.secret(tenant_id, "goto")
    fields = dict(cred.fields)
    missing = [name for name in ("account_key", "organization_id", "extension") if not fields.get(name)]
    if missing or not refresh_token:
        what = ", ".join(missing + ([] if refresh_token else ["the refresh token"]))
        raise NotFound(f"this tenant's goto credential lacks {what}: {CREDENTIAL_HOW}", {"provider": "goto"})
    own_client = fields.get("client_id")
    if own_client:
        client_id, ref = own_client, tenant_client_secret_ref(tenant_id)
        how = "voicectl goto set-client-secret --tenant T"
    else:
        client_id, ref = settings.telephony.goto.client_id, APPLIANCE_CLIENT_SECRET_REF
        how = "voicectl goto set-client-secret"
        if not client_id:
            raise NotFound("no GoTo OAuth client: set telephony.goto.client_id in the config (the appliance's "
                           "GoTo app) or client_id on the tenant's goto credential", {"provider": "goto"})
    client_secret = await credentials.secrets.get(ref, cached=True)
    if not client_secret:
        raise NotFound(f"the GoTo OAuth client {client_id} has no secret in the keyring: run `{how}`",
                       {"provider": "goto"})
    return GotoAccount(tenant_id, fields["account_key"], fields["organization_id"], fields["extension"],
                       OAuthClient(client_id, client_secret), refresh_token, fields)


class GotoApi:
    """One tenant's view of GoTo's REST API. ``on_rotated`` stores a refresh token GoTo replaced.
    ``webrtc_base_url``: the host of the web-calls API (W's examples use another host than the
    REST API's)."""

    def __init__(self, base_url: str, auth_url: str, account: GotoAccount, http: aiohttp.ClientSession,
                 tokens: TokenCache, *, webrtc_base_url: str | None = None, timeout_s: float = 10.0,
                 on_rotated: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.webrtc_base = (webrtc_base_url or base_url).rstrip("/")
        self.auth_url = auth_url
        self.account = account
        self.http = http
        self.tokens = tokens
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.on_rotated = on_rotated
        self._refresh_token = account.refresh_token

    async def _token(self) -> AccessToken:
        found = await self.tokens.get(self.http, self.auth_url, self.account.client, self._refresh_token,
                                      self.timeout)
        rotated = found.token.rotated_refresh_token
        if rotated is not None:
            self._refresh_token = rotated
            # Stored only by the refresh that received it: a cache hit under the old token must
            # not write it again (nor over a newer one stored since).
            if found.refreshed and self.on_rotated is not None:
                await self.on_rotated(rotated)
        return found.token

    async def scopes(self) -> frozenset[str]:
        """The scopes GoTo granted the tenant's token (its token answer's ``scope``)."""
        return (await self._token()).scopes

    async def _request(self, method: str, url: str, step: str, body: Any = None,
                       ok: tuple[int, ...] = (200, 201, 204)) -> tuple[int, dict[str, Any]]:
        for attempt in (1, 2):
            access = (await self._token()).value
            headers = {"Authorization": f"Bearer {access}", "Accept": "application/json"}
            try:
                async with self.http.request(method, url, json=body, headers=headers, timeout=self.timeout) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise GotoApiError(step, None, f"cannot reach {url.split('/', 3)[2]}: {exc}") from None
            if status == 401 and attempt == 1:
                # The cached access token was revoked or expired early: refresh once and retry.
                self.tokens.drop(access)
                continue
            if status not in ok:
                raise GotoApiError(step, status, text)
            return status, _json(text)
        raise AssertionError("unreachable")

    # Notification channel (N, W)

    def _channel_path(self, nickname: str) -> str:
        return f"{self.base}/notification-channel/v1/channels/{quote(nickname, safe='')}"

    async def create_channel(self, nickname: str, webhook_url: str) -> dict[str, Any]:
        """N: POST /notification-channel/v1/channels/{nickname} {channelType: Webhook,
        webhookChannelData.webhook.url}; GoTo validates the URL with an OPTIONS request before it
        answers 201 with ``channelId`` ("Webhook.<uuid>") and ``channelLifetime``."""
        body = {"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": webhook_url}}}
        _, data = await self._request("POST", self._channel_path(nickname), "notification channel creation", body)
        if not isinstance(data.get("channelId"), str) or not data["channelId"]:
            raise GotoApiError("notification channel creation", 201, "the answer has no channelId")
        return data

    async def delete_channel(self, nickname: str, channel_id: str) -> None:
        """S (screen-pop-demo notification.ts cleanUpChannel): DELETE
        /notification-channel/v1/channels/{nickname}/{channelId} -> 204. Gone already (404): done."""
        await self._request("DELETE", f"{self._channel_path(nickname)}/{quote(channel_id, safe='')}",
                            "notification channel deletion", ok=(200, 204, 404))

    async def subscribe_call_events(self, channel_id: str, events: tuple[str, ...] = CALL_EVENTS) -> list[dict]:
        """C: POST /call-events/v1/subscriptions {channelId, accountKeys: [{id, events}]}: 207
        Multi-Status with a status per account key; any account refused fails the subscription."""
        body = {"channelId": channel_id, "accountKeys": [{"id": self.account.account_key, "events": list(events)}]}
        status, data = await self._request("POST", f"{self.base}/call-events/v1/subscriptions",
                                           "call-events subscription", body, ok=(200, 201, 207))
        accounts = data.get("accountKeys")
        if not isinstance(accounts, list):
            raise GotoApiError("call-events subscription", status, "the answer has no accountKeys")
        for item in accounts:
            code = item.get("status") if isinstance(item, dict) else None
            if not isinstance(code, int) or not 200 <= code < 300:
                message = item.get("message", "") if isinstance(item, dict) else ""
                raise GotoApiError("call-events subscription", code if isinstance(code, int) else status,
                                   f"account {item.get('id') if isinstance(item, dict) else '?'}: {message}")
        return accounts

    # Web-call device and extension (W)

    async def create_device(self, channel_id: str, client_information: dict[str, str]) -> str:
        """W: POST /web-calls/v1/devices {clientInformation, callbackReference:
        {incomingCallChannelId, sessionManagementChannelId}}: both point at our channel, so offers
        and session notifications reach the webhook. The new device's id is read by
        ``assumptions.device_id``."""
        from runtime.telephony.goto.assumptions import device_id

        body = {"clientInformation": client_information,
                "callbackReference": {"incomingCallChannelId": channel_id, "sessionManagementChannelId": channel_id}}
        status, data = await self._request("POST", f"{self.webrtc_base}/web-calls/v1/devices",
                                           "web-call device registration", body)
        found = device_id(data)
        if found is None:
            raise GotoApiError("web-call device registration", status, "the answer names no device id")
        return found

    async def add_extension(self, device_id: str) -> None:
        """W: POST /web-calls/v1/devices/{deviceId}/extensions {organizationId, extensions:
        [{number}]}: the device takes the calls GoTo routes to that extension."""
        body = {"organizationId": self.account.organization_id, "extensions": [{"number": self.account.extension}]}
        await self._request("POST", f"{self.webrtc_base}/web-calls/v1/devices/{quote(device_id, safe='')}/extensions",
                            "web-call extension registration", body)

    async def delete_device(self, device_id: str) -> None:
        """ASSUMPTION (assumptions.DEVICE_DELETE): DELETE /web-calls/v1/devices/{deviceId} removes
        the device with its extensions; gone already (404) is done."""
        await self._request("DELETE", f"{self.webrtc_base}/web-calls/v1/devices/{quote(device_id, safe='')}",
                            "web-call device removal", ok=(200, 202, 204, 404))

    # Web calls (W)

    def _call_url(self, call_id: str, action: str = "") -> str:
        return f"{self.webrtc_base}/web-calls/v1/calls/{quote(call_id, safe='')}{'/' + action if action else ''}"

    async def ringing(self, call_id: str) -> None:
        """W: POST /web-calls/v1/calls/{id}/ringing: our line rings (before the answer). Its body
        is not documented: none is sent (ASSUMPTION, assumptions.RINGING_BODY)."""
        await self._request("POST", self._call_url(call_id, "ringing"), "web-call ringing")

    async def answer(self, call_id: str, sdp: str, in_call_channel_id: str) -> None:
        """W: POST /web-calls/v1/calls/{id}/answer {sdp, inCallChannelId}: our SDP answer; in-call
        notifications go to our notification channel."""
        await self._request("POST", self._call_url(call_id, "answer"), "web-call answer",
                            {"sdp": sdp, "inCallChannelId": in_call_channel_id})

    async def reject(self, call_id: str) -> None:
        """W: POST /web-calls/v1/calls/{id}/reject: refuse a ringing web call."""
        await self._request("POST", self._call_url(call_id, "reject"), "web-call reject")

    async def hangup(self, call_id: str) -> None:
        """ASSUMPTION (assumptions.HANGUP): an answered web call is hung up with DELETE
        /web-calls/v1/calls/{id} (W names answer, reject, hold, unhold and offer, not the hang-up).
        Should the guess be wrong (404/405: no such endpoint) or the call already gone at GoTo
        (404), that is logged, not raised: closing our WebRTC peer ends the media either way."""
        status, _ = await self._request("DELETE", self._call_url(call_id), "web-call hang-up",
                                        ok=(200, 202, 204, *HANGUP_UNSUPPORTED))
        if status in HANGUP_UNSUPPORTED:
            log.info("goto did not take the web-call hang-up; the peer close ends the media",
                     extra={"tenant_id": self.account.tenant_id, "status": status})


def api_for(settings: Any, account: GotoAccount, http: aiohttp.ClientSession, tokens: TokenCache,
            credentials: Any) -> GotoApi:
    """A GotoApi from ``settings.telephony.goto`` that stores rotated refresh tokens in the keyring."""
    goto = settings.telephony.goto

    async def store_rotated(refresh_token: str) -> None:
        await credentials.set(account.tenant_id, "goto", CredentialSet(fields=account.fields, secret=refresh_token))
        log.info("goto refresh token rotated and stored", extra={"tenant_id": account.tenant_id})

    return GotoApi(goto.api_base_url, goto.auth_url, account, http, tokens, webrtc_base_url=goto.webrtc_base_url,
                   timeout_s=goto.request_timeout_s, on_rotated=store_rotated)
