"""Typed application state (web.AppKey) shared by middlewares and routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from runtime.calls.tracker import CallTracker
    from runtime.config import Settings
    from runtime.control.plane import ControlPlane
    from runtime.events.bus import EventBus
    from runtime.events.delivery import DeliveryWorker
    from runtime.pipeline.engine import ConversationEngine
    from runtime.web.metrics import Metrics
    from runtime.web.ratelimit import RateLimiter

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
CONTROL: web.AppKey[ControlPlane] = web.AppKey("control")
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
INSTANCE_ID: web.AppKey[str] = web.AppKey("instance_id")  # server.instance_id, else hostname:port
INSTANCE_PORT: web.AppKey[int | None] = web.AppKey("instance_port")  # the port it serves on, where known
# A worker of `serve --workers N`: its own loopback listener besides the shared port, so what it
# calls itself (an evaluation's synthetic calls) reaches it and not a sibling worker.
SELF_URL: web.AppKey[str] = web.AppKey("self_url")
ROUTES: web.AppKey[list] = web.AppKey("routes")
BUS: web.AppKey[EventBus] = web.AppKey("bus")
TRACKER: web.AppKey[CallTracker] = web.AppKey("tracker")
DELIVERY: web.AppKey[DeliveryWorker] = web.AppKey("delivery")
EVENT_SOCKETS: web.AppKey[set] = web.AppKey("event_sockets")  # open /api/v1/events/ws sockets (EventSocket)
PIPELINE: web.AppKey[ConversationEngine] = web.AppKey("pipeline")  # builds each call's conversation
