"""The event topics: DESIGN.md's first 16, then the project's own (each with a typed payload in
models.py and a row in the README's event table)."""

from __future__ import annotations

from fnmatch import fnmatchcase

TOPICS: tuple[str, ...] = (
    "voice.call.started",
    "call.connected",
    "call.state_changed",
    "speech.started",
    "speech.ended",
    "transcript.interim",
    "transcript.created",
    "dtmf.received",
    "agent.interrupted",
    "tool.called",
    "transfer.requested",
    "turn.latency",
    "call.duration_warning",
    "provider.failed_over",
    "voice.call.completed",
    "voice.call.failed",
    "webhook.disabled",
    "transcription.started",
    "transcription.stopped",
    "speaking.started",
    "speaking.stopped",
    "call.machine_detected",
    "call.carrier_skipped",
    "callback.created",
    "callback.overdue",
    "callback.completed",
    "agent.evaluated",
    "agent.promoted",
    "agent.rollout_started",
    "agent.rollout_stopped",
    "agent.rollout_reverted",
)


def matches(topic: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Shell-style glob match of a topic against any of the patterns."""
    return any(fnmatchcase(topic, p) for p in patterns)


def unknown_patterns(patterns: list[str]) -> list[str]:
    """Patterns that match no topic at all (almost always a typo)."""
    return [p for p in patterns if not any(fnmatchcase(t, p) for t in TOPICS)]
