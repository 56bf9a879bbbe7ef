"""Audio codecs and resampling for the call path, in C (``audioop``, ``audioop-lts`` on 3.13+;
rate conversion with FFmpeg's swresample through PyAV).

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
from typing import Any

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
    """Streaming PCM16 mono rate conversion, one filter state per instance: make one per stream
    (a call's direction, a reply's TTS rate) and feed it that stream's chunks in order.

    Every rate change on the audio path goes through this: TTS out (speech.py), STT in
    (conversation.py), Silero's 16 kHz (vad.py). LiveKit's SDK converts inside ``rtc.AudioStream``
    and ``rtc.AudioSource``; on WebRTC calls libopus encodes the 8/16 kHz pipeline rate as it is
    and decodes the caller's Opus straight to it (webrtc/opus.py). (runtime.recording may not
    import the pipeline, so the recorder keeps ``audioop.ratecv`` for legs at another rate; no
    bridge sends such.)

    The engine is FFmpeg's swresample (PyAV, which aiortc brings) with its default
    filter (32 taps, Kaiser window, cutoff 0.97). Measured by ``bench/pipeline.py --part
    resample`` and tests/pipeline/test_resampling.py, 20 ms frames in, 2-core box:

    ==========================  ===============  ================  ==========  =================
    engine                      tone at 1.5x     output behind     8k>16k>8k   µs a frame
                                target Nyquist   input (STT in)    speech SNR  8>16k 24>8k 48>16k
    ==========================  ===============  ================  ==========  =================
    audioop.ratecv (before)     0 to -5 dB       0                 (exact)     2.0   4.5   8.7
    swresample (this)           < -83 dB (0)     2 ms at 8 kHz     42-44 dB    4.4   4.6   5.3
    soxr LQ / HQ (python-soxr)  -83 dB           20-60 / 40-110 ms 28 / 49 dB  2.4   3.0   4.2
    libsamplerate sinc_fastest  < -83 dB (0)     2.4 ms            28 dB       21    24    43
    ==========================  ===============  ================  ==========  =================

    (0): the output is silent, below one LSB. soxr converts in blocks and its binding cannot set
    the block size: fed 20 ms frames it gives nothing for 1-5 frames, a delay on every reply's
    first audio and on the caller's speech into STT. libsamplerate answers as quickly as
    swresample at 5-8x its CPU. swresample's transition band is 0.9-1.1x Nyquist (-0.1 dB at
    3.4 kHz, -1 dB at 3.6 kHz, -43 dB at 4.4 kHz for 8 kHz out), so what folds back lands above
    the phone band. It holds back ~16 samples of the lower rate: ``flush()`` returns them where
    a stream ends (a reply); a continuous stream carries them on with its next chunk. A stream's
    FFmpeg graph is built by its first chunk (~0.3 ms) and holds 100-165 KB (the graph and its
    swresample context). Equal rates: the bytes as they came, nothing built.
    """

    __slots__ = ("src", "dst", "_graph", "_source", "_sink", "_new_frame", "_odd")

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self._graph: Any = None  # built by the first chunk; its filters live as long as it does
        self._source: Any = None
        self._sink: Any = None
        self._new_frame: Any = None  # av.AudioFrame (PyAV is imported by the first chunk, not with this module)
        self._odd = b""  # half a sample carried to the next chunk

    def __call__(self, pcm: bytes) -> bytes:
        if self.src == self.dst:
            return pcm
        if self._odd:
            pcm, self._odd = self._odd + pcm, b""
        if len(pcm) & 1:
            pcm, self._odd = pcm[:-1], pcm[-1:]
        if not pcm:
            return b""
        if self._source is None:
            self._open()
        frame = self._new_frame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = self.src
        return self._convert(frame)

    def flush(self) -> bytes:
        """What is still held back; the next chunk starts a new stream."""
        self._odd = b""
        if self._source is None:
            return b""
        self._source.push(None)
        parts = []
        while True:
            try:
                out = self._sink.pull()
            except (EOFError, BlockingIOError):  # av.error's subclass these
                break
            parts.append(bytes(memoryview(out.planes[0])[:out.samples * 2]))
        self._graph = self._source = self._sink = None
        return b"".join(parts)

    def _convert(self, frame: Any) -> bytes:
        if self._source is None:
            self._open()
        self._source.push(frame)
        # aresample answers each frame with at most one (FFmpeg af_aresample.c), so one pull
        # a push leaves nothing queued; pulling again until EAGAIN would cost a raised exception.
        try:
            out = self._sink.pull()
        except BlockingIOError:
            return b""
        return bytes(memoryview(out.planes[0])[:out.samples * 2])

    def _open(self) -> None:
        import av
        from av.filter import Graph

        self._new_frame = av.AudioFrame
        graph = Graph()
        source = graph.add("abuffer", sample_rate=str(self.src), sample_fmt="s16", channel_layout="mono",
                           time_base=f"1/{self.src}")
        convert = graph.add("aresample", osr=str(self.dst), osf="s16", ochl="mono")
        sink = graph.add("abuffersink")
        source.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        self._graph, self._source, self._sink = graph, source, sink


def resample(pcm: bytes, src: int, dst: int) -> bytes:
    """A whole clip at once (tail included)."""
    resampler = Resampler(src, dst)
    return resampler(pcm) + resampler.flush()


@dataclass(frozen=True)
class Audio:
    pcm: bytes  # PCM16 LE mono
    rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.rate


def read_wav(path: str | Path) -> Audio:
    """A WAV as PCM16 mono: PCM 8/16/24/32-bit or G.711 mu-law, any rate, stereo downmixed."""
    return parse_wav(Path(path).read_bytes(), str(path))


def parse_wav(raw: bytes, path: str = "the WAV") -> Audio:
    """``read_wav`` of bytes already read; ValueError (naming ``path``) for anything it cannot play."""
    try:
        return _parse_wav(raw, path)
    except (struct.error, audioop.error) as exc:
        raise ValueError(f"{path} is not a readable WAV file ({exc})") from None


def _parse_wav(raw: bytes, path: str) -> Audio:
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
    if not 1000 <= rate <= 192_000 or bits not in (8, 16, 24, 32) and tag != WAVE_FORMAT_MULAW:
        raise ValueError(f"{path}: unsupported rate {rate} Hz or sample size {bits} bits")
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
