"""The caller's audio, decoded in the event loop as each RTP packet arrives.

aiortc's ``RTCRtpReceiver`` hands every packet to a decoder thread of its own (one per call) and
every decoded frame back to the loop with ``run_coroutine_threadsafe``, behind a jitter buffer
that holds four frames (80 ms) before it releases one and stalls up to 320 ms on a lost packet.
Measured with 30 calls (bench/webrtc.py, py-spy --gil), the thread hand-offs alone were a third
of the runtime's time. So the bridge receives the caller's RTP itself: ``attach`` points the
call's aiortc receiver at ``CallerAudio.handle_rtp_packet`` (the method aiortc's RTP router
calls for that receiver, after SRTP), which decodes in place: Opus with one libopus decoder per
call, straight to the pipeline's rate (runtime.telephony.webrtc.opus), G.711 with ``audioop``.
Packets are played in sequence order: a late or duplicate packet is dropped, a gap of up to
``MAX_FILL`` frames is filled with silence (the pipeline's timeline stays true), a longer one
resynchronises. aiortc still negotiates, decrypts, routes, sends RTCP and ends the track on an
RTCP BYE; its decoder thread stays idle. The seam is one attribute of the receiver instance,
checked by ``tests/webrtc/test_webrtc_units.py`` against the pinned aiortc.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.audio import FRAME_MS
from runtime.telephony.webrtc.opus import OpusDecoder

with warnings.catch_warnings():  # see runtime.audio
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

MAX_FILL = 10  # frames of silence put in for lost packets (200 ms); longer gaps are skipped
RESYNC_LATE = 50  # this many "late" packets in a row: the sender restarted its sequence, follow it
MAX_PAYLOAD = 1500
_SEQ_MOD = 1 << 16


@dataclass(slots=True)
class InboundStats:
    packets: int = 0
    frames: int = 0  # frames handed to the pipeline (silence fills included)
    missing: int = 0  # frames lost in the network or never sent (sequence gaps)
    late: int = 0  # packets that came after a later one had been played (dropped)
    ignored: int = 0  # packets of another payload type
    decode_errors: int = 0


class CallerAudio:
    """One call's inbound audio: RTP packets in, PCM16 mono frames at ``rate`` out (``deliver``)."""

    def __init__(self, codec: str, payload_type: int, rate: int, deliver: Callable[[bytes], None],
                 on_error: Callable[[Exception], None]) -> None:
        self.codec, self.payload_type, self.rate = codec, payload_type, rate
        self.deliver, self.on_error = deliver, on_error
        self.stats = InboundStats()
        self.silence = bytes(rate * FRAME_MS // 1000 * 2)
        self._next_seq: int | None = None
        self._ssrc: int | None = None
        self._late_run = 0
        self._failed = False
        self.last_packet = 0.0  # time.monotonic() of the last packet of this call's audio
        self._decode: Callable[[bytes], bytes]
        if codec == "opus":
            self._decode = OpusDecoder(rate).decode
        elif codec == "pcmu":
            self._decode = _g711(audioop.ulaw2lin)
        elif codec == "pcma":
            self._decode = _g711(audioop.alaw2lin)
        else:
            raise ValueError(f"no decoder for {codec}")

    def attach(self, receiver: Any) -> None:
        """Receive ``receiver``'s RTP here instead of in its decoder thread (see the module docstring)."""
        if not callable(getattr(receiver, "_handle_rtp_packet", None)):
            raise RuntimeError("this aiortc has no RTCRtpReceiver._handle_rtp_packet: check runtime.telephony."
                               "webrtc.inbound against it")
        receiver._handle_rtp_packet = self.handle_rtp_packet

    async def handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        """aiortc's RTP router calls this for every packet of the call's audio (already decrypted)."""
        if self._failed:
            return
        stats = self.stats
        if packet.payload_type != self.payload_type:
            stats.ignored += 1
            return
        stats.packets += 1
        self.last_packet = time.monotonic()
        seq = packet.sequence_number
        expected = self._next_seq
        if packet.ssrc != self._ssrc:  # a new stream (or the first): start from its sequence
            self._ssrc, expected = packet.ssrc, None
        if expected is not None:
            ahead = (seq - expected) % _SEQ_MOD
            if ahead >= _SEQ_MOD // 2:  # behind what was played: late or a duplicate
                stats.late += 1
                self._late_run += 1
                if self._late_run < RESYNC_LATE:
                    return
                ahead = 0
            self._late_run = 0
            if ahead:
                stats.missing += ahead
                if ahead <= MAX_FILL:
                    for _ in range(ahead):
                        stats.frames += 1
                        self.deliver(self.silence)
        self._next_seq = (seq + 1) % _SEQ_MOD
        payload = packet.payload
        if not payload or len(payload) > MAX_PAYLOAD:
            return  # an empty (keep-alive) or impossible packet carries no audio
        try:
            pcm = self._decode(payload)
        except Exception as exc:  # a packet we cannot decode ends this call, nothing else
            stats.decode_errors += 1
            self._failed = True
            self.on_error(exc)
            return
        if pcm:
            stats.frames += 1
            self.deliver(pcm)


def _g711(expand: Callable[[bytes, int], bytes]) -> Callable[[bytes], bytes]:
    return lambda payload: expand(payload, 2)
