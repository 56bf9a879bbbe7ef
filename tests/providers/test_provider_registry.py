"""Which engines a call gets: the offline defaults, a named provider this build lacks, and
espeak-ng standing in for a piper voice that cannot load."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from runtime.config import ProviderDefaults, ProvidersSettings, Settings
from runtime.control.schemas import AgentConfig
from runtime.pipeline.settings import ConversationSettings
from runtime.providers import registry
from runtime.providers.base import LanguageModel, ProviderError, SpeechToText, TextToSpeech
from runtime.providers.chains import ProviderChains
from runtime.providers.llm.rules import RulesBrain
from runtime.providers.models import WHISPER_BASE
from runtime.providers.registry import ProviderCredential
from runtime.providers.stt.local import LocalWhisperSTT
from runtime.providers.tts.local import EspeakTTS, PiperTTS

ROOT = Path(__file__).resolve().parents[2]


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
    # The shared model, loaded once (each call's STT holds its version's language and hints over it).
    assert chosen.stt._engine is wanted.stt._engine and chosen.stt.model is WHISPER_BASE  # type: ignore[attr-defined]
    assert chosen.tts is wanted.tts


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


# The registry is the only list of provider names


def _string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_the_registry_is_the_only_list_of_provider_names() -> None:
    """No module that validates, lists or offers providers spells a provider's name itself."""
    provider_names = {entry.name for entry in registry.PROVIDERS}
    readers = [ROOT / "runtime/config.py", ROOT / "runtime/control/schemas.py", ROOT / "runtime/control/credentials.py",
               ROOT / "runtime/providers/chains.py", ROOT / "runtime/providers/doctor.py",
               ROOT / "runtime/providers/voice_profile.py", ROOT / "voicectl/common.py", ROOT / "voicectl/agent.py",
               ROOT / "voicectl/voice.py", ROOT / "voicectl/credential.py", ROOT / "voicectl/doctor.py"]
    for path in readers:
        assert not _string_literals(path) & provider_names, path
    # Config: one section per entry that has appliance settings, with the entry's model.
    sections = {name: field.annotation for name, field in ProvidersSettings.model_fields.items()
                if name not in ("defaults", "retries", "first_byte_timeout_ms")}
    assert sections == registry.settings_sections()
    # config.example.yaml documents every section and names every provider of each modality.
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())["providers"]
    assert set(example) - {"defaults", "retries", "first_byte_timeout_ms"} == set(registry.settings_sections())
    text = (ROOT / "config.example.yaml").read_text()
    defaults_block = text[text.index("  defaults:"):text.index("  retries:")]
    for modality in registry.MODALITIES:
        comment = defaults_block[:defaults_block.index(f"    {modality}:")].rsplit(":", 1)[-1]
        listed = set(re.findall(r"[a-z]+", comment)) & provider_names
        defaults = {n for n in registry.names(modality) if registry.get(modality, n).can_be_default}
        assert listed == defaults, (modality, listed)
    # The CLI's choices are the registry's.
    from voicectl.agent import LlmOpt, SttOpt, TtsOpt
    from voicectl.voice import ProviderOpt

    for modality, option in (("stt", SttOpt), ("llm", LlmOpt), ("tts", TtsOpt), ("tts", ProviderOpt)):
        info = option.__metadata__[0]
        assert info.metavar == "|".join(registry.names(modality))
    # Defaults and credentials come from it too.
    assert ProviderDefaults().model_dump() == {m: registry.offline_default(m) for m in registry.MODALITIES}
    for entry in registry.PROVIDERS:
        if entry.can_be_default:
            assert ProviderDefaults.model_validate({entry.modality: entry.name})
        else:  # the integrator's own brain: only a version names it
            with pytest.raises(ValidationError, match="cannot be a default"):
                ProviderDefaults.model_validate({entry.modality: entry.name})
        if entry.credential is not None:
            assert registry.credential_spec(entry.credential_name) == entry.credential
    with pytest.raises(ValidationError, match="one of local, espeak, chatterbox"):
        ProviderDefaults(tts="chatterbx")


def test_every_entry_builds_from_its_factory_and_declares_its_models() -> None:
    chains = ProviderChains(Settings())
    for entry in registry.PROVIDERS:
        assert entry.settings_model is not None and entry.options is not None
        credential = ProviderCredential({}, "key") if entry.credential is not None else None
        engine = chains.engine(entry.modality, entry.name, credential=credential)
        assert engine.name == entry.name or entry.name == "local", entry
        kind = {"stt": SpeechToText, "llm": LanguageModel, "tts": TextToSpeech}[entry.modality]
        assert isinstance(engine, kind)
        # What the entry declares is what the engine does.
        if entry.modality == "stt":
            assert engine.interim_results == entry.capabilities.interim_transcripts, entry.name
        if entry.modality == "tts":
            assert engine.streaming_text_input == entry.capabilities.streaming_text_input, entry.name
    assert len({(e.modality, e.name) for e in registry.PROVIDERS}) == len(registry.PROVIDERS)


