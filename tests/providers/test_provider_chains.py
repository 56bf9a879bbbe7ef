"""Chains made from an agent version and the tenant's credentials (runtime.providers.chains),
and `voicectl doctor`'s checks (runtime.providers.doctor), with the real Claude and
OpenAI-compatible adapters against local servers speaking their wire protocols."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from peers import openai_server
from peers.anthropic_server import AnthropicServer
from peers.openai_server import OpenAIServer
from runtime.control.plane import ControlPlane
from runtime.control.schemas import AgentConfig, AgentCreate, CredentialSet, TenantCreate
from runtime.providers import registry as provider_registry
from runtime.providers.base import LlmDone, LlmRequest, Message, TextDelta
from runtime.providers.chains import ProviderChains
from runtime.providers.doctor import diagnose
from runtime.providers.failover import Failover, FailoverLLM
from runtime.providers.llm.anthropic import AnthropicLLM
from runtime.providers.llm.openai import OpenAICompatibleLLM
from runtime.providers.llm.rules import RulesBrain
from runtime.providers.registry import ProviderCredential
from tests.api.support import with_overrides

KEY = "sk-ant-test-0123456789"


def lookup(creds: dict[str, ProviderCredential]) -> Any:
    async def credential(provider: str) -> ProviderCredential | None:
        return creds.get(provider)
    return credential


async def test_a_version_chain_with_credentials_fails_over_to_the_next_llm(settings) -> None:
    async with AnthropicServer(api_key=KEY) as claude, OpenAIServer() as local:
        conf = with_overrides(settings, providers={"anthropic": {"base_url": claude.base_url},
                                                   "openai": {"base_url": local.base_url, "model": "llama3.2"}})
        registry = ProviderChains(conf)
        version = AgentConfig.model_validate({"system_prompt": "x", "llm": {
            "provider": "anthropic", "model": "claude-opus-4-1", "fallback": ["openai"]}})
        switches: list[Failover] = []
        chosen = await registry.for_call(version, credentials=lookup({"anthropic": ProviderCredential({}, "sk-wrong")}),
                                         report=switches.append)
        llm = chosen.llm
        assert isinstance(llm, FailoverLLM)
        assert [(name, type(engine)) for name, engine in llm.chain.engines] == [
            ("anthropic", AnthropicLLM), ("openai", OpenAICompatibleLLM), ("rules", RulesBrain)]
        local.push(openai_server.text_reply("Hello from the local model."))
        request = LlmRequest(system="x", messages=(Message("user", "hi"),), model="claude-opus-4-1")
        events = [e async for e in llm.stream(request)]
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from the local model."
        assert isinstance(events[-1], LlmDone)
        assert len(claude.message_requests) == 1  # a refused key is not retried
        assert local.completion_requests[0].body["model"] == "llama3.2"  # the fallback's own model
        assert [(s.from_provider, s.to_provider, s.reason) for s in switches] == [
            ("anthropic", "openai", "the tenant's anthropic credential was refused (401)")]
        assert "sk-wrong" not in repr(switches)
        await chosen.aclose()


async def test_a_missing_credential_skips_the_provider_and_says_so(settings) -> None:
    registry = ProviderChains(settings)
    chosen = await registry.for_call(AgentConfig.model_validate({"system_prompt": "x", "llm": {"provider": "anthropic", "fallback": ["openai"]}}),
                                     credentials=lookup({}))
    # openai needs no key (a local server): it is the first usable engine, rules stays behind it.
    assert [name for name, _ in chosen.llm.chain.engines] == ["openai", "rules"]  # type: ignore[attr-defined]
    assert [(s.wanted, s.used, s.reason) for s in chosen.substitutions] == [
        ("anthropic", "openai", "the tenant has no anthropic credential")]
    await chosen.aclose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_doctor_reports_key_refused_unreachable_and_ok_without_secrets(settings) -> None:
    async with AnthropicServer(api_key=KEY) as claude:
        conf = with_overrides(settings, providers={"anthropic": {"base_url": claude.base_url},
                                                   "openai": {"base_url": "http://127.0.0.1:9/v1"}})
        plane = await ControlPlane.open(conf)
        try:
            tenant = await plane.tenants.create(TenantCreate(name="acme"))
            await plane.agents.create(tenant.id, AgentCreate(
                name="sales", system_prompt="x", llm={"provider": "anthropic", "fallback": ["openai"]}))
            await plane.credentials.set(tenant.id, "anthropic", CredentialSet(secret=KEY))
            checks = {c.provider: c for c in await diagnose(plane, conf, tenant.id) if c.modality == "llm"}
            assert checks["anthropic"].ok and checks["anthropic"].credential == "set"
            assert checks["anthropic"].used_by == ["sales"]
            assert checks["openai"].status == "unreachable" and not checks["openai"].ok
            assert checks["rules"].ok
            await plane.credentials.set(tenant.id, "anthropic", CredentialSet(secret="sk-ant-wrong-key"))
            checks = {c.provider: c for c in await diagnose(plane, conf, tenant.id)}
            assert checks["anthropic"].status == "key refused" and checks["anthropic"].detail == "HTTP 401"
            assert "sk-ant" not in repr([c.to_dict() for c in checks.values()])

            # A version naming its own server is checked against that server, in a row of its own.
            async with OpenAIServer() as local:
                await plane.agents.create(tenant.id, AgentCreate(
                    name="local", system_prompt="x", llm={"provider": "openai", "base_url": local.base_url,
                                                          "model": "llama3.2"}))
                rows = [c for c in await diagnose(plane, conf, tenant.id) if c.provider == "openai"]
            assert [(c.base_url, c.model, c.used_by, c.status) for c in rows] == [
                (None, None, ["sales"], "unreachable"), (local.base_url, "llama3.2", ["local"], "ok")]
        finally:
            await plane.close()



async def test_the_versions_provider_settings_reach_the_adapters(settings) -> None:
    from runtime.providers.stt.deepgram import DeepgramSTT
    from runtime.providers.tts.chatterbox import ChatterboxTTS

    registry = ProviderChains(settings)
    version = AgentConfig.model_validate({
        "system_prompt": "x", "language": "de",
        "stt": {"provider": "deepgram", "endpointing_ms": 450, "utterance_end_ms": 1500},
        "tts": {"provider": "chatterbox", "voice": "narrator", "exaggeration": 0.9, "cfg_weight": 0.2,
                "temperature": 0.7}})
    chosen = await registry.for_call(version, credentials=lookup({"deepgram": ProviderCredential({}, "dg-key")}))
    stt = dict(chosen.stt.chain.engines)["deepgram"]  # type: ignore[attr-defined]
    tts = dict(chosen.tts.chain.engines)["chatterbox"]  # type: ignore[attr-defined]
    assert isinstance(stt, DeepgramSTT) and isinstance(tts, ChatterboxTTS)
    query = stt.options.query()
    assert (query["endpointing"], query["utterance_end_ms"], query["language"]) == ("450", "1500", "de")
    assert (tts.voice, tts.exaggeration, tts.cfg_weight, tts.temperature) == ("narrator", 0.9, 0.2, 0.7)
    await chosen.aclose()


@pytest.mark.parametrize(("choices", "message"), [
    ({"llm": {"voice": "narrator"}}, "llm.voice: only for tts"),
    ({"tts": {"endpointing_ms": 300}}, "tts.endpointing_ms: only for stt"),
    ({"stt": {"max_tokens": 10}}, "stt.max_tokens: only for llm"),
    ({"tts": {"temperature": 0.01}}, "tts.temperature: Input should be greater than or equal to 0.05"),
    ({"tts": {"provider": "chatterbx"}}, "tts.provider: unknown provider 'chatterbx'; known: local, espeak"),
    ({"tts": {"provider": "local", "fallback": ["elevenlab"]}}, "unknown provider 'elevenlab'"),
    ({"tts": {"provider": "elevenlabs", "exaggeration": 0.5}}, "tts.exaggeration: only for chatterbox"),
    ({"tts": {"provider": "openai", "speed": 9}}, "tts.speed: Input should be less than or equal to 4"),
    ({"stt": {"provider": "deepgram", "colour": "red"}}, "stt.colour: not a setting of any provider"),
])
def test_provider_settings_belong_to_their_modality(choices, message) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        AgentCreate(name="a", system_prompt="x", **choices)


def test_a_chatterbox_voice_profile_chooses_the_tts_and_its_voice() -> None:
    from runtime.providers.voice_profile import apply_voice_profile

    def agent(**values: Any) -> AgentConfig:
        return AgentConfig.model_validate({"system_prompt": "x", **values})

    profile = {"provider": "chatterbox", "voice_id": "narrator", "speed": 1.0}
    version = agent(tts={"exaggeration": 0.8})
    applied = apply_voice_profile(version, profile)
    assert applied.tts.provider == "chatterbox" and applied.tts.option_values == {"voice": "narrator",
                                                                                  "exaggeration": 0.8}
    assert version.tts.provider is None  # the version's own config is not changed
    own_voice = agent(tts={"provider": "chatterbox", "voice": "calm"})
    assert apply_voice_profile(own_voice, profile).tts.option_values["voice"] == "calm"
    other_tts = agent(tts={"provider": "local"})
    assert apply_voice_profile(other_tts, profile) is other_tts
    assert apply_voice_profile(version, {"provider": "local", "voice_id": "x"}) is version
    assert apply_voice_profile(version, None) is version


@pytest.mark.parametrize(("provider", "speed", "expected"), [
    ("elevenlabs", 1.5, 1.2), ("elevenlabs", 0.9, 0.9), ("cartesia", 0.5, 0.6), ("openai", 2.0, 2.0)])
def test_voice_profiles_of_the_new_tts_providers_set_voice_and_speed(provider, speed, expected) -> None:
    from runtime.providers.voice_profile import apply_voice_profile

    version = AgentConfig(system_prompt="x")
    applied = apply_voice_profile(version, {"provider": provider, "voice_id": "v-123", "speed": speed})
    assert applied.tts.provider == provider
    assert applied.tts.option_values == {"voice": "v-123", "speed": expected}  # kept within the provider's range
    # The engine the call gets is built with them.
    from runtime.config import Settings
    from runtime.providers import registry

    options = applied.tts.options_for(registry.get("tts", provider))
    assert (options.voice, options.speed) == ("v-123", expected)
    assert ProviderChains(Settings()).first_choice(applied, "tts").provider == provider


async def test_a_calls_tts_engine_gets_the_voice_profiles_voice_and_speed() -> None:
    """Through the chain a call is built with: the engine made speaks with the profile's voice,
    at its speed (within what the provider takes)."""
    from runtime.config import Settings
    from runtime.providers.tts.cartesia import CartesiaTTS
    from runtime.providers.tts.elevenlabs import ElevenLabsTTS
    from runtime.providers.tts.openai import OpenAITTS
    from runtime.providers.voice_profile import apply_voice_profile

    creds = lookup({"elevenlabs": ProviderCredential({}, "el-key"), "cartesia": ProviderCredential({}, "ca-key"),
                    "openai": ProviderCredential({}, "sk-key")})
    chains = ProviderChains(Settings())
    engines = {}
    for provider in ("elevenlabs", "cartesia", "openai"):
        config = apply_voice_profile(AgentConfig(system_prompt="x"),
                                     {"provider": provider, "voice_id": f"{provider}-voice", "speed": 1.1})
        chosen = await chains.for_call(config, credentials=creds)
        engines[provider] = dict(chosen.tts.chain.engines)[provider]  # type: ignore[attr-defined]
        await chosen.aclose()
    eleven, cartesia, openai_tts = engines["elevenlabs"], engines["cartesia"], engines["openai"]
    assert isinstance(eleven, ElevenLabsTTS) and eleven.voice == "elevenlabs-voice"
    assert eleven.voice_settings == {"speed": 1.1}
    assert isinstance(cartesia, CartesiaTTS) and (cartesia.voice, cartesia.speed) == ("cartesia-voice", 1.1)
    assert isinstance(openai_tts, OpenAITTS) and (openai_tts.voice, openai_tts.speed) == ("openai-voice", 1.1)


async def test_chatterbox_has_its_own_first_byte_timeout_and_the_others_keep_the_global_one() -> None:
    """providers.chatterbox.first_byte_timeout_ms (8 s by default) replaces the global 2 s for
    Chatterbox only: its first audio after 3 s is heard, while another TTS as slow is failed over."""
    from peers.chatterbox_server import ChatterboxScript, ChatterboxServer, Fault
    from peers.openai_speech_server import OpenAISpeechServer, Speech
    from runtime.config import Settings

    async with (ChatterboxServer(ChatterboxScript(faults=[Fault(first_byte_delay_s=3.0)])) as chatterbox,
                OpenAISpeechServer() as openai_speech):
        openai_speech.repeat = Speech(delay_s=3.0)
        chains = ProviderChains(Settings(providers={"chatterbox": {"base_url": chatterbox.base_url},
                                                    "openai_tts": {"base_url": openai_speech.base_url}}))
        assert chains.settings.providers.first_byte_timeout_ms == 2000  # the defaults: nothing set here

        async def speak(provider: str) -> tuple[list[Failover], bytes, float]:
            switches: list[Failover] = []
            version = AgentConfig.model_validate({"system_prompt": "x", "tts": {"provider": provider,
                                                                                "fallback": ["espeak"]}})
            chosen = await chains.for_call(version, report=switches.append)
            engine = dict(chosen.tts.chain.engines)[provider]  # type: ignore[attr-defined]
            audio = b"".join([c.pcm async for c in chosen.tts.synthesize("Hello there.")])
            await chosen.aclose()
            return switches, audio, engine.policy.first_byte_timeout_s

        (cb_switches, cb_audio, cb_timeout), (oa_switches, _, oa_timeout) = await asyncio.gather(
            speak("chatterbox"), speak("openai"))
    assert (cb_timeout, oa_timeout) == (8.0, 2.0)
    assert cb_switches == [] and cb_audio == chatterbox.audio("Hello there.") and len(chatterbox.requests) == 1
    assert [(s.from_provider, s.to_provider, s.kind) for s in oa_switches] == [("openai", "espeak", "timeout")]
    # null: the global timeout applies to Chatterbox too.
    chains = ProviderChains(Settings(providers={"first_byte_timeout_ms": 1500,
                                                "chatterbox": {"first_byte_timeout_ms": None}}))
    assert chains.policy_for(provider_registry.get("tts", "chatterbox")).first_byte_timeout_s == 1.5


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_doctor_says_when_the_chatterbox_model_is_still_loading(settings) -> None:
    """/health (travisvn's health.py) says "initializing" until the model is loaded; doctor says so."""
    from peers.chatterbox_server import ChatterboxScript, ChatterboxServer

    script = ChatterboxScript(status="initializing", model_loaded=False)
    async with ChatterboxServer(script) as chatterbox:
        conf = with_overrides(settings, providers={"chatterbox": {"base_url": chatterbox.base_url}})
        plane = await ControlPlane.open(conf)
        try:
            tenant = await plane.tenants.create(TenantCreate(name="acme"))
            await plane.agents.create(tenant.id, AgentCreate(name="desk", system_prompt="x",
                                                             tts={"provider": "chatterbox"}))
            loading = next(c for c in await diagnose(plane, conf, tenant.id) if c.provider == "chatterbox")
            script.status, script.model_loaded = "healthy", True
            ready = next(c for c in await diagnose(plane, conf, tenant.id) if c.provider == "chatterbox")
        finally:
            await plane.close()
    assert (loading.status, loading.detail) == ("server error", "model not loaded yet (status: initializing)")
    assert (ready.status, ready.detail) == ("ok", "model loaded on cuda")
    assert {p.path for p in chatterbox.probes} == {"/health"}
