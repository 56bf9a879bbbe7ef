"""CallSession: the state machine of one call; every transition is an event.

States: ringing -> connected -> (transferring ->) ended | failed; an outbound call starts
queued -> dialing (-> ringing) -> connected (runtime.calls.outbound). Illegal transitions raise. The bridge that carries the call registers a ``CallControl``
so the engine can hang up or transfer without knowing the provider.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.calls.integrator_sessions import STOPPED, Speaking, Transcribe, transcribe_for
from runtime.calls.routing import CallRoute
from runtime.calls.watchdog import DurationWatchdog
from runtime.events.bus import EventBus
from runtime.events.models import (
    CallCompleted,
    CallConnected,
    CallFailed,
    CallStarted,
    Event,
    Payload,
    StateChanged,
    TranscriptCreated,
    TranscriptionStarted,
    TranscriptionStopped,
    TransferRequested,
)
from runtime.ids import new_id, now_iso
from runtime.store.store import Store, Tables, WriteBatch

log = logging.getLogger("voicectl.calls")

QUEUED, DIALING = "queued", "dialing"
RINGING, CONNECTED, TRANSFERRING, ENDED, FAILED = "ringing", "connected", "transferring", "ended", "failed"
LIVE_STATES = (QUEUED, DIALING, RINGING, CONNECTED, TRANSFERRING)
# Waiting for the media: a carrier may connect an outbound call without reporting it ringing.
AWAITING_MEDIA = (DIALING, RINGING)
NOT_ANSWERED = (QUEUED, DIALING, RINGING)
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({DIALING, ENDED, FAILED}),
    DIALING: frozenset({RINGING, CONNECTED, ENDED, FAILED}),
    RINGING: frozenset({CONNECTED, ENDED, FAILED}),
    CONNECTED: frozenset({TRANSFERRING, ENDED, FAILED}),
    TRANSFERRING: frozenset({CONNECTED, ENDED, FAILED}),
    ENDED: frozenset(),
    FAILED: frozenset(),
}
ENGINE_COLUMNS = ("stt_provider", "llm_provider", "llm_model", "tts_provider", "tts_voice")
# Call logging never blocks teardown: the archive write gets this long, then is logged as an error.
ARCHIVE_TIMEOUT_S = 5.0


# A new call's row insert and its voice.call.started, to commit with what comes next (a refusal).
Opening = tuple[WriteBatch, Payload]


class IllegalTransition(Exception):
    pass


class AudioSink(Protocol):
    """Receives the call's audio as the bridge sees it (recorder, meters): PCM16 mono frames."""

    def inbound(self, pcm: bytes, sample_rate: int) -> None: ...
    def outbound(self, pcm: bytes, sample_rate: int) -> None: ...


class CallControl(Protocol):
    """What a bridge lets the engine do to its call."""

    async def hangup(self, reason: str) -> None: ...
    async def transfer(self, target: str) -> None: ...


class Steerable(Protocol):
    """What live call control reaches in a call's conversation (runtime.pipeline.conversation)."""

    paused: bool

    def say_now(self, text: str, *, interrupt: bool, tts: Any = None) -> bool: ...

    def flush_lines(self) -> None: ...

    async def say(self, text: str) -> None: ...

    async def say_uninterruptible(self, text: str) -> None: ...

    def set_paused(self, paused: bool) -> None: ...


