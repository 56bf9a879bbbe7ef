"""All API routes, gathered from one module per noun."""

from __future__ import annotations

from runtime.api.endpoint import Route


def all_routes() -> list[Route]:
    from runtime.api.routes import (
        agents,
        bookings,
        callbacks,
        calls,
        credentials,
        evals,
        events,
        goto,
        integrator,
        keys,
        livekit,
        numbers,
        ops,
        recordings,
        tenants,
        twilio,
        voices,
        webhooks,
        webrtc,
    )

    routes: list[Route] = []
    for module in (ops, tenants, keys, agents, evals, voices, numbers, credentials, webhooks, calls, callbacks,
                   bookings, integrator, recordings, twilio, goto, livekit, webrtc, events):
        routes.extend(module.ROUTES)
    return routes
