"""The audio path's rate conversion (runtime.audio.Resampler, FFmpeg's swresample).

Bounds, with what bench/pipeline.py --part resample measured on the 2-core box beside them:
a tone at 1.25x the target Nyquist comes out at least 40 dB down (measured: below one LSB,
<= -83 dB; audioop.ratecv, the old converter, passed it at 0 to -5 dB); the image of an
upsampled tone is 40 dB down (measured -92 dB); real speech (the packaged piper voice, made at
test time) taken 8 kHz -> 16 kHz -> 8 kHz comes back with an SNR of at least 35 dB (measured
~42 dB: the two filters' transition bands near 4 kHz are the error); the output runs at most
3 ms behind the input (measured 2 ms at 8 kHz, 1 ms at 16 kHz).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime.audio import Resampler, resample
from runtime.pipeline.clock import ManualClock
from runtime.pipeline.speech import Reply, Speaker, Voice
from runtime.providers.base import AudioChunk
from runtime.providers.tts.local import PiperTTS
from tests.pipeline.fakes import FakeStreamingTts, FakeTransport

# Every pair the audio path converts: TTS (16/22.05/24/44.1/48 kHz) to 8 kHz phone and 16 kHz
# LiveKit/WebRTC transports, WebRTC's 48 kHz Opus to the pipeline rate, 16 kHz STT from 8 kHz.
DOWN = [(24000, 8000), (22050, 8000), (16000, 8000), (44100, 8000), (48000, 8000), (48000, 16000),
        (24000, 16000), (22050, 16000)]
UP = [(8000, 16000), (16000, 24000), (8000, 48000)]


def _tone(rate: int, hz: float, seconds: float = 1.0, amp: float = 10000.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(float)


def _streamed(resampler: Resampler, pcm: bytes, ms: int = 20) -> bytes:
    step = resampler.src * ms // 1000 * 2
    return b"".join(resampler(pcm[i:i + step]) for i in range(0, len(pcm), step)) + resampler.flush()


def _db(y: np.ndarray, x: np.ndarray) -> float:
    return 20 * np.log10(max(float(np.sqrt((y ** 2).mean())), 1e-3) / float(np.sqrt((x ** 2).mean())))


@pytest.mark.parametrize(("src", "dst"), DOWN)
def test_a_tone_above_the_target_nyquist_is_removed(src: int, dst: int) -> None:
    hz = min(1.25 * dst / 2, 0.9 * src / 2)
    assert hz > dst / 2
    x = _tone(src, hz)
    y = _samples(_streamed(Resampler(src, dst), _pcm(x)))
    assert _db(y[len(y) // 4:-len(y) // 4], x) <= -40


def test_tts_hiss_stays_out_of_the_phone_band() -> None:
    """The issue's case: a 6 kHz tone from 24 kHz to 8 kHz came out of audioop.ratecv at -2 dB."""
    x = _tone(24000, 6000)
    y = _samples(resample(_pcm(x), 24000, 8000))
    assert _db(y[2000:-2000], x) <= -60