@dataclass(slots=True, eq=False)
class CallSession:
    id: str
    tenant_id: str
    provider: str
    direction: str
    from_number: str | None
    to_number: str | None
    store: Store
    bus: EventBus
    route: CallRoute | None = None
    provider_call_id: str | None = None
    # The runtime instance holding the call's media (runtime.cluster.instances), kept on the row.
    instance_id: str | None = None
    trace_id: str = field(default_factory=lambda: new_id("tr"))
    state: str = RINGING
    started_at: str = field(default_factory=now_iso)
    connected_at: str | None = None
    control: CallControl | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    # The bridge's media counters, read when the call ends whoever ends it (summary.media).
    media_counts: Callable[[], dict[str, Any]] | None = None
    # The call's conversation once its media leg built it: live control (say, pause) reaches it here.
    conversation: Steerable | None = None
    # The integrator's sessions on this call (runtime.calls.integrator_sessions), by id.
    transcribes: dict[str, Transcribe] = field(default_factory=dict)
    speakings: dict[str, Speaking] = field(default_factory=dict)
    # An outbound call's request and progress (runtime.calls.outbound.OutboundCall); None: inbound.
    outbound: Any = None
    # Kept in the call's metadata: an evaluation's id, a rollout's arm.
    tags: dict[str, Any] = field(default_factory=dict)
    # An evaluation's synthetic call: its pin (what its bridge checks it by); None for every other call.
    evaluation: Any = None
    end_reason: str | None = None
    hangup_by: str | None = None
    # Another instance failed this call's row (this one's lease had run out, reason instance_lost):
    # ending it here stops its media and hooks but writes nothing over that record.
    failed_elsewhere: bool = False
    final_duration_ms: int | None = None  # set when the call ends
    _seq: int = 0
    _transcript_seq: int = 0
    _started_mono: float = field(default_factory=time.monotonic)
    # Created on first use: most calls never contend, and tens of thousands may be live at once.
    _lock_obj: asyncio.Lock | None = None
    _ended: asyncio.Event | None = None
    _ended_flag: bool = False
    on_end: list[Callable[[CallSession], Awaitable[None] | None]] = field(default_factory=list)
    audio_sinks: list[AudioSink] = field(default_factory=list)
    # Called once the call is connected and its conversation has started (runtime.calls.media_leg).
    on_connected: list[Callable[[CallSession], Awaitable[None] | None]] = field(default_factory=list)
    # Called at T-2 min and T-30 s of the duration limit with (session, remaining_s); the pipeline speaks.
    on_duration_warning: list[Callable[[CallSession, int], Awaitable[None]]] = field(default_factory=list)
    watchdog: DurationWatchdog | None = None
    _latency_samples: dict[str, list[float]] = field(default_factory=dict)
    # The operations record (runtime.calls.call_record), filled as the call goes:
    escalated_to: str | None = None  # the target of the call's transfer, if it asked for one
    agent_spoke: bool = False  # the caller heard the agent (an agent transcript was written)
    # The engines and voice serving the call (after any failover), read when it ends (columns).
    engines_used: Callable[[], dict[str, str | None]] | None = None
    # What the brain can tell of the call (the rules brain: its intents and slots), and who writes
    # its summary with a language model: set by the conversation engine.
    brain_notes: Callable[[], dict[str, Any]] | None = None
    analyst: Any = None
    callback_id: str | None = None  # the callback task this call was placed for
    # Called with each transcribe or speaking session started on the call (the tracker: peers reach it).
    on_session: list[Callable[[Transcribe | Speaking], None]] = field(default_factory=list)
    # Called once every on_end hook has run (the conversation closed, its transcripts written).
    after_end: list[Callable[[CallSession], Awaitable[None] | None]] = field(default_factory=list)

    @property
    def _lock(self) -> asyncio.Lock:
        if self._lock_obj is None:
            self._lock_obj = asyncio.Lock()
        return self._lock_obj

    @property
    def ended(self) -> asyncio.Event:
        """Set once the call has ended and been archived."""
        if self._ended is None:
            self._ended = asyncio.Event()
            if self._ended_flag:
                self._ended.set()
        return self._ended

    def _set_ended(self) -> None:
        self._ended_flag = True
        if self._ended is not None:
            self._ended.set()

    def observe_latency(self, stage: str, ms: float) -> None:
        """One latency sample of a pipeline stage (stt, llm_first_token, tts_first_audio, ...);
        aggregated into ``latency`` when the call ends."""
        self._latency_samples.setdefault(stage, []).append(float(ms))

    def latency_aggregates(self) -> dict[str, dict[str, float | int]]:
        return {stage: aggregate(samples) for stage, samples in self._latency_samples.items() if samples}

    async def add_transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                             interrupted: bool, segments: list[dict[str, Any]] | None = None) -> None:
        """A final utterance: the ``transcripts`` row and ``transcript.created`` in one transaction
        (``segments``: a caller utterance's pieces, ``{"text", "confidence"}``)."""
        self._transcript_seq += 1
        if role == "agent":
            self.agent_spoke = True
        batch = self.store.batch()
        await batch.transcripts.insert({
            "id": new_id("tsc"), "tenant_id": self.tenant_id, "call_id": self.id, "seq": self._transcript_seq,
            "role": role, "text": text, "start_ms": start_ms, "end_ms": end_ms, "interrupted": interrupted,
            "created_at": now_iso(),
        })
        direction = "in" if role == "caller" else "out"
        await self.emit(TranscriptCreated(role=role, text=text, start_ms=start_ms, end_ms=end_ms,
                                          interrupted=interrupted, direction=direction,
                                          transcribe_id=transcribe_for(self.transcribes, direction),
                                          segments=segments), batch)

    async def start_transcribe(self, direction: str, *, implicit: bool = False) -> Transcribe:
        transcribe = Transcribe(self.id, self.tenant_id, direction, implicit)
        self.transcribes[transcribe.id] = transcribe
        self._started(transcribe)
        await self.emit(TranscriptionStarted(transcribe_id=transcribe.id, direction=direction))
        return transcribe

    def add_speaking(self, speaking: Speaking) -> None:
        self.speakings[speaking.id] = speaking
        self._started(speaking)

    def _started(self, started: Transcribe | Speaking) -> None:
        for hook in self.on_session:
            hook(started)

    async def stop_transcribe(self, transcribe: Transcribe, reason: str) -> None:
        if transcribe.status != STOPPED:
            transcribe.status, transcribe.stopped_at = STOPPED, now_iso()
            await self.emit(TranscriptionStopped(transcribe_id=transcribe.id, reason=reason))

    def tap_inbound(self, pcm: bytes, sample_rate: int) -> None:
        for sink in self.audio_sinks:
            sink.inbound(pcm, sample_rate)

    def tap_outbound(self, pcm: bytes, sample_rate: int) -> None:
        for sink in self.audio_sinks:
            sink.outbound(pcm, sample_rate)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def duration_ms(self) -> int:
        return int((time.monotonic() - self._started_mono) * 1000)

    def listened(self, topic: str) -> bool:
        return self.bus.listened(self.tenant_id, topic, self.id)

    async def emit(self, payload: Payload, batch: WriteBatch | None = None) -> Event:
        """Commit and publish an event of this call with the next sequence number (with ``batch``:
        the caller's writes, committed in the same transaction before the event)."""
        if payload.__class__ is TransferRequested:  # an after-hours or watchdog transfer, too
            self.escalated_to = payload.target  # type: ignore[attr-defined]
        event = self._event(payload)
        await self.bus.publish(event, batch)
        return event

    def _event(self, payload: Payload) -> Event:
        self._seq += 1
        return Event.of(payload, tenant_id=self.tenant_id, call_id=self.id, seq=self._seq, trace_id=self.trace_id)

    async def _emit_all(self, payloads: list[Payload], batch: WriteBatch) -> None:
        """Events of this call committed with ``batch`` in one transaction, then published in order."""
        await self.bus.publish_all([self._event(p) for p in payloads], batch)

    async def insert_row(self, admit: Callable[[Tables], Awaitable[None]] | None = None) -> None:
        """The call's row and voice.call.started. ``admit``: run in their transaction before it
        commits (the cluster's concurrent-call limits); what it raises leaves nothing stored."""
        # The row and its voice.call.started commit together: one transaction, one writer hop.
        batch = self.store.batch(check=admit)
        await self.emit(await self._stage_row(batch), batch)

    async def refuse(self, reason: str, message: str | None = None) -> None:
        """A call turned away before it ran (a limit; the runtime shutting down): its row,
        voice.call.started and its failure commit in one transaction, so no one ever sees the row
        live. (Inserted live and failed by a second commit, a refused call held a slot of its
        tenant's limit on every instance in between, and a burst admitted fewer calls than the
        limit.) What the write raises (UniqueViolation: its provider call id has a call) leaves
        nothing stored and the call not ended."""
        batch = self.store.batch()
        await self._finish(FAILED, reason, None, message, opening=(batch, await self._stage_row(batch)))

    async def _stage_row(self, batch: WriteBatch) -> Payload:
        """The call's new row, in ``batch``; its voice.call.started, to commit with it."""
        now = now_iso()
        route = self.route
        await batch.voice_calls.insert({
            "id": self.id, "tenant_id": self.tenant_id, "agent_id": route.agent_id if route else None,
            "agent_version": route.version if route else None,
            "number_id": route.number["id"] if route else None, "provider": self.provider,
            "provider_call_id": self.provider_call_id, "direction": self.direction,
            "from_number": self.from_number, "to_number": self.to_number, "status": self.state,
            "end_reason": None, "hangup_by": None, "started_at": self.started_at, "connected_at": None,
            "ended_at": None, "duration_ms": None, "summary": {}, "latency": {},
            "metadata": {**_route_tags(route), **self.tags},
            "trace_id": self.trace_id, "created_at": now, "updated_at": now,
            "variables": self.outbound.variables if self.outbound is not None else None,
            "rollout_id": route.rollout_id if route else None, "instance_id": self.instance_id,
        })
        return CallStarted(
            provider=self.provider, direction=self.direction, from_number=self.from_number,
            to_number=self.to_number, agent_id=route.agent_id if route else None,
            agent_version=route.version if route else None,
        )

    async def _transition(self, to: str, reason: str | None, changes: dict[str, Any],
                          *then: Payload, opening: Opening | None = None) -> str:
        """The row's UPDATE, call.state_changed and the ``then`` events: one transaction (one
        writer hop), published after the commit. ``opening``: the row's insert and its
        voice.call.started, committed first in that transaction (a refused call)."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"call {self.id}: {self.state} -> {to} is not allowed")
        before, self.state = self.state, to
        batch, first = opening if opening is not None else (self.store.batch(), None)
        await batch.voice_calls.set(
            self.id, {"status": to, "updated_at": now_iso(), **changes}, tenant_id=self.tenant_id
        )
        events = [StateChanged(from_state=before, to_state=to, reason=reason), *then]
        await self._emit_all([first, *events] if first is not None else events, batch)
        return before

    async def connect(self) -> None:
        async with self._lock:
            self.connected_at = now_iso()
            await self._transition(CONNECTED, None, {"connected_at": self.connected_at},
                                   CallConnected(provider=self.provider))
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        limit = self.route.max_duration_s if self.route is not None else None
        if limit and self.watchdog is None:
            self.watchdog = DurationWatchdog(self, limit)
            self.watchdog.start()

    async def transfer(self, target: str, reason: str | None = None) -> None:
        """Ask the bridge to transfer; the call then ends with reason=transferred when the bridge says so."""
        async with self._lock:
            self.escalated_to = target
            await self._transition(TRANSFERRING, reason, {}, TransferRequested(target=target, reason=reason))
        if self.control is not None:
            await self.control.transfer(target)

    async def advance(self, to: str, changes: dict[str, Any] | None = None) -> bool:
        """An outbound call's progress as its carrier reports it (queued -> dialing -> ringing),
        reports arriving late or twice ignored: True when the state moved."""
        order = (QUEUED, DIALING, RINGING)
        async with self._lock:
            if self.state not in order or order.index(to) <= order.index(self.state):
                return False
            if self.state == QUEUED and to == RINGING:
                await self._transition(DIALING, None, changes or {})
                changes = None
            await self._transition(to, None, changes or {})
            return True

    async def hangup(self, reason: str, bridge_timeout_s: float | None = None) -> None:
        """The engine ends the call: tell the bridge (waiting at most ``bridge_timeout_s``), then
        archive. An outbound call not answered yet is canceled (failed, reason ``canceled``)."""
        if self.direction == "outbound" and self.state in NOT_ANSWERED:
            if self.control is not None:
                try:
                    await asyncio.wait_for(self.control.hangup(reason), bridge_timeout_s)
                except Exception:  # noqa: BLE001 - logged; the call is canceled here either way
                    log.warning("canceling through the bridge failed", extra={"call_id": self.id, "reason": reason})
            await self.fail("canceled", f"hung up before the call was answered ({reason})")
            return
        if self.control is not None and self.live:
            try:
                await asyncio.wait_for(self.control.hangup(reason), bridge_timeout_s)
            except TimeoutError:
                log.warning("hangup through the bridge timed out", extra={"call_id": self.id, "reason": reason})
            except Exception:  # the provider may already have gone; the archive must still happen
                log.exception("hangup through the bridge failed", extra={"call_id": self.id})
        await self.end(reason, hangup_by="agent")

    async def end(self, reason: str, hangup_by: str | None = None) -> None:
        await self._finish(ENDED, reason, hangup_by, None)

    async def fail(self, reason: str, message: str | None = None) -> None:
        await self._finish(FAILED, reason, None, message)

    async def _finish(self, state: str, reason: str, hangup_by: str | None, message: str | None,
                      opening: Opening | None = None) -> None:
        async with self._lock:
            if not self.live:
                return  # ending twice (bridge stop + status callback) is normal
            stopped_at = now_iso()
            for live in (*self.transcribes.values(), *self.speakings.values()):  # they stop with the call
                if live.status != STOPPED:
                    live.status, live.stopped_at = STOPPED, stopped_at
            if self.watchdog is not None:
                self.watchdog.cancel()
            if self._latency_samples:
                self.latency = {**self.latency, **self.latency_aggregates()}
            if self.media_counts is not None:
                try:
                    self.summary["media"] = self.media_counts()
                except Exception:  # the counters must never keep a call from ending
                    log.exception("media counters unreadable", extra={"call_id": self.id})
            duration, unstored = self.duration_ms, self.state
            self.end_reason, self.hangup_by, self.final_duration_ms = reason, hangup_by, duration
            changes = {
                "end_reason": reason, "hangup_by": hangup_by, "ended_at": now_iso(), "duration_ms": duration,
                "summary": self.summary, "latency": self.latency, "escalated_to": self.escalated_to,
                **self._engines(),
            }
            try:
                if self.failed_elsewhere:
                    self.state = FAILED
                else:
                    # A timeout scope, not wait_for: no task per call ending (the write rarely waits at all).
                    async with asyncio.timeout(ARCHIVE_TIMEOUT_S):
                        await self._archive(state, reason, hangup_by, message, changes, duration, opening)
            except Exception:
                if opening is not None:  # nothing was stored: the call never was, so it does not end
                    self.state = unstored
                    raise
                # Never let logging block teardown; the state is final in memory either way.
                self.state = state
                log.exception("archiving the call failed", extra={"call_id": self.id, "reason": reason})
        self._set_ended()
        for hooks in (self.on_end, self.after_end):
            for callback in list(hooks):
                try:
                    result = callback(self)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("call end hook failed", extra={"call_id": self.id})

    def _engines(self) -> dict[str, str | None]:
        """The engine columns (stt_provider, llm_provider, llm_model, tts_provider, tts_voice)."""
        if self.engines_used is None:
            return {}
        try:
            return {k: v for k, v in self.engines_used().items() if k in ENGINE_COLUMNS}
        except Exception:  # never keep a call from ending
            log.exception("engines unreadable", extra={"call_id": self.id})
            return {}

    async def _archive(self, state: str, reason: str, hangup_by: str | None, message: str | None,
                       changes: dict[str, Any], duration: int, opening: Opening | None = None) -> None:
        final: Payload = (CallCompleted(reason=reason, hangup_by=hangup_by, duration_ms=duration) if state == ENDED
                          else CallFailed(reason=reason, message=message))
        await self._transition(state, reason, changes, final, opening=opening)


def _route_tags(route: CallRoute | None) -> dict[str, Any]:
    if route is None:
        return {}
    tags: dict[str, Any] = {"after_hours": route.after_hours}
    if route.rollout_arm is not None:
        tags["rollout_arm"] = route.rollout_arm
    return tags


def aggregate(samples: list[float]) -> dict[str, float | int]:
    """count, mean, p50, p95 and max of latency samples in ms (nearest-rank percentiles)."""
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"count": len(ordered), "mean_ms": round(sum(ordered) / len(ordered), 1), "p50_ms": rank(0.5),
            "p95_ms": rank(0.95), "max_ms": ordered[-1]}
