"""What a conversation tells its call: events and transcript rows, turn latency, provider failures.

Events (``speech.*``, ``transcript.*``, ``agent.interrupted``, ``turn.latency``, ``tool.called``
for pipeline timeouts, and whatever the bridge or engine passes to ``Conversation.emit``) and
transcript rows go through one ordered queue to the session, written by one task (``write``), so
a database write never delays audio; ``drained`` is what ``Conversation.close`` waits for.
Transcript times are ms since the conversation started (``started_at``): the caller's on the
inbound audio timeline, the agent's from when its first audio went to the transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from runtime.events.models import Payload, TurnLatency
from runtime.pipeline.metrics import PipelineMetrics, TurnTiming
from runtime.pipeline.speech import Reply
from runtime.providers.base import TranscriptSegment

if TYPE_CHECKING:
    from runtime.pipeline.conversation import CallSink

log = logging.getLogger("voicectl.pipeline")


class CallReporter:
    """One call's ordered queue of events and transcript rows, and its latency and error figures."""

    def __init__(self, session: CallSink, metrics: PipelineMetrics | None, started_at: float) -> None:
        self.session, self.metrics = session, metrics
        self.started_at = started_at  # the conversation's start (clock time): transcript times count from it
        self._jobs: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue()

    def emit(self, payload: Payload) -> None:
        self._jobs.put_nowait(partial(self.session.emit, payload))

    def transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                   interrupted: bool, segments: tuple[TranscriptSegment, ...] = ()) -> None:
        """A final utterance; ``segments``: a caller turn's pieces with their confidence."""
        pieces = [{"text": s.text, "confidence": s.confidence} for s in segments] if role == "caller" else None
        self._jobs.put_nowait(partial(self.session.add_transcript, role, text, start_ms, end_ms, interrupted,
                                      pieces))

    def agent_transcript(self, reply: Reply, text: str, played_ms: float, interrupted: bool) -> None:
        """What the caller heard of ``reply`` (nothing is stored for a reply that made no sound)."""
        if not text or reply.first_audio_at is None:
            return
        start = round((reply.first_audio_at - self.started_at) * 1000)
        self.transcript("agent", text, start, start + int(played_ms), interrupted)

    def first_audio(self, reply: Reply) -> None:
        """``Voice``'s hook: a reply to a caller turn has its latency figures once it makes a sound."""
        if reply.timing is not None:
            self.turn_latency(reply.timing)

    def turn_latency(self, timing: TurnTiming) -> None:
        timing.reported = True
        stages = timing.stages()
        for stage, ms in stages.items():
            if ms is not None:
                self.session.observe_latency(stage, ms)
                if self.metrics is not None:
                    self.metrics.observe(stage, ms)
        self.emit(TurnLatency(stt_ms=stages["stt"], llm_first_token_ms=stages["llm_first_token"],
                              tts_first_audio_ms=stages["tts_first_audio"], first_frame_ms=stages["first_frame"],
                              v2v_ms=stages["v2v"]))

    def provider_error(self, modality: str, exc: BaseException) -> None:
        kind = getattr(exc, "kind", "exception")
        log.warning("provider failed during a call", extra={
            "call_id": self.session.id, "modality": modality, "provider": getattr(exc, "provider", None),
            "kind": kind, "error": str(exc)[:300]})
        if self.metrics is not None:
            self.metrics.provider_errors.labels(modality, kind).inc()

    async def write(self) -> None:
        """The writer task: runs the queued writes in order, for the life of the conversation."""
        queue = self._jobs
        while True:
            job = await queue.get()
            try:
                await job()
            except Exception:
                log.exception("writing a call event failed", extra={"call_id": self.session.id})
            finally:
                queue.task_done()

    async def drained(self) -> None:
        """Until every write queued so far is done."""
        await self._jobs.join()
