"""Calls no process holds any more (its runtime restarted, or its instance was lost): failed, with events.

Used at startup (``CallTracker.recover``, reason ``runtime_restart``) and by the reaper of lost
instances (``runtime.cluster.instances``, reason ``instance_lost``). The row moves to ``failed``
only while it is still in the status it was read in, in the same transaction as its
call.state_changed and voice.call.failed: whoever runs this at the same time (two survivors), each
call fails once, with one pair of events.
"""

from __future__ import annotations

from runtime.events.bus import EventBus, stage_in
from runtime.events.models import CallFailed, Event, StateChanged
from runtime.ids import now_iso
from runtime.store.store import Store

MESSAGES = {
    "runtime_restart": "the runtime restarted during the call",
    "instance_lost": "the instance holding the call stopped renewing its lease",
}


async def fail_stale_call(store: Store, bus: EventBus, row: dict, reason: str) -> bool:
    """Fail the call of ``row`` (as read) with ``reason``; False when someone else moved it on first."""
    now = now_iso()
    async with store.atomic() as tx:
        changed = await tx.voice_calls.update_if(
            row["id"], {"status": "failed", "end_reason": reason, "ended_at": now, "updated_at": now},
            tenant_id=row["tenant_id"], status_in=(row["status"],),
        )
        if changed is None:
            return False
        seq = int(await tx.max_event_seq(row["id"]) or 0)
        events = [Event.of(payload, tenant_id=row["tenant_id"], call_id=row["id"], seq=seq + offset,
                           trace_id=row["trace_id"])
                  for offset, payload in enumerate(
                      (StateChanged(from_state=row["status"], to_state="failed", reason=reason),
                       CallFailed(reason=reason, message=MESSAGES[reason])), start=1)]
        queued = 0
        for event in events:
            queued += await stage_in(tx, event)
    bus.committed(events, queued)
    return True
