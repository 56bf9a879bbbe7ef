"""The call recorder: an AudioSink writing the caller leg, the agent leg and a mixed WAV.

Frames arrive as PCM16 mono (20 ms each, at whatever rate the bridge uses). Each
leg is written to its own WAV at the rate of its first frame (later frames at
another rate are converted by ``runtime.audio.Resampler``, streaming, one per leg and target); the
mixed WAV runs at the
rate of the first frame of the call. Both legs are kept on the wall clock: a leg
that falls more than ``SLACK_S`` behind the time since the first frame (the agent
is silent, or the caller's audio has a gap) is padded with silence first, so the
legs line up with each other and with the mix. The mix is the sum of the two legs
with clipping (``audioop.add`` saturates), done on whatever both legs have in
common so far: nothing but that short overlap is held in memory, everything else
goes straight to the files, which are finalised when the call ends.
"""

from __future__ import annotations

import logging
import time
import warnings
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.audio import Resampler
from runtime.files import create_private_file
from runtime.ids import new_id, now_iso
from runtime.recording.storage import LOCAL, LocalStorage

with warnings.catch_warnings():  # deprecated in 3.11, still the stdlib's C mixer until 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger("voicectl.recording")

WIDTH = 2  # PCM16
SLACK_S = 0.1  # how far a leg may lag the wall clock before it is padded with silence
KINDS = ("mixed", "caller", "agent")


@dataclass
class RecordedFile:
    kind: str
    path: Path
    sample_rate: int
    frames: int

    @property
    def duration_ms(self) -> int:
        return int(self.frames * 1000 / self.sample_rate) if self.sample_rate else 0


def _open_wav(path: Path, rate: int) -> wave.Wave_write:
    wav = wave.open(str(create_private_file(path)), "wb")  # made 0600, then opened (truncated) by name
    wav.setnchannels(1)
    wav.setsampwidth(WIDTH)
    wav.setframerate(rate)
    return wav


class _Leg:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rate = 0
        self.samples = 0  # written to the leg's file, at self.rate
        self.wav: wave.Wave_write | None = None
        self.path: Path | None = None
        self.pending = bytearray()  # at the mix rate, not yet mixed
        self._to_leg: Resampler | None = None  # made when a frame comes at another rate
        self._to_mix: Resampler | None = None

    def open(self, path: Path, rate: int) -> None:
        self.rate, self.path = rate, path
        self.wav = _open_wav(path, rate)

    def add(self, pcm: bytes, rate: int, mix_rate: int) -> None:
        assert self.wav is not None
        own = pcm
        if rate != self.rate:
            if self._to_leg is None or self._to_leg.src != rate:
                self._to_leg = Resampler(rate, self.rate)
            own = self._to_leg(pcm)
        self.wav.writeframesraw(own)
        self.samples += len(own) // WIDTH
        mix = pcm
        if rate != mix_rate:
            if self._to_mix is None or self._to_mix.src != rate or self._to_mix.dst != mix_rate:
                self._to_mix = Resampler(rate, mix_rate)
            mix = self._to_mix(pcm)
        self.pending += mix

    def pad_to(self, seconds: float, mix_rate: int) -> None:
        """Silence up to ``seconds`` from the start of the recording."""
        assert self.wav is not None
        missing = int(seconds * self.rate) - self.samples
        if missing <= 0:
            return
        self.wav.writeframesraw(bytes(missing * WIDTH))
        self.samples += missing
        self.pending += bytes(int(missing * mix_rate / self.rate) * WIDTH)

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


