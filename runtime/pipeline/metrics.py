"""Prometheus metrics of the conversation pipeline, registered in the registry the app gives
(one per app, as ``runtime.web.metrics``: tests run several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

# Stages of one turn (seconds): stt (flush -> final), llm_first_token, tts_first_audio,
# first_frame (end of turn -> first reply audio to the transport), v2v (caller's last speech
# frame -> first reply audio).
STAGES = ("stt", "llm_first_token", "tts_first_audio", "first_frame", "v2v")


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "voicectl_turn_latency_seconds", "Per-turn latency of a pipeline stage", ("stage",),
            registry=registry,
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
        )
        self.turns = Counter(
            "voicectl_turns", "Caller turns by outcome (replied, backchannel, empty, kept: not answered by the "
            "agent, not_understood: speech with no accepted words)", ("outcome",),
            registry=registry,
        )
        self.interruptions = Counter(
            "voicectl_barge_ins", "Agent replies cut off by the caller", registry=registry,
        )
        self.provider_errors = Counter(
            "voicectl_pipeline_provider_errors", "Provider failures during a call, by modality and kind",
            ("modality", "kind"), registry=registry,
        )
        self.failovers = Counter(
            "voicectl_provider_failovers", "Calls moved to the next engine of a fallback chain (or started on it)",
            ("modality", "from_provider", "to_provider"), registry=registry,
        )
        self.silence_prompts = Counter(
            "voicectl_silence_prompts", "Re-prompts and hang-ups after caller silence", ("action",),
            registry=registry,
        )

    def observe(self, stage: str, ms: float) -> None:
        self.latency.labels(stage).observe(ms / 1000)


@dataclass(slots=True)
class TurnTiming:
    """Clock times (seconds) of one caller turn and its reply, for the latency figures."""

    end_at: float  # the end-of-turn decision; the LLM is asked at this moment
    last_speech_at: float | None = None  # the caller's last speech frame arrived
    flush_at: float | None = None  # the STT was asked for the final
    final_at: float | None = None
    llm_first_at: float | None = None
    tts_request_at: float | None = None
    tts_first_audio_at: float | None = None
    first_frame_at: float | None = None  # the reply's first audio went to the transport
    reported: bool = False

    def stages(self) -> dict[str, float | None]:
        """Milliseconds per stage of ``STAGES``; None where a stage did not happen."""

        def span(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None and b >= a else None

        return {
            "stt": span(self.flush_at, self.final_at),
            "llm_first_token": span(self.end_at, self.llm_first_at),
            "tts_first_audio": span(self.tts_request_at, self.tts_first_audio_at),
            "first_frame": span(self.end_at, self.first_frame_at),
            "v2v": span(self.last_speech_at, self.first_frame_at),
        }
