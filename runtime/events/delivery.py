"""Signed outbound webhooks through the outbox (``webhook_deliveries``).

The bus writes one outbox row per matching webhook config in the same transaction
as the event. The DeliveryWorker claims due rows (``pending`` and
``next_attempt_at <= now``; on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, on
SQLite through the single writer), marks them ``sending`` and POSTs the stored
event JSON, signed::

    X-Voicectl-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

A 2xx within ``events.webhooks.timeout_s`` is delivered; anything else is retried
with exponential backoff and full jitter (1 s doubling to ``backoff_cap_s``;
``Retry-After`` on 429/503 is honoured, capped) until ``retry_for_s`` after the
event (or its redelivery), or an optional ``attempts`` cap, then the row is
``failed`` (see runtime.events.retry). Every attempt is a ``webhook_delivery_attempts`` row.
Rows left ``sending`` by a process that died are put back to ``pending``.

``disable_after_failures`` deliveries of one webhook in a row ending ``failed``
disable it (status ``disabled``) with a ``webhook.disabled`` event committed in the
same transaction; its deliveries are then ``held``, not tried, until its owner
switches it on again (runtime.control.webhooks), which makes them due.
Secrets (signing secrets, n8n header values) are never logged or stored in rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from runtime.egress.aiohttp_client import guarded_session
from runtime.egress.policy import REFUSED, EgressPolicy, refused
from runtime.events.bus import stage_in
from runtime.events.models import Event, WebhookDisabled
from runtime.events.retry import RetryPolicy
from runtime.ids import new_id, now_iso, parse_iso
from runtime.store.errors import ForeignKeyViolation, StoreError

if TYPE_CHECKING:
    from runtime.config import WebhookDeliverySettings
    from runtime.events.bus import EventBus
    from runtime.secrets import SecretStore
    from runtime.store.store import Store, Tables

log = logging.getLogger("voicectl.webhooks")

USER_AGENT = "voicectl-webhooks/1"
SIGNATURE_HEADER = "X-Voicectl-Signature"
EVENT_ID_HEADER = "X-Voicectl-Event-Id"
TEST_TOPIC = "webhook.test"
_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"


# Signing


def sign(secret: str, body: bytes, t: int) -> str:
    """The X-Voicectl-Signature value for ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str | None, body: bytes, tolerance_s: float = 300, *, now: float | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` with ``secret``, made within ``tolerance_s``."""
    if not header:
        return False
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            t = int(value)
        elif name == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, c) for c in candidates)


# One signed POST


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def post_signed(
    http: aiohttp.ClientSession, url: str, body: bytes, *, secret: str, event_id: str, timeout_s: float,
    extra_headers: dict[str, str] | None = None,
) -> Outcome:
    """POST ``body`` signed with ``secret``; the whole exchange must finish within ``timeout_s``."""
    t = int(time.time())
    headers = dict(extra_headers or {})
    headers.update({
        "Content-Type": "application/json", EVENT_ID_HEADER: event_id, SIGNATURE_HEADER: sign(secret, body, t),
        "User-Agent": USER_AGENT,
    })
    started = time.perf_counter()
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                await resp.read()
    except TimeoutError:
        error = f"no response within {timeout_s:g} s"
    except aiohttp.ClientError as exc:
        error = REFUSED if refused(exc) else f"{type(exc).__name__}: {exc}"[:500]
    except ValueError as exc:  # e.g. an unusable header name or value
        error = f"invalid request: {exc}"[:500]
    duration_ms = int((time.perf_counter() - started) * 1000)
    if error is None and status is not None and not 200 <= status < 300:
        error = f"HTTP {status}"
    return Outcome(status, error, duration_ms, retry_after)


def url_has_prefix(url: str, prefix: str) -> bool:
    """``prefix`` is a prefix of ``url`` ending at a URL boundary (so https://n8n.example never
    matches https://n8n.example.evil)."""
    if not prefix or not url.startswith(prefix):
        return False
    return len(url) == len(prefix) or prefix.endswith("/") or url[len(prefix)] in "/?#"


async def n8n_header(store: Store, secrets: SecretStore, tenant_id: str, url: str) -> dict[str, str]:
    """The tenant's n8n header when its n8n credential's url is a prefix of ``url``."""
    cred = await store.credentials.find(tenant_id=tenant_id, provider="n8n")
    if cred is None or cred["secret_ref"] is None:
        return {}
    fields = cred["fields"] or {}
    prefix, name = fields.get("url"), fields.get("header_name")
    if not prefix or not name or not url_has_prefix(url, prefix):
        return {}
    value = await secrets.get(cred["secret_ref"], cached=True, version=cred["updated_at"])
    return {name: value} if value else {}


# The worker


def _iso_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime(_ISO)


class DeliveryWorker:
    """Drains the outbox: wakes on ``wake()`` (the bus's on_outbox) and polls for due retries.
    ``bus``: where a webhook.disabled event is handed out once committed (without one it is
    stored and delivered to webhooks, but no in-process subscriber sees it)."""

    def __init__(
        self, store: Store, secrets: SecretStore, config: WebhookDeliverySettings, *,
        poll_s: float = 1.0, base_delay_s: float = 1.0, jitter: Callable[[], float] = random.random,
        egress: EgressPolicy | None = None, bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.config = config
        self.egress = egress or EgressPolicy()  # where tenants' webhook URLs may connect (security.egress)
        self.concurrency = config.concurrency
        self.per_tenant = min(config.per_tenant, config.concurrency)
        self.poll_s = poll_s
        self.policy = RetryPolicy.from_settings(config, first_delay_s=base_delay_s)
        self.bus = bus
        self._jitter = jitter
        # A row still 'sending' this long after its claim belongs to a process that died.
        self.lease_s = config.timeout_s + 30
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[asyncio.Task[None], dict[str, Any]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._orphans: list[dict[str, Any]] = []  # claimed rows whose task died: back to pending
        self._http: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the delivery worker is not started")
        return self._http

    async def start(self) -> None:
        now = now_iso()
        # SQLite has one writer process, so every 'sending' row is a dead run's; on PostgreSQL
        # other runtimes may be sending right now: only rows past their lease.
        cutoff = now if self.store.db.dialect == "sqlite" else _iso_in(-self.lease_s)
        requeued = await self.store.requeue_stale_deliveries(cutoff, now)
        if requeued:
            log.warning("webhook deliveries left sending by a previous run are pending again",
                        extra={"deliveries": requeued})
        self._http = guarded_session(self.egress, limit=self.concurrency)
        self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    def wake(self) -> None:
        self._wake.set()

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before the attempt after ``attempt`` (1-based): full jitter over 1 s doubling to the cap."""
        return self.policy.backoff(attempt, self._jitter(), retry_after)

    async def _run(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopping:
            self._wake.clear()
            if self._orphans:
                await self._release_orphans()
            free = self.concurrency - len(self._inflight)
            claimed: list[dict[str, Any]] = []
            if free > 0:
                try:
                    claimed = await self.store.claim_deliveries(now_iso(), free, per_tenant=self.per_tenant,
                                                                busy=self._busy_tenants())
                except StoreError as exc:
                    log.error("cannot claim webhook deliveries", extra={"error": str(exc)})
                for row in claimed:
                    task = asyncio.create_task(self._deliver(row))
                    self._inflight[task] = row
                    task.add_done_callback(self._finished)
            if claimed and len(claimed) == free:
                continue  # there may be more due right now
            if time.monotonic() - last_sweep > self.lease_s / 2:
                last_sweep = time.monotonic()
                try:
                    await self.store.requeue_stale_deliveries(_iso_in(-self.lease_s), now_iso())
                except StoreError as exc:
                    log.error("cannot requeue stale webhook deliveries", extra={"error": str(exc)})
            if self._wake.is_set():
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass

    def _busy_tenants(self) -> Counter[str]:
        return Counter(row["tenant_id"] for row in self._inflight.values())

    def _finished(self, task: asyncio.Task[None]) -> None:
        row = self._inflight.pop(task, None)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("webhook delivery crashed", exc_info=task.exception())
            if row is not None:
                self._orphans.append(row)
        self._wake.set()

    async def _release_orphans(self) -> None:
        orphans, self._orphans = self._orphans, []
        now = now_iso()
        for row in orphans:
            try:
                await self.store.release_delivery(row["id"], now)
            except StoreError as exc:  # the lease sweep picks it up later
                log.error("cannot release a webhook delivery", extra={"delivery_id": row["id"], "error": str(exc)})

    def _wake_in(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            self._timers.discard(handle)  # type: ignore[arg-type]
            self._wake.set()

        handle = loop.call_later(max(0.0, seconds), fire)
        self._timers.add(handle)

    async def _deliver(self, row: dict[str, Any]) -> None:
        tenant_id, delivery_id = row["tenant_id"], row["id"]
        hook = await self.store.webhook_configs.get(row["webhook_id"], tenant_id=tenant_id)
        if hook is None:
            return  # deleted: its deliveries went with it (cascade)
        if not hook["active"]:
            await self.store.webhook_deliveries.update(delivery_id, {
                "status": "skipped", "next_attempt_at": None, "last_error": "webhook is disabled",
                "updated_at": now_iso(),
            }, tenant_id=tenant_id)
            return
        if hook["status"] == "disabled":
            now = now_iso()
            if not await self.store.hold_delivery(delivery_id, hook["id"], now):
                await self.store.release_delivery(delivery_id, now)  # switched on meanwhile: due again
            return
        secret = await self.secrets.get(hook["secret_ref"], cached=True, version=hook["updated_at"])
        if secret is None:
            outcome = Outcome(None, "the webhook's signing secret is missing", 0)
        else:
            extra = await n8n_header(self.store, self.secrets, tenant_id, hook["url"])
            body = orjson.dumps(row["payload"])
            outcome = await post_signed(self.http, hook["url"], body, secret=secret, event_id=row["event_id"],
                                        timeout_s=self.config.timeout_s, extra_headers=extra)
        attempt = row["attempts"] + 1
        now = now_iso()
        changes: dict[str, Any] = {"attempts": attempt, "last_status_code": outcome.status_code,
                                   "last_error": outcome.error, "updated_at": now}
        delay: float | None = None
        if outcome.delivered:
            changes.update(status="delivered", delivered_at=now, next_attempt_at=None)
        else:
            # The stop rule counts from the event, or from the redelivery that restarted the retries.
            began = parse_iso(row["retry_from"] or row["created_at"])
            delay = None if outcome.error == REFUSED else self.policy.next_delay(  # the policy refuses: no retry helps
                attempt - row["attempts_before"], (parse_iso(now) - began).total_seconds(), self._jitter(),
                outcome.retry_after)
            if delay is None:
                changes.update(status="failed", next_attempt_at=None)
            else:
                changes.update(status="pending", next_attempt_at=_iso_in(delay))
        disabled: tuple[Event, int] | None = None
        try:
            async with self.store.atomic() as tx:
                await tx.webhook_delivery_attempts.insert({
                    "id": new_id("dat"), "tenant_id": tenant_id, "delivery_id": delivery_id, "attempt": attempt,
                    "status_code": outcome.status_code, "error": outcome.error, "duration_ms": outcome.duration_ms,
                    "created_at": now,
                })
                await tx.webhook_deliveries.update(delivery_id, changes, tenant_id=tenant_id)
                if outcome.delivered:
                    # The count as read before the request (one counted meanwhile: the next success resets it).
                    if hook["consecutive_failures"]:
                        await tx.reset_webhook_failures(hook["id"])
                elif delay is None:
                    disabled = await self._count_failure(tx, hook, outcome)
        except ForeignKeyViolation:
            return  # the webhook (and so this delivery) was deleted meanwhile
        if outcome.delivered:
            self.delivered += 1
        elif delay is None:
            self.failed += 1
            log.warning("webhook delivery failed for good",
                        extra={"tenant_id": tenant_id, "delivery_id": delivery_id, "attempts": attempt,
                               "status_code": outcome.status_code})
        else:
            self._wake_in(delay)
        if disabled is not None:
            event, queued = disabled
            log.warning("webhook disabled after deliveries in a row failed",
                        extra={"tenant_id": tenant_id, "webhook_id": hook["id"], "failures": event.data["failures"]})
            if self.bus is not None:
                self.bus.committed((event,), queued)
            elif queued:
                self.wake()

    async def _count_failure(self, tx: Tables, hook: dict[str, Any], outcome: Outcome) -> tuple[Event, int] | None:
        """Count a delivery of ``hook`` that failed for good; at ``disable_after_failures`` in a row,
        disable the webhook and stage its webhook.disabled event in ``tx`` (returned with its outbox
        row count, to hand out after the commit)."""
        counted = await tx.count_webhook_failure(hook["id"])
        limit = self.config.disable_after_failures
        if counted is None or limit is None or counted["consecutive_failures"] < limit or counted["status"] != "active":
            return None
        event = Event.of(WebhookDisabled(hook["id"], counted["consecutive_failures"], outcome.status_code,
                                         outcome.error), tenant_id=hook["tenant_id"], call_id=None, seq=0, trace_id=None)
        queued = await stage_in(tx, event)  # first: the webhook's own copy is then held with the rest
        await tx.disable_webhook(hook["id"], event.ts)
        return event, queued

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming; let in-flight requests finish (up to ``grace_s``), put the rest back to pending."""
        self._stopping = True
        self._wake.set()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        grace = self.config.timeout_s + 1 if grace_s is None else grace_s
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._orphans.extend(self._inflight.values())
        self._inflight.clear()
        await self._release_orphans()
        if self._http is not None:
            await self._http.close()
            self._http = None
