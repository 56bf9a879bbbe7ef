"""Listening: the caller's speech to the STT stream and its transcripts back to the turn detector.

The conversation's per-frame path puts the caller's speech frames (and a flush when the detector
asks for a final) on ``queue``; ``pump`` sends them to the STT stream, resampled to its rate.
``read`` takes the transcripts: interim text goes to the detector (the barge-in decision reads
it) and out as ``transcript.interim``; a final goes to the detector, and ends the caller's turn
when the detector says so. A stream that fails, or ends while the call is live, is reopened (up
to ``STT_REOPENS`` times, with a growing pause); frames that come meanwhile are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from runtime.audio import Resampler
from runtime.events.models import TranscriptInterim
from runtime.pipeline.clock import Clock
from runtime.pipeline.frames import AudioFrame, ControlFrame
from runtime.pipeline.reporting import CallReporter
from runtime.pipeline.turns import Signal, TurnDetector
from runtime.providers.base import SpeechToText, SttStream, Transcript

log = logging.getLogger("voicectl.pipeline")

STT_REOPENS = 3


class Hearing(Protocol):
    """What the listener reads of the conversation (runtime.pipeline.conversation)."""

    live: bool  # the call is heard until this turns False
    stt: SpeechToText  # read at each (re)open: a failover wrapper may be put in its place


class Listener:
    """One call's STT stream: frames and flushes in, transcripts out, reopened when it breaks."""

    def __init__(self, conversation: Hearing, *, detector: TurnDetector, clock: Clock, reporter: CallReporter,
                 call_id: str, on_turn_end: Callable[[], None]) -> None:
        self.conversation, self.detector, self.clock, self.reporter = conversation, detector, clock, reporter
        self.call_id = call_id
        self.on_turn_end = on_turn_end  # a final ended the caller's turn
        self.queue: asyncio.Queue[AudioFrame | ControlFrame] = asyncio.Queue()
        self.stream: SttStream | None = None
        self.final_at: float | None = None  # the latest final transcript arrived (clock time)
        self.interim_wanted = False  # someone takes transcript.interim: engines that make it on demand do

    def want_interim(self, on: bool) -> None:
        """Set at each caller turn's start (and kept for a reopened stream)."""
        self.interim_wanted = on
        if self.stream is not None:
            self.stream.want_interim(on)

    async def open(self) -> None:
        """The first stream; a failure is reported and left to ``read`` to retry (DTMF and the
        greeting work meanwhile)."""
        try:
            self.stream = await self.conversation.stt.open()
        except Exception as exc:
            self.reporter.provider_error("stt", exc)
            return
        self.stream.want_interim(self.interim_wanted)

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:
                log.exception("closing the STT stream failed", extra={"call_id": self.call_id})

    async def pump(self) -> None:
        """Caller speech frames (and flushes) to the STT stream, resampled to its rate."""
        queue, resampler, broken = self.queue, None, None
        while True:
            item = await queue.get()
            stream = self.stream
            if stream is None or stream is broken:
                continue  # dropped until the reader has reopened the stream
            try:
                if item.__class__ is ControlFrame:
                    await stream.flush()
                    continue
                if resampler is None or resampler.src != item.rate or resampler.dst != stream.rate:
                    resampler = Resampler(item.rate, stream.rate)  # a fallback engine may want another rate
                await stream.push(resampler(item.pcm))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # once per stream: the reader sees it broken too and reopens
                broken = stream
                self.reporter.provider_error("stt", exc)

    async def read(self) -> None:
        """Transcripts to the turn detector; a stream that fails (or ends while the call is
        live) is reopened up to ``STT_REOPENS`` times, with a growing pause."""
        conversation, failures = self.conversation, 0
        while conversation.live:
            stream = self.stream
            if stream is None:
                try:
                    stream = self.stream = await conversation.stt.open()
                    stream.want_interim(self.interim_wanted)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.reporter.provider_error("stt", exc)
                    failures += 1
                    if failures > STT_REOPENS:
                        return
                    await self.clock.sleep(float(failures))
                    continue
            try:
                async for transcript in stream:
                    self._on_transcript(transcript)
                if not conversation.live:
                    return  # closed by close()
                raise ConnectionError("the STT stream ended during the call")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reporter.provider_error("stt", exc)
                if self.stream is stream:
                    self.stream = None
                try:
                    await stream.close()
                except Exception:
                    pass
                failures += 1
                if failures > STT_REOPENS:
                    log.error("the STT stream keeps failing: this call is no longer heard",
                              extra={"call_id": self.call_id})
                    return

    def _on_transcript(self, transcript: Transcript) -> None:
        if not self.conversation.live:
            return
        detector = self.detector
        if not transcript.final:
            text = transcript.text.strip()
            if text and text != detector.interim:
                detector.interim_text(text)
                self.reporter.emit(TranscriptInterim(role="caller", text=text))
            return
        self.final_at = self.clock.now()
        if detector.final(transcript.text, transcript.segments, transcript.confidence) & Signal.END:
            self.on_turn_end()