def test_the_registry_module_imports_no_sdk_and_no_adapter() -> None:
    """The CLI reads it to build its help: it must stay a list of names."""
    code = ("import sys, runtime.providers.registry as r; r.names('tts'); r.find('tts', 'elevenlabs');"
            "heavy = [m for m in ('pydantic', 'aiohttp', 'openai', 'anthropic', 'deepgram', 'cartesia', 'elevenlabs',"
            " 'runtime.providers.base', 'runtime.providers.tts.chatterbox') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("fixture", ["agent_version_v1.json", "agent_version_v2.json"])
def test_versions_stored_by_earlier_releases_still_load(fixture: str) -> None:
    """Rows copied from databases written by earlier releases (every vendor key present, unset
    ones null; v1 also had sampling keys on every modality)."""
    raw = json.loads((ROOT / "tests/fixtures" / fixture).read_text())
    config = AgentConfig.from_stored(raw)
    assert config.system_prompt == "You answer for Acme." and config.turn.endpointing_silence_ms == 700
    assert config.llm.provider == "anthropic" and config.llm.option_values == {"temperature": 0.3}
    assert config.llm.fallback == ["rules"] and config.tts.provider == "chatterbox"
    assert config.http_tools[0].name == "lookup" and config.hours.schedule == {"mon": ["09:00-17:00"]}
    settings = ConversationSettings.from_config(config)
    assert settings.temperature == 0.3 and settings.turn.endpoint_ms == 700
    chatterbox = config.tts.options_for(registry.get("tts", "chatterbox"))
    if fixture.endswith("v2.json"):
        assert (chatterbox.voice, chatterbox.exaggeration) == ("narrator", 0.7)
    # Saving it again (an update) keeps the shape: provider, model, base_url, fallback, vendor keys flat.
    dumped = AgentConfig.model_validate(config.model_dump()).model_dump()
    assert dumped["llm"] == {"provider": "anthropic", "model": "claude-sonnet-4-6", "base_url": None,
                             "fallback": ["rules"], "temperature": 0.3}


def test_a_stored_version_naming_an_unknown_provider_loads_and_its_call_skips_it() -> None:
    raw = {"system_prompt": "x", "tts": {"provider": "retired-tts", "colour": "blue"}}
    with pytest.raises(ValidationError, match="unknown provider 'retired-tts'"):
        AgentConfig.model_validate(raw)
    config = AgentConfig.from_stored(raw)
    assert ProviderChains(Settings()).chain(config, "tts") == ["retired-tts", "local"]


async def test_a_call_skips_a_stored_unknown_provider() -> None:
    config = AgentConfig.from_stored({"system_prompt": "x", "tts": {"provider": "retired-tts"}})
    chosen = await ProviderChains(Settings()).for_call(config)
    assert isinstance(chosen.tts, PiperTTS)
    assert [(s.wanted, s.used) for s in chosen.substitutions] == [("retired-tts", "local")]
    assert "unknown tts provider 'retired-tts'" in chosen.substitutions[0].reason


async def test_the_api_refuses_a_misspelt_provider_or_option_at_save_time(api) -> None:
    _, tenant, _ = await api.call("POST", "/api/v1/tenants", api.admin_key, json={"name": "acme"})

    async def create(tts: dict) -> tuple[int, dict]:
        status, body, _ = await api.call("POST", "/api/v1/agents", api.admin_key, tenant_id=tenant["id"],
                                         json={"name": "desk", "system_prompt": "x", "tts": tts})
        return status, body

    status, error = await create({"provider": "chatterbx"})
    assert status == 422 and "unknown provider 'chatterbx'" in repr(error)
    assert "chatterbox, elevenlabs, cartesia, openai" in repr(error)
    status, error = await create({"provider": "elevenlabs", "exaggeration": 0.5})
    assert status == 422 and "tts.exaggeration: only for chatterbox" in repr(error)
    # Saving never needs the tenant's credential: doctor reports it, a call fails over.
    status, agent = await create({"provider": "elevenlabs", "voice": "v-1", "speed": 1.1})
    assert status == 201 and agent["config"]["tts"] == {"provider": "elevenlabs", "model": None, "base_url": None,
                                                         "fallback": [], "voice": "v-1", "speed": 1.1}
