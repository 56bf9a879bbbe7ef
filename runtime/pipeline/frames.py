"""What flows from the audio path to the STT task: caller audio frames and control frames.

Caller audio is only wrapped in an ``AudioFrame`` once it is headed for the STT (speech, with
its pre-roll); silence never becomes an object. Agent audio goes to the transport as PCM plus
the generation id of its ``Reply`` (runtime.pipeline.speech).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class AudioFrame:
    pcm: bytes  # PCM16 little-endian mono
    rate: int
    ts_ms: int  # end of the frame on the call's inbound audio timeline


class Control(Enum):
    FLUSH = "flush"  # the caller paused: finalize the audio pushed so far


@dataclass(frozen=True, slots=True)
class ControlFrame:
    kind: Control


def pcm_ms(pcm: bytes, rate: int) -> float:
    """Duration of PCM16 mono audio in milliseconds."""
    return len(pcm) * 500 / rate
