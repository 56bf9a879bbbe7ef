"""The local recogniser's line-noise subtraction: a noisy caller comes out cleaner, a clean line
goes through bit for bit, and the appliance setting reaches every call's decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import caller_set
from runtime.config import build_settings
from runtime.control.schemas import AgentConfig
from runtime.providers.chains import ProviderChains
from runtime.providers.stt.denoise import suppress_line_noise
from runtime.providers.stt.local import LocalWhisperSTT


def _pcm_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def _snr_db(reference: np.ndarray, signal: np.ndarray) -> float:
    return float(10 * np.log10((reference ** 2).sum() / ((signal - reference) ** 2).sum()))


def _a_caller(snr_db: float | None) -> np.ndarray:
    """An espeak-ng caller over the telephone line (bench/caller_set.py), noisy or clean, with the
    quiet half second before the end of turn that every utterance the pipeline flushes has."""
    speech = caller_set.speak("A table for four at eight thirty, please.", caller_set.VOICES[1])
    line, idle = caller_set.on_the_line(speech, snr_db, seed=5, idle_s=0.5)
    from runtime.audio import resample, ulaw_to_pcm16

    return _pcm_float(resample(ulaw_to_pcm16(line + idle), caller_set.LINE_RATE, caller_set.STT_RATE))


def test_a_noisy_line_comes_out_cleaner() -> None:
    clean, noisy = _a_caller(None), _a_caller(10)
    cleaned = suppress_line_noise(noisy)
    assert cleaned.shape == noisy.shape and cleaned.dtype == np.float32
    before, after = _snr_db(clean, noisy), _snr_db(clean, cleaned)
    assert before < 12  # the line really is noisy
    assert after > before + 3, (before, after)
    # The hiss in the caller's pause is mostly gone (its level, not just a dip somewhere).
    tail = slice(-4000, None)
    assert np.sqrt((cleaned[tail] ** 2).mean()) < 0.5 * np.sqrt((noisy[tail] ** 2).mean())


def test_a_clean_line_and_a_short_clip_go_through_untouched() -> None:
    clean = _a_caller(None)
    assert suppress_line_noise(clean) is clean
    rng = np.random.default_rng(3)
    short = (rng.standard_normal(1500) * 0.1).astype(np.float32)  # under four analysis frames
    assert suppress_line_noise(short) is short
    silence = np.zeros(16000, np.float32)
    assert suppress_line_noise(silence) is silence


def test_the_setting_reaches_every_calls_decoder(tmp_path: Path) -> None:
    agent = AgentConfig(system_prompt="x")
    for setting, expected in ((None, True), (False, False), (True, True)):
        local = {} if setting is None else {"denoise": setting}
        chains = ProviderChains(build_settings({"providers": {"local": local}}, tmp_path))
        engine = chains.engine("stt", "local", chains.first_choice(agent, "stt"), agent=agent)
        assert isinstance(engine, LocalWhisperSTT) and engine.options.denoise is expected
