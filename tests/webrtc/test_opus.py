"""libopus per frame (runtime.telephony.webrtc.opus): what the bridge encodes FFmpeg's libopus
decodes, what a browser sends (48 kHz, any frame length) comes out at the pipeline's rate, and a
bad frame is a clear error."""

from __future__ import annotations

import math
from array import array

import av
import numpy as np
import pytest

from runtime.telephony.webrtc.opus import OpusDecoder, OpusEncoder, OpusError


def _tone(rate: int, ms: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    n = rate * ms // 1000
    return array("h", (int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))).tobytes()


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    return float(np.sqrt((samples ** 2).mean()))


def _ffmpeg_decode(payloads: list[bytes]) -> bytes:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", 48000
    return b"".join(bytes(frame.planes[0])[:frame.samples * 2]
                    for payload in payloads for frame in decoder.decode(av.Packet(payload)))


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_encoded_frames_are_opus_that_ffmpeg_plays_back(rate: int) -> None:
    encoder = OpusEncoder(rate, 32000, 3)
    tone = _tone(rate, 400)
    step = rate // 50 * 2
    payloads = [encoder.encode(tone[i:i + step]) for i in range(0, len(tone), step)]
    assert len(payloads) == 20 and all(0 < len(p) < 200 for p in payloads)  # ~80 bytes at 32 kbit/s
    decoded = _ffmpeg_decode(payloads)
    assert len(decoded) == 48000 * 2 * 400 // 1000
    assert _rms(decoded[len(decoded) // 2:]) > 0.5 * _rms(tone)


@pytest.mark.parametrize(("sender_rate", "ms"), [(48000, 20), (48000, 60), (16000, 10)])
def test_a_senders_packets_decode_to_the_pipeline_rate(sender_rate: int, ms: int) -> None:
    sender = OpusEncoder(sender_rate, 48000, 5)
    tone = _tone(sender_rate, ms * 10, amplitude=6000)
    step = sender_rate * ms // 1000 * 2
    decoder = OpusDecoder(16000)
    out = [decoder.decode(sender.encode(tone[i:i + step])) for i in range(0, len(tone), step)]
    assert all(len(pcm) == 16000 * ms // 1000 * 2 for pcm in out)
    assert _rms(b"".join(out[len(out) // 2:])) > 0.5 * 6000 / math.sqrt(2)


def test_bad_frames_and_rates_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="44100"):
        OpusEncoder(44100, 32000, 3)
    with pytest.raises(ValueError):
        OpusDecoder(22050)
    with pytest.raises(OpusError, match="opus_encode"):
        OpusEncoder(16000, 32000, 3).encode(bytes(100))  # not a whole Opus frame of samples
    decoder = OpusDecoder(16000)
    with pytest.raises(OpusError, match="opus_decode"):
        decoder.decode(b"\xff" * 200)
    good = OpusEncoder(16000, 32000, 3).encode(_tone(16000, 20))
    assert len(decoder.decode(good)) == 640  # the decoder goes on after a bad packet
