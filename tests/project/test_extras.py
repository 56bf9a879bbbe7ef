"""Optional extras: pyproject.toml's extras are exactly what the registry says each provider and
bridge imports; the app and the CLI import without any extra; a provider whose extra is missing is
a MissingExtra naming the extra and the install command, never an ImportError.

A missing package is simulated in a subprocess (``sys.modules[name] = None``, or a package that
is found but fails to import), never by uninstalling it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from runtime.providers import registry
from tests.project.test_dependencies import NOT_RUNTIME, core, extras, owners

ROOT = Path(__file__).resolve().parents[2]
AGGREGATES = {"cloud", "all"}  # extras made of other extras


def _registry_needs() -> dict[str, set[str]]:
    """Extra -> the modules the registry's entries and other parts import from it."""
    needs: dict[str, set[str]] = {}
    for entry in registry.PROVIDERS:
        if entry.needs is not None:
            needs.setdefault(entry.needs.extra, set()).update(entry.needs.modules)
    for _, part in registry.OTHER_NEEDS.values():
        needs.setdefault(part.extra, set()).update(part.modules)
    return needs


def _blocked_modules() -> list[str]:
    return sorted(set().union(*_registry_needs().values()))


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_each_extra_is_exactly_the_packages_the_registry_names() -> None:
    declared = extras()
    needs = _registry_needs()
    assert set(needs) <= set(declared), f"the registry names extras pyproject.toml lacks: {set(needs) - set(declared)}"
    for extra, modules in needs.items():
        packages = set().union(*(owners(module) for module in modules))
        assert packages == declared[extra], (
            f"extra {extra!r}: the registry's modules come from {sorted(packages)}, "
            f"pyproject.toml lists {sorted(declared[extra])}")
    plain = set(declared) - AGGREGATES - NOT_RUNTIME
    assert plain == set(needs), f"extras no registry entry or part names: {sorted(plain - set(needs))}"
    assert declared["all"] == set().union(*(declared[e] for e in plain)), "'all' is every extra"
    cloud = {e.extra for e in registry.PROVIDERS if not e.offline and e.extra is not None}
    assert declared["cloud"] == set().union(*(declared[e] for e in cloud)), "'cloud' is every cloud provider's extra"


def test_no_package_is_both_core_and_an_extra() -> None:
    both = {name: sorted(packages & core()) for name, packages in extras().items() if packages & core()}
    assert not both, f"core packages repeated in extras: {both}"


