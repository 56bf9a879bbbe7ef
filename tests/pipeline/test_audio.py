"""Codecs (audioop in C), resampling and the packaged greeting (the resampler's quality: test_resampling.py)."""

from __future__ import annotations

import math
import struct

from runtime.audio import (
    Resampler,
    pcm16_to_ulaw,
    read_wav,
    rms,
    ulaw_frames,
    ulaw_to_pcm16,
    write_wav,
)


def _tone(rate: int, seconds: float, hz: float = 440.0, amp: int = 8000) -> bytes:
    n = int(rate * seconds)
    return struct.pack(f"<{n}h", *(int(amp * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)))


def test_mulaw_round_trip_keeps_the_signal() -> None:
    pcm = _tone(8000, 0.1)
    back = ulaw_to_pcm16(pcm16_to_ulaw(pcm))
    assert len(back) == len(pcm) and len(pcm16_to_ulaw(pcm)) == len(pcm) // 2
    assert abs(rms(back) - rms(pcm)) / rms(pcm) < 0.05


def test_streaming_resampler_keeps_duration_across_chunks() -> None:
    pcm = _tone(16000, 1.0)
    resampler = Resampler(16000, 8000)
    out = b"".join(resampler(pcm[i:i + 640]) for i in range(0, len(pcm), 640))
    assert 8000 - 16 <= len(out) / 2 <= 8000  # 2 ms held back by the filter until the end ...
    out += resampler.flush()
    assert len(out) / 2 == 8000  # ... where flush() gives it
    assert abs(rms(out) - rms(pcm)) / rms(pcm) < 0.1


def test_wav_of_any_rate_becomes_20ms_mulaw_frames(tmp_path) -> None:
    path = tmp_path / "tone.wav"
    write_wav(path, _tone(22050, 0.5), 22050)
    audio = read_wav(path)
    assert audio.rate == 22050 and abs(audio.duration_s - 0.5) < 0.001
    frames = ulaw_frames(audio)
    assert len(frames) == 25 and {len(f) for f in frames} == {160}
