"""What the conversation pipeline needs from a bridge (Twilio, WebRTC, LiveKit, ...).

The bridge converts its wire format to PCM16 frames for ``Conversation.feed_audio`` and
implements ``Transport`` for the way back. Audio sent is paced by the bridge in real time;
every chunk carries the generation id of the reply it belongs to, and anything of an older
generation is dropped wherever it is.
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    # PCM16 rate the bridge wants from the pipeline (8000 for telephony).
    rate: int

    def send_audio(self, pcm: bytes, generation: int) -> None:
        """Queue PCM16 mono at ``rate`` for playback (any length: the bridge cuts 20 ms frames)."""

    def sent_ms(self, generation: int) -> int:
        """Milliseconds of ``generation``'s audio already played out to the caller (sent by the pacer)."""

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting to be played."""

    async def played_out(self, generation: int) -> bool:
        """Once nothing is queued: until the caller's side has played ``generation``'s audio, for
        carriers that say so (Twilio's mark echo, bounded); True at once for the others, False
        when the confirmation did not come in time."""

    async def clear(self) -> None:
        """Drop everything queued here and at the provider (Twilio ``clear``)."""

    def drop_stale(self, generation: int) -> None:
        """Drop queued audio older than ``generation``."""
