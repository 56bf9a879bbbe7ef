"""libopus called directly, one 20 ms frame at a time: the WebRTC bridge's encoder and decoder.

``opuslib-next`` loads the libopus its ``-bundled`` wheel ships and makes and frees the codec
states; the per-frame calls go through prototypes of our own that write into one buffer per codec,
because the library's ``encode``/``decode`` allocate a ctypes array and build a Python list of
samples every frame. Against PyAV (an ``AudioFrame`` in, a list of ``Packet``s out, and a decoder
that always answers at 48 kHz and so needs a resampler after it), per frame on this box:
encoding 16 kHz speech at complexity 3 ~75 us instead of ~95 us, decoding a browser's 48 kHz
stream straight to 16 kHz ~21 us instead of ~41 us (bench/webrtc.py measures the whole call).
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus encodes from and decodes to
MAX_PACKET = 1500  # bytes: an RTP payload on an Ethernet path
MAX_FRAME_S = 0.120  # the longest Opus packet (RFC 6716)


@cache
def _libopus() -> tuple[Any, Any, Any]:
    """opuslib_next (it loads libopus when imported) and our own ``opus_encode``/``opus_decode``
    function objects (indexing a CDLL makes fresh ones): the bytes go in as char pointers."""
    import opuslib_next
    from opuslib_next.api import libopus

    encode = libopus["opus_encode"]
    encode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32)
    encode.restype = ctypes.c_int32
    decode = libopus["opus_decode"]
    decode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int, ctypes.c_int)
    decode.restype = ctypes.c_int
    return opuslib_next, encode, decode


class OpusError(RuntimeError):
    """libopus refused a frame (a corrupt packet, or PCM that is not one whole frame)."""


def _check_rate(rate: int) -> None:
    if rate not in RATES:
        raise ValueError(f"libopus runs at {', '.join(map(str, RATES))} Hz, not {rate}")


class OpusEncoder:
    """Mono PCM16 frames at ``rate`` in, Opus packets out (VoIP mode: speech-tuned SILK/hybrid)."""

    __slots__ = ("rate", "_codec", "_state", "_out", "_encode")

    def __init__(self, rate: int, bitrate: int, complexity: int) -> None:
        _check_rate(rate)
        opuslib_next, self._encode, _ = _libopus()
        self.rate = rate
        self._codec = opuslib_next.Encoder(rate, 1, opuslib_next.APPLICATION_VOIP)  # frees the state when dropped
        self._codec.bitrate = bitrate
        self._codec.complexity = complexity
        self._state = self._codec.encoder_state
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: bytes) -> bytes:
        """One frame (2.5 to 60 ms of PCM16) as one packet."""
        size = self._encode(self._state, pcm, len(pcm) // 2, self._out, MAX_PACKET)
        if size < 0:
            raise OpusError(f"opus_encode failed ({size}) on {len(pcm)} bytes of PCM")
        return ctypes.string_at(self._out, size)


class OpusDecoder:
    """Opus packets in (any rate and mode the sender chose), mono PCM16 at ``rate`` out."""

    __slots__ = ("rate", "_codec", "_state", "_out", "_max_samples", "_decode")

    def __init__(self, rate: int) -> None:
        _check_rate(rate)
        opuslib_next, _, self._decode = _libopus()
        self.rate = rate
        self._codec = opuslib_next.Decoder(rate, 1)
        self._state = self._codec.decoder_state
        self._max_samples = int(rate * MAX_FRAME_S)
        self._out = ctypes.create_string_buffer(self._max_samples * 2)

    def decode(self, payload: bytes) -> bytes:
        samples = self._decode(self._state, payload, len(payload), self._out, self._max_samples, 0)
        if samples < 0:
            raise OpusError(f"opus_decode failed ({samples}) on a {len(payload)}-byte packet")
        return ctypes.string_at(self._out, samples * 2)
