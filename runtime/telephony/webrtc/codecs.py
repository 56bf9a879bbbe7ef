"""The agent's audio encoded for the caller: 20 ms PCM16 frames in, RTP-ready packets out.

The bridge hands aiortc ready ``av.Packet``s (its sender only packetizes those): aiortc's own
encoders would run every frame through a thread-pool hop and encode 48 kHz stereo at
96 kbit/s, several times the work of mono Opus at the pipeline rate (libopus called directly:
runtime.telephony.webrtc.opus). Silence between replies is a constant packet (no encoding at
all). The caller's side is runtime.telephony.webrtc.inbound.
"""

from __future__ import annotations

import fractions
import warnings
from typing import Protocol

import av

from runtime.audio import FRAME_MS
from runtime.config import OpusSettings
from runtime.telephony.webrtc.opus import OpusEncoder

with warnings.catch_warnings():  # see runtime.audio
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

OPUS_CLOCK = 48000  # RTP clock of Opus whatever the encoder's input rate (RFC 7587)
G711_CLOCK = 8000
_OPUS_BASE = fractions.Fraction(1, OPUS_CLOCK)
_G711_BASE = fractions.Fraction(1, G711_CLOCK)
# 20 ms of silence as one Opus packet (TOC 0xF8: CELT fullband 20 ms mono, then an empty
# frame): what decoders play as digital silence. Sent between replies instead of encoding zeros.
OPUS_SILENCE = b"\xf8\xff\xfe"


class AgentEncoder(Protocol):
    """Turns the pipeline's 20 ms PCM16 frames into RTP-ready packets with timestamps."""

    rate: int  # PCM16 rate the pipeline must produce
    frame_bytes: int  # one 20 ms frame
    clock_step: int  # RTP clock ticks per 20 ms

    def encode(self, pcm: bytes, ts: int) -> av.Packet: ...
    def silence(self, ts: int) -> av.Packet: ...


class OpusAgentEncoder:
    """Mono Opus at the pipeline rate (libopus takes 8/12/16/24/48 kHz input; RTP runs at 48 kHz)."""

    __slots__ = ("rate", "frame_bytes", "clock_step", "_codec", "_talking")

    def __init__(self, rate: int, settings: OpusSettings) -> None:
        self.rate = rate
        self.frame_bytes = rate * FRAME_MS // 1000 * 2
        self.clock_step = OPUS_CLOCK * FRAME_MS // 1000
        self._codec = OpusEncoder(rate, settings.bitrate, settings.complexity)
        self._talking = False

    def encode(self, pcm: bytes, ts: int) -> av.Packet:
        packet = av.Packet(self._codec.encode(pcm))  # one 20 ms frame, one packet
        self._talking = True
        packet.pts = ts
        packet.time_base = _OPUS_BASE
        return packet

    def silence(self, ts: int) -> av.Packet:
        if self._talking:  # the first silent frame goes through the encoder: it ends the reply's tail
            packet = self.encode(bytes(self.frame_bytes), ts)
            self._talking = False
            return packet
        packet = av.Packet(OPUS_SILENCE)
        packet.pts = ts
        packet.time_base = _OPUS_BASE
        return packet


class G711AgentEncoder:
    """PCMU or PCMA at 8 kHz: one ``audioop`` call a frame."""

    __slots__ = ("rate", "frame_bytes", "clock_step", "_encode", "_silence")

    def __init__(self, codec: str) -> None:
        self.rate = G711_CLOCK
        self.clock_step = G711_CLOCK * FRAME_MS // 1000
        self.frame_bytes = self.clock_step * 2
        if codec == "pcmu":
            self._encode, self._silence = audioop.lin2ulaw, b"\xff" * self.clock_step
        elif codec == "pcma":
            self._encode, self._silence = audioop.lin2alaw, b"\xd5" * self.clock_step
        else:
            raise ValueError(f"not a G.711 codec: {codec}")

    def encode(self, pcm: bytes, ts: int) -> av.Packet:
        packet = av.Packet(self._encode(pcm, 2))
        packet.pts = ts
        packet.time_base = _G711_BASE
        return packet

    def silence(self, ts: int) -> av.Packet:
        packet = av.Packet(self._silence)
        packet.pts = ts
        packet.time_base = _G711_BASE
        return packet


def agent_encoder(codec: str, opus_rate: int, opus: OpusSettings) -> AgentEncoder:
    return OpusAgentEncoder(opus_rate, opus) if codec == "opus" else G711AgentEncoder(codec)
