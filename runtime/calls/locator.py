"""Where is call X? The one question live call control asks before it acts on a call.

A call lives on the runtime process that holds its media: ``LocalCalls`` answers for this process
(the tracker's live sessions). In cluster mode an operation on a call this process does not hold
goes to the instance that does (runtime.calls.live_ops, runtime.cluster.remote_calls), which
answers with its own ``LocalCalls``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runtime.calls.integrator_sessions import Speaking, Transcribe
    from runtime.calls.session import CallSession
    from runtime.calls.tracker import CallTracker


class CallLocator(Protocol):
    def live_call(self, tenant_id: str, call_id: str) -> CallSession | None:
        """The tenant's live call ``call_id``, or None (not live here, or another tenant's)."""

    def live_calls(self, tenant_id: str) -> list[CallSession]:
        """The tenant's live calls."""

    def ended_session(self, tenant_id: str, session_id: str) -> Transcribe | Speaking | None:
        """A transcribe or speaking session of the tenant's that stopped with its call, if still known."""


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

    def holds(self, target_id: str) -> bool:
        """Whether a call or integrator session of that id (any tenant's) is this process's to answer for."""
        tracker = self.tracker
        if target_id in tracker.live or target_id in tracker.ended_sessions:
            return True
        return any(target_id in s.speakings or target_id in s.transcribes for s in tracker.live.values())

    def ended_session(self, tenant_id: str, session_id: str) -> Transcribe | Speaking | None:
        found = self.tracker.ended_sessions.get(session_id)
        return found if found is not None and found.tenant_id == tenant_id else None
