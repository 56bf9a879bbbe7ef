"""/api/v1/events/ws: live event subscriptions over a WebSocket (runtime keys)."""

from __future__ import annotations

from runtime.api.endpoint import QueryParam, Route
from runtime.api.event_socket import events_ws

ROUTES = [
    # auth="public": the handler authenticates itself (it also takes ?token=, which browsers need),
    # refuses admin keys and counts the key's realtime rate class before the upgrade.
    Route("GET", "/api/v1/events/ws", events_ws,
          "Subscribe to the tenant's events over a WebSocket (runtime key: Authorization or ?token=)",
          auth="public", tag="events", errors=(400, 401, 403, 429, 503),
          query=(QueryParam("token", "string", "the runtime key, when no Authorization header can be sent"),)),
]
