"""The Whisper models a version can use (base assembled from its two packages, tiny.en), the
language and model each version gets, vocabulary hints (Whisper's prompt, Deepgram's keyterms)
and what a call of each model takes of the local engines' budget."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from peers.deepgram_server import DeepgramScript, DeepgramServer
from runtime.audio import resample
from runtime.calls.tracker import CallTracker
from runtime.config import build_settings
from runtime.control.schemas import AgentConfig
from runtime.providers import models
from runtime.providers.base import ProviderError, RetryPolicy
from runtime.providers.chains import ProviderChains
from runtime.providers.llm.rules import DEMO_BOOKING_RULES
from runtime.providers.models import WHISPER_BASE, WHISPER_TINY_EN, Joined, ModelSpec, Piece, verified_dir
from runtime.providers.registry import ProviderCredential
from runtime.providers.stt import hints
from runtime.providers.stt.deepgram import DeepgramSTT
from runtime.providers.stt.local import LocalWhisperSTT
from tests.providers.test_deepgram_stt import KEY, feed, silence, tone

FAST = RetryPolicy(retries=0, first_byte_timeout_s=5)
DEMO = AgentConfig(system_prompt="x", greeting="Hello, thanks for calling Trattoria Demo! How can I help you?",
                   rules=DEMO_BOOKING_RULES)


def with_stt(agent: AgentConfig, stt: dict) -> AgentConfig:
    return AgentConfig.model_validate({**agent.model_dump(), "stt": stt})


def espeak_16k(text: str, voice: str) -> bytes:
    """espeak-ng speech the telephone way (8 kHz and back)."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", text], capture_output=True,
                         check=True).stdout
    pcm = out[out.index(b"data") + 8:]
    return resample(resample(pcm, 22050, 8000), 8000, 16000)


# Assembly of a model shipped in pieces


