"""Webhook configs: a tenant's URL, event filter and signing secret (shown once, kept in the keyring)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.control.errors import Invalid, NotFound
from runtime.control.models import Public, WebhookConfig, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import WebhookCreate, WebhookUpdate
from runtime.control.tenant_urls import check_url
from runtime.egress.policy import REFUSED, EgressPolicy
from runtime.events.topics import TOPICS, unknown_patterns
from runtime.ids import new_id, now_iso
from runtime.secrets import SecretStore
from runtime.store.store import Store

if TYPE_CHECKING:
    import aiohttp


# What the API and CLI show of deliveries


@dataclass(frozen=True)
class DeliveryAttempt(Public):
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: str


@dataclass(frozen=True)
class WebhookDelivery(Public):
    id: str
    webhook_id: str
    event_id: str
    topic: str
    status: str  # pending | sending | delivered | failed | skipped
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    updated_at: str
    delivered_at: str | None
    attempt_log: list[DeliveryAttempt] = field(default_factory=list)


@dataclass(frozen=True)
class WebhookTestResult(Public):
    webhook_id: str
    event_id: str
    delivered: bool
    status_code: int | None
    duration_ms: int
    error: str | None


def delivery_from_rows(row: dict[str, Any], attempts: list[dict[str, Any]]) -> WebhookDelivery:
    return from_row(WebhookDelivery, {**row, "attempt_log": [from_row(DeliveryAttempt, a) for a in attempts]})


def _check_events(events: list[str]) -> None:
    unknown = unknown_patterns(events)
    if unknown:
        raise Invalid(f"event patterns {unknown} match no topic", {"unknown": unknown, "topics": list(TOPICS)})


def _test_error(delivered: bool, status_code: int | None, error: str | None) -> str | None:
    """What a test delivery reports: refused, the answer's status, or unreachable. Never why a
    connection failed: that would tell a closed port from a listening one."""
    if delivered:
        return None
    if error == REFUSED:
        return REFUSED
    return f"HTTP {status_code}" if status_code is not None else "unreachable"


def signing_secret_ref(tenant_id: str, webhook_id: str) -> str:
    return f"tenant/{tenant_id}/webhook/{webhook_id}"


class WebhookService:
    def __init__(self, store: Store, secrets_store: SecretStore, egress: EgressPolicy | None = None) -> None:
        self.store = store
        self.secrets = secrets_store
        self.egress = egress or EgressPolicy()

    async def create(self, tenant_id: str, data: WebhookCreate) -> tuple[WebhookConfig, str]:
        """Returns the config and its signing secret, which is never shown again."""
        _check_events(data.events)
        check_url(self.egress, "url", data.url)
        webhook_id = new_id("whk")
        ref = signing_secret_ref(tenant_id, webhook_id)
        signing_secret = "whsec_" + secrets.token_urlsafe(32)
        self.secrets.set(ref, signing_secret)
        now = now_iso()
        try:
            row = await self.store.webhook_configs.insert({
                "id": webhook_id, "tenant_id": tenant_id, **data.model_dump(), "secret_ref": ref,
                "created_at": now, "updated_at": now,
            })
        except BaseException:
            self.secrets.delete(ref)  # no orphan secret for a row that was never written
            raise
        return from_row(WebhookConfig, row), signing_secret

    async def get(self, tenant_id: str, webhook_id: str) -> WebhookConfig:
        row = await self.store.webhook_configs.get(webhook_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": webhook_id})
        return from_row(WebhookConfig, row)

    async def list(self, tenant_id: str, page: PageRequest) -> Page[WebhookConfig]:
        rows, total = await self.store.webhook_configs.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset)
        return Page([from_row(WebhookConfig, r) for r in rows], total, page.limit, page.offset)

    async def update(self, tenant_id: str, webhook_id: str, data: WebhookUpdate) -> WebhookConfig:
        changes = data.model_dump(exclude_unset=True)
        nulls = [k for k in ("url", "events", "active") if k in changes and changes[k] is None]
        if nulls:
            raise Invalid(f"{', '.join(nulls)} cannot be null", {"fields": nulls})
        if "events" in changes:
            _check_events(changes["events"])
        if changes.get("url") is not None:
            check_url(self.egress, "url", changes["url"])
        if changes:
            changes["updated_at"] = now_iso()
        row = await self.store.webhook_configs.update(webhook_id, changes, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": webhook_id})
        return from_row(WebhookConfig, row)

    async def rotate_secret(self, tenant_id: str, webhook_id: str) -> tuple[WebhookConfig, str]:
        config = await self.get(tenant_id, webhook_id)
        signing_secret = "whsec_" + secrets.token_urlsafe(32)
        self.secrets.set(config.secret_ref, signing_secret)
        row = await self.store.webhook_configs.update(webhook_id, {"updated_at": now_iso()}, tenant_id=tenant_id)
        return from_row(WebhookConfig, row), signing_secret

    async def delete(self, tenant_id: str, webhook_id: str) -> None:
        config = await self.get(tenant_id, webhook_id)
        await self.store.webhook_configs.delete(webhook_id, tenant_id=tenant_id)
        self.secrets.delete(config.secret_ref)

    async def deliveries(self, tenant_id: str, webhook_id: str, page: PageRequest) -> Page[WebhookDelivery]:
        """The webhook's outbox rows, newest first, each with its attempts."""
        await self.get(tenant_id, webhook_id)
        rows, total = await self.store.webhook_deliveries.list(
            tenant_id=tenant_id, equals={"webhook_id": webhook_id}, limit=page.limit, offset=page.offset,
            descending=True,
        )
        attempts: dict[str, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
        for attempt in await self.store.delivery_attempts_for(tenant_id, list(attempts)):
            attempts[attempt["delivery_id"]].append(attempt)
        return Page([delivery_from_rows(r, attempts[r["id"]]) for r in rows], total, page.limit, page.offset)

    async def send_test(self, tenant_id: str, webhook_id: str, *, timeout_s: float,
                        http: aiohttp.ClientSession | None = None) -> WebhookTestResult:
        """POST a signed sample event (topic webhook.test) to the webhook now, through the delivery's
        own signing code, and report the outcome."""
        # Imported here: the CLI's other commands never load the HTTP client.
        import orjson

        from runtime.egress.aiohttp_client import guarded_session
        from runtime.events.delivery import TEST_TOPIC, n8n_header, post_signed
        from runtime.events.models import Event

        config = await self.get(tenant_id, webhook_id)
        secret = self.secrets.get(config.secret_ref, cached=True)
        if secret is None:
            raise Invalid("the webhook's signing secret is missing: rotate it", {"webhook_id": webhook_id})
        event = Event(new_id("evt"), TEST_TOPIC, tenant_id, None, 0, now_iso(), None,
                      {"webhook_id": webhook_id, "message": "a test delivery from voicectl"})
        body = orjson.dumps(event.to_dict())
        extra = await n8n_header(self.store, self.secrets, tenant_id, config.url)
        owned = http is None
        session = guarded_session(self.egress) if owned else http
        try:
            outcome = await post_signed(session, config.url, body, secret=secret, event_id=event.id,
                                        timeout_s=timeout_s, extra_headers=extra)
        finally:
            if owned:
                await session.close()
        return WebhookTestResult(webhook_id, event.id, outcome.delivered, outcome.status_code, outcome.duration_ms,
                                 _test_error(outcome.delivered, outcome.status_code, outcome.error))

    async def signing_secret(self, tenant_id: str, webhook_id: str) -> str | None:
        config = await self.get(tenant_id, webhook_id)
        return self.secrets.get(config.secret_ref, cached=True)
