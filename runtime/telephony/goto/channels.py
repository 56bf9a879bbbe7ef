"""A tenant's GoTo notification channel: the webhook token, its registration with GoTo, and lookups.

GoTo documents no webhook signature, so the callback URL carries a random secret token
(``/webhooks/goto/{token}``). The token is shown to no one: it goes into the URL registered with
GoTo and is stored only as its SHA-256, like API keys. Deliveries are verified by hashing the path
token and comparing with the stored hash in constant time, before any other work.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp

from runtime.config import ConfigError, Settings
from runtime.ids import new_id, now_iso
from runtime.store.store import Store
from runtime.telephony.goto.api import TokenCache, api_for, open_account

WEBHOOK_PATH = "/webhooks/goto/"
PENDING, ACTIVE = "pending", "active"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def new_webhook_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def hash_token(token: str) -> str:
    # A long random token: a fast hash suffices (nothing to stretch), as for API keys.
    return hashlib.sha256(token.encode()).hexdigest()


def plausible_token(token: str) -> bool:
    """Shape check before any lookup: anything else is refused without touching the database."""
    return bool(_TOKEN.match(token))


def token_matches(row: dict[str, Any] | None, token_hash: str) -> bool:
    return row is not None and hmac.compare_digest(row["token_hash"], token_hash)


def webhook_url(public_url: str, token: str) -> str:
    return public_url.rstrip("/") + WEBHOOK_PATH + token


def nickname_for(tenant_id: str) -> str:
    return f"voicectl-{tenant_id}"


@dataclass(frozen=True)
class ChannelRegistration:
    channel_id: str
    nickname: str
    registered: bool  # False: the tenant's active channel was kept


async def active_channel(store: Store, tenant_id: str) -> dict[str, Any] | None:
    rows, _ = await store.goto_channels.list(tenant_id=tenant_id, equals={"status": ACTIVE}, limit=1,
                                             descending=True, count=False)
    return rows[0] if rows else None


def require_public_url(settings: Settings) -> str:
    public = settings.server.public_url
    if not public:
        raise ConfigError("server.public_url is not set: GoTo must be given the runtime's public HTTPS URL "
                          "(https://PUBLIC/webhooks/goto/...); set it in the config or VOICECTL_SERVER__PUBLIC_URL")
    return public


async def register_channel(plane: Any, settings: Settings, tenant_id: str, *, again: bool = False,
                           tokens: TokenCache | None = None) -> ChannelRegistration:
    """Register the tenant's notification channel and its call-events subscription with GoTo,
    unless the tenant has an active one (``again``: register a new one with a new token; the old
    row goes once the new channel is active).

    The pending row (the token's hash) is written before GoTo is asked, because GoTo validates
    the URL with an OPTIONS request while it creates the channel; it is removed if GoTo refuses.
    """
    existing = await active_channel(plane.store, tenant_id)
    if existing is not None and not again:
        return ChannelRegistration(existing["channel_id"], existing["nickname"], False)
    public = require_public_url(settings)
    account = await open_account(plane.credentials, tenant_id)
    token, nickname, now = new_webhook_token(), nickname_for(tenant_id), now_iso()
    row = await plane.store.goto_channels.insert({
        "id": new_id("gch"), "tenant_id": tenant_id, "account_key": account.account_key, "nickname": nickname,
        "token_hash": hash_token(token), "channel_id": None, "status": PENDING, "subscription": {},
        "created_at": now, "updated_at": now,
    })
    try:
        async with aiohttp.ClientSession() as http:
            api = api_for(settings, account, http, tokens or TokenCache(), plane.credentials)
            channel = await api.create_channel(nickname, webhook_url(public, token))
            accounts = await api.subscribe_call_events(channel["channelId"])
    except BaseException:
        await plane.store.goto_channels.delete(row["id"], tenant_id=tenant_id)
        raise
    summary = {"accounts": accounts, "channel_lifetime": channel.get("channelLifetime")}
    await plane.store.goto_channels.update(row["id"], {
        "channel_id": channel["channelId"], "status": ACTIVE, "subscription": summary, "updated_at": now_iso(),
    }, tenant_id=tenant_id)
    others, _ = await plane.store.goto_channels.list(tenant_id=tenant_id, limit=200, count=False)
    for other in others:
        if other["id"] != row["id"]:
            await plane.store.goto_channels.delete(other["id"], tenant_id=tenant_id)
    return ChannelRegistration(channel["channelId"], nickname, True)
