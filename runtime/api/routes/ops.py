"""Ops: /healthz, /readyz, /metrics and the OpenAPI document (no key needed)."""

from __future__ import annotations

from aiohttp import web

from runtime.api.appkeys import CONTROL, INSTANCE_ID, METRICS, TRACKER
from runtime.api.endpoint import Ctx, Route
from runtime.cluster.link import CLUSTER
from runtime.store import migrate
from runtime.web.responses import json_response


async def healthz(ctx: Ctx) -> dict[str, str]:
    return {"status": "ok"}


async def readyz(ctx: Ctx) -> web.Response:
    """Ready when the database answers, its migrations are current and (cluster mode) NATS is reachable."""
    db = ctx.request.app[CONTROL].store.db
    checks: dict[str, str] = {}
    ready = await db.ping()
    checks["database"] = "ok" if ready else "unreachable"
    if ready:
        status = await migrate.status(db)
        checks["migrations"] = "ok" if status.up_to_date else (
            f"missing {', '.join(map(str, status.missing))}" if status.missing
            else f"at {status.current}, need {status.latest}")
        ready = status.up_to_date
    link = ctx.request.app.get(CLUSTER)
    if link is not None:
        checks["nats"] = "ok" if link.connected else "unreachable"
        ready = ready and link.connected
    tracker = ctx.request.app.get(TRACKER)
    if tracker is not None:
        if not tracker.accepting:
            checks["calls"], ready = "draining", False
        elif tracker.at_capacity:
            checks["calls"], ready = f"at limits.max_calls ({tracker.max_calls})", False
        elif tracker.local_at_capacity:
            checks["calls"], ready = f"local speech engines at limits.local_calls ({tracker.local_calls})", False
        else:
            checks["calls"] = f"{len(tracker.live)} of {tracker.max_calls}"
            if tracker.local_calls is not None:
                checks["local_calls"] = f"{tracker.local_in_use:g} of {tracker.local_calls}"
    return json_response({"ready": ready, "instance_id": ctx.request.app[INSTANCE_ID], "checks": checks},
                         status=200 if ready else 503)


async def metrics(ctx: Ctx) -> web.Response:
    body = ctx.request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(ctx: Ctx) -> web.Response:
    from runtime.api.openapi import openapi_document

    return json_response(openapi_document(ctx.request.app))


ROUTES = [
    Route("GET", "/healthz", healthz, "Liveness", auth="public", tag="ops"),
    Route("GET", "/readyz", readyz, "Readiness: database reachable, migrations current", auth="public",
          tag="ops", errors=(503,)),
    Route("GET", "/metrics", metrics, "Prometheus metrics", auth="public", tag="ops", media_type="text/plain"),
    Route("GET", "/api/v1/openapi.json", openapi, "This OpenAPI document", auth="public", tag="ops"),
]