@pytest.mark.parametrize(("src", "dst"), DOWN + UP)
def test_the_passband_is_kept(src: int, dst: int) -> None:
    hz = 0.75 * min(src, dst) / 2  # 3 kHz at 8 kHz
    x = _tone(src, hz)
    y = _samples(resample(_pcm(x), src, dst))
    assert abs(_db(y[len(y) // 4:-len(y) // 4], x)) < 0.5


@pytest.mark.parametrize(("src", "dst"), UP)
def test_upsampling_leaves_no_image(src: int, dst: int) -> None:
    y = _samples(_streamed(Resampler(src, dst), _pcm(_tone(src, 0.75 * src / 2))))
    y = y[len(y) // 4:-len(y) // 4]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    images = spectrum[np.fft.rfftfreq(len(y), 1 / dst) > src / 2 + 100]
    assert 20 * np.log10(images.max() / spectrum.max()) <= -40


@pytest.fixture(scope="module")
def speech_8k() -> bytes:
    async def speak() -> tuple[bytes, int]:
        chunks = [c async for c in PiperTTS().synthesize("I'd like to book a table for two at seven tonight, "
                                                          "by the window if you have one.")]
        return b"".join(c.pcm for c in chunks), chunks[0].rate

    pcm, rate = asyncio.run(speak())
    return resample(pcm, rate, 8000)


def test_speech_round_trips_8k_16k_8k(speech_8k: bytes) -> None:
    back = _samples(_streamed(Resampler(16000, 8000), _streamed(Resampler(8000, 16000), speech_8k)))
    ref = _samples(speech_8k)
    assert len(back) == len(ref)
    # Aligned at the lag that fits best (swresample trims its own group delay: expected 0).
    best = max(range(-8, 9), key=lambda lag: float(np.dot(np.roll(back, -lag), ref)))
    assert best == 0
    snr = 10 * np.log10((ref ** 2).sum() / ((ref - back) ** 2).sum())
    assert snr >= 35, snr


@pytest.mark.parametrize(("src", "dst"), [(22050, 8000), (8000, 16000), (48000, 16000)])
def test_streaming_in_20ms_chunks_equals_one_shot(src: int, dst: int) -> None:
    x = _pcm(_tone(src, 440, 0.5) + _tone(src, 1700, 0.5, 3000))
    streamed, whole = _streamed(Resampler(src, dst), x), resample(x, src, dst)
    assert len(streamed) == len(whole) == round(len(x) * dst / src / 2) * 2
    assert np.abs(_samples(streamed) - _samples(whole)).max() <= 1


def test_a_chunk_split_inside_a_sample_loses_nothing() -> None:
    x = _pcm(_tone(16000, 440, 0.2))
    odd = Resampler(16000, 8000)
    out = odd(x[:641]) + odd(x[641:1001]) + odd(x[1001:]) + odd.flush()
    assert out == resample(x, 16000, 8000)


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (16000, 8000), (24000, 8000), (48000, 16000)])
def test_output_keeps_up_with_20ms_frames(src: int, dst: int) -> None:
    """The STT-in path is a continuous stream: every 20 ms frame gives its audio back at once,
    at most 3 ms of it held back (no block that waits for more input)."""
    resampler, step = Resampler(src, dst), src // 50 * 2
    x = _pcm(_tone(src, 300, 0.4))
    out = 0
    for k, i in enumerate(range(0, len(x), step)):
        out += len(resampler(x[i:i + step])) // 2
        assert 0 <= (k + 1) * dst // 50 - out <= dst * 3 // 1000, k


@pytest.mark.parametrize(("src", "dst"), [(24000, 8000), (8000, 16000)])
def test_the_tail_is_flushed(src: int, dst: int) -> None:
    x = _pcm(_tone(src, 500, 0.1))
    resampler = Resampler(src, dst)
    body = resampler(x)
    tail = resampler.flush()
    assert len(body + tail) // 2 == dst // 10 and 0 < len(tail) // 2 <= dst * 3 // 1000
    assert np.abs(_samples(tail)).max() > 1000  # the tone's last samples, not padding
    again = resampler(x) + resampler.flush()  # a flushed resampler starts a new stream
    assert again == body + tail


def test_state_is_per_stream() -> None:
    a, b = _pcm(_tone(24000, 440, 0.3)), _pcm(_tone(24000, 2500, 0.3, 5000))
    ra, rb = Resampler(24000, 8000), Resampler(24000, 8000)
    out_a, out_b = [], []
    for i in range(0, len(a), 960):  # interleaved, frame by frame
        out_a.append(ra(a[i:i + 960]))
        out_b.append(rb(b[i:i + 960]))
    assert b"".join(out_a) + ra.flush() == resample(a, 24000, 8000)
    assert b"".join(out_b) + rb.flush() == resample(b, 24000, 8000)


def test_equal_rates_pass_the_bytes_through() -> None:
    pcm = _pcm(_tone(8000, 440, 0.02))
    resampler = Resampler(8000, 8000)
    assert resampler(pcm) is pcm and resampler.flush() == b""


async def test_a_reply_sends_every_sample() -> None:
    """The Speaker flushes the reply's resamplers when its pieces are done: 24 kHz TTS audio of
    n samples reaches an 8 kHz transport as exactly n / 3 samples, none held back."""

    class Tts:
        streaming_text_input = False

        async def synthesize(self, text: str):  # type: ignore[no-untyped-def]
            for _ in range(3):
                yield AudioChunk(_pcm(_tone(24000, 440, 0.1)), 24000, "")

    clock = ManualClock()
    transport = FakeTransport(clock, rate=8000)
    voice = Voice(Tts(), transport, clock)  # type: ignore[arg-type]
    reply = Reply(voice.next_generation(), "turn")
    speaker = Speaker(voice, reply)
    for text in ("One.", "Two."):
        speaker.say(text, None)
    await speaker.finish()
    assert sum(s.ms for s in transport.sent) == pytest.approx(600)
    # A piece's last 2 ms go out with the next piece's first audio (one continuous stream).
    assert [e.ms for e in reply.ledger.entries] == pytest.approx([300, 300], abs=3)


async def test_a_streamed_reply_sends_every_sample() -> None:
    """The same for a streaming engine (one context for the reply's pieces)."""
    clock = ManualClock()
    transport = FakeTransport(clock, rate=8000)
    voice = Voice(FakeStreamingTts(clock, rate=24000), transport, clock)
    reply = Reply(voice.next_generation(), "turn")
    speaker = Speaker(voice, reply)
    for text in ("One. ", "Two."):
        speaker.say(text, None)
    await speaker.finish()
    assert sum(s.ms for s in transport.sent) == pytest.approx(450)  # 9 characters at 50 ms
