"""What a bridge may use of the running appliance, in one object built once at startup.

Bridges take these from here instead of reaching into the app's state key by key, so the
runtime's web layer (``runtime.api``) builds them and the bridges never import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from runtime.calls.tracker import CallTracker
    from runtime.config import Settings
    from runtime.control.plane import ControlPlane
    from runtime.events.bus import EventBus
    from runtime.pipeline.engine import ConversationEngine
    from runtime.signing_keys import SigningKeys
    from runtime.web.metrics import Metrics
    from runtime.web.ratelimit import RateLimiter


@dataclass(frozen=True, slots=True)
class BridgeServices:
    settings: Settings
    control: ControlPlane
    tracker: CallTracker
    bus: EventBus
    conversations: ConversationEngine  # builds each call's conversation
    metrics: Metrics
    rate_limiter: RateLimiter
    keys: SigningKeys  # browser-token, stream-token and outbound-ref keys, derived from the master key


SERVICES: web.AppKey[BridgeServices] = web.AppKey("bridge_services")


def services(app: web.Application) -> BridgeServices:
    """The bridges' services of ``app`` (set once the control plane and call engine are up)."""
    return app[SERVICES]
