"""Webhook configs: a tenant's URL, event filter and signing secret (shown once, kept in the keyring)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.models import Public, WebhookConfig, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.redelivery import WebhookRedeliver
from runtime.control.schemas import WebhookCreate, WebhookUpdate
from runtime.control.tenant_urls import check_url
from runtime.egress.policy import REFUSED, EgressPolicy
from runtime.events.topics import TOPICS, unknown_patterns
from runtime.ids import new_id, now_iso
from runtime.secrets import SecretStore
from runtime.store.store import Store, Tables

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
    status: str  # pending | sending | delivered | failed | skipped | held (its webhook is disabled)
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


@dataclass(frozen=True)
class RedeliveryQueued(Public):
    queued: int  # deliveries due again now (held ones of a disabled webhook switched back on included)


def delivery_from_rows(row: dict[str, Any], attempts: list[dict[str, Any]]) -> WebhookDelivery:
    """A delivery as of its row: attempts read after it that a later commit added (the row and its
    attempts are two reads) are left out, so the log never runs ahead of the status."""
    seen = [a for a in attempts if a["attempt"] <= row["attempts"]]
    return from_row(WebhookDelivery, {**row, "attempt_log": [from_row(DeliveryAttempt, a) for a in seen]})


def config_from_row(row: dict[str, Any]) -> WebhookConfig:
    """The public view: status ``inactive`` when its owner switched it off, else the stored
    ``active`` or ``disabled``."""
    return from_row(WebhookConfig, {**row, "status": "inactive" if not row["active"] else row["status"]})


# Statuses a redelivery puts back in the queue (never 'sending': that attempt is under way).
_ANY_SETTLED = ("pending", "delivered", "failed", "skipped", "held")
_NOT_DELIVERED = ("failed", "skipped", "held")


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
        await self.secrets.set(ref, signing_secret)
        now = now_iso()
        try:
            row = await self.store.webhook_configs.insert({
                "id": webhook_id, "tenant_id": tenant_id, **data.model_dump(), "secret_ref": ref,
                "created_at": now, "updated_at": now, "status": "active", "consecutive_failures": 0,
            })
        except BaseException:
            await self.secrets.delete(ref)  # no orphan secret for a row that was never written
            raise
        return config_from_row(row), signing_secret

    async def get(self, tenant_id: str, webhook_id: str) -> WebhookConfig:
        row = await self.store.webhook_configs.get(webhook_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": webhook_id})
        return config_from_row(row)

    async def list(self, tenant_id: str, page: PageRequest) -> Page[WebhookConfig]:
        rows, total = await self.store.webhook_configs.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset)
        return Page([config_from_row(r) for r in rows], total, page.limit, page.offset)

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
        async with self.store.atomic() as tx:
            row = await tx.webhook_configs.update(webhook_id, changes, tenant_id=tenant_id)
            if row is None:
                raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": webhook_id})
            if changes.get("active") is True:
                row, _ = await self._switch_on(tx, tenant_id, webhook_id)
        return config_from_row(row)

    @staticmethod
    async def _switch_on(tx: Tables, tenant_id: str, webhook_id: str) -> tuple[dict[str, Any], int]:
        """Status active and the failure count reset; the deliveries held while it was disabled are
        due now (how many: the second value)."""
        now = now_iso()
        # The config row first: its lock makes a delivery being held right now wait, then see 'active'.
        row = await tx.webhook_configs.update(webhook_id, {
            "status": "active", "consecutive_failures": 0, "disabled_at": None, "updated_at": now,
        }, tenant_id=tenant_id)
        released = await tx.requeue_webhook_deliveries(tenant_id, webhook_id, now, statuses=("held",))
        return row, released

    async def redeliver(self, tenant_id: str, webhook_id: str, selection: WebhookRedeliver) -> RedeliveryQueued:
        """Put the selected deliveries back in the queue, due now, with fresh retries (the same event
        id, so receivers that deduplicate can). A disabled webhook is switched back on."""
        config = await self.get(tenant_id, webhook_id)
        if not config.active:
            raise Conflict(f"webhook {webhook_id} is switched off: switch it on first (`voicectl webhook update "
                           f"{webhook_id} --active`, or PATCH active: true)", {"webhook_id": webhook_id})
        now = now_iso()
        async with self.store.atomic() as tx:
            if selection.event_id is not None and await tx.webhook_deliveries.find(
                    tenant_id=tenant_id, webhook_id=webhook_id, event_id=selection.event_id) is None:
                raise NotFound(f"webhook {webhook_id} has no delivery of event {selection.event_id}",
                               {"webhook_id": webhook_id, "event_id": selection.event_id})
            queued = await tx.requeue_webhook_deliveries(
                tenant_id, webhook_id, now, statuses=_NOT_DELIVERED if selection.failed else _ANY_SETTLED,
                event_id=selection.event_id, since=selection.since)
            if config.status == "disabled":
                queued += (await self._switch_on(tx, tenant_id, webhook_id))[1]
        return RedeliveryQueued(queued)

    async def rotate_secret(self, tenant_id: str, webhook_id: str) -> tuple[WebhookConfig, str]:
        config = await self.get(tenant_id, webhook_id)
        signing_secret = "whsec_" + secrets.token_urlsafe(32)
        await self.secrets.set(config.secret_ref, signing_secret)
        row = await self.store.webhook_configs.update(webhook_id, {"updated_at": now_iso()}, tenant_id=tenant_id)
        return config_from_row(row), signing_secret

    async def delete(self, tenant_id: str, webhook_id: str) -> None:
        config = await self.get(tenant_id, webhook_id)
        await self.store.webhook_configs.delete(webhook_id, tenant_id=tenant_id)
        await self.secrets.delete(config.secret_ref)

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
        secret = await self.secrets.get(config.secret_ref, cached=True, version=config.updated_at)
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
        return await self.secrets.get(config.secret_ref, cached=True, version=config.updated_at)