def test_the_app_and_the_cli_import_without_any_extra() -> None:
    """As on a core-only install: every module an extra brings is unimportable."""
    result = _run(f"""
        import sys
        for name in {_blocked_modules()!r}:
            sys.modules[name] = None
        from typer.testing import CliRunner
        from runtime.api.app import create_app
        from runtime.config import Settings
        from voicectl.cli import app

        create_app(Settings())
        for args in (["--help"], ["init", "--help"], ["serve", "--help"], ["call", "--help"]):
            outcome = CliRunner().invoke(app, args)
            assert outcome.exit_code == 0, (args, outcome.output, outcome.exception)
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_provider_whose_extra_is_missing_says_which_extra_to_install() -> None:
    result = _run("""
        import json, sys
        sys.modules["faster_whisper"] = None
        sys.modules["deepgram"] = None
        sys.modules["cartesia"] = None
        from runtime.config import Settings
        from runtime.providers import registry
        from runtime.providers.chains import ProviderChains

        chains, out = ProviderChains(Settings()), {}
        for modality, name in (("stt", "local"), ("stt", "deepgram"), ("tts", "cartesia"), ("llm", "rules")):
            entry = registry.get(modality, name)
            try:
                chains.engine(modality, name)
                out[name] = ["built", entry.installed]
            except registry.MissingExtra as exc:
                out[name] = [type(exc).__name__, isinstance(exc, ValueError), exc.extra, exc.module, str(exc),
                             entry.installed]
        out["loaded"] = sorted(m for m in ("faster_whisper", "deepgram", "cartesia") if sys.modules.get(m))
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["local"] == [
        "MissingExtra", True, "offline", "faster_whisper",
        "the STT provider 'local' needs the 'offline' extra (no module 'faster_whisper' here): "
        "pip install -c constraints.txt '.[offline]' in the voicectl source folder", False]
    assert out["deepgram"][:4] == ["MissingExtra", True, "deepgram", "deepgram"]
    assert "'.[deepgram]'" in out["deepgram"][4]
    assert out["cartesia"][:4] == ["MissingExtra", True, "cartesia", "cartesia"]
    assert out["rules"] == ["built", True]
    assert out["loaded"] == []


def test_a_call_skips_a_provider_whose_extra_is_missing() -> None:
    """The chain treats it as it treats an unknown provider: the next engine answers, and the
    substitution's reason is the install hint."""
    result = _run("""
        import asyncio, json, sys
        sys.modules["anthropic"] = None
        from runtime.config import Settings
        from runtime.control.schemas import AgentConfig
        from runtime.providers.chains import ProviderChains
        from runtime.providers.registry import ProviderCredential

        async def credential(name):
            return ProviderCredential({}, "sk-test")

        async def main():
            agent = AgentConfig.model_validate({"system_prompt": "x", "llm": {"provider": "anthropic"}})
            chosen = await ProviderChains(Settings()).for_call(agent, credentials=credential)
            return [(s.modality, s.wanted, s.used, s.reason) for s in chosen.substitutions]

        print(json.dumps(asyncio.run(main())))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    [[modality, wanted, used, reason]] = json.loads(result.stdout)
    assert (modality, wanted, used) == ("llm", "anthropic", "rules")
    assert "needs the 'anthropic' extra" in reason and "'.[anthropic]'" in reason


def test_an_sdk_found_but_failing_to_import_its_own_module_is_a_missing_extra(tmp_path: Path) -> None:
    """An adapter whose SDK is there but lacks one of its modules (a partial install): the
    ModuleNotFoundError of a module of the extra becomes MissingExtra; any other one is left alone
    (a bug, not a missing extra)."""
    (tmp_path / "fake_sdk").mkdir()
    (tmp_path / "fake_sdk" / "__init__.py").write_text("import fake_sdk.transport\n")
    (tmp_path / "fake_adapter.py").write_text("import fake_sdk\n\ndef build(ctx):\n    return 'engine'\n")
    (tmp_path / "buggy_adapter.py").write_text("import no_such_module_anywhere\n")
    result = _run(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from runtime.providers.registry import MissingExtra, Needs, ProviderEntry

        out = []
        for factory in ("fake_adapter:build", "buggy_adapter:build"):
            entry = ProviderEntry("fake", "tts", False, factory, "a fake", needs=Needs("cartesia", ("fake_sdk",)))
            try:
                entry.build(None)
            except MissingExtra as exc:
                out.append(["MissingExtra", exc.extra, exc.module, exc.__cause__ is None])
            except ModuleNotFoundError as exc:
                out.append(["ModuleNotFoundError", exc.name])
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == [["MissingExtra", "cartesia", "fake_sdk.transport", True],
                                         ["ModuleNotFoundError", "no_such_module_anywhere"]]


def test_the_bridges_extras_say_what_to_install() -> None:
    result = _run("""
        import json, sys
        sys.modules["livekit.rtc"] = None
        sys.modules["botocore"] = None
        from runtime.providers.registry import MissingExtra, require_extra

        out = []
        for part in ("livekit", "s3"):
            try:
                require_extra(part)
                out.append("installed")
            except MissingExtra as exc:
                out.append(str(exc))
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == [
        "the LiveKit bridge needs the 'livekit' extra (no module 'livekit.rtc' here): "
        "pip install -c constraints.txt '.[livekit]' in the voicectl source folder",
        "recordings in S3-compatible storage needs the 's3' extra (no module 'botocore' here): "
        "pip install -c constraints.txt '.[s3]' in the voicectl source folder"]


def test_everything_is_installed_here() -> None:
    """`make install` installs every extra: in its venv no entry or part lacks its extra."""
    assert [e.name for e in registry.PROVIDERS if not e.installed] == []
    for part in registry.OTHER_NEEDS:
        registry.require_extra(part)


def test_an_install_without_the_offline_extra_starts_and_says_why_a_call_cannot_be_served() -> None:
    """The offline engines end every chain: without them the start skips their warm-up, a TTS
    chain left empty speaks with the espeak-ng stand-in, and an STT chain left empty is a clear
    NoUsableProvider (the call fails pipeline_unavailable), never an ImportError."""
    result = _run(f"""
        import asyncio, json, sys
        for name in {sorted(_registry_needs()["offline"])!r}:
            sys.modules[name] = None
        from runtime.config import Settings
        from runtime.control.schemas import AgentConfig
        from runtime.providers.chains import NoUsableProvider, ProviderChains

        async def main():
            chains = ProviderChains(Settings())
            await chains.warm_up()
            agent = AgentConfig(system_prompt="x")
            try:
                await chains.for_call(agent)
                outcome = ["served"]
            except NoUsableProvider as exc:
                outcome = ["NoUsableProvider", str(exc)]
            tts = chains._last_resort("tts", [("local", "not installed")], [])
            print(json.dumps(outcome + [tts[0], type(tts[1]).__name__]))
            await chains.aclose()

        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out[0] == "NoUsableProvider" and out[1].startswith("no stt provider can serve this call: local: "), out
    assert "'offline' extra" in out[1] and out[2] == "espeak", out


async def test_a_request_needing_a_missing_extra_gets_501_not_installed() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from runtime.api.appkeys import METRICS
    from runtime.api.middlewares import errors_and_ids
    from runtime.providers.registry import MissingExtra
    from runtime.web.metrics import Metrics

    async def livekit_route(request: web.Request) -> web.Response:
        raise MissingExtra("LiveKit calls", "livekit", "livekit.rtc")

    app = web.Application(middlewares=[errors_and_ids])
    app[METRICS] = Metrics()
    app.router.add_post("/x", livekit_route)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/x")
        body = await response.json()
    assert response.status == 501 and body["error"] == "not_installed", body
    assert body["details"] == {"extra": "livekit"} and "'livekit' extra" in body["message"], body
