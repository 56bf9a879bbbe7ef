"""A tenant's GoTo notification channel: the webhook token, its registration with GoTo (channel,
call-events subscription, web-call device and extension), and lookups.

GoTo documents no webhook signature, so the callback URL carries a random secret token
(``/webhooks/goto/{token}``). The token is shown to no one: it goes into the URL registered with
GoTo and is stored only as its SHA-256, like API keys. Deliveries are verified by hashing the path
token and comparing with the stored hash in constant time, before any other work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp

from runtime.config import ConfigError, Settings
from runtime.ids import new_id, now_iso
from runtime.store.store import Store
from runtime.telephony.goto import assumptions
from runtime.telephony.goto.api import GotoApi, GotoApiError, TokenCache, api_for, open_account

log = logging.getLogger("voicectl.goto")

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
    device_id: str
    extension: str
    device_registered: bool  # False: the channel's device already had the extension
    call_events: str  # "subscribed", or why GoTo refused them (the number still takes web calls)
    removed_channel: str | None = None  # --goto-new-channel: the old channel deleted at GoTo


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicectl")
    except PackageNotFoundError:
        return "0"


async def register_channel(plane: Any, settings: Settings, tenant_id: str, *, again: bool = False,
                           tokens: TokenCache | None = None) -> ChannelRegistration:
    """Register, as GoTo's guides order it, the tenant's notification channel, its call-events
    subscription, a web-call device on the channel and the credential's extension on the device.
    Idempotent: an active channel is kept (``again``: a new one with a new token, after which the
    old device and channel are deleted at GoTo), and a device that already has the extension is
    not registered again.

    The pending row (the token's hash) is written before GoTo is asked, because GoTo validates
    the URL with an OPTIONS request while it creates the channel; it is removed if GoTo refuses.
    """
    account = await open_account(plane.credentials, tenant_id, settings)
    existing = await active_channel(plane.store, tenant_id)
    async with aiohttp.ClientSession() as http:
        api = api_for(settings, account, http, tokens or TokenCache(), plane.credentials)
        if existing is not None and not again:
            device_id, fresh = await _ensure_device(plane, api, existing)
            events = existing["subscription"].get("call_events", "subscribed")
            return ChannelRegistration(existing["channel_id"], existing["nickname"], False, device_id,
                                       account.extension, fresh, events)
        row, channel, events = await _new_channel(plane, settings, api, tenant_id)
        device_id, _ = await _ensure_device(plane, api, row)
        removed = await _remove_others(plane, api, tenant_id, keep=row["id"])
    return ChannelRegistration(channel["channelId"], row["nickname"], True, device_id, account.extension, True,
                               events, removed)


async def _new_channel(plane: Any, settings: Settings, api: GotoApi,
                       tenant_id: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    public = require_public_url(settings)
    token, nickname, now = new_webhook_token(), nickname_for(tenant_id), now_iso()
    row = await plane.store.goto_channels.insert({
        "id": new_id("gch"), "tenant_id": tenant_id, "account_key": api.account.account_key, "nickname": nickname,
        "token_hash": hash_token(token), "channel_id": None, "status": PENDING, "subscription": {},
        "created_at": now, "updated_at": now, "device_id": None, "extension": None,
    })
    try:
        channel = await api.create_channel(nickname, webhook_url(public, token))
    except BaseException:
        await plane.store.goto_channels.delete(row["id"], tenant_id=tenant_id)
        raise
    summary: dict[str, Any] = {"channel_lifetime": channel.get("channelLifetime")}
    try:
        summary["accounts"] = await api.subscribe_call_events(channel["channelId"])
        events = "subscribed"
    except GotoApiError as exc:
        if not assumptions.CALL_EVENTS_OPTIONAL:
            raise
        # Call events need a super-admin token; without them the device still takes web calls.
        events = f"refused: {exc.message}"
        log.warning("goto refused the call-events subscription; web calls still arrive through the device",
                    extra={"tenant_id": tenant_id, "status": exc.http_status})
    summary["call_events"] = events
    row = await plane.store.goto_channels.update(row["id"], {
        "channel_id": channel["channelId"], "status": ACTIVE, "subscription": summary, "updated_at": now_iso(),
    }, tenant_id=tenant_id)
    return row, channel, events


async def _ensure_device(plane: Any, api: GotoApi, row: dict[str, Any]) -> tuple[str, bool]:
    """The channel's device with the account's extension: (device id, whether it was registered now)."""
    extension = api.account.extension
    if row.get("device_id") and row.get("extension") == extension:
        return row["device_id"], False
    if row.get("device_id"):  # the credential names another extension now: a new device for it
        await api.delete_device(row["device_id"])
    device_id = await api.create_device(row["channel_id"], assumptions.client_information(_version()))
    try:
        await api.add_extension(device_id)
    except BaseException:
        await _quietly(api.delete_device(device_id), "web-call device removal")
        raise
    await plane.store.goto_channels.update(row["id"], {"device_id": device_id, "extension": extension,
                                                       "updated_at": now_iso()}, tenant_id=row["tenant_id"])
    return device_id, True


async def _remove_others(plane: Any, api: GotoApi, tenant_id: str, *, keep: str) -> str | None:
    """The tenant's older channels: device and channel deleted at GoTo, then the rows."""
    removed = None
    others, _ = await plane.store.goto_channels.list(tenant_id=tenant_id, limit=200, count=False)
    for other in others:
        if other["id"] == keep:
            continue
        if other.get("device_id"):
            await _quietly(api.delete_device(other["device_id"]), "web-call device removal")
        if other.get("channel_id"):
            await _quietly(api.delete_channel(other["nickname"], other["channel_id"]), "notification channel deletion")
            removed = other["channel_id"]
        await plane.store.goto_channels.delete(other["id"], tenant_id=tenant_id)
    return removed


async def unregister_device(plane: Any, settings: Settings, tenant_id: str) -> str | None:
    """The tenant's last GoTo number is gone: its web-call device (with the extension) is deleted at
    GoTo. The channel and call-events subscription stay for the next number. The device removed, or None."""
    row = await active_channel(plane.store, tenant_id)
    if row is None or not row.get("device_id"):
        return None
    account = await open_account(plane.credentials, tenant_id, settings)
    async with aiohttp.ClientSession() as http:
        api = api_for(settings, account, http, TokenCache(), plane.credentials)
        await api.delete_device(row["device_id"])
    await plane.store.goto_channels.update(row["id"], {"device_id": None, "extension": None, "updated_at": now_iso()},
                                           tenant_id=tenant_id)
    return row["device_id"]


async def _quietly(step: Any, what: str) -> None:
    """Clean-up at GoTo that must not undo what succeeded: a refusal is logged."""
    try:
        await step
    except GotoApiError as exc:
        log.warning(f"goto {what} failed", extra={"status": exc.http_status, "error": exc.message})
