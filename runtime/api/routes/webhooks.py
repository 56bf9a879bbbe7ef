"""/api/v1/webhooks: a tenant's outbound webhook configs; the signing secret is shown once."""

from __future__ import annotations

from typing import Any

from runtime.api.appkeys import DELIVERY, SETTINGS
from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.models import WebhookConfig
from runtime.control.schemas import WebhookCreate, WebhookUpdate
from runtime.control.webhooks import WebhookDelivery, WebhookTestResult


async def create_webhook(ctx: Ctx) -> dict[str, Any]:
    config, secret = await ctx.control.webhooks.create(ctx.tenant, ctx.body)
    return {**config.to_dict(), "signing_secret": secret}


async def list_webhooks(ctx: Ctx):
    return await ctx.control.webhooks.list(ctx.tenant, ctx.page())


async def get_webhook(ctx: Ctx) -> WebhookConfig:
    return await ctx.control.webhooks.get(ctx.tenant, ctx.param("webhook_id"))


async def update_webhook(ctx: Ctx) -> WebhookConfig:
    return await ctx.control.webhooks.update(ctx.tenant, ctx.param("webhook_id"), ctx.body)


async def rotate_secret(ctx: Ctx) -> dict[str, Any]:
    config, secret = await ctx.control.webhooks.rotate_secret(ctx.tenant, ctx.param("webhook_id"))
    return {**config.to_dict(), "signing_secret": secret}


async def delete_webhook(ctx: Ctx) -> None:
    await ctx.control.webhooks.delete(ctx.tenant, ctx.param("webhook_id"))


async def list_deliveries(ctx: Ctx):
    return await ctx.control.webhooks.deliveries(ctx.tenant, ctx.param("webhook_id"), ctx.page())


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
    Route("POST", "/api/v1/webhooks/{webhook_id}/test", test_webhook,
          "Send a signed sample event (topic webhook.test) now: delivered or not, and the answer's status code",
          response=WebhookTestResult, tag="webhooks"),
]