class CallRecorder:
    """AudioSink of one call; ``finish()`` closes the files and returns them (none without audio)."""

    def __init__(self, storage: LocalStorage, tenant_id: str, call_id: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.tenant_id = tenant_id
        self.call_id = call_id
        self.clock = clock
        self.caller = _Leg("caller")
        self.agent = _Leg("agent")
        self.mix_rate = 0
        self.mixed: wave.Wave_write | None = None
        self.mixed_path: Path | None = None
        self.mixed_samples = 0
        self._t0 = 0.0
        self.closed = False
        self.failed = False

    # AudioSink

    def inbound(self, pcm: bytes, sample_rate: int) -> None:
        self._frame(self.caller, pcm, sample_rate)

    def outbound(self, pcm: bytes, sample_rate: int) -> None:
        self._frame(self.agent, pcm, sample_rate)

    def _frame(self, leg: _Leg, pcm: bytes, rate: int) -> None:
        if self.closed or self.failed or not pcm:
            return
        try:
            now = self.clock()
            if self.mixed is None:
                self._start(now, rate)
            if leg.wav is None:
                leg.open(self.storage.path_for(self.tenant_id, self.call_id, f"{leg.kind}.wav"), rate)
            behind = now - self._t0 - SLACK_S
            for each in (self.caller, self.agent):
                if each.seconds < behind:
                    self._ensure_open(each)
                    each.pad_to(now - self._t0, self.mix_rate)
            leg.add(pcm[: len(pcm) - len(pcm) % WIDTH], rate, self.mix_rate)
            self._mix()
        except Exception:
            # A full disk must not take the call down: stop recording, keep the call.
            self.failed = True
            log.exception("recording failed; the call goes on unrecorded", extra={"call_id": self.call_id})

    def _start(self, now: float, rate: int) -> None:
        self._t0 = now
        self.mix_rate = rate
        self.mixed_path = self.storage.path_for(self.tenant_id, self.call_id, "mixed.wav")
        self.mixed = _open_wav(self.mixed_path, rate)

    def _ensure_open(self, leg: _Leg) -> None:
        if leg.wav is None:
            leg.open(self.storage.path_for(self.tenant_id, self.call_id, f"{leg.kind}.wav"), self.mix_rate)

    def _mix(self, *, final: bool = False) -> None:
        assert self.mixed is not None
        a, b = self.caller.pending, self.agent.pending
        n = min(len(a), len(b))
        if n:
            self.mixed.writeframesraw(audioop.add(bytes(a[:n]), bytes(b[:n]), WIDTH))
            self.mixed_samples += n // WIDTH
            del a[:n], b[:n]
        if final:
            for rest in (a, b):  # conversion rounding: at most a few samples
                if rest:
                    self.mixed.writeframesraw(bytes(rest))
                    self.mixed_samples += len(rest) // WIDTH
                    rest.clear()

    def finish(self) -> list[RecordedFile]:
        """Line the legs up to the same length, finish the mix and close the files."""
        if self.closed:
            return []
        self.closed = True
        if self.mixed is None:
            return []
        files: list[RecordedFile] = []
        try:
            if not self.failed:
                end = max(self.caller.seconds, self.agent.seconds)
                for leg in (self.caller, self.agent):
                    self._ensure_open(leg)
                    leg.pad_to(end, self.mix_rate)
                self._mix(final=True)
        finally:
            self.mixed.close()
            for leg in (self.caller, self.agent):
                if leg.wav is not None:
                    leg.wav.close()
        if self.failed:
            return []
        assert self.mixed_path is not None
        files.append(RecordedFile("mixed", self.mixed_path, self.mix_rate, self.mixed_samples))
        for leg in (self.caller, self.agent):
            assert leg.path is not None
            files.append(RecordedFile(leg.kind, leg.path, leg.rate, leg.samples))
        return files

    async def finalize(self, store: Any) -> list[dict[str, Any]]:
        """Close the files and write one ``recordings`` row per file."""
        rows = []
        for item in self.finish():
            row = {
                "id": new_id("rec"), "tenant_id": self.tenant_id, "call_id": self.call_id, "kind": item.kind,
                "storage": LOCAL, "uri": self.storage.uri(item.path), "format": "wav",
                "duration_ms": item.duration_ms, "size_bytes": item.path.stat().st_size, "created_at": now_iso(),
            }
            rows.append(await store.recordings.insert(row))
        return rows
