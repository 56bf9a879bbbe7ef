"""Which engines a call gets: the offline defaults, a named provider this build lacks, and
espeak-ng standing in for a piper voice that cannot load."""

from __future__ import annotations

import pytest

from runtime.config import Settings
from runtime.control.schemas import AgentConfig
from runtime.providers.base import ProviderError
from runtime.providers.chains import ProviderChains
from runtime.providers.llm.rules import RulesBrain
from runtime.providers.stt.local import LocalWhisperSTT
from runtime.providers.tts.local import EspeakTTS, PiperTTS


async def test_offline_engines_by_default_and_substitutions_are_reported() -> None:
    registry = ProviderChains(Settings())
    chosen = await registry.for_call(AgentConfig(system_prompt="x"))
    assert isinstance(chosen.stt, LocalWhisperSTT) and isinstance(chosen.llm, RulesBrain)
    assert isinstance(chosen.tts, PiperTTS) and chosen.substitutions == []
    wanted = await registry.for_call(AgentConfig.model_validate({"system_prompt": "x", "llm": {"provider": "anthropic"},
                                                                "stt": {"provider": "deepgram"}}))
    assert [(s.modality, s.wanted, s.used) for s in wanted.substitutions] == [
        ("stt", "deepgram", "local"), ("llm", "anthropic", "rules")]
    assert {s.reason for s in wanted.substitutions} == {"the tenant has no deepgram credential",
                                                         "the tenant has no anthropic credential"}
    assert chosen.stt is wanted.stt  # the shared engines, loaded once


async def test_an_unusable_piper_voice_falls_back_to_espeak(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: PiperTTS) -> None:
        raise ProviderError("local", "unavailable", "en_US-joe-medium.onnx: sha256 mismatch")

    monkeypatch.setattr(PiperTTS, "warm_up", broken)
    registry = ProviderChains(Settings())
    await registry.warm_up()
    tts = (await registry.for_call(AgentConfig(system_prompt="x"))).tts
    assert isinstance(tts, EspeakTTS)
    chunks = [c async for c in tts.synthesize("Hello there.")]
    assert chunks and sum(len(c.pcm) for c in chunks) > 0
