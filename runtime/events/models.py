"""Typed events: one payload dataclass per topic (runtime.events.topics), wrapped in an Event envelope.

Every event carries id, tenant_id, call_id, a per-call sequence number, a
timestamp and a trace id. ``Event.to_dict()`` is the wire shape used by the
store, WebSocket subscribers and outbound webhooks alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from runtime.ids import new_id, now_iso


@dataclass(frozen=True)
class Payload:
    topic: ClassVar[str] = ""


@dataclass(frozen=True)
class CallStarted(Payload):
    topic: ClassVar[str] = "voice.call.started"
    provider: str
    direction: str
    from_number: str | None
    to_number: str | None
    agent_id: str | None
    agent_version: int | None


@dataclass(frozen=True)
class CallConnected(Payload):
    topic: ClassVar[str] = "call.connected"
    provider: str


@dataclass(frozen=True)
class StateChanged(Payload):
    topic: ClassVar[str] = "call.state_changed"
    from_state: str
    to_state: str
    reason: str | None = None


@dataclass(frozen=True)
class SpeechStarted(Payload):
    topic: ClassVar[str] = "speech.started"
    role: str = "caller"
    offset_ms: int = 0


@dataclass(frozen=True)
class SpeechEnded(Payload):
    topic: ClassVar[str] = "speech.ended"
    role: str = "caller"
    offset_ms: int = 0


@dataclass(frozen=True)
class TranscriptInterim(Payload):
    topic: ClassVar[str] = "transcript.interim"
    role: str
    text: str


@dataclass(frozen=True)
class TranscriptCreated(Payload):
    topic: ClassVar[str] = "transcript.created"
    role: str
    text: str
    start_ms: int | None = None
    end_ms: int | None = None
    interrupted: bool = False
    direction: str | None = None  # in: the caller's words; out: the agent's
    transcribe_id: str | None = None  # the call's transcribe session of that direction, if any
    # A caller utterance's pieces, in order: {"text", "confidence"} (confidence 0-1, or None when the
    # engine gives none); None for the agent's lines.
    segments: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class DtmfReceived(Payload):
    topic: ClassVar[str] = "dtmf.received"
    digit: str


@dataclass(frozen=True)
class AgentInterrupted(Payload):
    topic: ClassVar[str] = "agent.interrupted"
    heard_text: str = ""
    played_ms: int = 0


@dataclass(frozen=True)
class ToolCalled(Payload):
    topic: ClassVar[str] = "tool.called"
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    latency_ms: int | None = None


@dataclass(frozen=True)
class TransferRequested(Payload):
    topic: ClassVar[str] = "transfer.requested"
    target: str
    reason: str | None = None


@dataclass(frozen=True)
class TurnLatency(Payload):
    topic: ClassVar[str] = "turn.latency"
    stt_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_audio_ms: float | None = None
    first_frame_ms: float | None = None
    v2v_ms: float | None = None  # the caller's last speech frame -> the reply's first audio frame


@dataclass(frozen=True)
class DurationWarning(Payload):
    topic: ClassVar[str] = "call.duration_warning"
    remaining_s: int
    limit_s: int


@dataclass(frozen=True)
class ProviderFailedOver(Payload):
    topic: ClassVar[str] = "provider.failed_over"
    modality: str
    from_provider: str
    to_provider: str
    reason: str


@dataclass(frozen=True)
class CallCompleted(Payload):
    topic: ClassVar[str] = "voice.call.completed"
    reason: str
    hangup_by: str | None
    duration_ms: int


@dataclass(frozen=True)
class CallFailed(Payload):
    topic: ClassVar[str] = "voice.call.failed"
    reason: str
    message: str | None = None


@dataclass(frozen=True)
class CarrierSkipped(Payload):
    """The bridge ended or transferred the call on the media side, without the carrier's API."""

    topic: ClassVar[str] = "call.carrier_skipped"
    action: str  # hangup | transfer
    reason: str  # evaluation (a synthetic call) | placeholder_credential (the demo's stand-in account)


@dataclass(frozen=True)
class MachineDetected(Payload):
    """Who answered an outbound call, as the carrier's answering-machine detection reports it."""

    topic: ClassVar[str] = "call.machine_detected"
    answered_by: str  # human | machine | fax | unknown
    detection_ms: int | None = None


@dataclass(frozen=True)
class WebhookDisabled(Payload):
    """A webhook config stopped delivering after ``failures`` deliveries in a row failed for good."""

    topic: ClassVar[str] = "webhook.disabled"
    webhook_id: str
    failures: int
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class TranscriptionStarted(Payload):
    """A transcribe session began (implicit for an external brain, or POST /api/v1/transcribes)."""

    topic: ClassVar[str] = "transcription.started"
    transcribe_id: str
    direction: str


@dataclass(frozen=True)
class TranscriptionStopped(Payload):
    topic: ClassVar[str] = "transcription.stopped"
    transcribe_id: str
    reason: str


@dataclass(frozen=True)
class SpeakingStarted(Payload):
    """A speaking session is active: ``/say`` is spoken on the call."""

    topic: ClassVar[str] = "speaking.started"
    speaking_id: str