def _pieces(tmp_path: Path) -> tuple[ModelSpec, bytes]:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "w.part1").write_bytes(b"first half|")
    (two / "w.part2").write_bytes(b"second half")
    (two / "config.json").write_bytes(b"{}")
    whole = b"first half|second half"
    spec = ModelSpec("model under test", "local", lambda: two, (("config.json", _sha(b"{}")),), Joined(
        "model.bin", _sha(whole), (Piece(lambda: one, "w.part1", _sha(b"first half|")),
                                   Piece(lambda: two, "w.part2", _sha(b"second half")))))
    return spec, whole


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pieces_are_checked_and_joined_once_into_the_model_folder(tmp_path) -> None:
    spec, whole = _pieces(tmp_path)
    folder = verified_dir(spec, tmp_path / "models")
    assert folder == tmp_path / "models" / spec.folder_name
    assert (folder / "model.bin").read_bytes() == whole and (folder / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [spec.folder_name]  # no staging left
    # Another process finds the folder, re-checks it, and rebuilds it when it was damaged.
    models._results.clear()
    (folder / "model.bin").write_bytes(b"damaged")
    assert (verified_dir(spec, tmp_path / "models") / "model.bin").read_bytes() == whole


def test_a_bad_piece_is_a_clear_error_and_leaves_no_model(tmp_path) -> None:
    spec, _ = _pieces(tmp_path)
    (tmp_path / "two" / "w.part2").write_bytes(b"second HALF")
    with pytest.raises(ProviderError) as caught:
        verified_dir(spec, tmp_path / "models")
    assert caught.value.kind == "unavailable" and "w.part2 does not match its pinned sha256" in str(caught.value)
    assert list((tmp_path / "models").iterdir()) == []
    with pytest.raises(ProviderError, match="no model folder"):
        verified_dir(spec, None)


def test_the_packaged_base_model_assembles_and_loads(tmp_path) -> None:
    folder = verified_dir(WHISPER_BASE, tmp_path)
    assert {p.name for p in folder.iterdir()} == {"config.json", "tokenizer.json", "vocabulary.json", "model.bin"}
    assert (folder / "model.bin").stat().st_size == 145_217_607


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


async def test_base_hears_english_and_spanish_callers(model_dir) -> None:
    english = LocalWhisperSTT(model=WHISPER_BASE, model_dir=model_dir)
    spanish = LocalWhisperSTT(model=WHISPER_BASE, model_dir=model_dir, language="es")
    heard = await english.transcribe(espeak_16k("I would like to book a table for four.", "en-us+klatt4"))
    assert heard is not None and "table for" in heard.text.lower(), heard
    heard = await spanish.transcribe(espeak_16k("Quiero reservar una mesa para cuatro personas.", "es"))
    assert heard is not None and "reservar una mesa" in heard.text.lower(), heard



async def test_base_decodes_again_when_the_hints_make_it_loop_inside_a_segment(model_dir) -> None:
    # The caller set's tune half: with the demo's hints, base's short-window decode of this line
    # repeats "thank you very much" inside one segment (compression ratio 3.6) and was dropped whole.
    from bench import caller_set
    from runtime.control.schemas import AgentConfig
    from runtime.providers.llm.rules import DEMO_BOOKING_RULES
    from runtime.providers.stt.hints import version_terms, whisper_prompt
    from voicectl.demo import GREETING, PROMPT

    prompt = whisper_prompt(version_terms(AgentConfig(system_prompt=PROMPT, greeting=GREETING,
                                                      rules=DEMO_BOOKING_RULES)))
    (utterance,) = [u for u in caller_set.utterances("tune", None)
                    if u.line.text.startswith("That's all") and u.voice.name == "en-gb-scotland+f2"]
    heard = await LocalWhisperSTT(model=WHISPER_BASE, model_dir=model_dir, prompt=prompt).transcribe(utterance.pcm)
    assert heard is not None and heard.text.lower().count("thank you very much") == 1, heard


# The model and language each version gets


def _settings(tmp_path: Path, **local: str):
    return build_settings({"providers": {"local": local}} if local else {}, tmp_path)


def _engine(chains: ProviderChains, agent: AgentConfig) -> LocalWhisperSTT:
    return chains.engine("stt", "local", chains.first_choice(agent, "stt"), agent=agent)


def test_each_version_gets_its_model_language_and_hints(tmp_path) -> None:
    chains = ProviderChains(_settings(tmp_path, stt_model="tiny.en"))
    plain = _engine(chains, AgentConfig(system_prompt="x"))
    assert plain.model is WHISPER_TINY_EN and plain.options.prompt == "" and plain.options.language == "en"
    chosen = _engine(chains, with_stt(DEMO, {"model": "base", "keywords": ["Giuseppe"]}))
    assert chosen.model is WHISPER_BASE and chosen.options.prompt.startswith(
        "Giuseppe, for two people at seven, four at eight thirty, six fifteen, nine forty five, ten o'clock, "
        "Trattoria Demo, margherita")  # spoken counts and times: the demo's script reads both
    assert chosen._engine.model_dir is not None  # the process's engine: the first settings' folder
    # tiny.en: the version's own keywords and the spoken numbers, not the terms derived from it.
    tiny = _engine(chains, with_stt(DEMO, {"keywords": ["Giuseppe"]}))
    numbers = "for two people at seven, four at eight thirty, six fifteen, nine forty five, ten o'clock"
    assert tiny.model is WHISPER_TINY_EN and tiny.options.prompt == f"Giuseppe, {numbers}."
    assert _engine(chains, DEMO).options.prompt == f"{numbers}."
    spanish_demo = _engine(chains, AgentConfig(system_prompt="x", language="es", rules=DEMO.rules))
    assert "seven" not in spanish_demo.options.prompt  # English examples only for an English version
    spanish = _engine(chains, AgentConfig(system_prompt="x", language="es-MX"))
    assert spanish.model is WHISPER_BASE and spanish.options.language == "es"  # tiny.en is English only
    assert _engine(ProviderChains(_settings(tmp_path)), AgentConfig(system_prompt="x")).model is WHISPER_BASE  # the default


def test_a_version_names_only_a_packaged_model_and_bounded_keywords() -> None:
    with pytest.raises(ValueError, match="stt.model: local has the models base, tiny.en, not 'large-v3'"):
        AgentConfig(system_prompt="x", stt={"provider": "local", "model": "large-v3"})
    with pytest.raises(ValueError, match="stt.keywords"):
        AgentConfig(system_prompt="x", stt={"keywords": ["x" * 51]})
    with pytest.raises(ValueError, match="stt.keywords"):
        AgentConfig(system_prompt="x", stt={"keywords": [f"w{i}" for i in range(51)]})
    assert AgentConfig(system_prompt="x", stt={"keywords": [" Giuseppe "]}).stt.option_values == {
        "keywords": [" Giuseppe "]}


# Vocabulary hints


def test_hints_come_from_the_version_and_are_bounded() -> None:
    terms = hints.version_terms(DEMO, ["Giuseppe", "trattoria demo"])
    assert terms[:4] == ("Giuseppe", "trattoria demo", "margherita", "marinara")  # own keywords first, unique
    assert "[dtmf 0]" not in terms and "Hello" not in terms  # not words; a sentence's first word
    assert "table" in terms and "reservation" in terms and len(terms) <= hints.MAX_TERMS
    prompt = hints.whisper_prompt([f"term{i}" for i in range(200)])
    assert len(prompt) <= hints.MAX_PROMPT_CHARS and prompt.endswith(".") and prompt.startswith("term0, term1")
    tool = {"name": "lookup_order", "description": "d", "url": "https://example.com/x",
            "parameters": {"type": "object", "properties": {"size": {"type": "string", "enum": ["small", "large"]}}}}
    with_tool = AgentConfig(system_prompt="x", http_tools=[tool])
    assert hints.version_terms(with_tool) == ("lookup order", "small", "large")


async def test_deepgram_gets_the_hints_as_keyterms(tmp_path) -> None:
    agent = with_stt(DEMO, {"provider": "deepgram", "keywords": ["Giuseppe"]})
    async with DeepgramServer(DeepgramScript(utterances=["A table for two."])) as server:
        chains = ProviderChains(build_settings({"providers": {"deepgram": {"url": server.url}}}, tmp_path))
        engine = chains.engine("stt", "deepgram", agent.stt, agent=agent, credential=ProviderCredential({}, KEY),
                               policy=FAST)
        assert isinstance(engine, DeepgramSTT)
        stream = await engine.open()
        await feed(stream, tone(400) + silence(400))
        await stream.close()
    conn, = server.connections
    assert conn.keyterms[:3] == ["Giuseppe", "Trattoria Demo", "margherita"] and "table" in conn.keyterms
    assert "keywords" not in conn.query  # nova-3: keyterm prompting
    assert DeepgramSTT(KEY, model="nova-2", keyterms=("Giuseppe",)).options.query()["keywords"] == ["Giuseppe"]


# The local engines' budget


def test_a_heavier_model_takes_more_of_the_local_budget(tmp_path) -> None:
    tiny = ProviderChains(_settings(tmp_path, stt_model="tiny.en"))
    assert tiny.local_load(AgentConfig(system_prompt="x")) == 1
    assert tiny.local_load(AgentConfig(system_prompt="x", stt={"model": "base"})) == 4
    assert tiny.local_load(AgentConfig(system_prompt="x", language="de")) == 4  # base: the multilingual one
    cloud = {"stt": {"provider": "deepgram"}, "tts": {"provider": "cartesia"}}
    assert tiny.local_load(AgentConfig(system_prompt="x", **cloud)) == 0
    base = ProviderChains(_settings(tmp_path, stt_model="base"))
    assert base.local_load(AgentConfig(system_prompt="x")) == 1
    assert base.local_load(AgentConfig(system_prompt="x", stt={"model": "tiny.en"})) == 0.25
    limits = base.settings.limits
    cores = len(os.sched_getaffinity(0))
    assert (limits.local_capacity("base"), limits.local_capacity("tiny.en")) == (cores, 4 * cores)


def test_the_tracker_admits_calls_by_their_share_of_the_budget() -> None:
    tracker = CallTracker(None, None, max_calls=100, local_calls=4)  # type: ignore[arg-type]
    assert tracker.local_fits(8)  # an idle box answers even a call heavier than the whole budget
    tracker.local_live.update({"a": 1, "b": 1})
    assert tracker.local_fits(2) and not tracker.local_fits(2.5) and not tracker.local_at_capacity
    tracker.local_live["c"] = 2
    assert tracker.local_at_capacity and not tracker.local_fits(0.25) and tracker.local_in_use == 4


@pytest.fixture(autouse=True)
def _fresh_results():
    """Each test checks its own folders (the hash results are cached per process)."""
    yield
    for key in [k for k in models._results if k[1] is not None]:
        models._results.pop(key, None)


def test_loading_twice_reuses_the_engine(model_dir) -> None:
    first = LocalWhisperSTT(model=WHISPER_BASE, model_dir=model_dir)
    second = LocalWhisperSTT(model=WHISPER_BASE, model_dir=model_dir, language="fr", prompt="Bonjour.")
    assert first._engine is second._engine
    asyncio.run(first.check())
