"""A call's transcribe and speaking sessions (seed 001's custom integration, in our naming).

- Transcribe: the call's final utterances of a direction (``in`` the caller's, ``out`` the agent's,
  ``both``) carry its id as ``transcribe_id`` in ``transcript.created``. An external brain gets one
  (direction ``in``) when its call connects; ``POST /api/v1/transcribes`` starts others.
- Speaking: the integrator's mouth on a call: ``say`` queues a line spoken as the agent's own,
  ``flush`` cuts what is being said and drops the queue, ``stop`` ends the session. Status
  ``initiating -> active -> stopped``; on this runtime's own TTS it is active at once.

They live with their call on the process that holds it (CallSession.transcribes / .speakings) and
stop with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.ids import new_id, now_iso

DIRECTIONS = ("in", "out", "both")
ACTIVE, STOPPED, INITIATING = "active", "stopped", "initiating"
MAX_PER_CALL = 16  # sessions of each kind one call may hold


@dataclass(eq=False)
class Transcribe:
    call_id: str
    tenant_id: str
    direction: str
    implicit: bool = False
    id: str = field(default_factory=lambda: new_id("trs"))
    status: str = ACTIVE
    created_at: str = field(default_factory=now_iso)
    stopped_at: str | None = None

    def covers(self, direction: str) -> bool:
        return self.status == ACTIVE and self.direction in (direction, "both")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "reference_type": "call", "reference_id": self.call_id, "direction": self.direction,
                "status": self.status, "implicit": self.implicit, "created_at": self.created_at,
                "stopped_at": self.stopped_at}


@dataclass(eq=False)
class Speaking:
    call_id: str
    tenant_id: str
    direction: str
    provider: str | None
    voice_id: str | None
    language: str | None
    id: str = field(default_factory=lambda: new_id("spk"))
    status: str = INITIATING
    said: int = 0  # lines accepted by say
    tts: Any = None  # its own engine when it names another provider, voice or language than its call
    created_at: str = field(default_factory=now_iso)
    stopped_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "reference_type": "call", "reference_id": self.call_id, "direction": self.direction,
                "provider": self.provider, "voice_id": self.voice_id, "language": self.language,
                "status": self.status, "said": self.said, "created_at": self.created_at,
                "stopped_at": self.stopped_at}


def transcribe_for(transcribes: dict[str, Transcribe], direction: str) -> str | None:
    """The id of the call's active transcribe covering ``direction`` (the oldest), if any."""
    for transcribe in transcribes.values():
        if transcribe.covers(direction):
            return transcribe.id
    return None