@dataclass(frozen=True)
class SpeakingStopped(Payload):
    topic: ClassVar[str] = "speaking.stopped"
    speaking_id: str
    reason: str


@dataclass(frozen=True)
class CallbackCreated(Payload):
    """A callback task joined the tenant's queue (the event's call_id is null; the task's call is here)."""

    topic: ClassVar[str] = "callback.created"
    callback_id: str
    call_id: str | None
    number: str
    reason: str | None
    source: str  # tool | failed_call | abandoned_call | after_hours
    due_at: str
    scheduled_at: str | None = None


@dataclass(frozen=True)
class CallbackOverdue(Payload):
    """An open or scheduled callback task passed its due time (once per task)."""

    topic: ClassVar[str] = "callback.overdue"
    callback_id: str
    call_id: str | None
    number: str
    due_at: str
    status: str
    assignee: str | None = None


@dataclass(frozen=True)
class CallbackCompleted(Payload):
    """A callback task was closed: done (by hand, or a callback call answered) or canceled."""

    topic: ClassVar[str] = "callback.completed"
    callback_id: str
    call_id: str | None
    status: str  # done | canceled
    disposition: str | None
    attempts: int
    last_call_id: str | None = None


@dataclass(frozen=True)
class AgentEvaluated(Payload):
    """An evaluation run finished (runtime.evals): its score and whether every scenario passed."""

    topic: ClassVar[str] = "agent.evaluated"
    evaluation_id: str
    agent_id: str
    version: int
    suite_id: str | None
    suite_sha256: str
    score: float | None
    passed: bool
    scenarios: int
    failed: int
    busy: int


@dataclass(frozen=True)
class AgentPromoted(Payload):
    """A version became the agent's active one: who did it and, when the gate was overridden, why."""

    topic: ClassVar[str] = "agent.promoted"
    agent_id: str
    version: int
    previous_version: int | None
    by: str
    forced: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class RolloutStarted(Payload):
    topic: ClassVar[str] = "agent.rollout_started"
    rollout_id: str
    agent_id: str
    candidate_version: int
    base_version: int
    percent: int
    by: str


@dataclass(frozen=True)
class RolloutStopped(Payload):
    """A rollout ended without a breach: stopped, superseded by a promotion, or promoted itself."""

    topic: ClassVar[str] = "agent.rollout_stopped"
    rollout_id: str
    agent_id: str
    candidate_version: int
    reason: str  # stopped | promoted | superseded
    by: str


@dataclass(frozen=True)
class RolloutReverted(Payload):
    """A stop condition tripped: every new call goes to the promoted version again."""

    topic: ClassVar[str] = "agent.rollout_reverted"
    rollout_id: str
    agent_id: str
    candidate_version: int
    base_version: int
    tripped: str  # the conditions that tripped, comma-separated (failure_rate, transfer_rate, p95_first_audio_ms)
    calls: int
    failure_rate: float
    transfer_rate: float
    p95_first_audio_ms: float | None


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.topic: cls
    for cls in (CallStarted, CallConnected, StateChanged, SpeechStarted, SpeechEnded, TranscriptInterim,
                TranscriptCreated, DtmfReceived, AgentInterrupted, ToolCalled, TransferRequested, TurnLatency,
                DurationWarning, ProviderFailedOver, CallCompleted, CallFailed, WebhookDisabled,
                TranscriptionStarted, TranscriptionStopped, SpeakingStarted, SpeakingStopped, MachineDetected,
                CarrierSkipped,
                CallbackCreated, CallbackOverdue, CallbackCompleted,
                AgentEvaluated, AgentPromoted, RolloutStarted, RolloutStopped, RolloutReverted)
}


# asdict() deep-copies recursively (~15 us for a five-field payload); nearly every payload and
# event data is flat, so a dict of its fields is the same result. Anything else goes through asdict.
_ATOMS = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _flat(data: dict[str, Any]) -> bool:
    return all(type(value) in _ATOMS for value in data.values())


def payload_dict(payload: Payload) -> dict[str, Any]:
    """``asdict(payload)``, faster for flat payloads."""
    cls = type(payload)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    data = {name: getattr(payload, name) for name in names}
    return data if _flat(data) else asdict(payload)


@dataclass(frozen=True)
class Event:
    id: str
    topic: str
    tenant_id: str
    call_id: str | None
    seq: int
    ts: str
    trace_id: str | None
    data: dict[str, Any]

    @classmethod
    def of(cls, payload: Payload, *, tenant_id: str, call_id: str | None, seq: int, trace_id: str | None) -> Event:
        return cls(new_id("evt"), payload.topic, tenant_id, call_id, seq, now_iso(), trace_id, payload_dict(payload))

    def to_dict(self) -> dict[str, Any]:
        """``asdict(self)``: a copy, ``data`` included (faster when ``data`` is flat)."""
        if not _flat(self.data):
            return asdict(self)
        return {"id": self.id, "topic": self.topic, "tenant_id": self.tenant_id, "call_id": self.call_id,
                "seq": self.seq, "ts": self.ts, "trace_id": self.trace_id, "data": dict(self.data)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        return cls(row["id"], row["topic"], row["tenant_id"], row["call_id"], row["seq"], row["created_at"],
                   row["trace_id"], row["payload"])
