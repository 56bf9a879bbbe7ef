"""Where is call X? The one question live call control asks before it acts on a call.

A call lives on the runtime process that holds its media. Today that is this process (the
tracker's live sessions); a process of a cluster answers the same question for its peers later
(the scale-out issue), so callers only ever use ``CallLocator``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runtime.calls.session import CallSession
    from runtime.calls.tracker import CallTracker


class CallLocator(Protocol):
    def live_call(self, tenant_id: str, call_id: str) -> CallSession | None:
        """The tenant's live call ``call_id``, or None (not live here, or another tenant's)."""

    def live_calls(self, tenant_id: str) -> list[CallSession]:
        """The tenant's live calls."""


class LocalCalls:
    """Calls held by this process."""

    def __init__(self, tracker: CallTracker) -> None:
        self.tracker = tracker

    def live_call(self, tenant_id: str, call_id: str) -> CallSession | None:
        session = self.tracker.get(call_id)
        if session is None or session.tenant_id != tenant_id or not session.live:
            return None
        return session

    def live_calls(self, tenant_id: str) -> list[CallSession]:
        return [s for s in self.tracker.live.values() if s.tenant_id == tenant_id and s.live]
