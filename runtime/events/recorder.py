"""Events that are not a call's (an agent promoted, evaluated, a rollout reverted), written by the
control plane in the same transaction as the change they report.

``stage`` writes the event and its webhook outbox rows in the caller's open transaction; once that
commits, ``committed`` hands it to the runtime's bus (WebSocket subscribers, a prompt delivery).
The CLI has no bus: its events are committed all the same and the runtime's delivery worker sends
them to the tenant's webhooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.events.bus import stage_in
from runtime.events.models import Event, Payload
from runtime.store.store import Tables

if TYPE_CHECKING:
    from runtime.events.bus import EventBus


class EventRecorder:
    def __init__(self) -> None:
        self.bus: EventBus | None = None  # set by the runtime; None in the CLI

    async def stage(self, tx: Tables, tenant_id: str, payload: Payload) -> tuple[Event, int]:
        event = Event.of(payload, tenant_id=tenant_id, call_id=None, seq=0, trace_id=None)
        return event, await stage_in(tx, event)

    def committed(self, staged: list[tuple[Event, int]]) -> None:
        for event, queued in staged:
            if self.bus is not None:
                self.bus.committed((event,), queued)

    async def record(self, store: object, tenant_id: str, payload: Payload) -> Event:
        """An event in a transaction of its own."""
        async with store.atomic() as tx:  # type: ignore[attr-defined]
            staged = await self.stage(tx, tenant_id, payload)
        self.committed([staged])
        return staged[0]
