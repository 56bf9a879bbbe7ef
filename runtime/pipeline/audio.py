"""Audio codecs and resampling for the call path, in C (``audioop``; ``audioop-lts`` on 3.13+).

Telephony audio is G.711 mu-law, 8 kHz mono, 20 ms frames (160 bytes). The pipeline works on
PCM16 little-endian mono. Nothing here loops over samples in Python.
"""

from __future__ import annotations

import struct
import sys
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():  # stdlib audioop is deprecated in 3.11/3.12; audioop-lts replaces it later
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

TELEPHONY_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = TELEPHONY_RATE * FRAME_MS // 1000  # 160
ULAW_FRAME_BYTES = FRAME_SAMPLES  # one byte a sample
PCM_FRAME_BYTES = FRAME_SAMPLES * 2
ULAW_SILENCE = b"\xff"
WAVE_FORMAT_PCM, WAVE_FORMAT_MULAW = 1, 7


def ulaw_to_pcm16(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, 2)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2)


def rms(pcm: bytes) -> int:
    return audioop.rms(pcm, 2) if pcm else 0


class Resampler:
    """Streaming PCM16 mono resampler (keeps ratecv's state between chunks)."""

    __slots__ = ("src", "dst", "_state")

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst, self._state = src, dst, None

    def __call__(self, pcm: bytes) -> bytes:
        if self.src == self.dst:
            return pcm
        out, self._state = audioop.ratecv(pcm, 2, 1, self.src, self.dst, self._state)
        return out


def resample(pcm: bytes, src: int, dst: int) -> bytes:
    return Resampler(src, dst)(pcm)


@dataclass(frozen=True)
class Audio:
    pcm: bytes  # PCM16 LE mono
    rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.rate


def read_wav(path: str | Path) -> Audio:
    """A WAV as PCM16 mono: PCM 8/16/24/32-bit or G.711 mu-law, any rate, stereo downmixed."""
    raw = Path(path).read_bytes()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError(f"{path} is not a RIFF/WAVE file")
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        body = raw[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = struct.unpack_from("<HHIIHH", body)
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ValueError(f"{path} has no fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if tag == WAVE_FORMAT_MULAW:
        pcm = audioop.ulaw2lin(data, 2)
    elif tag in (WAVE_FORMAT_PCM, 0xFFFE):
        width = bits // 8
        data = data[: len(data) - len(data) % (width * channels)]
        pcm = data if width == 2 else audioop.lin2lin(audioop.bias(data, 1, -128) if width == 1 else data, width, 2)
    else:
        raise ValueError(f"{path}: unsupported WAV format tag {tag}")
    if channels == 2:
        pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels are not supported")
    return Audio(pcm, rate)


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def ulaw_frames(audio: Audio) -> list[bytes]:
    """20 ms mu-law 8 kHz frames of 160 bytes; the last one padded with silence."""
    ulaw = pcm16_to_ulaw(resample(audio.pcm, audio.rate, TELEPHONY_RATE))
    frames = [ulaw[i:i + ULAW_FRAME_BYTES] for i in range(0, len(ulaw), ULAW_FRAME_BYTES)]
    if frames and len(frames[-1]) < ULAW_FRAME_BYTES:
        frames[-1] = frames[-1] + ULAW_SILENCE * (ULAW_FRAME_BYTES - len(frames[-1]))
    return frames


def audioop_backend() -> str:
    return "audioop-lts" if sys.version_info >= (3, 13) else "stdlib audioop"
