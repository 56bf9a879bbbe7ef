"""/api/v1/webhooks: a tenant's outbound webhook configs; the signing secret is shown once."""

from __future__ import annotations

from typing import Any

from runtime.api.appkeys import DELIVERY, SETTINGS
from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.models import WebhookConfig
from runtime.control.redelivery import WebhookRedeliver
from runtime.control.schemas import WebhookCreate, WebhookUpdate
from runtime.control.webhooks import RedeliveryQueued, WebhookDelivery, WebhookTestResult


async def create_webhook(ctx: Ctx) -> dict[str, Any]:
    config, secret = await ctx.control.webhooks.create(ctx.tenant, ctx.body)
    return {**config.to_dict(), "signing_secret": secret}


async def list_webhooks(ctx: Ctx):
    return await ctx.control.webhooks.list(ctx.tenant, ctx.page())


async def get_webhook(ctx: Ctx) -> WebhookConfig:
    return await ctx.control.webhooks.get(ctx.tenant, ctx.param("webhook_id"))


def _wake_delivery(ctx: Ctx) -> None:
    """Deliveries made due now go out at once, not at the worker's next poll."""
    worker = ctx.request.app.get(DELIVERY)
    if worker is not None:
        worker.wake()


async def update_webhook(ctx: Ctx) -> WebhookConfig:
    config = await ctx.control.webhooks.update(ctx.tenant, ctx.param("webhook_id"), ctx.body)
    _wake_delivery(ctx)  # switched on: its held deliveries are due
    return config


async def rotate_secret(ctx: Ctx) -> dict[str, Any]:
    config, secret = await ctx.control.webhooks.rotate_secret(ctx.tenant, ctx.param("webhook_id"))
    return {**config.to_dict(), "signing_secret": secret}


async def delete_webhook(ctx: Ctx) -> None:
    await ctx.control.webhooks.delete(ctx.tenant, ctx.param("webhook_id"))


async def list_deliveries(ctx: Ctx):
    return await ctx.control.webhooks.deliveries(ctx.tenant, ctx.param("webhook_id"), ctx.page())


async def redeliver(ctx: Ctx) -> RedeliveryQueued:
    queued = await ctx.control.webhooks.redeliver(ctx.tenant, ctx.param("webhook_id"), ctx.body)
    _wake_delivery(ctx)
    return queued


async def test_webhook(ctx: Ctx) -> WebhookTestResult:
    app = ctx.request.app
    worker = app.get(DELIVERY)
    return await ctx.control.webhooks.send_test(
        ctx.tenant, ctx.param("webhook_id"), timeout_s=app[SETTINGS].events.webhooks.timeout_s,
        http=worker.http if worker is not None else None,
    )


ROUTES = [
    Route("GET", "/api/v1/webhooks", list_webhooks, "List webhook configs", response=WebhookConfig,
          paged=True, query=PAGE, tag="webhooks"),
    Route("POST", "/api/v1/webhooks", create_webhook, "Create a webhook config (signing secret shown once)",
          body=WebhookCreate, status=201, response=WebhookConfig, tag="webhooks"),
    Route("GET", "/api/v1/webhooks/{webhook_id}", get_webhook, "Show a webhook config",
          response=WebhookConfig, tag="webhooks"),
    Route("PATCH", "/api/v1/webhooks/{webhook_id}", update_webhook, "Update a webhook config",
          body=WebhookUpdate, response=WebhookConfig, tag="webhooks"),
    Route("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret", rotate_secret,
          "Replace the signing secret (shown once)", response=WebhookConfig, tag="webhooks"),
    Route("DELETE", "/api/v1/webhooks/{webhook_id}", delete_webhook, "Delete a webhook config",
          status=204, tag="webhooks"),
    Route("GET", "/api/v1/webhooks/{webhook_id}/deliveries", list_deliveries,
          "List the webhook's deliveries, newest first, with their attempts", response=WebhookDelivery,
          paged=True, query=PAGE, tag="webhooks"),
    Route("POST", "/api/v1/webhooks/{webhook_id}/redeliver", redeliver,
          "Send deliveries again: exactly one of event_id, since (ISO-8601 or 2h/30m/1d) or failed: true; "
          "a disabled webhook is switched back on", body=WebhookRedeliver, status=202, response=RedeliveryQueued,
          tag="webhooks", errors=(404, 409)),
    Route("POST", "/api/v1/webhooks/{webhook_id}/test", test_webhook,
          "Send a signed sample event (topic webhook.test) now: delivered or not, and the answer's status code",
          response=WebhookTestResult, tag="webhooks"),
]
